"""Autoregressive generation with our own KV cache over a megatron GPTModel (or an OmniModel around one).

megatron-core's inference engines assume CUDA (they call torch.cuda.current_device() and allocate their caches there),
so this module runs the model's own submodules step by step: embedding (vocabulary-parallel), then per layer the
layer's norm, fused QKV projection (with q/k norms), RoPE at the tokens' absolute positions, the cache, attention,
output projection (row-parallel all-reduce) and MLP, then the final norm and the column-parallel output layer
(gathered). Under tensor parallelism every rank computes and caches only its own query groups; the logits are
gathered, so every rank picks the same token (sampling draws on TP rank 0 and is broadcast).

The cache is preallocated per layer ([max_len, 1, local query groups, head_dim] keys and values), sized for the
prompt plus `max_new_tokens`. The prompt is one prefill step (images go through the vision tower and connector there,
as in training); each new token is one step of a single position. `recompute=True` re-runs the whole sequence every
step instead (the baseline of benchmarks/inference/bench_generate.py). Pipeline parallelism is not supported here:
generation needs the whole model in one chunk per rank (load the checkpoint at pp=1, dist checkpoints reshard).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # nucleus sampling mass (with temperature > 0)
    seed: int = 0  # sampling generator seed
    eos_token_ids: list[int] = field(default_factory=list)  # generation stops at any of these (not returned)


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    ids: list[int]  # generated tokens, without the EOS that stopped generation
    stopped_at_eos: bool


class KVCache:
    """Keys and values of every layer for one sequence: [max_len, 1, groups on this TP rank, head_dim]."""

    def __init__(self, num_layers: int, max_len: int, groups: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        shape = (max_len, 1, groups, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len


def _unwrap(model):
    return getattr(model, "module", model)


class Generator:
    """`Generator(model, vocab_size).generate(prompt_ids, params, pixel_values=..., grid_thw=...)`.

    model: a GPTModel or OmniModel chunk holding the whole model (pre- and post-process), unwrapped or DDP-wrapped.
    vocab_size: the tokenizer's real vocabulary; the padding rows above it are never chosen."""

    def __init__(self, model, vocab_size: int) -> None:
        self.model = _unwrap(model)
        self.gpt = self.model.llm if hasattr(self.model, "llm") else self.model
        if not (self.gpt.pre_process and self.gpt.post_process):
            raise ValueError("generate: the model chunk must hold the whole model (pipeline parallel size 1)")
        if getattr(self.gpt.config, "multi_latent_attention", False):
            raise ValueError("generate: the KV cache holds query groups of standard attention; multi-latent attention "
                             "(model.llm.multi_latent_attention) is not supported yet")
        if getattr(self.gpt.config, "expert_model_parallel_size", 1) > 1:
            raise ValueError("generate: run with parallel.ep 1 (each rank needs every expert)")
        self.vocab_size = vocab_size
        self.cfg = self.gpt.config
        self.mrope = getattr(self.gpt, "position_embedding_type", "rope") == "mrope"
        self.scale = self.cfg.softmax_scale or 1.0 / math.sqrt(self.cfg.kv_channels)

    # ---- one forward step over `ids` at absolute positions start.. --------------------------------------------------
    def _rotary(self, n: int, start: int, pos3: torch.Tensor | None) -> torch.Tensor:
        rot = self.gpt.rotary_pos_emb
        if self.mrope:
            return rot(pos3, mrope_section=self.cfg.mrope_section)  # [n, 1, 1, dim]
        return rot.get_emb(n, offset=start)  # [n, 1, 1, dim], positions start..start+n-1

    def _step(self, ids: torch.Tensor, start: int, cache: KVCache, *, pos3: torch.Tensor | None = None,
              pixel_values=None, grid_thw=None) -> torch.Tensor:
        """ids int64 [1, n] at positions start..start+n-1 -> logits float32 [vocab_size] of the last position."""
        from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
        from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

        gpt, n = self.gpt, ids.shape[1]
        if gpt is not self.model and start == 0:  # the prompt: visual rows substituted at the placeholders
            h = self.model.embed(ids, None, pixel_values, grid_thw)
        else:
            h = gpt.embedding(input_ids=ids, position_ids=None)  # [n, 1, hidden]
        rot = self._rotary(n, start, pos3).to(h.device)
        end = start + n
        if end > cache.max_len:
            raise ValueError(f"generate: {end} positions exceed the cache ({cache.max_len})")
        # a single new position sees the whole cache: no mask
        causal = torch.ones(n, end, dtype=torch.bool, device=h.device).tril(diagonal=start) if n > 1 else None
        for li, layer in enumerate(gpt.decoder.layers):
            attn = layer.self_attention
            x = layer.input_layernorm(h)  # an identity under TE, whose linear_qkv holds the norm
            q, k, v = attn.get_query_key_value_tensors(x, None)[:3]  # [n, 1, heads or groups here, d]
            q = apply_rotary_pos_emb(q, rot, config=self.cfg)
            k = apply_rotary_pos_emb(k, rot, config=self.cfg)
            cache.k[li][start:end], cache.v[li][start:end] = k, v
            keys, values = cache.k[li][:end], cache.v[li][:end]
            rep = q.shape[2] // keys.shape[2]
            qh = q[:, 0].transpose(0, 1)  # [heads, n, d]
            kh = keys[:, 0].transpose(0, 1).repeat_interleave(rep, dim=0)
            vh = values[:, 0].transpose(0, 1).repeat_interleave(rep, dim=0)
            ctx = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=causal, scale=self.scale)
            ctx = ctx.transpose(0, 1).reshape(n, 1, -1)  # [n, 1, heads * d]
            out, bias = attn.linear_proj(ctx)
            h = h + out + (bias if bias is not None else 0)
            out, bias = layer.mlp(layer.pre_mlp_layernorm(h))
            h = h + out + (bias if bias is not None else 0)
        h = gpt.decoder.final_layernorm(h[-1:]) if gpt.decoder.final_layernorm is not None else h[-1:]
        weight = gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights else None
        logits, _ = gpt.output_layer(h, weight=weight)
        logits = gather_from_tensor_model_parallel_region(logits)  # [1, 1, padded vocab]
        return logits[0, 0, :self.vocab_size].float()

    # ---- the loop ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt_ids: list[int] | torch.Tensor, params: SamplingParams | None = None, *,
                 pixel_values: torch.Tensor | None = None, grid_thw: torch.Tensor | None = None,
                 recompute: bool = False) -> GenerationResult:
        p = params or SamplingParams()
        prompt = torch.as_tensor(prompt_ids, dtype=torch.int64).flatten()
        if prompt.numel() == 0:
            raise ValueError("generate: the prompt is empty")
        model = self.model
        was_training = model.training
        model.eval()
        dev = next(model.parameters()).device
        dtype = next(self.gpt.decoder.parameters()).dtype
        kv = self.gpt.decoder.layers[0].self_attention
        groups = kv.num_query_groups_per_partition
        cache = KVCache(len(self.gpt.decoder.layers), prompt.numel() + p.max_new_tokens, groups,
                        self.cfg.kv_channels, dtype, dev)
        gen = torch.Generator(device="cpu").manual_seed(p.seed)
        kw = {} if pixel_values is None else {"pixel_values": pixel_values.to(dev), "grid_thw": grid_thw.to(dev)}
        from omni_mega.runtime.cpu_mode import suspended

        try:
            with suspended():  # CPU mode's per-call hook would double a small model's step time
                out, stopped = self._loop(prompt.to(dev), p, cache, gen, kw, grid_thw, recompute)
        finally:
            model.train(was_training)
        return GenerationResult(prompt.tolist(), out, stopped)

    def _loop(self, seq, p: SamplingParams, cache: KVCache, gen, kw: dict, grid_thw, recompute: bool):
        pos3, delta = self._positions(seq.cpu(), grid_thw)
        out: list[int] = []
        logits = self._step(seq[None], 0, cache, pos3=pos3, **kw)  # the prompt (prefill)
        for i in range(p.max_new_tokens):
            nxt = self._pick(logits, p, gen)
            if nxt in p.eos_token_ids:
                return out, True
            out.append(nxt)
            if i == p.max_new_tokens - 1:
                break
            seq = torch.cat([seq, torch.tensor([nxt], device=seq.device)])
            if recompute:  # baseline: the whole sequence again, overwriting the cache from position 0
                full = self._positions(seq.cpu(), grid_thw)[0] if self.mrope else None
                logits = self._step(seq[None], 0, cache, pos3=full, **kw)
            else:  # one position; M-RoPE continues at (index + Qwen2-VL's rope delta) on all three axes
                t = seq.numel() - 1
                p3 = torch.full((3, 1, 1), t + delta, dtype=torch.long) if self.mrope else None
                logits = self._step(seq[None, -1:], t, cache, pos3=p3)
        return out, False

    def _positions(self, prompt: torch.Tensor, grid_thw) -> tuple[torch.Tensor | None, int]:
        """M-RoPE: the prompt's 3D positions [3, 1, n] and the offset of later tokens (Qwen2-VL's rope deltas)."""
        if not self.mrope:
            return None, 0
        from omni_mega.models.mrope import get_rope_index

        merge = self.model.merge_size if hasattr(self.model, "merge_size") else 2
        image_id = getattr(self.model, "image_token_id", -1)
        pos, delta = get_rope_index(prompt[None].cpu(), image_id, grid_thw, merge)
        return pos, int(delta[0])

    def _pick(self, logits: torch.Tensor, p: SamplingParams, gen: torch.Generator) -> int:
        if p.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / p.temperature, dim=-1).cpu()
        if p.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < p.top_p  # the smallest prefix whose mass reaches top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        tok = torch.multinomial(probs, 1, generator=gen)
        return _broadcast_from_tp_rank0(int(tok))


