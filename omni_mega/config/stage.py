"""The `stages:` section: one stage of a curriculum (trainable groups, LR schedule, data mix, resolution, sequence
length, objective) and the objectives' own settings (DPO, GRPO, contrastive, evaluation)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omni_mega.config.checks import require


DECAYS = ("cosine", "linear", "constant", "wsd", "step")
# Training objectives a stage may name; each is a module of omni_mega.objectives (a test holds the two lists equal).
OBJECTIVES = ("lm", "sft", "dpo", "grpo", "contrastive")
# Stages that train one part alone (the μOmni stages): ctc (audio encoder, speech recognition), classify (ViT), rvq
# (codec), talker (codec codes).
PART_OBJECTIVES = ("ctc", "classify", "rvq", "talker")
OBJECTIVES += PART_OBJECTIVES
TEXT_SOURCES = ("demo_text", "indexed")  # plain documents
MM_SOURCES = ("demo_mm", "mm_shards")  # images with captions
# Conversation shards (`tools/preprocess_conversations.py`: supervised conversations, preference pairs or prompts;
# the kind is in their dataset.json) and the built-in demo conversations and preference pairs.
CONV_SOURCES = ("conversations", "demo_sft", "demo_preference", "demo_prompts")
SOURCES = TEXT_SOURCES + MM_SOURCES + CONV_SOURCES
# Audio with transcripts (`tools/preprocess_audio.py`: `audio_shards`; the built-in synthetic speech: `demo_audio`)
# and the built-in labelled shape images (`demo_shapes`, for `objective: classify`).
AUDIO_SOURCES = ("demo_audio", "audio_shards")
SOURCES += AUDIO_SOURCES + ("demo_shapes",)
SCHEDULES = ("new", "resume", "rewarmup")


@dataclass
class DatasetConfig:
    """One dataset of a stage's data mix. Text sources: demo_text, indexed. Image-text sources: demo_mm (the built-in
    rendered-text and shape scenes, `omni_mega.data.demo.scenes`), mm_shards (`tools/preprocess_mmdata.py` output in `path`)."""

    name: str = "demo"  # label in banners and metrics
    source: str = "demo_text"  # demo_text | indexed (prefix in `path`) | demo_mm | mm_shards (directory in `path`)
    seed: int = 0  # demo_text: which sample windows this dataset draws (another seed = another dataset)
    path: str | None = None  # indexed: dataset prefix
    weight: float = 1.0  # relative share in the stage (normalised within its modality when multimodal_ratio is set)

    @property
    def multimodal(self) -> bool:
        """Images with captions (needs a vision model)."""
        return self.source in MM_SOURCES

    @property
    def structured(self) -> bool:
        """Samples rather than plain documents (captions, conversations): the side of a mix the multimodal token
        share weighs against plain text."""
        return self.source not in TEXT_SOURCES


@dataclass
class LRMultConfig:
    group: str = "llm"  # a module group of the stage's trainable set
    mult: float = 1.0  # its LR = stage LR x mult


REFERENCES = ("precompute", "copy")


@dataclass
class DPOConfig:
    """`objective: dpo`: -log sigmoid(beta [(pi_c - ref_c) - (pi_r - ref_r)]) + nll_weight * NLL(chosen)."""

    beta: float = 0.1  # how far the policy may move from the reference (DPO's beta)
    nll_weight: float = 1.0  # the auxiliary NLL on the chosen reply (Ovis2.5 P4's "DPO + auxiliary NLL"); 0 = plain DPO
    # precompute: reference log-probs from one forward pass over the stage's pairs at its start (the stage's initial
    # weights), stored under <run dir>/reference/ and reused on resume; copy: a frozen copy of the model scores
    # every step's pairs (twice the memory for weights, no pass up front)
    reference: str = "precompute"

    def __post_init__(self) -> None:
        require(self.beta > 0, "dpo.beta", f"must be > 0, got {self.beta}")
        require(self.nll_weight >= 0, "dpo.nll_weight", f"must be >= 0, got {self.nll_weight}")
        require(self.reference in REFERENCES, "dpo.reference",
                 f"must be one of {', '.join(REFERENCES)}, got {self.reference!r}")


CONTRASTIVE_LOSSES = ("siglip", "clip")


@dataclass
class ContrastiveLossConfig:
    """`objective: contrastive`: L = L_contrastive + caption_weight * L_caption (CoCa; MoonViT: L_siglip + 2 L_caption)
    over micro-batches of whole image-text samples, negatives from every data-parallel rank's micro-batch."""

    loss: str = "siglip"  # siglip (pairwise sigmoid) | clip (softmax cross entropy both ways)
    caption_weight: float = 2.0  # weight of the captioning cross entropy; 0 = contrastive only

    def __post_init__(self) -> None:
        require(self.loss in CONTRASTIVE_LOSSES, "contrastive.loss",
                 f"must be one of {', '.join(CONTRASTIVE_LOSSES)}, got {self.loss!r}")
        require(self.caption_weight >= 0, "contrastive.caption_weight", f"must be >= 0, got {self.caption_weight}")


