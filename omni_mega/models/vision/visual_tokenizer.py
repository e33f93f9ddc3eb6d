"""Ovis visual tokenizer: a visual head (bias-free Linear to Vt = V - n_ind logits + LayerNorm over the vocabulary)
and the Visual Embedding Table (VET): e = softmax(LN(x W^T)) @ table[:Vt]; indicator tokens (image begin/end, ...)
are the hard rows table[Vt + i].

Storage: the Vt visual rows of the head, its LayerNorm and the table are padded to Vp = a multiple of lcm(128, tp)
(the same shapes for every power-of-two tp, so dist checkpoints reshard) and split over the vocabulary across TP
ranks (Vp / tp rows each); padded rows are masked out of every statistic and get zero gradient. The n_ind indicator
rows are a separate small table, replicated.

Forward: with tp = 1 the fused `ops.visual_head_vet` (never holds [N, V]); with tp > 1 a plain-PyTorch path over this
rank's [N, Vp/tp] slice whose vocabulary-wide statistics are all-reduced over TP: the LayerNorm mean and variance
and the softmax denominator with `torch.distributed.nn.functional.all_reduce` (its backward all-reduces too, since
every rank's slice depends on them), the max with a detached MAX all-reduce (softmax is shift invariant), and the
partial p @ table with megatron's reduce_from_tensor_model_parallel_region (the consumer is replicated).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

from omni_mega.models.llm import padded_vocab_size


def _tp_param(rows: int, cols: int | None, dtype, init) -> torch.nn.Parameter:
    shape = (rows,) if cols is None else (rows, cols)
    p = torch.nn.Parameter(init(torch.empty(shape, dtype=dtype)))
    # Marks a vocabulary-sharded parameter for megatron (grad-norm counting, checkpoint metadata).
    tensor_parallel.set_tensor_model_parallel_attributes(p, is_parallel=True, dim=0, stride=1)
    return p


class _ShardedRows(MegatronModule):
    """Base: parameters named in `_tp_axes` are split along dim 0 over TP in dist checkpoints."""

    _tp_axes: dict[str, int] = {}

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        sd = self.state_dict(prefix="", keep_vars=True)
        return make_sharded_tensors_for_checkpoint(sd, prefix, self._tp_axes, sharded_offsets)


class VisualHead(_ShardedRows):
    """weight [Vp/tp, d_in], ln_weight / ln_bias [Vp/tp]: this rank's rows of the head and its vocabulary LayerNorm."""

    _tp_axes = {"weight": 0, "ln_weight": 0, "ln_bias": 0}

    def __init__(self, config, d_in: int, local_rows: int, dtype, std: float) -> None:
        super().__init__(config=config)
        self.weight = _tp_param(local_rows, d_in, dtype, lambda t: torch.nn.init.normal_(t, std=std))
        self.ln_weight = _tp_param(local_rows, None, dtype, torch.nn.init.ones_)
        self.ln_bias = _tp_param(local_rows, None, dtype, torch.nn.init.zeros_)


class VisualEmbeddingTable(_ShardedRows):
    """table [Vp/tp, D] (this rank's visual rows), indicators [n_ind, D] (replicated)."""

    _tp_axes = {"table": 0}

    def __init__(self, config, local_rows: int, dim: int, num_indicators: int, dtype, std: float) -> None:
        super().__init__(config=config)
        self.table = _tp_param(local_rows, dim, dtype, lambda t: torch.nn.init.normal_(t, std=std))
        self.indicators = None
        if num_indicators:
            self.indicators = torch.nn.Parameter(torch.randn(num_indicators, dim, dtype=dtype) * std)


class VisualTokenizer(MegatronModule):
    """x [N, d_in] -> [N, D] visual embeddings (full on every TP rank); `indicator(ids)` -> [n, D]."""

    def __init__(self, config, d_in: int, dim: int, visual_vocab_size: int, num_indicators: int, tp: int,
                 dtype: torch.dtype, ln_eps: float = 1e-5) -> None:
        super().__init__(config=config)
        self.vt = visual_vocab_size - num_indicators  # visual rows that get probability mass
        self.vp = padded_vocab_size(self.vt, tp)
        self.tp, self.ln_eps, self.num_indicators = tp, ln_eps, num_indicators
        local = self.vp // tp
        std = config.init_method_std
        self.head = VisualHead(config, d_in, local, dtype, std)
        self.vet = VisualEmbeddingTable(config, local, dim, num_indicators, dtype, std)
        start = (ps.get_tensor_model_parallel_rank() if tp > 1 else 0) * local
        self.register_buffer("valid", torch.arange(start, start + local) < self.vt, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, d_in] float (the head's dtype). Returns [N, D] in the table's dtype."""
        h, t = self.head, self.vet
        if self.tp == 1:
            from omni_mega.ops import visual_head_vet

            vt = self.vt  # the padded rows are sliced off: they get exact zero gradients
            return visual_head_vet(x, h.weight[:vt], h.ln_weight[:vt], h.ln_bias[:vt], t.table[:vt],
                                   num_indicators=0, ln_eps=self.ln_eps)
        return self._forward_tp(x)

    def _forward_tp(self, x: torch.Tensor) -> torch.Tensor:
        from torch.distributed.nn.functional import all_reduce

        group = ps.get_tensor_model_parallel_group()
        h, valid = self.head, self.valid.to(x.device)
        x = tensor_parallel.copy_to_tensor_model_parallel_region(x)  # backward: sum dx over the vocabulary split
        acc = torch.promote_types(x.dtype, torch.float32)  # statistics in fp32 (fp64 for fp64), like the op
        logits = F.linear(x, h.weight).to(acc)  # [N, Vl]
        m = valid.to(acc)
        mean = all_reduce((logits * m).sum(-1, keepdim=True), group=group) / self.vt
        dev = (logits - mean) * m
        var = all_reduce((dev * dev).sum(-1, keepdim=True), group=group) / self.vt
        z = dev * torch.rsqrt(var + self.ln_eps) * h.ln_weight.to(acc) + h.ln_bias.to(acc)
        z = z.masked_fill(~valid, float("-inf"))
        zmax = z.detach().amax(-1, keepdim=True)
        torch.distributed.all_reduce(zmax, op=torch.distributed.ReduceOp.MAX, group=group)
        e = torch.exp(z - zmax)  # padded rows: exp(-inf) = 0
        p = e / all_reduce(e.sum(-1, keepdim=True), group=group)
        partial = p.to(self.vet.table.dtype) @ self.vet.table  # [N, D], this rank's rows only
        return tensor_parallel.reduce_from_tensor_model_parallel_region(partial)

    def indicator(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: int [n] in [0, num_indicators). Returns [n, D] rows of the indicator table."""
        from omni_mega.ops import vet_indicator

        return vet_indicator(ids, self.vet.indicators, self.num_indicators)
