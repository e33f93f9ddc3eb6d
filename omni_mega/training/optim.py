"""Megatron DDP wrappers and optimizer for a stage's trainable set, rebuilt at every stage boundary, with the Adam
state of parameters that stay trainable carried over.

megatron's DistributedDataParallel sizes its grad buffers from the parameters with requires_grad at construction,
and get_megatron_optimizer groups only those: both are rebuilt when the trainable set changes. Parameters that stay
trainable keep their exact Adam moments (and fp32 master copy under bf16). megatron-core's optimizers share one
step count across parameters (its checkpoint format stores one common step, written by rank 0), so we keep every
parameter's Adam step equal to the run's global step: a newly trainable parameter starts with zero moments at the
global step (its bias correction is then ~1: the first updates are ~sqrt(1-beta2)/(1-beta1) of a fresh Adam's, a
built-in gentle start), and after a load the step is set from the trainer state (a pipeline rank with nothing
trainable writes no step into the shared common state).
"""

from __future__ import annotations

import logging

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.optimizer_config import ParamKey, ParamPredicate

from omni_mega.config import OptimConfig

log = logging.getLogger(__name__)
LR_MULT_ATTR = "_omni_lr_mult"


def wrap_ddp(chunks: list, old: list | None = None) -> list:
    """DDP-wraps the (unwrapped) chunks for their current requires_grad set. `old` wrappers are disarmed: their
    grad hooks stay registered on the parameters but no longer find any parameter of theirs."""
    for m in old or []:
        m.param_to_bucket_group = {}
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=torch.cuda.is_available()
    )
    wrapped = [DistributedDataParallel(c.config, ddp_cfg, c, disable_bucketing=i > 0) for i, c in enumerate(chunks)]
    cfg0 = chunks[0].config
    cfg0.finalize_model_grads_func = finalize_model_grads
    cfg0.no_sync_func = [m.no_sync for m in wrapped] if len(wrapped) > 1 else wrapped[0].no_sync
    cfg0.grad_scale_func = None
    return wrapped


def build_optimizer(model: list, o: OptimConfig, dtype: torch.dtype, lr_mults: dict[int, float]):
    """get_megatron_optimizer over the DDP-wrapped chunks; parameters with an LR multiplier (id -> mult) get their
    own parameter groups (group['lr_mult'])."""
    ocfg = OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad,
        bf16=dtype == torch.bfloat16, params_dtype=dtype, use_distributed_optimizer=torch.cuda.is_available(),
    )
    from megatron.core.optimizer import get_standard_config_overrides

    overrides = get_standard_config_overrides(ocfg)
    for c in model:
        for p in c.parameters():
            if hasattr(p, LR_MULT_ATTR):
                delattr(p, LR_MULT_ATTR)
            if id(p) in lr_mults:
                setattr(p, LR_MULT_ATTR, lr_mults[id(p)])
    # Every rank must see the same multipliers in the same order (megatron aligns groups across ranks).
    for mult in sorted(set(lr_mults.values())):
        pred = ParamPredicate(name=f"omni_lr_mult_{mult!r}",
                              fn=lambda p, m=mult: getattr(p, LR_MULT_ATTR, None) == m)
        overrides[ParamKey(predicate=pred)] = {"lr_mult": mult}
    return get_megatron_optimizer(ocfg, model, config_overrides=overrides)


def set_lr(optimizer, lr: float, weight_decay: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
        g["weight_decay"] = weight_decay * g.get("wd_mult", 1.0)


def _pairs(optimizer):
    """[(model param, optimizer param, torch optimizer)] or None for optimizers we cannot map (distributed)."""
    from megatron.core.optimizer.optimizer import ChainedOptimizer, Float16OptimizerWithFloat16Params, FP32Optimizer

    subs = optimizer.chained_optimizers if isinstance(optimizer, ChainedOptimizer) else [optimizer]
    out = []
    for o in subs:
        if isinstance(o, Float16OptimizerWithFloat16Params):
            for mg, fg in zip(o.float16_groups, o.fp32_from_float16_groups):
                out += [(m, f, o.optimizer) for m, f in zip(mg, fg)]
            out += [(p, p, o.optimizer) for g in o.fp32_from_fp32_groups for p in g]
        elif isinstance(o, FP32Optimizer):
            out += [(p, p, o.optimizer) for g in o.optimizer.param_groups for p in g["params"]]
        else:
            return None
    return out


def snapshot(optimizer) -> dict | None:
    """{id(model param): (Adam state dict, fp32 master or None)} of every parameter the optimizer holds."""
    pairs = _pairs(optimizer) if optimizer is not None else None
    if pairs is None:
        return None
    return {id(m): (dict(t.state.get(f, {})), f.detach().clone() if f is not m else None) for m, f, t in pairs}


def carry_over(optimizer, snap: dict | None, global_step: int) -> tuple[int, int]:
    """Restores snapshotted state for parameters still trainable; others start at zero moments and step
    `global_step`. Returns (carried, fresh) parameter counts on this rank."""
    pairs = _pairs(optimizer)
    if snap is None or pairs is None:
        if pairs is None:
            log.warning("optimizer state not carried over: %s has no per-parameter mapping (distributed "
                        "optimizer); Adam moments restart at this stage", type(optimizer).__name__)
        return 0, 0
    carried = fresh = 0
    for m, f, t in pairs:
        if id(m) in snap:
            state, master = snap[id(m)]
            if state:
                t.state[f] = state
            if master is not None:
                f.data.copy_(master)
            carried += 1
        elif global_step > 0:
            t.state[f] = {"step": torch.tensor(float(global_step)), "exp_avg": torch.zeros_like(f),
                          "exp_avg_sq": torch.zeros_like(f)}
            fresh += 1
    return carried, fresh


def set_adam_step(optimizer, global_step: int) -> None:
    """Sets every parameter's Adam step to the global step (see the module docstring) after a checkpoint load."""
    pairs = _pairs(optimizer)
    for _, f, t in pairs or []:
        st = t.state.get(f)
        if st:
            st["step"] = torch.tensor(float(global_step))
