"""Process-group and megatron parallel-state set-up from a ParallelConfig.

NCCL with CUDA, gloo without (then megatron-core runs in CPU mode). Our own code receives the returned `Runtime`
(parallel state passed, not global); megatron-core keeps its own globals in `parallel_state`.
"""

from __future__ import annotations

import datetime
import logging
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from omni_mega.config import ParallelConfig
from omni_mega.config.checks import ConfigError
from omni_mega.runtime import cpu_mode
from omni_mega.runtime.capabilities import probe
from omni_mega.runtime.env import DistEnv, detect
from omni_mega.runtime.logging import setup_logging

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    env: DistEnv
    parallel: ParallelConfig
    device: torch.device
    dp: int  # data-parallel size

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_rank0(self) -> bool:
        return self.env.rank == 0

    def pp_rank(self) -> int:
        from megatron.core import parallel_state as ps

        return ps.get_pipeline_model_parallel_rank()

    def tp_rank(self) -> int:
        from megatron.core import parallel_state as ps

        return ps.get_tensor_model_parallel_rank()

    def dp_rank(self) -> int:
        from megatron.core import parallel_state as ps

        return ps.get_data_parallel_rank()

    def is_last_stage(self) -> bool:
        from megatron.core import parallel_state as ps

        return ps.is_pipeline_last_stage(ignore_virtual=True)


def _quiet_megatron_warnings() -> None:
    # Expected on CPU/without apex; they would otherwise repeat on every rank.
    warnings.filterwarnings("ignore", message=".*Apex is not installed.*")
    warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="megatron")
    # megatron's MoE token dispatchers call the tensor collectives torch 2.13 renamed (*_single): same operation.
    warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
                            category=FutureWarning)


def init_distributed(parallel: ParallelConfig, *, seed: int = 1234, timeout_s: int = 600) -> Runtime:
    """Initialises torch.distributed and megatron's parallel state; idempotent within a process."""
    env = detect()
    setup_logging(env.rank)
    _quiet_megatron_warnings()
    model_parallel = parallel.tp * parallel.pp * parallel.cp
    if env.world_size % model_parallel:
        raise ConfigError(
            f"parallel: world size {env.world_size} is not divisible by tp x pp x cp = {model_parallel}"
        )
    if env.world_size % (parallel.tp * parallel.ep * parallel.pp):
        raise ConfigError(f"parallel.ep: world size {env.world_size} is not divisible by tp x ep x pp = "
                          f"{parallel.tp * parallel.ep * parallel.pp}")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    else:
        cpu_mode.enable()
        device = torch.device("cpu")
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        if env.launcher == "single" and "MASTER_PORT" not in os.environ:
            # A lone process needs no agreed port: a free one avoids clashing with another local run on 29500.
            os.environ["MASTER_PORT"] = str(_free_port())
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        dist.init_process_group(
            backend="nccl" if cuda else "gloo", rank=env.rank, world_size=env.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tp,
            pipeline_model_parallel_size=parallel.pp,
            virtual_pipeline_model_parallel_size=parallel.vpp,
            context_parallel_size=parallel.cp,
            # Experts split over `ep` ranks of the data-parallel group (expert tensor parallelism = tp).
            expert_model_parallel_size=parallel.ep,
        )
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    rt = Runtime(env=env, parallel=parallel, device=device, dp=env.world_size // model_parallel)
    if env.rank == 0:
        log.info("omni_mega on %d process(es) via %s: tp=%d pp=%d vpp=%s cp=%d sp=%s ep=%d dp=%d, %s",
                 env.world_size, env.launcher, parallel.tp, parallel.pp, parallel.vpp, parallel.cp, parallel.sp,
                 parallel.ep, rt.dp, "CUDA/NCCL" if cuda else "CPU/gloo (development mode)")
        log.info("capabilities: %s", probe().summary())
    return rt


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shutdown() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    cpu_mode.disable()
