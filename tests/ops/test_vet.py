import pytest
import torch

from omni_mega.ops import (
    has_cpu_extension,
    has_cuda_extension,
    vet_embed,
    vet_embed_ref,
    vet_indicator,
    visual_head_vet,
    visual_head_vet_ref,
)
from omni_mega.testing import assert_matches_oracle, max_abs_err

needs_cpp = pytest.mark.skipif(not has_cpu_extension(), reason="needs the C++ extension (make build)")


def _kernel_targets():
    """(device, backend) pairs with a blockwise kernel to test; the reference is the oracle, not a target."""
    targets = []
    if has_cpu_extension():
        targets.append(("cpu", "cpp"))
    if torch.cuda.is_available() and has_cuda_extension():
        targets.append(("cuda", "cuda"))
    return targets or [pytest.param("cpu", "cpp", marks=pytest.mark.skip(reason="needs the C++ extension"))]


TARGETS = _kernel_targets()

# (N, d_in, Vt, num_indicators, D, block_n, block_v): Vt never a multiple of block_v; N = 1; N not a multiple of
# block_n; one case with the device-default blocks (0, 0).
HEAD_SHAPES = [
    (1, 5, 13, 0, 6, 0, 4),
    (37, 16, 67, 5, 24, 8, 16),
    (20, 9, 40, 4, 11, 7, 9),
    (65, 33, 1111, 5, 17, 0, 0),
]


def _head_inputs(n, d_in, vt, n_ind, d, *, device, dtype=torch.float64, shift=0.0):
    x = torch.randn(n, d_in, dtype=torch.float64)
    w = torch.randn(vt, d_in, dtype=torch.float64) / d_in**0.5
    w += shift * torch.randn(1, d_in, dtype=torch.float64)  # a common row: logits with |mean| >> std
    gamma = 1 + 0.5 * torch.randn(vt, dtype=torch.float64)
    beta = 0.3 * torch.randn(vt, dtype=torch.float64)
    table = torch.randn(vt + n_ind, d, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (x, w, gamma, beta, table)]


def _fwd_bwd(fn, inputs, grad):
    out = fn(*inputs)
    return out, torch.autograd.grad(out, inputs, grad)


def _head_fn(n_ind, **kw):
    return lambda x, w, g, b, t: visual_head_vet(x, w, g, b, t, num_indicators=n_ind, **kw)


def _head_ref_fn(n_ind):
    return lambda x, w, g, b, t: visual_head_vet_ref(x, w, g, b, t, num_indicators=n_ind)


HEAD_NAMES = ("out", "dx", "dhead_weight", "dln_weight", "dln_bias", "dtable")


@pytest.mark.parametrize("device,backend", TARGETS)
@pytest.mark.parametrize("shape", HEAD_SHAPES)
def test_head_fp32_matches_fp64_oracle(device, backend, shape):
    n, d_in, vt, n_ind, d, bn, bv = shape
    ins64 = _head_inputs(n, d_in, vt, n_ind, d, device="cpu")
    ins32 = [t.detach().to(device, torch.float32).requires_grad_() for t in ins64]
    grad = torch.randn(n, d, dtype=torch.float64)
    oracle = _fwd_bwd(_head_ref_fn(n_ind), ins64, grad)
    got = _fwd_bwd(_head_fn(n_ind, backend=backend, block_n=bn, block_v=bv), ins32, grad.to(device, torch.float32))
    for name, a, o in zip(HEAD_NAMES, [got[0], *got[1]], [oracle[0], *oracle[1]]):
        assert a.dtype == torch.float32 and a.device.type == device, name
        assert_matches_oracle(a, o, name=name, floor=2e-5)
    assert torch.count_nonzero(got[1][4][vt:]) == 0, "indicator rows of the table must get exactly zero gradient"


@pytest.mark.parametrize("device,backend", TARGETS)
def test_head_fp64_matches_fp64_oracle(device, backend):
    # On CPU, fp64 tiles take vet.h's ATen epilogues (the CUDA backend's), fp32 tiles the fused loops of vet_cpu.cpp:
    # this case keeps the former tested without a GPU, and fp64 against fp64 leaves no room for a wrong term.
    n, d_in, vt, n_ind, d, bn, bv = 37, 16, 67, 5, 24, 8, 16
    ins = _head_inputs(n, d_in, vt, n_ind, d, device="cpu")
    ins_dev = [t.detach().to(device).requires_grad_() for t in ins]
    grad = torch.randn(n, d, dtype=torch.float64)
    oracle = _fwd_bwd(_head_ref_fn(n_ind), ins, grad)
    got = _fwd_bwd(_head_fn(n_ind, backend=backend, block_n=bn, block_v=bv), ins_dev, grad.to(device))
    for name, a, o in zip(HEAD_NAMES, [got[0], *got[1]], [oracle[0], *oracle[1]]):
        assert a.dtype == torch.float64, name
        assert_matches_oracle(a, o, name=name)


