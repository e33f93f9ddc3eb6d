"""`tools/preprocess_mmdata.py`: image-text pairs -> omni_mega image-text shards (WebDataset-style tars + index;
see omni_mega/data/multimodal/shards.py and docs/multimodal_data.md).

Input, either:
- JSONL (a file or a glob, `.gz` too): one object per line, `{"image": path, "text": caption}` (keys set with
  --image-key/--text-key); a relative image path is relative to the JSONL file's directory;
- a directory: every image file under it (sorted by relative path) with its caption in a same-stem `.txt` file.

Each image is validated by decoding it once with the training decoder (`omni_mega.data.images.decode_one`) and stored
as its original bytes: images the decoder converts (grayscale, CMYK, alpha, 16-bit) are kept and counted as
converted. Bad input (malformed JSON, a missing key, a missing/unreadable/corrupt/truncated/empty/zero-size image, an
aspect ratio above 200, empty text, text the tokenizer rejects; in a folder, a symlink loop) is skipped, counted by
reason with its first few places, printed at the end and stored in dataset.json; the surviving samples keep the
input order. Folder mode follows symlinked directories; one that leads back to a directory above it is counted as
"symlink_loop", as is an image symlink that resolves to itself, and a directory reached a second time through
another symlink is counted, not read twice.

Safe outputs (omni_mega/data/text/outputs.py): the dataset is written into `<output-dir>.tmp-<host>-<pid>` next to
the output and swapped in at the end, only when it holds at least one sample; a run that keeps no sample (all input
rejected, or none) exits 1 with one line on stderr and leaves an existing dataset, dataset.json included, as it
was, and so does a killed run. A parent directory that cannot be created or written, an output directory holding
files that are not a dataset, or a missing input exit 2 with one line. The next run removes temporaries of killed runs.

Example:
    python tools/preprocess_mmdata.py --input pairs.jsonl --output-dir data/mm --tokenizer-type byte --workers 2
"""

from __future__ import annotations

import argparse
import errno
import glob
import gzip
import json
import multiprocessing
import os
import re
import sys
import time
from collections import Counter, deque
from pathlib import Path

import numpy as np

from omni_mega.data.multimodal.shards import ByteTokenizer, MMShardWriter, tokenizer_identity
from omni_mega.data.text import outputs
from omni_mega.data.tool_cli import PreprocessError, add_tokenizer_args, run_tool

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


def _folder_images(root: str):
    """(relative path, path | None, reason | None) of every image file under root in sorted path order, following
    symlinked directories; loops and second visits of a directory are reported instead of walked."""
    out = []

    def walk(d: str, rel: tuple, ancestors: frozenset, visited: set):
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            out.append(("/".join(rel) or ".", None, "unreadable directory"))
            return
        for e in entries:
            r = rel + (e.name,)
            image = Path(e.name).suffix.lower() in IMAGE_EXTS
            try:
                st = os.stat(e.path)  # follows symlinks
            except OSError as err:
                if e.is_symlink() and err.errno == errno.ELOOP:
                    out.append(("/".join(r), None, "symlink_loop"))
                elif e.is_symlink() and image:
                    out.append(("/".join(r), None, "missing image file"))  # a dangling link
                continue
            if os.path.isdir(e.path):
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    out.append(("/".join(r), None, "symlink_loop"))
                elif key in visited:
                    out.append(("/".join(r), None, "directory reached twice (symlink)"))
                else:
                    visited.add(key)
                    walk(e.path, r, ancestors | {key}, visited)
            elif image and os.path.isfile(e.path):
                out.append(("/".join(r), e.path, None))

    top = os.stat(root)
    walk(root, (), frozenset({(top.st_dev, top.st_ino)}), {(top.st_dev, top.st_ino)})
    return out


