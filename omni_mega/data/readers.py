"""One reader per dataset source kind, the same whatever the model or the stage.

Text kinds give `TextDocs` (`len(ds)`, `ds.num_tokens(i)` read cheaply, `ds.tokens(i)` int64 ids; a document's last
item ends with EOD): `demo_text` -> `demo.text.DemoTextDocs`, `indexed` -> `text.indexed.IndexedDocs`. Both cut long
documents into pack-sized pieces, so nothing is truncated away.

Sample kinds give samples sized from their index. Image-text: the `multimodal.shards.MMShardDataset` interface
(`len`, `meta(i)` -> (height, width, caption length), `ds[i]` -> ImageTextRecord(key, image bytes, int32 tokens),
`tokenizer` dict): `demo_mm` (the built-in scenes, built on first use under the data dir) and `mm_shards` (a
directory). Conversations: `conversations.shards.ConvShardDataset` (`meta(i)` -> (sequence lengths, image sizes),
`ds[i]` -> ConvSample, `kind`: sft | preference | prompts): `conversations` (a directory written by
`tools/preprocess_conversations.py`), `demo_sft`, `demo_preference` and `demo_prompts` (built-in, about the demo
scenes).

Imports stay light (NumPy and JSON): the dry-run reads the datasets' tokenizers through `tokenizer_of`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omni_mega.config.stage import DatasetConfig
from omni_mega.data.demo import text as demo_text

BYTE_SEP = 10  # byte "\n": the separator between an image's placeholders and its caption for byte tokens


@dataclass(frozen=True)
class Reader:
    modality: str  # "text" (documents) | "samples" (image-text or conversation samples)
    open: Callable  # text: (d, eod, seq_length) -> TextDocs; samples: (d, data_dir) -> a dataset of samples
    tokenizer: Callable[[DatasetConfig, Path], dict | None]  # what its token ids are (None: not recorded)


def _open_demo_text(d: DatasetConfig, eod: int | None, seq_length: int | None):
    return demo_text.DemoTextDocs(d.seed, None if seq_length is None else seq_length + 1)


def _open_indexed(d: DatasetConfig, eod: int | None, seq_length: int | None):
    from omni_mega.data.text.indexed import IndexedDocs

    return IndexedDocs(str(d.path), eod, seq_length)


def _demo_mm_dir(data_dir: Path) -> str:
    from omni_mega.data.demo.scenes import build_demo_data

    return build_demo_data(data_dir)["train"]


def _open_demo_mm(d: DatasetConfig, data_dir: Path):
    from omni_mega.data.multimodal.shards import MMShardDataset

    return MMShardDataset(_demo_mm_dir(data_dir))


def _open_mm_shards(d: DatasetConfig, data_dir: Path):
    from omni_mega.data.multimodal.shards import MMShardDataset

    return MMShardDataset(str(d.path))


def _open_conversations(d: DatasetConfig, data_dir: Path):
    from omni_mega.data.conversations.shards import ConvShardDataset

    return ConvShardDataset(str(d.path))


def _demo_conv(kind: str):
    def open_(d: DatasetConfig, data_dir: Path):
        from omni_mega.data.conversations.shards import ConvShardDataset
        from omni_mega.data.demo.conversations import build_demo_conversations

        return ConvShardDataset(build_demo_conversations(data_dir, kind)["train"])

    return open_


def _open_audio_shards(d: DatasetConfig, data_dir: Path):
    from omni_mega.data.audio.shards import AudioShardDataset

    return AudioShardDataset(str(d.path))


def _open_demo_audio(d: DatasetConfig, data_dir: Path):
    from omni_mega.data.audio.shards import AudioShardDataset
    from omni_mega.data.demo.speech import build_demo_speech

    return AudioShardDataset(build_demo_speech(data_dir)["train"])


def _open_demo_shapes(d: DatasetConfig, data_dir: Path):
    from omni_mega.data.demo.shapes import build_demo_shapes
    from omni_mega.data.multimodal.shards import MMShardDataset

    return MMShardDataset(build_demo_shapes(data_dir)["train"])


def _byte_chat_tokenizer(d: DatasetConfig, data_dir: Path) -> dict:
    from omni_mega.data.conversations.templates import ByteChatTokenizer, chat_identity

    return chat_identity(ByteChatTokenizer(), "chatml")


def _byte_tokenizer(d: DatasetConfig, data_dir: Path) -> dict:
    return {"kind": "byte", "vocab_size": demo_text.VOCAB_SIZE, "eod": demo_text.EOD}


def _shards_tokenizer(d: DatasetConfig, data_dir: Path) -> dict | None:
    """The tokenizer recorded in a sample dataset's dataset.json (read without opening the shards)."""
    path = Path(str(d.path)) / "dataset.json"
    try:
        return dict(json.loads(path.read_text()).get("tokenizer") or {})
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"dataset {d.name!r}: cannot read {path} ({e}); is {d.path} a directory written by "
                                "tools/preprocess_mmdata.py or tools/preprocess_conversations.py?") from None


