import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _seed():
    # Fresh but reproducible random inputs per test.
    torch.manual_seed(1234)


def devices() -> list[str]:
    """CPU always; CUDA when present (tests run the CUDA kernels only on a GPU machine)."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
