"""Small collectives over a few numbers: the one place that knows "all-reduce only when there is someone to reduce
with" and which device the process group wants its tensors on (CUDA for NCCL, CPU for gloo)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def group_size(group=None) -> int:
    """World size of `group` (the default group when None); 1 without torch.distributed."""
    return dist.get_world_size(group) if dist.is_initialized() else 1


def _device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo (CPU runs) reduces CPU tensors.
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def all_reduce_values(values: Sequence[float | int], op: str = "sum", group=None,
                      dtype: torch.dtype = torch.float64) -> list:
    """`values` reduced elementwise over `group` (`op`: sum | max | min) as Python numbers: ints for integer dtypes,
    floats otherwise. Every rank of the group must call it with the same number of values."""
    t = torch.tensor(list(values), dtype=dtype)
    if group_size(group) > 1 and t.numel():
        d = t.to(_device())
        dist.all_reduce(d, op=_OPS[op], group=group)
        t = d.cpu()
    return t.tolist()


def all_reduce_tensor(t: torch.Tensor, op: str = "sum", group=None) -> torch.Tensor:
    """A CPU tensor reduced elementwise over `group` (a copy; the input is left alone)."""
    if group_size(group) <= 1 or not t.numel():
        return t.clone()
    d = t.to(_device())
    dist.all_reduce(d, op=_OPS[op], group=group)
    return d.cpu()


def all_reduce_scalar(value: float | int, op: str = "sum", group=None, dtype: torch.dtype = torch.float64):
    """One number reduced over `group` (see `all_reduce_values`)."""
    return all_reduce_values([value], op, group, dtype)[0]


def all_true(flag: bool, group=None) -> bool:
    """True on every rank when `flag` is true on every rank of `group`."""
    return bool(all_reduce_scalar(int(bool(flag)), "min", group, torch.int64))


def any_true(flag: bool, group=None) -> bool:
    """True on every rank when `flag` is true on any rank of `group`."""
    return bool(all_reduce_scalar(int(bool(flag)), "max", group, torch.int64))


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: every rank's [n, ...] tensor concatenated in rank order. Backward: each rank's slice receives the
    sum over ranks of the gradients with respect to it (an all-reduce of the full gradient, then this rank's rows:
    gloo has no reduce-scatter for CPU tensors)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, group) -> torch.Tensor:
        ctx.group, ctx.n = group, t.size(0)
        ctx.rank = dist.get_rank(group)
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, t.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None


def all_gather_with_grad(t: torch.Tensor, group=None) -> torch.Tensor:
    """`t` ([n, ...], the same n on every rank) gathered over `group` in rank order, differentiable: the loss of every
    rank reaches every rank's inputs. Without a group to gather over, `t` itself."""
    if group_size(group) <= 1:
        return t
    return _AllGatherWithGrad.apply(t, group)
