"""Trainer state that is not model or optimizer tensors: counters (JSON, rank 0) and RNG states (one file per rank).

Everything a resumed run needs to continue bit for bit: the global step, the stage and step within it, the data
position, consumed tokens, and every random generator a step may draw from (Python, NumPy, torch CPU, CUDA, and
megatron's model-parallel tracker streams)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done (global)
    stage_index: int = 0  # stage the run was in when saved
    stage_name: str = ""
    step_in_stage: int = 0  # steps of that stage done
    consumed_samples: int = 0
    consumed_tokens: int = 0
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient (no update), over the run
    skipped_in_a_row: int = 0
    data: dict = field(default_factory=dict)  # BatchSource.state_dict()
    lr: float = 0.0  # LR of the last step (informational: the schedule is a pure function of `step`)
    rope_base: float = 0.0
    save: str = "full"  # full | trainable_only
    trainable: list[str] = field(default_factory=list)  # the stage's trainable groups
    model: dict = field(default_factory=dict)  # the model config that wrote it (shape check on resume)
    parallel: dict = field(default_factory=dict)
    world_size: int = 1

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "TrainerState":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def capture_rng() -> dict:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {
        "python": random.getstate(), "numpy": np.random.get_state(), "torch_cpu": torch.get_rng_state(),
        "tracker": {k: v.clone() for k, v in get_cuda_rng_tracker().get_states().items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch_cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def save_rng(path: Path) -> None:
    torch.save(capture_rng(), path)


def load_rng(path: Path) -> None:
    restore_rng(torch.load(path, weights_only=False))
