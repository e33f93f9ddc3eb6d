"""The trainer's data interface: one `BatchSource` per stage, built by `build_source` from the stage plan, for every
model and every mix. There is one path: the stage's datasets are opened by their readers (`readers`, one per source
kind) and packed into sequences of `seq_length` positions (`packed_source.PackedSource`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from omni_mega.config.plan import StagePlan
from omni_mega.config.model import ConnectorConfig, ModelConfig, ViTConfig
from omni_mega.config.stage import PART_OBJECTIVES
from omni_mega.data.readers import open_mm_dataset, open_text_dataset, special_ids, tokenizer_of


@dataclass(frozen=True)
class StepSlice:
    """What one data-parallel rank consumes in one optimizer step."""

    dp_rank: int
    dp: int
    num_micro: int  # micro-batches per rank per step
    micro_batch_size: int  # packs per micro-batch
    seq_length: int  # positions per pack

    @property
    def global_batch(self) -> int:
        return self.dp * self.num_micro * self.micro_batch_size


class BatchSource(Protocol):
    consumed_samples: int  # packs of the whole run consumed so far (all ranks)

    def plan_step(self, sl: StepSlice, ahead: int = 0) -> list:
        """This rank's micro-batches of the step `ahead` steps after the next one, by size only (cheap, in stream
        order; the state does not move)."""

    def materialize(self, plan: list) -> list[dict]:
        """The micro-batch dicts of a `plan_step` result: tokens/labels/loss_mask/position_ids [1, T], cu_seqlens,
        max_seqlen, optional pixel_values/grid_thw, `stats` (python ints). Pure: safe in a background thread."""

    def step_metrics(self, stats: dict[str, int]) -> dict:
        """metrics.jsonl fields of a step from its micro-batches' `stats` summed over data-parallel ranks."""

    def advance(self, samples: int) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# Objectives whose micro-batches are whole image-text samples (B images with their captions) instead of packs; the
# kind of source follows the stage's objective here, so the trainer never asks.
IMAGE_TEXT_OBJECTIVES = frozenset({"contrastive"})


def build_source(plan: StagePlan, model: ModelConfig, data_dir: str | Path, consumed_samples: int, *,
                 decode_threads: int = 2):
    """The `PackedSource` of stage `plan` at `consumed_samples` packs of the run (an `ImageTextSource` of samples
    for the objectives in IMAGE_TEXT_OBJECTIVES).

    model: the run's model config (the vision tower's patch sizes and the connector's placeholder ids shape the
    image-text samples). data_dir: where the built-in demo data is cached. Then call `load_state_dict` with a
    checkpoint's data state to skip replaying the stage's windows."""
    from omni_mega.data.pack_stream import PackingSpec
    from omni_mega.data.packed_source import PackedSource

    data_dir = Path(data_dir)
    if plan.objective in IMAGE_TEXT_OBJECTIVES:
        from omni_mega.data.image_text_source import build_image_text_source

        return build_image_text_source(plan, model, data_dir, consumed_samples, decode_threads=decode_threads)
    if plan.objective in PART_OBJECTIVES:  # one part trained alone: its own micro-batches
        from omni_mega.data.task_source import build_task_source

        return build_task_source(plan, model, data_dir, consumed_samples, decode_threads=decode_threads)
    text = [d for d in plan.mix if not d.structured]
    mm = [d for d in plan.mix if d.structured]  # image-text and conversation samples
    if any(d.multimodal for d in mm) and model.vit is None:
        raise ValueError(f"stage {plan.name!r}: image-text datasets {[d.name for d in mm if d.multimodal]} need "
                         "model.vit")
    eod, sep = special_ids([tokenizer_of(d, data_dir) for d in plan.mix], [d.name for d in plan.mix])
    conn, vit = model.connector or ConnectorConfig(), model.vit or ViTConfig()  # a text model's packs hold no image
    spec = PackingSpec(
        seq_length=plan.seq_length, visual_budget=plan.visual_budget, pack_window=plan.pack_window,
        ratio_start=plan.ratio_start, ratio_end=plan.ratio_end, stage_packs=plan.samples,
        stage_start=plan.samples_before, stage_index=plan.index, seed=plan.seed,
        image_token_id=conn.image_token_id, no_loss_ids=tuple(conn.indicator_token_ids), eod=eod, sep=sep,
        patch_size=vit.patch_size, merge_size=vit.merge_size, temporal_patch_size=vit.temporal_patch_size,
        min_pixels=plan.min_pixels, max_pixels=plan.max_pixels, multimodal_metrics=plan.vision)
    if model.audio is not None:  # audio placeholders carry no loss; clips' features at the model's mel bins
        import dataclasses

        spec = dataclasses.replace(spec, no_loss_ids=spec.no_loss_ids + (model.audio.audio_token_id,),
                                   n_mels=model.audio.n_mels, multimodal_metrics=True)
    mm_sets = [open_mm_dataset(d, data_dir) for d in mm]
    if any(getattr(ds, "modality", None) == "audio" for ds in mm_sets):
        from omni_mega.data.task_source import wrap_audio

        mm_sets = wrap_audio(mm_sets, model, plan)
    if model.vit is None:
        for d, ds in zip(mm, mm_sets):
            if getattr(ds, "has_images", False):
                raise ValueError(f"stage {plan.name!r}: dataset {d.name!r} holds images and the model has no vision "
                                 "tower (model.vit)")
    if plan.objective == "grpo":  # prompts to answer, not packs to train on: the objective packs its rollouts
        from omni_mega.data.prompt_source import PromptSource

        if text:
            raise ValueError(f"stage {plan.name!r}: objective grpo takes prompt datasets only, not text "
                             f"{[d.name for d in text]}")
        return PromptSource(spec, mm_sets, [d.weight for d in mm], consumed_samples,
                            global_batch=plan.global_batch_size, ppo_epochs=plan.cfg.grpo.ppo_epochs)
    return PackedSource(spec, [open_text_dataset(d, eod, plan.seq_length) for d in text], [d.weight for d in text],
                        mm_sets, [d.weight for d in mm], consumed_samples, decode_threads=decode_threads)
