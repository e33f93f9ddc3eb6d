"""What a stage changes besides its plan (`omni_mega.config.plan.StagePlan`): the run's LR over all stages, the RoPE
base of the model chunks, the run's vocabulary, and the banner printed at each stage start. Model code knows nothing
of stages; this module sets what they change."""

from __future__ import annotations

from pathlib import Path

from omni_mega.config import ConfigError, RunConfig
from omni_mega.config.plan import StagePlan, plan_stages
from omni_mega.config.stage import AUDIO_SOURCES

PART_SOURCES = AUDIO_SOURCES + ("demo_shapes",)  # audio clips and labelled images: not conversations
from omni_mega.training.schedules import Segment, build_segments, lr_for_step


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
    from megatron.core.models.common.embeddings.rotary_pos_embedding import (MultimodalRotaryEmbedding,
                                                                             RotaryEmbedding)

    kinds = (RotaryEmbedding, MultimodalRotaryEmbedding)  # 1D RoPE and M-RoPE: both keep `inv_freq`
    return [m for c in chunks for m in c.modules() if isinstance(m, kinds)]


def set_rope_base(chunks: list, base: float) -> int:
    """Recomputes every RotaryEmbedding's `inv_freq` in place for theta=`base` (same tensor, same device; no
    parameter is created), keeping the model's RoPE frequency scaling (llama3 / yarn), and clears megatron's cached
    rotary embeddings. Returns the number of modules updated."""
    from omni_mega.models.llm import set_rotary

    return sum(set_rotary(c, base) for c in chunks)


# ---- vocabulary ---------------------------------------------------------------------------------------------------
def run_vocab_size(cfg: RunConfig, data_dir: str | Path | None) -> int:
    """The LLM vocabulary (before padding): model.llm.vocab_size, else the largest one the run's datasets record
    (the built-in byte tokenizer's 257 for demo data, dataset.json's tokenizer for image-text shards)."""
    if cfg.model.llm.vocab_size is not None:
        return cfg.model.llm.vocab_size
    from omni_mega.data.readers import data_vocab_size

    size = data_vocab_size([p.mix for p in plan_stages(cfg)], Path(data_dir or "."))
    if size is None:
        raise ConfigError("model.llm.vocab_size: no dataset of the run records its tokenizer; set the vocabulary size")
    return size


# ---- banner -------------------------------------------------------------------------------------------------------
def _mix_line(plan: StagePlan) -> str:
    """Dataset shares within each modality (with a multimodal token share, the share splits the modalities)."""
    parts = []
    for label, ds in (("text", [d for d in plan.mix if not d.structured]),
                      ("image-text", [d for d in plan.mix if d.multimodal]),
                      ("conversations", [d for d in plan.mix if d.structured and not d.multimodal
                                         and d.source not in PART_SOURCES]),
                      ("audio", [d for d in plan.mix if d.source in AUDIO_SOURCES]),
                      ("labelled images", [d for d in plan.mix if d.source == "demo_shapes"])):
        w = sum(d.weight for d in ds)
        if ds:
            parts.append(f"{label}: " + ", ".join(f"{d.name} ({d.source}{':' + d.path if d.path else ''}) "
                                                 f"{d.weight / w:.0%}" for d in ds))
    return "  data: " + " | ".join(parts)


def _mm_line(plan: StagePlan) -> str:
    if not any(d.structured for d in plan.mix):
        return "  multimodal token share 0% (text-only stage: no images)"
    r0, r1 = plan.ratio_start, plan.ratio_end
    ratio = f"{r0:.0%}" + (f" -> {r1:.0%}" if r1 != r0 else " (constant)")
    return (f"  multimodal token share {ratio}; images {plan.min_pixels:,}-{plan.max_pixels:,} pixels; visual budget "
            f"{plan.visual_budget} merged tokens per pack of {plan.seq_length}")


def banner(plan: StagePlan, lr_plan: LRPlan, group_counts: dict[str, int], trainable: int, total: int,
           n_stages: int) -> str:
    """The stage-start banner; stages of a model with a vision tower also get the multimodal line (token share
    start -> end, resolution bounds, visual-token budget per pack)."""
    s = plan.cfg
    seg = lr_plan.segment_of(plan.index)
    lr0, lr1 = lr_plan.lr(plan.start_step), lr_plan.lr(plan.end_step - 1)
    mults = {m.group: m.mult for m in plan.lr_mult}
    lines = [
        f"==== stage {plan.index + 1}/{n_stages} '{plan.name}' ({plan.objective}): steps {plan.start_step + 1}-"
        f"{plan.end_step} ({plan.steps} steps, {plan.tokens:,} tokens) ====",
        f"  trainable: {trainable:,} of {total:,} parameters ("
        + ", ".join(f"{g}: {n:,}" + (f" x{mults[g]:g} lr" if g in mults else "") for g, n in group_counts.items()) + ")",
        f"  lr: schedule {s.schedule}, {seg.decay} peak {seg.peak:.3g} min {seg.min_lr:.3g} warmup {seg.warmup}"
        + (f" decay_steps {seg.decay_steps}" if seg.decay in ("wsd", "step") else "")
        + f"; this stage {lr0:.3g} -> {lr1:.3g}",
        f"  sequence length {plan.seq_length}, micro-batch {plan.micro_batch_size}, global batch "
        f"{plan.global_batch_size} packs, RoPE base {plan.rope_base:g}",
        _mix_line(plan),
    ]
    if plan.vision:
        lines.append(_mm_line(plan))
    if s.init_from:
        lines.append(f"  init_from: {s.init_from}")
    return "\n".join(lines)
