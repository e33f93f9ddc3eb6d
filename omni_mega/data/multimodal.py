"""Packed multimodal micro-batches for the trainer (issue 9): `build_multimodal_source(cfg, plan, data_dir,
consumed_samples)` -> `PackedMultimodalSource`, a `omni_mega.training.data_source.BatchSource` whose "sample" is one
pack of `plan.seq_length` positions (micro_batch_size 1). How packs are drawn, packed, dealt to ranks and resumed:
`omni_mega.data.mm_source`; the pure packing pieces: `omni_mega.data.mm_packing`; the datasets:
`omni_mega.data.mm_datasets`.

Micro-batch dict (all CPU): tokens / labels int64 [1, S], loss_mask float32 [1, S], position_ids int64 [1, S],
cu_seqlens int32 [n + 1], max_seqlen int, pixel_values float32 [T, 3 * tps * p * p] and grid_thw int64 [N, 3]
(only when the pack holds images), stats dict of python ints.
"""

from __future__ import annotations

from pathlib import Path

from omni_mega.config import RunConfig
from omni_mega.config.schema import ConnectorConfig
from omni_mega.data import demo_text
from omni_mega.data.mm_datasets import open_mm_dataset, open_text_dataset, special_ids
from omni_mega.data.mm_source import MMPackingSpec, PackedMultimodalSource


def stage_ratios(plan, has_text: bool, has_mm: bool) -> tuple[float, float]:
    """(start, end) multimodal token share of a stage; a one-modality mix is 0 or 1 whatever is configured."""
    if not has_mm:
        return 0.0, 0.0
    if not has_text:
        return 1.0, 1.0
    r0 = plan.cfg.multimodal_ratio
    if r0 is None:
        raise ValueError(f"stage {plan.name!r}: its mix holds text and image-text datasets: set multimodal_ratio")
    r1 = plan.cfg.multimodal_ratio_end
    return float(r0), float(r0 if r1 is None else r1)


def packing_spec(cfg: RunConfig, plan, *, eod: int, sep: int, has_text: bool, has_mm: bool) -> MMPackingSpec:
    """The stage's MMPackingSpec from the run config (resolution bounds: the stage's, else data's; visual budget:
    data.max_visual_tokens, else the pack length)."""
    from omni_mega.training.curriculum import plan_stages

    vit = cfg.model.vit
    if vit is None:
        raise ValueError("build_multimodal_source: model.vit is not set (a text-only model takes text batches)")
    if cfg.data.micro_batch_size != 1:
        raise ValueError(f"data.micro_batch_size must be 1 for multimodal runs (one packed sequence per "
                         f"micro-batch), got {cfg.data.micro_batch_size}")
    r0, r1 = stage_ratios(plan, has_text, has_mm)
    before = plan_stages(cfg)[: plan.index]
    return MMPackingSpec(
        seq_length=plan.seq_length, visual_budget=cfg.data.max_visual_tokens or plan.seq_length,
        pack_window=cfg.data.pack_window, ratio_start=r0, ratio_end=r1,
        stage_packs=plan.steps * plan.global_batch_size,
        stage_start=sum(p.steps * p.global_batch_size for p in before), stage_index=plan.index,
        seed=cfg.data.seed, image_token_id=(cfg.model.connector or ConnectorConfig()).image_token_id,
        eod=eod, sep=sep, patch_size=vit.patch_size, merge_size=vit.merge_size,
        temporal_patch_size=vit.temporal_patch_size, min_pixels=plan.cfg.min_pixels or cfg.data.min_pixels,
        max_pixels=plan.cfg.max_pixels or cfg.data.max_pixels)


def build_multimodal_source(cfg: RunConfig, plan, data_dir: Path, consumed_samples: int) -> PackedMultimodalSource:
    """The packed source of stage `plan` (a `StagePlan`) at `consumed_samples` packs of the run.

    data_dir: where the built-in demo data is cached (`cfg.data.data_dir or <run dir>/data`; the trainer passes it).
    Then call `load_state_dict` with a checkpoint's data state to skip replaying the stage's windows."""
    text = [d for d in plan.mix if not d.multimodal]
    mm = [d for d in plan.mix if d.multimodal]
    mm_sets = [open_mm_dataset(d, Path(data_dir)) for d in mm]
    eod, sep = special_ids(mm_sets, [d.name for d in mm]) if mm else (demo_text.EOD, 10)
    if any(d.source == "demo_text" for d in text) and eod != demo_text.EOD:
        raise ValueError(f"stage {plan.name!r}: demo_text is byte-level (EOD {demo_text.EOD}) but the image-text "
                         f"datasets use EOD {eod}: one run needs one tokenizer")
    text_sets = [open_text_dataset(d, eod, plan.seq_length) for d in text]
    spec = packing_spec(cfg, plan, eod=eod, sep=sep, has_text=bool(text), has_mm=bool(mm))
    return PackedMultimodalSource(spec, text_sets, [d.weight for d in text], mm_sets, [d.weight for d in mm],
                                  consumed_samples)


__all__ = ["build_multimodal_source", "PackedMultimodalSource", "MMPackingSpec", "packing_spec", "stage_ratios"]
