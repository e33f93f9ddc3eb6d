import pytest
import torch

from omni_mega.ops import has_cpu_extension, has_cuda_extension, rope_2d, rope_2d_qk, rope_2d_ref, vision_positions
from omni_mega.testing import assert_matches_oracle

needs_cpp = pytest.mark.skipif(not has_cpu_extension(), reason="needs the C++ extension (make build)")
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and has_cuda_extension()), reason="needs CUDA and omni_mega._C_cuda"
)

# Packed batches of images: 1x1, non-square, several frames; (grids, merge_size).
PACKS = [
    ([[1, 1, 1], [1, 3, 5], [2, 2, 3]], 1),
    ([[1, 4, 6], [1, 2, 2], [1, 6, 2]], 2),
]


def _pos(grids, merge):
    pos, _ = vision_positions(torch.tensor(grids), merge)
    return pos


def _backends():
    return ["ref"] + (["cpp"] if has_cpu_extension() else [])


# ---- independent re-statements of the published models' formulations (float64) ----


def _qwen2vl_rope(x, pos, theta):
    """Qwen2-VL: VisionRotaryEmbedding(dim=D/2) indexed by (h, w) ids, then apply_rotary_pos_emb_vision."""
    dim = x.size(-1) // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    table = torch.outer(torch.arange(int(pos.max()) + 1, dtype=torch.float64), inv_freq)  # [max_grid, D/4]
    freqs = table[pos.long()].flatten(1)  # [T, D/2]: (h freqs, w freqs)
    cos = freqs.cos().unsqueeze(1).repeat(1, 1, 2)  # [T, 1, D]
    sin = freqs.sin().unsqueeze(1).repeat(1, 1, 2)

    def rotate_half(t):
        t1, t2 = t[..., : t.shape[-1] // 2], t[..., t.shape[-1] // 2 :]
        return torch.cat((-t2, t1), dim=-1)

    return x * cos + rotate_half(x) * sin


def _kimi_rope(x, pos, theta):
    """Kimi-VL MoonViT Rope2DPosEmb: complex freqs_cis from a (height, width) grid, x viewed as complex pairs."""
    D = x.size(-1)
    freqs = 1.0 / theta ** (torch.arange(0, D, 4, dtype=torch.float64)[: D // 4] / D)
    max_h, max_w = int(pos[:, 0].max()) + 1, int(pos[:, 1].max()) + 1
    flat = torch.arange(max_h * max_w, dtype=torch.float64)
    x_pos, y_pos = flat % max_w, flat // max_w
    x_cis = torch.polar(torch.ones(max_h * max_w, D // 4, dtype=torch.float64), torch.outer(x_pos, freqs))
    y_cis = torch.polar(torch.ones(max_h * max_w, D // 4, dtype=torch.float64), torch.outer(y_pos, freqs))
    freqs_cis = torch.stack([x_cis, y_cis], dim=-1).reshape(max_h, max_w, D // 2)
    per_token = freqs_cis[pos[:, 0].long(), pos[:, 1].long()]  # [T, D/2]
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * per_token[:, None, :]).flatten(-2)


@pytest.mark.parametrize("grids,merge", PACKS)
@pytest.mark.parametrize("D", [16, 40])
def test_ref_matches_published_formulations(grids, merge, D):
    pos = _pos(grids, merge)
    x = torch.randn(pos.size(0), 3, D, dtype=torch.float64)
    for theta in (10000.0, 100.0):
        half = rope_2d_ref(x, pos, theta=theta, layout="half")
        torch.testing.assert_close(half, _qwen2vl_rope(x, pos, theta), atol=1e-12, rtol=1e-12)
        inter = rope_2d_ref(x, pos, theta=theta, layout="interleaved")
        torch.testing.assert_close(inter, _kimi_rope(x, pos, theta), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_ref_gradient_is_the_inverse_rotation(layout):
    pos = _pos(*PACKS[1])
    x = torch.randn(pos.size(0), 2, 24, dtype=torch.float64, requires_grad=True)
    g = torch.randn_like(x)
    (grad,) = torch.autograd.grad(rope_2d_ref(x, pos, layout=layout, rotary_dim=16), x, g)
    torch.testing.assert_close(grad, rope_2d_ref(g, pos, layout=layout, rotary_dim=16, inverse=True))
    # The inverse undoes the rotation (norm-preserving, so this fails for any sign or pairing mistake).
    y = rope_2d_ref(x.detach(), pos, layout=layout)
    torch.testing.assert_close(rope_2d_ref(y, pos, layout=layout, inverse=True), x.detach())


# ---- every backend against the float64 oracle ----


def _check_fwd_bwd(backend, x, pos, **kw):
    """Forward and gradient of x against the float64 reference (2x the reference's own error in low precision)."""
    x = x.detach().requires_grad_()
    y = rope_2d(x, pos, backend=backend, **kw)
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    y64 = rope_2d_ref(x.detach().double(), pos, **kw)
    dx64 = rope_2d_ref(g.double(), pos, inverse=True, **kw)
    x_ref = x.detach().clone().requires_grad_()
    y_ref = rope_2d_ref(x_ref, pos, **kw)
    (dx_ref,) = torch.autograd.grad(y_ref, x_ref, g)
    assert y.dtype == x.dtype and y.is_contiguous() and dx.dtype == x.dtype
    assert_matches_oracle(y, y64, ref_same_dtype=y_ref, name=f"{backend} forward")
    assert_matches_oracle(dx, dx64, ref_same_dtype=dx_ref, name=f"{backend} grad x")


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grids,merge", PACKS)
def test_backends_match_oracle(backend, layout, dtype, grids, merge):
    pos = _pos(grids, merge)
    x = torch.randn(pos.size(0), 3, 20).to(dtype)  # D = 20: R/4 = 5 frequencies, odd-sized blocks
    _check_fwd_bwd(backend, x, pos, theta=10000.0, layout=layout)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_strided_views_and_partial_rotary_dim(backend, layout):
    pos = _pos(*PACKS[0])
    T = pos.size(0)
    # Token-strided (a head slice of a fused qkv) and channel-strided (a transposed buffer) views, rotary_dim < D.
    qkv = torch.randn(T, 3 * 4, 24)
    _check_fwd_bwd(backend, qkv[:, 4:8], pos, layout=layout, rotary_dim=16, theta=500.0)
    chan = torch.randn(T, 24, 4).transpose(1, 2)
    assert chan.stride(2) != 1
    _check_fwd_bwd(backend, chan, pos, layout=layout, rotary_dim=8)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_qk_equals_two_single_calls(backend, dtype, layout):
    pos = _pos(*PACKS[1])
    T = pos.size(0)
    qkv = torch.randn(T, 8, 3, 16).to(dtype)  # q, k interleaved per head: both views strided in the head dim
    q = qkv[:, :, 0].requires_grad_()
    k = qkv[:, :4, 1].detach().requires_grad_()  # GQA-style: fewer k heads
    kw = dict(theta=10000.0, layout=layout, rotary_dim=12)
    yq, yk = rope_2d_qk(q, k, pos, backend=backend, **kw)
    assert torch.equal(yq, rope_2d(q, pos, backend=backend, **kw))
    assert torch.equal(yk, rope_2d(k, pos, backend=backend, **kw))
    gq, gk = torch.randn_like(yq), torch.randn_like(yk)
    dq, dk = torch.autograd.grad((yq, yk), (q, k), (gq, gk))
    dq64 = rope_2d_ref(gq.double(), pos, inverse=True, **kw)
    dk64 = rope_2d_ref(gk.double(), pos, inverse=True, **kw)
    dq_ref = rope_2d_ref(gq, pos, inverse=True, **kw)
    dk_ref = rope_2d_ref(gk, pos, inverse=True, **kw)
    assert_matches_oracle(dq, dq64, ref_same_dtype=dq_ref, name="grad q")
    assert_matches_oracle(dk, dk64, ref_same_dtype=dk_ref, name="grad k")


@pytest.mark.parametrize("backend", _backends())
def test_packed_equals_each_image_alone(backend):
    for grids, merge in PACKS:
        _check_packed(backend, grids, merge)


def _check_packed(backend, grids, merge):
    pos = _pos(grids, merge)
    x = torch.randn(pos.size(0), 2, 16)
    packed = rope_2d(x, pos, backend=backend)
    start = 0
    for t, h, w in grids:
        n = t * h * w
        alone = rope_2d(x[start : start + n], _pos([[t, h, w]], merge), backend=backend)
        assert torch.equal(packed[start : start + n], alone)
        start += n


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("T", [0, 1])
def test_empty_and_single_token(backend, T):
    pos = torch.randint(0, 50, (T, 2), dtype=torch.int32)
    _check_fwd_bwd(backend, torch.randn(T, 3, 12), pos, layout="half")
    q, k = rope_2d_qk(torch.randn(T, 2, 8), torch.randn(T, 1, 8), pos, backend=backend)
    assert q.shape == (T, 2, 8) and k.shape == (T, 1, 8)


@pytest.mark.parametrize("backend", _backends())
def test_large_positions_and_theta(backend):
    # Rows/cols up to 2000 (big images) push angles to ~2000 rad: fp32 angle rounding must match the reference's.
    pos = torch.randint(0, 2000, (33, 2), dtype=torch.int32)
    x = torch.randn(33, 2, 32)
    for layout in ("half", "interleaved"):
        y = rope_2d(x, pos, layout=layout, theta=1e6, backend=backend)
        torch.testing.assert_close(y, rope_2d_ref(x, pos, layout=layout, theta=1e6), atol=2e-5, rtol=1e-5)


BAD = [
    (dict(x=(5, 2, 7)), r"divisible by 4.*D=7"),
    (dict(x=(5, 2, 6)), r"divisible by 4.*D=6"),
    (dict(x=(5, 8)), r"3-D \[T, H, D\]"),
    (dict(pos=(5, 3)), r"pos must have shape \[T, 2\]"),
    (dict(pos_dtype=torch.int64), "pos must have dtype Int"),
    (dict(pos=(4, 2)), "one row per token.*T=5"),
    (dict(x_dtype=torch.int32), "x must have dtype"),
    (dict(layout="diagonal"), "layout must be"),
    (dict(rotary_dim=6), "rotary_dim must be a multiple of 4"),
    (dict(rotary_dim=16), r"rotary_dim must be a multiple of 4 in \[4, D=8\]"),
    (dict(theta=-1.0), "theta must be a positive"),
]


@pytest.mark.parametrize("bad,msg", BAD)
@pytest.mark.parametrize("backend", _backends())
def test_bad_input_is_a_clear_error(bad, msg, backend):
    x = torch.randn(*bad.get("x", (5, 2, 8))).to(bad.get("x_dtype", torch.float32))
    pos = torch.zeros(*bad.get("pos", (5, 2)), dtype=bad.get("pos_dtype", torch.int32))
    kw = {k: bad[k] for k in ("layout", "rotary_dim", "theta") if k in bad}
    with pytest.raises((ValueError, RuntimeError), match=msg):
        rope_2d(x, pos, backend=backend, **kw)


@pytest.mark.parametrize("backend", _backends())
def test_qk_mismatch_is_a_clear_error(backend):
    pos = torch.zeros(5, 2, dtype=torch.int32)
    with pytest.raises((ValueError, RuntimeError), match="same T and D"):
        rope_2d_qk(torch.randn(5, 2, 8), torch.randn(5, 2, 12), pos, backend=backend)
    with pytest.raises((ValueError, RuntimeError), match="same dtype"):
        rope_2d_qk(torch.randn(5, 2, 8), torch.randn(5, 2, 8).bfloat16(), pos, backend=backend)


def test_forced_unavailable_backend_is_clear():
    with pytest.raises(ValueError, match="does not run on device"):
        rope_2d(torch.randn(2, 1, 8), torch.zeros(2, 2, dtype=torch.int32), backend="cuda")


@needs_cpp
def test_opcheck():
    pos = _pos(*PACKS[0])
    x = torch.randn(pos.size(0), 8, 3).transpose(1, 2).requires_grad_()  # non-contiguous
    k = torch.randn(pos.size(0), 2, 8, requires_grad=True)
    for layout in ("half", "interleaved"):
        torch.library.opcheck(torch.ops.omni_mega.rope_2d.default, (x, pos, 100.0, layout, 4, False))
        torch.library.opcheck(torch.ops.omni_mega.rope_2d_qk.default, (x, k, pos, 100.0, layout, 8, True))


@needs_cuda
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("D", [80, 72])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_matches_oracle(layout, D, dtype):
    pos = _pos([[1, 64, 96], [1, 14, 14], [1, 2, 2], [3, 10, 6]], 2).cuda()
    T, opts = pos.size(0), dict(device="cuda", dtype=dtype)
    for x in (
        torch.randn(T, 5, D, **opts),  # contiguous: 16-byte packs
        torch.randn(T * 5 * D + 2, **opts)[2:].view(T, 5, D),  # base off by 2 elements: narrower packs
        torch.randn(T, D, 5, **opts).transpose(1, 2),  # channel-strided: scalar path
    ):
        _check_fwd_bwd("cuda", x, pos, layout=layout, rotary_dim=D - 8)
        _check_fwd_bwd("cuda", x, pos, layout=layout)


@needs_cuda
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_cuda_qk_matches_cpp(layout):
    pos = _pos([[1, 32, 48], [2, 4, 6]], 2)
    qkv = torch.randn(pos.size(0), 16, 3, 80, dtype=torch.bfloat16)
    q, k = qkv[:, :, 0], qkv[:, :, 1]
    expected = rope_2d_qk(q, k, pos, layout=layout, backend="cpp")
    got = rope_2d_qk(q.cuda(), k.cuda(), pos.cuda(), layout=layout)
    for a, b in zip(got, expected):
        # Same fp32 math; sincosf vs glibc may differ in the last fp32 bit, i.e. at most 1 bf16 ulp after rounding.
        torch.testing.assert_close(a.cpu(), b, atol=1e-2, rtol=8e-3)
