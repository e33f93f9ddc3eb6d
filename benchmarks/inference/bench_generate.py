"""Generation tokens/s with our KV cache (`omni_mega.inference`) vs recomputing the whole sequence every step (the
same model, the same step code, `recompute=True`), greedy, at 256 and 1,024 total positions (a 16-token prompt plus
the generated rest). Goal: >= 5x at 1,024 on CPU.

    python benchmarks/inference/bench_generate.py [--out] [--lengths 256 1024] [--device cuda]
    (single process; OMP_NUM_THREADS sets CPU threads)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from benchmarks.harness import Result, emit, results_path  # noqa: E402

PROMPT = 16
# A small Llama-style model (random weights): the cache's advantage is about sequence length, not width.
MODEL = dict(num_layers=4, hidden_size=256, num_attention_heads=8, num_query_groups=4, ffn_hidden_size=704,
             vocab_size=2048, max_position_embeddings=1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", action="store_true", help="write benchmarks/results/<date>_<device>_generate.md")
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    from omni_mega.config import LLMConfig, ParallelConfig
    from omni_mega.inference import Generator, SamplingParams
    from omni_mega.models.llm import build_llm, padded_vocab_size
    from omni_mega.runtime import init_distributed, shutdown

    init_distributed(ParallelConfig(), seed=1)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    cfg = LLMConfig(**MODEL)
    model = build_llm(cfg, ParallelConfig(), padded_vocab_size(cfg.vocab_size, 1), max(args.lengths), dtype)
    model = model.to(args.device).eval()
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    gen = Generator(model, cfg.vocab_size)
    prompt = torch.randint(0, cfg.vocab_size, (PROMPT,), generator=torch.Generator().manual_seed(0))
    gen.generate(prompt, SamplingParams(max_new_tokens=8))  # warm-up
    results = []
    for total in args.lengths:
        new = total - PROMPT
        row = {}
        for name, recompute in (("kv cache", False), ("recompute", True)):
            t0 = time.perf_counter()
            res = gen.generate(prompt, SamplingParams(max_new_tokens=new), recompute=recompute)
            if args.device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            row[name] = (res.ids, dt)
            results.append(Result("generate", name, "greedy", f"prompt {PROMPT} + {new} new = {total}", dt * 1e3, 0.0,
                                  {"tokens/s": round(len(res.ids) / dt, 1)}))
        same = row["kv cache"][0] == row["recompute"][0]
        speed = row["recompute"][1] / row["kv cache"][1]
        results[-2].extra.update({"speed-up": f"{speed:.1f}x", "same tokens": same})
        results[-1].extra.update({"speed-up": "1.0x", "same tokens": same})
    shutdown()
    notes = (f"{params_m:.2f}M-parameter Llama-style model ({MODEL}), {dtype}, random weights, greedy, one sequence, "
             f"single process, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average (1 min) "
             f"before: {load:.2f}. ms = wall time of the whole generation. 'recompute' re-runs the full sequence "
             "each step through the same code (no cache reuse). 'same tokens': both produced identical ids.")
    emit(results, title="Generation: KV cache vs full recompute", out=results_path("generate") if args.out else None,
         notes=notes)


if __name__ == "__main__":
    main()
