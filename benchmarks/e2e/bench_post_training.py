"""Post-training stages through the real trainer on the built-in demo data (tiny_ovis_5phase's model shapes):
- SFT: packing efficiency of the demo conversations (goal >= 95%) and time per supervised-or-not token;
- DPO with a precomputed reference: time per token against SFT's (goal <= 1.1x: a pair costs at most 1.1x two SFT
  forward+backward passes over its two sequences), and the reference pass's cost;
- GRPO: rollout tokens/s, the step split into rollout / forward+backward / optimizer / the rest (goal: the rest, the
  trainer's own overhead, <= 5% of a step). KV cache vs recompute is `benchmarks/inference/bench_generate.py`.

    python benchmarks/e2e/bench_post_training.py [--out] [--steps 12]   (single process; OMP_NUM_THREADS threads)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks.harness import Result, emit, results_path  # noqa: E402

MODEL = ["model.llm={num_layers: 4, hidden_size: 128, num_attention_heads: 4, max_position_embeddings: 512}",
         "model.vit={num_layers: 2, hidden_size: 64, num_attention_heads: 4, patch_size: 14, temporal_patch_size: 2, "
         "merge_size: 2}", "model.connector={kind: vet, visual_vocab_size: 1024, num_indicators: 0, "
         "image_token_id: -200}",
         "data={seq_length: 512, micro_batch_size: 1, global_batch_size: 8, min_pixels: 3136, max_pixels: 25088, "
         "pack_window: 128}", "optim={lr: 1.0e-3, warmup_steps: 0, decay: constant}", "train.tensorboard=false"]
STAGES = {
    "sft": "{name: sft, steps: %d, objective: sft, trainable: [llm, vit, visual_head, vet], "
           "data: [{name: c, source: demo_sft}]}",
    "dpo": "{name: dpo, steps: %d, objective: dpo, trainable: [llm], data: [{name: p, source: demo_preference}]}",
    "grpo": "{name: grpo, steps: %d, objective: grpo, trainable: [llm], global_batch_size: 8, grpo: {group_size: 8, "
            "max_new_tokens: 32, rewards: [{name: answer}, {name: format}]}, data: [{name: q, source: demo_prompts}]}",
}


class Timed:
    """Wraps a callable, summing wall time per call kind into `self.ms`."""

    def __init__(self, fn, key) -> None:
        self.fn, self.key, self.ms = fn, key, {}

    def __call__(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return self.fn(*a, **k)
        finally:
            kind = self.key(a, k)
            self.ms[kind] = self.ms.get(kind, 0.0) + 1e3 * (time.perf_counter() - t0)


def run_stage(kind: str, steps: int, data_dir: Path, work: Path) -> dict:
    """Runs one stage (its first step as warm-up) -> per-step timings and metrics of the measured steps."""
    import megatron.core.pipeline_parallel as pp_mod

    from omni_mega.config import load_config
    from omni_mega.runtime import init_distributed, shutdown
    from omni_mega.training import trainer as trainer_mod

    cfg = load_config(None, MODEL + [f"stages=[{STAGES[kind] % (steps + 1)}]", f"data.data_dir={data_dir}"])
    rt = init_distributed(cfg.parallel, seed=1)
    fb = Timed(pp_mod.get_forward_backward_func(), lambda a, k: "forward" if k.get("forward_only") else "fwd_bwd")
    trainer_mod.get_forward_backward_func = lambda: fb
    tr = trainer_mod.Trainer(cfg, rt, work / kind)
    tr.optimizer.step = Timed(tr.optimizer.step, lambda a, k: "optimizer")
    t0 = time.perf_counter()
    tr.train_step()  # warm-up (and the stage's start: DPO's reference pass)
    start_ms = 1e3 * (time.perf_counter() - t0)
    fb.ms.clear()
    tr.optimizer.step.ms.clear()
    rows, t0 = [], time.perf_counter()
    for _ in range(steps):
        rows.append(tr.train_step().metrics)
    wall = 1e3 * (time.perf_counter() - t0) / steps
    parts = {k: v / steps for k, v in {**fb.ms, **tr.optimizer.step.ms}.items()}
    stats = {k: sum(r.get(k, 0.0) for r in rows) / steps for k in rows[0] if isinstance(rows[0][k], (int, float))}
    shutdown()
    return {"wall_ms": wall, "first_step_ms": start_ms, "parts": parts, "m": stats,
            "tokens": cfg.data.seq_length * (cfg.stages[0].global_batch_size or cfg.data.global_batch_size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", action="store_true", help="write benchmarks/results/<date>_<device>_post_training.md")
    ap.add_argument("--steps", type=int, default=12, help="measured steps per stage (after one warm-up step)")
    args = ap.parse_args()
    logging.getLogger("omni_mega").setLevel(logging.WARNING)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29519")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"  # the demo data, built once for the three stages
        got = {k: run_stage(k, args.steps, data, work) for k in ("sft", "dpo", "grpo")}
    sft, dpo, grpo = got["sft"], got["dpo"], got["grpo"]
    res = []
    per_tok = {k: got[k]["parts"]["fwd_bwd"] / (got[k]["tokens"] * got[k]["m"].get("packing_efficiency", 1.0))
               for k in ("sft", "dpo")}
    res.append(Result("sft", "trainer", "step", "8 packs x 512", sft["wall_ms"], 0.0, {
        "packing efficiency": f"{sft['m']['packing_efficiency']:.1%}",
        "fwd+bwd us/token": round(1e3 * per_tok["sft"], 2)}))
    res.append(Result("dpo", "trainer", "step", "8 packs x 512 (pairs)", dpo["wall_ms"], 0.0, {
        "packing efficiency": f"{dpo['m']['packing_efficiency']:.1%}",
        "fwd+bwd us/token": round(1e3 * per_tok["dpo"], 2),
        "vs sft per token": f"{per_tok['dpo'] / per_tok['sft']:.2f}x",
        "reference pass (stage start) ms": round(dpo["first_step_ms"] - dpo["wall_ms"], 1)}))
    p = grpo["parts"]
    roll = grpo["m"]["rollout_ms"]
    rest = grpo["wall_ms"] - roll - p["fwd_bwd"] - p["optimizer"]
    res.append(Result("grpo", "trainer", "step", "8 prompts x 8 samples x <=32 new", grpo["wall_ms"], 0.0, {
        "rollout tokens/s": round(grpo["m"]["rollout_tokens_per_s"], 1),
        "rollout": f"{roll / grpo['wall_ms']:.1%}", "fwd+bwd": f"{p['fwd_bwd'] / grpo['wall_ms']:.1%}",
        "optimizer": f"{p['optimizer'] / grpo['wall_ms']:.1%}", "rest (trainer)": f"{rest / grpo['wall_ms']:.1%}"}))
    notes = (f"tiny_ovis_5phase's model (LLM 4 x 128, ViT 2 x 64, VET), fp32, packs of 512 positions (best fit over "
             f"windows of 128 samples), demo conversations / preference pairs / prompts, {args.steps} measured steps per stage after one warm-up step, single process, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average (1 min) before: {load:.2f}. "
             "ms = mean wall time of a step. fwd+bwd us/token: megatron's forward-backward call per non-pad token "
             "(DPO's includes its log-prob gathering; its reference log-probs are read from the precomputed table). "
             "DPO 'reference pass': the first step's extra time (one forward pass over the stage's pairs). "
             "GRPO split: rollout (generation + rewards + packing), fwd+bwd, optimizer step, rest (data, LR, "
             "metrics, state: the trainer's own cost).")
    emit(res, title="Post-training stages: SFT packing, DPO cost, GRPO step split",
         out=results_path("post_training") if args.out else None, notes=notes)


if __name__ == "__main__":
    main()
