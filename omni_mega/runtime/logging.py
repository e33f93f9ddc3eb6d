"""Rank-aware logging: rank 0 prints progress, other ranks print warnings and errors only."""

from __future__ import annotations

import logging
import sys

_configured = False


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    global _configured
    root = logging.getLogger()
    if _configured:
        root.setLevel(level if rank == 0 else logging.WARNING)
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[%(asctime)s r{rank}] %(message)s", "%H:%M:%S"))
    root.handlers[:] = [handler]
    root.setLevel(level if rank == 0 else logging.WARNING)
    for noisy in ("megatron", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
