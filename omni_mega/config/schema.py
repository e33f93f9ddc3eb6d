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
class RopeScalingConfig:
    """RoPE frequency scaling for long context (Hugging Face `rope_scaling` / `rope_parameters`): `llama3` (Llama 3.1+:
    low frequencies divided by `factor`, a smooth band between) or `yarn` (NTK-by-parts ramp between
    `beta_fast` and `beta_slow` rotations, cos/sin scaled by `attention_factor`)."""

    type: str = "llama3"  # llama3 | yarn
    factor: float = 8.0  # context extension factor
    original_max_position_embeddings: int = 8192  # the pre-training context the scaling is relative to
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float | None = None  # yarn: None = from factor (and mscale / mscale_all_dim when both set)
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    truncate: bool = True  # yarn: round the correction range to whole dimensions

    def __post_init__(self) -> None:
        p = "model.llm.rope_scaling"
        _require(self.type in ("llama3", "yarn"), f"{p}.type", f"must be llama3 or yarn, got {self.type!r}")
        _require(self.factor > 0, f"{p}.factor", f"must be > 0, got {self.factor}")
        _require(self.original_max_position_embeddings >= 1, f"{p}.original_max_position_embeddings",
                 f"must be >= 1, got {self.original_max_position_embeddings}")
        if self.type == "llama3":
            _require(self.high_freq_factor > self.low_freq_factor > 0, f"{p}.high_freq_factor",
                     f"need high_freq_factor > low_freq_factor > 0, got {self.high_freq_factor} and "
                     f"{self.low_freq_factor}")


