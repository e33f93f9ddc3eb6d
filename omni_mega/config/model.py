"""The `model:` section: the language model (dense or MoE), the ViT, the connector, and the parts that single-part
stages train (audio encoder, codec, talker, classifier, contrastive towers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omni_mega.config.checks import require


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
        require(self.type in ("llama3", "yarn"), f"{p}.type", f"must be llama3 or yarn, got {self.type!r}")
        require(self.factor > 0, f"{p}.factor", f"must be > 0, got {self.factor}")
        require(self.original_max_position_embeddings >= 1, f"{p}.original_max_position_embeddings",
                 f"must be >= 1, got {self.original_max_position_embeddings}")
        if self.type == "llama3":
            require(self.high_freq_factor > self.low_freq_factor > 0, f"{p}.high_freq_factor",
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
            require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.kv_channels is None:
            require(self.hidden_size % self.num_attention_heads == 0, f"{p}.hidden_size",
                     f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}; "
                     "set kv_channels (the head dim) explicitly")
        else:
            require(self.kv_channels >= 2 and self.kv_channels % 2 == 0, f"{p}.kv_channels",
                     f"must be an even head dim >= 2 (RoPE rotates pairs), got {self.kv_channels}")
        require(self.norm_epsilon > 0, f"{p}.norm_epsilon", f"must be > 0, got {self.norm_epsilon}")
        if self.num_query_groups is not None:
            require(self.num_attention_heads % self.num_query_groups == 0, f"{p}.num_query_groups",
                     f"num_attention_heads={self.num_attention_heads} is not divisible by {self.num_query_groups}")
        require(self.normalization in ("RMSNorm", "LayerNorm"), f"{p}.normalization",
                 f"must be RMSNorm or LayerNorm, got {self.normalization!r}")
        require(self.activation in ("swiglu", "gelu"), f"{p}.activation", f"must be swiglu or gelu, got {self.activation!r}")
        require(self.rotary_base > 0, f"{p}.rotary_base", f"must be > 0, got {self.rotary_base}")
        if self.mrope_section is not None:
            half = self.head_dim // 2
            require(len(self.mrope_section) == 3 and all(x >= 1 for x in self.mrope_section)
                     and sum(self.mrope_section) == half, f"{p}.mrope_section",
                     f"needs 3 positive entries (temporal, height, width) summing to head_dim / 2 = {half}, "
                     f"got {self.mrope_section}")
            require(self.rope_scaling is None, f"{p}.rope_scaling", "is not supported together with mrope_section")
        self._check_moe(p)

    def _check_moe(self, p: str) -> None:
        if self.multi_latent_attention:
            for name in ("kv_lora_rank", "qk_head_dim", "v_head_dim"):
                require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
            require(self.qk_pos_emb_head_dim >= 2 and self.qk_pos_emb_head_dim % 2 == 0, f"{p}.qk_pos_emb_head_dim",
                     f"must be an even width >= 2 (RoPE rotates pairs), got {self.qk_pos_emb_head_dim}")
            require(self.q_lora_rank is None or self.q_lora_rank >= 1, f"{p}.q_lora_rank",
                     f"must be >= 1 or null, got {self.q_lora_rank}")
            require(self.mrope_section is None, f"{p}.mrope_section", "is not supported with multi_latent_attention")
        if self.num_moe_experts is None:
            return
        require(self.num_moe_experts >= 1, f"{p}.num_moe_experts", f"must be >= 1 or null, got {self.num_moe_experts}")
        require(1 <= self.moe_router_topk <= self.num_moe_experts, f"{p}.moe_router_topk",
                 f"must be in [1, num_moe_experts={self.num_moe_experts}], got {self.moe_router_topk}")
        for name in ("moe_ffn_hidden_size", "moe_shared_expert_intermediate_size"):
            v = getattr(self, name)
            require(v is None or v >= 1, f"{p}.{name}", f"must be >= 1 or null, got {v}")
        freq = self.moe_layer_freq
        if isinstance(freq, int):
            require(freq >= 1, f"{p}.moe_layer_freq", f"must be >= 1 or a 0/1 list per layer, got {freq}")
        else:
            require(len(freq) == self.num_layers and set(freq) <= {0, 1} and 1 in freq, f"{p}.moe_layer_freq",
                     f"a list needs one 0 (dense) or 1 (MoE) per layer ({self.num_layers}) and at least one 1, "
                     f"got {freq}")
        require(self.moe_router_score_function in ("softmax", "sigmoid"), f"{p}.moe_router_score_function",
                 f"must be softmax or sigmoid, got {self.moe_router_score_function!r}")
        require(self.moe_aux_loss_coeff >= 0, f"{p}.moe_aux_loss_coeff", f"must be >= 0, got {self.moe_aux_loss_coeff}")
        require(self.moe_token_dispatcher_type in ("allgather", "alltoall"), f"{p}.moe_token_dispatcher_type",
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
            require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.hidden_size % self.num_attention_heads == 0, f"{p}.hidden_size",
                 f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        require((self.hidden_size // self.num_attention_heads) % 4 == 0, f"{p}.hidden_size",
                 f"head dim {self.hidden_size // self.num_attention_heads} must be divisible by 4 for 2D RoPE")
        require(self.normalization in ("RMSNorm", "LayerNorm"), f"{p}.normalization",
                 f"must be RMSNorm or LayerNorm, got {self.normalization!r}")
        require(self.activation in VIT_ACTIVATIONS, f"{p}.activation",
                 f"must be one of {', '.join(VIT_ACTIVATIONS)}, got {self.activation!r}")
        require(self.norm_epsilon > 0, f"{p}.norm_epsilon", f"must be > 0, got {self.norm_epsilon}")
        require(self.rope_layout in ("half", "interleaved", "none"), f"{p}.rope_layout",
                 f"must be half, interleaved or none, got {self.rope_layout!r}")
        require(self.rope_layout != "none" or self.pos_embed_grid > 0, f"{p}.rope_layout",
                 "none leaves the ViT without positions: set pos_embed_grid")
        require(self.pos_embed_grid >= 0, f"{p}.pos_embed_grid", f"must be >= 0, got {self.pos_embed_grid}")
        require(1 <= self.feature_layers <= self.num_layers, f"{p}.feature_layer",
                 f"must name one of the {self.num_layers} layers (1..{self.num_layers} or -{self.num_layers}..-1), "
                 f"got {self.feature_layer}")
        require(self.feature_select in ("default", "full"), f"{p}.feature_select",
                 f"must be default or full, got {self.feature_select!r}")
        require(self.feature_select == "default" or self.class_token, f"{p}.feature_select",
                 "full keeps the class token in the features: it needs class_token: true")
        if self.class_token:  # the class token has no place in a merge block nor in the 2D RoPE grid
            require(self.merge_size == 1, f"{p}.class_token", f"needs merge_size 1, got {self.merge_size}")
            require(self.pos_embed_grid > 0 and self.rope_layout == "none", f"{p}.class_token",
                     "needs a learned position table (pos_embed_grid > 0) and rope_layout none")
        block = self.patch_size * self.merge_size  # pixels per side of one merged token
        require(self.window_size == 0 or self.window_size >= block, f"{p}.window_size",
                 f"must be 0 (no windows) or at least patch_size * merge_size = {block} pixels, got {self.window_size}")
        full = list(self.full_attention_layers)
        require(not (self.window_size and self.class_token), f"{p}.window_size",
                 "windowed attention has no place for a class token: use one of window_size and class_token")
        require(not full or self.window_size > 0, f"{p}.full_attention_layers",
                 "only means something with windowed attention: set window_size or leave it empty")
        require(all(isinstance(i, int) and 0 <= i < self.num_layers for i in full) and len(set(full)) == len(full),
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
        require(self.kind in ("mlp", "vet"), f"{p}.kind", f"must be mlp or vet, got {self.kind!r}")
        require(0 <= self.num_indicators < self.visual_vocab_size, f"{p}.num_indicators",
                 f"must be in [0, visual_vocab_size={self.visual_vocab_size}), got {self.num_indicators}")
        require(len(self.indicator_token_ids) <= self.num_indicators, f"{p}.indicator_token_ids",
                 f"{len(self.indicator_token_ids)} ids for {self.num_indicators} indicator rows")
        require(self.image_token_id not in self.indicator_token_ids, f"{p}.indicator_token_ids",
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
            require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.hidden_size % self.num_attention_heads == 0, f"{p}.hidden_size",
                 f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        require(self.hidden_size % 2 == 0, f"{p}.hidden_size", "must be even (sinusoidal positions)")
        require(self.normalization in ("RMSNorm", "LayerNorm"), f"{p}.normalization",
                 f"must be RMSNorm or LayerNorm, got {self.normalization!r}")
        require(self.positions in ("rope", "sinusoid", "none"), f"{p}.positions",
                 f"must be rope, sinusoid or none, got {self.positions!r}")
        require(self.positions != "rope" or (self.hidden_size // self.num_attention_heads) % 4 == 0,
                 f"{p}.positions", "rope needs a head dim divisible by 4 (2D rotary layout)")
        require(self.audio_token_id < 0, f"{p}.audio_token_id",
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
            require(getattr(self, name) >= 1, f"model.codec.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.commitment >= 0, "model.codec.commitment", f"must be >= 0, got {self.commitment}")

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
            require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.hidden_size % self.num_attention_heads == 0, f"{p}.hidden_size",
                 f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")


@dataclass
class ClassifierConfig:
    """Image classifier on the ViT (`objective: classify`): the merged ViT features of an image averaged -> a linear
    layer over `labels` (an image-text dataset's text is its label)."""

    labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        require(len(self.labels) >= 2, "model.classifier.labels", f"need at least 2 labels, got {self.labels}")
        require(len(set(self.labels)) == len(self.labels), "model.classifier.labels", "labels must be unique")


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
            require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.hidden_size % self.num_attention_heads == 0, f"{p}.hidden_size",
                 f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        require(self.vocab_size is None or self.vocab_size >= 2, f"{p}.vocab_size",
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
