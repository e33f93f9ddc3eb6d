"""Native-resolution ViT on megatron-core: patch embedding, optional interpolated learned positions, a
`TransformerBlock` with packed non-causal attention + 2D RoPE, and the 2x2 spatial merge.

Layouts: pixel_values THD-style `[T, C * tps * p * p]` (what `ops.pack_images` produces, one row per patch in
`vision_positions` order); inside the block megatron's `[s, b, h]` with b = 1 (the whole pack is one "sequence",
`VisionPackedSeqParams.cu_seqlens_q` keeps images apart). Tensor parallelism comes from the spec's column/row-parallel
linears; with sequence parallelism the pack is split along T across TP ranks (padded to a multiple of tp with a
throw-away segment) and gathered back before the merge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig

from omni_mega.config import ParallelConfig, ViTConfig
from omni_mega.models.vision.attention import VisionPackedSeqParams, block_spec
from omni_mega.models.vision.merge import spatial_merge
from omni_mega.models.vision.norms import SPNorm
from omni_mega.models.vision.windows import window_order


def vit_activation(name: str):
    """The MLP activation: exact GELU, quick GELU (x * sigmoid(1.702 x), CLIP and Qwen2-VL's towers) or SiLU for
    SwiGLU."""
    if name == "quick_gelu":
        from megatron.core.activations import quick_gelu

        return quick_gelu
    if name == "gelu_tanh":
        return gelu_tanh
    return F.silu if name == "swiglu" else F.gelu


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (SigLIP's gelu_pytorch_tanh)."""
    return F.gelu(x, approximate="tanh")


def vit_transformer_config(cfg: ViTConfig, parallel: ParallelConfig, dtype: torch.dtype) -> TransformerConfig:
    """megatron TransformerConfig of the ViT: TP/SP from `parallel`, never pipeline-split (the whole ViT lives on
    the first pipeline stage), so pipeline_model_parallel_size is 1 here whatever the LLM uses."""
    cuda = torch.cuda.is_available()
    return TransformerConfig(
        num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
        ffn_hidden_size=cfg.ffn_hidden_size or 4 * cfg.hidden_size,
        kv_channels=cfg.hidden_size // cfg.num_attention_heads,
        normalization=cfg.normalization, layernorm_epsilon=cfg.norm_epsilon,
        gated_linear_unit=cfg.activation == "swiglu", activation_func=vit_activation(cfg.activation),
        add_bias_linear=True, init_method_std=cfg.init_method_std, attention_dropout=0.0, hidden_dropout=0.0,
        tensor_model_parallel_size=parallel.tp, pipeline_model_parallel_size=1, sequence_parallel=parallel.sp,
        params_dtype=dtype, bf16=dtype == torch.bfloat16, use_cpu_initialization=not cuda,
        bias_dropout_fusion=cuda, masked_softmax_fusion=False, gradient_accumulation_fusion=False,
        persist_layer_norm=False, apply_rope_fusion=False,
    )


class LearnedPositions(torch.nn.Module):
    """A learned [extra + G*G, hidden] position table: `extra` leading rows (CLIP's class-token position, row 0) and
    a G x G grid bilinearly resized to each image's (h, w) patch grid (native resolution: any grid size) and read at
    each token's (row, col). At the native grid (h = w = G) the table is read as it is, not resampled. `antialias`
    widens the bilinear filter on a side that shrinks (SigLIP2 NaFlex's resize), equal to plain bilinear on a side
    that grows."""

    def __init__(self, grid: int, hidden: int, dtype: torch.dtype, std: float, extra: int = 0,
                 antialias: bool = False) -> None:
        super().__init__()
        self.grid, self.extra, self.antialias = grid, extra, antialias
        self.table = torch.nn.Parameter(torch.randn(extra + grid * grid, hidden, dtype=dtype) * std)

    def forward(self, grid_thw: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """grid_thw: int [N, 3]; pos: int32 [T, 2] (row, col). Returns [T, hidden] in the table's dtype."""
        g = self.grid
        grid_table = self.table[self.extra:]
        # interpolate in fp32 at least (bf16 bilinear weights are coarse); fp64 stays fp64
        table = grid_table.view(g, g, -1).permute(2, 0, 1)[None]  # [1, hidden, G, G]
        table = table.to(torch.promote_types(table.dtype, torch.float32))
        out, start = [], 0
        for t, h, w in grid_thw.tolist():
            n = t * h * w
            p = pos[start:start + n].long()
            if (h, w) == (g, g):
                out.append(grid_table[p[:, 0] * g + p[:, 1]])
            else:
                resized = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=False,
                                        antialias=self.antialias)[0]  # [hidden, h, w]
                out.append(resized[:, p[:, 0], p[:, 1]].t().to(self.table.dtype))
            start += n
        return torch.cat(out).to(self.table.dtype)


class ClassToken(torch.nn.Module):
    """CLIP's learned class embedding, prepended to every frame of the pack (one more token per frame)."""

    def __init__(self, hidden: int, dtype: torch.dtype, std: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(hidden, dtype=dtype) * std)

    def prepend(self, x: torch.Tensor, cu: torch.Tensor, pos_row: torch.Tensor | None):
        """x [T, hidden], cu int32 [N + 1] -> ([T + N, hidden] with the class row first in each segment, its cu)."""
        n = cu.numel() - 1
        lengths = (cu[1:] - cu[:-1]).long()
        seg = torch.repeat_interleave(torch.arange(n, device=x.device), lengths)
        first = cu[:-1].long() + torch.arange(n, device=x.device)
        cls = self.weight if pos_row is None else self.weight + pos_row  # CLIP adds position row 0 to it
        out = x.new_zeros(x.size(0) + n, x.size(1))
        out = out.index_put((torch.arange(x.size(0), device=x.device) + seg + 1,), x)
        out = out.index_put((first,), cls.to(x.dtype).expand(n, -1))
        return out, cu + torch.arange(n + 1, device=cu.device, dtype=cu.dtype), first


class VisionTransformer(MegatronModule):
    """pixel_values [T, C*tps*p*p] + grid_thw [N, 3] -> merged features [T / m^2, m^2 * hidden] (full, every TP rank).

    Submodules (named groups for the curriculum): `patch_embed` (+ `pos_embed`, `class_token`, `pre_norm` when
    configured: the `vit.patch_embed` group), `block.layers`, `block.final_layernorm`. With a class token (CLIP) every
    frame's segment starts with it, so the block sees one more token per frame than there are patches.
    """

    def __init__(self, cfg: ViTConfig, parallel: ParallelConfig, dtype: torch.dtype) -> None:
        config = vit_transformer_config(cfg, parallel, dtype)
        super().__init__(config=config)
        self.cfg, self.tp, self.sp = cfg, parallel.tp, parallel.sp
        self.in_features = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2
        # A linear over the flattened patch equals Qwen2-VL's Conv3d with kernel = stride = (tps, p, p).
        self.patch_embed = torch.nn.Linear(self.in_features, cfg.hidden_size, bias=cfg.patch_bias, dtype=dtype)
        torch.nn.init.normal_(self.patch_embed.weight, std=cfg.init_method_std)
        if self.patch_embed.bias is not None:
            torch.nn.init.zeros_(self.patch_embed.bias)
        self.pos_embed = LearnedPositions(cfg.pos_embed_grid, cfg.hidden_size, dtype, cfg.init_method_std,
                                          extra=int(cfg.class_token), antialias=cfg.pos_embed_antialias) \
            if cfg.pos_embed_grid else None
        self.class_token = ClassToken(cfg.hidden_size, dtype, cfg.init_method_std) if cfg.class_token else None
        self.pre_norm = SPNorm(config, cfg.hidden_size, cfg.norm_epsilon) if cfg.pre_norm else None
        self.block = TransformerBlock(config=config, spec=block_spec(config, causal=False), post_layer_norm=True,
                                      pre_process=True, post_process=True)

    @property
    def extra_tokens(self) -> int:
        """Feature tokens per frame beyond its patches: the class token when the features keep it."""
        return int(self.cfg.class_token and self.cfg.feature_select == "full")

    @property
    def out_features(self) -> int:
        return self.cfg.merge_size ** 2 * self.cfg.hidden_size

    def set_input_tensor(self, tensor) -> None:  # the ViT is never pipeline-split
        pass

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Args:
            pixel_values: [T, C*tps*p*p] float, patches in `vision_positions` order (merge blocks contiguous).
            grid_thw: int32/int64 [N, 3] (t, h, w) in patches; h, w divisible by merge_size.
        Returns:
            [T / merge^2, merge^2 * hidden], the config dtype; identical on every TP rank.
        """
        from omni_mega.ops import vision_positions

        if pixel_values.dim() != 2 or pixel_values.size(1) != self.in_features:
            raise ValueError(f"pixel_values must be [T, {self.in_features}] (C*tps*p*p), "
                             f"got {tuple(pixel_values.shape)}")
        pos, cu = vision_positions(grid_thw.cpu(), self.cfg.merge_size)
        if pos.size(0) != pixel_values.size(0):
            raise ValueError(f"grid_thw {grid_thw.tolist()} describes {pos.size(0)} patches but pixel_values has "
                             f"{pixel_values.size(0)} rows")
        dev = pixel_values.device
        pos, cu = pos.to(dev), cu.to(dev)
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))
        if self.pos_embed is not None:
            x = x + self.pos_embed(grid_thw, pos)
        first = None
        if self.class_token is not None:
            x, cu, first = self.class_token.prepend(x, cu, self.pos_embed.table[0] if self.pos_embed else None)
            pos = torch.cat([pos, pos.new_zeros(first.numel(), 2)])  # unread: a class token implies no 2D RoPE
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        total = x.size(0)
        perm = win = None
        if self.cfg.window_size:  # reorder into windows; positions travel with their tokens
            side = self.cfg.window_size // (self.cfg.patch_size * self.cfg.merge_size)
            perm, win = window_order(grid_thw.cpu(), self.cfg.merge_size, side)
            perm, win = perm.to(dev), win.to(dev)
            x, pos = x[perm], pos[perm]
        pad = (-total) % self.tp if self.sp else 0
        if pad:  # SP splits T across TP ranks: pad with a separate segment that attends only to itself
            x = torch.cat([x, x.new_zeros(pad, x.size(1))])
            pos = torch.cat([pos, pos.new_zeros(pad, 2)])
            cu = torch.cat([cu, cu.new_tensor([total + pad])])
            win = None if win is None else torch.cat([win, win.new_tensor([total + pad])])
        lengths = cu[1:] - cu[:-1]
        params = VisionPackedSeqParams(
            qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=int(lengths.max()),
            max_seqlen_kv=int(lengths.max()), pos=None if self.cfg.rope_layout == "none" else pos,
            rope_theta=self.cfg.rope_theta, rope_layout=self.cfg.rope_layout, window_cu_seqlens=win,
            window_max_seqlen=0 if win is None else int((win[1:] - win[:-1]).max()),
            full_attention_layers=tuple(self.cfg.full_attention_layers),
        )
        h = x[:, None, :]  # [T, b=1, hidden]
        if self.sp:
            h = tensor_parallel.scatter_to_sequence_parallel_region(h)
        h = self._run_block(h, params)
        if self.sp:
            # Later modules run replicated on every TP rank: the backward keeps this rank's slice of the gradient.
            h = tensor_parallel.gather_from_sequence_parallel_region(h, tensor_parallel_output_grad=False)
        h = h[:total, 0]
        if perm is not None:  # back to vision_positions order (merge blocks contiguous)
            h = h[torch.argsort(perm)]
        if first is not None and not self.extra_tokens:  # LLaVA's "default" strategy: the class token is no feature
            keep = torch.ones(total, dtype=torch.bool, device=h.device)
            keep[first] = False
            h = h[keep]
        return spatial_merge(h, self.cfg.merge_size)

    def _run_block(self, h: torch.Tensor, params: VisionPackedSeqParams) -> torch.Tensor:
        """The block up to `feature_layer`, then the final norm if `final_norm`. Layers past the feature layer (and an
        unused final norm) join the graph with weight 0, so every parameter gets a gradient (zero) in every step, as
        distributed optimizers and gradient buckets expect."""
        cfg = self.cfg
        n = cfg.feature_layers
        if n == cfg.num_layers and cfg.final_norm:
            return self.block(hidden_states=h, attention_mask=None, packed_seq_params=params)
        unused = []
        for layer in self.block.layers:
            if layer.layer_number <= n:
                h, _ = layer(hidden_states=h, attention_mask=None, packed_seq_params=params)
            else:
                unused.append(layer)
        if cfg.final_norm:
            h = self.block.final_layernorm(h)
        else:
            unused.append(self.block.final_layernorm)
        params_left = [p for m in unused for p in m.parameters() if p.requires_grad]
        if params_left and torch.is_grad_enabled():
            h = h + sum(p.sum() for p in params_left).to(h.dtype) * 0.0
        return h
