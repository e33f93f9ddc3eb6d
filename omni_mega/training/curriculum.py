"""The curriculum: each stage's concrete settings (inherited fields filled in), where it starts, RoPE base changes
and the banner printed at each stage start. Model code knows nothing of stages; this module sets what they change."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omni_mega.config import RunConfig, StageConfig
from omni_mega.config.schema import DataConfig, DatasetConfig
from omni_mega.training.schedules import Segment, build_segments, lr_for_step


@dataclass
class StagePlan:
    index: int
    cfg: StageConfig
    start_step: int  # global optimizer steps done before this stage
    steps: int
    seq_length: int
    global_batch_size: int
    rope_base: float
    mix: list[DatasetConfig]  # the data mix; weights as configured (normalised by the source)

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps


def plan_stages(cfg: RunConfig) -> list[StagePlan]:
    plans, start, rope = [], 0, cfg.model.llm.rotary_base
    default_mix = [DatasetConfig(name=cfg.data.source, source=cfg.data.source, seed=cfg.data.seed,
                                 path=cfg.data.paths[0] if cfg.data.paths else None)]
    for i, s in enumerate(cfg.stages):
        rope = s.rope_base if s.rope_base is not None else rope
        plans.append(StagePlan(
            index=i, cfg=s, start_step=start, steps=s.steps, seq_length=s.seq_length or cfg.data.seq_length,
            global_batch_size=s.global_batch_size or cfg.data.global_batch_size, rope_base=rope,
            mix=list(s.data) or default_mix,
        ))
        start += s.steps
    return plans


def stage_at(plans: list[StagePlan], step: int) -> StagePlan:
    """The stage that optimizer step `step` (0-based, i.e. `step` steps already done) belongs to."""
    for p in plans:
        if step < p.end_step:
            return p
    return plans[-1]


def max_seq_length(plans: list[StagePlan]) -> int:
    return max(p.seq_length for p in plans)


# ---- multimodal stages --------------------------------------------------------------------------------------------
def mm_ratio_target(plan: StagePlan, step_in_stage: int) -> float | None:
    """The stage's multimodal token share at `step_in_stage` (0-based, before that step): `multimodal_ratio` ramping
    linearly to `multimodal_ratio_end` by the stage end (the data source ramps by stage progress the same way).
    Without a configured ratio an all-text mix is 0 and an all-image-text mix 1; a mixed stage with no ratio (which
    config validation refuses) gives None."""
    s = plan.cfg
    if s.multimodal_ratio is None:
        mm = [d.multimodal for d in plan.mix]
        return 1.0 if mm and all(mm) else 0.0 if not any(mm) else None
    end = s.multimodal_ratio if s.multimodal_ratio_end is None else s.multimodal_ratio_end
    return s.multimodal_ratio + (end - s.multimodal_ratio) * min(max(step_in_stage, 0), plan.steps) / plan.steps


def pixel_bounds(plan: StagePlan, data: DataConfig) -> tuple[int, int]:
    """(min_pixels, max_pixels) of the stage: its own bounds, else the data section's."""
    return plan.cfg.min_pixels or data.min_pixels, plan.cfg.max_pixels or data.max_pixels


def _mix_line(plan: StagePlan) -> str:
    """The mix of a multimodal run: dataset shares within each modality (the token share splits the modalities)."""
    parts = []
    for label, ds in (("text", [d for d in plan.mix if not d.multimodal]),
                      ("image-text", [d for d in plan.mix if d.multimodal])):
        w = sum(d.weight for d in ds)
        if ds:
            parts.append(f"{label}: " + ", ".join(f"{d.name} ({d.source}{':' + d.path if d.path else ''}) "
                                                 f"{d.weight / w:.0%}" for d in ds))
    return "  data: " + " | ".join(parts)


