"""LLaVA projector: a 2-layer megatron MLP (column-parallel fc1, GELU, row-parallel fc2) from merged ViT features to
the LLM width. It runs replicated over the sequence on every TP rank (never sequence-parallel: its input comes
gathered from the ViT and its output is scattered into the LLM's embeddings)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from omni_mega.config import ParallelConfig


def projector_config(out_size: int, hidden: int, parallel: ParallelConfig, dtype: torch.dtype,
                     std: float = 0.02) -> TransformerConfig:
    return TransformerConfig(
        num_layers=1, hidden_size=out_size, ffn_hidden_size=hidden, num_attention_heads=parallel.tp,  # heads unused
        add_bias_linear=True,
        gated_linear_unit=False, activation_func=F.gelu, bias_activation_fusion=False, init_method_std=std,
        tensor_model_parallel_size=parallel.tp, sequence_parallel=False, params_dtype=dtype,
        bf16=dtype == torch.bfloat16, use_cpu_initialization=not torch.cuda.is_available(),
        gradient_accumulation_fusion=False,
    )


class Projector(MegatronModule):
    """x [N, in_size] -> [N, out_size] (x's leading axis kept); every TP rank gets the full output."""

    def __init__(self, in_size: int, out_size: int, hidden: int, parallel: ParallelConfig, dtype: torch.dtype) -> None:
        config = projector_config(out_size, hidden, parallel, dtype)
        super().__init__(config=config)
        self.mlp = MLP(config, MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
                       input_size=in_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, bias = self.mlp(x[:, None, :])  # megatron [s, b, h] with b = 1
        out = out if bias is None else out + bias
        return out[:, 0]
