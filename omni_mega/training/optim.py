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

import contextlib
import logging

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.optimizer_config import ParamKey, ParamPredicate

from omni_mega.config import OptimConfig

log = logging.getLogger(__name__)
LR_MULT_ATTR = "_omni_lr_mult"


def use_dist_opt(o: OptimConfig | None = None) -> bool:
    """megatron's distributed optimizer (Adam state and fp32 master weights sharded over data-parallel ranks):
    `optim.distributed_optimizer`, by default on with CUDA and off on CPU (where it also runs, over gloo)."""
    flag = None if o is None else o.distributed_optimizer
    return torch.cuda.is_available() if flag is None else bool(flag)


def wrap_ddp(chunks: list, old: list | None = None, o: OptimConfig | None = None) -> list:
    """DDP-wraps the (unwrapped) chunks for their current requires_grad set. `old` wrappers are disarmed: their
    grad hooks stay registered on the parameters but no longer find any parameter of theirs."""
    for m in old or []:
        m.param_to_bucket_group = {}
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=use_dist_opt(o)
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
        bf16=dtype == torch.bfloat16, params_dtype=dtype, use_distributed_optimizer=use_dist_opt(o),
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
    """[(model param, optimizer param, torch optimizer)], or None for a distributed optimizer (see dist_carry_over)."""
    from megatron.core.optimizer.optimizer import ChainedOptimizer, Float16OptimizerWithFloat16Params, FP32Optimizer

    subs = optimizer.chained_optimizers if isinstance(optimizer, ChainedOptimizer) else [optimizer]
    out = []
    for o in subs:
        if isinstance(o, Float16OptimizerWithFloat16Params):
            for mg, fg in zip(o.float16_groups, o.fp32_from_float16_groups):
                out += [(m, f, o.optimizer) for m, f in zip(mg, fg)]
            out += [(p, p, o.optimizer) for g in o.fp32_from_fp32_groups for p in g]
        elif isinstance(o, FP32Optimizer):
            # (a part with nothing trainable, such as the dense part when only experts train, has no optimizer)
            out += [(p, p, o.optimizer) for g in (o.optimizer.param_groups if o.optimizer else []) for p in g["params"]]
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
        if pairs is None and not _dist_opts(optimizer):
            log.warning("optimizer state not carried over: %s has no per-parameter mapping; Adam moments restart "
                        "at this stage", type(optimizer).__name__)
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
    for o in _dist_opts(optimizer) if pairs is None else []:
        if not isinstance(o.optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            continue  # fused Adams (TE, apex) keep one step per parameter group, which megatron's checkpoint holds
        for st in o.optimizer.state.values():
            if st:
                st["step"] = torch.tensor(float(global_step))


@contextlib.contextmanager
def keep_missing_dist_keys(optimizer):
    """megatron-core 0.16's reshardable loaders copy every key of a parameter's live optimizer state from the
    checkpoint, but with torch's Adam (no TE/apex: CPU, or a GPU without them) the live state also holds a per-
    parameter `step` that the checkpoint does not (it keeps one step per group) -> KeyError. Inside this context a
    key the checkpoint lacks keeps its live value; `set_adam_step` sets the step after the load."""
    patched = []
    for o in _dist_opts(optimizer):
        orig = o._set_main_param_and_optimizer_states

        def tolerant(model_param, tensors, o=o, orig=orig):
            live = o._get_main_param_and_optimizer_states(model_param)
            orig(model_param, {k: tensors.get(k, v) for k, v in live.items()})

        o._set_main_param_and_optimizer_states = tolerant
        patched.append(o)
    try:
        yield
    finally:
        for o in patched:
            del o._set_main_param_and_optimizer_states  # back to the class method


# ---- the distributed optimizer ----------------------------------------------------------------------------------
# megatron's DistributedOptimizer keeps, on each data-parallel rank, an fp32 main copy and Adam moments for a
# contiguous range of every parameter's flattened elements; the ranges follow the DDP grad-buffer layout, which
# changes whenever the trainable set does. Carrying state across a stage boundary therefore reshards: for each
# parameter trainable before and after (in the same order on every rank), each rank writes its old range into a
# zero tensor of the parameter's size, an all-reduce over the data-parallel group assembles the whole state, and each
# rank copies out its new range. Peak extra memory is one parameter's state, not the model's.

_DIST_KEYS = ("param", "exp_avg", "exp_avg_sq")


def _dist_opts(optimizer) -> list:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    from megatron.core.optimizer.optimizer import ChainedOptimizer

    subs = optimizer.chained_optimizers if isinstance(optimizer, ChainedOptimizer) else [optimizer]
    return [o for o in subs if isinstance(o, DistributedOptimizer)]


def dist_snapshot(optimizer, chunks: list) -> dict | None:
    """{"trainable": [params trainable now, in model order], "dp_group": group, model param: (start, end,
    {key: clone of this rank's shard})} for a distributed optimizer, or None when there is none. A rank holds
    entries only for parameters whose flattened elements intersect its shard."""
    opts = _dist_opts(optimizer) if optimizer is not None else []
    if not opts:
        return None
    snap: dict = {"trainable": [p for c in chunks for p in c.parameters() if p.requires_grad],
                  "dp_group": opts[0].data_parallel_group}
    for o in opts:
        for p in o.model_param_gbuf_map:
            r = o._get_model_param_range_map(p)["param"]
            tensors = o._get_main_param_and_optimizer_states(p)
            snap[p] = (r.start, r.end, {k: tensors[k].detach().clone() for k in _DIST_KEYS if k in tensors})
    return snap


def _init_states(o) -> None:
    """Creates the inner optimizer's per-parameter state in its own format with a no-op step (lr = wd = 0, zero
    grads): Adam moments stay zero and no main parameter moves."""
    saved = [(g["lr"], g.get("weight_decay", 0.0)) for g in o.optimizer.param_groups]
    for g in o.optimizer.param_groups:
        g["lr"], g["weight_decay"] = 0.0, 0.0
    o._init_optimizer_states_with_dummy_values()
    for g, (lr, wd) in zip(o.optimizer.param_groups, saved):
        g["lr"], g["weight_decay"] = lr, wd


def dist_carry_over(optimizer, snap: dict | None, chunks: list, global_step: int) -> tuple[int, int]:
    """Reshards snapshotted state into the new distributed optimizer; see the comment above. Collective over the
    data-parallel group (every rank of it holds the same trainable set, so all take the same path).
    Returns (carried, fresh) parameter counts of this rank's model."""
    import torch.distributed as dist

    opts = _dist_opts(optimizer)
    if not opts or (snap is None and global_step == 0):
        return 0, 0
    for o in opts:
        _init_states(o)
    owner = {p: o for o in opts for p in o.model_param_gbuf_map}
    before = set(snap["trainable"]) if snap else set()
    carried = fresh = 0
    for c in chunks:
        for p in c.parameters():  # the same order on every data-parallel rank
            if not p.requires_grad:
                continue
            if p not in before:
                fresh += 1
                continue
            full = torch.zeros(len(_DIST_KEYS), p.numel(), dtype=torch.float32, device=p.device)
            if p in snap:
                start, end, tensors = snap.pop(p)
                for i, k in enumerate(_DIST_KEYS):
                    if k in tensors:
                        full[i, start:end] = tensors[k].float().view(-1)
            dist.all_reduce(full, group=snap["dp_group"])
            if p in owner:
                o = owner[p]
                r = o._get_model_param_range_map(p)["param"]
                dst = o._get_main_param_and_optimizer_states(p)  # other keys (a per-parameter step) kept as they are
                with torch.no_grad():  # fp32 main shards are views of the (leaf) model parameters
                    o._set_main_param_and_optimizer_states(
                        p, {k: full[_DIST_KEYS.index(k), r.start:r.end] if k in _DIST_KEYS else v
                                for k, v in dst.items()})
            carried += 1
    set_adam_step(optimizer, global_step)
    return carried, fresh
