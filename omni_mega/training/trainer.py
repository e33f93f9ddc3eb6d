"""The training loop: megatron's forward_backward schedule (1F1B / interleaved) over our model chunks, megatron
DistributedDataParallel + optimizer (distributed optimizer on GPU; torch AdamW fallback on CPU), LR per step,
rank-0 progress and metrics.jsonl / TensorBoard."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func

from omni_mega.config import RunConfig
from omni_mega.data import demo_text
from omni_mega.models.llm import build_llm_chunks, padded_vocab_size
from omni_mega.runtime import Runtime
from omni_mega.training.metrics import MetricsWriter
from omni_mega.training.schedules import lr_at

log = logging.getLogger(__name__)


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def masked_lm_loss(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    """Mean LM loss over unmasked tokens (megatron loss_func contract: (loss, {name: value}))."""
    mask = loss_mask.reshape(-1).float()
    loss = (per_token_loss.float().reshape(-1) * mask).sum() / mask.sum().clamp(min=1)
    # clone: megatron divides the returned loss in place by the micro-batch count.
    return loss, {"lm loss": loss.detach().clone()}


def lm_forward_step(data_iterator, model):
    """forward_step_func for megatron's schedules: one micro-batch through a GPTModel chunk."""
    batch = next(data_iterator)
    out = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return out, partial(masked_lm_loss, batch["loss_mask"])


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    lr: float
    skipped: bool


class Trainer:
    def __init__(self, cfg: RunConfig, rt: Runtime, run_dir: str | Path) -> None:
        self.cfg, self.rt, self.run_dir = cfg, rt, Path(run_dir)
        self.dtype = resolve_dtype(cfg.train.dtype)
        data = cfg.data
        self.vocab_size = padded_vocab_size(cfg.model.llm.vocab_size or demo_text.VOCAB_SIZE, cfg.parallel.tp)
        self.micro_batches = data.global_batch_size // (data.micro_batch_size * rt.dp)
        self.step = 0  # optimizer steps done
        self.consumed_samples = 0
        chunks = build_llm_chunks(cfg.model.llm, cfg.parallel, self.vocab_size, data.seq_length, self.dtype)
        self.model = self._wrap_ddp(chunks)
        self.optimizer = self._build_optimizer()
        self.metrics = MetricsWriter(self.run_dir, enabled=rt.is_rank0, tensorboard=cfg.train.tensorboard)

    # ---- set-up -------------------------------------------------------------------------------------------------
    def _wrap_ddp(self, chunks: list) -> list:
        for c in chunks:
            c.to(self.rt.device)
        ddp_cfg = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=torch.cuda.is_available()
        )
        wrapped = [
            DistributedDataParallel(c.config, ddp_cfg, c, disable_bucketing=i > 0) for i, c in enumerate(chunks)
        ]
        cfg0 = chunks[0].config
        cfg0.finalize_model_grads_func = finalize_model_grads
        cfg0.no_sync_func = [m.no_sync for m in wrapped] if len(wrapped) > 1 else wrapped[0].no_sync
        cfg0.grad_scale_func = None
        return wrapped

    def _build_optimizer(self):
        o = self.cfg.optim
        ocfg = OptimizerConfig(
            optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad,
            bf16=self.dtype == torch.bfloat16, params_dtype=self.dtype,
            use_distributed_optimizer=torch.cuda.is_available(),
        )
        return get_megatron_optimizer(ocfg, self.model)

    # ---- data ---------------------------------------------------------------------------------------------------
    def _micro_batches(self):
        """This rank's micro-batches for the current step: its data-parallel slice of the global batch."""
        d = self.cfg.data
        base = self.consumed_samples + self.rt.dp_rank() * self.micro_batches * d.micro_batch_size
        for k in range(self.micro_batches):
            mb = demo_text.micro_batch(base + k * d.micro_batch_size, d.micro_batch_size, d.seq_length, d.seed)
            yield {key: v.to(self.rt.device) for key, v in mb.items()}

    # ---- one step -----------------------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self) -> StepResult:
        d = self.cfg.data
        lr = lr_at(self.step, self.cfg.total_steps, self.cfg.optim)
        self.set_lr(lr)
        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        it = self._micro_batches()
        data_iter = [it] * len(self.model) if len(self.model) > 1 else it
        losses = get_forward_backward_func()(
            forward_step_func=lm_forward_step, data_iterator=data_iter,
            model=self.model if len(self.model) > 1 else self.model[0], num_microbatches=self.micro_batches,
            seq_length=d.seq_length, micro_batch_size=d.micro_batch_size, forward_only=False,
        )
        ok, grad_norm, _ = self.optimizer.step()
        self.step += 1
        self.consumed_samples += d.global_batch_size
        return StepResult(self._mean_loss(losses), float(grad_norm or 0.0), lr, not ok)

    def _mean_loss(self, losses: list[dict]) -> float:
        """Loss averaged over micro-batches and data-parallel ranks, the same value on every rank."""
        local = torch.zeros(1, dtype=torch.float64)
        if losses:  # only last pipeline stage ranks have losses
            local += torch.stack([x["lm loss"].double().cpu() for x in losses]).mean()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dev_t = local.to(self.rt.device)
            dist.all_reduce(dev_t)
            local = dev_t.cpu()
        last_stage_ranks = self.rt.world_size // self.cfg.parallel.pp
        return float(local.item() / last_stage_ranks)

    # ---- the loop -----------------------------------------------------------------------------------------------
    def train(self) -> list[StepResult]:
        results = []
        d = self.cfg.data
        tokens_per_step = d.global_batch_size * d.seq_length
        start = time.perf_counter()
        first = self.step
        for stage in self.cfg.stages:
            if self.rt.is_rank0:
                log.info("stage %s: %d steps, seq %d, global batch %d", stage.name, stage.steps, d.seq_length,
                         d.global_batch_size)
            for _ in range(stage.steps):
                t0 = time.perf_counter()
                r = self.train_step()
                dt = time.perf_counter() - t0
                results.append(r)
                self.metrics.write({
                    "step": self.step, "stage": stage.name, "loss": r.loss, "grad_norm": r.grad_norm, "lr": r.lr,
                    "tokens": self.consumed_samples * d.seq_length, "tokens_per_s": tokens_per_step / dt,
                    "skipped": r.skipped,
                })
                if self.rt.is_rank0 and (self.step % self.cfg.train.log_interval == 0 or self.step == 1):
                    elapsed = time.perf_counter() - start
                    rate = (self.step - first) / elapsed
                    eta = (self.cfg.total_steps - self.step) / max(rate, 1e-9)
                    log.info("step %5d/%d | %s | loss %.4f | grad %.3f | lr %.2e | %6.0f tok/s | ETA %s",
                             self.step, self.cfg.total_steps, stage.name, r.loss, r.grad_norm, r.lr,
                             tokens_per_step * rate, _hms(eta))
        self.metrics.close()
        return results


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