@dataclass
class RewardConfig:
    """One term of a GRPO reward: a built-in (answer, format, length) or a Python function by dotted path."""

    name: str = "answer"  # answer | format | length | any label for a `function`
    weight: float = 1.0
    function: str | None = None  # "package.module:function" (or "package.module.function"): f(text, answer) -> float
    max_length: int = 256  # length: generated tokens beyond which the penalty reaches -1 (linearly from 0)


@dataclass
class GRPOConfig:
    """`objective: grpo`: group-relative advantages over `group_size` rollouts per prompt, clipped policy ratio,
    optional KL to the stage's initial weights. Advantages use the population standard deviation of each group's
    rewards, A = (r - mean) / (std + 1e-4) (libraries differ: TRL's GRPO uses the sample std)."""

    group_size: int = 8  # rollouts per prompt
    temperature: float = 1.0  # rollout sampling
    top_p: float = 1.0
    max_new_tokens: int = 64
    clip_low: float = 0.2  # the ratio is clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = 0.2
    kl_beta: float = 0.0  # weight of the k3 KL estimate to a frozen copy of the stage's initial weights (0: no copy)
    ppo_epochs: int = 1  # optimizer steps on each rollout batch (each its own trainer step; the prompts repeat)
    rewards: list[RewardConfig] = field(default_factory=lambda: [RewardConfig()])

    def __post_init__(self) -> None:
        require(self.group_size >= 2, "grpo.group_size", f"must be >= 2 (advantages compare a group), got "
                                                          f"{self.group_size}")
        require(self.temperature > 0, "grpo.temperature", f"must be > 0, got {self.temperature}")
        require(0 < self.top_p <= 1, "grpo.top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.max_new_tokens >= 1, "grpo.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(0 <= self.clip_low < 1 and self.clip_high >= 0, "grpo.clip_low",
                 f"need 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        require(self.kl_beta >= 0, "grpo.kl_beta", f"must be >= 0, got {self.kl_beta}")
        require(self.ppo_epochs >= 1, "grpo.ppo_epochs", f"must be >= 1, got {self.ppo_epochs}")
        require(len(self.rewards) >= 1, "grpo.rewards", "name at least one reward")
        for r in self.rewards:
            require(r.function is not None or r.name in ("answer", "format", "length"), f"grpo.rewards[{r.name}]",
                     "a reward other than answer, format or length needs a `function`")


@dataclass
class EvalConfig:
    """Held-out scoring of a stage. Language stages (lm, sft, dpo, grpo): held-out conversations answered greedily at
    the stage's end (exact match, in eval.jsonl and the report; off unless `eval` is set). Part stages (always on):
    ctc greedy CTC decoding -> cer, wer; rvq reconstruction and codebook usage; talker code cross entropy; classify
    accuracy, every `interval` steps (metrics.jsonl reports the latest, with `eval_step`)."""

    # A held-out dataset dir: conversation shards, or for a part stage shards of the stage's kind. None: the built-in
    # demo's held-out split.
    heldout: str | None = None
    samples: int = 32  # held-out items scored (the first N)
    max_new_tokens: int = 32  # language stages: the answer's length limit
    interval: int = 1  # part stages: steps between scorings

    def __post_init__(self) -> None:
        require(self.samples >= 1, "eval.samples", f"must be >= 1, got {self.samples}")
        require(self.max_new_tokens >= 1, "eval.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.interval >= 1, "eval.interval", f"must be >= 1, got {self.interval}")


@dataclass
class StageConfig:
    """One stage of the curriculum. Unset (null) fields inherit: LR fields from `optim`, sequence length and global
    batch from `data`, the RoPE base from the previous stage (the first from model.llm.rotary_base)."""

    name: str = "pretrain"  # shown in logs and metrics; unique
    # What the stage optimises: lm (next-token loss on text and image-text packs) | sft (conversations, loss on the
    # answers only, normalised per supervised token over the global batch) | dpo (preference pairs, see `dpo`) |
    # grpo (prompts with verifiable answers: rollouts from the training model, see `grpo`; the global batch counts
    # prompts)
    objective: str = "lm"
    dpo: DPOConfig = field(default_factory=DPOConfig)  # objective dpo only
    contrastive: ContrastiveLossConfig = field(default_factory=ContrastiveLossConfig)  # objective contrastive only
    grpo: GRPOConfig = field(default_factory=GRPOConfig)  # objective grpo only
    # Held-out scoring (see EvalConfig): language stages answer held-out conversations at the stage's end (needs
    # pp = 1); part stages score every `interval` steps (default settings when unset).
    eval: EvalConfig | None = None
    # A stage graph (independent runs, e.g. the μOmni curriculum): stages with the same `job` form one run, in order;
    # `omni-mega train CONFIG --stage JOB` runs one job alone, `init_from: {group: job:NAME}` reads another job's run
    # dir (the sibling of this one) and makes this job depend on it. null: the config is one run (no graph).
    job: str | None = None
    # packs per micro-batch per data-parallel rank (images for objective contrastive); None = data.micro_batch_size
    micro_batch_size: int | None = None
    steps: int | None = None  # optimizer steps in this stage (default 100 when `tokens` is unset too)
    tokens: int | None = None  # alternatively the stage length in tokens (rounded up to whole steps)
    data: list[DatasetConfig] = field(default_factory=list)  # weighted mix; empty = the `data` section's source
    trainable: list[str] = field(default_factory=lambda: ["llm"])  # module groups, e.g. llm.layers[-2:]
    lr_mult: list[LRMultConfig] = field(default_factory=list)  # per-group LR multipliers
    schedule: str = "new"  # new | resume (continue the previous stage's schedule) | rewarmup (from the current LR)
    lr: float | None = None  # peak LR
    min_lr: float | None = None
    warmup_steps: int | None = None
    decay: str | None = None  # cosine | linear | constant | wsd | step
    decay_steps: int | None = None  # wsd: length of the final decay (default 20% of the schedule); step: the LR
    # halves every this many steps (default 1,000)
    seq_length: int | None = None
    rope_base: float | None = None  # RoPE theta from this stage on (frequencies recomputed, no new parameters)
    global_batch_size: int | None = None
    ckpt_interval: int = 0  # steps between checkpoints inside the stage; 0 = only at the stage end
    save: str = "full"  # full | trainable_only (model part holds only this stage's trainable parameters)
    # Loaded at stage start: a checkpoint dir (or run dir: its latest; may be partial) or hf:PATH (a Hugging Face
    # folder), or a map from module groups to such sources, e.g. {llm: hf:/models/Qwen3, vit: runs/p1}.
    init_from: str | dict[str, str] | None = None
    # Share of LLM tokens (text + visual) from the image-text datasets of the mix, at the stage start; ramps linearly
    # to multimodal_ratio_end by the stage end when that is set. Needed when the mix holds both modalities.
    multimodal_ratio: float | None = None
    multimodal_ratio_end: float | None = None
    min_pixels: int | None = None  # resolution bounds for this stage (default: data.min_pixels / data.max_pixels)
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        p = f"stages[{self.name}]"
        if self.eval is None and self.objective in PART_OBJECTIVES:
            self.eval = EvalConfig()
        require(self.steps is None or self.tokens is None, f"{p}.tokens", "set steps or tokens, not both")
        if self.steps is None and self.tokens is None:
            self.steps = 100
        if self.steps is not None:
            require(self.steps >= 1, f"{p}.steps", f"must be >= 1, got {self.steps}")
        if self.tokens is not None:
            require(self.tokens >= 1, f"{p}.tokens", f"must be >= 1, got {self.tokens}")
        require(self.objective in OBJECTIVES, f"{p}.objective",
                 f"must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        require(self.schedule in SCHEDULES, f"{p}.schedule", f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        require(self.decay is None or self.decay in DECAYS, f"{p}.decay",
                 f"must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        require(len(self.trainable) >= 1, f"{p}.trainable", "nothing trainable: name at least one module group")
        require(self.save in ("full", "trainable_only"), f"{p}.save", f"must be full or trainable_only, got {self.save!r}")
        require(self.ckpt_interval >= 0, f"{p}.ckpt_interval", f"must be >= 0, got {self.ckpt_interval}")
        require(self.micro_batch_size is None or self.micro_batch_size >= 1, f"{p}.micro_batch_size",
                 f"must be >= 1 or null, got {self.micro_batch_size}")
        for name in ("lr", "rope_base"):
            v = getattr(self, name)
            require(v is None or v > 0, f"{p}.{name}", f"must be > 0, got {v}")
        for d in self.data:
            require(d.weight > 0, f"{p}.data[{d.name}].weight", f"must be > 0, got {d.weight}")
            require(d.source in SOURCES, f"{p}.data[{d.name}].source",
                     f"must be one of {', '.join(SOURCES)}, got {d.source!r}")
            require(d.source not in ("indexed", "mm_shards", "conversations") or bool(d.path),
                     f"{p}.data[{d.name}].path",
                     f"{d.source} datasets need a path")
        self._check_multimodal(p)
        for m in self.lr_mult:
            require(m.mult > 0, f"{p}.lr_mult[{m.group}].mult", f"must be > 0, got {m.mult}")
            require(m.group in self.trainable, f"{p}.lr_mult[{m.group}].group",
                     f"must be one of the stage's trainable groups {self.trainable}")

    def _check_multimodal(self, p: str) -> None:
        for name in ("multimodal_ratio", "multimodal_ratio_end"):
            v = getattr(self, name)
            require(v is None or 0.0 <= v <= 1.0, f"{p}.{name}", f"must be in [0, 1], got {v}")
        require(self.multimodal_ratio_end is None or self.multimodal_ratio is not None, f"{p}.multimodal_ratio",
                 "multimodal_ratio_end is set: also set the start value multimodal_ratio")
        mm = [d.name for d in self.data if d.structured]
        text = [d.name for d in self.data if not d.structured]
        top = max(self.multimodal_ratio or 0.0, self.multimodal_ratio_end or 0.0)
        require(top == 0.0 or bool(mm), f"{p}.multimodal_ratio",
                 f"is {top} but the stage's data has no image-text or conversation dataset")
        low = min(self.multimodal_ratio if self.multimodal_ratio is not None else 1.0,
                  self.multimodal_ratio_end if self.multimodal_ratio_end is not None else 1.0)
        require(low == 1.0 or not mm or bool(text), f"{p}.multimodal_ratio",
                 f"is below 1 but the stage's data has no text dataset (only {mm})")
        require(not (mm and text) or self.multimodal_ratio is not None, f"{p}.multimodal_ratio",
                 f"the mix holds text {text} and image-text/conversation {mm} datasets: set the multimodal token "
                 "share (0..1)")
        for name in ("min_pixels", "max_pixels"):
            v = getattr(self, name)
            require(v is None or v > 0, f"{p}.{name}", f"must be > 0, got {v}")
        if self.min_pixels is not None and self.max_pixels is not None:
            require(self.min_pixels <= self.max_pixels, f"{p}.min_pixels",
                     f"{self.min_pixels} is above max_pixels={self.max_pixels}")