def _mm_lines(plan: StagePlan, data: DataConfig) -> list[str]:
    if not any(d.multimodal for d in plan.mix):
        return ["  multimodal token share 0% (text-only stage: no images)"]
    lo, hi = pixel_bounds(plan, data)
    r0, r1 = mm_ratio_target(plan, 0), mm_ratio_target(plan, plan.steps)
    ratio = "n/a" if r0 is None else f"{r0:.0%}" + (f" -> {r1:.0%}" if r1 != r0 else " (constant)")
    budget = data.max_visual_tokens or plan.seq_length
    return [f"  multimodal token share {ratio}; images {lo:,}-{hi:,} pixels; visual budget {budget} merged tokens "
            f"per pack of {plan.seq_length}"]


class LRPlan:
    """Per-step LR of the whole run (pure function of the global step) and per-group multipliers."""

    def __init__(self, cfg: RunConfig) -> None:
        self.segments, self.owner = build_segments(cfg)

    def lr(self, step: int) -> float:
        return lr_for_step(self.segments, step)

    def segment_of(self, stage_index: int) -> Segment:
        return self.segments[self.owner[stage_index]]


# ---- RoPE base ----------------------------------------------------------------------------------------------------
def rotary_modules(chunks: list) -> list:
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    return [m for c in chunks for m in c.modules() if isinstance(m, RotaryEmbedding)]


def set_rope_base(chunks: list, base: float) -> int:
    """Recomputes every RotaryEmbedding's `inv_freq` in place for theta=`base` (same tensor, same device; no
    parameter is created) and clears megatron's cached rotary embeddings. Returns the number of modules updated."""
    mods = rotary_modules(chunks)
    for m in mods:
        dim = 2 * m.inv_freq.numel()
        exponent = torch.arange(0, dim, 2, dtype=torch.float32, device=m.inv_freq.device) / dim
        with torch.no_grad():
            m.inv_freq.copy_(1.0 / (float(base) ** exponent))
    if mods:  # RotaryEmbedding.forward is an lru_cache keyed by (module, seq len): stale after the change
        type(mods[0]).forward.cache_clear()
    return len(mods)


# ---- banner -------------------------------------------------------------------------------------------------------
def banner(plan: StagePlan, lr_plan: LRPlan, group_counts: dict[str, int], trainable: int, total: int,
           n_stages: int, data: DataConfig | None = None) -> str:
    """The stage-start banner; `data` (the run's data section) adds the multimodal lines: token share (start ->
    end), resolution bounds and the visual-token budget per pack. Text-only runs pass None."""
    s = plan.cfg
    seg = lr_plan.segment_of(plan.index)
    lr0, lr1 = lr_plan.lr(plan.start_step), lr_plan.lr(plan.end_step - 1)
    mults = {m.group: m.mult for m in s.lr_mult}
    weights = sum(d.weight for d in plan.mix)
    lines = [
        f"==== stage {plan.index + 1}/{n_stages} '{plan.name}': steps {plan.start_step + 1}-{plan.end_step} "
        f"({plan.steps} steps, {plan.steps * plan.global_batch_size * plan.seq_length:,} tokens) ====",
        f"  trainable: {trainable:,} of {total:,} parameters ("
        + ", ".join(f"{g}: {n:,}" + (f" x{mults[g]:g} lr" if g in mults else "") for g, n in group_counts.items()) + ")",
        f"  lr: schedule {s.schedule}, {seg.decay} peak {seg.peak:.3g} min {seg.min_lr:.3g} warmup {seg.warmup}"
        + (f" decay_steps {seg.decay_steps}" if seg.decay == "wsd" else "")
        + f"; this stage {lr0:.3g} -> {lr1:.3g}",
        f"  sequence length {plan.seq_length}, global batch {plan.global_batch_size}, RoPE base {plan.rope_base:g}",
        "  data: " + ", ".join(f"{d.name} ({d.source}{':' + d.path if d.path else ''}) {d.weight / weights:.0%}"
                               for d in plan.mix) if data is None else _mix_line(plan),
    ]
    if data is not None:
        lines += _mm_lines(plan, data)
    if s.init_from:
        lines.append(f"  init_from: {s.init_from}")
    return "\n".join(lines)