@pytest.mark.parametrize("device,backend", TARGETS)
def test_head_fp32_logits_with_large_mean(device, backend):
    # LayerNorm statistics: logits whose mean is ~1000x their spread must not lose the variance (fp32 sum/sumsq would).
    ins64 = _head_inputs(16, 8, 53, 5, 12, device="cpu", shift=300.0)
    ins32 = [t.detach().to(device, torch.float32).requires_grad_() for t in ins64]
    grad = torch.randn(16, 12, dtype=torch.float64)
    oracle = _fwd_bwd(_head_ref_fn(5), ins64, grad)
    got = _fwd_bwd(_head_fn(5, backend=backend, block_v=8), ins32, grad.to(device, torch.float32))
    ins32_ref = [t.detach().cpu().requires_grad_() for t in ins32]
    ref32 = _fwd_bwd(_head_ref_fn(5), ins32_ref, grad.float())
    # This input is ill-conditioned in fp32 for every implementation (logits ~1000 carry ~1e-4 rounding; dx = dz @ W
    # cancels a W component 300x the rest), so hold each tensor to 2x PyTorch-in-fp32's error plus a small floor;
    # an fp32 E[z^2] - E[z]^2 variance would miss by far more (shown at the end, so the test tells them apart).
    for name, a, o, r in zip(HEAD_NAMES, [got[0], *got[1]], [oracle[0], *oracle[1]], [ref32[0], *ref32[1]]):
        err, ref_err = max_abs_err(a, o), max_abs_err(r, o)
        assert err <= 2 * ref_err + 2e-3 * max(1.0, o.abs().max().item()), (name, err, ref_err)
    x, w = ins64[0].detach(), ins64[1].detach()
    z64 = x @ w.T
    rstd64 = (z64.var(1, unbiased=False) + 1e-5).rsqrt()
    z32 = (x.float() @ w.float().T).to(device)
    rstd_sumsq = ((z32.square().mean(1) - z32.mean(1).square()).clamp_min(0) + 1e-5).rsqrt()
    _, _, rstd, _ = torch.ops.omni_mega.vet_head_fwd(*[t.detach() for t in ins32], 5, 1e-5, 0, 8)
    err_ours = (rstd.double().cpu() / rstd64 - 1).abs().max().item()
    err_sumsq = (rstd_sumsq.double().cpu() / rstd64 - 1).abs().max().item()
    assert err_ours < 1e-3 < err_sumsq, (err_ours, err_sumsq)


@pytest.mark.parametrize("device,backend", TARGETS)
@pytest.mark.parametrize("n_ind,block_n", [(0, 0), (5, 16)])  # one row block (bf16 weight grads) and several (fp32)
def test_head_bf16_within_2x_of_pytorch_bf16(device, backend, n_ind, block_n):
    n, d_in, vt, d = 45, 32, 301, 40
    ins64 = _head_inputs(n, d_in, vt, n_ind, d, device="cpu")
    ins16 = [t.detach().to(device, torch.bfloat16).requires_grad_() for t in ins64]
    ins16_ref = [t.detach().cpu().requires_grad_() for t in ins16]
    grad = torch.randn(n, d, dtype=torch.float64)
    oracle = _fwd_bwd(_head_ref_fn(n_ind), ins64, grad)
    ref16 = _fwd_bwd(_head_ref_fn(n_ind), ins16_ref, grad.to(torch.bfloat16))
    got = _fwd_bwd(_head_fn(n_ind, backend=backend, block_n=block_n, block_v=64), ins16,
                   grad.to(device, torch.bfloat16))
    for i, name in enumerate(HEAD_NAMES):
        a, o, r = (got[0], oracle[0], ref16[0]) if i == 0 else (got[1][i - 1], oracle[1][i - 1], ref16[1][i - 1])
        assert a.dtype == torch.bfloat16, name
        assert_matches_oracle(a, o, ref_same_dtype=r, name=name)


