"""Norms that support sequence parallelism, for megatron layer specs built without TransformerEngine.

megatron-core's local `WrappedTorchNorm` asserts under sequence parallelism. With SP each tensor-parallel rank
normalizes its own slice of the sequence, so the norm's weight (and bias) gradients are partial sums over that
slice: marking the parameters `sequence_parallel = True` makes megatron's `finalize_model_grads` all-reduce those
gradients over the TP group (see `_allreduce_non_tensor_model_parallel_grads`). The forward itself needs nothing
(normalization is per token). Parameter names match torch's LayerNorm/RMSNorm, so checkpoints are interchangeable
with the local spec's norms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig


class SPNorm(torch.nn.Module):
    """RMSNorm or LayerNorm (per `config.normalization`) over the last axis, usable with sequence parallelism.

    Megatron norm constructor contract: `(config, hidden_size, eps)`. Input any shape [..., hidden_size] (float),
    output the same shape and dtype.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_unused) -> None:
        super().__init__()
        if config.normalization not in ("RMSNorm", "LayerNorm"):
            raise ValueError(f"SPNorm: config.normalization must be RMSNorm or LayerNorm, got {config.normalization!r}")
        if config.layernorm_zero_centered_gamma:
            raise ValueError("SPNorm: layernorm_zero_centered_gamma is not supported")
        self.rms = config.normalization == "RMSNorm"
        self.eps = eps
        self.hidden_size = hidden_size
        dtype = config.params_dtype
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=dtype))
        self.bias = None if self.rms else torch.nn.Parameter(torch.zeros(hidden_size, dtype=dtype))
        for p in (self.weight, self.bias):
            if p is not None:
                # read by megatron's finalize_model_grads: all-reduce this grad over TP when SP is on.
                setattr(p, "sequence_parallel", bool(config.sequence_parallel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms:
            return F.rms_norm(x, (self.hidden_size,), self.weight, self.eps)
        return F.layer_norm(x, (self.hidden_size,), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{'RMSNorm' if self.rms else 'LayerNorm'}({self.hidden_size}, eps={self.eps})"
