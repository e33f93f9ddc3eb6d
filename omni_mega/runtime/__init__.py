"""Distributed runtime: process groups, megatron parallel state, CPU mode, capability probe, logging."""

from omni_mega.runtime.capabilities import Capabilities, probe
from omni_mega.runtime.distributed import Runtime, init_distributed, shutdown
from omni_mega.runtime.env import DistEnv, detect, first_slurm_host

__all__ = ["Capabilities", "DistEnv", "Runtime", "detect", "first_slurm_host", "init_distributed", "probe", "shutdown"]
