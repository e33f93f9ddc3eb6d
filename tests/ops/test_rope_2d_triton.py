"""The Triton rope_2d kernel: compiled on a GPU (fp32 and bf16), else under TRITON_INTERPRET=1 on CPU (fp32 only:
bf16 is broken in the interpreter).

The variable must be set before triton is first imported (triton.jit reads it when decorating, also for triton's
own standard library): tests/conftest.py sets it for the whole session when there is no GPU.
"""


import pytest
import torch

from tests.ops.test_rope_2d import PACKS, _check_fwd_bwd, _pos

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.float32, torch.bfloat16] if ON_GPU else [torch.float32]

# tests/conftest.py sets TRITON_INTERPRET=1 without a GPU before anything imports triton.
try:
    from omni_mega.ops.triton import rope_2d as tri  # noqa: F401  (registers the triton ops)

    _IMPORT_ERROR = None
except Exception as e:  # triton missing or the interpreter cannot load
    _IMPORT_ERROR = repr(e)

from omni_mega.ops import rope_2d, rope_2d_qk, rope_2d_ref  # noqa: E402

pytestmark = pytest.mark.skipif(_IMPORT_ERROR is not None, reason=f"Triton interpreter unavailable: {_IMPORT_ERROR}")


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    if not ON_GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("grids,merge", PACKS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_matches_oracle(layout, grids, merge, dtype):
    pos = _pos(grids, merge).to(DEVICE)
    _check_fwd_bwd("triton", torch.randn(pos.size(0), 2, 20, device=DEVICE).to(dtype), pos, layout=layout)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_triton_strided_partial_and_ragged(layout):
    pos = torch.randint(0, 40, (7, 2), dtype=torch.int32, device=DEVICE)  # T = 7: not a multiple of the token block
    qkv = torch.randn(7, 3 * 2, 24, device=DEVICE)
    _check_fwd_bwd("triton", qkv[:, 2:4], pos, layout=layout, rotary_dim=16, theta=500.0)
    chan = torch.randn(7, 24, 2, device=DEVICE).transpose(1, 2)  # channel-strided
    _check_fwd_bwd("triton", chan, pos, layout=layout, rotary_dim=12)


def test_triton_qk_equals_reference():
    pos = _pos(*PACKS[1]).to(DEVICE)
    qkv = torch.randn(pos.size(0), 3, 3, 16, device=DEVICE)
    q = qkv[:, :, 0].requires_grad_()
    k = qkv[:, :2, 1].detach().requires_grad_()  # fewer k heads
    kw = dict(theta=10000.0, layout="half", rotary_dim=12)
    yq, yk = rope_2d_qk(q, k, pos, backend="triton", **kw)
    torch.testing.assert_close(yq, rope_2d_ref(q.detach(), pos, **kw))
    torch.testing.assert_close(yk, rope_2d_ref(k.detach(), pos, **kw))
    gq, gk = torch.randn_like(yq), torch.randn_like(yk)
    dq, dk = torch.autograd.grad((yq, yk), (q, k), (gq, gk))
    torch.testing.assert_close(dq, rope_2d_ref(gq, pos, inverse=True, **kw))
    torch.testing.assert_close(dk, rope_2d_ref(gk, pos, inverse=True, **kw))


def test_triton_empty_and_bad_input():
    empty = rope_2d(torch.randn(0, 2, 8, device=DEVICE), torch.zeros(0, 2, dtype=torch.int32, device=DEVICE),
                    backend="triton")
    assert empty.shape == (0, 2, 8)
    pos = torch.zeros(5, 2, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=r"divisible by 4.*D=6"):
        rope_2d(torch.randn(5, 2, 6, device=DEVICE), pos, backend="triton")
    with pytest.raises(ValueError, match="one row per token"):
        rope_2d(torch.randn(4, 2, 8, device=DEVICE), pos, backend="triton")
    with pytest.raises(ValueError, match="Float/BFloat16/Half"):
        rope_2d(torch.randn(5, 2, 8, dtype=torch.float64, device=DEVICE), pos, backend="triton")


def test_triton_opcheck():
    pos = torch.randint(0, 5, (6, 2), dtype=torch.int32, device=DEVICE)
    x = torch.randn(6, 8, 3, device=DEVICE).transpose(1, 2).requires_grad_()
    k = torch.randn(6, 2, 8, device=DEVICE, requires_grad=True)
    freq = tri._freq_table(100.0, 8, x.device)
    # Under the interpreter the fake-tensor checks would launch the kernel on meta tensors: GPU only.
    utils = None if ON_GPU else ("test_schema", "test_autograd_registration")
    kw = {} if utils is None else {"test_utils": utils}
    torch.library.opcheck(torch.ops.omni_mega.rope_2d_triton.default, (x, pos, freq, "half", 8, False), **kw)
    torch.library.opcheck(
        torch.ops.omni_mega.rope_2d_qk_triton.default, (x, k, pos, freq, "interleaved", 4, True), **kw
    )
