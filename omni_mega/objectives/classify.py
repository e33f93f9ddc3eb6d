"""`objective: classify`: the ViT trained on labelled images (μOmni's vision stage C): each image's merged features
averaged, the classifier head over `model.classifier.labels`, cross entropy. Normalisation: the mean over the global
batch's images (megatron's per-token loss with one "token" per image). Metrics: `loss`, `accuracy` (this step's
images), and on the held-out split `heldout_accuracy`, `heldout_loss`, with `eval_step`."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from omni_mega.objectives.base import Objective, StageContext, metric
from omni_mega.objectives.parts import HeldOut


def _forward(batch_loss, data_iterator, model):
    batch = next(data_iterator)
    out = model(None, None, task="classify", pixel_values=batch["pixel_values"], grid_thw=batch["grid_thw"])
    return out, partial(batch_loss, batch)


class ClassifyObjective(Objective):
    name = "classify"
    per_token_loss = True  # the mean over the global batch's images

    def __init__(self, plan) -> None:
        self.heldout = HeldOut(("heldout_accuracy", "heldout_loss"))
        self.metric_names = ("loss", "accuracy")

    def _loss(self, batch: dict, logits: torch.Tensor):
        labels = batch["class_labels"]
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        n = float(labels.numel())
        right = (logits.argmax(-1) == labels).double().sum()
        values = {"loss": metric(loss, n), "accuracy": metric(right, n), **self.heldout.values(logits.device)}
        return loss, torch.tensor(labels.numel(), dtype=torch.int, device=logits.device), values

    def _score(self, batch: dict, logits: torch.Tensor):
        labels = batch["class_labels"]
        n = float(labels.numel())
        return logits.sum() * 0.0, {
            "heldout_accuracy": metric((logits.argmax(-1) == labels).double().sum(), n),
            "heldout_loss": metric(F.cross_entropy(logits.float(), labels, reduction="sum"), n)}

    def forward_step(self, data_iterator, model):
        return _forward(self._loss, data_iterator, model)

    def start_stage(self, ctx: StageContext) -> None:
        if self.heldout.prepare(ctx):
            self.metric_names = ("loss", "accuracy", "heldout_accuracy", "heldout_loss", "eval_step")

    def before_step(self, ctx: StageContext, batches: list[dict]) -> None:
        self.heldout.before_step(ctx, partial(_forward, self._score))
