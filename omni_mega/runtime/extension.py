"""Loads the compiled libraries that register omni_mega's ops with the dispatcher.

`_C` defines every schema (csrc/ops.cpp) and the CPU kernels; `_C_cuda` adds CUDA kernels and exists only when the
package was built against CUDA torch. Either may be missing (a source checkout that was never built): the ops then
fall back to their plain-PyTorch references, and `runtime.capabilities.probe()` reports what is there.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

_loaded: dict[str, bool] = {}
_errors: dict[str, str] = {}


def _try_import(name: str) -> bool:
    if name not in _loaded:
        try:
            importlib.import_module(f"omni_mega.{name}")
            _loaded[name] = True
        except ImportError as e:  # not built, or built against another torch
            _loaded[name] = False
            _errors[name] = str(e)
    return _loaded[name]


def has_cpu_extension() -> bool:
    return _try_import("_C")


def has_cuda_extension() -> bool:
    # The CUDA library only registers implementations: the schemas must already exist.
    return has_cpu_extension() and _try_import("_C_cuda")


def load_error(name: str) -> str | None:
    return _errors.get(name)
