"""JSONL -> Megatron indexed dataset (.bin/.idx), with Megatron-LM's `tools/preprocess_data.py` command line and
output bytes, made fast.

Output: `{output_prefix}_{key}_{document|sentence}.bin/.idx` per `--json-keys` key, written by megatron-core's
`IndexedDatasetBuilder`; token dtype uint16 when vocab_size < 65500, else int32 (`DType.optimal_dtype`).

Megatron-LM's algorithm, which this reproduces byte for byte (the test checks it against a plain single-process
re-implementation with the pure-Python GPT-2 BPE):
- each line is a JSON object; for each key, a string is one sentence, a list of strings is a list of sentences
  (`--split-sentences` splits a string with nltk punkt first); empty sentences are dropped;
- `--append-eod` appends eod to a non-empty document, counted in its last sentence's length;
- every line becomes one document (`add_document(ids, sentence_lengths)`), an empty one too;
- `--partitions P` deals lines round-robin to P partitions (`--keep-sequential-samples`: contiguous blocks), each is
  written separately and the outputs are concatenated in partition order (`add_index`), so with P > 1 the document
  order is lines 0, P, 2P, ..., then 1, P+1, ...; with contiguous blocks it is the input order.

What is faster (see benchmarks/data/bench_preprocess.py): the GPT-2 BPE runs in C++ (bpe.py, csrc/bpe/) with
GPT-2's exact ids; the main process reads the input in 256 KiB blocks and workers get whole blocks (one pickle per
block, not per line); a worker parses the block's lines with json.loads, encodes each key's sentences in one call
(`encode_flat`: flat uint32 ids + lengths), builds Megatron's arrays with numpy (`pack_documents`: empty sentences
dropped, eod appended), and returns one token array per block, key and partition, appended to the builder in one
write (`append_documents`).

Differences from Megatron-LM, on input it cannot process at all: a bad line (not UTF-8, not a JSON object, missing a
key, a value that is not a string or list of strings, text the tokenizer rejects) is skipped in every output, counted
and reported with its first line numbers, where Megatron-LM crashes. Globs are expanded in sorted order and `.gz`
is read in every mode. An interrupted run leaves only `*.tmp-<pid>` files, never a complete-looking `.idx`.
"""

from __future__ import annotations

import argparse
import array
import glob
import gzip
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from omni_mega.data.text.bpe import flat_encode

# 256 KiB per worker job (~200 documents of 1 KB): pickling a block costs <1% of encoding it, and blocks this small
# keep the workers evenly loaded up to the end of the input.
BLOCK_BYTES = 1 << 18
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


# ----------------------------------------------------------------------------------------------------------------
# Worker side: one job = one block of whole lines from one file.

_W: dict = {}


def _worker_init(tokenizer, keys, append_eod, splitter_spec, partitions, dtype) -> None:
    assert array.array("I").itemsize == 4  # uint32 buffers (_list_to_u32, flat_encode)
    _W.update(keys=keys, partitions=partitions, dtype=dtype, encode_flat=flat_encoder(tokenizer),
              eod=tokenizer.eod if append_eod else None,
              splitter=_build_splitter(*splitter_spec) if splitter_spec else None)


def flat_encoder(tokenizer):
    """`encode_flat(texts) -> (ids uint32 [sum], lengths int64 [len(texts)], -1 = failed)` for a tokenizer: GPT-2's
    batched C++ path when it has one (GPT2BPEFast, also inside GPT2BPETokenizer), else one text at a time."""
    for obj in (tokenizer, getattr(tokenizer, "_bpe", None)):
        if hasattr(obj, "encode_flat"):
            return obj.encode_flat
    encode_u32 = getattr(tokenizer, "encode_u32", None) or _list_to_u32(tokenizer.encode)
    return lambda texts: flat_encode(encode_u32, texts)


def _build_splitter(lang: str, keep_newlines: bool):
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
    except ValueError:
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