READERS: dict[str, Reader] = {
    "demo_text": Reader("text", _open_demo_text, _byte_tokenizer),
    "indexed": Reader("text", _open_indexed, lambda d, data_dir: None),
    "demo_mm": Reader("samples", _open_demo_mm, _byte_tokenizer),
    "mm_shards": Reader("samples", _open_mm_shards, _shards_tokenizer),
    "conversations": Reader("samples", _open_conversations, _shards_tokenizer),
    "demo_sft": Reader("samples", _demo_conv("sft"), _byte_chat_tokenizer),
    "demo_preference": Reader("samples", _demo_conv("preference"), _byte_chat_tokenizer),
    "demo_prompts": Reader("samples", _demo_conv("prompts"), _byte_chat_tokenizer),
}
# Audio with transcripts (omni_mega.data.audio.shards: `meta(i)` -> (rate, samples, tokens), `ds[i]` ->
# AudioTextRecord) and the built-in labelled shapes (image-text shards whose text is the label).
READERS.update({
    "audio_shards": Reader("samples", _open_audio_shards, _shards_tokenizer),
    "demo_audio": Reader("samples", _open_demo_audio, _byte_tokenizer),
    "demo_shapes": Reader("samples", _open_demo_shapes, _byte_tokenizer),
})


def reader(d: DatasetConfig) -> Reader:
    if d.source not in READERS:
        raise ValueError(f"dataset {d.name!r}: unknown source {d.source!r} (one of {', '.join(READERS)})")
    return READERS[d.source]


def open_text_dataset(d: DatasetConfig, eod: int | None, seq_length: int | None = None):
    """seq_length: the pack length (documents are cut into pieces that fit one pack)."""
    r = reader(d)
    if r.modality != "text":
        raise ValueError(f"dataset {d.name!r}: source {d.source!r} is not a text source")
    return r.open(d, eod, seq_length)


def open_mm_dataset(d: DatasetConfig, data_dir: Path):
    r = reader(d)
    if r.modality != "samples":
        raise ValueError(f"dataset {d.name!r}: source {d.source!r} is not an image-text or conversation source")
    return r.open(d, Path(data_dir))


def tokenizer_of(d: DatasetConfig, data_dir: Path) -> dict | None:
    return reader(d).tokenizer(d, Path(data_dir))


def data_vocab_size(mixes, data_dir: Path) -> int | None:
    """The largest vocabulary the datasets of `mixes` (lists of DatasetConfig) record, None when none records one
    (indexed datasets only: the config must say)."""
    sizes = [int((tokenizer_of(d, data_dir) or {}).get("vocab_size", 0)) for mix in mixes for d in mix]
    return max(sizes) or None if sizes else None


def _compatible(a: dict, b: dict) -> bool:
    """Two recorded tokenizers give the same ids for the same text: same kind, EOD and model (vocabulary sizes may
    differ when one adds chat special tokens after the other's ids, as the byte chat tokenizer does)."""
    keys = ("kind", "eod", "tokenizer_model", "vocab_file", "merge_file")
    same = all(a.get(k) == b.get(k) for k in keys)
    sa, sb = a.get("specials", {}), b.get("specials", {})
    return same and all(sa[k] == sb[k] for k in set(sa) & set(sb))


def special_ids(tokenizers: list[dict | None], names: list[str]) -> tuple[int | None, int | None]:
    """(EOD, SEP) ids of one stage's datasets; the datasets that record a tokenizer must all record compatible ones.

    SEP (between an image's placeholders and its caption) is the tokenizer's "sep" entry, else byte "\\n" (10) for
    byte-level tokens, else None (then no image-text sample can be laid out). EOD is None when no dataset records a
    tokenizer (indexed text only: documents as stored)."""
    known = [(n, t) for n, t in zip(names, tokenizers) if t is not None]
    for name, t in known[1:]:
        if not _compatible(t, known[0][1]):
            raise ValueError(f"dataset {name!r} has tokenizer {t}, but {known[0][0]!r} has {known[0][1]}: one run "
                             "needs one tokenizer")
    if not known:
        return None, None
    name, t = known[0]
    if "eod" not in t:
        raise ValueError(f"dataset {name!r}: tokenizer {t} names no 'eod' id")
    if "sep" in t:
        return int(t["eod"]), int(t["sep"])
    return int(t["eod"]), BYTE_SEP if t.get("kind") == "byte" else None


def open_eval_conversations(path: str | None, data_dir: Path):
    """The held-out conversations of a stage's `eval`: a shard dir, or (None) the built-in demo's held-out split."""
    from omni_mega.data.conversations.shards import ConvShardDataset

    if path is None:
        from omni_mega.data.demo.conversations import build_demo_conversations

        return ConvShardDataset(build_demo_conversations(data_dir, "sft")["heldout"])
    return ConvShardDataset(str(path))
