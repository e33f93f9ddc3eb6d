"""`tools/preprocess_mmdata.py`: image-text pairs -> omni_mega image-text shards (WebDataset-style tars + index;
see omni_mega/data/multimodal/shards.py and docs/multimodal_data.md).

Input, either:
- JSONL (a file or a glob, `.gz` too): one object per line, `{"image": path, "text": caption}` (keys set with
  --image-key/--text-key); a relative image path is relative to the JSONL file's directory;
- a directory: every image file under it (sorted by relative path) with its caption in a same-stem `.txt` file.

Each image is validated by decoding it once with the training decoder (`omni_mega.data.images.decode_one`) and stored
as its original bytes: images the decoder converts (grayscale, CMYK, alpha, 16-bit) are kept and counted as
converted. Bad input (malformed JSON, a missing key, a missing/unreadable/corrupt/truncated/empty/zero-size image, an
aspect ratio above 200, empty text, text the tokenizer rejects) is skipped, counted by reason with its first few
places, printed at the end and stored in dataset.json; the surviving samples keep the input order.

Example:
    python tools/preprocess_mmdata.py --input pairs.jsonl --output-dir data/mm --tokenizer-type byte --workers 2
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import multiprocessing
import os
import sys
import time
from collections import Counter, deque
from pathlib import Path

import numpy as np

from omni_mega.data.multimodal.shards import ByteTokenizer, MMShardWriter, tokenizer_identity

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MAX_SHOWN = 5  # places shown per bad-input reason
JOB_ITEMS = 16  # samples per worker job: enough to amortise the pickling of a job, small enough to keep order cheap


class BadInput:
    """Counts of skipped input by reason, with the first few places ("file.jsonl:7" or an image path) of each."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.first: dict[str, list[str]] = {}

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        shown = self.first.setdefault(reason, [])
        if len(shown) < MAX_SHOWN:
            shown.append(where)

    def report(self) -> str:
        return "\n".join(f"  {r}: {self.counts[r]} (first at {', '.join(self.first[r])})" for r in sorted(self.counts))


# ----------------------------------------------------------------------------------------------------------------
# Input: items are (where, image path, text) or (where, reason) for input rejected before any image is read.

def _jsonl_items(files: list[str], image_key: str, text_key: str):
    for fname in files:
        base = os.path.dirname(os.path.abspath(fname))
        with (gzip.open(fname, "rb") if fname.endswith(".gz") else open(fname, "rb")) as f:
            for n, raw in enumerate(f, 1):
                where = f"{os.path.basename(fname)}:{n}"
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    yield where, "not UTF-8"
                    continue
                except ValueError:
                    yield where, "malformed JSON"
                    continue
                if not isinstance(obj, dict):
                    yield where, "malformed JSON"
                elif image_key not in obj or text_key not in obj:
                    yield where, "missing key"
                elif not isinstance(obj[image_key], str) or not isinstance(obj[text_key], str):
                    yield where, "value not a string"
                else:
                    yield where, os.path.join(base, obj[image_key]), obj[text_key]


def _folder_items(root: str):
    images = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    for path in images:
        where = str(path.relative_to(root))
        caption = path.with_suffix(".txt")
        try:
            text = caption.read_text(encoding="utf-8")
        except FileNotFoundError:
            yield where, "missing caption file"
            continue
        except (OSError, UnicodeDecodeError):
            yield where, "unreadable caption file"
            continue
        yield where, str(path), text


def input_items(pattern: str, image_key: str, text_key: str):
    """The input's items in order; raises ValueError for an input that does not exist."""
    if os.path.isdir(pattern):
        return _folder_items(pattern)
    files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not files or not all(os.path.isfile(f) for f in files):
        raise ValueError(f"--input {pattern!r}: no such JSONL file(s) or directory")
    return _jsonl_items(files, image_key, text_key)


# ----------------------------------------------------------------------------------------------------------------
# Worker side: one job = a list of items -> a list of samples (dicts) or (where, reason) pairs, in order.

_W: dict = {}


def _init(tokenizer) -> None:
    _W["tok"] = tokenizer


def _process(item):
    from omni_mega.data.images import MAX_DECODE_PIXELS, decode_one

    if len(item) == 2:
        return item
    where, path, text = item
    if not text.strip():
        return where, "empty text"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return where, "missing image file"
    except OSError:
        return where, "unreadable image file"
    # factor 1, no pixel bounds: validate and convert like training does, without resizing.
    try:
        decoded = decode_one(data, factor=1, min_pixels=0, max_pixels=MAX_DECODE_PIXELS)
    except Exception:  # noqa: BLE001 - decode_one reports known failures; anything else Pillow raises is bad data too
        return where, "image corrupt"
    if decoded.error is not None:
        return where, f"image {decoded.error.reason}"
    try:
        ids = np.asarray(_W["tok"].encode(text), dtype=np.int64)
    except Exception:  # noqa: BLE001 - any tokenizer failure is bad input for this sample
        return where, "tokenizer error"
    if ids.size == 0:
        return where, "empty text"
    h, w = decoded.image.shape[:2]
    return {"where": where, "image": data, "tokens": ids, "height": h, "width": w, "text": text,
            "converted_from": decoded.converted_from, "nbytes": len(data) + len(text.encode("utf-8"))}


