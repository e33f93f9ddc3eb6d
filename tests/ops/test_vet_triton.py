"""The Triton kernels of visual_head_vet (forward and backward): compiled on a GPU (fp32 and bf16), else under
TRITON_INTERPRET=1 on CPU (fp32 only: bf16 is broken in the interpreter; tiny shapes: it is ~1000x slower than torch).

The variable must be set before triton is first imported (triton.jit reads it when decorating, also for triton's
own standard library): tests/conftest.py sets it for the whole session when there is no GPU.
"""


import pytest
import torch

from omni_mega.ops import has_cpu_extension, has_cuda_extension, visual_head_vet
from omni_mega.testing import assert_matches_oracle
from tests.ops.test_vet import HEAD_NAMES, _fwd_bwd, _head_fn, _head_inputs, _head_ref_fn

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"

# tests/conftest.py sets TRITON_INTERPRET=1 without a GPU before anything imports triton.
try:
    from omni_mega.ops.triton import vet as tri

    _IMPORT_ERROR = None
except Exception as e:  # triton missing or the interpreter cannot load
    _IMPORT_ERROR = repr(e)

_HAS_OP = has_cuda_extension() if ON_GPU else has_cpu_extension()
pytestmark = pytest.mark.skipif(_IMPORT_ERROR is not None, reason=f"Triton interpreter unavailable: {_IMPORT_ERROR}")


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    if not ON_GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


# (N, d_in, Vt, num_indicators, D, block_n, block_v): Vt not a multiple of block_v nor of the 16-column tile; N = 1;
# d_in not a multiple of the 16-wide K tile; several row blocks.
SHAPES = [(1, 20, 37, 5, 6, 0, 0), (21, 19, 45, 4, 9, 8, 24)]


@pytest.mark.parametrize("shape", SHAPES)
def test_triton_fp32_matches_fp64_oracle(shape):
    n, d_in, vt, n_ind, d, bn, bv = shape
    ins64 = _head_inputs(n, d_in, vt, n_ind, d, device="cpu")
    ins32 = [t.detach().to(DEVICE, torch.float32).requires_grad_() for t in ins64]
    grad = torch.randn(n, d, dtype=torch.float64)
    oracle = _fwd_bwd(_head_ref_fn(n_ind), ins64, grad)
    got = _fwd_bwd(_head_fn(n_ind, backend="triton", block_n=bn, block_v=bv), ins32, grad.to(DEVICE, torch.float32))
    for name, a, o in zip(HEAD_NAMES, [got[0], *got[1]], [oracle[0], *oracle[1]]):
        assert_matches_oracle(a, o, name=name, floor=2e-5)


@pytest.mark.skipif(not _HAS_OP, reason="compares with the compiled vet ops (make build)")
def test_triton_and_the_op_share_statistics_and_backward():
    # Same saved mean/rstd/lse, and each backward accepts the other's: the two implementations can be mixed.
    ins = [t.detach().to(DEVICE, torch.float32) for t in _head_inputs(17, 16, 40, 4, 5, device="cpu")]
    got = tri.head_forward_triton(*ins, 4, 1e-5, 0, 16)
    want = torch.ops.omni_mega.vet_head_fwd(*ins, 4, 1e-5, 0, 16)
    for name, a, b in zip(("out", "mean", "rstd", "lse"), got, want):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5, msg=lambda m, name=name: f"{name}: {m}")
    grad = torch.randn(17, 5, device=DEVICE)
    got = tri.head_backward_triton(grad, *ins, *want, 4, 8, 16)
    want = torch.ops.omni_mega.vet_head_bwd(grad, *ins, *want, 4, 0, 0)
    for name, a, b in zip(HEAD_NAMES[1:], got, want):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA (bf16 is broken in the Triton interpreter)")
def test_triton_bf16_within_2x_of_pytorch_bf16():
    n, d_in, vt, n_ind, d = 300, 256, 1000, 5, 128
    ins64 = _head_inputs(n, d_in, vt, n_ind, d, device="cpu")
    ins16 = [t.detach().to(DEVICE, torch.bfloat16).requires_grad_() for t in ins64]
    ins16_ref = [t.detach().requires_grad_() for t in ins16]
    grad = torch.randn(n, d, dtype=torch.float64)
    oracle = _fwd_bwd(_head_ref_fn(n_ind), ins64, grad)
    ref16 = _fwd_bwd(_head_ref_fn(n_ind), ins16_ref, grad.to(DEVICE, torch.bfloat16))
    got = _fwd_bwd(_head_fn(n_ind, backend="triton", block_v=256), ins16, grad.to(DEVICE, torch.bfloat16))
    for i, name in enumerate(HEAD_NAMES):
        a, o, r = (got[0], oracle[0], ref16[0]) if i == 0 else (got[1][i - 1], oracle[1][i - 1], ref16[1][i - 1])
        assert_matches_oracle(a, o, ref_same_dtype=r, name=name)


def test_triton_rejects_fp64():
    ins = _head_inputs(2, 3, 5, 0, 4, device=DEVICE)
    with pytest.raises(ValueError, match="fp32/bf16/fp16"):
        visual_head_vet(*ins, backend="triton")
