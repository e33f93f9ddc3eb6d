"""Tokenizers for preprocessing and training, with one small interface.

Every tokenizer has `vocab_size` (int, ids are < vocab_size), `eod` (end-of-document id), `encode(str) -> list[int]`,
`decode(list[int]) -> str`, Megatron's aliases `tokenize`/`detokenize`, and `unique_identifiers` (what
megatron-core's dataset cache hashes). All pickle cheaply (by path), for worker processes. The preprocessing fast
path is `encode_flat(texts, threads=1) -> (ids uint32, lengths int64)` (length -1: a text that cannot be encoded),
with `fast_backend` saying what runs it and `check_fast_path(tok, texts)` comparing it with the reference.

Kinds (Megatron's `--tokenizer-type` names):
- `GPT2BPETokenizer(vocab_file, merge_file)`: GPT-2's ids through the C++ byte-level BPE (see `bpe.py`);
  `reference=True` gives the pure-Python algorithm. `<|endoftext|>` in text is ordinary text, as in Megatron-LM.
- `HuggingFaceTokenizer(tokenizer_model)`: a local `tokenizer.json` (or a directory holding one) read with HF
  `tokenizers`; special tokens are added as `transformers` adds them by default (`add_special_tokens=True`), and
  a special-token string in the text is that special token unless `special_tokens_as_text=True` (then it is
  ordinary text, HF's `encode_special_tokens`). `encode_flat` runs the C++ byte-level BPE when the file is one it
  reproduces exactly (`bpe.native_from_tokenizer_json`), else HF `tokenizers` one text at a time.
- `NullTokenizer(vocab_size)`: text is space-separated integers; eod = vocab_size, so the vocab is vocab_size + 1;
  an id outside [0, vocab_size] raises ValueError (Megatron-LM's does not check).
- `demo`: the embedded default, a byte-level BPE trained with HF `tokenizers` on the demo corpus (`corpus.py`)
  and cached in a directory; nothing is downloaded and the same inputs give the same file.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import OrderedDict

import numpy as np

EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>")


class _Base:
    vocab_size: int
    eod: int

    def tokenize(self, text: str) -> list[int]:
        return self.encode(text)

    def detokenize(self, ids) -> str:
        return self.decode(ids)

    @property
    def unique_identifiers(self) -> OrderedDict:
        return OrderedDict({"class": type(self).__name__, **self._identity()})

    def _identity(self) -> dict:
        return {}


class GPT2BPETokenizer(_Base):
    """GPT-2 BPE from `vocab_file` (encoder.json) and `merge_file` (vocab.bpe)."""

    def __init__(self, vocab_file: str, merge_file: str, reference: bool = False):
        from omni_mega.data.text.bpe import GPT2BPEFast, GPT2BPEReference

        for name, path in (("vocab_file", vocab_file), ("merge_file", merge_file)):
            if not path or not os.path.isfile(path):
                raise ValueError(f"GPT2BPETokenizer: {name} must be an existing file, got {path!r}")
        self.vocab_file, self.merge_file, self.reference = vocab_file, merge_file, reference
        try:
            self._bpe = (GPT2BPEReference if reference else GPT2BPEFast)(vocab_file, merge_file)
        except ImportError:  # tiktoken missing: same ids from the pure-Python BPE, 5-20x slower
            warnings.warn("tiktoken is not installed: GPT2BPETokenizer falls back to the pure-Python BPE (slow)")
            self._bpe = GPT2BPEReference(vocab_file, merge_file)
        self.vocab_size, self.eod = self._bpe.vocab_size, self._bpe.eod
        self.encode = self._bpe.encode
        if hasattr(self._bpe, "encode_u32"):
            self.encode_u32 = self._bpe.encode_u32
        self._reference = self._bpe if reference else None

    @property
    def fast_backend(self) -> str:
        return getattr(self._bpe, "description", "pure-Python GPT-2 BPE (reference)")

    def encode_flat(self, texts, threads: int = 1):
        """The preprocessing fast path (see preprocess.py): ids of many texts in one call."""
        if hasattr(self._bpe, "encode_flat"):
            return self._bpe.encode_flat(texts, threads)
        return _flat(self._bpe.encode, texts)

    def native_encoder(self):
        """The C++ encoder (omni_mega._bpe.ByteLevelBPE) behind encode_flat, or None."""
        return None if self.reference else getattr(self._bpe, "_native", None)

    def reference_encode(self, text: str) -> list[int]:
        """The pure-Python GPT-2 algorithm (Megatron-LM's), built on first use."""
        if self._reference is None:
            from omni_mega.data.text.bpe import GPT2BPEReference

            self._reference = GPT2BPEReference(self.vocab_file, self.merge_file)
        return self._reference.encode(text)

    def decode(self, ids) -> str:
        return self._bpe.decode([int(i) for i in ids])

    def __getstate__(self):
        return (self.vocab_file, self.merge_file, self.reference)

    def __setstate__(self, state):
        self.__init__(*state)

    def _identity(self) -> dict:
        return {"vocab_file": os.path.abspath(self.vocab_file), "merge_file": os.path.abspath(self.merge_file)}


class HuggingFaceTokenizer(_Base):
    """A local HF `tokenizers` file. `eod_token` overrides the end-of-document token's lookup;
    `special_tokens_as_text`: special-token strings in the text are ordinary text (default: the special tokens)."""

    def __init__(self, tokenizer_model: str, eod_token: str | None = None, special_tokens_as_text: bool = False):
        from tokenizers import Tokenizer

        path = tokenizer_model
        if path and os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not path or not os.path.isfile(path):
            raise ValueError(f"HuggingFaceTokenizer: tokenizer_model must be a tokenizer.json or a directory with "
                             f"one (a local path; nothing is downloaded), got {tokenizer_model!r}")
        self.tokenizer_model, self.eod_token = tokenizer_model, eod_token
        self.special_tokens_as_text = bool(special_tokens_as_text)
        self._path = path
        self._tok = Tokenizer.from_file(path)
        self._tok.encode_special_tokens = self.special_tokens_as_text
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eod = self._find_eod(path, eod_token)
        self._native = None  # built on the first encode_flat

    def _find_eod(self, path: str, eod_token: str | None) -> int:
        names = [eod_token] if eod_token else []
        config = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        if not eod_token and os.path.isfile(config):
            with open(config, encoding="utf-8") as f:
                eos = json.load(f).get("eos_token")
            names.append(eos.get("content") if isinstance(eos, dict) else eos)
        names += [] if eod_token else list(EOD_CANDIDATES)
        for name in names:
            if name and self._tok.token_to_id(name) is not None:
                return self._tok.token_to_id(name)
        raise ValueError(f"HuggingFaceTokenizer: no end-of-document token in {path} (tried {names}); pass eod_token")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    reference_encode = encode

    def _fast(self):
        """The C++ encoder for this file (NativeBPE), or the reason it has none (str)."""
        if self._native is None:
            from omni_mega.data.text import bpe

            normalize = self._tok.normalizer.normalize_str if self._tok.normalizer is not None else None
            try:
                kwargs, description = bpe.native_from_tokenizer_json(self._path, self.special_tokens_as_text,
                                                                     normalize)
                module = bpe._native_module()
                if module is None:
                    raise bpe.Unsupported("the C++ extension is not built")
                self._native = bpe.NativeBPE(module.ByteLevelBPE(**kwargs), fallback=self.encode,
                                             normalize=normalize, description=description)
            except (bpe.Unsupported, bpe.TokenizerFileError) as e:
                self._native = f"HF tokenizers, one text at a time ({e})"
        return self._native

    @property
    def fast_backend(self) -> str:
        fast = self._fast()
        return fast if isinstance(fast, str) else fast.description

    def native_encoder(self):
        """The C++ encoder (omni_mega._bpe.ByteLevelBPE) behind encode_flat, or None."""
        fast = self._fast()
        return None if isinstance(fast, str) else fast.native

    def encode_flat(self, texts, threads: int = 1):
        """The preprocessing fast path (see preprocess.py): ids of many texts in one call."""
        fast = self._fast()
        if isinstance(fast, str):
            return _flat(self.encode, texts)
        return fast.encode_flat(texts, threads)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def __getstate__(self):
        return (self.tokenizer_model, self.eod_token, self.special_tokens_as_text)

    def __setstate__(self, state):
        self.__init__(*state)

    def _identity(self) -> dict:
        return {"tokenizer_model": os.path.abspath(self.tokenizer_model)}


def _flat(encode, texts):
    from omni_mega.data.text.bpe import flat_encode

    return flat_encode(encode, texts if isinstance(texts, list) else list(texts))


def check_fast_path(tok, texts: list[str]) -> str | None:
    """None when `tok.encode_flat` gives the reference's ids on every text, else a one-line description of the
    first disagreement (preprocessing then uses the reference). Tokenizers without a separate fast path pass."""
    reference = getattr(tok, "reference_encode", None)
    if reference is None or not texts:
        return None
    ids, lens = tok.encode_flat(texts)
    ends = np.cumsum(np.maximum(lens, 0))
    wrong = []
    for i, text in enumerate(texts):
        try:
            expected = reference(text)
        except Exception:  # noqa: BLE001 - the reference rejects it: the fast path must too
            expected = None
        got = None if lens[i] < 0 else ids[ends[i] - lens[i]:ends[i]].tolist()
        if got != expected:
            wrong.append(i)
    if not wrong:
        return None
    return (f"the fast tokenizer ({tok.fast_backend}) disagrees with the reference on {len(wrong)} of {len(texts)} "
            f"sample texts (first: {texts[wrong[0]][:60]!r})")


class NullTokenizer(_Base):
    """Text is space-separated integer ids (`"3 1 4"`); eod = vocab_size; `self.vocab_size` = vocab_size + 1."""

    def __init__(self, vocab_size: int):
        if vocab_size is None or int(vocab_size) <= 0:
            raise ValueError(f"NullTokenizer: vocab_size must be a positive int, got {vocab_size!r}")
        self.eod = int(vocab_size)
        self.vocab_size = self.eod + 1

    fast_backend = "Python (space-separated ids)"

    def encode(self, text: str) -> list[int]:
        ids = [int(x) for x in text.split(" ")]
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"NullTokenizer: ids must be in [0, {self.vocab_size}), got {text[:80]!r}")
        return ids

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)

    def _identity(self) -> dict:
        return {"vocab_size": self.vocab_size}


