"""CPU mode: run megatron-core's CUDA-assuming code paths on CPU with gloo. A development mode, not a fast path.

megatron-core calls `torch.cuda.current_device()`, creates tensors with `device="cuda"` or
`device=torch.cuda.current_device()` (causal masks, pipeline p2p buffers, grad buffers), calls `Tensor.cuda()`, and
keeps its model-parallel RNG streams in CUDA generators. On a machine without CUDA we:

1. install a `TorchFunctionMode` that rewrites any CUDA device argument (string, torch.device or int ordinal) of a
   torch function to CPU and turns `Tensor.cuda()` into a no-op, and
2. point the CUDA RNG helpers (`torch.cuda.{get,set}_rng_state`, `manual_seed`, megatron's
   `_get_cuda_rng_state`/`_set_cuda_rng_state`) at the CPU default generator, so megatron's
   `CudaRNGStatesTracker.fork()` swaps CPU generator states exactly as it would swap CUDA ones.

So the same TP/PP/dist-checkpointing code that runs on GPUs can be debugged on a laptop (shown to work with
megatron-core 0.16.1: GPTModel TP=2 and PP=2 train over gloo, and a dist checkpoint saved at TP=1 loads at TP=2 with
the same eval loss to 1e-6). `enable()` is idempotent and only ever entered when CUDA is absent; `disable()` undoes it.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

_CPU = torch.device("cpu")
_mode: "_CudaToCpuMode | None" = None


def _is_cuda(dev) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    # A bare int is a CUDA ordinal in torch's device-argument convention (torch.empty(..., device=0)).
    return isinstance(dev, int) and not isinstance(dev, bool)


def _map(dev):
    return _CPU if _is_cuda(dev) else dev


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments of every torch function to CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "cuda":  # Tensor.cuda() / Module.cuda() go through here as Tensor.cuda
            return args[0]
        if name == "type" and len(args) == 1 and not kwargs:
            # megatron's optimizer asserts `grad.type() == 'torch.cuda.FloatTensor'`: CPU tensors stand in for CUDA
            # ones in this mode, so report the CUDA type name.
            return func(*args).replace("torch.", "torch.cuda.", 1)
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs = {**kwargs, "device": _CPU}
        if name in ("to", "new_empty", "new_zeros", "new_ones", "new_full") and args:
            args = tuple(_map(a) if i > 0 and not isinstance(a, torch.Tensor) and _is_cuda(a) and not isinstance(a, int) else a
                         for i, a in enumerate(args))
            # Tensor.to(0) would be a CUDA ordinal too; only `to` takes a bare int as device.
            if name == "to" and len(args) > 1 and isinstance(args[1], int) and not isinstance(args[1], bool):
                args = (args[0], _CPU, *args[2:])
        return func(*args, **kwargs)


def _cpu_get_rng_state(device=None, *a, **k):
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state, device=None, *a, **k):
    torch.set_rng_state(new_state.cpu() if isinstance(new_state, torch.Tensor) else new_state)


def _cuda_replacements() -> dict[tuple[object, str], object]:
    """(module, attribute) -> CPU stand-in for every CUDA API megatron-core calls while training."""
    # torch.manual_seed itself calls torch.cuda.manual_seed_all: seed the CPU generator directly, no recursion.
    seed_cpu = lambda seed: torch.default_generator.manual_seed(int(seed))  # noqa: E731
    from megatron.core.tensor_parallel import random as mrandom

    return {
        # A torch.device, not the ordinal 0: the function mode is not active inside autograd's backward, where
        # megatron's sequence-parallel linears allocate with device=torch.cuda.current_device(); 0 would mean cuda:0
        # there. Every megatron training path uses the value only as a `device=` argument.
        (torch.cuda, "current_device"): lambda: _CPU,
        (torch.cuda, "device_count"): lambda: 1,
        (torch.cuda, "set_device"): lambda *a, **k: None,
        (torch.cuda, "synchronize"): lambda *a, **k: None,
        (torch.cuda, "get_rng_state"): _cpu_get_rng_state,
        (torch.cuda, "set_rng_state"): _cpu_set_rng_state,
        (torch.cuda.random, "get_rng_state"): _cpu_get_rng_state,
        (torch.cuda.random, "set_rng_state"): _cpu_set_rng_state,
        (torch.cuda, "manual_seed"): seed_cpu,
        (torch.cuda.random, "manual_seed"): seed_cpu,
        (torch.cuda, "manual_seed_all"): lambda seed: None,
        (torch.cuda, "empty_cache"): lambda: None,
        (torch.cuda, "memory_allocated"): lambda *a, **k: 0,
        (torch.cuda, "max_memory_allocated"): lambda *a, **k: 0,
        (mrandom, "_get_cuda_rng_state"): lambda *a, **k: torch.get_rng_state(),
        (mrandom, "_set_cuda_rng_state"): lambda new_state, *a, **k: _cpu_set_rng_state(new_state),
    }


_originals: dict[tuple[object, str], object] = {}


class _DropForkWarning(logging.Filter):
    # CudaRNGStatesTracker.fork() warns when the CPU RNG changes inside a fork; in CPU mode the CPU generator *is*
    # the forked "CUDA" generator, so the warning is a false alarm on every forward.
    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


_FORK_FILTER = _DropForkWarning()


def enable() -> None:
    """Enters CPU mode until `disable()`. Refuses when CUDA is present: GPUs use the real paths."""
    global _mode
    if _mode is not None:
        return
    if torch.cuda.is_available():
        raise RuntimeError("cpu_mode.enable(): CUDA is available; CPU mode is only for machines without a GPU")
    for (owner, name), stand_in in _cuda_replacements().items():
        _originals[(owner, name)] = getattr(owner, name)
        setattr(owner, name, stand_in)
    logging.getLogger("megatron.core.tensor_parallel.random").addFilter(_FORK_FILTER)
    _mode = _CudaToCpuMode()
    _mode.__enter__()
    log.info("CPU mode: megatron-core CUDA device arguments and RNG run on CPU (development mode)")


def disable() -> None:
    """Leaves CPU mode and restores every patched function (runtime.shutdown() calls this), so code that runs later in
    the same process, such as other tests or the Triton interpreter, sees plain torch again."""
    global _mode
    if _mode is None:
        return
    _mode.__exit__(None, None, None)
    _mode = None
    for (owner, name), original in _originals.items():
        setattr(owner, name, original)
    _originals.clear()
    logging.getLogger("megatron.core.tensor_parallel.random").removeFilter(_FORK_FILTER)


def is_enabled() -> bool:
    return _mode is not None


@contextlib.contextmanager
def suspended():
    """Runs a block without the device-rewriting function mode (the CUDA API stand-ins stay in place). For hot loops
    whose torch calls name no CUDA device, such as token-by-token generation, where the mode's Python hook on every
    torch call costs as much as the arithmetic of a small model. A no-op outside CPU mode."""
    if _mode is None or torch._C._len_torch_function_stack() == 0:
        yield
        return
    _mode.__exit__(None, None, None)
    try:
        yield
    finally:
        _mode.__enter__()
