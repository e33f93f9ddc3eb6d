"""Typed run configuration. Each field carries a short comment; `__post_init__` checks what one section can check
alone, `omni_mega.config.validate.validate` checks rules that span sections (and the world size). The model and the
stages have their own modules (`config.model`, `config.stage`); the run-wide sections and `RunConfig` are here."""

from __future__ import annotations

from dataclasses import dataclass, field

from omni_mega.config.checks import require
from omni_mega.config.model import ModelConfig
from omni_mega.config.stage import DECAYS, StageConfig


@dataclass
class ParallelConfig:
    tp: int = 1  # tensor-parallel size
    pp: int = 1  # pipeline-parallel size
    vpp: int | None = None  # virtual pipeline chunks per rank (interleaved 1F1B); None = not interleaved
    cp: int = 1  # context-parallel size
    sp: bool = False  # sequence parallelism (needs tp > 1)
    ep: int = 1  # expert-parallel size: a MoE layer's experts split over ep data-parallel ranks

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "cp", "ep"):
            require(getattr(self, name) >= 1, f"parallel.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.vpp is not None:
            require(self.vpp >= 2, "parallel.vpp", f"must be >= 2 or null, got {self.vpp}")
            require(self.pp >= 2, "parallel.vpp", "interleaving needs parallel.pp >= 2")
        require(not self.sp or self.tp > 1, "parallel.sp", "sequence parallelism needs parallel.tp > 1; set sp: false")

    def data_parallel_size(self, world_size: int) -> int:
        return world_size // (self.tp * self.pp * self.cp)


@dataclass
class DataConfig:
    source: str = "demo_text"  # demo_text (pydoc topics, built in) | indexed (Megatron .bin/.idx prefixes in `paths`)
    paths: list[str] = field(default_factory=list)  # dataset prefixes for source=indexed
    seq_length: int = 128  # positions per pack (the LLM sequence length)
    micro_batch_size: int = 2  # packs per micro-batch per data-parallel rank
    global_batch_size: int = 8  # packs per optimizer step over all data-parallel ranks
    seed: int = 1234  # data order seed
    # Every micro-batch is micro_batch_size packs of seq_length positions laid end to end as one packed (THD)
    # sequence; samples never attend across each other. A stage may override the resolution bounds.
    min_pixels: int = 56 * 56  # smart_resize lower bound (pixels per image)
    max_pixels: int = 28 * 28 * 1280  # smart_resize upper bound (Qwen2-VL's default)
    max_visual_tokens: int | None = None  # per-pack budget of merged visual tokens; None = seq_length
    pack_window: int = 256  # samples packed together (best-fit decreasing) before the next window is drawn
    data_dir: str | None = None  # where built-in demo data is cached; None = <run dir>/data
    # Steps of input read and decoded ahead in a background thread while the current step trains (0: when asked).
    # The batches are the same bytes either way.
    prefetch_steps: int = 2

    def __post_init__(self) -> None:
        require(self.source in ("demo_text", "indexed"), "data.source", f"must be demo_text or indexed, got {self.source!r}")
        require(0 < self.min_pixels <= self.max_pixels, "data.min_pixels",
                 f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")
        require(self.max_visual_tokens is None or self.max_visual_tokens >= 1, "data.max_visual_tokens",
                 f"must be >= 1 or null, got {self.max_visual_tokens}")
        require(self.pack_window >= 1, "data.pack_window", f"must be >= 1, got {self.pack_window}")
        require(self.prefetch_steps >= 0, "data.prefetch_steps", f"must be >= 0, got {self.prefetch_steps}")
        require(self.seq_length >= 2, "data.seq_length", f"must be >= 2, got {self.seq_length}")
        require(self.micro_batch_size >= 1, "data.micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")
        require(self.global_batch_size % self.micro_batch_size == 0, "data.global_batch_size",
                 f"{self.global_batch_size} is not a multiple of micro_batch_size={self.micro_batch_size}")


@dataclass
class OptimConfig:
    """Run-wide optimizer settings; a stage may override lr, min_lr, warmup_steps and decay."""

    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # floor of the decay
    warmup_steps: int = 10  # linear warm-up from 0 to lr
    decay: str = "cosine"  # cosine | linear | constant | wsd (warmup-stable-decay) | step (halving)
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0  # global gradient-norm clip; 0 disables
    distributed_optimizer: bool | None = None  # shard Adam state over data-parallel ranks; None = on with CUDA only

    def __post_init__(self) -> None:
        require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        require(0 <= self.min_lr <= self.lr, "optim.min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr}")
        require(self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(self.decay in DECAYS, "optim.decay", f"must be one of {', '.join(DECAYS)}, got {self.decay!r}")


@dataclass
class TrainConfig:
    seed: int = 1234  # model init and dropout seed
    log_interval: int = 10  # steps between progress lines (metrics.jsonl gets every step)
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    tensorboard: bool = True
    # A step whose loss or gradients are not finite is skipped (no update, counted); this many in a row stop the run.
    max_skipped_steps: int = 10

    def __post_init__(self) -> None:
        require(self.log_interval >= 1, "train.log_interval", f"must be >= 1, got {self.log_interval}")
        require(self.max_skipped_steps >= 1, "train.max_skipped_steps", f"must be >= 1, got {self.max_skipped_steps}")
        require(self.dtype in ("auto", "fp32", "bf16"), "train.dtype", f"must be auto, fp32 or bf16, got {self.dtype!r}")


@dataclass
class RunConfig:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])

    def __post_init__(self) -> None:
        require(len(self.stages) >= 1, "stages", "at least one stage is needed")
        names = [s.name for s in self.stages]
        require(len(set(names)) == len(names), "stages", f"stage names must be unique, got {names}")
        for s in self.stages:  # a length in tokens becomes whole optimizer steps
            if s.steps is None:
                per_step = (s.global_batch_size or self.data.global_batch_size) * (s.seq_length or self.data.seq_length)
                s.steps = -(-s.tokens // per_step)

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)
