"""The training loop through a curriculum: megatron's forward_backward schedule (1F1B / interleaved) over our model
chunks, megatron DistributedDataParallel + optimizer (distributed optimizer on GPU; torch AdamW on CPU) rebuilt at
each stage boundary for the stage's trainable set, LR from a pure schedule, checkpoints and exact resume."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core.pipeline_parallel import get_forward_backward_func
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

from omni_mega.config import ConfigError, ConnectorConfig, RunConfig, to_dict
from omni_mega.data import demo_text
from omni_mega.models.llm import build_llm_chunks, padded_vocab_size
from omni_mega.runtime import Runtime
from omni_mega.training import checkpoint as ckpt_io
from omni_mega.training import mm_step
from omni_mega.training.curriculum import (LRPlan, StagePlan, banner, max_seq_length, mm_ratio_target, plan_stages,
                                           set_rope_base, stage_at)
from omni_mega.training.data_source import StepSlice, build_source
from omni_mega.training.freeze import apply_trainable, mark_frozen_pipeline_input, resolve, trainable_count
from omni_mega.training.metrics import MetricsWriter, truncate_metrics
from omni_mega.training.optim import (build_optimizer, carry_over, dist_carry_over, dist_snapshot, set_adam_step,
                                      set_lr, snapshot, wrap_ddp)
from omni_mega.training.resume import check_model_shape, restore_partial_base
from omni_mega.training.state import TrainerState
from omni_mega.training.stop import StopRequest

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
    """`Trainer(cfg, rt, run_dir, resume="auto").train()` carries a run through all its stages."""

    def __init__(self, cfg: RunConfig, rt: Runtime, run_dir: str | Path, resume: str | None = None) -> None:
        self.cfg, self.rt, self.run_dir = cfg, rt, Path(run_dir)
        self.dtype = resolve_dtype(cfg.train.dtype)
        self.plans = plan_stages(cfg)
        self.lr_plan = LRPlan(cfg)
        self.multimodal = cfg.model.vit is not None
        self.vocab_size = padded_vocab_size(cfg.model.llm.vocab_size or data_vocab_size(cfg), cfg.parallel.tp)
        max_seq = max(max_seq_length(self.plans), cfg.data.seq_length)
        if self.multimodal:
            self.chunks = build_omni_chunks(cfg, self.vocab_size, max_seq, self.dtype)
            self.data_dir = Path(cfg.data.data_dir) if cfg.data.data_dir else self.run_dir / "data"
            self.image_token_id = (cfg.model.connector or ConnectorConfig()).image_token_id
        else:
            self.chunks = build_llm_chunks(cfg.model.llm, cfg.parallel, self.vocab_size, max_seq, self.dtype)
        for c in self.chunks:
            c.to(rt.device)
        self.total_params = trainable_count_all(self.chunks)
        self.model: list = []
        self.optimizer = None
        self.stage: StagePlan | None = None
        self.state = TrainerState(model=to_dict(cfg.model), parallel=to_dict(cfg.parallel), world_size=rt.world_size)
        self._preflight()
        ckpt = self._pick_resume(resume)
        if rt.is_rank0:
            truncate_metrics(self.run_dir, self.state.step if ckpt else 0)
        self.metrics = MetricsWriter(self.run_dir, enabled=rt.is_rank0, tensorboard=cfg.train.tensorboard)
        if ckpt is None:
            self._enter_stage(self.plans[0], fresh=True)
        else:
            self._resume(ckpt)

    # ---- set-up -------------------------------------------------------------------------------------------------
    def _preflight(self) -> None:
        """Errors a run would meet later, raised before step 1: groups that select nothing, init_from checkpoints
        that are missing or of another model shape."""
        for p in self.plans:
            apply_trainable(self.chunks, p.name, p.cfg.trainable)
            if p.cfg.init_from:
                try:
                    src = ckpt_io.resolve_ckpt(p.cfg.init_from)
                except FileNotFoundError as e:
                    raise ConfigError(f"stages[{p.name}].init_from: {e}") from None
                check_model_shape(ckpt_io.read_state(src), self.cfg, f"stages[{p.name}].init_from ({src})")

    def _pick_resume(self, resume: str | None):
        if resume is None:
            return None
        if resume != "auto":
            path = ckpt_io.resolve_ckpt(resume)
            check_model_shape(ckpt_io.read_state(path), self.cfg, f"--resume {path}")
            self.state = ckpt_io.read_state(path)
            return path
        good, skipped = ckpt_io.candidates(self.run_dir)
        for line in skipped:
            if self.rt.is_rank0:
                log.warning("resume: skipping %s", line)
        if not good:
            if self.rt.is_rank0:
                log.info("resume auto: no complete checkpoint in %s, starting from step 0", self.run_dir / "ckpt")
            return None
        check_model_shape(ckpt_io.read_state(good[0]), self.cfg, f"--resume auto ({good[0]})")
        self._candidates = good
        self.state = ckpt_io.read_state(good[0])
        return good[0]

    def _enter_stage(self, plan: StagePlan, *, fresh: bool) -> None:
        """Applies a stage: trainable set, DDP + optimizer (carrying Adam state), RoPE base, data source, and
        `init_from` when the stage starts fresh (not when resuming inside it)."""
        snap = snapshot(self.optimizer) if self.optimizer is not None else None
        dsnap = dist_snapshot(self.optimizer, self.chunks)  # the distributed optimizer's shards (None otherwise)
        counts = apply_trainable(self.chunks, plan.name, plan.cfg.trainable)
        mark_frozen_pipeline_input(self.chunks)
        self.model = wrap_ddp(self.chunks, old=self.model, o=self.cfg.optim)
        mults = {id(p): m.mult for m in plan.cfg.lr_mult for p in resolve(self.chunks, m.group)}
        self.optimizer = build_optimizer(self.model, self.cfg.optim, self.dtype, mults)
        carried, fresh_n = carry_over(self.optimizer, snap, self.state.step)
        d_carried, d_fresh = dist_carry_over(self.optimizer, dsnap, self.chunks, self.state.step)
        carried, fresh_n = carried + d_carried, fresh_n + d_fresh
        set_rope_base(self.chunks, plan.rope_base)
        self.stage = plan
        if self.multimodal:
            self.source = mm_step.build_mm_source(self.cfg, plan, self.data_dir, self.state.consumed_samples)
        else:
            self.source = build_source(plan.mix, self.cfg.data.seed, self.state.consumed_samples)
        self.trainable = trainable_count(self.chunks)
        if fresh and plan.cfg.init_from:
            self._init_from(plan)
        if self.rt.is_rank0:
            log.info("%s", banner(plan, self.lr_plan, counts, self.trainable, self.total_params, len(self.plans),
                                  self.cfg.data if self.multimodal else None))
            if snap is not None or dsnap is not None:
                log.info("  optimizer rebuilt: Adam state carried for %d tensors, %d start fresh (rank 0)",
                         carried, fresh_n)

    def _init_from(self, plan: StagePlan) -> None:
        src = ckpt_io.resolve_ckpt(plan.cfg.init_from)
        have, miss = ckpt_io.loaded_names(self.model, src)
        ckpt_io.load_checkpoint(src, self.model, self.optimizer, with_optimizer=False)
        if self.rt.is_rank0:
            log.info("  init_from %s: %d parameter tensors from the checkpoint, %d kept from the current model%s",
                     src, len(have), len(miss), f" ({', '.join(miss[:6])}{', ...' if len(miss) > 6 else ''})"
                     if miss else "")

    def _resume(self, ckpt: Path) -> None:
        """Sets up the stage the checkpoint was written in, then loads it (falling back to older ones if it fails)."""
        for cand in [ckpt] + [c for c in getattr(self, "_candidates", []) if c != ckpt]:
            self.state = ckpt_io.read_state(cand)
            plan = self.plans[self.state.stage_index]
            self._enter_stage(plan, fresh=False)
            try:
                if self.state.save == "trainable_only":
                    restore_partial_base(self, plan, cand)
                ckpt_io.load_checkpoint(cand, self.model, self.optimizer)
                ok = 1
            except (Exception, CheckpointException) as e:  # corrupt files: report, try the next older one
                log.warning("resume: %s failed to load (%s: %s); trying an older checkpoint", cand,
                            type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
                ok = 0
            if _all_ok(ok, self.rt.device):
                set_adam_step(self.optimizer, self.state.step)
                self.source.load_state_dict(self.state.data)
                if self.rt.is_rank0:
                    log.info("resumed from %s: step %d, stage %s step %d, %d samples consumed", cand,
                             self.state.step, plan.name, self.state.step_in_stage, self.state.consumed_samples)
                return
        raise RuntimeError(f"resume: no checkpoint in {self.run_dir / 'ckpt'} could be loaded")

    # ---- one step -----------------------------------------------------------------------------------------------
    def train_step(self) -> StepResult:
        plan, d = self.stage, self.cfg.data
        lr = self.lr_plan.lr(self.state.step)
        set_lr(self.optimizer, lr, self.cfg.optim.weight_decay)
        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        num_micro = plan.global_batch_size // (d.micro_batch_size * self.rt.dp)
        sl = StepSlice(self.rt.dp_rank(), self.rt.dp, num_micro, d.micro_batch_size, plan.seq_length)
        if self.multimodal:
            self._packs: list[dict] = []
            it = mm_step.tapped(self.source.micro_batches(sl), self.rt.device, self.image_token_id, self._packs)
        else:
            it = ({k: v.to(self.rt.device) for k, v in mb.items()} for mb in self.source.micro_batches(sl))
        # Interleaved (vpp): megatron calls the step function, hence next(), once per micro-batch on *every* virtual
        # chunk, so each needs the whole stream (one shared iterator ran dry: StopIteration); tee buffers only the
        # micro-batches one chunk runs ahead of another.
        data_iter = list(itertools.tee(it, len(self.model))) if len(self.model) > 1 else it
        losses = get_forward_backward_func()(
            forward_step_func=mm_step.mm_forward_step if self.multimodal else lm_forward_step, data_iterator=data_iter,
            model=self.model if len(self.model) > 1 else self.model[0], num_microbatches=num_micro,
            seq_length=plan.seq_length, micro_batch_size=d.micro_batch_size, forward_only=False,
        )
        ok, grad_norm, _ = self.optimizer.step()
        if self.multimodal:  # before `advance`: the ratio target is the one this step's packs were drawn for
            from megatron.core import parallel_state as ps

            self.step_data = mm_step.mm_record(
                mm_step.step_stats(self._packs, self.rt.device, ps.get_data_parallel_group()),
                mm_ratio_target(plan, self.state.step - plan.start_step))
        self.source.advance(plan.global_batch_size)
        s = self.state
        s.step += 1
        s.step_in_stage = s.step - plan.start_step
        s.stage_index, s.stage_name = plan.index, plan.name
        s.consumed_samples = self.source.consumed_samples
        s.consumed_tokens += plan.global_batch_size * plan.seq_length
        s.lr, s.rope_base = lr, plan.rope_base
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
    def save(self) -> Path:
        s = self.state
        s.save, s.trainable = self.stage.cfg.save, list(self.stage.cfg.trainable)
        s.data = self.source.state_dict()
        return ckpt_io.save_checkpoint(self.run_dir, self.model, self.optimizer, s)

    def _record(self, r: StepResult, dt: float) -> dict:
        plan, s = self.stage, self.state
        rec = {
            "step": s.step, "stage": plan.name, "stage_index": plan.index, "stage_step": s.step_in_stage,
            "loss": r.loss, "grad_norm": r.grad_norm, "lr": r.lr, "tokens": s.consumed_tokens,
            "tokens_per_s": plan.global_batch_size * plan.seq_length / dt, "trainable_params": self.trainable,
            "seq_length": plan.seq_length, "rope_base": plan.rope_base, "skipped": r.skipped,
        }
        for m in plan.cfg.lr_mult:
            rec[f"lr/{m.group}"] = r.lr * m.mult
        if self.multimodal:
            rec.update(self.step_data)
        return rec

    def train(self) -> list[StepResult]:
        results, total = [], self.cfg.total_steps
        self.stop = StopRequest(self.run_dir, self.rt.device)
        start, first = time.perf_counter(), self.state.step
        while self.state.step < total:
            plan = stage_at(self.plans, self.state.step)
            if plan.index != self.stage.index:
                self._enter_stage(plan, fresh=True)
            t0 = time.perf_counter()
            r = self.train_step()
            results.append(r)
            self.metrics.write(self._record(r, time.perf_counter() - t0))
            s, iv = self.state, plan.cfg.ckpt_interval
            saved = s.step == plan.end_step or bool(iv and s.step_in_stage % iv == 0)
            if saved:
                self.save()
            if self.stop.requested():  # SLURM time limit ahead (see training/stop.py): checkpoint and leave
                if not saved:
                    self.save()
                if self.rt.is_rank0:
                    self.stop.clear()
                    log.info("stop requested: checkpoint at step %d written, exiting (resume with --resume auto)",
                             s.step)
                break
            if self.rt.is_rank0 and (s.step % self.cfg.train.log_interval == 0 or s.step == first + 1):
                rate = (s.step - first) / (time.perf_counter() - start)
                log.info("step %5d/%d | %s | loss %.4f | grad %.3f | lr %.2e | %6.0f tok/s | ETA %s", s.step, total,
                         plan.name, r.loss, r.grad_norm, r.lr, plan.global_batch_size * plan.seq_length * rate,
                         _hms((total - s.step) / max(rate, 1e-9)))
        self.metrics.close()
        return results


def data_vocab_size(cfg: RunConfig) -> int:
    """LLM vocabulary of the run's data when model.llm.vocab_size is unset: the tokenizer recorded in mm_shards
    datasets (`MMShardDataset.tokenizer["vocab_size"]`, the largest over the stages), else the built-in byte
    tokenizer's 257 (demo_text, demo_mm)."""
    sizes = [demo_text.VOCAB_SIZE]
    paths = {d.path for s in cfg.stages for d in s.data if d.source == "mm_shards"}
    if paths:
        from omni_mega.data.mmshards import MMShardDataset

        sizes += [int(MMShardDataset(p).tokenizer.get("vocab_size", 0)) for p in sorted(paths)]
    return max(sizes)


def build_omni_chunks(cfg: RunConfig, vocab_size: int, max_seq: int, dtype: torch.dtype) -> list:
    """This rank's OmniModel chunks (`models.factory.build_model`): one, or one per virtual stage (vpp)."""
    from omni_mega.models.factory import build_model

    stages = [None] if cfg.parallel.vpp is None else list(range(cfg.parallel.vpp))
    return [build_model(cfg.model, cfg.parallel, vocab_size, max_seq, dtype, vp_stage=v) for v in stages]


def trainable_count_all(chunks: list) -> int:
    """Parameter elements of the whole model (all pipeline/tensor ranks), trainable or not."""
    from omni_mega.training.freeze import _global_sum

    return _global_sum(sum(p.numel() for c in chunks for p in c.parameters()))


def _all_ok(ok: int, device) -> bool:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return bool(ok)
    t = torch.tensor([ok], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
