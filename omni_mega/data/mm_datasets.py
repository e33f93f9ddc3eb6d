"""The datasets a packed multimodal source draws from, behind two small interfaces.

Text (`TextDocs`): `len(ds)`, `ds.num_tokens(i)` (the item's length, read cheaply) and `ds.tokens(i)` (int64
[num_tokens(i)]; a whole document ends with one EOD). Implementations: `DemoTextDocs` (the `pydoc_data.topics`
entries, byte tokens, the corpus `omni_mega.data.demo_text` windows over, cut into pack-sized pieces) and
`IndexedDocs` (a Megatron .bin/.idx prefix, one document per item, truncated to the pack by the packer; EOD appended
unless preprocessed with --append-eod).

Image-text: anything with the `omni_mega.data.mmshards.MMShardDataset` interface (`len`, `meta(i)` -> (height, width,
caption length) from the index, `ds[i]` -> ImageTextRecord(key, image bytes, int32 tokens), `tokenizer` dict).
`open_mm_dataset` opens `demo_mm` (built-in demo data) and `mm_shards` (a directory) datasets.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from omni_mega.config.schema import DatasetConfig
from omni_mega.data import demo_text

BYTE_SEP = 10  # byte "\n": the separator between an image's placeholders and its caption for byte tokens


@functools.cache
def _topic_docs() -> tuple[np.ndarray, ...]:
    from pydoc_data.topics import topics

    return tuple(np.frombuffer(topics[k].encode("utf-8"), dtype=np.uint8).astype(np.int64) for k in sorted(topics))


class DemoTextDocs:
    """pydoc_data.topics documents (sorted by topic name) as byte tokens + EOD (256), cut into pieces of at most
    `max_tokens` tokens that overlap by one token (piece k = tokens[k * (max_tokens - 1) : + max_tokens]), so
    each piece fills at most one pack and the whole corpus is seen instead of 79 document beginnings (most topics
    are longer than a pack). Only a document's last piece ends with EOD. `seed` rotates which piece is item 0, so
    two demo_text datasets of a mix with different seeds are different item orders."""

    eod = demo_text.EOD

    def __init__(self, seed: int = 0, max_tokens: int | None = None) -> None:
        self.docs = _topic_docs()
        step = (max_tokens - 1) if max_tokens else None
        if step is not None and step < 1:
            raise ValueError(f"DemoTextDocs: max_tokens must be >= 2, got {max_tokens}")
        self.pieces = [(d, start) for d, doc in enumerate(self.docs)
                       for start in (range(0, len(doc), step) if step else (0,))]  # len(doc) + 1 tokens with EOD
        self.max_tokens = max_tokens
        self.shift = (int(seed) * 7919) % len(self.pieces)

    def __len__(self) -> int:
        return len(self.pieces)

    def _piece(self, i: int) -> tuple[int, int]:
        return self.pieces[(i + self.shift) % len(self.pieces)]

    def num_tokens(self, i: int) -> int:
        d, start = self._piece(i)
        n = len(self.docs[d]) + 1 - start
        return min(n, self.max_tokens) if self.max_tokens else n

    def tokens(self, i: int) -> np.ndarray:
        d, start = self._piece(i)
        return np.append(self.docs[d], self.eod)[start: start + self.num_tokens(i)]


class IndexedDocs:
    """Megatron indexed dataset (prefix without .bin/.idx), one document per item; `eod` is the tokenizer's EOD."""

    def __init__(self, prefix: str, eod: int) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.ds, self.eod = IndexedDataset(prefix), int(eod)
        self.lengths = np.asarray(self.ds.sequence_lengths, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ds)

    def _ends_with_eod(self, i: int) -> bool:
        n = int(self.lengths[i])
        return n > 0 and int(self.ds.get(i, offset=n - 1, length=1)[0]) == self.eod

    def num_tokens(self, i: int) -> int:
        return int(self.lengths[i]) + (0 if self._ends_with_eod(i) else 1)

    def tokens(self, i: int) -> np.ndarray:
        doc = np.asarray(self.ds[i], dtype=np.int64)
        return doc if doc.size and doc[-1] == self.eod else np.append(doc, self.eod)


def open_text_dataset(d: DatasetConfig, eod: int, seq_length: int | None = None):
    """seq_length: the pack length; demo_text documents are cut into pieces that fit one pack."""
    if d.source == "demo_text":
        return DemoTextDocs(d.seed, None if seq_length is None else seq_length + 1)
    if d.source == "indexed":
        return IndexedDocs(str(d.path), eod)
    raise ValueError(f"dataset {d.name!r}: source {d.source!r} is not a text source (demo_text | indexed)")


def open_mm_dataset(d: DatasetConfig, data_dir: Path):
    from omni_mega.data.mmshards import MMShardDataset

    if d.source == "demo_mm":
        from omni_mega.data.demo import build_demo_data

        return MMShardDataset(build_demo_data(data_dir)["train"])
    if d.source == "mm_shards":
        return MMShardDataset(str(d.path))
    raise ValueError(f"dataset {d.name!r}: source {d.source!r} is not an image-text source (demo_mm | mm_shards)")


def special_ids(mm_datasets: list, names: list[str]) -> tuple[int, int]:
    """(EOD, SEP) ids shared by the image-text datasets; they must all come from one tokenizer.

    SEP is the tokenizer's "sep" entry when it has one, else byte "\\n" (10) for byte-level tokens."""
    toks = [dict(getattr(ds, "tokenizer", {}) or {}) for ds in mm_datasets]
    for name, t in zip(names[1:], toks[1:]):
        if t != toks[0]:
            raise ValueError(f"image-text dataset {name!r} has tokenizer {t}, but {names[0]!r} has {toks[0]}: "
                             "one run needs one tokenizer")
    t = toks[0] if toks else {"kind": "byte", "eod": demo_text.EOD}
    if "eod" not in t:
        raise ValueError(f"image-text dataset {names[0]!r}: tokenizer {t} names no 'eod' id")
    if "sep" in t:
        return int(t["eod"]), int(t["sep"])
    if t.get("kind") == "byte":
        return int(t["eod"]), BYTE_SEP
    raise ValueError(f"image-text dataset {names[0]!r}: tokenizer {t} is not byte-level and names no 'sep' id")
