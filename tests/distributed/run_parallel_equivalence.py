"""Worker for tests/distributed/test_parallel_equivalence.py (started by pytest through torchrun).

  save  DIR OUT [--set ...]: one process, TP=1/PP=1: build the model, save it with dist_checkpointing, train 2 steps
  load  DIR OUT [--set ...]: any layout: build the model, load DIR (resharding), train 2 steps
  fresh DIR OUT [--set ...]: any layout, random weights, train 2 steps
Every rank checks that its frozen parameters (requires_grad False) are bitwise unchanged by the steps. Rank 0 writes
the per-step loss, grad norm and objective metrics to OUT (JSON), with its count of frozen and changed trainable
parameters.
"""

import json
import math
import sys

import torch

from omni_mega.config import load_config
from omni_mega.runtime import init_distributed, shutdown
from omni_mega.training.checkpoint import load_model, save_model
from omni_mega.training.trainer import Trainer

TINY = [
    "model.llm.num_layers=4", "model.llm.hidden_size=64", "model.llm.num_attention_heads=4",
    "model.llm.max_position_embeddings=64", "data.seq_length=32", "data.micro_batch_size=2",
    # 4 micro-batches per step: more than pp, so pipelined schedules reach their steady state (interleaving at pp=2
    # crossed activations and gradients there; see models/llm.py batch_p2p_comm).
    "data.global_batch_size=8", "optim.warmup_steps=0", "optim.lr=1e-3", "train.tensorboard=false",
    "stages=[{name: s, steps: 2}]",
]


def main() -> None:
    if __name__ != "__main__":
        return
    mode, ckpt, out, *overrides = sys.argv[1:]
    cfg = load_config(None, TINY + [o.removeprefix("--set=") for o in overrides])
    rt = init_distributed(cfg.parallel, seed=cfg.train.seed)
    trainer = Trainer(cfg, rt, run_dir=f"{out}.run")
    if mode == "save":
        save_model(trainer.model, ckpt)
    elif mode == "load":
        load_model(trainer.model, ckpt)
    params = {n: p for c in trainer.chunks for n, p in c.named_parameters()}
    before = {n: p.detach().clone() for n, p in params.items()}
    steps = [trainer.train_step() for _ in range(2)]
    frozen = [n for n, p in params.items() if not p.requires_grad]
    moved = [n for n in frozen if not torch.equal(params[n], before[n])]
    assert not moved, f"rank {rt.rank}: frozen parameters changed: {moved[:5]}"
    trained = sum(not torch.equal(p, before[n]) for n, p in params.items() if p.requires_grad)
    if rt.is_rank0:
        with open(out, "w") as f:
            json.dump({"loss": [s.loss for s in steps], "grad_norm": [s.grad_norm for s in steps],
                       "metrics": [{k: v for k, v in s.metrics.items() if isinstance(v, (int, float))
                                    and math.isfinite(v)} for s in steps],
                       "frozen": len(frozen), "trained": int(trained)}, f)
    shutdown()


main()
