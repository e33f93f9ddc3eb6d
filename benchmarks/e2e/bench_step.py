"""Step time of our Trainer vs a bare loop around megatron's get_forward_backward_func, same model, optimizer and
batch shape: the trainer's overhead (data source, LR per group, state, metrics record) should stay <= 3% on CPU.
On a GPU it also reports tokens/s and MFU of a ~1B-parameter GPT in bf16 at TP=1.

    python benchmarks/e2e/bench_step.py [--out]      (single process; OMP_NUM_THREADS sets CPU threads)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from benchmarks.harness import Result, emit, measure, results_path  # noqa: E402

CPU = ["model.llm.num_layers=4", "model.llm.hidden_size=128", "model.llm.num_attention_heads=4",
       "model.llm.max_position_embeddings=512", "data.seq_length=128", "data.micro_batch_size=4",
       "data.global_batch_size=8"]
# ~1.0B parameters: 16 x 12 x 2048^2 (attention + swiglu MLP) + 2 x 50304 x 2048 (untied embedding and head).
GPU = ["model.llm.num_layers=16", "model.llm.hidden_size=2048", "model.llm.num_attention_heads=16",
       "model.llm.vocab_size=50304", "model.llm.max_position_embeddings=2048", "data.seq_length=2048",
       "data.micro_batch_size=4", "data.global_batch_size=16", "train.dtype=bf16"]


def build(overrides: list[str], run_dir: str):
    from omni_mega.config import load_config
    from omni_mega.runtime import init_distributed
    from omni_mega.training.trainer import Trainer

    cfg = load_config(None, overrides + ["train.tensorboard=false", "optim.warmup_steps=2",
                                         "stages=[{name: bench, steps: 100000}]"])
    rt = init_distributed(cfg.parallel, seed=cfg.train.seed)
    return Trainer(cfg, rt, run_dir), cfg


def bare_step_fn(tr, cfg):
    """The same model and optimizer driven by a minimal loop over pre-built micro-batches (no data source, no LR
    schedule, no state, no metrics)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from omni_mega.data.source import StepSlice
    from omni_mega.training.step_io import to_device

    d = cfg.data
    n = d.global_batch_size // d.micro_batch_size
    batches = list(to_device(tr.source.materialize(tr.source.plan_step(
        StepSlice(0, 1, n, d.micro_batch_size, d.seq_length))), tr.rt.device))
    fb = get_forward_backward_func()

    def step():
        for m in tr.model:
            m.zero_grad_buffer()
        tr.optimizer.zero_grad()
        fb(forward_step_func=tr.objective.forward_step, data_iterator=iter(batches), model=tr.model[0],
           num_microbatches=n, seq_length=d.seq_length * d.micro_batch_size, micro_batch_size=1, forward_only=False)
        tr.optimizer.step()

    return step


def trainer_step_fn(tr):
    import time

    def step():
        t0 = time.perf_counter()
        r = tr.train_step()
        tr.metrics.write(tr._record(r, time.perf_counter() - t0))

    return step


def extras_fn(tr):
    """Only what the Trainer adds around megatron's step: this step's batches from the data source, LR and weight
    decay per group, counters and the metrics record. Timed alone, it bounds the overhead without the noise of
    timing two full steps on a shared CPU."""
    from omni_mega.data.source import StepSlice
    from omni_mega.training.optim import set_lr
    from omni_mega.training.step_io import step_stats, to_device
    from omni_mega.training.trainer import StepResult

    d, plan = tr.cfg.data, tr.stage

    def step():
        n = plan.global_batch_size // (d.micro_batch_size * tr.rt.dp)
        sl = StepSlice(0, 1, n, d.micro_batch_size, plan.seq_length)
        batches = tr.source.materialize(tr.source.plan_step(sl))
        list(to_device(batches, tr.rt.device))
        metrics = {"loss": 1.0, **tr.source.step_metrics(step_stats(batches))}
        set_lr(tr.optimizer, tr.lr_plan.lr(tr.state.step), tr.cfg.optim.weight_decay)
        tr.metrics.write(tr._record(StepResult(1.0, 1.0, 1e-3, False, metrics, 0.0), 0.1))

    return step


def model_flops(cfg, n_params: int) -> float:
    """Training FLOPs of one step: 6 N T for the matmuls + 12 L s h T for attention scores (Megatron's estimate)."""
    d, llm = cfg.data, cfg.model.llm
    tokens = d.global_batch_size * d.seq_length
    return 6 * n_params * tokens + 12 * llm.num_layers * d.seq_length * llm.hidden_size * tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", action="store_true", help="write benchmarks/results/<date>_<device>_bench_step.md")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per provider (median of each kept)")
    args = ap.parse_args()
    logging.disable(logging.INFO)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        tr, cfg = build(GPU if cuda else CPU, tmp)
        d = cfg.data
        shape = f"L{cfg.model.llm.num_layers} h{cfg.model.llm.hidden_size} s{d.seq_length} gbs{d.global_batch_size}"
        n_params = sum(p.numel() for c in tr.chunks for p in c.parameters())
        flops = model_flops(cfg, n_params)
        fns = {"bare megatron loop": bare_step_fn(tr, cfg), "omni_mega Trainer": trainer_step_fn(tr),
               "Trainer extras alone": extras_fn(tr)}
        best: dict[str, Result] = {}
        for _ in range(args.rounds):  # alternate so background load hits both providers alike
            for name, fn in fns.items():
                r = measure("train_step", name, "full", shape, fn, device=device, warmup=2, repeats=5, flops=flops)
                if name not in best or r.ms < best[name].ms:
                    best[name] = r
        results = list(best.values())
        base = best["bare megatron loop"].ms
        for r in results:
            if r.provider == "Trainer extras alone":  # its share of a bare step, not a step of its own
                r.extra["overhead %"] = round(100 * r.ms / base, 2)
                r.extra.pop("TFLOP/s", None)
                continue
            r.extra["tokens/s"] = round(d.global_batch_size * d.seq_length / (r.ms * 1e-3))
            r.extra["overhead %"] = round(100 * (r.ms - base) / base, 2)
        notes = (f"{n_params / 1e6:.1f}M parameters, {'bf16' if cuda else 'fp32'}, single process, "
                 f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average before: "
                 f"{os.getloadavg()[0]:.1f}. ms = best of {args.rounds} alternating rounds of the median of 5 steps. "
                 "MFU = TFLOP/s / device peak (%peak, GPU only). 'Trainer extras alone' times only the work the Trainer "
                 "adds (data source, LR per group, metrics record); its overhead % is its share of the bare step.")
        emit(results, title="Trainer step vs bare megatron loop", out=results_path("bench_step") if args.out else None,
             notes=notes)
        tr.metrics.close()


if __name__ == "__main__":
    main()
