"""The stage plan: every effective per-stage value, computed once from the run config.

Data sources, config validation, the dry-run and the trainer all read a stage's values from its `StagePlan` and never
re-derive them: inherited fields are filled in (sequence length and batch from `data`, the RoPE base from the
previous stage, resolution bounds from `data`), lengths are in steps and in samples (one sample = one pack of
`seq_length` positions), the multimodal token share is resolved for the stage's mix, and the samples consumed before
the stage are counted. Pure Python: a plan of a 7B recipe prints without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from omni_mega.config.schema import RunConfig
from omni_mega.config.stage import DatasetConfig, LRMultConfig, StageConfig


@dataclass(frozen=True)
class StagePlan:
    index: int
    cfg: StageConfig  # the stage as configured (names, init_from, save, ckpt_interval, LR fields)
    objective: str  # omni_mega.objectives module that computes the loss
    start_step: int  # global optimizer steps done before this stage
    steps: int
    seq_length: int  # positions per pack
    micro_batch_size: int  # packs (images for objective contrastive) per micro-batch per data-parallel rank
    global_batch_size: int  # packs per optimizer step (all data-parallel ranks)
    samples_before: int  # packs of the run consumed before this stage
    rope_base: float
    mix: tuple[DatasetConfig, ...]  # the data mix; weights as configured (normalised by the source)
    trainable: tuple[str, ...]  # module groups
    lr_mult: tuple[LRMultConfig, ...]
    ratio_start: float | None  # share of tokens from image-text/conversation datasets at the stage start
    ratio_end: float | None  # ... at the stage end (linear in stage progress)
    min_pixels: int  # smart_resize bounds for this stage's images
    max_pixels: int
    visual_budget: int  # merged visual tokens per pack at most
    pack_window: int  # samples packed together before the next window is drawn
    seed: int  # data order seed
    vision: bool  # the model has a vision tower (image statistics are reported)

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps

    @property
    def samples(self) -> int:
        """Packs this stage consumes."""
        return self.steps * self.global_batch_size

    @property
    def tokens(self) -> int:
        """LLM positions this stage trains on (packs x positions, padding included)."""
        return self.samples * self.seq_length

    @property
    def multimodal(self) -> bool:
        """The mix holds image-text datasets."""
        return any(d.multimodal for d in self.mix)

    def ratio_at(self, step_in_stage: int) -> float | None:
        """Multimodal token share targeted at `step_in_stage` (0-based, before that step)."""
        if self.ratio_start is None or self.ratio_end is None:
            return None
        return ramp(self.ratio_start, self.ratio_end, step_in_stage / self.steps)


def ramp(start: float, end: float, progress: float) -> float:
    """A value ramping linearly from `start` to `end` over a stage; progress in [0, 1] (clamped)."""
    return start + (end - start) * min(max(progress, 0.0), 1.0)


def stage_ratios(s: StageConfig, mix: tuple[DatasetConfig, ...]) -> tuple[float | None, float | None]:
    """(start, end) share of tokens from the mix's image-text and conversation datasets: 0 for an all-text mix and 1
    for a mix without plain text whatever is configured; a mixed stage takes `multimodal_ratio` (->
    `multimodal_ratio_end`), None when it is unset (which validation refuses)."""
    mm = [d.structured for d in mix]
    if not any(mm):
        return 0.0, 0.0
    if all(mm):
        return 1.0, 1.0
    if s.multimodal_ratio is None:
        return None, None
    end = s.multimodal_ratio if s.multimodal_ratio_end is None else s.multimodal_ratio_end
    return float(s.multimodal_ratio), float(end)


def default_mix(cfg: RunConfig) -> tuple[DatasetConfig, ...]:
    """The `data` section's source, for stages that name no datasets."""
    d = cfg.data
    return (DatasetConfig(name=d.source, source=d.source, seed=d.seed, path=d.paths[0] if d.paths else None),)


def plan_stages(cfg: RunConfig) -> list[StagePlan]:
    plans, start, samples, rope, d = [], 0, 0, cfg.model.llm.rotary_base, cfg.data
    for i, s in enumerate(cfg.stages):
        rope = s.rope_base if s.rope_base is not None else rope
        mix = tuple(s.data) or default_mix(cfg)
        seq = s.seq_length or d.seq_length
        gbs = s.global_batch_size or d.global_batch_size
        r0, r1 = stage_ratios(s, mix)
        plans.append(StagePlan(
            index=i, cfg=s, objective=s.objective, start_step=start, steps=s.steps, seq_length=seq,
            micro_batch_size=s.micro_batch_size or d.micro_batch_size, global_batch_size=gbs,
            samples_before=samples, rope_base=rope,
            mix=mix, trainable=tuple(s.trainable), lr_mult=tuple(s.lr_mult), ratio_start=r0, ratio_end=r1,
            min_pixels=s.min_pixels or d.min_pixels, max_pixels=s.max_pixels or d.max_pixels,
            visual_budget=d.max_visual_tokens or seq, pack_window=d.pack_window, seed=d.seed,
            vision=cfg.model.vit is not None,
        ))
        start += s.steps
        samples += s.steps * gbs
    return plans


def stage_at(plans: list[StagePlan], step: int) -> StagePlan:
    """The stage that optimizer step `step` (0-based, i.e. `step` steps already done) belongs to."""
    for p in plans:
        if step < p.end_step:
            return p
    return plans[-1]


def max_seq_length(plans: list[StagePlan]) -> int:
    """Most positions of one pack in the run (positions restart in every pack and every sample, so a micro-batch of
    several packs reaches no further)."""
    return max(p.seq_length for p in plans)
