"""JSONL -> Megatron indexed dataset (.bin/.idx), with Megatron-LM's `tools/preprocess_data.py` command line and
output bytes, made fast.

Output: `{output_prefix}_{key}_{document|sentence}.bin/.idx` per `--json-keys` key, in the layout megatron-core's
`IndexedDatasetBuilder` writes (written by idx_writer.py without importing megatron-core or torch); token dtype
uint16 when vocab_size < 65500, else int32 (`DType.optimal_dtype`).

Megatron-LM's algorithm, which this reproduces byte for byte (the tests check it against a plain single-process
re-implementation with the reference tokenizers):
- each line is a JSON object; for each key, a string is one sentence, a list of strings is a list of sentences
  (`--split-sentences` splits a string with nltk punkt first); empty sentences are dropped;
- `--append-eod` appends eod to a non-empty document, counted in its last sentence's length;
- every line becomes one document (`add_document(ids, sentence_lengths)`), an empty one too;
- `--partitions P` deals lines round-robin to P partitions (`--keep-sequential-samples`: contiguous blocks), each is
  written separately and the outputs are concatenated in partition order (`add_index`), so with P > 1 the document
  order is lines 0, P, 2P, ..., then 1, P+1, ...; with contiguous blocks it is the input order.

What is faster (see benchmarks/data/bench_preprocess.py): GPT-2 BPE and byte-level BPE tokenizer.json files
(Llama-3, Qwen2/Qwen3, ...) run in C++ (bpe.py, csrc/bpe/) with the reference's exact ids, checked at start on a
sample of the input against the reference (the run falls back to the reference, with a warning, if they ever
differ). The main thread reads the input in blocks of whole lines (1 MiB on the C++ path, 256 KiB otherwise); each
block is one job. On the C++ path the job parses the lines (csrc/bpe/jsonl.h: the lines json.loads reads the same
way; the others are parsed in Python) and encodes them in one call without the GIL; otherwise each line is parsed
with json.loads and each key's sentences encoded in one `encode_flat` call. Megatron's arrays are built with numpy
for the whole block (`pack_documents`: empty sentences dropped, eod appended): one token array per block, key and
partition, appended to the output in one write. With the C++ encoder, `--workers N` runs jobs on N threads of this
process (output identical for any N); other tokenizers (HF files the C++ encoder does not reproduce,
NullTokenizer, the references) run jobs in N worker processes, as Megatron-LM does.

Why not gigatoken (0.10.0, which Megatron-LM's newest tools/preprocess_data_fast.py uses): in the same benchmark
runs it tokenises 0.97-1.23x as many MB per CPU-second as ours on one thread (1.05-1.6x before our last two
pre-tokenizer and cache changes; its ids equal ours on the KJV and a non-ASCII mix, GPT-2 and a Qwen2-style file),
but its `encode(str)` holds the GIL (a Python thread beside it ran at 24% of
its idle speed, beside ours at 88%), so it cannot share one process's cores; its JSONL reader drops every document
after a bad line; special-token strings in text become special tokens unless its added tokens are removed; it keeps
all output in memory; and it adds a 5 MB binary and two dependencies. Ours parses the JSON without the GIL too, is
exact by construction against each reference (down to Unicode versions and merge order) and needs nothing beyond
this package. gigatoken stays a benchmark comparison (the `bench` extra).

Differences from Megatron-LM, on input it cannot process at all: a bad line (not UTF-8, not a JSON object, missing a
key, a value that is not a string or list of strings, text the tokenizer rejects) is skipped in every output, counted
and reported with its first line numbers, where Megatron-LM crashes. Globs are expanded in sorted order and `.gz`
is read in every mode. For HuggingFaceTokenizer, a special-token string in the text (`<|endoftext|>`) is ordinary
text, as GPT2BPETokenizer treats it in Megatron-LM, unless `--match-special-tokens` (then it is that special token,
as transformers and Megatron-LM's HuggingFaceTokenizer have it).

Outputs (outputs.py): the dataset is built under `*.tmp-<host>-<pid>` names next to the output and swapped in at
the end, only when complete and holding at least one non-empty document; a run that keeps nothing, or rejects all of
its input, exits 1 with one line on stderr and leaves an existing dataset as it was; a missing or unwritable output
directory, an unreadable input or swapped/wrong tokenizer files exit 2 with one line. Temporaries of killed runs
are removed by the next run.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import itertools
import os
import sys
import time

import numpy as np

from omni_mega.data.text import outputs
from omni_mega.data.text.encode_blocks import (BadInput, BlockEncoder, build_splitter, encode_block, reference_flat,
                                             worker_init, block_texts, flat_encoder)
from omni_mega.data.text.idx_writer import IndexedWriter, concatenate, optimal_dtype
from omni_mega.data.tool_cli import PreprocessError, add_tokenizer_args, run_tool

# 256 KiB per job for worker processes (~200 documents of 1 KB): pickling a block costs <1% of encoding it, and
# blocks this small keep the workers evenly loaded up to the end of the input. The C++ path (no pickling) takes
# NATIVE_BLOCK_FACTOR times that: its per-block Python work (~0.2 ms) was ~5% of a 256 KiB block's time on the KJV.
BLOCK_BYTES = 1 << 18
NATIVE_BLOCK_FACTOR = 4
# The fast tokenizer is compared with the reference on these and on up to SAMPLE_BYTES of the input's first texts
# before the run (the pure-Python GPT-2 reference does ~0.5-1 MB/s here: ~20-30 ms of start-up, ~0.1 s with its
# import and tables).
SAMPLE_BYTES = 1 << 14
PROBE_TEXTS = [
    "Hello world", "it's they're we've I'm you'll he'd 'S 'LL 'ſ", "  leading and trailing  \n\n\n x\t\ty",
    "numbers 1234567 3.14159 -42", "ünïcödé naïve café e\u0301", "日本語のテキスト、中文字。", "Привет, мир!",
    "emoji 🙂🚀 👩\u200d👩\u200d👧 \U0001FAE8", "a <|endoftext|> b <|im_start|>user", "\x00\x1c\x7f\r\n\u2028\xa0\u3000x",
]


# ----------------------------------------------------------------------------------------------------------------
# Main side: read blocks, write the outputs, merge partitions, swap in.

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


def append_documents(writer: IndexedWriter, tokens: np.ndarray, seq_lengths: np.ndarray,
                     nseq_per_doc: np.ndarray) -> None:
    """Exactly what `builder.add_document(doc_ids, doc_seq_lengths)` per document does, for many documents at once:
    one write of the tokens, the sequence lengths appended, and one document end per document."""
    writer.add_documents(tokens, seq_lengths, nseq_per_doc)


def output_paths(prefix: str, key: str, level: str) -> tuple[str, str]:
    return f"{prefix}_{key}_{level}.bin", f"{prefix}_{key}_{level}.idx"


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
        return build_tokenizer(kind, tokenizer_model=args.tokenizer_model,
                               special_tokens_as_text=not args.match_special_tokens)
    if kind == "NullTokenizer":
        return build_tokenizer(kind, vocab_size=args.vocab_size)
    return build_tokenizer(kind)


def _ordered(submit, jobs, window: int):
    """submit(job).result() in job order, with at most `window` jobs in flight (Pool.imap would queue the whole
    input)."""
    from collections import deque

    pending = deque()
    for job in jobs:
        pending.append(submit(job))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _AsyncResult:
    def __init__(self, r):
        self.r = r

    def result(self):
        return self.r.get()


def _results(jobs, mode: str, workers: int, encoder: BlockEncoder, init: tuple):
    """Block results in input order: inline, on `workers` threads (the C++ encoder releases the GIL), or in
    `workers` forked processes."""
    if mode == "inline":
        yield from map(encoder, jobs)
    elif mode == "threads":
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            yield from _ordered(lambda job: pool.submit(encoder, job), jobs, 2 * workers + 1)
    else:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers, worker_init, init) as pool:
            yield from _ordered(lambda job: _AsyncResult(pool.apply_async(encode_block, (job,))), jobs,
                                2 * workers + 1)


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads) and of its finished children (joined workers)."""
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


