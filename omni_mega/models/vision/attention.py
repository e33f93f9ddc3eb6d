"""Packed (THD) attention as a megatron "core attention" submodule, plus the layer spec that uses it.

Inside megatron's `SelfAttention`, when `packed_seq_params.qkv_format == "thd"` the batch axis (b = 1) is squeezed
and the core attention receives q/k/v as THD `[T, heads, head_dim]`; segments are given by `cu_seqlens` (int32
`[N + 1]`). Attention never crosses a segment boundary, so one packed call equals running every image (or text
sequence) alone.

Backends, chosen by device and dtype (not by the caller):
- CUDA with fp16/bf16: `torch.nn.attention.varlen.varlen_attn` (flash, no [T, T] mask).
- otherwise (CPU, fp32): SDPA with a block-diagonal boolean mask built from cu_seqlens ([T, T]: fine for the small
  shapes CPU runs use, quadratic memory on long packs).
The ViT's 2D RoPE (`ops.rope_2d_qk`) is applied here when the packed params carry per-token positions, because
megatron's rotary path is 1D; megatron's own `rotary_pos_emb` is then left as None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

from omni_mega.models.vision.norms import SPNorm


@dataclass
class VisionPackedSeqParams(PackedSeqParams):
    """megatron's PackedSeqParams plus what the ViT's 2D RoPE needs.

    pos: int32 [T, 2] (row, col) of every packed token (from `ops.vision_positions`), or None for no 2D RoPE.
    rope_theta / rope_layout: `ops.rope_2d` arguments.
    """

    pos: torch.Tensor | None = None
    rope_theta: float = 10000.0
    rope_layout: str = "half"
    # Windowed attention (`models.vision.windows`): layers whose 0-based index is not in full_attention_layers use
    # window_cu_seqlens instead of cu_seqlens_q; None = every layer uses cu_seqlens_q.
    window_cu_seqlens: torch.Tensor | None = None
    window_max_seqlen: int = 0
    full_attention_layers: tuple[int, ...] = ()


def segment_mask(cu_seqlens: torch.Tensor, total: int, *, causal: bool) -> torch.Tensor:
    """Boolean [T, T] mask, True where query i may attend key j (same segment; j <= i when causal)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seg = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths)
    if seg.numel() != total:
        raise ValueError(f"cu_seqlens covers {seg.numel()} tokens but q has T={total} "
                         f"(cu_seqlens={cu_seqlens.tolist()})")
    mask = seg[:, None] == seg[None, :]
    if causal:
        mask &= torch.ones(total, total, dtype=torch.bool, device=mask.device).tril()
    return mask


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                     *, causal: bool, scale: float, dropout_p: float = 0.0) -> torch.Tensor:
    """Attention inside each segment of a packed THD batch.

    Args:
        q: [T, Hq, D]; k, v: [T, Hk, D] with Hq % Hk == 0 (GQA); same dtype/device.
        cu_seqlens: int32 [N + 1], cu_seqlens[-1] == T; empty segments allowed.
        max_seqlen: longest segment (varlen kernels size their tiles with it).
    Returns:
        [T, Hq, D] in q's dtype.
    """
    if k.size(1) != q.size(1):
        rep = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and dropout_p == 0.0:
        from torch.nn.attention.varlen import varlen_attn

        cu = cu_seqlens.to(torch.int32)
        return varlen_attn(q, k, v, cu, cu, int(max_seqlen), int(max_seqlen), scale=scale,
                           window_size=(-1, 0) if causal else (-1, -1))
    mask = segment_mask(cu_seqlens, q.size(0), causal=causal)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask,
                                         dropout_p=dropout_p, scale=scale)  # [H, T, D]
    return out.transpose(0, 1)