def default_cache_dir() -> str:
    return os.environ.get("OMNI_MEGA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "omni_mega"))


def train_demo_bpe(out_dir: str, vocab_size: int = 4096) -> str:
    """Trains the demo byte-level BPE on the demo corpus into out_dir/tokenizer.json (atomically); returns out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from omni_mega.data.demo.corpus import demo_documents

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOD_CANDIDATES[0]], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(demo_documents(target_chars=0), trainer=trainer)
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, f"tokenizer.json.tmp-{os.getpid()}")
    tok.save(tmp)
    os.replace(tmp, os.path.join(out_dir, "tokenizer.json"))
    return out_dir


def demo_tokenizer(cache_dir: str | None = None, vocab_size: int = 4096) -> HuggingFaceTokenizer:
    """The embedded default tokenizer, trained once (~1 s) and cached under cache_dir."""
    out_dir = os.path.join(cache_dir or default_cache_dir(), f"demo_bpe_{vocab_size}")
    if not os.path.isfile(os.path.join(out_dir, "tokenizer.json")):
        train_demo_bpe(out_dir, vocab_size)
    return HuggingFaceTokenizer(out_dir)


def build_tokenizer(kind: str = "demo", **paths):
    """A tokenizer by Megatron's `--tokenizer-type` name (or "demo").

    paths: GPT2BPETokenizer -> vocab_file, merge_file (reference=True for the pure-Python BPE);
    HuggingFaceTokenizer -> tokenizer_model (eod_token optional); NullTokenizer -> vocab_size;
    demo -> cache_dir, vocab_size (both optional).
    """
    builders = {"GPT2BPETokenizer": GPT2BPETokenizer, "HuggingFaceTokenizer": HuggingFaceTokenizer,
                "NullTokenizer": NullTokenizer, "demo": demo_tokenizer}
    if kind not in builders:
        raise ValueError(f"tokenizer kind must be one of {sorted(builders)}, got {kind!r}")
    try:
        return builders[kind](**paths)
    except TypeError as e:
        raise ValueError(f"{kind}: bad arguments {sorted(paths)}: {e}") from None