def _encode_block(job):
    """Worker: (fname, first_line, first_global, block) -> ({partition: {key: arrays}}, docs, bytes, bad).

    The block's lines are parsed in Python (json.loads), then each key's sentences are encoded in one
    `encode_flat` call and packed into Megatron's arrays with numpy: no per-document tokenizer call."""
    fname, first_line, first_global, block = job
    keys, splitter = _W["keys"], _W["splitter"]
    bad = BadInput()
    texts = {k: [] for k in keys}
    nsent = {k: [] for k in keys}
    rows = []  # index in the block of each parsed line
    for i, line in enumerate(_decode_lines(block, fname, first_line, bad)):
        if line is None:
            continue
        values = _parse_line(line, keys, splitter)
        if isinstance(values, str):
            bad.add(values, (fname, first_line + i))
            continue
        rows.append(i)
        for key, sentences in zip(keys, values):
            texts[key].extend(sentences)
            nsent[key].append(len(sentences))
    rows = np.array(rows, dtype=np.int64)
    encoded = {k: (*_W["encode_flat"](texts[k]), np.array(nsent[k], dtype=np.int64)) for k in keys}
    keep = np.ones(rows.size, dtype=bool)
    for ids, lens, ns in encoded.values():  # a line with a sentence the tokenizer rejects is dropped from all keys
        keep[np.repeat(np.arange(rows.size), ns)[lens < 0]] = False
    for r in rows[~keep].tolist():
        bad.add("tokenizer error", (fname, first_line + r))
    doc_part = (first_global + rows[keep]) % _W["partitions"]
    arrays: dict[int, dict] = {}
    for key, (ids, lens, ns) in encoded.items():
        packed = pack_documents(ids, lens, ns, keep, _W["eod"])
        for r in rows[keep][packed[2] == 0].tolist():
            bad.add(f"empty document ('{key}', kept as Megatron-LM keeps it)", (fname, first_line + r))
        for p, (tokens, seq_lens, nseq) in _split_partitions(packed, doc_part, _W["partitions"]).items():
            # One uint32 -> dtype conversion per block and key; ids always fit (dtype comes from vocab_size).
            arrays.setdefault(p, {})[key] = (tokens.astype(_W["dtype"]), seq_lens, nseq)
    return arrays, int(keep.sum()), len(block), bad


# ----------------------------------------------------------------------------------------------------------------
# Main side: read blocks, write builders, merge partitions, rename.

def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def iter_blocks(files: list[str], block_bytes: int = BLOCK_BYTES):
    """Yields (file, first line number (1-based), global line index (0-based), bytes of whole lines)."""
    global_line = 0
    for fname in files:
        line_no = 1
        rest = b""
        with _open_binary(fname) as f:
            while True:
                data = f.read(block_bytes)
                buf = rest + data
                cut = buf.rfind(b"\n") + 1 if data else len(buf)
                if cut == 0 and data:  # a single line longer than the block: keep reading
                    rest = buf
                    continue
                block, rest = buf[:cut], buf[cut:]
                if block:
                    n = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
                    yield fname, line_no, global_line, block
                    line_no += n
                    global_line += n
                if not data:
                    break


def append_documents(builder, tokens: np.ndarray, seq_lengths: np.ndarray, nseq_per_doc: np.ndarray) -> None:
    """Exactly what `builder.add_document(doc_ids, doc_seq_lengths)` per document does, for many documents at once:
    one write of the tokens, the sequence lengths appended, and one document end per document."""
    if tokens.dtype != builder.dtype:
        raise ValueError(f"tokens dtype {tokens.dtype} != builder dtype {builder.dtype}")
    builder.data_file.write(tokens.tobytes())
    base = len(builder.sequence_lengths)
    builder.sequence_lengths.extend(seq_lengths.tolist())
    builder.document_indices.extend((base + np.cumsum(nseq_per_doc)).tolist())


def output_paths(prefix: str, key: str, level: str) -> tuple[str, str]:
    return f"{prefix}_{key}_{level}.bin", f"{prefix}_{key}_{level}.idx"


def commit(tmp_bin: str, tmp_idx: str, final_bin: str, final_idx: str) -> None:
    """Renames a finished pair into place: the old .idx goes first and the new .idx comes last, so a crash in
    between never pairs an .idx with the wrong .bin."""
    if os.path.exists(final_idx):
        os.remove(final_idx)
    os.replace(tmp_bin, final_bin)
    os.replace(tmp_idx, final_idx)


