"""One model chunk's share of a forward pass with a KV cache, under tensor and pipeline parallelism.

megatron-core's inference engines assume CUDA (they call torch.cuda.current_device() and allocate their caches there),
so this runs the chunk's own submodules step by step: on the first pipeline stage the embedding (vocabulary-parallel;
an OmniModel substitutes its visual rows at the image placeholders), else the hidden states received from the
previous stage; per local layer its norm, fused QKV projection (with q/k norms), RoPE at the tokens' absolute
positions, the cache, attention, output projection (row-parallel all-reduce) and MLP; then on the last stage the
final norm and the column-parallel output layer (gathered), else a send of the hidden states to the next stage.
Under tensor parallelism every rank computes and caches only its own query groups. Sequence parallelism is switched
off while generating (`sequence_parallel_off`): one new position cannot be split over ranks.

The cache holds `rows` sequences ([max_len, rows, local query groups, head_dim] per local layer). A prompt is
prefilled once for a slice of rows (its keys/values broadcast to each of them); a decode step moves every row one
position, each at its own absolute position (rows of different prompts have different lengths), attending to its own
cached positions only.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F


class KVCache:
    """Keys and values of every local layer for `rows` sequences: [max_len, rows, groups on this TP rank, head_dim]."""

    def __init__(self, num_layers: int, max_len: int, groups: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, rows: int = 1) -> None:
        shape = (max_len, rows, groups, head_dim)
        # Zeros, not empty: a decode step reads every row's keys up to the longest row, and a masked position still
        # enters q.k and p.v, so garbage NaN/Inf in a shorter row's unwritten positions would turn its output to NaN.
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len


def unwrap(model):
    return getattr(model, "module", model)


# Module attributes that split or reduce-scatter the sequence under sequence parallelism (megatron-core sets them from
# the config at construction: the embedding reduce-scatters its output instead of all-reducing it).
_SP_FLAGS = ("sequence_parallel", "reduce_scatter_embeddings")


@contextlib.contextmanager
def sequence_parallel_off(model) -> Iterator[None]:
    """Sequence parallelism off in every module and config of `model` for the duration (restored after)."""
    saved = {}  # (id, attribute) -> object: a config shared by many modules is saved once
    for m in model.modules():
        for obj in (m, getattr(m, "config", None)):
            saved.update({(id(obj), a): obj for a in _SP_FLAGS if getattr(obj, a, None) is True})
    for (_, a), obj in saved.items():
        setattr(obj, a, False)
    try:
        yield
    finally:
        for (_, a), obj in saved.items():
            setattr(obj, a, True)


class CachedForward:
    """`prefill(ids, rows, cache)` and `decode(ids, positions, cache)` over one model chunk (GPTModel or OmniModel,
    unwrapped or DDP-wrapped). Both return float32 logits over the padded vocabulary on the last pipeline stage and
    None on the others."""

    def __init__(self, model) -> None:
        self.model = unwrap(model)
        self.gpt = self.model.llm if hasattr(self.model, "llm") else self.model
        self.cfg = self.gpt.config
        if getattr(self.cfg, "multi_latent_attention", False):
            raise ValueError("generate: the KV cache holds query groups of standard attention; multi-latent attention "
                             "(model.llm.multi_latent_attention) is not supported yet")
        if getattr(self.cfg, "expert_model_parallel_size", 1) > 1:
            raise ValueError("generate: run with parallel.ep 1 (each rank needs every expert)")
        self.first, self.last = bool(self.gpt.pre_process), bool(self.gpt.post_process)
        self.mrope = getattr(self.gpt, "position_embedding_type", "rope") == "mrope"
        self.scale = self.cfg.softmax_scale or 1.0 / math.sqrt(self.cfg.kv_channels)
        self.layers = list(self.gpt.decoder.layers)
        self.dtype = next(self.gpt.decoder.parameters()).dtype
        self.device = next(self.model.parameters()).device

    def new_cache(self, max_len: int, rows: int) -> KVCache:
        groups = self.layers[0].self_attention.num_query_groups_per_partition
        return KVCache(len(self.layers), max_len, groups, self.cfg.kv_channels, self.dtype, self.device, rows)

    # ---- the two kinds of step --------------------------------------------------------------------------------------
    def prefill(self, ids: torch.Tensor, rows: slice, cache: KVCache, *, pos3: torch.Tensor | None = None,
                pixel_values=None, grid_thw=None) -> torch.Tensor | None:
        """One prompt, ids int64 [1, n] at positions 0..n-1, into cache rows `rows` -> logits [1, V] of its last
        position."""
        n = ids.shape[1]
        if n > cache.max_len:
            raise ValueError(f"generate: {n} positions exceed the cache ({cache.max_len})")
        h = self._input(ids, n, 1, pixel_values, grid_thw, image_prompt=True)
        rot = self._rope_prefill(n, pos3).to(h.device)
        causal = torch.ones(n, n, dtype=torch.bool, device=h.device).tril()

        def attend(li, q, k, v):
            cache.k[li][:n, rows], cache.v[li][:n, rows] = k, v  # [n, 1, g, d] broadcast over the prompt's rows
            return q, k, v, causal

        return self._output(self._layers(h, rot, attend))

    def decode(self, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache, *,
               pos3: torch.Tensor | None = None) -> torch.Tensor | None:
        """One new token per row: ids int64 [b, 1], row r at absolute position positions[r] -> logits [b, V]."""
        b = ids.shape[0]
        end = int(positions.max()) + 1
        if end > cache.max_len:
            raise ValueError(f"generate: {end} positions exceed the cache ({cache.max_len})")
        h = self._input(ids, 1, b, None, None, image_prompt=False)
        rot = self._rope_decode(positions, pos3).to(h.device)
        pos = positions.to(h.device)
        rows = torch.arange(b, device=h.device)
        # row r sees its own positions 0..positions[r]: [b, 1 head, 1 query, end keys]
        visible = (torch.arange(end, device=h.device)[None, :] <= pos[:, None])[:, None, None, :]

        def attend(li, q, k, v):
            cache.k[li][pos, rows], cache.v[li][pos, rows] = k[0], v[0]
            return q, cache.k[li][:end], cache.v[li][:end], visible

        return self._output(self._layers(h, rot, attend))

    # ---- pieces -----------------------------------------------------------------------------------------------------
    def _input(self, ids, n: int, b: int, pixel_values, grid_thw, image_prompt: bool) -> torch.Tensor:
        """[n, b, hidden]: embedded on the first pipeline stage, received from the previous one elsewhere."""
        if not self.first:
            from megatron.core import parallel_state as ps

            h = torch.empty(n, b, self.cfg.hidden_size, dtype=self.dtype, device=self.device)
            torch.distributed.recv(h, src=ps.get_pipeline_model_parallel_prev_rank())
            return h
        if self.gpt is not self.model and image_prompt:  # visual rows substituted at the placeholders
            return self.model.embed(ids, None, pixel_values, grid_thw)
        return self.gpt.embedding(input_ids=ids, position_ids=None)

    def _rope_prefill(self, n: int, pos3) -> torch.Tensor:
        rot = self.gpt.rotary_pos_emb
        if self.mrope:
            return rot(pos3, mrope_section=self.cfg.mrope_section)  # [n, 1, 1, dim]
        return rot.get_emb(n)  # [n, 1, 1, dim]

    def _rope_decode(self, positions: torch.Tensor, pos3) -> torch.Tensor:
        """[1, b, 1, dim]: each row's own position."""
        rot = self.gpt.rotary_pos_emb
        if self.mrope:
            return rot(pos3, mrope_section=self.cfg.mrope_section)  # pos3 [3, b, 1] -> [1, b, 1, dim]
        table = rot.get_emb(int(positions.max()) + 1)  # [max + 1, 1, 1, dim]
        return table[positions.to(table.device)].permute(1, 0, 2, 3)

    def _layers(self, h: torch.Tensor, rot: torch.Tensor, attend) -> torch.Tensor:
        from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb

        n, b = h.shape[0], h.shape[1]
        for li, layer in enumerate(self.layers):
            attn = layer.self_attention
            x = layer.input_layernorm(h)  # an identity under TE, whose linear_qkv holds the norm
            q, k, v = attn.get_query_key_value_tensors(x, None)[:3]  # [n, b, heads or groups here, d]
            q = apply_rotary_pos_emb(q, rot, config=self.cfg)
            k = apply_rotary_pos_emb(k, rot, config=self.cfg)
            q, keys, values, mask = attend(li, q, k, v)
            rep = q.shape[2] // keys.shape[2]
            qh = q.permute(1, 2, 0, 3)  # [b, heads, n, d]
            kh = keys.permute(1, 2, 0, 3).repeat_interleave(rep, dim=1)  # [b or 1, heads, keys, d]
            vh = values.permute(1, 2, 0, 3).repeat_interleave(rep, dim=1)
            ctx = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=self.scale)
            ctx = ctx.permute(2, 0, 1, 3).reshape(n, b, -1)  # [n, b, heads * d]
            out, bias = attn.linear_proj(ctx)
            h = h + out + (bias if bias is not None else 0)
            out, bias = layer.mlp(layer.pre_mlp_layernorm(h))
            h = h + out + (bias if bias is not None else 0)
        return h

    def _output(self, h: torch.Tensor) -> torch.Tensor | None:
        if not self.last:
            from megatron.core import parallel_state as ps

            torch.distributed.send(h.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
            return None
        from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

        gpt = self.gpt
        h = gpt.decoder.final_layernorm(h[-1:]) if gpt.decoder.final_layernorm is not None else h[-1:]
        weight = gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights else None
        logits, _ = gpt.output_layer(h, weight=weight)
        return gather_from_tensor_model_parallel_region(logits)[0].float()  # [b, padded vocab]
