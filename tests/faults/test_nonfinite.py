"""Non-finite steps: a step whose loss or gradients are NaN/Inf is skipped (no update, `"skipped": true`, counted),
`train.max_skipped_steps` in a row stop the run with a clear error, and no checkpoint is written from non-finite
weights. The NaNs come from an objective passed to the Trainer as its builder (the real LM objective, poisoned on
demand), so the trainer's own code paths are the ones tested."""

import json
import math
import os

import pytest
import torch

from omni_mega.config import load_config
from omni_mega.objectives.lm import LMObjective

TINY = ["name=nan", "train.tensorboard=false", "train.max_skipped_steps=3",
        "model.llm={num_layers: 1, hidden_size: 16, num_attention_heads: 2, max_position_embeddings: 32}",
        "data={seq_length: 16, micro_batch_size: 2, global_batch_size: 4}", "optim.warmup_steps=0",
        "stages=[{name: a, steps: 20}]"]
POISON = {"mode": None}  # None | "loss" (NaN loss) | "grad" (finite loss, NaN gradients)


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class Poisoned(LMObjective):
    def forward_step(self, data_iterator, model):
        out, loss_func = super().forward_step(data_iterator, model)
        if POISON["mode"] == "loss":
            out = out * float("nan")
        elif POISON["mode"] == "grad":
            out = _NaNGrad.apply(out)
        return out, loss_func


@pytest.fixture(scope="module")
def rt():
    from omni_mega.runtime import init_distributed, shutdown
    from tests.distributed.launch import free_port

    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    runtime = init_distributed(load_config(None, TINY).parallel, seed=1)
    yield runtime
    shutdown()
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _params(tr):
    return {n: p.detach().clone() for c in tr.chunks for n, p in c.named_parameters()}


def _step(tr, mode):
    POISON["mode"] = mode
    try:
        before = _params(tr)
        r = tr.train_step()
        tr.metrics.write(tr._record(r, 1.0))
        return r, before, _params(tr)
    finally:
        POISON["mode"] = None


@pytest.mark.parametrize("mode", ["loss", "grad"])
def test_nonfinite_step_is_skipped_counted_and_recorded(rt, tmp_path, mode):
    from omni_mega.training.trainer import Trainer

    tr = Trainer(load_config(None, TINY), rt, tmp_path / "run", build_objective=lambda plan: Poisoned())
    r, *_ = _step(tr, None)
    assert not r.skipped and math.isfinite(r.loss)
    r, before, after = _step(tr, mode)
    assert r.skipped and not math.isfinite(r.grad_norm)
    assert (not math.isfinite(r.loss)) == (mode == "loss")
    assert all(torch.equal(before[n], after[n]) for n in before)  # no update at all
    assert tr.state.skipped_steps == 1 and tr.state.skipped_in_a_row == 1
    r, before, after = _step(tr, None)  # training goes on, and the count in a row resets
    assert not r.skipped and any(not torch.equal(before[n], after[n]) for n in before)
    assert tr.state.skipped_in_a_row == 0 and tr.state.step == 3
    tr.metrics.close()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [False, True, False] and rows[-1]["skipped_steps"] == 1
    # Adam's shared step stays the global step (a resume sets it so): the skipped step is counted there too.
    from omni_mega.training.optim import _pairs

    steps = {float(t.state[f]["step"]) for _, f, t in _pairs(tr.optimizer) if t.state.get(f)}
    assert steps == {3.0}


def test_too_many_in_a_row_stop_the_run_and_nonfinite_weights_are_never_saved(rt, tmp_path):
    from omni_mega.training.trainer import Trainer, TrainingDiverged

    tr = Trainer(load_config(None, TINY), rt, tmp_path / "run", build_objective=lambda plan: Poisoned())
    POISON["mode"] = "loss"
    try:
        with pytest.raises(TrainingDiverged, match=r"3 steps in a row \(to step 3\).*max_skipped_steps=3"):
            tr.train()
    finally:
        POISON["mode"] = None
    assert not (tmp_path / "run" / "ckpt").exists()
    with torch.no_grad():
        next(tr.chunks[0].parameters()).view(-1)[0] = float("nan")
    with pytest.raises(TrainingDiverged, match="non-finite weights; no checkpoint is written"):
        tr.save()
    assert not (tmp_path / "run" / "ckpt").exists()
