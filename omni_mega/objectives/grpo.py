"""`objective: grpo`: Group Relative Policy Optimization with verifiable rewards (Ovis2.5's P5).

Per step, before the forward and backward passes (`before_step`), each rank answers its prompts (`data.prompt_source`)
with the training model itself through the KV-cache generator (`inference.generate`, the same TP layout; weights
are never copied to another engine): `group_size` samples per prompt at the configured temperature / top-p, each
with a seed derived from (data seed, stage, rollout batch, prompt, sample), so a resumed run draws the same
rollouts. The generator's log-probs of the sampled tokens (over the whole padded vocabulary, temperature 1, what a
training forward's cross entropy gives) are the old policy's. Rewards (`rewards`) are weighted and summed; the
advantage of a sample is A = (r - mean of its group) / (population std of its group + 1e-4), so a group whose
samples all score the same contributes no gradient. With `kl_beta` > 0 a frozen copy of the stage's initial weights
scores the rollouts for the k3 estimate of KL(pi || ref) = exp(ref - logp) - (ref - logp) - 1.

The rollouts (prompt + response, the loss on the response tokens) are packed first-fit into sequences of the stage's
length and trained on with the per-token loss
    -min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A) + kl_beta k3,   rho = exp(logp - logp_old),
averaged over the response tokens of the global batch (megatron's per-token mode). With `ppo_epochs` k, k
consecutive steps train on the same rollout batch (the data source repeats its prompts); the rollouts are kept in
the trainer state, so a resume inside a rollout batch continues on the same ones.
Metrics: `reward_mean`, `reward_std`, `reward/<name>`, `kl`, `clip_fraction`, `response_length`,
`rollout_tokens_per_s`, `rollout_ms`, `zero_advantage_groups` (share of groups with equal rewards).
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import torch

from omni_mega.objectives.base import Objective, StageContext, metric, model_inputs
from omni_mega.objectives.rewards import build_rewards

ADV_EPS = 1e-4


def advantages(rewards: torch.Tensor) -> torch.Tensor:
    """float64 [groups, G] rewards -> advantages, normalised within each group by its population std."""
    r = rewards.double()
    return (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, unbiased=False, keepdim=True) + ADV_EPS)


def k3(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 (>= 0, 0 when equal)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(cfg, batch: dict, per_token_loss: torch.Tensor):
    """megatron per-token loss_func over the response tokens of a packed micro-batch of rollouts."""
    mask = batch["loss_mask"].reshape(-1).float()
    logp = -per_token_loss.float().reshape(-1)
    adv = batch["advantage"].reshape(-1).float()
    ratio = torch.exp(logp - batch["old_logp"].reshape(-1).float())
    clipped = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
    pg = -torch.min(ratio * adv, clipped * adv)
    kl = k3(batch["ref_logp"].reshape(-1).float(), logp) if "ref_logp" in batch else torch.zeros_like(logp)
    per_token = pg + cfg.kl_beta * kl
    was_clipped = ((ratio < 1 - cfg.clip_low) & (adv < 0)) | ((ratio > 1 + cfg.clip_high) & (adv > 0))
    n = mask.sum()
    total = (per_token * mask).sum()
    values = {"loss": metric(total, n), "pg_loss": metric((pg * mask).sum(), n), "kl": metric((kl * mask).sum(), n),
              "clip_fraction": metric((was_clipped.float() * mask).sum(), n)}
    return total, n.to(torch.int), values


def _forward(loss_fn, data_iterator, model):
    batch = next(data_iterator)
    labels = batch["labels"].masked_fill(batch["loss_mask"] == 0, 0)
    out = model(batch["tokens"], batch["position_ids"], None, labels=labels, **model_inputs(batch))
    return out, partial(loss_fn, batch)


def _ref_logps(batch: dict, per_token_loss: torch.Tensor):
    """loss_func of the reference pass: the per-token log-probs, carried out in the values dict."""
    zero = per_token_loss.sum() * 0.0
    return zero, {"ref_logp": (-per_token_loss.detach().float()).cpu()}


class GRPOObjective(Objective):
    name = "grpo"
    metric_names = ("loss", "pg_loss", "kl", "clip_fraction")
    per_token_loss = True  # averaged over the global batch's response tokens

    def __init__(self, plan) -> None:
        self.plan, self.cfg = plan, plan.cfg.grpo
        self.rewards = build_rewards(self.cfg.rewards)
        self.reference: list | None = None
        self.rollouts: dict | None = None  # {"batch": rollout batch index, "samples": [...], "metrics": {...}}
        self._metrics: dict = {}

    def forward_step(self, data_iterator, model):
        return _forward(partial(grpo_loss, self.cfg), data_iterator, model)

    def start_stage(self, ctx: StageContext) -> None:
        if self.cfg.kl_beta > 0:
            self.reference = ctx.reference_model()

    # ---- rollouts ---------------------------------------------------------------------------------------------------
    def _seed(self, batch: int, key: tuple[int, int], g: int) -> int:
        return hash((self.plan.seed, self.plan.index, batch, key[0], key[1], g)) % (2**31 - 1)

    def _rollout(self, ctx: StageContext, prompts: list[dict], batch: int) -> dict:
        from omni_mega.data.conversations.templates import tokenizer_decoder
        from omni_mega.inference import Generator, Prompt, SamplingParams

        t0 = time.perf_counter()
        vocab, stops = {int(p["tokenizer"]["vocab_size"]) for p in prompts}, {p["stop_id"] for p in prompts}
        if len(vocab) != 1 or len(stops) != 1:
            raise ValueError(f"grpo: the prompts of one step come from different tokenizers (vocab sizes {vocab}, "
                             f"end-of-turn ids {stops}); a stage's prompt datasets must share one")
        params = SamplingParams(max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                                top_p=self.cfg.top_p, eos_token_ids=list(stops))
        # every prompt of this rank prefilled once; all their samples decoded together
        results = Generator(ctx.model[0], vocab.pop()).sample_batch(
            [Prompt(p["prompt_ids"], p["pixel_values"], p["grid_thw"]) for p in prompts], params,
            [[self._seed(batch, p["key"], g) for g in range(self.cfg.group_size)] for p in prompts])
        samples, generated = [], 0
        for p, group_results in zip(prompts, results):
            decode = tokenizer_decoder(p["tokenizer"])
            group = []
            for g, res in enumerate(group_results):
                response = res.ids + ([p["stop_id"]] if res.stopped_at_eos else [])
                text = decode(res.ids)
                terms = {name: fn(text, p["answer"], len(response)) for name, _, fn in self.rewards}
                group.append({"key": list(p["key"]), "g": g, "response": response, "logprobs": res.logprobs,
                              "terms": terms, "reward": sum(w * terms[name] for name, w, _ in self.rewards)})
                generated += len(response)
            adv = advantages(torch.tensor([[s["reward"] for s in group]]))[0].tolist()
            for s, a in zip(group, adv):
                s["advantage"] = a
            samples += group
        seconds = time.perf_counter() - t0
        return {"batch": batch, "samples": samples, "metrics": self._rollout_metrics(samples, generated, seconds)}

    def _rollout_metrics(self, samples: list[dict], generated: int, seconds: float) -> dict:
        """Summed over data-parallel ranks (each answered its own prompts), then averaged."""
        from megatron.core import parallel_state as ps

        from omni_mega.runtime.collectives import all_reduce_values

        rewards = np.array([s["reward"] for s in samples], dtype=np.float64)
        groups = rewards.reshape(-1, self.cfg.group_size)
        names = [name for name, _, _ in self.rewards]
        local = [len(rewards), rewards.sum(), (rewards ** 2).sum(), generated, float((np.ptp(groups, axis=1) == 0).sum()),
                 len(groups), *[sum(s["terms"][n] for s in samples) for n in names]]
        tot = all_reduce_values(local, "sum", ps.get_data_parallel_group())
        n, mean = tot[0], tot[1] / max(tot[0], 1)
        out = {"reward_mean": mean, "reward_std": max(tot[2] / max(n, 1) - mean ** 2, 0.0) ** 0.5,
               "response_length": tot[3] / max(n, 1), "zero_advantage_groups": tot[4] / max(tot[5], 1),
               "rollout_tokens_per_s": generated / max(seconds, 1e-9), "rollout_ms": 1e3 * seconds}
        out.update({f"reward/{name}": tot[6 + k] / max(n, 1) for k, name in enumerate(names)})
        return out

    # ---- packing ----------------------------------------------------------------------------------------------------
    def _pack(self, prompts: list[dict], samples: list[dict]) -> list[dict]:
        """First-fit packs of the stage's sequence length, one micro-batch each, in rollout order."""
        from omni_mega.data import packing as mp

        by_key = {tuple(p["key"]): p for p in prompts}
        S, packs, cur, used = self.plan.seq_length, [], [], 0
        for s in samples:
            n = len(by_key[tuple(s["key"])]["prompt_ids"]) + len(s["response"]) - 1
            if n > S:
                raise ValueError(f"grpo: a prompt and its response take {n} positions, more than seq_length {S}; raise "
                                 "seq_length or lower max_new_tokens")
            if used + n > S:
                packs.append(cur)
                cur, used = [], 0
            cur.append(s)
            used += n
        packs.append(cur)
        return [self._layout(mp, by_key, pack) for pack in packs if pack]

    def _layout(self, mp, by_key: dict, pack: list[dict]) -> dict:
        S = self.plan.seq_length
        seqs, lengths, targets, images = [], [], [], []
        old = torch.zeros(1, S)
        adv = torch.zeros(1, S)
        at = 0
        for s in pack:
            p = by_key[tuple(s["key"])]
            prompt, resp = np.asarray(p["prompt_ids"], dtype=np.int64), np.asarray(s["response"], dtype=np.int64)
            seq = np.concatenate([prompt, resp])
            seqs.append(seq)
            lengths.append(len(seq) - 1)
            targets.append(np.concatenate([np.zeros(len(prompt), np.uint8), np.ones(len(resp), np.uint8)]))
            first = at + len(prompt) - 1  # the position that predicts the first response token
            old[0, first:first + len(resp)] = torch.tensor(s["logprobs"][:len(resp)])
            adv[0, first:first + len(resp)] = s["advantage"]
            at += len(seq) - 1
            if p["pixel_values"] is not None:
                images.append((p["pixel_values"], p["grid_thw"]))
        image_token = int(getattr(self, "image_token_id", -200))
        out = mp.layout_pack(seqs, lengths, S, (image_token,), target_masks=targets)
        out["old_logp"], out["advantage"] = old, adv
        if images:
            out["pixel_values"] = torch.cat([px for px, _ in images])
            out["grid_thw"] = torch.cat([g for _, g in images])
        out["stats"] = {"rollouts": len(pack)}
        return out

    def before_step(self, ctx: StageContext, prompts: list[dict]) -> list[dict]:
        self.image_token_id = ctx.image_token_id
        batch = (ctx.step - ctx.plan.start_step) // self.cfg.ppo_epochs
        fresh = self.rollouts is None or self.rollouts["batch"] != batch
        if fresh:
            self.rollouts = self._rollout(ctx, prompts, batch)
        micro = self._pack(prompts, self.rollouts["samples"])
        if self.reference is not None:
            refs = ctx.forward_only(micro, partial(_forward, _ref_logps), self.reference)
            for mb, r in zip(micro, refs):
                mb["ref_logp"] = r["ref_logp"].reshape(1, -1)
        self._metrics = dict(self.rollouts["metrics"])
        if not fresh:  # a later epoch on the same rollouts: no time was spent generating
            self._metrics.update(rollout_ms=0.0, rollout_tokens_per_s=0.0)
        return micro

    def step_metrics(self) -> dict:
        return self._metrics

    def state_dict(self) -> dict:
        return {"rollouts": self.rollouts} if self.cfg.ppo_epochs > 1 and self.rollouts is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self.rollouts = state.get("rollouts")
