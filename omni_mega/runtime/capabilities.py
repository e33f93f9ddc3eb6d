"""What this machine offers (CUDA, NCCL, TransformerEngine, DALI, Triton, our extension), probed once."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Capabilities:
    cuda: bool
    nccl: bool
    te: bool
    dali: bool
    triton: bool
    extension_cpu: bool
    extension_cuda: bool
    torch: str
    megatron_core: str

    def summary(self) -> str:
        flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in asdict(self).items() if isinstance(v, bool))
        return f"torch {self.torch}, megatron-core {self.megatron_core}: {flags}"


def _imports(name: str) -> bool:
    try:
        __import__(name)
        return True
    except Exception:  # TE raises RuntimeError, not ImportError, without cuDNN
        return False


@functools.cache
def probe() -> Capabilities:
    from omni_mega.runtime import extension as _ext

    try:
        from megatron.core import package_info

        mcore = package_info.__version__
    except Exception:
        mcore = "missing"
    cuda = torch.cuda.is_available()
    return Capabilities(
        cuda=cuda,
        nccl=cuda and torch.distributed.is_nccl_available(),
        te=cuda and _imports("transformer_engine.pytorch"),
        dali=_imports("nvidia.dali"),
        triton=_imports("triton"),
        extension_cpu=_ext.has_cpu_extension(),
        extension_cuda=_ext.has_cuda_extension(),
        torch=torch.__version__,
        megatron_core=mcore,
    )
