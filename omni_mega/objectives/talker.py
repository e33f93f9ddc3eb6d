"""`objective: talker`: the Talker learns to speak the codec's codes (μOmni's stage D, second half).

For each clip the (frozen) codec gives its codes; the Talker reads the transcript, then BOS and the frames, and
predicts every frame's first code (base head, then EOS after the last frame) and its other codes (residual head).
Loss: the mean cross entropy of the base targets plus the mean of the residual targets, halved (per micro-batch
means, every micro-batch weighs the same). Metrics: `loss`, `base_ce`, `res_ce`, `code_accuracy` (all targets), and
on the held-out split `heldout_ce` (the same loss), with `eval_step`.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from omni_mega.objectives.base import Objective, StageContext, metric
from omni_mega.objectives.parts import HeldOut


def talker_targets(codes: torch.Tensor, cu: torch.Tensor, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(base targets int64 [sum (F + 1)]: each clip's first codes then EOS, residual targets [sum F, Q - 1])."""
    base = []
    for a, b in zip(cu.tolist(), cu.tolist()[1:]):
        base += [codes[a:b, 0], codes.new_tensor([eos])]
    return torch.cat(base), codes[:, 1:]


def talker_losses(out) -> dict:
    base, res, codes, cu = out
    tb, tr = talker_targets(codes, cu, base.size(-1) - 1)
    base_ce = F.cross_entropy(base.float(), tb)
    res_ce = F.cross_entropy(res.float().reshape(-1, res.size(-1)), tr.reshape(-1)) if tr.numel() else base_ce * 0
    right = (base.argmax(-1) == tb).double().sum() + (res.argmax(-1) == tr).double().sum()
    return {"loss": (base_ce + res_ce) / 2 if tr.numel() else base_ce, "base_ce": base_ce, "res_ce": res_ce,
            "right": right, "targets": float(tb.numel() + tr.numel())}


def _forward(batch_loss, data_iterator, model):
    batch = next(data_iterator)
    out = model(None, None, task="talker", audio_features=batch["audio_features"],
                audio_cu_seqlens=batch["audio_cu_seqlens"], text=batch["text"],
                text_cu_seqlens=batch["text_cu_seqlens"])
    return out, partial(batch_loss, batch)


class TalkerObjective(Objective):
    name = "talker"
    per_token_loss = False

    def __init__(self, plan) -> None:
        self.heldout = HeldOut(("heldout_ce",))
        self.metric_names = ("loss", "base_ce", "res_ce", "code_accuracy")

    def _loss(self, batch: dict, out):
        v = talker_losses(out)
        loss = v["loss"]
        return loss, {"loss": metric(loss), "base_ce": metric(v["base_ce"]), "res_ce": metric(v["res_ce"]),
                      "code_accuracy": metric(v["right"], v["targets"]), **self.heldout.values(loss.device)}

    def _score(self, batch: dict, out):
        loss = talker_losses(out)["loss"]
        return loss * 0.0, {"heldout_ce": metric(loss)}

    def forward_step(self, data_iterator, model):
        return _forward(self._loss, data_iterator, model)

    def start_stage(self, ctx: StageContext) -> None:
        if self.heldout.prepare(ctx):
            self.metric_names = ("loss", "base_ce", "res_ce", "code_accuracy", "heldout_ce", "eval_step")

    def before_step(self, ctx: StageContext, batches: list[dict]) -> None:
        self.heldout.before_step(ctx, partial(_forward, self._score))