@pytest.mark.parametrize("device,backend", TARGETS)
@pytest.mark.parametrize("shape", [(1, 9, 0, 5, 4), (29, 70, 4, 13, 16), (33, 257, 5, 8, 0)])
def test_embed_fp32_matches_fp64_oracle(device, backend, shape):
    n, vt, n_ind, d, bv = shape
    logits64 = (2 * torch.randn(n, vt, dtype=torch.float64)).requires_grad_()
    table64 = torch.randn(vt + n_ind, d, dtype=torch.float64).requires_grad_()
    ins32 = [t.detach().to(device, torch.float32).requires_grad_() for t in (logits64, table64)]
    grad = torch.randn(n, d, dtype=torch.float64)
    oracle = _fwd_bwd(lambda l, t: vet_embed_ref(l, t, num_indicators=n_ind), [logits64, table64], grad)
    fn = lambda l, t: vet_embed(l, t, num_indicators=n_ind, backend=backend, block_n=8, block_v=bv)  # noqa: E731
    got = _fwd_bwd(fn, ins32, grad.to(device, torch.float32))
    for name, a, o in zip(("out", "dlogits", "dtable"), [got[0], *got[1]], [oracle[0], *oracle[1]]):
        assert_matches_oracle(a, o, name=name, floor=2e-5)
    assert torch.count_nonzero(got[1][1][vt:]) == 0


@pytest.mark.parametrize("device,backend", TARGETS)
def test_embed_bf16_within_2x_of_pytorch_bf16(device, backend):
    n, vt, n_ind, d = 37, 203, 4, 24
    ins64 = [(3 * torch.randn(n, vt, dtype=torch.float64)), torch.randn(vt + n_ind, d, dtype=torch.float64)]
    ins16 = [t.to(device, torch.bfloat16).requires_grad_() for t in ins64]
    ins16_ref = [t.detach().cpu().requires_grad_() for t in ins16]
    ins64 = [t.requires_grad_() for t in ins64]
    grad = torch.randn(n, d, dtype=torch.float64)
    ref_fn = lambda l, t: vet_embed_ref(l, t, num_indicators=n_ind)  # noqa: E731
    oracle = _fwd_bwd(ref_fn, ins64, grad)
    ref16 = _fwd_bwd(ref_fn, ins16_ref, grad.to(torch.bfloat16))
    fn = lambda l, t: vet_embed(l, t, num_indicators=n_ind, backend=backend, block_v=50)  # noqa: E731
    got = _fwd_bwd(fn, ins16, grad.to(device, torch.bfloat16))
    for name, a, o, r in zip(("out", "dlogits", "dtable"), [got[0], *got[1]], [oracle[0], *oracle[1]],
                             [ref16[0], *ref16[1]]):
        assert_matches_oracle(a, o, ref_same_dtype=r, name=name)


