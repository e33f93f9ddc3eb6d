"""`tools/preprocess_audio.py`: audio-transcript pairs -> omni_mega audio shards (`omni_mega.data.audio.shards`).

Input, either:
- JSONL (a file or a glob, `.gz` too): one object per line, `{"audio": path, "text": transcript}` (keys set with
  --audio-key/--text-key); a relative path is relative to the JSONL file's directory;
- a directory: every `.wav` / `.flac` file under it (sorted by relative path; symlinked directories are not
  followed) with its transcript in a same-stem `.txt` file.

Each clip is decoded once with the training decoder (`omni_mega.data.audio.decode`, soundfile) to validate it and
measure it, and stored as its original bytes; the index records its sample rate, samples, channels and duration.
Training mixes channels down to mono and resamples to 16 kHz when it reads a clip: such clips are kept and counted
(`converted`: `stereo`/`N channels` -> mono, `resampled_from`: source rates). Bad input is skipped, counted by
reason with its first few places (`pairs.jsonl:7` or the file's path), printed at the end and stored in
dataset.json; the surviving samples keep the input order. Reasons: malformed JSON, not UTF-8, missing key, value not
a string, missing audio file, unreadable audio file, empty file, audio corrupt, empty audio (no samples), too short
(fewer samples at 16 kHz than one STFT frame needs), too long (over --max-seconds), empty text, tokenizer error,
missing / unreadable transcript file (folder mode).

Safe outputs as the image tool's (omni_mega/data/text/outputs.py): the dataset is built under
`<output-dir>.tmp-<host>-<pid>` and swapped in only when it holds at least one sample; a run that keeps none exits 1
with one line and leaves an existing dataset as it was; a missing input or an output directory that cannot be written
or holds other files exits 2 with one line.

Example:
    python tools/preprocess_audio.py --input clips.jsonl --output-dir data/asr --tokenizer-type byte --workers 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import sys
import time
from collections import Counter, deque

import numpy as np

from omni_mega.data.audio.decode import TARGET_RATE, AudioError, decode
from omni_mega.data.audio.shards import AudioShardWriter
from omni_mega.data.multimodal.preprocess import BadInput, _jsonl_items, _Progress, build_tokenizer_from_args
from omni_mega.data.multimodal.shards import tokenizer_identity
from omni_mega.data.text import outputs
from omni_mega.data.tool_cli import PreprocessError, add_tokenizer_args, run_tool

AUDIO_EXTS = {".wav", ".flac"}
MIN_SAMPLES = 201  # at 16 kHz: the centred STFT of the log-mel features (n_fft 400) needs more than 200
JOB_ITEMS = 8


def _folder_items(root: str):
    found = []
    for d, dirs, files in os.walk(root):  # followlinks=False: a symlinked directory is not entered
        dirs.sort()
        for f in sorted(files):
            if os.path.splitext(f)[1].lower() in AUDIO_EXTS:
                found.append(os.path.join(d, f))
    for path in sorted(found, key=lambda p: os.path.relpath(p, root)):
        where = os.path.relpath(path, root)
        txt = os.path.splitext(path)[0] + ".txt"
        try:
            with open(txt, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            yield where, "missing transcript file"
            continue
        except (OSError, UnicodeDecodeError):
            yield where, "unreadable transcript file"
            continue
        yield where, path, text


def input_items(pattern: str, audio_key: str, text_key: str):
    import glob

    if os.path.isdir(pattern):
        return _folder_items(pattern)
    files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not files or not all(os.path.isfile(f) for f in files):
        raise ValueError(f"--input {pattern!r}: no such JSONL file(s) or directory")
    return _jsonl_items(files, audio_key, text_key)


_W: dict = {}


def _init(tokenizer, max_seconds: float) -> None:
    _W["tok"], _W["max_seconds"] = tokenizer, max_seconds


def _process(item):
    if len(item) == 2:
        return item
    where, path, text = item
    text = text.strip()
    if not text:
        return where, "empty text"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return where, "missing audio file"
    except OSError:
        return where, "unreadable audio file"
    try:
        samples, info = decode(data)  # validates every sample, as training will read it
    except AudioError as e:
        return where, e.reason
    if info.duration > _W["max_seconds"]:
        return where, "too long"
    if len(samples) < MIN_SAMPLES:
        return where, "too short"
    try:
        ids = np.asarray(_W["tok"].encode(text), dtype=np.int64)
    except Exception:  # noqa: BLE001 - any tokenizer failure is bad input for this sample
        return where, "tokenizer error"
    if ids.size == 0:
        return where, "empty text"
    return {"where": where, "audio": data, "tokens": ids, "text": text, "sample_rate": info.sample_rate,
            "num_samples": info.num_samples, "channels": info.channels, "nbytes": len(data)}


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


def _results(jobs, workers: int, tokenizer, max_seconds: float):
    """Job results in job order; with workers > 1 at most 2 * workers + 1 jobs are in flight."""
    if workers == 1:
        _init(tokenizer, max_seconds)
        yield from map(_process_job, jobs)
        return
    with multiprocessing.get_context("fork").Pool(workers, _init, (tokenizer, max_seconds)) as pool:
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.apply_async(_process_job, (job,)))
            if len(pending) > 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


_DATASET_FILE = re.compile(r"^(dataset\.json|shard-\d+\.(tar|idx\.npy))$")


def run(args) -> dict:
    """Preprocesses per `args`; returns a summary. Raises PreprocessError (1: nothing to write, 2: fix the command
    line or files) and ValueError."""
    out_dir = os.path.abspath(args.output_dir)
    try:
        parent = outputs.prepare_dataset_dir(out_dir, "--output-dir", _DATASET_FILE)
    except outputs.OutputError as e:
        raise PreprocessError(str(e), 2) from None
    notes = [f"removed stale temporary {p}" for p in outputs.remove_stale(parent, os.path.basename(out_dir))]
    tok = build_tokenizer_from_args(args)
    items = input_items(args.input, args.audio_key, args.text_key)
    bad, converted, resampled, progress = BadInput(), Counter(), Counter(), _Progress(args.log_interval)
    seconds_kept = 0.0
    tmp_dir = out_dir + outputs.tmp_suffix()
    try:
        with AudioShardWriter(tmp_dir, tokenizer_identity(tok), shard_size=args.shard_size) as writer:
            for results in _results(_jobs(items), args.workers, tok, args.max_seconds):
                for r in results:
                    if isinstance(r, tuple):
                        bad.add(r[1], r[0])
                        progress.update(0)
                        continue
                    meta = {"source": r["where"]}
                    if r["channels"] != 1:
                        what = "stereo" if r["channels"] == 2 else f"{r['channels']} channels"
                        converted[what] += 1
                        meta["converted_from"] = what
                    if r["sample_rate"] != TARGET_RATE:
                        resampled[str(r["sample_rate"])] += 1
                    writer.add(r["audio"], r["tokens"], sample_rate=r["sample_rate"], num_samples=r["num_samples"],
                               channels=r["channels"], text=r["text"], meta=meta)
                    seconds_kept += r["num_samples"] / r["sample_rate"]
                    progress.update(r["nbytes"])
            if writer.count == 0:
                why = (f"all {progress.seen} input samples were rejected ("
                       + ", ".join(f"{k}: {n}" for k, n in sorted(bad.counts.items())) + ")" if progress.seen
                       else "the input has no samples")
                kept = " and the existing dataset is untouched" if os.path.exists(out_dir) else ""
                raise PreprocessError(f"no samples to write: {why}; nothing was written{kept}", 1)
            writer.finish(bad_input={"counts": dict(bad.counts), "first": bad.first}, converted=dict(converted),
                          resampled_from=dict(resampled), input=args.input, input_samples=progress.seen,
                          hours=seconds_kept / 3600, max_seconds=args.max_seconds, target_rate=TARGET_RATE)
        outputs.replace_dir(tmp_dir, out_dir)
    finally:
        if os.path.isdir(tmp_dir):
            import shutil

            shutil.rmtree(tmp_dir, ignore_errors=True)
    seconds = time.time() - progress.start
    print(f"Done: {writer.count} of {progress.seen} clips ({seconds_kept / 60:.1f} min of audio) written to "
          f"{args.output_dir} in {len(writer.shards)} shard(s), {seconds:.2f} s ({progress.rates()}); mixed down to "
          f"mono at load: {dict(converted) or 'none'}; resampled to {TARGET_RATE} Hz at load, by source rate: "
          f"{dict(resampled) or 'none'}.", file=sys.stderr)
    print(f"Bad input (skipped):\n{bad.report()}" if bad.counts else "Bad input: none", file=sys.stderr)
    for note in notes:
        print(note, file=sys.stderr)
    return {"samples": writer.count, "seen": progress.seen, "bad": dict(bad.counts), "bad_first": bad.first,
            "converted": dict(converted), "resampled_from": dict(resampled), "shards": len(writer.shards),
            "seconds": seconds, "audio_seconds": seconds_kept, "output_dir": str(args.output_dir), "notes": notes}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_argument_group("input data")
    g.add_argument("--input", required=True, help="JSONL file or glob (.gz too), or a directory of .wav/.flac + .txt")
    g.add_argument("--audio-key", default="audio", help="JSONL key of the audio path")
    g.add_argument("--text-key", default="text", help="JSONL key of the transcript")
    g.add_argument("--max-seconds", type=float, default=30.0, help="longer clips are skipped (counted: too long)")
    add_tokenizer_args(p.add_argument_group("tokenizer"))
    g = p.add_argument_group("output data")
    g.add_argument("--output-dir", required=True, help="dataset directory (dataset.json + shards)")
    g.add_argument("--shard-size", type=int, default=1000, help="clips per shard")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="worker processes (decode + tokenize)")
    g.add_argument("--log-interval", type=int, default=1000, help="report progress every this many clips")
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1 or args.shard_size < 1 or not args.max_seconds > 0:
        parser.error(f"--workers and --shard-size must be >= 1 and --max-seconds > 0, got {args.workers}, "
                     f"{args.shard_size} and {args.max_seconds}")
    return run_tool(run, args, "preprocess_audio.py")
