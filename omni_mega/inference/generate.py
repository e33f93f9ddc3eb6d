"""Autoregressive generation with our own KV cache over a megatron GPTModel (or an OmniModel around one), under the
training job's tensor and pipeline layout (`cached_forward`: the per-chunk forward, the cache, the pipeline sends).

`generate` continues one prompt; `sample` draws several continuations of one prompt; `sample_batch` several of
each of several prompts (GRPO's rollouts): every prompt is prefilled once (images go through the vision tower and
connector there, as in training) and its keys/values broadcast to its rows, then all rows decode together, one
batched step per position, each row at its own position and with its own seeded sampler. A row that stopped keeps
stepping (its result frozen) until every row has stopped or reached `max_new_tokens`. The last pipeline stage picks
the tokens (TP rank 0 draws, its draws are broadcast to the other TP ranks) and broadcasts them and their log-probs
to the other stages. `recompute=True` re-runs the whole sequence every step instead (the baseline of
benchmarks/inference/bench_generate.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from omni_mega.inference.cached_forward import CachedForward, KVCache, sequence_parallel_off

__all__ = ["GenerationResult", "Generator", "KVCache", "Prompt", "SamplingParams", "greedy_decode"]


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # nucleus sampling mass (with temperature > 0)
    seed: int = 0  # sampling generator seed (generate(); sample() takes one seed per row)
    eos_token_ids: list[int] = field(default_factory=list)  # generation stops at any of these (not returned)


@dataclass
class Prompt:
    ids: list[int] | torch.Tensor
    pixel_values: torch.Tensor | None = None
    grid_thw: torch.Tensor | None = None


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    ids: list[int]  # generated tokens, without the EOS that stopped generation
    stopped_at_eos: bool
    # log p(token) of each generated token (and of the EOS that stopped, last) under the model's distribution over
    # the whole padded vocabulary at temperature 1: what a training forward's cross entropy gives (RL's old policy)
    logprobs: list[float] = field(default_factory=list)


class Generator:
    """`Generator(model, vocab_size).generate(prompt_ids, params, pixel_values=..., grid_thw=...)`.

    model: this rank's GPTModel or OmniModel chunk (one chunk per rank: no virtual pipeline stages), unwrapped or
    DDP-wrapped. Every rank of the model-parallel group calls the same method with the same arguments.
    vocab_size: the tokenizer's real vocabulary; the padding rows above it are never chosen."""

    def __init__(self, model, vocab_size: int) -> None:
        self.fwd = CachedForward(model)
        self.vocab_size = vocab_size

    def generate(self, prompt_ids: list[int] | torch.Tensor, params: SamplingParams | None = None, *,
                 pixel_values: torch.Tensor | None = None, grid_thw: torch.Tensor | None = None,
                 recompute: bool = False) -> GenerationResult:
        p = params or SamplingParams()
        return self._run([Prompt(prompt_ids, pixel_values, grid_thw)], p, [[p.seed]], recompute)[0][0]

    def sample(self, prompt_ids: list[int] | torch.Tensor, params: SamplingParams, seeds: list[int], *,
               pixel_values: torch.Tensor | None = None, grid_thw: torch.Tensor | None = None
               ) -> list[GenerationResult]:
        """len(seeds) continuations of one prompt (row i samples with seeds[i]; params.seed is not used)."""
        return self._run([Prompt(prompt_ids, pixel_values, grid_thw)], params, [list(seeds)], False)[0]

    def sample_batch(self, prompts: list[Prompt], params: SamplingParams, seeds: list[list[int]]
                     ) -> list[list[GenerationResult]]:
        """len(seeds[i]) continuations of prompts[i], for every i, decoded together."""
        return self._run(prompts, params, [list(s) for s in seeds], False)

    # ---- the loop ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, prompts: list[Prompt], p: SamplingParams, seeds: list[list[int]],
             recompute: bool) -> list[list[GenerationResult]]:
        if not prompts or len(prompts) != len(seeds) or any(not s for s in seeds):
            raise ValueError("sample: give each prompt at least one seed")
        ids = [torch.as_tensor(x.ids, dtype=torch.int64).flatten() for x in prompts]
        if any(x.numel() == 0 for x in ids):
            raise ValueError("generate: the prompt is empty")
        model = self.fwd.model
        was_training = model.training
        model.eval()
        from omni_mega.runtime.cpu_mode import suspended

        try:
            with suspended(), sequence_parallel_off(model):  # CPU mode's per-call hook would double a step's time
                rows = self._loop(prompts, ids, p, seeds, recompute)
        finally:
            model.train(was_training)
        out, r = [], 0
        for x, s in zip(ids, seeds):
            out.append([GenerationResult(x.tolist(), *rows[r + i]) for i in range(len(s))])
            r += len(s)
        return out

    def _loop(self, prompts: list[Prompt], ids: list[torch.Tensor], p: SamplingParams, seeds: list[list[int]],
              recompute: bool) -> list[tuple[list[int], bool, list[float]]]:
        fwd, dev = self.fwd, self.fwd.device
        counts = [len(s) for s in seeds]
        b = sum(counts)
        if recompute and b != 1:
            raise ValueError("generate: recompute runs one sequence")
        lengths = torch.tensor([len(x) for x, c in zip(ids, counts) for _ in range(c)])
        cache = fwd.new_cache(int(lengths.max()) + p.max_new_tokens, b)
        gens = [torch.Generator(device="cpu").manual_seed(s) for row in seeds for s in row]
        heads, deltas, r0 = [], [], 0
        for x, pr, c in zip(ids, prompts, counts):  # each prompt once, into its rows
            pos3, delta = self._positions(x, pr.grid_thw)
            out = fwd.prefill(x[None].to(dev), slice(r0, r0 + c), cache, pos3=pos3, **_images(pr, dev))
            if out is not None:  # the last pipeline stage
                heads.append(out.expand(c, -1))
            deltas += [delta] * c
            r0 += c
        logits = torch.cat(heads) if heads else None
        outs: list[list[int]] = [[] for _ in range(b)]
        lps: list[list[float]] = [[] for _ in range(b)]
        stopped = [False] * b
        for i in range(p.max_new_tokens):
            live = [r for r in range(b) if not stopped[r]]
            picks, logp = self._pick(logits, p, gens, live, b)
            for r in live:
                lps[r].append(logp[r])
                if picks[r] in p.eos_token_ids:
                    stopped[r] = True
                else:
                    outs[r].append(picks[r])
            if all(stopped) or i == p.max_new_tokens - 1:
                break
            if recompute:  # baseline (one row): the whole sequence again, overwriting the cache from position 0
                seq = torch.cat([ids[0], torch.tensor(outs[0], dtype=torch.int64)])
                full = self._positions(seq, prompts[0].grid_thw)[0] if fwd.mrope else None
                logits = fwd.prefill(seq[None].to(dev), slice(0, 1), cache, pos3=full, **_images(prompts[0], dev))
                continue
            last = torch.tensor([[o[-1] if o else 0] for o in outs], dtype=torch.int64, device=dev)
            positions = lengths + i  # the token picked at step i sits at prompt length + i
            # M-RoPE continues at (index + Qwen2-VL's rope delta) on all three axes
            p3 = (positions + torch.tensor(deltas))[None, :, None].expand(3, b, 1) if fwd.mrope else None
            logits = fwd.decode(last, positions, cache, pos3=p3)
        return list(zip(outs, stopped, lps))

    def _positions(self, prompt: torch.Tensor, grid_thw) -> tuple[torch.Tensor | None, int]:
        """M-RoPE: the prompt's 3D positions [3, 1, n] and the offset of later tokens (Qwen2-VL's rope deltas)."""
        if not self.fwd.mrope:
            return None, 0
        from omni_mega.models.mrope import get_rope_index

        model = self.fwd.model
        merge = model.merge_size if hasattr(model, "merge_size") else 2
        image_id = getattr(model, "image_token_id", -1)
        pos, delta = get_rope_index(prompt[None].cpu(), image_id, grid_thw, merge)
        return pos, int(delta[0])

    def _pick(self, logits: torch.Tensor | None, p: SamplingParams, gens: list, live: list[int],
              b: int) -> tuple[list[int], list[float]]:
        """The next token of every row and its log-prob (rows not live get 0): drawn on the last pipeline stage
        from logits [b, padded vocab], broadcast to the others."""
        picks = torch.zeros(b, dtype=torch.int64)
        logp = torch.zeros(b, dtype=torch.float64)
        if logits is not None:
            real = logits[:, :self.vocab_size]
            if p.temperature <= 0:
                picks = real.argmax(dim=-1).cpu()
            else:
                probs = torch.softmax(real / p.temperature, dim=-1).cpu()
                if p.top_p < 1.0:
                    sorted_p, order = probs.sort(dim=-1, descending=True)
                    keep = sorted_p.cumsum(-1) - sorted_p < p.top_p  # the smallest prefix whose mass reaches top_p
                    probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
                for r in live:
                    picks[r] = int(torch.multinomial(probs[r], 1, generator=gens[r]))
            picks = _broadcast(picks, "tp")
            logp = torch.log_softmax(logits, dim=-1).gather(1, picks.to(logits.device)[:, None])[:, 0].double().cpu()
        picks, logp = _broadcast(picks, "pp"), _broadcast(logp, "pp")
        return picks.tolist(), logp.tolist()