@pytest.mark.parametrize("device,backend", TARGETS)
@pytest.mark.parametrize("n_ind", [0, 4, 5])
def test_probabilities_sum_to_one_and_indicators_get_zero_mass(device, backend, n_ind):
    # With table = identity the output *is* the padded probability vector, so the fused kernels expose p.
    n, d_in, vt = 11, 6, 23
    eye = torch.eye(vt + n_ind, device=device)
    x, w, g, b, _ = _head_inputs(n, d_in, vt, n_ind, 1, device=device, dtype=torch.float32)
    with torch.no_grad():
        p_head = visual_head_vet(x, w, g, b, eye, num_indicators=n_ind, backend=backend, block_v=5)
        p_embed = vet_embed(4 * torch.randn(n, vt, device=device), eye, num_indicators=n_ind, backend=backend,
                            block_v=5)
    for p in (p_head, p_embed):
        assert torch.all(p[:, vt:] == 0)
        assert torch.all(p[:, :vt] > 0)
        torch.testing.assert_close(p.sum(-1).double().cpu(), torch.ones(n, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("device,backend", TARGETS)
def test_noncontiguous_and_batched_inputs(device, backend):
    n_ind, vt, d_in, d = 5, 19, 8, 10
    x = torch.randn(2, d_in, 3, device=device).transpose(1, 2)  # [2, 3, d_in], non-contiguous, leading dims
    w = torch.randn(d_in, vt, device=device).t()  # [vt, d_in] transposed view
    g, b = torch.randn(2 * vt, device=device)[::2], torch.randn(vt, device=device)
    table = torch.randn(vt + n_ind, 2 * d, device=device)[:, ::2]  # column-strided
    assert not (x.is_contiguous() or w.is_contiguous() or g.is_contiguous() or table.is_contiguous())
    ins = [t.requires_grad_() for t in (x, w, g, b, table)]
    ins_c = [t.detach().contiguous().requires_grad_() for t in ins]
    grad = torch.randn(2, 3, d, device=device)
    got = _fwd_bwd(_head_fn(n_ind, backend=backend, block_v=4), ins, grad)
    want = _fwd_bwd(_head_ref_fn(n_ind), ins_c, grad)
    assert got[0].shape == (2, 3, d)
    for a, o in zip([got[0], *got[1]], [want[0], *want[1]]):
        torch.testing.assert_close(a, o, atol=1e-5, rtol=1e-5)
    logits = torch.randn(vt, 2, 3, device=device).permute(1, 2, 0)  # [2, 3, vt] non-contiguous
    torch.testing.assert_close(vet_embed(logits, table, num_indicators=n_ind, backend=backend, block_v=4),
                               vet_embed_ref(logits, table, num_indicators=n_ind), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device,backend", TARGETS)
def test_empty_batch(device, backend):
    x, w, g, b, t = _head_inputs(0, 4, 9, 5, 3, device=device, dtype=torch.float32)
    out, grads = _fwd_bwd(_head_fn(5, backend=backend), [x, w, g, b, t], torch.empty(0, 3, device=device))
    assert out.shape == (0, 3) and all(torch.count_nonzero(gr) == 0 for gr in grads)
    logits = torch.empty(0, 9, device=device, requires_grad=True)
    assert vet_embed(logits, t, num_indicators=5, backend=backend).shape == (0, 3)


@needs_cpp
def test_gradcheck_fp64():
    # Finite differences: an oracle independent of the reference's autograd.
    ins = _head_inputs(3, 3, 5, 2, 3, device="cpu")
    assert torch.autograd.gradcheck(_head_fn(2, backend="cpp", block_n=2, block_v=3), ins)
    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda l, t: vet_embed(l, t, num_indicators=2, backend="cpp", block_v=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits, ins[4]))


@needs_cpp
def test_opcheck():
    x, w, g, b, t = _head_inputs(6, 5, 11, 4, 7, device="cpu", dtype=torch.float32)
    torch.library.opcheck(torch.ops.omni_mega.vet_head_fwd.default, (x, w, g, b, t, 4, 1e-5, 4, 3))
    out, mean, rstd, lse = torch.ops.omni_mega.vet_head_fwd(x, w, g, b, t, 4, 1e-5, 4, 3)
    grad = torch.randn_like(out)
    torch.library.opcheck(torch.ops.omni_mega.vet_head_bwd.default,
                          (grad, x.detach(), w.detach(), g.detach(), b.detach(), t.detach(), out.detach(), mean,
                           rstd, lse, 4, 4, 3))
    logits = torch.randn(6, 11, requires_grad=True)
    torch.library.opcheck(torch.ops.omni_mega.vet_embed_fwd.default, (logits, t, 4, 4, 3))
    out, lse = torch.ops.omni_mega.vet_embed_fwd(logits, t, 4, 4, 3)
    torch.library.opcheck(torch.ops.omni_mega.vet_embed_bwd.default,
                          (grad, logits.detach(), t.detach(), out.detach(), lse, 4, 4, 3))


def test_vet_indicator():
    table = torch.randn(12, 3, requires_grad=True)
    ids = torch.tensor([[4, 0], [2, 4]])
    out = vet_indicator(ids, table, 5)
    assert out.shape == (2, 2, 3)
    assert torch.equal(out[0, 0], table[11]) and torch.equal(out[0, 1], table[7]) and torch.equal(out[1, 0], table[9])
    out.sum().backward()
    assert table.grad[:7].abs().sum() == 0 and torch.equal(table.grad[11], torch.full((3,), 2.0))
    for bad_ids, n_ind, msg in [(torch.tensor([5]), 5, r"\[0, 5\)"), (torch.tensor([-1]), 5, r"\[0, 5\)"),
                                (torch.tensor([0.0]), 5, "dtype"), (torch.tensor([0]), 0, "num_indicators")]:
        with pytest.raises(ValueError, match=msg):
            vet_indicator(bad_ids, table, n_ind)


def _bad_head_cases():
    ok = dict(x=torch.randn(4, 6), w=torch.randn(9, 6), g=torch.randn(9), b=torch.randn(9), t=torch.randn(14, 5))
    return [
        (dict(ok, w=torch.randn(9, 7)), 5, 1e-5, "head_weight must have shape"),
        (dict(ok, g=torch.randn(8)), 5, 1e-5, "ln_weight must have shape"),
        (dict(ok, b=torch.randn(9, 1)), 5, 1e-5, "ln_bias must be 1-D"),
        (dict(ok, t=torch.randn(13, 5)), 5, 1e-5, "table must have shape"),
        (ok, 4, 1e-5, "table must have shape"),
        (ok, -1, 1e-5, "num_indicators must be >= 0"),
        (dict(ok, t=torch.randn(14, 5, dtype=torch.float64)), 5, 1e-5, "table must have the dtype of x"),
        (dict(ok, x=torch.randn(4, 6).int(), w=torch.randn(9, 6).int()), 5, 1e-5, "x must have dtype"),
        (dict(ok, g=torch.randn(9, dtype=torch.float64)), 5, 1e-5, "ln_weight must have the dtype of x"),
        (dict(ok, t=torch.randn(14, 5, device="meta")), 5, 1e-5, "same device"),
        (ok, 5, 0.0, "ln_eps must be > 0"),
    ]


@pytest.mark.parametrize("backend", ["ref", "cpp"])
@pytest.mark.parametrize("case", range(len(_bad_head_cases())))
def test_bad_head_input_is_a_clear_error(backend, case):
    if backend == "cpp" and not has_cpu_extension():
        pytest.skip("needs the C++ extension (make build)")
    kw, n_ind, eps, msg = _bad_head_cases()[case]
    with pytest.raises((ValueError, RuntimeError), match=msg):
        visual_head_vet(kw["x"], kw["w"], kw["g"], kw["b"], kw["t"], num_indicators=n_ind, ln_eps=eps, backend=backend)


@pytest.mark.parametrize("backend", ["ref", "cpp"])
def test_bad_embed_input_is_a_clear_error(backend):
    if backend == "cpp" and not has_cpu_extension():
        pytest.skip("needs the C++ extension (make build)")
    logits, table = torch.randn(3, 7), torch.randn(10, 4)
    for args, n_ind, msg in [((logits, table), 2, "table must have shape"),
                             ((logits, table.int()), 3, "table must have dtype"),
                             ((logits[:, :0], torch.randn(3, 4)), 3, r"V - num_indicators >= 1")]:
        with pytest.raises((ValueError, RuntimeError), match=msg):
            vet_embed(*args, num_indicators=n_ind, backend=backend)


@needs_cpp
@pytest.mark.parametrize("block_n,block_v", [(2**63 - 1, 0), (0, 2**63 - 1), (2**62, 2**62), (-7, -7)])
def test_huge_or_negative_blocks_give_the_reference_result(block_n, block_v):
    # A block of INT64_MAX made the block count's (n + b - 1) wrap negative: no block ran, the output came back
    # unwritten. Blocks now clamp to the axis they split; <= 0 means the default.
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    g = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_()
    table = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    got = visual_head_vet(x, w, g, b, table, num_indicators=2, backend="cpp", block_n=block_n, block_v=block_v)
    want = visual_head_vet_ref(x, w, g, b, table, num_indicators=2)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    grads = torch.autograd.grad(got.square().sum(), [x, g, table])
    for a, r in zip(grads, torch.autograd.grad(want.square().sum(), [x, g, table])):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)
    logits = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(vet_embed(logits, table, num_indicators=2, backend="cpp", block_n=block_n,
                                         block_v=block_v), vet_embed_ref(logits, table, num_indicators=2))


@needs_cpp
def test_num_indicators_near_int64_max_is_reported_exactly():
    logits, table = torch.randn(3, 5), torch.randn(6, 2)
    with pytest.raises(RuntimeError) as e:
        vet_embed(logits, table, num_indicators=2**63 - 1, backend="cpp")
    with pytest.raises(ValueError) as r:
        vet_embed(logits, table, num_indicators=2**63 - 1, backend="ref")
    # V = 5 + (2^63 - 1) printed exactly, not as the negative number int64 wrapped it to.
    assert str(e.value).splitlines()[0].replace("[6, 2]", "(6, 2)") == str(r.value).splitlines()[0]
    assert "= 9223372036854775812 rows" in str(r.value)
