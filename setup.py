"""Builds omni_mega._C (C++ CPU kernels, always) and omni_mega._C_cuda (CUDA kernels, when torch has CUDA).

Op schemas live once in csrc/ops.cpp (`TORCH_LIBRARY(omni_mega, m)`); every backend file only registers
implementations, so `_C` must be imported before `_C_cuda` (omni_mega/ops/_ext.py does that).
"""

import glob
import os

import torch
from setuptools import Extension, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")

# -g0 overrides Python's default -g: 47-83 s -> ~26 s per build on 2 cores.
CXX_FLAGS = ["-O3", "-g0", "-std=c++20", "-fopenmp", "-Wno-unused-function"]


def _sources(pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join(CSRC, pattern), recursive=True))


def extensions():
    exts = [
        CppExtension(
            "omni_mega._C",
            sources=[os.path.join(CSRC, "ops.cpp"), *_sources("**/*_cpu.cpp")],
            include_dirs=[os.path.join(HERE, CSRC)],
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    ]
    # Byte-level BPE for tools/preprocess_data.py: a plain pybind11 module (strings in, no torch), see csrc/bpe/.
    import pybind11

    exts.append(
        Extension(
            "omni_mega._bpe",
            sources=[os.path.join(CSRC, "bpe", f) for f in ("bytelevel_bpe.cpp", "jsonl.cpp", "bpe_module.cpp")],
            include_dirs=[os.path.join(HERE, CSRC), pybind11.get_include()],
            extra_compile_args=["-O3", "-g0", "-std=c++20"],
            language="c++",
        )
    )
    cu_sources = _sources("**/*.cu")
    if torch.version.cuda and cu_sources and os.environ.get("OMNI_MEGA_SKIP_CUDA", "0") != "1":
        # sm_80 (A100) and sm_90 (H100) unless the user narrows or widens it.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        exts.append(
            CUDAExtension(
                "omni_mega._C_cuda",
                sources=[os.path.join(CSRC, "cuda_module.cpp"), *cu_sources],
                include_dirs=[os.path.join(HERE, CSRC)],
                extra_compile_args={
                    "cxx": CXX_FLAGS,
                    "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"],
                },
            )
        )
    return exts


setup(
    ext_modules=extensions(),
    # ninja compiles in parallel (MAX_JOBS honoured by torch's BuildExtension) and incrementally.
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
