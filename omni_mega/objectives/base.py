"""What every objective provides, and the pieces objectives share.

Contract with megatron's schedules (`get_forward_backward_func`): `forward_step(data_iterator, model)` pulls one
micro-batch, runs the model chunk and returns (output, loss_func); on the last pipeline stage megatron calls
`loss_func(output)`, which returns (loss, {name: tensor}). Every reported value is a float64 pair [sum, count] so the
trainer can reduce any metric the same way: sum both over micro-batches and data-parallel ranks, then divide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass
class StageContext:
    """What the trainer lends an objective that prepares a stage or a step (the objective never sees the trainer)."""

    plan: object  # the stage's config.plan.StagePlan
    run_dir: Path
    step_slice: object  # this rank's data.source.StepSlice of a step
    step: int  # optimizer steps of the run done (the step about to run is step + 1)
    model: list  # the training model chunks (megatron DDP-wrapped)
    image_token_id: int  # the placeholder id of a merged visual token
    new_source: Callable[[int], object]  # a fresh data source of this stage at a number of consumed samples
    forward_only: Callable[[list, Callable, list], list[dict]]  # (micro-batches, forward_step, chunks) -> the loss
    # dicts of the last pipeline stage (an empty list on other stages), megatron's schedule without backward
    reference_model: Callable[[], list]  # a frozen copy of the model chunks with the current weights
    dataset_sizes: list[int]  # items of each image-text/conversation dataset of the stage's mix (table sizes)
    model_config: object = None  # the run's config.ModelConfig (held-out batches of part-training stages)
    data_dir: Path | None = None  # where the built-in demo data is cached
    chunks: list | None = None  # the (unwrapped) model chunks being trained, for objectives that maintain a part


class Objective:
    """The base of every objective: the trainer calls these methods and nothing else; the defaults suit an
    objective with nothing to prepare and nothing to keep (lm, sft)."""

    name: str
    metric_names: tuple[str, ...]  # the keys of loss_func's dict ("loss" first): metrics.jsonl fields
    # True: loss_func returns (loss sum, token count, values) and megatron scales gradients by the global batch's
    # token count (megatron's calculate_per_token_loss); False: (mean loss, values), each micro-batch weighs the same.
    per_token_loss: bool

    def forward_step(self, data_iterator, model):
        """One micro-batch through one model chunk: (output tensor, loss_func)."""
        raise NotImplementedError

    def start_stage(self, ctx: StageContext) -> None:
        """Called once the stage's model, optimizer and data source are set up (also on resume), before its first
        step: an objective that needs a pass over the stage's data first (reference log-probs) does it here."""

    def before_step(self, ctx: StageContext, batches: list[dict]) -> list[dict] | None:
        """Called with this rank's micro-batches of a step before its forward and backward passes; returns the
        micro-batches to train on instead (GRPO: rollouts of the prompts it was given), or None to keep them."""
        return None

    def step_metrics(self) -> dict:
        """metrics.jsonl values the objective measured outside megatron's loss dicts this step (rewards, times)."""
        return {}

    def state_dict(self) -> dict:
        """JSON the checkpoint keeps for a resume inside the stage ({} when nothing)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Takes back what state_dict returned."""


def metric(total: torch.Tensor, count: float | torch.Tensor = 1.0) -> torch.Tensor:
    """A reported value as float64 [sum, count] (detached; a copy: megatron scales returned losses in place)."""
    return torch.stack([total.detach().double().reshape(()),
                        torch.as_tensor(count, dtype=torch.float64, device=total.device).reshape(())])


def packed_seq_params(batch: dict):
    """megatron PackedSeqParams for a packed micro-batch (THD, self-attention: q and kv bounds are the same)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = batch["cu_seqlens"]
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=batch["max_seqlen"],
                           max_seqlen_kv=batch["max_seqlen"])


def model_inputs(batch: dict) -> dict:
    """Keyword inputs of the model beyond tokens and positions: the packing, and images and audio when the batch
    has them (a text-only model never gets those keys, because its batches never hold images or clips)."""
    out = {"packed_seq_params": packed_seq_params(batch)}
    for k in ("pixel_values", "grid_thw", "audio_features", "audio_cu_seqlens"):
        if batch.get(k) is not None:
            out[k] = batch[k]
    return out