def expand_inputs(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    missing = [f for f in files if not os.path.isfile(f)]
    if not files or missing:
        raise ValueError(f"--input {pattern!r}: no such file(s) {missing or [pattern]}")
    return files


def tokenizer_from_args(args):
    from omni_mega.data.text.tokenizer import build_tokenizer

    kind = args.tokenizer_type
    if kind == "GPT2BPETokenizer":
        return build_tokenizer(kind, vocab_file=args.vocab_file, merge_file=args.merge_file,
                               reference=args.reference_bpe)
    if kind == "HuggingFaceTokenizer":
        return build_tokenizer(kind, tokenizer_model=args.tokenizer_model)
    if kind == "NullTokenizer":
        return build_tokenizer(kind, vocab_size=args.vocab_size)
    return build_tokenizer(kind)


def _ordered_results(pool, jobs, window: int):
    """pool results in job order, with at most `window` blocks in flight (Pool.imap would queue the whole input)."""
    from collections import deque

    pending = deque()
    for job in jobs:
        pending.append(pool.apply_async(_encode_block, (job,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the joined workers)."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


class _Progress:
    def __init__(self, interval: int):
        self.interval, self.docs, self.bytes, self.start = max(1, interval), 0, 0, time.time()
        self.cpu_start = cpu_seconds()

    def update(self, docs: int, nbytes: int) -> None:
        before = self.docs // self.interval
        self.docs, self.bytes = self.docs + docs, self.bytes + nbytes
        if self.docs // self.interval > before:
            print(f"Processed {self.docs} documents ({self.rates()}).", file=sys.stderr, flush=True)

    def rates(self) -> str:
        dt = max(time.time() - self.start, 1e-9)
        return f"{self.docs / dt:.1f} docs/s, {self.bytes / dt / 2**20:.2f} MB/s"


def run(args) -> dict:
    """Preprocesses per `args` (the parsed command line); returns a summary dict (docs, bytes, seconds, bad)."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    files = expand_inputs(args.input)
    tok = tokenizer_from_args(args)
    level = "sentence" if args.split_sentences else "document"
    dtype = DType.optimal_dtype(tok.vocab_size)
    # Contiguous partitions concatenate back to the input order, so they are one partition here.
    nparts = 1 if args.keep_sequential_samples else args.partitions
    tmp = f"{args.output_prefix}.tmp-{os.getpid()}"
    finals = {key: output_paths(args.output_prefix, key, level) for key in args.json_keys}
    if nparts == 1:
        part_paths = {(0, k): (f"{b}.tmp-{os.getpid()}", f"{i}.tmp-{os.getpid()}") for k, (b, i) in finals.items()}
    else:
        os.makedirs(tmp, exist_ok=True)
        part_paths = {(p, k): output_paths(os.path.join(tmp, f"part{p}"), k, level)
                      for p in range(nparts) for k in args.json_keys}
    progress, bad = _Progress(args.log_interval), BadInput()
    splitter = (args.lang, args.keep_newlines) if args.split_sentences else None
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are processes; no nested thread pools
    init = (tok, args.json_keys, args.append_eod, splitter, nparts, dtype)
    try:
        builders = {pk: IndexedDatasetBuilder(b, dtype=dtype) for pk, (b, _) in part_paths.items()}
        with multiprocessing.get_context("fork").Pool(args.workers, _worker_init, init) as pool:
            blocks = iter_blocks(files, BLOCK_BYTES)
            for arrays, docs, nbytes, block_bad in _ordered_results(pool, blocks, 2 * args.workers + 1):
                for p, per_key in arrays.items():
                    for key, (tokens, seq_lens, nseq) in per_key.items():
                        append_documents(builders[p, key], tokens, seq_lens, nseq)
                bad.merge(block_bad)
                progress.update(docs, nbytes)
        for pk, builder in builders.items():
            builder.finalize(part_paths[pk][1])
        _merge_and_commit(part_paths, finals, nparts, dtype)
    finally:
        _remove_temps(tmp, finals)
    seconds, cpu = time.time() - progress.start, cpu_seconds() - progress.cpu_start
    print(f"Done: {progress.docs} documents from {len(files)} file(s) in {seconds:.2f} s ({progress.rates()}; "
          f"CPU {cpu:.2f} s).", file=sys.stderr)
    print(f"Bad or empty input:\n{bad.report()}" if bad.counts else "Bad input: none", file=sys.stderr)
    return {"docs": progress.docs, "bytes": progress.bytes, "seconds": seconds, "cpu_seconds": cpu,
            "bad": dict(bad.counts),
            "bad_first": {k: list(v) for k, v in bad.first.items()}, "outputs": finals}


def _merge_and_commit(part_paths: dict, finals: dict, nparts: int, dtype) -> None:
    """Moves finished outputs into place; with several partitions, concatenates them first in partition order
    (megatron-core's add_index, as Megatron-LM merges its partitions)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    pid = os.getpid()
    for key, (final_bin, final_idx) in finals.items():
        if nparts == 1:
            commit(*part_paths[0, key], final_bin, final_idx)
            continue
        merged = IndexedDatasetBuilder(f"{final_bin}.tmp-{pid}", dtype=dtype)
        for p in range(nparts):
            merged.add_index(part_paths[p, key][0][: -len(".bin")])
        merged.finalize(f"{final_idx}.tmp-{pid}")
        commit(f"{final_bin}.tmp-{pid}", f"{final_idx}.tmp-{pid}", final_bin, final_idx)


def _remove_temps(tmp_dir: str, finals: dict) -> None:
    import shutil

    pid = os.getpid()
    for b, i in finals.values():
        for path in (f"{b}.tmp-{pid}", f"{i}.tmp-{pid}"):
            if os.path.exists(path):
                os.remove(path)
    shutil.rmtree(tmp_dir, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    """Megatron-LM's `tools/preprocess_data.py` options (plus `--reference-bpe`)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_argument_group("input data")
    g.add_argument("--input", required=True, help="JSONL file or glob (.gz too)")
    g.add_argument("--json-keys", nargs="+", default=["text"], help="keys to extract from each JSON line")
    g.add_argument("--split-sentences", action="store_true", help="split documents into sentences (nltk)")
    g.add_argument("--keep-newlines", action="store_true", help="keep newlines between sentences when splitting")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True,
                   choices=["GPT2BPETokenizer", "HuggingFaceTokenizer", "NullTokenizer", "demo"])
    g.add_argument("--tokenizer-model", help="HuggingFaceTokenizer: local tokenizer.json or its directory")
    g.add_argument("--vocab-file", help="GPT2BPETokenizer: encoder.json")
    g.add_argument("--merge-file", help="GPT2BPETokenizer: vocab.bpe")
    g.add_argument("--vocab-size", type=int, help="NullTokenizer: number of ids before eod")
    g.add_argument("--append-eod", action="store_true", help="append an end-of-document token to each document")
    g.add_argument("--lang", default="english", help="nltk punkt language for --split-sentences")
    g.add_argument("--legacy-tokenizer", action="store_true", help="accepted for compatibility; no effect")
    g.add_argument("--reference-bpe", action="store_true", help="pure-Python GPT-2 BPE (slow; for checking)")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="path prefix of the .bin/.idx outputs")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, required=True, help="worker processes")
    g.add_argument("--partitions", type=int, default=1, help="Megatron-LM's input partitions (fixes doc order)")
    g.add_argument("--keep-sequential-samples", action="store_true", help="contiguous partitions (input order)")
    g.add_argument("--log-interval", type=int, default=1000, help="report progress every this many documents")
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1 or args.partitions < 1:
        parser.error(f"--workers and --partitions must be >= 1, got {args.workers} and {args.partitions}")
    if args.workers % args.partitions != 0:  # Megatron-LM's rule, kept so command lines stay interchangeable
        parser.error(f"--workers ({args.workers}) must be a multiple of --partitions ({args.partitions})")
    try:
        return run(args)
    except ValueError as e:
        parser.error(str(e))
