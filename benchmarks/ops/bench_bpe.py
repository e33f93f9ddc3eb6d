"""GPT-2 BPE encoder alone (no JSON, no workers, no file output): the C++ encoder (csrc/bpe/, through
`GPT2BPEFast.encode_flat`) vs tiktoken's Rust core (the fallback without the extension) vs the pure-Python GPT-2
algorithm, one thread, same documents, ids checked equal before timing. `bench_preprocess.py` measures the whole
tool and the tokenizers against gigatoken; this isolates GPT-2's encoder.

    python benchmarks/ops/bench_bpe.py [--mb 2] [--out]

Two C++ rows: "cold cache" builds a fresh C++ encoder inside each timed call (reading the vocab and merges files,
the rank tables, an empty pre-token cache: what a preprocessing worker sees on its first chunk); "warm cache"
re-encodes with one whose cache already holds these documents' pre-tokens (a worker's steady state on a large
corpus of the same language).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from benchmarks import harness  # noqa: E402
from benchmarks.data.bench_preprocess import english_docs  # noqa: E402
from omni_mega.data.text.bpe import (GPT2BPEFast, GPT2BPEReference, fetch_gpt2_files, load_gpt2_files,  # noqa: E402
                                native_encoder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=2.0, help="text to encode, MB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-reference", action="store_true", help="skip the (slow) pure-Python encoder")
    ap.add_argument("--out", action="store_true", help="write benchmarks/results/<date>_<device>_bpe.md")
    args = ap.parse_args()

    files = fetch_gpt2_files(os.path.join(ROOT, ".cache", "gpt2"))
    docs, source = english_docs(os.path.join(ROOT, ".cache"))
    texts, size = [], 0
    while size < args.mb * 1e6:
        for d in docs:
            texts.append(d)
            size += len(d.encode())
            if size >= args.mb * 1e6:
                break
    fast = GPT2BPEFast(*files)
    if fast._native is None:
        sys.exit("bench_bpe: the omni_mega._bpe extension is not built (make build)")
    import tiktoken

    from omni_mega.data.text.bpe import EOD_TEXT, GPT2_PATTERN, gpt2_mergeable_ranks

    enc = tiktoken.Encoding("gpt2_local", pat_str=GPT2_PATTERN, mergeable_ranks=gpt2_mergeable_ranks(*files),
                            special_tokens={EOD_TEXT: fast.eod})
    ids, lens = fast.encode_flat(texts)
    tik = np.concatenate([np.asarray(enc._core_bpe.encode_ordinary(t), dtype=np.int64) for t in texts])
    assert np.array_equal(ids.astype(np.int64), tik), "C++ and tiktoken ids differ"

    shape = f"{len(texts)} docs, {size / 1e6:.1f} MB, {int(lens.sum())} tokens"
    providers = {
        "C++ (cold cache)": lambda: native_encoder(*load_gpt2_files(*files)).encode_batch(texts),
        "C++ (warm cache)": lambda: fast.encode_flat(texts),
        "tiktoken": lambda: [enc._core_bpe.encode_ordinary(t) for t in texts],
    }
    if not args.skip_reference:
        ref = GPT2BPEReference(*files)
        sample = texts[: max(1, len(texts) // 20)]  # 5%: the pure-Python encoder is ~100x slower
        assert [i for t in sample for i in ref.encode(t)] == [i for t in sample for i in fast.encode(t)]
        providers["pure Python (5% sample, scaled x20)"] = lambda: [ref.encode(t) for t in sample]
    results = []
    for name, fn in providers.items():
        r = harness.measure("bpe", name, "encode", shape, fn, warmup=1, repeats=args.repeats)
        if name.startswith("pure Python"):
            r.ms = round(r.ms * len(texts) / len(sample), 4)
        r.extra["MB/s"] = round(size / 1e6 / (r.ms * 1e-3), 2)
        results.append(r)
    base = next(r.ms for r in results if r.provider == "tiktoken")
    for r in results:
        r.extra["vs tiktoken"] = round(base / r.ms, 2)
    harness.emit(results, title="GPT-2 BPE encoder: C++ vs tiktoken vs pure Python",
                 out=harness.results_path("bpe") if args.out else None,
                 notes=f"Input: {source}, one thread, ids checked equal first. "
                       "Peak MB of the cold row includes filling the cache. "
                       f"1-min load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
