"""Distributed runtime: process groups, megatron parallel state, CPU mode, capability probe, logging, collectives.

Names load on first use: `omni_mega.runtime.env` (rank, world size and rendezvous from torchrun or SLURM) is pure
Python, so planning a run (`--dry-run`) reads the environment without importing torch."""

from __future__ import annotations

import importlib

_WHERE = {"Capabilities": "capabilities", "probe": "capabilities", "Runtime": "distributed",
          "init_distributed": "distributed", "shutdown": "distributed", "DistEnv": "env", "detect": "env",
          "first_slurm_host": "env"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"omni_mega.runtime.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'omni_mega.runtime' has no attribute {name!r}")
