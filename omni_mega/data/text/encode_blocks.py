"""The encoding side of tools/preprocess_data.py (`preprocess`): one job is one block of whole JSONL lines of one
file, parsed, split into sentences when asked, tokenised in one batched call and packed into Megatron's arrays with
numpy; bad lines are counted by reason (`BadInput`). Worker processes run `worker_init` / `encode_block`."""

from __future__ import annotations

import array
import json
import os
from dataclasses import dataclass, field

import numpy as np

MAX_BAD_LINES_SHOWN = 5


@dataclass
class BadInput:
    """Counts of skipped/empty input by reason, with the first few (file, line number) of each."""

    counts: dict = field(default_factory=dict)
    first: dict = field(default_factory=dict)

    def add(self, reason: str, where: tuple[str, int]) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        shown = self.first.setdefault(reason, [])
        if len(shown) < MAX_BAD_LINES_SHOWN:
            shown.append(where)

    def merge(self, other: "BadInput") -> None:
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            shown = self.first.setdefault(reason, [])
            shown.extend(other.first[reason][: MAX_BAD_LINES_SHOWN - len(shown)])

    def report(self) -> str:
        if not self.counts:
            return "no bad input"
        lines = []
        for reason in sorted(self.counts):
            where = ", ".join(f"{os.path.basename(f)}:{n}" for f, n in self.first[reason])
            lines.append(f"  {reason}: {self.counts[reason]} (first at {where})")
        return "\n".join(lines)

    def summary(self) -> str:
        return ", ".join(f"{r}: {n}" for r, n in sorted(self.counts.items()))


# ----------------------------------------------------------------------------------------------------------------
# One job = one block of whole lines from one file.

def flat_encoder(tokenizer):
    """`encode_flat(texts) -> (ids uint32 [sum], lengths int64 [len(texts)], -1 = failed)` for a tokenizer: its own
    batched path when it has one (the C++ encoder), else one text at a time."""
    for obj in (tokenizer, getattr(tokenizer, "_bpe", None)):
        if hasattr(obj, "encode_flat"):
            return obj.encode_flat
    from omni_mega.data.text.bpe import flat_encode

    encode_u32 = getattr(tokenizer, "encode_u32", None) or _list_to_u32(tokenizer.encode)
    return lambda texts: flat_encode(encode_u32, texts)


def build_splitter(lang: str, keep_newlines: bool):
    """nltk punkt sentence splitter, as Megatron-LM builds it (optional dependency)."""
    try:
        import nltk
        from nltk.tokenize.punkt import PunktLanguageVars, PunktSentenceTokenizer
    except ImportError as e:
        raise RuntimeError("--split-sentences needs nltk (pip install nltk; then nltk.download('punkt'))") from e
    splitter = nltk.load(f"tokenizers/punkt/{lang}.pickle")
    if not keep_newlines:
        return splitter

    class KeepNewlines(PunktLanguageVars):
        # Punkt's default period context swallows the whitespace after a sentence end into the lookahead, so
        # newlines are lost; Megatron-LM's --keep-newlines variant leaves that whitespace on the sentence instead.
        _period_context_fmt = r"\S*%(SentEndChars)s\s*(?=(?P<after_tok>%(NonWord)s|(?P<next_tok>\S+)))"

    return PunktSentenceTokenizer(train_text=splitter._params, lang_vars=KeepNewlines())


def _sentences(value, splitter) -> list[str] | None:
    """The sentences of one key's value, or None when the value is neither a string nor a list of strings."""
    if isinstance(value, str):
        if splitter is None:
            return [value]
        step = 1_000_000  # Megatron-LM splits at most 1M characters at a time
        return [s for i in range(0, len(value), step) for s in splitter.tokenize(value[i:i + step])]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return value
    return None


def _parse_line(line: str, keys, splitter):
    """Per key, the sentences of one JSON line; or a reason string when the line is bad."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's recursion limit
        return "malformed JSON"
    if not isinstance(data, dict):
        return "malformed JSON"
    out = []
    for key in keys:
        if key not in data:
            return "missing key"
        sentences = _sentences(data[key], splitter)
        if sentences is None:
            return "value not a string or list of strings"
        out.append(sentences)
    return out


def _list_to_u32(encode):
    """encode(str) -> list[int] turned into encode(str) -> uint32 buffer, for tokenizers without encode_u32."""
    return lambda text: memoryview(array.array("I", encode(text)))


def _decode_lines(block: bytes, fname: str, first_line: int, bad: BadInput) -> list[str | None]:
    """The block's lines as str; a line that is not UTF-8 becomes None (and is counted)."""
    try:  # fast path: the whole block decodes; splitting bytes or str at "\n" gives the same lines in UTF-8
        lines = block.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = block.split(b"\n")
        for i, raw in enumerate(lines):
            try:
                lines[i] = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad.add("not UTF-8", (fname, first_line + i))
                lines[i] = None
    if lines and lines[-1] == "" and block.endswith(b"\n"):
        lines.pop()  # the split after the final newline
    return lines