def _folder_items(root: str):
    for where, path, reason in _folder_images(root):
        if reason is not None:
            yield where, reason
            continue
        caption = Path(path).with_suffix(".txt")
        try:
            text = caption.read_text(encoding="utf-8")
        except FileNotFoundError:
            yield where, "missing caption file"
            continue
        except (OSError, UnicodeDecodeError):
            yield where, "unreadable caption file"
            continue
        yield where, path, text


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
    # Imported here, not at the top: it imports torch (~5 s of start-up), needless when nothing gets this far.
    from omni_mega.data.images import MAX_DECODE_PIXELS, decode_one

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


_DATASET_FILE = re.compile(r"^(dataset\.json|shard-\d+\.(tar|idx\.npy))$")


def _check_output(out_dir: str) -> str:
    """The parent directory of --output-dir, created when missing (preprocess.sbatch relies on it) and checked
    writable; an existing --output-dir must hold only a dataset (`outputs.prepare_dataset_dir`)."""
    try:
        return outputs.prepare_dataset_dir(out_dir, "--output-dir", _DATASET_FILE)
    except outputs.OutputError as e:
        raise PreprocessError(str(e), 2) from None


def run(args) -> dict:
    """Preprocesses per `args` (the parsed command line); returns a summary (samples, bad counts, converted, ...).
    Raises PreprocessError (1: nothing to write, 2: fix the command line or files) and ValueError."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are processes; no nested thread pools
    out_dir = os.path.abspath(args.output_dir)
    parent = _check_output(out_dir)
    notes = [f"removed stale temporary {p}" for p in outputs.remove_stale(parent, os.path.basename(out_dir))]
    tok = build_tokenizer_from_args(args)
    items = input_items(args.input, args.image_key, args.text_key)
    bad, converted, progress = BadInput(), Counter(), _Progress(args.log_interval)
    tmp_dir = out_dir + outputs.tmp_suffix()
    try:
        with MMShardWriter(tmp_dir, tokenizer_identity(tok), shard_size=args.shard_size) as writer:
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
                    writer.add(r["image"], r["tokens"], height=r["height"], width=r["width"], text=r["text"],
                               meta=meta)
                    progress.update(r["nbytes"])
            if writer.count == 0:
                why = (f"all {progress.seen} input samples were rejected ({_summary(bad)})" if progress.seen
                       else "the input has no samples")
                kept = " and the existing dataset is untouched" if os.path.exists(out_dir) else ""
                raise PreprocessError(f"no samples to write: {why}; nothing was written{kept}", 1)
            report = {"counts": dict(bad.counts), "first": bad.first}
            writer.finish(bad_input=report, converted=dict(converted), input=args.input,
                          input_samples=progress.seen)
        outputs.replace_dir(tmp_dir, out_dir)
    finally:
        if os.path.isdir(tmp_dir):
            import shutil

            shutil.rmtree(tmp_dir, ignore_errors=True)
    seconds = time.time() - progress.start
    print(f"Done: {writer.count} of {progress.seen} samples written to {args.output_dir} in {len(writer.shards)} "
          f"shard(s), {seconds:.2f} s ({progress.rates()}); converted to RGB at load: {dict(converted) or 'none'}.",
          file=sys.stderr)
    print(f"Bad input (skipped):\n{bad.report()}" if bad.counts else "Bad input: none", file=sys.stderr)
    for note in notes:
        print(note, file=sys.stderr)
    return {"samples": writer.count, "seen": progress.seen, "bad": dict(bad.counts), "bad_first": bad.first,
            "converted": dict(converted), "shards": len(writer.shards), "seconds": seconds,
            "output_dir": str(args.output_dir), "notes": notes}


def _summary(bad: BadInput) -> str:
    return ", ".join(f"{r}: {n}" for r, n in sorted(bad.counts.items()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_argument_group("input data")
    g.add_argument("--input", required=True, help="JSONL file or glob (.gz too), or a directory of images + .txt")
    g.add_argument("--image-key", default="image", help="JSONL key of the image path")
    g.add_argument("--text-key", default="text", help="JSONL key of the text")
    add_tokenizer_args(p.add_argument_group("tokenizer"))
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
    return run_tool(run, args, "preprocess_mmdata.py")