def _broadcast_from_tp_rank0(value: int) -> int:
    """Every TP rank holds the same logits but floating-point reductions may differ in the last bit: rank 0's draw
    is the one all ranks use."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    from megatron.core import parallel_state as ps

    if ps.get_tensor_model_parallel_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    if torch.cuda.is_available():
        t = t.cuda()
    dist.broadcast(t, src=ps.get_tensor_model_parallel_src_rank(), group=ps.get_tensor_model_parallel_group())
    return int(t.item())


@torch.no_grad()
def greedy_decode(model, prompt: torch.Tensor, *, eod: int, vocab_size: int, max_new_tokens: int = 64,
                  pixel_values: torch.Tensor | None = None, grid_thw: torch.Tensor | None = None) -> list[int]:
    """Greedy continuation of `prompt` (int64 [L]) until `eod` or `max_new_tokens`; the generated ids without the
    EOD. The demo's captions use it (training.generate)."""
    if prompt.dim() != 1 or prompt.numel() == 0:
        raise ValueError(f"greedy_decode: prompt must be a non-empty int64 [L] tensor, got shape {tuple(prompt.shape)}")
    params = SamplingParams(max_new_tokens=max_new_tokens, eos_token_ids=[eod])
    return Generator(model, vocab_size).generate(prompt, params, pixel_values=pixel_values, grid_thw=grid_thw).ids
