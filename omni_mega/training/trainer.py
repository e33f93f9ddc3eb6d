"""The training loop through a curriculum. For each stage: its plan -> a data source and an objective -> steps ->
checkpoints. A step runs megatron's forward_backward schedule (1F1B / interleaved) over the model chunks with the
objective's forward step, then megatron's optimizer (distributed optimizer on GPU; torch Adam on CPU), rebuilt at
each stage boundary for the stage's trainable set. The loop never asks what it trains: modalities live in the data
source, losses in the objective, module groups in the model."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

from omni_mega import objectives
from omni_mega.config import ConnectorConfig, RunConfig, to_dict
from omni_mega.config.stage import PART_OBJECTIVES
from omni_mega.objectives.base import StageContext
from omni_mega.config.plan import StagePlan, max_seq_length, plan_stages, stage_at
from omni_mega.data import source as data_source
from omni_mega.data.prefetch import Prefetcher
from omni_mega.models.factory import build_chunks
from omni_mega.models.groups import resolve
from omni_mega.models.llm import padded_vocab_size
from omni_mega.models.moe import step_metrics as model_step_metrics
from omni_mega.runtime import Runtime
from omni_mega.runtime.collectives import all_true, any_true
from omni_mega.training import checkpoint as ckpt_io
from omni_mega.training import init_from
from omni_mega.training import resume as resuming
from omni_mega.training import run_dir as run_dirs
from omni_mega.training.curriculum import LRPlan, banner, run_vocab_size, set_rope_base
from omni_mega.training.freeze import apply_trainable, mark_frozen_pipeline_input, param_count, trainable_count
from omni_mega.training.metrics import MetricsWriter, truncate_metrics
from omni_mega.training.optim import (build_optimizer, carry_over, dist_carry_over, dist_snapshot, set_adam_step,
                                      set_lr, snapshot, wrap_ddp)
from omni_mega.training.state import TrainerState
from omni_mega.training.step_io import reduce_metrics, schedule_iterator, step_stats, to_device
from omni_mega.training.stop import StopRequest

log = logging.getLogger(__name__)


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    lr: float
    skipped: bool
    metrics: dict  # the objective's values ("loss" included) and the data source's, for metrics.jsonl
    data_wait_ms: float  # time the step waited for its input


class TrainingDiverged(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient (train.max_skipped_steps)."""