def _has_native(tok) -> bool:
    return str(getattr(tok, "fast_backend", "")).startswith("C++")


def run(args) -> dict:
    """Preprocesses per `args` (the parsed command line); returns a summary dict (docs, bytes, seconds, bad).
    Raises PreprocessError (code 1: nothing to write; 2: fix the command line or files) and ValueError."""
    import gc

    # The run allocates many short-lived arrays and no reference cycles: the cycle collector only costs time
    # (~3% of CPU on the KJV).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(args)
    finally:
        if enabled:
            gc.enable()


def _run(args) -> dict:
    files = expand_inputs(args.input)
    prefix = args.output_prefix
    out_dir = os.path.dirname(os.path.abspath(prefix))
    try:
        outputs.check_output_dir(out_dir, "--output-prefix")
    except outputs.OutputError as e:
        raise PreprocessError(str(e), 2) from None
    notes = [f"removed stale temporary {p}" for p in outputs.remove_stale(out_dir, os.path.basename(prefix))]
    tok = tokenizer_from_args(args)
    level = "sentence" if args.split_sentences else "document"
    dtype = optimal_dtype(tok.vocab_size)
    # Contiguous partitions concatenate back to the input order, so they are one partition here.
    nparts = 1 if args.keep_sequential_samples else args.partitions
    splitter_spec = (args.lang, args.keep_newlines) if args.split_sentences else None
    eod = tok.eod if args.append_eod else None

    native = _has_native(tok)
    blocks = iter_blocks(files, BLOCK_BYTES * (NATIVE_BLOCK_FACTOR if native and not splitter_spec else 1))
    first = next(blocks, None)
    jobs = itertools.chain([first], blocks) if first is not None else iter(())
    use_reference = False
    if first is not None:  # the fast path must give the reference's ids on a sample of this input
        from omni_mega.data.text.tokenizer import check_fast_path

        problem = check_fast_path(tok, PROBE_TEXTS + block_texts(first[3], args.json_keys, SAMPLE_BYTES))
        if problem:
            notes.append(f"warning: {problem}; using the reference tokenizer (slow)")
            print(notes[-1], file=sys.stderr)
            use_reference = True
    native = native and not use_reference
    mode = "inline" if args.workers == 1 else ("threads" if native else "processes")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are processes; no nested thread pools
    encode_flat = reference_flat(tok) if use_reference else flat_encoder(tok)
    splitter = build_splitter(*splitter_spec) if splitter_spec and mode != "processes" else None
    native_jsonl = None
    if native and not splitter_spec:  # JSON parsing in C++ too (no sentence splitting there)
        enc, keys = tok.native_encoder(), list(args.json_keys)
        native_jsonl = lambda block: enc.encode_jsonl(block, keys)  # noqa: E731
    encoder = BlockEncoder(encode_flat, args.json_keys, eod, splitter, nparts, dtype, native_jsonl)
    init = (tok, args.json_keys, eod, splitter_spec, nparts, dtype, use_reference)

    suffix = outputs.tmp_suffix()
    finals = {key: output_paths(prefix, key, level) for key in args.json_keys}
    tmp_dir = f"{prefix}{suffix}"
    if nparts == 1:
        part_bins = {(0, k): f"{b}{suffix}" for k, (b, _) in finals.items()}
    else:
        os.makedirs(tmp_dir)
        part_bins = {(p, k): os.path.join(tmp_dir, f"part{p}_{k}.bin") for p in range(nparts) for k in finals}
    tmp_pairs = [(f"{b}{suffix}", f"{i}{suffix}", b, i) for b, i in finals.values()]
    progress, bad, tokens_written = _Progress(args.log_interval), BadInput(), 0
    writers: dict = {}
    try:
        writers = {pk: IndexedWriter(path, dtype) for pk, path in part_bins.items()}
        for arrays, docs, nbytes, block_bad in _results(jobs, mode, args.workers, encoder, init):
            for p, per_key in arrays.items():
                for key, (tokens, seq_lens, nseq) in per_key.items():
                    append_documents(writers[p, key], tokens, seq_lens, nseq)
                    tokens_written += tokens.size
            bad.merge(block_bad)
            progress.update(docs, nbytes)
        if progress.docs == 0 or tokens_written == 0:
            lines = sum(bad.counts.values()) + progress.docs
            why = (f"all {lines} input lines were rejected ({bad.summary()})" if bad.counts and not progress.docs
                   else "the input has no lines" if not progress.docs else "every kept document is empty")
            raise PreprocessError(f"no documents with tokens to write: {why}; nothing was written"
                                  f"{' and the existing dataset is untouched' if _exists(finals) else ''}", 1)
        for key, (tmp_bin, tmp_idx, _, _) in zip(finals, tmp_pairs):
            if nparts == 1:
                writers[0, key].finalize(tmp_idx)
            else:
                concatenate([writers[p, key] for p in range(nparts)], tmp_bin, tmp_idx)
        outputs.replace_pairs(tmp_pairs)
    finally:
        for w in writers.values():
            w.close()
        _remove_temps(tmp_dir, tmp_pairs)
    seconds, cpu = time.time() - progress.start, cpu_seconds() - progress.cpu_start
    how = f"{tok.fast_backend if not use_reference else 'reference tokenizer'}, {mode}"
    print(f"Done: {progress.docs} documents from {len(files)} file(s) in {seconds:.2f} s ({progress.rates()}; "
          f"CPU {cpu:.2f} s; {how}).", file=sys.stderr)
    print(f"Bad or empty input:\n{bad.report()}" if bad.counts else "Bad input: none", file=sys.stderr)
    for note in notes:
        if not note.startswith("warning"):
            print(note, file=sys.stderr)
    return {"docs": progress.docs, "bytes": progress.bytes, "seconds": seconds, "cpu_seconds": cpu,
            "bad": dict(bad.counts), "bad_first": {k: list(v) for k, v in bad.first.items()}, "outputs": finals,
            "mode": mode, "tokenizer": how, "notes": notes}


