"""Named weight transforms between Hugging Face tensors and megatron's *global* checkpoint tensors.

Each transform is a pair: `to_mcore(*hf_tensors) -> tensor` and `to_hf(tensor) -> tuple of hf tensors`, exact
inverses (pure reshapes, concatenations and zero padding: bit-identical round trips). They are shape-polymorphic, so
running them on meta tensors gives the checkpoint shapes before any data is read.

Megatron's global layouts (what `dist_checkpointing` stores, whatever TP wrote it):
- fused QKV (`linear_qkv`): rows grouped per query group, [q heads of group g; k_g; v_g] for g = 0..G-1; a TP rank
  holds G/tp consecutive groups, so its local block is a contiguous row range of this layout.
- SwiGLU fc1 (`linear_fc1`): megatron's checkpoint stores [gate rows of every rank; up rows of every rank] (each
  rank's local [gate shard; up shard] is written as two chunks of that global tensor), i.e. [gate; up] here; loading
  at TP=t gives rank r the rows [gate_r; up_r] without any tensor being concatenated whole and split again.
- vocabulary-parallel embeddings / output layer: padded to `models.llm.padded_vocab_size` rows (zeros).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Transform:
    name: str
    to_mcore: Callable[..., torch.Tensor]
    to_hf: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    # Optional: the megatron tensor as (first row, block) pieces along dim 0, views of the HF tensors, which the writer
    # stores as chunks of one global tensor instead of concatenating them (megatron stores fc1 that way at TP > 1).
    to_mcore_rows: Callable[..., list[tuple[int, torch.Tensor]]] | None = None


def _cat(parts: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """torch.cat of same-dtype tensors, written as copies into one new tensor: the converters run every transform on
    meta tensors first (the shapes), and torch.cat on meta dispatches to a Python kernel whose first call imports
    torch._dynamo, 2-17 s of a conversion's wall time on the 2-core dev VM (CPU-only torch 2.13, measured per fresh
    process); new_empty and copy_ stay in C++."""
    shape = list(parts[0].shape)
    shape[dim] = sum(p.shape[dim] for p in parts)
    out = parts[0].new_empty(shape)
    start = 0
    for p in parts:
        out.narrow(dim, start, p.shape[dim]).copy_(p)
        start += p.shape[dim]
    return out


def copy() -> Transform:
    return Transform("copy", lambda t: t, lambda t: (t,))


def qkv_per_group(heads: int, groups: int, head_dim: int) -> Transform:
    """q [H*d, ...], k [G*d, ...], v [G*d, ...] (weights or biases) <-> megatron's per-group [q_g; k_g; v_g]."""
    per = heads // groups

    def to_mcore(q, k, v):
        rest = q.shape[1:]
        q = q.reshape(groups, per * head_dim, *rest)
        k = k.reshape(groups, head_dim, *rest)
        v = v.reshape(groups, head_dim, *rest)
        return _cat([q, k, v], dim=1).reshape(groups * (per + 2) * head_dim, *rest)

    def to_hf(t):
        rest = t.shape[1:]
        g = t.reshape(groups, (per + 2) * head_dim, *rest)
        q, k, v = g.split([per * head_dim, head_dim, head_dim], dim=1)
        return (q.reshape(heads * head_dim, *rest).contiguous(), k.reshape(groups * head_dim, *rest).contiguous(),
                v.reshape(groups * head_dim, *rest).contiguous())

    return Transform("merge q/k/v per query group", to_mcore, to_hf)


def fused_qkv_per_head(heads: int, head_dim: int) -> Transform:
    """A fused [q; k; v] projection (Qwen2-VL's vision `attn.qkv`) <-> megatron's per-head [q_h; k_h; v_h]."""
    inner = qkv_per_group(heads, heads, head_dim)

    def to_mcore(t):
        return inner.to_mcore(*t.split(heads * head_dim, dim=0))

    def to_hf(t):
        return (_cat(inner.to_hf(t), dim=0),)

    return Transform("split fused q/k/v, merge per head", to_mcore, to_hf)


def gate_up() -> Transform:
    """SwiGLU gate [F, h] and up [F, h] <-> megatron's fc1 checkpoint tensor [gate; up] (see the module doc)."""
    return Transform("gate/up per TP shard", lambda g, u: _cat([g, u], dim=0),
                     lambda t: tuple(x.contiguous() for x in t.chunk(2, dim=0)),
                     to_mcore_rows=lambda g, u: [(0, g), (g.shape[0], u)])


def pad_rows(rows: int, padded: int) -> Transform:
    """The vocabulary: `rows` real rows <-> `padded` rows, the extra ones zero (never sampled, see inference)."""
    def to_mcore(t):
        if padded == rows:
            return t
        out = t.new_zeros(padded, *t.shape[1:])
        out[:rows].copy_(t)
        return out

    return Transform("pad vocabulary", to_mcore, lambda t: (t[:rows].contiguous(),))


def conv_as_linear(shape: tuple[int, ...]) -> Transform:
    """A patch Conv3d/Conv2d weight [E, C, (t,) p, p] with kernel = stride <-> a Linear [E, C*(t*)p*p] over the
    flattened patch (`ops.pack_images` flattens patches in the same (C, t, p, p) order)."""
    return Transform("conv patch embedding as a linear", lambda t: t.reshape(t.shape[0], -1),
                     lambda t: (t.reshape(shape).contiguous(),))


def patch_channels_last(hidden: int, channels: int, patch: int) -> Transform:
    """A Linear over patches flattened in (p, p, C) order (SigLIP2's NaFlex patchifier) [E, p*p*C] <-> ours over the
    (C, p, p) order `ops.pack_images` writes [E, C*p*p]: a permutation of the input columns."""
    def to_mcore(t):
        return t.reshape(hidden, patch, patch, channels).permute(0, 3, 1, 2).reshape(hidden, -1)

    def to_hf(t):
        return (t.reshape(hidden, channels, patch, patch).permute(0, 2, 3, 1).reshape(hidden, -1),)

    return Transform("channels-last patch columns to channels-first", to_mcore, to_hf)