class Trainer:
    """`Trainer(cfg, rt, run_dir, resume="auto").train()` carries a run through all its stages.

    build_source / build_objective: how a stage's data source and objective are made from its plan (tests pass
    their own instead of patching modules); overwrite: move an old run in `run_dir` aside for a fresh start."""

    cfg: RunConfig
    rt: Runtime
    run_dir: Path
    plans: list[StagePlan]
    stage: StagePlan
    model: list  # DDP-wrapped chunks
    chunks: list  # the chunks themselves
    state: TrainerState

    def __init__(self, cfg: RunConfig, rt: Runtime, run_dir: str | Path, resume: str | None = None, *,
                 overwrite: bool = False, build_source: Callable = data_source.build_source,
                 build_objective: Callable = objectives.build) -> None:
        self.cfg, self.rt, self.run_dir = cfg, rt, Path(run_dir)
        self.lock = self._claim_run_dir(resume, overwrite)
        self.build_source, self.build_objective = build_source, build_objective
        self.dtype = resolve_dtype(cfg.train.dtype)
        self.plans = plan_stages(cfg)
        self.lr_plan = LRPlan(cfg)
        self.data_dir = Path(cfg.data.data_dir) if cfg.data.data_dir else self.run_dir / "data"
        self.vocab_size = padded_vocab_size(run_vocab_size(cfg, self.data_dir), cfg.parallel.tp)
        self.chunks = [c.to(rt.device) for c in build_chunks(cfg.model, cfg.parallel, self.vocab_size,
                                                             max_seq_length(self.plans), self.dtype)]
        self.total_params = param_count([p for c in self.chunks for p in c.parameters()])  # experts over EP too
        self.model, self.optimizer, self.source, self.objective, self.prefetch = [], None, None, None, None
        # The objective prepares a stage at its first step in this process. Its StageContext is made for each call and
        # not kept: it refers back to the trainer, and a kept cycle would hold the run-dir lock until a gc pass.
        self._stage_started = False
        self.state = TrainerState(model=to_dict(cfg.model), parallel=to_dict(cfg.parallel), world_size=rt.world_size)
        self.stop = StopRequest(self.run_dir, rt.device)
        self.init_sources: dict[int, object] = {}  # stage index -> its prepared init_from sources (_preflight)
        self._preflight()
        candidates = resuming.pick(self.run_dir, resume, cfg, self.plans, announce=rt.is_rank0)
        if candidates:
            self._resume(candidates)
        else:
            self._enter_stage(self.plans[0], fresh=True)
        if rt.is_rank0:  # after the resume settled on a checkpoint (a fallback may be older than the newest)
            dropped = truncate_metrics(self.run_dir, self.state.step)
            truncate_metrics(self.run_dir, self.state.step, "eval.jsonl")
            if dropped:
                log.info("metrics.jsonl: %d record(s) after step %d dropped (they are trained again)", dropped,
                         self.state.step)
        self.metrics = MetricsWriter(self.run_dir, enabled=rt.is_rank0, tensorboard=cfg.train.tensorboard)

    # ---- set-up -------------------------------------------------------------------------------------------------
    def _claim_run_dir(self, resume: str | None, overwrite: bool):
        """Rank 0 takes the run dir (`training.run_dir.claim`); every rank learns whether it could."""
        lock, error = None, None
        if self.rt.is_rank0:
            try:
                lock = run_dirs.claim(self.run_dir, resume=resume, overwrite=overwrite)
            except run_dirs.RunDirError as e:
                error = e
        if not all_true(error is None):
            raise error or run_dirs.RunDirError(f"rank 0 could not claim the run dir {self.run_dir}")
        return lock

    def _preflight(self) -> None:
        """Errors a run would meet later, raised before step 1: groups that select nothing, init_from sources that
        are missing, lack a group or hold other shapes (`training.init_from`; HF sources are converted here)."""
        for p in self.plans:
            apply_trainable(self.chunks, p.name, list(p.trainable))
            if p.cfg.init_from:
                self.init_sources[p.index] = init_from.prepare(
                    p.cfg.init_from, f"stages[{p.name}].init_from", self.chunks, self.cfg, self.run_dir / "init_from",
                    tp=self.cfg.parallel.tp, is_rank0=self.rt.is_rank0)

    def _enter_stage(self, plan: StagePlan, *, fresh: bool) -> None:
        """Applies a stage: trainable set, DDP + optimizer (carrying Adam state), RoPE base, objective, data source,
        and `init_from` when the stage starts fresh (not when resuming inside it)."""
        self._close_prefetch()
        self._stage_started = False
        snap = snapshot(self.optimizer) if self.optimizer is not None else None
        dsnap = dist_snapshot(self.optimizer, self.chunks)  # the distributed optimizer's shards (None otherwise)
        counts = apply_trainable(self.chunks, plan.name, list(plan.trainable))
        mark_frozen_pipeline_input(self.chunks)
        self.objective = self.build_objective(plan)
        # How megatron scales losses and gradients is the objective's call; DDP reads it when it is built, from
        # each chunk's own config (one per virtual pipeline chunk), and MoE routers read it at every forward.
        for c in self.chunks:
            c.config.calculate_per_token_loss = bool(self.objective.per_token_loss)
        self.model = wrap_ddp(self.chunks, old=self.model, o=self.cfg.optim)
        mults = {id(p): m.mult for m in plan.lr_mult for p in resolve(self.chunks, m.group)}
        self.optimizer = build_optimizer(self.model, self.cfg.optim, self.dtype, mults)
        carried, fresh_n = carry_over(self.optimizer, snap, self.state.step)
        d_carried, d_fresh = dist_carry_over(self.optimizer, dsnap, self.chunks, self.state.step)
        set_rope_base(self.chunks, plan.rope_base)
        self.stage = plan
        self.source = self.build_source(plan, self.cfg.model, self.data_dir, self.state.consumed_samples)
        self.trainable = trainable_count(self.chunks)
        if fresh and plan.cfg.init_from:
            self._init_from(plan)
        if self.rt.is_rank0:
            log.info("%s", banner(plan, self.lr_plan, counts, self.trainable, self.total_params, len(self.plans)))
            if snap is not None or dsnap is not None:
                log.info("  optimizer rebuilt: Adam state carried for %d tensors, %d start fresh (rank 0)",
                         carried + d_carried, fresh_n + d_fresh)

    def _init_from(self, plan: StagePlan) -> None:
        lines = init_from.apply(self.init_sources[plan.index], self.chunks)
        if self.rt.is_rank0:
            for line in lines:
                log.info("  %s", line)

    def _resume(self, candidates: list[Path]) -> None:
        """Sets up the stage the checkpoint was written in, then loads it (falling back to older ones if it fails)."""
        for cand in candidates:
            self.state = ckpt_io.read_state(cand)
            plan = self.plans[self.state.stage_index]
            self._enter_stage(plan, fresh=False)
            try:
                if self.state.save == "trainable_only":
                    self._restore_partial(plan, cand)
                ckpt_io.load_checkpoint(cand, self.model, self.optimizer)
                ok = True
            except (Exception, CheckpointException) as e:  # corrupt files: report, try the next older one
                log.warning("resume: %s failed to load (%s: %s); trying an older checkpoint", cand,
                            type(e).__name__, e, exc_info=log.isEnabledFor(logging.DEBUG))
                ok = False
            if all_true(ok):
                set_adam_step(self.optimizer, self.state.step)
                self.source.load_state_dict(self.state.data)
                self.objective.load_state_dict(self.state.objective)
                if self.rt.is_rank0:
                    log.info("resumed from %s: step %d, stage %s step %d, %d samples consumed", cand,
                             self.state.step, plan.name, self.state.step_in_stage, self.state.consumed_samples)
                return
        raise RuntimeError(f"resume: no checkpoint in {self.run_dir / 'ckpt'} could be loaded")

    def _restore_partial(self, plan: StagePlan, ckpt: Path) -> None:
        src = resuming.partial_base(self.run_dir, plan, ckpt, self.model, self.optimizer)
        if plan.cfg.init_from:
            self._init_from(plan)
            src += f" + init_from {plan.cfg.init_from}"
        if self.rt.is_rank0:
            have, miss = ckpt_io.loaded_names(self.model, ckpt)
            log.info("resume from partial checkpoint %s: %d trainable tensors from it, %d frozen from %s",
                     ckpt, len(have), len(miss), src)

    # ---- what objectives may use -----------------------------------------------------------------------------------
    def _stage_context(self) -> StageContext:
        """What the stage's objective may use (made for each call; see __init__)."""
        plan = self.stage
        return StageContext(
            plan=plan, run_dir=self.run_dir, step_slice=self._step_slice(), step=self.state.step, model=self.model,
            image_token_id=(self.cfg.model.connector or ConnectorConfig()).image_token_id,
            new_source=lambda consumed: self.build_source(plan, self.cfg.model, self.data_dir, consumed),
            forward_only=self._forward_only, reference_model=self._reference_model,
            dataset_sizes=[len(d) for d in getattr(self.source, "mm_sets", [])],
            model_config=self.cfg.model, data_dir=self.data_dir, chunks=self.chunks)

    def _forward_only(self, batches: list[dict], forward_step: Callable, chunks: list | None = None) -> list[dict]:
        """megatron's schedule without backward over this rank's micro-batches (the training model by default)."""
        model = chunks or self.model
        plan = self.stage
        with torch.no_grad():
            return get_forward_backward_func()(
                forward_step_func=forward_step,
                data_iterator=schedule_iterator(to_device(batches, self.rt.device), len(model)),
                model=model if len(model) > 1 else model[0], num_microbatches=len(batches),
                seq_length=plan.seq_length * plan.micro_batch_size, micro_batch_size=1, forward_only=True)

    def _reference_model(self) -> list:
        """A frozen copy of the model chunks with the stage's initial weights (built under a saved and restored RNG,
        so the training run draws the same random numbers with or without it). At the stage's first step those are
        the current weights, and a checkpoint of them is written when none exists (a first stage has no earlier one);
        a run resumed inside the stage reads the same weights back from that checkpoint."""
        from omni_mega.training.state import capture_rng, restore_rng

        plan = self.stage
        rng = capture_rng()
        copy = [c.to(self.rt.device) for c in build_chunks(self.cfg.model, self.cfg.parallel, self.vocab_size,
                                                           max_seq_length(self.plans), self.dtype)]
        restore_rng(rng)
        for dst, src in zip(copy, self.chunks):  # frozen parameters stay as they were at the stage start
            dst.load_state_dict(src.state_dict())
            dst.requires_grad_(False)
            dst.eval()
        start = ckpt_io.step_dir(self.run_dir, plan.start_step)
        if self.state.step == plan.start_step:
            if not start.exists():
                self.save()
        elif start.exists():
            ckpt_io.load_checkpoint(start, copy, None, with_optimizer=False)
        else:
            raise RuntimeError(f"stage {plan.name}: resumed at step {self.state.step}, but its reference model (the "
                               f"stage's initial weights) has no checkpoint at step {plan.start_step} ({start})")
        set_rope_base(copy, self.stage.rope_base)
        return copy

    # ---- one step -----------------------------------------------------------------------------------------------
    def _step_slice(self) -> data_source.StepSlice:
        plan = self.stage
        num_micro = plan.global_batch_size // (plan.micro_batch_size * self.rt.dp)
        return data_source.StepSlice(self.rt.dp_rank(), self.rt.dp, num_micro, plan.micro_batch_size,
                                     plan.seq_length)

    def train_step(self) -> StepResult:
        from megatron.core import parallel_state as ps

        plan = self.stage
        if not self._stage_started:  # the stage's first step in this process: let the objective prepare
            self.objective.start_stage(self._stage_context())
            self._stage_started = True
        if self.prefetch is None:
            self.prefetch = Prefetcher(self.source, self._step_slice(), plan.end_step - self.state.step,
                                       self.cfg.data.prefetch_steps)
        lr = self.lr_plan.lr(self.state.step)
        set_lr(self.optimizer, lr, self.cfg.optim.weight_decay)
        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        batches, wait_ms = self.prefetch.next_step()
        # The ratio target is the one this step's packs were drawn for: read before `advance`.
        data_values = self.source.step_metrics(step_stats(batches, ps.get_data_parallel_group()))
        # An objective may train on micro-batches of its own making (GRPO: the rollouts of these prompts).
        batches = self.objective.before_step(self._stage_context(), batches) or batches
        losses = get_forward_backward_func()(
            forward_step_func=self.objective.forward_step,
            data_iterator=schedule_iterator(to_device(batches, self.rt.device), len(self.model)),
            model=self.model if len(self.model) > 1 else self.model[0], num_microbatches=len(batches),
            # b packs of a micro-batch travel as one packed sequence of b x S positions
            seq_length=plan.seq_length * plan.micro_batch_size, micro_batch_size=1, forward_only=False,
        )
        values = reduce_metrics(losses, self.objective.metric_names)
        values.update(model_step_metrics(self.chunks, len(batches)))  # the model's own terms (MoE aux loss)
        finite = math.isfinite(values["loss"]) and not any_true(not grads_finite(self.model))
        if finite:
            ok, grad_norm, _ = self.optimizer.step()
        else:  # no update from a non-finite step; Adam's shared step stays equal to the global step (resume)
            ok, grad_norm = False, float("nan")
            set_adam_step(self.optimizer, self.state.step + 1)
        values.update(data_values)
        values.update(self.objective.step_metrics())
        self.source.advance(plan.global_batch_size)
        self.prefetch.step_done()
        s = self.state
        s.step += 1
        s.step_in_stage = s.step - plan.start_step
        s.stage_index, s.stage_name = plan.index, plan.name
        s.consumed_samples = self.source.consumed_samples
        s.consumed_tokens += plan.tokens // plan.steps
        s.lr, s.rope_base = lr, plan.rope_base
        s.skipped_in_a_row = 0 if finite else s.skipped_in_a_row + 1
        s.skipped_steps += not finite
        return StepResult(values["loss"], float(grad_norm if grad_norm is not None else 0.0), lr, not ok, values,
                          wait_ms)

    # ---- the loop -----------------------------------------------------------------------------------------------
    def save(self) -> Path:
        if not all_true(all(bool(torch.isfinite(p).all()) for c in self.chunks for p in c.parameters())):
            raise TrainingDiverged(f"step {self.state.step}: the model holds non-finite weights; no checkpoint is "
                                   "written from them (resume from an earlier checkpoint with a lower LR)")
        s = self.state
        s.save, s.trainable = self.stage.cfg.save, list(self.stage.trainable)
        s.data = self.source.state_dict()
        s.objective = self.objective.state_dict()
        return ckpt_io.save_checkpoint(self.run_dir, self.model, self.optimizer, s)

    def _record(self, r: StepResult, dt: float) -> dict:
        plan, s = self.stage, self.state
        rec = {
            "step": s.step, "stage": plan.name, "stage_index": plan.index, "stage_step": s.step_in_stage,
            "objective": plan.objective, "grad_norm": r.grad_norm, "lr": r.lr, "tokens": s.consumed_tokens,
            "tokens_per_s": plan.tokens / plan.steps / dt, "trainable_params": self.trainable,
            "seq_length": plan.seq_length, "rope_base": plan.rope_base, "skipped": r.skipped,
            "data_wait_ms": round(r.data_wait_ms, 3), "skipped_steps": s.skipped_steps,
            "host_rss_mb": host_rss_mb(),
        }
        rec.update(r.metrics)
        for m in plan.lr_mult:
            rec[f"lr/{m.group}"] = r.lr * m.mult
        return rec

    def _run_stage(self, plan: StagePlan, losses: list[float]) -> bool:
        """Steps to the end of the stage (checkpointing as it asks); False when a stop request ended the run."""
        start, first = time.perf_counter(), self.state.step
        try:
            while self.state.step < plan.end_step:
                t0 = time.perf_counter()
                r = self.train_step()
                losses.append(r.loss)
                self.metrics.write(self._record(r, time.perf_counter() - t0))
                self._check_skips(r)
                s, iv = self.state, plan.cfg.ckpt_interval
                saved = s.step == plan.end_step or bool(iv and s.step_in_stage % iv == 0)
                if saved:
                    self.save()
                if s.step == plan.end_step and plan.cfg.eval is not None and plan.objective not in PART_OBJECTIVES:
                    self._evaluate(plan)
                if self.stop.requested():  # SLURM time limit ahead (see training/stop.py): checkpoint and leave
                    if not saved:
                        self.save()
                    if self.rt.is_rank0:
                        self.stop.clear()
                        log.info("stop requested: checkpoint at step %d written, exiting (resume with --resume auto)",
                                 s.step)
                    return False
                self._log_progress(r, first, start)
        finally:
            self._close_prefetch()
        return True

    def _check_skips(self, r: StepResult) -> None:
        s, limit = self.state, self.cfg.train.max_skipped_steps
        if r.skipped and self.rt.is_rank0:
            log.warning("step %d skipped: loss %s, gradients %s (%d in a row, %d in the run)", s.step, r.loss,
                        "finite" if math.isfinite(r.grad_norm) else "not finite", s.skipped_in_a_row,
                        s.skipped_steps)
        if s.skipped_in_a_row >= limit:
            raise TrainingDiverged(f"{s.skipped_in_a_row} steps in a row (to step {s.step}) had a non-finite loss or "
                                   f"gradient (train.max_skipped_steps={limit}); stopped without writing a "
                                   "checkpoint. Resume from an earlier checkpoint, e.g. with a lower LR.")

    def _close_prefetch(self) -> None:
        if self.prefetch is not None:
            self.prefetch.close()
            self.prefetch = None

    def _evaluate(self, plan: StagePlan) -> None:
        """The stage's held-out conversations, answered greedily (`training.evaluate`); a line in eval.jsonl and
        eval_<stage>.md. Generation needs the whole model in one chunk per rank: skipped (said) under pp > 1."""
        from omni_mega.data.readers import open_eval_conversations
        from omni_mega.training.evaluate import answer_dataset, write_eval

        e = plan.cfg.eval
        if len(self.chunks) > 1 or self.cfg.parallel.pp > 1:
            if self.rt.is_rank0:
                log.warning("stage %s: eval skipped (generation runs at pp = 1; evaluate the checkpoint with "
                            "`omni-mega eval`)", plan.name)
            return
        ds = open_eval_conversations(e.heldout, self.data_dir)
        rows = answer_dataset(self.chunks[0], self.cfg.model, ds, list(range(min(e.samples, len(ds)))),
                              min_pixels=plan.min_pixels, max_pixels=plan.max_pixels,
                              vocab_size=int(ds.tokenizer["vocab_size"]), max_new_tokens=e.max_new_tokens)
        if self.rt.is_rank0:
            acc = sum(r["exact"] for r in rows) / max(len(rows), 1)
            write_eval(rows, self.run_dir / f"eval_{plan.name}", self.state.step)
            with open(self.run_dir / "eval.jsonl", "a") as f:
                f.write(json.dumps({"step": self.state.step, "stage": plan.name, "exact_match": acc,
                                    "n": len(rows)}) + "\n")
            log.info("stage %s: held-out exact match %.1f%% of %d (eval_%s/eval.md)", plan.name, 100 * acc,
                     len(rows), plan.name)

    def _log_progress(self, r: StepResult, first: int, start: float) -> None:
        s, plan, total = self.state, self.stage, self.cfg.total_steps
        if self.rt.is_rank0 and (s.step % self.cfg.train.log_interval == 0 or s.step == first + 1):
            rate = (s.step - first) / (time.perf_counter() - start)
            log.info("step %5d/%d | %s | loss %.4f | grad %.3f | lr %.2e | %6.0f tok/s | data wait %.0f ms | ETA %s",
                     s.step, total, plan.name, r.loss, r.grad_norm, r.lr, plan.tokens / plan.steps * rate,
                     r.data_wait_ms, _hms((total - s.step) / max(rate, 1e-9)))

    def train(self) -> list[float]:
        """Runs the remaining steps of every stage; returns this process's per-step losses (the rest of each step's
        record is in metrics.jsonl: nothing per step is kept in memory besides one float)."""
        losses: list[float] = []
        try:
            for plan in self.plans[self.stage.index:]:
                if plan.index != self.stage.index:
                    self._enter_stage(plan, fresh=True)
                if not self._run_stage(plan, losses):
                    break
        finally:  # the run dir is free again once this process writes nothing more to it
            self.metrics.close()
            if self.lock is not None:
                self.lock.release()
        return losses


def host_rss_mb() -> float:
    """Resident memory of this process in MiB (Linux /proc; 0.0 elsewhere): a leak shows as a rising line."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return 0.0


def grads_finite(model: list) -> bool:
    """Every gradient this rank holds is finite: one check per megatron DDP grad buffer (a flat tensor)."""
    for m in model:
        for name in ("buffers", "expert_parallel_buffers"):
            buffers = getattr(m, name, None)
            if not isinstance(buffers, list):  # not a megatron DDP wrapper (nn.Module.buffers is a method)
                continue
            if not all(bool(torch.isfinite(buf.grad_data).all()) for buf in buffers):
                return False
    return True


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
