"""Typed run configuration. Each field carries a short comment; `__post_init__` checks what one section can check
alone, `omni_mega.config.validate.validate` checks rules that span sections (and the world size)."""

from __future__ import annotations

from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A configuration problem, raised before any compute, naming the field and the fix."""


def _require(cond: bool, field_path: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{field_path}: {msg}")


@dataclass
class LLMConfig:
    num_layers: int = 2  # transformer layers
    hidden_size: int = 64  # model width
    num_attention_heads: int = 4  # query heads
    num_query_groups: int | None = None  # key/value heads for GQA; None = one per query head
    ffn_hidden_size: int | None = None  # MLP width; None = 4 * hidden_size (8/3 * hidden for swiglu, rounded to 64)
    vocab_size: int | None = None  # None: taken from the tokenizer
    max_position_embeddings: int = 4096  # longest sequence any stage may use
    rotary_base: float = 10000.0  # RoPE theta (a long-context stage raises it)
    normalization: str = "RMSNorm"  # RMSNorm | LayerNorm
    activation: str = "swiglu"  # swiglu | gelu
    untie_embeddings: bool = True  # separate output layer (avoids the first/last pipeline stage embedding all-reduce)
    init_method_std: float = 0.02  # normal init std
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0

    def __post_init__(self) -> None:
        p = "model.llm"
        for name in ("num_layers", "hidden_size", "num_attention_heads"):
            _require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        _require(self.hidden_size % self.num_attention_heads == 0, f"{p}.hidden_size",
                 f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        if self.num_query_groups is not None:
            _require(self.num_attention_heads % self.num_query_groups == 0, f"{p}.num_query_groups",
                     f"num_attention_heads={self.num_attention_heads} is not divisible by {self.num_query_groups}")
        _require(self.normalization in ("RMSNorm", "LayerNorm"), f"{p}.normalization",
                 f"must be RMSNorm or LayerNorm, got {self.normalization!r}")
        _require(self.activation in ("swiglu", "gelu"), f"{p}.activation", f"must be swiglu or gelu, got {self.activation!r}")
        _require(self.rotary_base > 0, f"{p}.rotary_base", f"must be > 0, got {self.rotary_base}")


@dataclass
class ViTConfig:
    """Native-resolution ViT (the models issue builds it); present here so configs can name it."""

    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    patch_size: int = 14  # pixels per patch side
    temporal_patch_size: int = 2  # frames per patch (a still image is repeated)
    merge_size: int = 2  # spatial merge before the connector (2x2)
    in_channels: int = 3


@dataclass
class ConnectorConfig:
    kind: str = "mlp"  # mlp (LLaVA projector) | vet (Ovis visual tokenizer)
    visual_vocab_size: int = 8192  # vet only: V, including the indicator tokens
    num_indicators: int = 5  # vet only: hard indicator rows at the end of the table

    def __post_init__(self) -> None:
        _require(self.kind in ("mlp", "vet"), "model.connector.kind", f"must be mlp or vet, got {self.kind!r}")


@dataclass
class ModelConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    vit: ViTConfig | None = None  # None: a text-only model
    connector: ConnectorConfig | None = None


@dataclass
class ParallelConfig:
    tp: int = 1  # tensor-parallel size
    pp: int = 1  # pipeline-parallel size
    vpp: int | None = None  # virtual pipeline chunks per rank (interleaved 1F1B); None = not interleaved
    cp: int = 1  # context-parallel size
    sp: bool = False  # sequence parallelism (needs tp > 1)

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "cp"):
            _require(getattr(self, name) >= 1, f"parallel.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.vpp is not None:
            _require(self.vpp >= 2, "parallel.vpp", f"must be >= 2 or null, got {self.vpp}")
            _require(self.pp >= 2, "parallel.vpp", "interleaving needs parallel.pp >= 2")
        _require(not self.sp or self.tp > 1, "parallel.sp", "sequence parallelism needs parallel.tp > 1; set sp: false")

    def data_parallel_size(self, world_size: int) -> int:
        return world_size // (self.tp * self.pp * self.cp)


@dataclass
class DataConfig:
    source: str = "demo_text"  # demo_text (pydoc topics, built in) | indexed (Megatron .bin/.idx prefixes in `paths`)
    paths: list[str] = field(default_factory=list)  # dataset prefixes for source=indexed
    tokenizer: str = "byte"  # byte (built in) | gpt2 | huggingface | null
    seq_length: int = 128  # tokens per sample
    micro_batch_size: int = 2  # samples per micro-batch per data-parallel rank
    global_batch_size: int = 8  # samples per optimizer step over all data-parallel ranks
    seed: int = 1234  # data order seed

    def __post_init__(self) -> None:
        _require(self.source in ("demo_text", "indexed"), "data.source", f"must be demo_text or indexed, got {self.source!r}")
        _require(self.seq_length >= 2, "data.seq_length", f"must be >= 2, got {self.seq_length}")
        _require(self.micro_batch_size >= 1, "data.micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")
        _require(self.global_batch_size % self.micro_batch_size == 0, "data.global_batch_size",
                 f"{self.global_batch_size} is not a multiple of micro_batch_size={self.micro_batch_size}")


@dataclass
class OptimConfig:
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # floor of the decay
    warmup_steps: int = 10  # linear warm-up from 0 to lr
    decay: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0  # global gradient-norm clip; 0 disables

    def __post_init__(self) -> None:
        _require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _require(0 <= self.min_lr <= self.lr, "optim.min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr}")
        _require(self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(self.decay in ("cosine", "linear", "constant"), "optim.decay",
                 f"must be cosine, linear or constant, got {self.decay!r}")


@dataclass
class StageConfig:
    name: str = "pretrain"  # shown in logs and metrics
    steps: int = 100  # optimizer steps in this stage

    def __post_init__(self) -> None:
        _require(self.steps >= 1, f"stages[{self.name}].steps", f"must be >= 1, got {self.steps}")


@dataclass
class TrainConfig:
    seed: int = 1234  # model init and dropout seed
    log_interval: int = 10  # steps between progress lines (metrics.jsonl gets every step)
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    tensorboard: bool = True

    def __post_init__(self) -> None:
        _require(self.log_interval >= 1, "train.log_interval", f"must be >= 1, got {self.log_interval}")
        _require(self.dtype in ("auto", "fp32", "bf16"), "train.dtype", f"must be auto, fp32 or bf16, got {self.dtype!r}")


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
        _require(len(self.stages) >= 1, "stages", "at least one stage is needed")
        names = [s.name for s in self.stages]
        _require(len(set(names)) == len(names), "stages", f"stage names must be unique, got {names}")

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)