@dataclass
class LLMConfig:
    num_layers: int = 2  # transformer layers
    hidden_size: int = 64  # model width
    num_attention_heads: int = 4  # query heads
    num_query_groups: int | None = None  # key/value heads for GQA; None = one per query head
    kv_channels: int | None = None  # head dim; None = hidden_size / num_attention_heads (Qwen3 sets its own)
    ffn_hidden_size: int | None = None  # MLP width; None = 4 * hidden_size (8/3 * hidden for swiglu, rounded to 64)
    vocab_size: int | None = None  # None: taken from the tokenizer
    max_position_embeddings: int = 4096  # longest sequence any stage may use
    rotary_base: float = 10000.0  # RoPE theta (a long-context stage raises it)
    rope_scaling: RopeScalingConfig | None = None  # Llama-3 / YaRN frequency scaling; null: plain RoPE
    # Qwen2-VL M-RoPE: rotary pairs per (temporal, height, width) axis, summing to head_dim / 2, e.g. [16, 24, 24]
    # for head_dim 128; image tokens then get 3D positions (models.mrope.get_rope_index). null: 1D RoPE.
    mrope_section: list[int] | None = None
    normalization: str = "RMSNorm"  # RMSNorm | LayerNorm
    norm_epsilon: float = 1e-5  # epsilon of every norm (Hugging Face models mostly use 1e-6)
    activation: str = "swiglu"  # swiglu | gelu
    add_qkv_bias: bool = False  # biases on the query/key/value projections only (Qwen2)
    qk_layernorm: bool = False  # per-head norm of queries and keys before RoPE (Qwen3), same kind as `normalization`
    untie_embeddings: bool = True  # separate output layer (avoids the first/last pipeline stage embedding all-reduce)
    init_method_std: float = 0.02  # normal init std
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    # Mixture of experts (megatron-core's names; omni_mega.models.moe). null num_moe_experts: a dense MLP everywhere.
    num_moe_experts: int | None = None  # routed experts per MoE layer
    moe_router_topk: int = 2  # experts each token is sent to
    moe_ffn_hidden_size: int | None = None  # one routed expert's MLP width; None = ffn_hidden_size
    moe_shared_expert_intermediate_size: int | None = None  # all shared experts' width together (2 x 1408 = 2816)
    # Which layers are MoE: an int N puts one every N layers (1: all), a list gives 1 (MoE) / 0 (dense) per layer,
    # e.g. [0] + [1] * 26 for Moonlight's dense first layer (which uses ffn_hidden_size)
    moe_layer_freq: int | list[int] = 1
    moe_router_score_function: str = "softmax"  # softmax | sigmoid (DeepSeek-V3, Moonlight)
    moe_router_enable_expert_bias: bool = False  # aux-loss-free balancing: a per-expert bias nudged every step
    moe_aux_loss_coeff: float = 0.0  # weight of the load-balancing loss (0: none)
    moe_token_dispatcher_type: str = "allgather"  # allgather | alltoall (alltoall needs CUDA streams: GPUs only)
    # Multi-latent attention (DeepSeek-V2/V3, Moonlight; megatron-core's MLA names); off: standard GQA attention.
    multi_latent_attention: bool = False
    q_lora_rank: int | None = None  # query compression rank; None = a full query projection (Moonlight)
    kv_lora_rank: int = 512  # compressed key/value width (the KV cache per token)
    qk_head_dim: int = 128  # per-head query/key width without RoPE
    qk_pos_emb_head_dim: int = 64  # per-head query/key width that carries RoPE
    v_head_dim: int = 128  # per-head value width

    def __post_init__(self) -> None:
        p = "model.llm"
        for name in ("num_layers", "hidden_size", "num_attention_heads"):
            _require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.kv_channels is None:
            _require(self.hidden_size % self.num_attention_heads == 0, f"{p}.hidden_size",
                     f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}; "
                     "set kv_channels (the head dim) explicitly")
        else:
            _require(self.kv_channels >= 2 and self.kv_channels % 2 == 0, f"{p}.kv_channels",
                     f"must be an even head dim >= 2 (RoPE rotates pairs), got {self.kv_channels}")
        _require(self.norm_epsilon > 0, f"{p}.norm_epsilon", f"must be > 0, got {self.norm_epsilon}")
        if self.num_query_groups is not None:
            _require(self.num_attention_heads % self.num_query_groups == 0, f"{p}.num_query_groups",
                     f"num_attention_heads={self.num_attention_heads} is not divisible by {self.num_query_groups}")
        _require(self.normalization in ("RMSNorm", "LayerNorm"), f"{p}.normalization",
                 f"must be RMSNorm or LayerNorm, got {self.normalization!r}")
        _require(self.activation in ("swiglu", "gelu"), f"{p}.activation", f"must be swiglu or gelu, got {self.activation!r}")
        _require(self.rotary_base > 0, f"{p}.rotary_base", f"must be > 0, got {self.rotary_base}")
        if self.mrope_section is not None:
            half = self.head_dim // 2
            _require(len(self.mrope_section) == 3 and all(x >= 1 for x in self.mrope_section)
                     and sum(self.mrope_section) == half, f"{p}.mrope_section",
                     f"needs 3 positive entries (temporal, height, width) summing to head_dim / 2 = {half}, "
                     f"got {self.mrope_section}")
            _require(self.rope_scaling is None, f"{p}.rope_scaling", "is not supported together with mrope_section")
        self._check_moe(p)

    def _check_moe(self, p: str) -> None:
        if self.multi_latent_attention:
            for name in ("kv_lora_rank", "qk_head_dim", "v_head_dim"):
                _require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
            _require(self.qk_pos_emb_head_dim >= 2 and self.qk_pos_emb_head_dim % 2 == 0, f"{p}.qk_pos_emb_head_dim",
                     f"must be an even width >= 2 (RoPE rotates pairs), got {self.qk_pos_emb_head_dim}")
            _require(self.q_lora_rank is None or self.q_lora_rank >= 1, f"{p}.q_lora_rank",
                     f"must be >= 1 or null, got {self.q_lora_rank}")
            _require(self.mrope_section is None, f"{p}.mrope_section", "is not supported with multi_latent_attention")
        if self.num_moe_experts is None:
            return
        _require(self.num_moe_experts >= 1, f"{p}.num_moe_experts", f"must be >= 1 or null, got {self.num_moe_experts}")
        _require(1 <= self.moe_router_topk <= self.num_moe_experts, f"{p}.moe_router_topk",
                 f"must be in [1, num_moe_experts={self.num_moe_experts}], got {self.moe_router_topk}")
        for name in ("moe_ffn_hidden_size", "moe_shared_expert_intermediate_size"):
            v = getattr(self, name)
            _require(v is None or v >= 1, f"{p}.{name}", f"must be >= 1 or null, got {v}")
        freq = self.moe_layer_freq
        if isinstance(freq, int):
            _require(freq >= 1, f"{p}.moe_layer_freq", f"must be >= 1 or a 0/1 list per layer, got {freq}")
        else:
            _require(len(freq) == self.num_layers and set(freq) <= {0, 1} and 1 in freq, f"{p}.moe_layer_freq",
                     f"a list needs one 0 (dense) or 1 (MoE) per layer ({self.num_layers}) and at least one 1, "
                     f"got {freq}")
        _require(self.moe_router_score_function in ("softmax", "sigmoid"), f"{p}.moe_router_score_function",
                 f"must be softmax or sigmoid, got {self.moe_router_score_function!r}")
        _require(self.moe_aux_loss_coeff >= 0, f"{p}.moe_aux_loss_coeff", f"must be >= 0, got {self.moe_aux_loss_coeff}")
        _require(self.moe_token_dispatcher_type in ("allgather", "alltoall"), f"{p}.moe_token_dispatcher_type",
                 f"must be allgather or alltoall, got {self.moe_token_dispatcher_type!r}")

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def moe_layers(self) -> list[bool]:
        """Per layer (global order): True where the MLP is a mixture of experts (megatron's moe_layer_freq rule)."""
        if self.num_moe_experts is None:
            return [False] * self.num_layers
        f = self.moe_layer_freq
        return [i % f == 0 for i in range(self.num_layers)] if isinstance(f, int) else [bool(x) for x in f]