def pack_documents(ids: np.ndarray, lens: np.ndarray, nsent: np.ndarray, keep: np.ndarray, eod: int | None):
    """What Megatron-LM's per-document loop builds, for a whole block at once.

    ids uint32 [sum of lens >= 0]: the sentences' ids back to back; lens int64 [S]: ids per sentence (-1: failed,
    no ids); nsent int64 [D]: sentences per document; keep bool [D]: documents to write. Empty sentences are
    dropped; with `eod`, a document with any ids gets eod after its last id, counted in its last sentence.
    Returns (tokens uint32 [T], sentence lengths int64 [S'], sentences per kept document int64 [D'], tokens per
    kept document int64 [D']).
    """
    ndocs = nsent.size
    sent_doc = np.repeat(np.arange(ndocs), nsent)
    lens0 = np.maximum(lens, 0)
    tok_end = np.concatenate(([0], np.cumsum(lens0)))
    sent_bounds = np.concatenate(([0], np.cumsum(nsent)))
    doc_tokens = tok_end[sent_bounds[1:]] - tok_end[sent_bounds[:-1]]
    keep_sent = (lens > 0) & keep[sent_doc]
    tokens = ids if keep.all() else ids[np.repeat(keep, doc_tokens)]
    seq_lens = lens[keep_sent]
    doc_nseq = np.bincount(sent_doc[keep_sent], minlength=ndocs)[keep].astype(np.int64)
    doc_tokens = doc_tokens[keep]
    if eod is not None:
        has = doc_nseq > 0
        tokens = np.insert(tokens, np.cumsum(doc_tokens)[has], np.uint32(eod))
        seq_lens[np.cumsum(doc_nseq)[has] - 1] += 1
        doc_tokens = doc_tokens + has
    return tokens, seq_lens, doc_nseq, doc_tokens


def _split_partitions(packed, doc_part: np.ndarray, partitions: int) -> dict:
    """{partition: (tokens, seq_lens, nseq)} of a block's packed documents, each in input order."""
    tokens, seq_lens, nseq, doc_tokens = packed
    if partitions == 1:
        return {0: (tokens, seq_lens, nseq)}
    tok_part, seq_part = np.repeat(doc_part, doc_tokens), np.repeat(doc_part, nseq)
    return {int(p): (tokens[tok_part == p], seq_lens[seq_part == p], nseq[doc_part == p])
            for p in np.unique(doc_part)}


