"""`objective: rvq`: the RVQ codec over log-mel frames (μOmni's stage D, first half).

Loss per micro-batch: reconstruction MSE of the codec frames + the codebook loss + model.codec.commitment x the
commitment loss (each summed over the quantisers), a mean per micro-batch (`per_token_loss` False: every micro-batch
weighs the same). Before each step dead entries are restarted (`RVQCodec.restart_dead`). Metrics: `loss`,
`recon_mse`, `commit_loss`, `usage` (share of codebook entries this step's frames used, averaged over codebooks),
and on the held-out split `heldout_recon_mse` and `heldout_usage` (entries used by the held-out clips: a codec
that uses more than half of its codebook is not collapsing), with `eval_step`.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from omni_mega.objectives.base import Objective, StageContext, metric
from omni_mega.objectives.parts import HeldOut


def usage(codes: torch.Tensor, size: int) -> float:
    """Mean over codebooks of the share of entries that `codes` [F, Q] use."""
    return sum(int(torch.unique(codes[:, q]).numel()) for q in range(codes.size(1))) / (codes.size(1) * size)


def _forward(batch_loss, data_iterator, model):
    batch = next(data_iterator)
    out = model(None, None, task="codec", audio_features=batch["audio_features"],
                audio_cu_seqlens=batch["audio_cu_seqlens"])
    return out, partial(batch_loss, batch)


class RVQObjective(Objective):
    name = "rvq"
    per_token_loss = False

    def __init__(self, plan) -> None:
        self.commitment, self.size = None, None
        self.heldout = HeldOut(("heldout_recon_mse", "heldout_usage"))
        self.metric_names = ("loss", "recon_mse", "commit_loss", "usage")
        self._heldout_codes: list[torch.Tensor] = []
        self.restarted = 0

    def _loss(self, batch: dict, out: dict):
        recon = F.mse_loss(out["recon"].float(), out["target"].float())
        loss = recon + out["codebook_loss"] + self.commitment * out["commit_loss"]
        return loss, {"loss": metric(loss), "recon_mse": metric(recon), "commit_loss": metric(out["commit_loss"]),
                      "usage": metric(torch.tensor(usage(out["codes"], self.size))),
                      **self.heldout.values(loss.device)}

    def _score(self, batch: dict, out: dict):
        self._heldout_codes.append(out["codes"].cpu())
        n = float(out["target"].numel())
        err = F.mse_loss(out["recon"].float(), out["target"].float(), reduction="sum")
        return err * 0.0, {"heldout_recon_mse": metric(err, n)}

    def forward_step(self, data_iterator, model):
        return _forward(self._loss, data_iterator, model)

    def _restart(self, ctx: StageContext, batches: list[dict]) -> None:
        """Dead-entry restarts from this rank's first micro-batch (RVQCodec.restart_dead), then the codebooks and
        their usage from the first data-parallel rank to the others (each rank saw other clips)."""
        codec = ctx.chunks[0].codec if ctx.chunks else None
        if codec is None or not batches:
            return
        dev = codec.codebooks.device
        g = torch.Generator().manual_seed(1_000_003 * ctx.plan.seed + ctx.step)
        self.restarted = codec.restart_dead(batches[0]["audio_features"].to(dev), batches[0]["audio_cu_seqlens"].to(dev),
                                            g)
        from megatron.core import parallel_state as ps

        if ps.get_data_parallel_world_size() > 1:
            src, group = ps.get_data_parallel_src_rank(), ps.get_data_parallel_group()
            torch.distributed.broadcast(codec.codebooks.data, src, group=group)
            torch.distributed.broadcast(codec.usage_ema, src, group=group)

    def start_stage(self, ctx: StageContext) -> None:
        codec = ctx.model_config.codec
        self.commitment, self.size = codec.commitment, codec.codebook_size
        if self.heldout.prepare(ctx):
            self.metric_names = ("loss", "recon_mse", "commit_loss", "usage", "heldout_recon_mse", "heldout_usage",
                                 "eval_step")

    def before_step(self, ctx: StageContext, batches: list[dict]) -> None:
        self._restart(ctx, batches)
        self._heldout_codes = []
        self.heldout.before_step(ctx, partial(_forward, self._score))
        if self._heldout_codes:  # entries used over all held-out clips (not per micro-batch)
            self.heldout.sums["heldout_usage"] = (usage(torch.cat(self._heldout_codes), self.size), 1.0)