VIT_ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "swiglu")


@dataclass
class ViTConfig:
    """Native-resolution ViT (omni_mega.models.vision): megatron TransformerBlock over packed images."""

    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    patch_size: int = 14  # pixels per patch side
    temporal_patch_size: int = 2  # frames per patch (a still image is repeated)
    merge_size: int = 2  # spatial merge before the connector (2x2)
    in_channels: int = 3
    ffn_hidden_size: int | None = None  # MLP width; None = 4 * hidden_size
    normalization: str = "LayerNorm"  # LayerNorm | RMSNorm
    norm_epsilon: float = 1e-6  # epsilon of every norm (1e-6: Qwen2-VL, SigLIP; CLIP uses 1e-5)
    # gelu (exact) | gelu_tanh (tanh approximation: SigLIP) | quick_gelu (x * sigmoid(1.702 x): CLIP, Qwen2-VL) | swiglu
    activation: str = "gelu"
    rope_theta: float = 10000.0  # 2D RoPE base (ops.rope_2d)
    rope_layout: str = "half"  # half (Qwen2-VL, Ovis2.5) | interleaved (Kimi-VL) | none (no 2D RoPE: SigLIP, CLIP)
    pos_embed_grid: int = 0  # side of a learned position table interpolated to each grid; 0 = none (RoPE only)
    # resize the table with antialiasing (SigLIP2 NaFlex: it differs from plain bilinear when a grid side shrinks)
    pos_embed_antialias: bool = False
    patch_bias: bool = False  # a bias on the patch embedding (SigLIP's conv has one, Qwen2-VL's not)
    init_method_std: float = 0.02  # normal init std
    # CLIP-style towers (LLaVA): a learned class token prepended to every frame, its position being row 0 of the
    # table (which then has 1 + pos_embed_grid^2 rows), and a norm on the embeddings before the first layer.
    class_token: bool = False
    pre_norm: bool = False
    # Features read after this layer (LLaVA's vision_feature_layer: -1 the last, -2 the one before, k >= 1 after k
    # layers); later layers stay in the model (and the checkpoint) but do not run.
    feature_layer: int = -1
    final_norm: bool = True  # the final norm on the features (CLIP's post_layernorm only norms its pooled output)
    feature_select: str = "default"  # with class_token: default drops it from the features, full keeps it
    # Windowed attention (Qwen2.5-VL): each frame is cut into windows of window_size x window_size pixels (whole merge
    # blocks) and patches attend only inside their window, except in the layers listed in full_attention_layers
    # (0-based; HF's fullatt_block_indexes), which attend over the whole frame. 0 = no windows: every layer is full.
    window_size: int = 0
    full_attention_layers: list[int] = field(default_factory=list)

    @property
    def feature_layers(self) -> int:
        """How many layers run to produce the features."""
        return self.feature_layer if self.feature_layer >= 0 else self.num_layers + 1 + self.feature_layer

    def __post_init__(self) -> None:
        p = "model.vit"
        for name in ("num_layers", "hidden_size", "num_attention_heads", "patch_size", "temporal_patch_size",
                     "merge_size", "in_channels"):
            _require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        _require(self.hidden_size % self.num_attention_heads == 0, f"{p}.hidden_size",
                 f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        _require((self.hidden_size // self.num_attention_heads) % 4 == 0, f"{p}.hidden_size",
                 f"head dim {self.hidden_size // self.num_attention_heads} must be divisible by 4 for 2D RoPE")
        _require(self.normalization in ("RMSNorm", "LayerNorm"), f"{p}.normalization",
                 f"must be RMSNorm or LayerNorm, got {self.normalization!r}")
        _require(self.activation in VIT_ACTIVATIONS, f"{p}.activation",
                 f"must be one of {', '.join(VIT_ACTIVATIONS)}, got {self.activation!r}")
        _require(self.norm_epsilon > 0, f"{p}.norm_epsilon", f"must be > 0, got {self.norm_epsilon}")
        _require(self.rope_layout in ("half", "interleaved", "none"), f"{p}.rope_layout",
                 f"must be half, interleaved or none, got {self.rope_layout!r}")
        _require(self.rope_layout != "none" or self.pos_embed_grid > 0, f"{p}.rope_layout",
                 "none leaves the ViT without positions: set pos_embed_grid")
        _require(self.pos_embed_grid >= 0, f"{p}.pos_embed_grid", f"must be >= 0, got {self.pos_embed_grid}")
        _require(1 <= self.feature_layers <= self.num_layers, f"{p}.feature_layer",
                 f"must name one of the {self.num_layers} layers (1..{self.num_layers} or -{self.num_layers}..-1), "
                 f"got {self.feature_layer}")
        _require(self.feature_select in ("default", "full"), f"{p}.feature_select",
                 f"must be default or full, got {self.feature_select!r}")
        _require(self.feature_select == "default" or self.class_token, f"{p}.feature_select",
                 "full keeps the class token in the features: it needs class_token: true")
        if self.class_token:  # the class token has no place in a merge block nor in the 2D RoPE grid
            _require(self.merge_size == 1, f"{p}.class_token", f"needs merge_size 1, got {self.merge_size}")
            _require(self.pos_embed_grid > 0 and self.rope_layout == "none", f"{p}.class_token",
                     "needs a learned position table (pos_embed_grid > 0) and rope_layout none")
        block = self.patch_size * self.merge_size  # pixels per side of one merged token
        _require(self.window_size == 0 or self.window_size >= block, f"{p}.window_size",
                 f"must be 0 (no windows) or at least patch_size * merge_size = {block} pixels, got {self.window_size}")
        full = list(self.full_attention_layers)
        _require(not (self.window_size and self.class_token), f"{p}.window_size",
                 "windowed attention has no place for a class token: use one of window_size and class_token")
        _require(not full or self.window_size > 0, f"{p}.full_attention_layers",
                 "only means something with windowed attention: set window_size or leave it empty")
        _require(all(isinstance(i, int) and 0 <= i < self.num_layers for i in full) and len(set(full)) == len(full),
                 f"{p}.full_attention_layers", f"must be distinct layer indexes in [0, {self.num_layers}), got {full}")


@dataclass
class ConnectorConfig:
    kind: str = "mlp"  # mlp (LLaVA projector) | vet (Ovis visual tokenizer)
    visual_vocab_size: int = 8192  # vet only: V, including the indicator tokens
    num_indicators: int = 5  # vet only: hard indicator rows at the end of the table
    projector_hidden_size: int | None = None  # mlp only: hidden width of the 2-layer MLP; None = the LLM width
    image_token_id: int = -200  # placeholder id in input_ids, one per merged visual token (LLaVA's -200 by default)
    indicator_token_ids: list[int] = field(default_factory=list)  # vet only: ids replaced by indicator rows, in order

    def __post_init__(self) -> None:
        p = "model.connector"
        _require(self.kind in ("mlp", "vet"), f"{p}.kind", f"must be mlp or vet, got {self.kind!r}")
        _require(0 <= self.num_indicators < self.visual_vocab_size, f"{p}.num_indicators",
                 f"must be in [0, visual_vocab_size={self.visual_vocab_size}), got {self.num_indicators}")
        _require(len(self.indicator_token_ids) <= self.num_indicators, f"{p}.indicator_token_ids",
                 f"{len(self.indicator_token_ids)} ids for {self.num_indicators} indicator rows")
        _require(self.image_token_id not in self.indicator_token_ids, f"{p}.indicator_token_ids",
                 f"must not contain image_token_id={self.image_token_id}")


# ---- audio and speech parts (omni_mega.models.audio, models.speech; the μOmni curriculum) ------------------------
@dataclass
class AudioConfig:
    """Audio encoder: log-mel frames (100 Hz) -> conv k3 -> GELU -> conv k3 stride 2 -> GELU (50 Hz) -> sinusoidal
    positions -> megatron TransformerBlock (non-causal, packed clips, TP/SP as the ViT) -> final norm. A CTC head reads
    every 50 Hz state; the LLM sees the states averaged `pool` at a time (50 / 4 = 12.5 Hz) through a projector."""

    num_layers: int = 4
    hidden_size: int = 192
    num_attention_heads: int = 3
    ffn_hidden_size: int | None = None  # None = 4 * hidden_size
    n_mels: int = 80  # Whisper's 80 or 128 log-mel bins (ops.log_mel)
    pool: int = 4  # encoder frames per LLM audio token
    # Positions inside a clip: rope (rotary on the time axis: ops.rope_2d with the row fixed, i.e. on half of each
    # head's pairs), sinusoid (Whisper's table added to the input) or none (the convolutions' local context only).
    positions: str = "rope"
    ctc_vocab_size: int = 257  # CTC classes before the blank: the transcripts' token ids (byte ids by default)
    audio_token_id: int = -300  # placeholder id in input_ids, one per pooled audio frame
    projector_hidden_size: int | None = None  # audio projector's hidden width; None = the LLM width
    normalization: str = "LayerNorm"
    norm_epsilon: float = 1e-5
    init_method_std: float = 0.02

    def __post_init__(self) -> None:
        p = "model.audio"
        for name in ("num_layers", "hidden_size", "num_attention_heads", "n_mels", "pool", "ctc_vocab_size"):
            _require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        _require(self.hidden_size % self.num_attention_heads == 0, f"{p}.hidden_size",
                 f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        _require(self.hidden_size % 2 == 0, f"{p}.hidden_size", "must be even (sinusoidal positions)")
        _require(self.normalization in ("RMSNorm", "LayerNorm"), f"{p}.normalization",
                 f"must be RMSNorm or LayerNorm, got {self.normalization!r}")
        _require(self.positions in ("rope", "sinusoid", "none"), f"{p}.positions",
                 f"must be rope, sinusoid or none, got {self.positions!r}")
        _require(self.positions != "rope" or (self.hidden_size // self.num_attention_heads) % 4 == 0,
                 f"{p}.positions", "rope needs a head dim divisible by 4 (2D rotary layout)")
        _require(self.audio_token_id < 0, f"{p}.audio_token_id",
                 f"must be negative (never a vocabulary id), got {self.audio_token_id}")

    def encoder_frames(self, mel_frames: int) -> int:
        """Encoder states of a clip of `mel_frames` log-mel frames (the stride-2 convolution: ceil(mel / 2))."""
        return (int(mel_frames) + 1) // 2

    def llm_tokens(self, mel_frames: int) -> int:
        """Audio placeholders a clip needs in the LLM sequence (encoder states pooled `pool` at a time)."""
        return -(-self.encoder_frames(mel_frames) // self.pool)


@dataclass
class CodecConfig:
    """RVQ codec over log-mel frames: `frame_stack` mel frames (80 ms) -> MLP -> `dim` -> `codebooks` residual
    quantisers of `codebook_size` entries (straight-through) -> MLP -> the same mel frames."""

    n_mels: int = 80
    frame_stack: int = 8  # mel frames (10 ms each) per codec frame
    dim: int = 64  # code vector size
    codebooks: int = 2
    codebook_size: int = 128
    hidden_size: int = 256  # encoder / decoder MLP width
    commitment: float = 0.25  # weight of the commitment loss |z - sg(q)|^2 (the codebook loss has weight 1)

    def __post_init__(self) -> None:
        for name in ("n_mels", "frame_stack", "dim", "codebooks", "codebook_size", "hidden_size"):
            _require(getattr(self, name) >= 1, f"model.codec.{name}", f"must be >= 1, got {getattr(self, name)}")
        _require(self.commitment >= 0, "model.codec.commitment", f"must be >= 0, got {self.commitment}")

    def frames(self, mel_frames: int) -> int:
        """Codec frames of a clip (a trailing part of fewer than `frame_stack` mel frames is not coded)."""
        return int(mel_frames) // self.frame_stack


@dataclass
class TalkerConfig:
    """Talker: a small causal transformer (megatron TransformerBlock) over codec frames, conditioned on the text it
    speaks (its own embedding of the text ids, read before the frames); a base head predicts each frame's first
    codebook and a residual head the remaining ones."""

    num_layers: int = 4
    hidden_size: int = 192
    num_attention_heads: int = 3
    ffn_hidden_size: int | None = None
    text_vocab_size: int = 257  # conditioning text ids (byte ids by default)
    max_positions: int = 1024  # text + frames of one sample at most (learned position table)
    init_method_std: float = 0.02

    def __post_init__(self) -> None:
        p = "model.talker"
        for name in ("num_layers", "hidden_size", "num_attention_heads", "text_vocab_size", "max_positions"):
            _require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        _require(self.hidden_size % self.num_attention_heads == 0, f"{p}.hidden_size",
                 f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")


@dataclass
class ClassifierConfig:
    """Image classifier on the ViT (`objective: classify`): the merged ViT features of an image averaged -> a linear
    layer over `labels` (an image-text dataset's text is its label)."""

    labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require(len(self.labels) >= 2, "model.classifier.labels", f"need at least 2 labels, got {self.labels}")
        _require(len(set(self.labels)) == len(self.labels), "model.classifier.labels", "labels must be unique")


@dataclass
class ContrastiveConfig:
    """model.contrastive: the towers a contrastive pre-training stage of the ViT trains beside it (`objective:
    contrastive`, SigLIP or CLIP + CoCa captioning; omni_mega.models.contrastive). Built only when this section is
    set; saved in checkpoints; later stages leave them out of their trainable sets."""

    embed_dim: int = 64  # the shared image/text embedding width
    hidden_size: int = 64  # width of the text tower, the caption decoder and the image pooler
    num_attention_heads: int = 4
    text_layers: int = 2  # the text tower: a causal transformer over the caption, pooled at a CLS slot after it
    decoder_layers: int = 2  # the caption decoder (CoCa): causal self-attention + cross-attention to image tokens
    max_text_length: int = 64  # caption tokens kept (longer captions are cut)
    vocab_size: int | None = None  # the towers' vocabulary; None = the LLM's (padded), whose tokenizer the data uses
    init_logit_scale: float = 2.302585  # log of the initial temperature: ln 10 (SigLIP); CLIP uses ln(1/0.07)
    init_logit_bias: float = -10.0  # initial logit bias (SigLIP's -10; the softmax loss ignores it)

    def __post_init__(self) -> None:
        p = "model.contrastive"
        for name in ("embed_dim", "hidden_size", "num_attention_heads", "text_layers", "decoder_layers",
                     "max_text_length"):
            _require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        _require(self.hidden_size % self.num_attention_heads == 0, f"{p}.hidden_size",
                 f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        _require(self.vocab_size is None or self.vocab_size >= 2, f"{p}.vocab_size",
                 f"must be >= 2 or null, got {self.vocab_size}")


@dataclass
class ModelConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    vit: ViTConfig | None = None  # None: a text-only model
    connector: ConnectorConfig | None = None
    contrastive: ContrastiveConfig | None = None  # ViT pre-training towers (objective: contrastive); None: none
    audio: AudioConfig | None = None  # audio encoder + CTC head + audio projector (omni_mega.models.audio)
    codec: CodecConfig | None = None  # RVQ codec over mel frames (omni_mega.models.speech)
    talker: TalkerConfig | None = None  # codec-code talker (omni_mega.models.speech)
    classifier: ClassifierConfig | None = None  # image classifier head on the ViT


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
        _require(self.source in ("demo_text", "indexed"), "data.source", f"must be demo_text or indexed, got {self.source!r}")
        _require(0 < self.min_pixels <= self.max_pixels, "data.min_pixels",
                 f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")
        _require(self.max_visual_tokens is None or self.max_visual_tokens >= 1, "data.max_visual_tokens",
                 f"must be >= 1 or null, got {self.max_visual_tokens}")
        _require(self.pack_window >= 1, "data.pack_window", f"must be >= 1, got {self.pack_window}")
        _require(self.prefetch_steps >= 0, "data.prefetch_steps", f"must be >= 0, got {self.prefetch_steps}")
        _require(self.seq_length >= 2, "data.seq_length", f"must be >= 2, got {self.seq_length}")
        _require(self.micro_batch_size >= 1, "data.micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")
        _require(self.global_batch_size % self.micro_batch_size == 0, "data.global_batch_size",
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
        _require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _require(0 <= self.min_lr <= self.lr, "optim.min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr}")
        _require(self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(self.decay in DECAYS, "optim.decay", f"must be one of {', '.join(DECAYS)}, got {self.decay!r}")


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
        _require(self.beta > 0, "dpo.beta", f"must be > 0, got {self.beta}")
        _require(self.nll_weight >= 0, "dpo.nll_weight", f"must be >= 0, got {self.nll_weight}")
        _require(self.reference in REFERENCES, "dpo.reference",
                 f"must be one of {', '.join(REFERENCES)}, got {self.reference!r}")


CONTRASTIVE_LOSSES = ("siglip", "clip")


@dataclass
class ContrastiveLossConfig:
    """`objective: contrastive`: L = L_contrastive + caption_weight * L_caption (CoCa; MoonViT: L_siglip + 2 L_caption)
    over micro-batches of whole image-text samples, negatives from every data-parallel rank's micro-batch."""

    loss: str = "siglip"  # siglip (pairwise sigmoid) | clip (softmax cross entropy both ways)
    caption_weight: float = 2.0  # weight of the captioning cross entropy; 0 = contrastive only

    def __post_init__(self) -> None:
        _require(self.loss in CONTRASTIVE_LOSSES, "contrastive.loss",
                 f"must be one of {', '.join(CONTRASTIVE_LOSSES)}, got {self.loss!r}")
        _require(self.caption_weight >= 0, "contrastive.caption_weight", f"must be >= 0, got {self.caption_weight}")


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
        _require(self.group_size >= 2, "grpo.group_size", f"must be >= 2 (advantages compare a group), got "
                                                          f"{self.group_size}")
        _require(self.temperature > 0, "grpo.temperature", f"must be > 0, got {self.temperature}")
        _require(0 < self.top_p <= 1, "grpo.top_p", f"must be in (0, 1], got {self.top_p}")
        _require(self.max_new_tokens >= 1, "grpo.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        _require(0 <= self.clip_low < 1 and self.clip_high >= 0, "grpo.clip_low",
                 f"need 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        _require(self.kl_beta >= 0, "grpo.kl_beta", f"must be >= 0, got {self.kl_beta}")
        _require(self.ppo_epochs >= 1, "grpo.ppo_epochs", f"must be >= 1, got {self.ppo_epochs}")
        _require(len(self.rewards) >= 1, "grpo.rewards", "name at least one reward")
        for r in self.rewards:
            _require(r.function is not None or r.name in ("answer", "format", "length"), f"grpo.rewards[{r.name}]",
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
        _require(self.samples >= 1, "eval.samples", f"must be >= 1, got {self.samples}")
        _require(self.max_new_tokens >= 1, "eval.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        _require(self.interval >= 1, "eval.interval", f"must be >= 1, got {self.interval}")


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
        _require(self.steps is None or self.tokens is None, f"{p}.tokens", "set steps or tokens, not both")
        if self.steps is None and self.tokens is None:
            self.steps = 100
        if self.steps is not None:
            _require(self.steps >= 1, f"{p}.steps", f"must be >= 1, got {self.steps}")
        if self.tokens is not None:
            _require(self.tokens >= 1, f"{p}.tokens", f"must be >= 1, got {self.tokens}")
        _require(self.objective in OBJECTIVES, f"{p}.objective",
                 f"must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        _require(self.schedule in SCHEDULES, f"{p}.schedule", f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _require(self.decay is None or self.decay in DECAYS, f"{p}.decay",
                 f"must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        _require(len(self.trainable) >= 1, f"{p}.trainable", "nothing trainable: name at least one module group")
        _require(self.save in ("full", "trainable_only"), f"{p}.save", f"must be full or trainable_only, got {self.save!r}")
        _require(self.ckpt_interval >= 0, f"{p}.ckpt_interval", f"must be >= 0, got {self.ckpt_interval}")
        _require(self.micro_batch_size is None or self.micro_batch_size >= 1, f"{p}.micro_batch_size",
                 f"must be >= 1 or null, got {self.micro_batch_size}")
        for name in ("lr", "rope_base"):
            v = getattr(self, name)
            _require(v is None or v > 0, f"{p}.{name}", f"must be > 0, got {v}")
        for d in self.data:
            _require(d.weight > 0, f"{p}.data[{d.name}].weight", f"must be > 0, got {d.weight}")
            _require(d.source in SOURCES, f"{p}.data[{d.name}].source",
                     f"must be one of {', '.join(SOURCES)}, got {d.source!r}")
            _require(d.source not in ("indexed", "mm_shards", "conversations") or bool(d.path),
                     f"{p}.data[{d.name}].path",
                     f"{d.source} datasets need a path")
        self._check_multimodal(p)
        for m in self.lr_mult:
            _require(m.mult > 0, f"{p}.lr_mult[{m.group}].mult", f"must be > 0, got {m.mult}")
            _require(m.group in self.trainable, f"{p}.lr_mult[{m.group}].group",
                     f"must be one of the stage's trainable groups {self.trainable}")

    def _check_multimodal(self, p: str) -> None:
        for name in ("multimodal_ratio", "multimodal_ratio_end"):
            v = getattr(self, name)
            _require(v is None or 0.0 <= v <= 1.0, f"{p}.{name}", f"must be in [0, 1], got {v}")
        _require(self.multimodal_ratio_end is None or self.multimodal_ratio is not None, f"{p}.multimodal_ratio",
                 "multimodal_ratio_end is set: also set the start value multimodal_ratio")
        mm = [d.name for d in self.data if d.structured]
        text = [d.name for d in self.data if not d.structured]
        top = max(self.multimodal_ratio or 0.0, self.multimodal_ratio_end or 0.0)
        _require(top == 0.0 or bool(mm), f"{p}.multimodal_ratio",
                 f"is {top} but the stage's data has no image-text or conversation dataset")
        low = min(self.multimodal_ratio if self.multimodal_ratio is not None else 1.0,
                  self.multimodal_ratio_end if self.multimodal_ratio_end is not None else 1.0)
        _require(low == 1.0 or not mm or bool(text), f"{p}.multimodal_ratio",
                 f"is below 1 but the stage's data has no text dataset (only {mm})")
        _require(not (mm and text) or self.multimodal_ratio is not None, f"{p}.multimodal_ratio",
                 f"the mix holds text {text} and image-text/conversation {mm} datasets: set the multimodal token "
                 "share (0..1)")
        for name in ("min_pixels", "max_pixels"):
            v = getattr(self, name)
            _require(v is None or v > 0, f"{p}.{name}", f"must be > 0, got {v}")
        if self.min_pixels is not None and self.max_pixels is not None:
            _require(self.min_pixels <= self.max_pixels, f"{p}.min_pixels",
                     f"{self.min_pixels} is above max_pixels={self.max_pixels}")


@dataclass
class TrainConfig:
    seed: int = 1234  # model init and dropout seed
    log_interval: int = 10  # steps between progress lines (metrics.jsonl gets every step)
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    tensorboard: bool = True
    # A step whose loss or gradients are not finite is skipped (no update, counted); this many in a row stop the run.
    max_skipped_steps: int = 10

    def __post_init__(self) -> None:
        _require(self.log_interval >= 1, "train.log_interval", f"must be >= 1, got {self.log_interval}")
        _require(self.max_skipped_steps >= 1, "train.max_skipped_steps", f"must be >= 1, got {self.max_skipped_steps}")
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
        for s in self.stages:  # a length in tokens becomes whole optimizer steps
            if s.steps is None:
                per_step = (s.global_batch_size or self.data.global_batch_size) * (s.seq_length or self.data.seq_length)
                s.steps = -(-s.tokens // per_step)

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)
