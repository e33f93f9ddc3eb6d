"""Worker for tests/training/test_freeze_pipeline.py (started by pytest through torchrun, 2 ranks, PP=2).

Runs a 3-stage curriculum through `Trainer` step by step and checks, on every rank, at every stage boundary and
step: frozen parameters bitwise unchanged, trainable ones changed, Adam state of parameters that stay trainable
carried over exactly, RoPE frequencies recomputed in place for the new base with no parameter re-created.
Rank 0 writes a JSON summary to OUT. Usage: run_curriculum_freeze.py RUN_DIR OUT
"""

import json
import sys

import torch

from omni_mega.config import load_config
from omni_mega.runtime import init_distributed, shutdown
from omni_mega.training.curriculum import rotary_modules
from omni_mega.training.optim import _pairs
from omni_mega.training.trainer import Trainer

STAGES = (
    "stages=["
    "{name: head_only, steps: 2, trainable: [llm.output_layer]},"  # first pipeline rank: nothing trainable
    "{name: last_layer, steps: 2, trainable: ['llm.layers[-1:]', llm.output_layer], rope_base: 160000,"
    " schedule: rewarmup, lr: 2.0e-3, warmup_steps: 1, lr_mult: [{group: llm.output_layer, mult: 0.5}]},"
    "{name: all, steps: 2, trainable: [llm]}]"
)
TINY = [
    "model.llm.num_layers=4", "model.llm.hidden_size=32", "model.llm.num_attention_heads=4",
    "model.llm.max_position_embeddings=64", "data.seq_length=16", "data.micro_batch_size=2",
    "data.global_batch_size=4", "optim.warmup_steps=0", "optim.lr=1e-3", "train.tensorboard=false",
    "parallel.pp=2", STAGES,
]


def params(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for c in trainer.chunks for n, p in c.named_parameters()}


def adam_state(trainer) -> dict[int, dict]:
    return {id(m): {k: v.clone() for k, v in t.state.get(f, {}).items()} for m, f, t in _pairs(trainer.optimizer)}


def main() -> None:
    if __name__ != "__main__":
        return
    run_dir, out = sys.argv[1:3]
    cfg = load_config(None, TINY)
    rt = init_distributed(cfg.parallel, seed=cfg.train.seed)
    tr = Trainer(cfg, rt, run_dir)
    report = {"stages": [], "rank_trainable": [], "loss": [], "lr_groups": []}
    names = {id(p): n for c in tr.chunks for n, p in c.named_parameters()}
    for plan in tr.plans:
        if plan.index > 0:
            before_state, before_params = adam_state(tr), params(tr)
            rope = rotary_modules(tr.chunks)
            inv_before = [m.inv_freq.clone() for m in rope]
            inv_ids = [id(m.inv_freq) for m in rope]
            param_ids = sorted(id(p) for c in tr.chunks for p in c.parameters())
            tr._enter_stage(plan, fresh=True)
            after = adam_state(tr)
            carried = [i for i in after if before_state.get(i)]
            for i in carried:  # exact carry-over of Adam moments and step
                for k, v in before_state[i].items():
                    assert torch.equal(after[i][k], v), (names[i], k)
            assert params(tr).keys() == before_params.keys()
            assert all(torch.equal(params(tr)[n], v) for n, v in before_params.items()), "boundary changed weights"
            assert sorted(id(p) for c in tr.chunks for p in c.parameters()) == param_ids, "parameters re-created"
            if plan.rope_base != tr.plans[plan.index - 1].rope_base:
                for m, old, i in zip(rope, inv_before, inv_ids):
                    dim = 2 * m.inv_freq.numel()
                    want = 1.0 / (plan.rope_base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
                    assert id(m.inv_freq) == i and torch.allclose(m.inv_freq, want) and not torch.equal(m.inv_freq, old)
            report["stages"].append({"stage": plan.name, "carried": len(carried)})
        trainable = {n for c in tr.chunks for n, p in c.named_parameters() if p.requires_grad}
        report["rank_trainable"].append(len(trainable))
        for _ in range(plan.steps):
            before = params(tr)
            r = tr.train_step()
            after = params(tr)
            for n in before:
                same = torch.equal(before[n], after[n])
                assert same != (n in trainable), f"{plan.name}: {n} trainable={n in trainable} unchanged={same}"
            assert torch.isfinite(torch.tensor(r.loss)), r
            report["loss"].append(r.loss)
        report["lr_groups"].append(sorted({(g.get("lr_mult", 1.0), g["lr"]) for g in tr.optimizer.param_groups}))
        tr.save()
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, report)
    if rt.is_rank0:
        with open(out, "w") as f:
            json.dump({"ranks": gathered, "lrs": [g["lr"] for g in tr.optimizer.param_groups]}, f)
    shutdown()


main()
