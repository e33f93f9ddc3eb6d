"""`objective: sft`: supervised fine-tuning on conversations, the loss on the answers only.

The batch's loss mask is 1 exactly on supervised targets: assistant content and the end-of-turn token that closes
it (the data source builds it from the conversation shards' masks), never on system or user turns, role headers,
image placeholders or padding. Normalisation: the sum of the masked token losses over the global batch divided by
the number of supervised tokens in the global batch (megatron's per-token loss: each micro-batch returns its sum and
its token count, gradients are scaled by the all-reduced count). Every supervised token weighs the same, so a long
answer is not worth less per token than a short one, and the value does not depend on how the conversations were
packed or dealt to micro-batches and ranks.
"""

from __future__ import annotations

from functools import partial

import torch

from omni_mega.objectives.base import Objective, metric, model_inputs


def masked_sum(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    """(sum of the masked token losses, supervised tokens, {"loss": [sum, count]}): megatron's per-token form."""
    mask = loss_mask.reshape(-1).float()
    total = (per_token_loss.float().reshape(-1) * mask).sum()
    count = mask.sum()
    return total, count.to(torch.int), {"loss": metric(total, count)}


class SFTObjective(Objective):
    """Built from the stage plan (nothing in it to read)."""

    def __init__(self, plan=None) -> None:
        pass

    name = "sft"
    metric_names = ("loss",)
    per_token_loss = True  # gradients scaled by the global batch's supervised tokens

    def forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        mask = batch["loss_mask"]
        labels = batch["labels"].masked_fill(mask == 0, 0)  # masked targets may be placeholders (negative ids)
        out = model(batch["tokens"], batch["position_ids"], None, labels=labels, **model_inputs(batch))
        return out, partial(masked_sum, mask)
