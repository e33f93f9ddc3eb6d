"""`objective: dpo`: Direct Preference Optimization with an auxiliary NLL on the chosen reply (Ovis2.5's P4).

A micro-batch holds whole preference pairs: the chosen and the rejected sequence of a pair are two neighbouring
segments of one packed sequence (`pairs`: int64 [P, 2] segment indices; `pair_ids`: int64 [P, 2] dataset and
item, the key of the reference log-probs). A sequence's log-prob is the sum over its reply tokens (the batch's loss
mask) of log p(token), from megatron's vocab-parallel cross entropy (correct under TP, SP and PP: the per-token
losses are complete on the last pipeline stage).

Per pair:  loss = -log sigmoid(beta [(pi_c - ref_c) - (pi_r - ref_r)]) + nll_weight * NLL(chosen),
NLL(chosen) = the chosen reply's mean token cross entropy. Normalisation: the mean over the pairs of the global
batch (megatron's per-token mode with one "token" per pair), so every pair weighs the same wherever it was packed.
Metrics: `dpo_loss`, `nll_loss`, `reward_accuracy` (share of pairs with a positive margin), `reward_margin` (mean
beta-scaled margin), `logp_chosen`, `logp_rejected` (mean sequence log-probs).

Reference log-probs come from the stage's initial weights: `reference: precompute` scores every pair the stage will
see in one forward-only pass at its start and stores them under `<run dir>/reference/` (a resumed run loads them);
`reference: copy` keeps a frozen copy of the model and scores each step's pairs before the step. The two give the
same numbers.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from omni_mega.objectives.base import Objective, StageContext, metric, model_inputs

log = logging.getLogger(__name__)
METRICS = ("loss", "dpo_loss", "nll_loss", "reward_accuracy", "reward_margin", "logp_chosen", "logp_rejected")


def sequence_logps(per_token_loss: torch.Tensor, loss_mask: torch.Tensor, cu_seqlens: torch.Tensor):
    """(sum of log p over each segment's masked tokens, masked tokens per segment), float32 [n_segments] each."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seg = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    mask = loss_mask.reshape(-1).float()
    logp = torch.zeros(lengths.numel(), device=mask.device).index_add(0, seg, -per_token_loss.float().reshape(-1) * mask)
    count = torch.zeros(lengths.numel(), device=mask.device).index_add(0, seg, mask)
    return logp, count


def _pair_logps(batch: dict, per_token_loss: torch.Tensor):
    """(chosen log-probs, rejected log-probs, chosen reply tokens), float32 [P] each; P = 0 for a micro-batch
    without pairs (its other samples then add nothing)."""
    logp, count = sequence_logps(per_token_loss, batch["loss_mask"], batch["cu_seqlens"])
    pairs = batch.get("pairs", torch.zeros(0, 2, dtype=torch.long)).to(logp.device)
    return logp[pairs[:, 0]], logp[pairs[:, 1]], count[pairs[:, 0]]


class ReferenceTable:
    """Reference log-probs (chosen, rejected) per pair key (dataset, item); NaN where not scored yet."""

    def __init__(self, sizes: list[int]) -> None:
        self.values = [np.full((n, 2), np.nan) for n in sizes]

    def put(self, ids: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        for (k, i), c, r in zip(ids.tolist(), chosen.tolist(), rejected.tolist()):
            self.values[k][i] = (c, r)

    def get(self, ids: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([self.values[k][i] for k, i in ids.tolist()]) if len(ids) else np.zeros((0, 2))
        if np.isnan(rows).any():
            raise RuntimeError("dpo: a pair has no reference log-probs (the reference pass did not score it)")
        t = torch.as_tensor(rows, dtype=torch.float32, device=device)
        return t[:, 0], t[:, 1]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **{f"d{k}": v for k, v in enumerate(self.values)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, sizes: list[int]) -> "ReferenceTable":
        t = cls(sizes)
        with np.load(path, allow_pickle=False) as z:
            for k, n in enumerate(sizes):
                if z[f"d{k}"].shape != (n, 2):
                    raise ValueError(f"{path}: table {k} has shape {z[f'd{k}'].shape}, the stage's dataset {n} items")
                t.values[k] = z[f"d{k}"].copy()
        return t


def _score(table: ReferenceTable, batch: dict, per_token_loss: torch.Tensor):
    """loss_func of a reference pass: stores the pairs' log-probs; reports nothing to optimise."""
    c, r, _ = _pair_logps(batch, per_token_loss)
    if len(c):
        table.put(batch["pair_ids"], c.detach().cpu(), r.detach().cpu())
    zero = per_token_loss.sum() * 0.0
    return zero, {"pairs": metric(zero, float(len(c)))}


def dpo_loss(cfg, table: ReferenceTable, batch: dict, per_token_loss: torch.Tensor):
    """megatron per-token loss_func: (sum of the pair losses, pairs, values)."""
    pc, pr, n_chosen = _pair_logps(batch, per_token_loss)
    ref_c, ref_r = table.get(batch.get("pair_ids", torch.zeros(0, 2, dtype=torch.long)), pc.device)
    margin = cfg.beta * ((pc - ref_c) - (pr - ref_r))
    dpo = -F.logsigmoid(margin)
    nll = -pc / n_chosen.clamp(min=1)
    loss = dpo + cfg.nll_weight * nll
    n = float(len(pc))
    values = {"loss": metric(loss.sum(), n), "dpo_loss": metric(dpo.sum(), n), "nll_loss": metric(nll.sum(), n),
              "reward_accuracy": metric((margin > 0).float().sum(), n), "reward_margin": metric(margin.sum(), n),
              "logp_chosen": metric(pc.sum(), n), "logp_rejected": metric(pr.sum(), n)}
    # `+ 0 * sum`: the output stays in the graph when the micro-batch holds no pair
    return loss.sum() + 0.0 * per_token_loss.sum(), torch.tensor(len(pc), dtype=torch.int, device=pc.device), values


def _forward(loss_fn, data_iterator, model):
    batch = next(data_iterator)
    labels = batch["labels"].masked_fill(batch["loss_mask"] == 0, 0)
    out = model(batch["tokens"], batch["position_ids"], None, labels=labels, **model_inputs(batch))
    return out, partial(loss_fn, batch)


class DPOObjective(Objective):
    name = "dpo"
    metric_names = METRICS
    per_token_loss = True  # the mean over the global batch's pairs

    def __init__(self, plan) -> None:
        self.cfg = plan.cfg.dpo
        self.table: ReferenceTable | None = None
        self.reference: list | None = None  # the frozen copy (reference: copy)

    def forward_step(self, data_iterator, model):
        return _forward(partial(dpo_loss, self.cfg, self.table), data_iterator, model)

    def _score_batches(self, ctx: StageContext, batches: list[dict], chunks: list) -> None:
        ctx.forward_only(batches, partial(_forward, partial(_score, self.table)), chunks)

    def start_stage(self, ctx: StageContext) -> None:
        self.table = ReferenceTable(ctx.dataset_sizes)
        if self.cfg.reference == "copy":
            self.reference = ctx.reference_model()
            return
        path = Path(ctx.run_dir) / "reference" / f"stage_{ctx.plan.index:02d}_{ctx.plan.name}.npz"
        if path.is_file():
            self.table = ReferenceTable.load(path, ctx.dataset_sizes)
            log.info("dpo: reference log-probs loaded from %s", path)
            return
        t0, source = time.perf_counter(), ctx.new_source(ctx.plan.samples_before)
        for step in range(ctx.plan.steps):
            self._score_batches(ctx, source.materialize(source.plan_step(ctx.step_slice, ahead=step)), None)
        self._gather()
        rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        if rank0:
            self.table.save(path)
            log.info("dpo: reference log-probs of the stage's %d steps computed in %.1f s (a forward pass per step), "
                     "saved to %s", ctx.plan.steps, time.perf_counter() - t0, path)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    def _gather(self) -> None:
        """Every rank scored its own pairs (on the last pipeline stage): the sum over ranks of the known values,
        divided by how many ranks knew each (tensor-parallel ranks score the same pairs), gives every rank the whole
        table."""
        from omni_mega.runtime.collectives import all_reduce_tensor

        for k, v in enumerate(self.table.values):
            known = torch.from_numpy(~np.isnan(v)).double()
            total = all_reduce_tensor(torch.from_numpy(np.nan_to_num(v, nan=0.0)))
            count = all_reduce_tensor(known)
            self.table.values[k] = torch.where(count > 0, total / count.clamp(min=1), float("nan")).numpy()

    def before_step(self, ctx: StageContext, batches: list[dict]) -> None:
        if self.reference is not None:
            self._score_batches(ctx, batches, self.reference)