def _images(prompt: Prompt, dev) -> dict:
    if prompt.pixel_values is None:
        return {}
    return {"pixel_values": prompt.pixel_values.to(dev), "grid_thw": prompt.grid_thw.to(dev)}


def _broadcast(t: torch.Tensor, over: str) -> torch.Tensor:
    """tp: TP rank 0's values to the other TP ranks (they hold the same logits, but floating-point reductions may
    differ in the last bit); pp: the last pipeline stage's values to the other stages."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return t
    from megatron.core import parallel_state as ps

    if over == "tp":
        size, src, group = (ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_src_rank(),
                            ps.get_tensor_model_parallel_group())
    else:
        size, src, group = (ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_last_rank(),
                            ps.get_pipeline_model_parallel_group())
    if size == 1:
        return t
    x = t.cuda() if torch.cuda.is_available() else t.clone()
    dist.broadcast(x, src=src, group=group)
    return x.cpu()


@torch.no_grad()
def greedy_decode(model, prompt: torch.Tensor, *, eod: int, vocab_size: int, max_new_tokens: int = 64,
                  pixel_values: torch.Tensor | None = None, grid_thw: torch.Tensor | None = None) -> list[int]:
    """Greedy continuation of `prompt` (int64 [L]) until `eod` or `max_new_tokens`; the generated ids without the
    EOD. The demo's captions use it (training.generate)."""
    if prompt.dim() != 1 or prompt.numel() == 0:
        raise ValueError(f"greedy_decode: prompt must be a non-empty int64 [L] tensor, got shape {tuple(prompt.shape)}")
    params = SamplingParams(max_new_tokens=max_new_tokens, eos_token_ids=[eod])
    return Generator(model, vocab_size).generate(prompt, params, pixel_values=pixel_values, grid_thw=grid_thw).ids
