"""Audio encoder on megatron-core: two 1-D convolutions over log-mel frames, sinusoidal positions, a non-causal
`TransformerBlock` over packed clips (the ViT's packed attention spec, TP and SP the same way), a final norm.

Layouts: log-mel features THD-style `[F, n_mels]` (`ops.log_mel`: clips back to back) with `cu_mel` int32 [N + 1];
output `[T, hidden]` with T = sum ceil(F_i / 2) and `cu` int32 [N + 1] (50 Hz states for 100 Hz mel frames). The
convolutions run per clip in one padded batch: after the first one every position past a clip's end is zeroed, so
the second (stride 2, padding 1) sees exactly the zero padding it sees when the clip is alone; attention never
crosses a clip (`cu_seqlens`). So packing never changes a clip's states (tests/models/test_audio.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig

from omni_mega.config import ParallelConfig
from omni_mega.config.model import AudioConfig
from omni_mega.models.vision.attention import VisionPackedSeqParams, block_spec


def audio_transformer_config(cfg: AudioConfig, parallel: ParallelConfig, dtype: torch.dtype) -> TransformerConfig:
    """megatron TransformerConfig of the encoder: TP/SP from `parallel`, never pipeline-split (it lives with the
    LLM's first pipeline stage, as the ViT does)."""
    cuda = torch.cuda.is_available()
    return TransformerConfig(
        num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
        ffn_hidden_size=cfg.ffn_hidden_size or 4 * cfg.hidden_size,
        kv_channels=cfg.hidden_size // cfg.num_attention_heads, normalization=cfg.normalization,
        layernorm_epsilon=cfg.norm_epsilon, gated_linear_unit=False, activation_func=F.gelu, add_bias_linear=True,
        init_method_std=cfg.init_method_std, attention_dropout=0.0, hidden_dropout=0.0,
        tensor_model_parallel_size=parallel.tp, pipeline_model_parallel_size=1, sequence_parallel=parallel.sp,
        params_dtype=dtype, bf16=dtype == torch.bfloat16, use_cpu_initialization=not cuda, bias_dropout_fusion=cuda,
        masked_softmax_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False,
        apply_rope_fusion=False,
    )


def sinusoids(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Whisper's sinusoidal position table at integer `positions` [T]: [T, dim] (sin half, then cos half)."""
    half = dim // 2
    step = math.log(10000.0) / max(half - 1, 1)
    inv = torch.exp(-step * torch.arange(half, dtype=torch.float32, device=positions.device))
    ang = positions.float()[:, None] * inv[None]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


def segment_positions(cu: torch.Tensor) -> torch.Tensor:
    """0, 1, ... restarting at every segment of int [N + 1] bounds: int64 [cu[-1]]."""
    lengths = (cu[1:] - cu[:-1]).long()
    starts = torch.repeat_interleave(cu[:-1].long(), lengths)
    return torch.arange(int(cu[-1]), device=cu.device) - starts


def pool_frames(x: torch.Tensor, cu: torch.Tensor, pool: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Averages each clip's states `pool` at a time (a last, shorter window averages what it has):
    x [T, h], cu int [N + 1] -> ([sum ceil(len_i / pool), h], int32 [N + 1])."""
    lengths = (cu[1:] - cu[:-1]).long()
    out_len = (lengths + pool - 1) // pool
    pos = segment_positions(cu)
    seg = torch.repeat_interleave(torch.arange(lengths.numel(), device=x.device), lengths)
    first = torch.cumsum(out_len, 0) - out_len
    target = first[seg] + pos // pool
    total = int(out_len.sum())
    sums = x.new_zeros(total, x.size(1)).index_add(0, target, x)
    counts = x.new_zeros(total).index_add(0, target, torch.ones_like(target, dtype=x.dtype))
    cu_out = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=x.device)
    cu_out[1:] = torch.cumsum(out_len, 0)
    return sums / counts[:, None], cu_out


class AudioEncoder(MegatronModule):
    """log-mel [F, n_mels] + cu_mel [N + 1] -> (states [T, hidden], cu [N + 1]), identical on every TP rank.

    Submodules (named groups): `conv1`, `conv2` (group `audio.conv`), `block.layers` (`audio.layers`),
    `block.final_layernorm`."""

    def __init__(self, cfg: AudioConfig, parallel: ParallelConfig, dtype: torch.dtype) -> None:
        config = audio_transformer_config(cfg, parallel, dtype)
        super().__init__(config=config)
        self.cfg, self.tp, self.sp = cfg, parallel.tp, parallel.sp
        d = cfg.hidden_size
        self.conv1 = torch.nn.Conv1d(cfg.n_mels, d, kernel_size=3, padding=1, dtype=dtype)
        self.conv2 = torch.nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1, dtype=dtype)
        for conv in (self.conv1, self.conv2):
            # He init for the GELUs: the front end's output then has about the sinusoids' scale (~0.7 RMS); with
            # torch's default init it is ~7x smaller, the block first sees mostly positions, and CTC sat on its
            # blank-only plateau for ~50 more steps in the synthetic-speech run.
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            torch.nn.init.zeros_(conv.bias)
        self.block = TransformerBlock(config=config, spec=block_spec(config, causal=False), post_layer_norm=True,
                                      pre_process=True, post_process=True)

    def set_input_tensor(self, tensor) -> None:  # never pipeline-split
        pass

    def front(self, mel: torch.Tensor, cu_mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolutions, per clip in one padded batch: ([T, hidden] packed, cu int32 [N + 1])."""
        lengths = (cu_mel[1:] - cu_mel[:-1]).long().tolist()
        n, longest = len(lengths), max(lengths)
        w = self.conv1.weight
        x = mel.new_zeros(n, longest, mel.size(1), dtype=w.dtype)
        valid = torch.zeros(n, longest, dtype=torch.bool, device=mel.device)
        for i, (a, L) in enumerate(zip(cu_mel.tolist(), lengths)):
            x[i, :L] = mel[a:a + L]
            valid[i, :L] = True
        h = F.gelu(self.conv1(x.transpose(1, 2)))  # [n, d, longest]
        h = h * valid[:, None, :].to(h.dtype)  # past a clip's end: the zero padding it has alone
        h = F.gelu(self.conv2(h)).transpose(1, 2)  # [n, ceil(longest / 2), d]
        out_len = [(L + 1) // 2 for L in lengths]
        keep = torch.arange(h.size(1), device=h.device)[None] < torch.tensor(out_len, device=h.device)[:, None]
        cu = torch.zeros(n + 1, dtype=torch.int32, device=mel.device)
        cu[1:] = torch.cumsum(torch.tensor(out_len, device=mel.device), 0)
        return h[keep], cu

    def forward(self, mel: torch.Tensor, cu_mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            mel: float [F, n_mels], clips back to back (`ops.log_mel`).
            cu_mel: int [N + 1] frame bounds; every clip has >= 1 frame.
        Returns:
            states [T, hidden] (config dtype, full on every TP rank), cu int32 [N + 1] with T = sum ceil(F_i / 2).
        """
        if mel.dim() != 2 or mel.size(1) != self.cfg.n_mels:
            raise ValueError(f"audio features must be [F, {self.cfg.n_mels}] (log-mel frames), got "
                             f"{tuple(mel.shape)}")
        if cu_mel.numel() < 2 or int(cu_mel[-1]) != mel.size(0) or bool(((cu_mel[1:] - cu_mel[:-1]) < 1).any()):
            raise ValueError(f"audio cu_seqlens {cu_mel.tolist()} must rise by >= 1 from 0 to {mel.size(0)} frames")
        x, cu = self.front(mel, cu_mel)
        t = segment_positions(cu)
        if self.cfg.positions == "sinusoid":
            x = x + sinusoids(t, x.size(1)).to(x.dtype)
        pos = torch.stack([torch.zeros_like(t), t], 1).to(torch.int32) if self.cfg.positions == "rope" else None
        total = x.size(0)
        pad = (-total) % self.tp if self.sp else 0
        cu_run = cu
        if pad:  # SP splits T across TP ranks: a separate throw-away segment fills it up
            x = torch.cat([x, x.new_zeros(pad, x.size(1))])
            cu_run = torch.cat([cu, cu.new_tensor([total + pad])])
            pos = None if pos is None else torch.cat([pos, pos.new_zeros(pad, 2)])
        lengths = cu_run[1:] - cu_run[:-1]
        params = VisionPackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_run, cu_seqlens_kv=cu_run,
                                       max_seqlen_q=int(lengths.max()), max_seqlen_kv=int(lengths.max()), pos=pos,
                                       rope_theta=10000.0, rope_layout="half")
        h = x[:, None, :]
        if self.sp:
            h = tensor_parallel.scatter_to_sequence_parallel_region(h)
        h = self.block(hidden_states=h, attention_mask=None, packed_seq_params=params)
        if self.sp:
            h = tensor_parallel.gather_from_sequence_parallel_region(h, tensor_parallel_output_grad=False)
        return h[:total, 0], cu