def _exists(finals: dict) -> bool:
    return any(os.path.exists(i) for _, i in finals.values())


def _remove_temps(tmp_dir: str, tmp_pairs) -> None:
    import shutil

    for tmp_bin, tmp_idx, _, _ in tmp_pairs:
        for path in (tmp_bin, tmp_idx):
            if os.path.exists(path):
                os.remove(path)
    shutil.rmtree(tmp_dir, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    """Megatron-LM's `tools/preprocess_data.py` options (plus `--reference-bpe`, `--match-special-tokens`)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_argument_group("input data")
    g.add_argument("--input", required=True, help="JSONL file or glob (.gz too)")
    g.add_argument("--json-keys", nargs="+", default=["text"], help="keys to extract from each JSON line")
    g.add_argument("--split-sentences", action="store_true", help="split documents into sentences (nltk)")
    g.add_argument("--keep-newlines", action="store_true", help="keep newlines between sentences when splitting")
    g = p.add_argument_group("tokenizer")
    add_tokenizer_args(g, ("GPT2BPETokenizer", "HuggingFaceTokenizer", "NullTokenizer", "demo"), default=None)
    g.add_argument("--append-eod", action="store_true", help="append an end-of-document token to each document")
    g.add_argument("--lang", default="english", help="nltk punkt language for --split-sentences")
    g.add_argument("--legacy-tokenizer", action="store_true", help="accepted for compatibility; no effect")
    g.add_argument("--reference-bpe", action="store_true", help="pure-Python GPT-2 BPE (slow; for checking)")
    g.add_argument("--match-special-tokens", action="store_true",
                   help="HuggingFaceTokenizer: a special-token string in the text (<|endoftext|>) is that token, "
                        "as transformers has it (default: ordinary text, as GPT2BPETokenizer)")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="path prefix of the .bin/.idx outputs")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, required=True,
                   help="threads (C++ tokenizers) or worker processes (others)")
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
    return run_tool(run, args, "preprocess_data.py")
