"""Worker for tests/training/test_dist_optimizer.py (torchrun, 2 ranks, data-parallel 2).

Runs the same 2-stage curriculum (a frozen-most stage, then everything trainable) three ways and writes the per-step
losses: with megatron's distributed optimizer (Adam state sharded over the two ranks and resharded at the stage
boundary, `training.optim.dist_carry_over`), with the plain optimizer, and with the distributed optimizer resumed
from its stage-boundary checkpoint. Also records the carried Adam moments around the boundary, assembled over both
ranks, for one parameter that stays trainable. Usage: run_dist_optimizer.py WORK_DIR OUT
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from omni_mega.config import load_config
from omni_mega.runtime import init_distributed, shutdown
from omni_mega.config.plan import stage_at
from omni_mega.training.optim import _dist_opts
from omni_mega.training.trainer import Trainer

TINY = [
    "model.llm.num_layers=2", "model.llm.hidden_size=32", "model.llm.num_attention_heads=4",
    "model.llm.max_position_embeddings=64", "data.seq_length=16", "data.micro_batch_size=2",
    "data.global_batch_size=4", "optim.warmup_steps=0", "optim.lr=1e-3", "train.tensorboard=false",
    "stages=[{name: a, steps: 3, trainable: [llm.output_layer, 'llm.layers[-1:]']},"
    "{name: b, steps: 3, trainable: [llm]}]",
]


def full_moment(trainer, name: str, key: str) -> torch.Tensor:
    """The whole exp_avg/exp_avg_sq of parameter `name`, assembled from both ranks' shards."""
    p = dict(trainer.chunks[0].named_parameters())[name]
    full = torch.zeros(p.numel())
    for o in _dist_opts(trainer.optimizer):
        if p in o.model_param_gbuf_map:
            r = o._get_model_param_range_map(p)["param"]
            full[r.start:r.end] = o._get_main_param_and_optimizer_states(p)[key].view(-1)
    dist.all_reduce(full)
    return full


def run(work: Path, distributed: bool, resume: str | None = None) -> tuple[list[float], dict]:
    """Per-step losses of the run (from the resume point on when resuming) and, for a fresh distributed run, the
    output layer's exp_avg just before and just after the stage boundary."""
    cfg = load_config("examples/configs/tiny_text.yaml", TINY + [f"optim.distributed_optimizer={str(distributed).lower()}"])
    t = Trainer(cfg, init_distributed(cfg.parallel, seed=1), work, resume=resume)
    losses, moments, watch = [], {}, distributed and resume is None
    while t.state.step < cfg.total_steps:
        plan = stage_at(t.plans, t.state.step)
        if plan.index != t.stage.index:
            if watch:
                moments["before"] = full_moment(t, "output_layer.weight", "exp_avg").tolist()
            t._enter_stage(plan, fresh=True)
            if watch:
                moments["after"] = full_moment(t, "output_layer.weight", "exp_avg").tolist()
        losses.append(t.train_step().loss)
        if t.state.step == plan.end_step:
            t.save()
    return losses, moments


def main() -> None:
    work, out = Path(sys.argv[1]), Path(sys.argv[2])
    dist_losses, moments = run(work / "dist", True)
    plain_losses, _ = run(work / "plain", False)
    resumed, _ = run(work / "dist", True, resume=str(work / "dist" / "ckpt" / "step_0000003"))
    if dist.get_rank() == 0:
        out.write_text(json.dumps({"dist": dist_losses, "plain": plain_losses, "resumed": resumed, **moments}))
    shutdown()


if __name__ == "__main__":
    main()
