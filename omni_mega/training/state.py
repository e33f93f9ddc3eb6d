"""Trainer state that is not model or optimizer tensors: counters (JSON, rank 0) and RNG states (one file per rank).

Everything a resumed run needs to continue bit for bit: the global step, the stage and step within it, the data
position, consumed tokens, and every random generator a step may draw from (Python, NumPy, torch CPU, CUDA, and
megatron's model-parallel tracker streams)."""

from __future__ import annotations

import pickle
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
    objective: dict = field(default_factory=dict)  # the stage objective's state_dict() (JSON; e.g. GRPO's rollouts)
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


# RNG files hold only tensors, ints, floats, strings, None, lists and dicts, so they load with
# torch.load(weights_only=True): a pickle of Python objects (what torch.save of random.getstate() and NumPy's state
# tuple wrote before) can run code when loaded, and a crafted one did.
RNG_FORMAT = "omni_mega.rng.v1"


class RngStateError(ValueError):
    """An RNG state file that is not in RNG_FORMAT (an old pickle, another program's file, or a damaged one)."""


def _python_plain(state: tuple) -> dict:
    version, words, gauss = state  # random.getstate(): (3, 625 ints < 2^32, None or float)
    return {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": gauss}


def _numpy_plain(state: tuple) -> dict:
    name, keys, pos, has_gauss, gauss = state  # np.random.get_state(legacy=True)
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def rng_to_plain(state: dict) -> dict:
    """capture_rng()'s dict -> the same states as plain tensors and numbers (what save_rng writes)."""
    tracker = state["tracker"]
    bad = [k for k, v in tracker.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"RNG tracker states {bad} are not tensors (a CUDA-graph-safe tracker?): cannot be saved")
    plain = {"format": RNG_FORMAT, "python": _python_plain(state["python"]), "numpy": _numpy_plain(state["numpy"]),
             "torch_cpu": state["torch_cpu"], "tracker": dict(tracker)}
    if "cuda" in state:
        plain["cuda"] = state["cuda"]
    return plain


def rng_from_plain(plain: dict, where: str) -> dict:
    """The inverse of rng_to_plain; `where` names the file in errors."""
    if not isinstance(plain, dict) or plain.get("format") != RNG_FORMAT:
        got = plain.get("format") if isinstance(plain, dict) else type(plain).__name__
        raise RngStateError(f"{where}: not an RNG state file in format {RNG_FORMAT} (got {got!r}); a checkpoint "
                            "written before that format cannot be resumed: start from a newer one or from scratch")
    try:
        py, npy = plain["python"], plain["numpy"]
        state = {
            "python": (py["version"], tuple(py["words"].tolist()), py["gauss"]),
            "numpy": (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]),
            "torch_cpu": plain["torch_cpu"], "tracker": dict(plain["tracker"]),
        }
    except (KeyError, TypeError, AttributeError) as e:
        raise RngStateError(f"{where}: RNG state file in format {RNG_FORMAT} lacks or garbles {e}") from None
    if "cuda" in plain:
        state["cuda"] = plain["cuda"]
    return state


def save_rng(path: Path) -> None:
    torch.save(rng_to_plain(capture_rng()), path)


def load_rng(path: Path) -> None:
    try:
        plain = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refused a global: an old-format file (Python objects) or a crafted one. Never unpickle it.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RngStateError(f"{path}: refusing to unpickle an RNG state that holds Python objects ({first}); "
                            f"only files in format {RNG_FORMAT} are loaded") from None
    restore_rng(rng_from_plain(plain, str(path)))
