"""The compiled op libraries, as the ops see them (loading lives in `omni_mega.runtime.extension`, below the ops, so
the capability probe can report them without importing the ops)."""

from omni_mega.runtime.extension import has_cpu_extension, has_cuda_extension, load_error

__all__ = ["has_cpu_extension", "has_cuda_extension", "load_error"]