class BlockEncoder:
    """(fname, first_line, first_global, block) -> ({partition: {key: (tokens, seq_lens, nseq)}}, docs, bytes, bad).

    With `native_jsonl` (the C++ encoder's encode_jsonl), the block's lines are parsed and encoded in C++ without
    the GIL (csrc/bpe/jsonl.h: only lines json.loads reads the same way; the rest, bad lines among them, are parsed
    here, so the bad-line accounting is Python's either way). Otherwise each line is parsed in Python
    (json.loads) and each key's sentences encoded in one `encode_flat` call. Either way Megatron's arrays are built
    with numpy for the whole block: no per-document tokenizer call."""

    def __init__(self, encode_flat, keys, eod, splitter, partitions: int, dtype, native_jsonl=None):
        assert array.array("I").itemsize == 4  # uint32 buffers (_list_to_u32, flat_encode)
        self.encode_flat, self.keys, self.eod, self.splitter = encode_flat, keys, eod, splitter
        self.partitions, self.dtype, self.native_jsonl = partitions, dtype, native_jsonl

    def __call__(self, job):
        if self.native_jsonl is not None:
            return self._native(job)
        fname, first_line, first_global, block = job
        keys = self.keys
        bad = BadInput()
        texts = {k: [] for k in keys}
        nsent = {k: [] for k in keys}
        rows = []  # index in the block of each parsed line
        for i, line in enumerate(_decode_lines(block, fname, first_line, bad)):
            if line is None:
                continue
            values = _parse_line(line, keys, self.splitter)
            if isinstance(values, str):
                bad.add(values, (fname, first_line + i))
                continue
            rows.append(i)
            for key, sentences in zip(keys, values):
                texts[key].extend(sentences)
                nsent[key].append(len(sentences))
        rows = np.array(rows, dtype=np.int64)
        encoded = {k: (*self.encode_flat(texts[k]), np.array(nsent[k], dtype=np.int64)) for k in keys}
        return self._pack(job, rows, encoded, bad)

    def _native(self, job):
        fname, first_line, _, block = job
        status, per_key = self.native_jsonl(block)
        ok_rows = np.flatnonzero(status == 0)
        bad = BadInput()
        if ok_rows.size == status.size:  # every line done in C++: one sentence per key and line
            ones = np.ones(ok_rows.size, dtype=np.int64)
            return self._pack(job, ok_rows, {k: (ids, lens, ones) for k, (ids, lens) in zip(self.keys, per_key)},
                              bad)
        lines = block.split(b"\n")  # the lines C++ left: parsed and encoded as the pure-Python path does
        texts = {k: [] for k in self.keys}
        nsent = {k: [] for k in self.keys}
        py_rows = []
        for r in np.flatnonzero(status != 0).tolist():
            try:
                line = lines[r].decode("utf-8")
            except UnicodeDecodeError:
                bad.add("not UTF-8", (fname, first_line + r))
                continue
            values = _parse_line(line, self.keys, None)
            if isinstance(values, str):
                bad.add(values, (fname, first_line + r))
                continue
            py_rows.append(r)
            for key, sentences in zip(self.keys, values):
                texts[key].extend(sentences)
                nsent[key].append(len(sentences))
        py_rows = np.array(py_rows, dtype=np.int64)
        rows = np.concatenate([ok_rows, py_rows])
        row_order = np.argsort(rows, kind="stable")
        encoded = {}
        for key, (ids, lens) in zip(self.keys, per_key):
            py_ids, py_lens = self.encode_flat(texts[key])
            py_nsent = np.array(nsent[key], dtype=np.int64)
            encoded[key] = _merge_rows(ok_rows, ids, lens, py_rows, py_ids, py_lens, py_nsent) + \
                (np.concatenate([np.ones(ok_rows.size, dtype=np.int64), py_nsent])[row_order],)
        return self._pack(job, rows[row_order], encoded, bad)

    def _pack(self, job, rows, encoded, bad):
        """Megatron's arrays for the block's parsed lines `rows` (ascending) and per key (ids, sentence lengths,
        sentences per row)."""
        fname, first_line, first_global, block = job
        keep = np.ones(rows.size, dtype=bool)
        for ids, lens, ns in encoded.values():  # a line with a sentence the tokenizer rejects is dropped from all keys
            keep[np.repeat(np.arange(rows.size), ns)[lens < 0]] = False
        for r in rows[~keep].tolist():
            bad.add("tokenizer error", (fname, first_line + r))
        doc_part = (first_global + rows[keep]) % self.partitions
        arrays: dict[int, dict] = {}
        for key, (ids, lens, ns) in encoded.items():
            packed = pack_documents(ids, lens, ns, keep, self.eod)
            for r in rows[keep][packed[2] == 0].tolist():
                bad.add(f"empty document ('{key}', kept as Megatron-LM keeps it)", (fname, first_line + r))
            for p, (tokens, seq_lens, nseq) in _split_partitions(packed, doc_part, self.partitions).items():
                # One uint32 -> dtype conversion per block and key; ids always fit (dtype comes from vocab_size).
                arrays.setdefault(p, {})[key] = (tokens.astype(self.dtype), seq_lens, nseq)
        return arrays, int(keep.sum()), len(block), bad


def _merge_rows(rows_a, ids_a, lens_a, rows_b, ids_b, lens_b, nsent_b):
    """The sentences of two sets of rows (a: one sentence per row; b: nsent_b per row) interleaved in row order:
    (ids, sentence lengths). Lengths -1 (failed) have no ids."""
    sent_rows = np.concatenate([rows_a, np.repeat(rows_b, nsent_b)])
    lens = np.concatenate([lens_a, lens_b])
    sizes = np.maximum(lens, 0)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    order = np.argsort(sent_rows, kind="stable")  # a row's sentences come from one side, in order
    all_ids = np.concatenate([ids_a, ids_b])
    take = sizes[order]
    gather = np.repeat(starts[order] - np.concatenate([[0], np.cumsum(take)[:-1]]), take) + np.arange(take.sum())
    return all_ids[gather], lens[order]


def block_texts(block: bytes, keys, limit: int) -> list[str]:
    """Up to `limit` bytes of the strings of a block's good lines (for the start-up check of the fast path)."""
    out, size = [], 0
    for line in _decode_lines(block, "", 0, BadInput()):
        values = None if line is None else _parse_line(line, keys, None)
        if values is None or isinstance(values, str):
            continue
        for sentences in values:
            for text in sentences:
                if size >= limit:
                    return out
                out.append(text[: limit - size])
                size += len(out[-1])
    return out


_W: dict = {}


def worker_init(tokenizer, keys, eod, splitter_spec, partitions, dtype, use_reference) -> None:
    encode_flat = reference_flat(tokenizer) if use_reference else flat_encoder(tokenizer)
    _W["encode"] = BlockEncoder(encode_flat, keys, eod, build_splitter(*splitter_spec) if splitter_spec else None,
                                partitions, dtype)


def encode_block(job):
    return _W["encode"](job)


def reference_flat(tokenizer):
    from omni_mega.data.text.bpe import flat_encode

    return lambda texts: flat_encode(tokenizer.reference_encode, texts)
