"""The Talker: a small causal transformer (megatron `TransformerBlock`, the packed attention spec) that speaks codec
codes, conditioned on the text it says.

A sample is laid out as `text ids (L) | BOS | frame 0 .. frame F-2` (packed with `cu_seqlens`, attention causal and
never across samples); the state at BOS predicts frame 0, the state at frame j-1 frame j, and the state at the last
frame predicts the end (EOS). A frame's input embedding is the sum of its codes' embeddings (one table row per
codebook entry). Two heads: the base head over codebook 0's entries + EOS, the residual head over the entries of
each later codebook. So the sample has F + 1 base targets and F residual targets per later codebook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig

from omni_mega.config import ParallelConfig
from omni_mega.config.model import CodecConfig, TalkerConfig
from omni_mega.models.vision.attention import VisionPackedSeqParams, block_spec


def talker_transformer_config(cfg: TalkerConfig, parallel: ParallelConfig, dtype: torch.dtype) -> TransformerConfig:
    cuda = torch.cuda.is_available()
    return TransformerConfig(
        num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
        ffn_hidden_size=cfg.ffn_hidden_size or 4 * cfg.hidden_size,
        kv_channels=cfg.hidden_size // cfg.num_attention_heads, normalization="LayerNorm", layernorm_epsilon=1e-5,
        gated_linear_unit=False, activation_func=F.gelu, add_bias_linear=True, init_method_std=cfg.init_method_std,
        attention_dropout=0.0, hidden_dropout=0.0, tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=1, sequence_parallel=parallel.sp, params_dtype=dtype,
        bf16=dtype == torch.bfloat16, use_cpu_initialization=not cuda, bias_dropout_fusion=cuda,
        masked_softmax_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False,
        apply_rope_fusion=False,
    )


class Talker(MegatronModule):
    """Submodules (group `talker`): `text_embed`, `code_embed`, `pos_embed`, `block` (`talker.layers`),
    `base_head`, `res_head`."""

    def __init__(self, cfg: TalkerConfig, codec: CodecConfig, parallel: ParallelConfig, dtype: torch.dtype) -> None:
        config = talker_transformer_config(cfg, parallel, dtype)
        super().__init__(config=config)
        self.cfg, self.tp, self.sp = cfg, parallel.tp, parallel.sp
        self.codebooks, self.codebook_size = codec.codebooks, codec.codebook_size
        d, std = cfg.hidden_size, cfg.init_method_std
        self.bos = codec.codebooks * codec.codebook_size  # the BOS row of code_embed
        self.eos = codec.codebook_size  # the EOS class of the base head
        self.text_embed = torch.nn.Embedding(cfg.text_vocab_size, d, dtype=dtype)
        self.code_embed = torch.nn.Embedding(self.bos + 1, d, dtype=dtype)
        self.pos_embed = torch.nn.Embedding(cfg.max_positions, d, dtype=dtype)
        for e in (self.text_embed, self.code_embed, self.pos_embed):
            torch.nn.init.normal_(e.weight, std=std)
        self.block = TransformerBlock(config=config, spec=block_spec(config, causal=True), post_layer_norm=True,
                                      pre_process=True, post_process=True)
        self.base_head = torch.nn.Linear(d, codec.codebook_size + 1, dtype=dtype)
        self.res_head = torch.nn.Linear(d, max(codec.codebooks - 1, 1) * codec.codebook_size, dtype=dtype)

    def set_input_tensor(self, tensor) -> None:
        pass

    def layout(self, text: torch.Tensor, text_cu: torch.Tensor, codes: torch.Tensor,
               codes_cu: torch.Tensor) -> dict:
        """Index tensors of the packed sequence: per position whether it is text, BOS or a frame, and which row; the
        positions whose states predict frames (and EOS)."""
        lt = (text_cu[1:] - text_cu[:-1]).tolist()
        lf = (codes_cu[1:] - codes_cu[:-1]).tolist()
        is_text, rows, pos, predict, cu = [], [], [], [], [0]
        for i, (a, b) in enumerate(zip(lt, lf)):
            start, t0, f0 = cu[-1], int(text_cu[i]), int(codes_cu[i])
            is_text += [1] * a + [0] * (b + 1)
            rows += list(range(t0, t0 + a)) + [-1] + list(range(f0, f0 + b))  # -1: BOS
            pos += list(range(a + b + 1))
            predict += list(range(start + a, start + a + b + 1))  # BOS .. last frame: frames 0..F-1, then EOS
            cu.append(start + a + b + 1)
        dev = text.device
        return {"is_text": torch.tensor(is_text, dtype=torch.bool, device=dev),
                "rows": torch.tensor(rows, dtype=torch.int64, device=dev),
                "pos": torch.tensor(pos, dtype=torch.int64, device=dev),
                "predict": torch.tensor(predict, dtype=torch.int64, device=dev),
                "cu": torch.tensor(cu, dtype=torch.int32, device=dev)}

    def frame_embeddings(self, codes: torch.Tensor) -> torch.Tensor:
        """int [F, Q] -> [F, d]: the sum of each frame's code embeddings."""
        offsets = torch.arange(codes.size(1), device=codes.device) * self.codebook_size
        return self.code_embed(codes + offsets[None]).sum(1)

    def forward(self, text: torch.Tensor, text_cu: torch.Tensor, codes: torch.Tensor,
                codes_cu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            text: int64 [sum L] conditioning ids, text_cu: int [N + 1]; codes: int64 [sum F, Q], codes_cu: int [N + 1].
        Returns:
            base logits [sum (F + 1), K + 1] (frames 0..F-1 then EOS, per sample in order) and residual logits
            [sum F, Q - 1, K] (at the frame-predicting positions; empty along Q - 1 when Q == 1).
        """
        lay = self.layout(text, text_cu, codes, codes_cu)
        rows = lay["rows"]
        x = self.code_embed.weight.new_zeros(rows.numel(), self.cfg.hidden_size)
        t, f = lay["is_text"], ~lay["is_text"] & (rows >= 0)
        if bool(t.any()):
            x = x.index_put((t.nonzero(as_tuple=True)[0],), self.text_embed(text[rows[t]]))
        if bool(f.any()):
            x = x.index_put((f.nonzero(as_tuple=True)[0],), self.frame_embeddings(codes[rows[f]]))
        bos = ~t & (rows < 0)
        x = x + bos[:, None].to(x.dtype) * self.code_embed.weight[self.bos][None]
        if int(lay["pos"].max()) >= self.cfg.max_positions:
            raise ValueError(f"talker: a sample of {int(lay['pos'].max()) + 1} positions exceeds "
                             f"model.talker.max_positions={self.cfg.max_positions}")
        x = x + self.pos_embed(lay["pos"])
        h = self._run(x, lay["cu"])[lay["predict"]]
        base = self.base_head(h)
        frame_rows = self._frame_rows(codes_cu)
        res = self.res_head(h[frame_rows]).view(-1, max(self.codebooks - 1, 1), self.codebook_size)
        return base, res[:, : self.codebooks - 1]

    def _frame_rows(self, codes_cu: torch.Tensor) -> torch.Tensor:
        """Rows of the predicting positions that predict a frame (every row but each sample's last, the EOS)."""
        lf = (codes_cu[1:] - codes_cu[:-1]).long()
        starts = torch.cumsum(lf + 1, 0) - (lf + 1)
        return torch.cat([torch.arange(int(n), device=codes_cu.device) + s for n, s in zip(lf, starts)]) \
            if lf.numel() else torch.zeros(0, dtype=torch.long, device=codes_cu.device)

    def _run(self, x: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
        total = x.size(0)
        pad = (-total) % self.tp if self.sp else 0
        if pad:
            x = torch.cat([x, x.new_zeros(pad, x.size(1))])
            cu = torch.cat([cu, cu.new_tensor([total + pad])])
        lengths = cu[1:] - cu[:-1]
        params = VisionPackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                                       max_seqlen_q=int(lengths.max()), max_seqlen_kv=int(lengths.max()), pos=None)
        h = x[:, None, :]
        if self.sp:
            h = tensor_parallel.scatter_to_sequence_parallel_region(h)
        h = self.block(hidden_states=h, attention_mask=None, packed_seq_params=params)
        if self.sp:
            h = tensor_parallel.gather_from_sequence_parallel_region(h, tensor_parallel_output_grad=False)
        return h[:total, 0]

    @torch.no_grad()
    def generate(self, text: torch.Tensor, max_frames: int, *, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Codes int64 [F, Q] spoken for int64 text ids [L] (one sample; recomputes the sequence each frame, which
        is fine at the Talker's size): greedy (temperature 0) or sampled, until EOS or `max_frames`."""
        dev = text.device
        codes = torch.zeros(0, self.codebooks, dtype=torch.int64, device=dev)
        text_cu = torch.tensor([0, text.numel()], dtype=torch.int32, device=dev)
        for _ in range(max_frames):
            # A provisional frame (zeros) makes the layout predict the next one at its last frame position.
            base, res = self.forward(text, text_cu, torch.cat([codes, codes.new_zeros(1, self.codebooks)]),
                                     torch.tensor([0, codes.size(0) + 1], dtype=torch.int32, device=dev))
            b, r = base[codes.size(0)], res[codes.size(0)]
            nxt0 = _pick(b, temperature, generator)
            if nxt0 == self.eos:
                break
            rest = [_pick(r[q], temperature, generator) for q in range(self.codebooks - 1)]
            codes = torch.cat([codes, torch.tensor([[nxt0, *rest]], dtype=torch.int64, device=dev)])
        return codes


def _pick(logits: torch.Tensor, temperature: float, generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    p = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(p, 1, generator=generator))
