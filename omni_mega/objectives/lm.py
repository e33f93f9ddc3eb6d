"""`objective: lm`: next-token cross entropy on packed text and image-text sequences, masked.

The mask comes with the batch (0 on padding and wherever the input or the target is an image placeholder or another
no-loss id). The loss of a micro-batch is the mean over its unmasked tokens, and the step's loss the mean over
micro-batches (megatron divides each micro-batch's loss by their number): every pack weighs the same.
"""

from __future__ import annotations

from functools import partial

import torch

from omni_mega.objectives.base import Objective, metric, model_inputs


def masked_mean(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    """(mean loss over unmasked tokens, {"loss": [sum, count]}) in megatron's loss_func contract."""
    mask = loss_mask.reshape(-1).float()
    loss = (per_token_loss.float().reshape(-1) * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"loss": metric(loss)}


class LMObjective(Objective):
    """Built from the stage plan (nothing in it to read)."""

    def __init__(self, plan=None) -> None:
        pass

    name = "lm"
    metric_names = ("loss",)
    per_token_loss = False  # a mean per micro-batch (pretraining packs are nearly full: the two agree closely)

    def forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        mask = batch["loss_mask"]
        # Targets under a zero mask (placeholders, padding) may lie outside the vocabulary: point them at id 0 so
        # the cross entropy never indexes out of range; they carry no loss either way.
        labels = batch["labels"].masked_fill(mask == 0, 0)
        out = model(batch["tokens"], batch["position_ids"], None, labels=labels, **model_inputs(batch))
        return out, partial(masked_mean, mask)