class PackedCoreAttention(MegatronModule):
    """megatron core-attention submodule (DotProductAttention's constructor and forward contract).

    THD (packed_seq_params.qkv_format == "thd"): q [T, np, hn], k/v [T, ng, hn] -> [T, np, hn].
    SBHD (no packed params): q [s, b, np, hn], k/v [s, b, ng, hn] -> [s, b, np * hn]; causal or full by mask type.
    `attention_mask` is not read: the mask type (causal / none) and cu_seqlens define who attends to whom, which
    covers megatron's own causal masks; padding masks are not supported (pack with cu_seqlens instead).
    """

    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str,
                 attention_dropout: float | None = None, softmax_scale: float | None = None, cp_comm_type=None,
                 pg_collection=None, k_channels: int | None = None, v_channels: int | None = None) -> None:
        super().__init__(config=config)
        self.layer_number = layer_number  # 1-based; picks full or windowed segments
        if config.context_parallel_size != 1:
            raise ValueError("PackedCoreAttention: context parallelism is not supported, "
                             f"got cp={config.context_parallel_size}")
        self.causal = attn_mask_type == AttnMaskType.causal
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        # Multi-latent attention passes its query/key width (k_channels, RoPE part included) and a value width
        # (v_channels) that differ from kv_channels; SDPA takes values of another width than queries and keys.
        head_dim = k_channels or config.kv_channels
        self.scale = softmax_scale if softmax_scale is not None else (config.softmax_scale or 1.0 / math.sqrt(head_dim))

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params: PackedSeqParams | None = None):
        if attention_bias is not None:
            raise ValueError("PackedCoreAttention: attention_bias is not supported")
        p = self.dropout if self.training else 0.0
        if packed_seq_params is not None and packed_seq_params.qkv_format == "thd":
            pos = getattr(packed_seq_params, "pos", None)
            if pos is not None:
                from omni_mega.ops import rope_2d_qk

                query, key = rope_2d_qk(query, key, pos, theta=packed_seq_params.rope_theta,
                                        layout=packed_seq_params.rope_layout)
            cu, longest = packed_seq_params.cu_seqlens_q, packed_seq_params.max_seqlen_q
            win = getattr(packed_seq_params, "window_cu_seqlens", None)
            if win is not None and self.layer_number - 1 not in packed_seq_params.full_attention_layers:
                cu, longest = win, packed_seq_params.window_max_seqlen
            with get_cuda_rng_tracker().fork():  # dropout draws from the model-parallel RNG stream, like megatron's
                return packed_attention(query, key, value, cu, longest, causal=self.causal, scale=self.scale,
                                        dropout_p=p)
        s, b, hq, d = query.shape
        if key.size(2) != hq:
            rep = hq // key.size(2)
            key, value = key.repeat_interleave(rep, dim=2), value.repeat_interleave(rep, dim=2)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, h, s, d]
        with get_cuda_rng_tracker().fork():
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=p, scale=self.scale)
        return out.permute(2, 0, 1, 3).reshape(s, b, hq * out.size(-1))  # values may be narrower (MLA)


def layer_spec(*, causal: bool, qk_layernorm: bool = False) -> ModuleSpec:
    """A megatron TransformerLayer spec with local (CPU-capable) TP linears, SP-capable norms and packed attention.

    causal=False for the ViT (full attention inside each image), True for a language model. qk_layernorm: a per-head
    norm (config.normalization, over head_dim) of queries and keys before RoPE (Qwen3). Checkpoint keys follow
    TransformerEngine's spec, where the input and pre-MLP norms live inside linear_qkv / linear_fc1
    (`...linear_qkv.layer_norm_weight`), as megatron's own local spec maps them: a checkpoint written on CPU loads on
    a TE cluster and back."""
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=SPNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal if causal else AttnMaskType.no_mask},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear, core_attention=PackedCoreAttention,
                    linear_proj=RowParallelLinear, q_layernorm=SPNorm if qk_layernorm else IdentityOp,
                    k_layernorm=SPNorm if qk_layernorm else IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=SPNorm,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear,
                                                                linear_fc2=RowParallelLinear)),
            mlp_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map={"input_layernorm.": "self_attention.linear_qkv.layer_norm_",
                                         "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"},
        ),
    )


def block_spec(config, *, causal: bool, vp_stage: int | None = None, qk_layernorm: bool = False):
    """TransformerBlockSubmodules: `layer_spec` for this pipeline stage's layers and an SP-capable final norm
    (megatron's default final norm, LayerNormImpl, asserts under sequence parallelism without TE)."""
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    n = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer_spec(causal=causal, qk_layernorm=qk_layernorm)] * n, layer_norm=SPNorm)