def _process_job(items):
    return [_process(item) for item in items]


def _jobs(items):
    job = []
    for item in items:
        job.append(item)
        if len(job) == JOB_ITEMS:
            yield job
            job = []
    if job:
        yield job


def _results(jobs, workers: int, tokenizer):
    """Job results in job order; with workers > 1 at most 2 * workers + 1 jobs are in flight."""
    if workers == 1:
        _init(tokenizer)
        yield from map(_process_job, jobs)
        return
    with multiprocessing.get_context("fork").Pool(workers, _init, (tokenizer,)) as pool:
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.apply_async(_process_job, (job,)))
            if len(pending) > 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ----------------------------------------------------------------------------------------------------------------
# Main side.

def build_tokenizer_from_args(args):
    if args.tokenizer_type == "byte":
        return ByteTokenizer()
    from omni_mega.data.text.tokenizer import build_tokenizer

    paths = {"GPT2BPETokenizer": dict(vocab_file=args.vocab_file, merge_file=args.merge_file),
             "HuggingFaceTokenizer": dict(tokenizer_model=args.tokenizer_model),
             "NullTokenizer": dict(vocab_size=args.vocab_size)}[args.tokenizer_type]
    return build_tokenizer(args.tokenizer_type, **paths)


class _Progress:
    def __init__(self, interval: int) -> None:
        self.interval, self.seen, self.bytes, self.start = max(1, interval), 0, 0, time.time()

    def update(self, nbytes: int) -> None:
        self.seen += 1
        self.bytes += nbytes
        if self.seen % self.interval == 0:
            print(f"Processed {self.seen} samples ({self.rates()}).", file=sys.stderr, flush=True)

    def rates(self) -> str:
        dt = max(time.time() - self.start, 1e-9)
        return f"{self.seen / dt:.1f} samples/s, {self.bytes / dt / 2**20:.2f} MB/s"


def run(args) -> dict:
    """Preprocesses per `args` (the parsed command line); returns a summary (samples, bad counts, converted, ...)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are processes; no nested thread pools
    tok = build_tokenizer_from_args(args)
    items = input_items(args.input, args.image_key, args.text_key)
    bad, converted, progress = BadInput(), Counter(), _Progress(args.log_interval)
    with MMShardWriter(args.output_dir, tokenizer_identity(tok), shard_size=args.shard_size) as writer:
        for results in _results(_jobs(items), args.workers, tok):
            for r in results:
                if isinstance(r, tuple):
                    bad.add(r[1], r[0])
                    progress.update(0)
                    continue
                meta = {"source": r["where"]}
                if r["converted_from"]:
                    converted[r["converted_from"]] += 1
                    meta["converted_from"] = r["converted_from"]
                writer.add(r["image"], r["tokens"], height=r["height"], width=r["width"], text=r["text"], meta=meta)
                progress.update(r["nbytes"])
        report = {"counts": dict(bad.counts), "first": bad.first}
        writer.finish(bad_input=report, converted=dict(converted), input=args.input, input_samples=progress.seen)
    seconds = time.time() - progress.start
    print(f"Done: {writer.count} of {progress.seen} samples written to {args.output_dir} in {len(writer.shards)} "
          f"shard(s), {seconds:.2f} s ({progress.rates()}); converted to RGB at load: {dict(converted) or 'none'}.",
          file=sys.stderr)
    print(f"Bad input (skipped):\n{bad.report()}" if bad.counts else "Bad input: none", file=sys.stderr)
    return {"samples": writer.count, "seen": progress.seen, "bad": dict(bad.counts), "bad_first": bad.first,
            "converted": dict(converted), "shards": len(writer.shards), "seconds": seconds,
            "output_dir": str(args.output_dir)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_argument_group("input data")
    g.add_argument("--input", required=True, help="JSONL file or glob (.gz too), or a directory of images + .txt")
    g.add_argument("--image-key", default="image", help="JSONL key of the image path")
    g.add_argument("--text-key", default="text", help="JSONL key of the text")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", default="byte",
                   choices=["byte", "GPT2BPETokenizer", "HuggingFaceTokenizer", "NullTokenizer"])
    g.add_argument("--tokenizer-model", help="HuggingFaceTokenizer: local tokenizer.json or its directory")
    g.add_argument("--vocab-file", help="GPT2BPETokenizer: encoder.json")
    g.add_argument("--merge-file", help="GPT2BPETokenizer: vocab.bpe")
    g.add_argument("--vocab-size", type=int, help="NullTokenizer: number of ids before eod")
    g = p.add_argument_group("output data")
    g.add_argument("--output-dir", required=True, help="dataset directory (dataset.json + shards)")
    g.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="worker processes (validation + tokenization)")
    g.add_argument("--log-interval", type=int, default=1000, help="report progress every this many samples")
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1 or args.shard_size < 1:
        parser.error(f"--workers and --shard-size must be >= 1, got {args.workers} and {args.shard_size}")
    try:
        return run(args)
    except ValueError as e:
        parser.error(str(e))

