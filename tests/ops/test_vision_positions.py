import pytest
import torch

from omni_mega.ops import has_cpu_extension, vision_positions, vision_positions_ref
from omni_mega.testing import devices, native_backends

GRIDS = [
    [[1, 1, 1]],
    [[1, 3, 7]],
    [[1, 16, 16]],
    [[1, 4, 6], [2, 2, 2], [1, 1, 1], [3, 6, 4]],
    [[4, 8, 2]],
]


def _qwen2vl_positions(grid, m):
    """Independent re-statement of Qwen2-VL's rot_pos_emb index construction (reshape/permute of a meshgrid)."""
    out = []
    for t, h, w in grid:
        hpos = torch.arange(h).unsqueeze(1).expand(-1, w)
        wpos = torch.arange(w).unsqueeze(0).expand(h, -1)
        hpos = hpos.reshape(h // m, m, w // m, m).permute(0, 2, 1, 3).flatten()
        wpos = wpos.reshape(h // m, m, w // m, m).permute(0, 2, 1, 3).flatten()
        out.append(torch.stack([hpos, wpos], dim=-1).repeat(t, 1))
    return torch.cat(out).to(torch.int32)




@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("merge", [1, 2])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_matches_qwen2vl_order(device, grid, merge, dtype):
    if any(h % merge or w % merge for _, h, w in grid):
        pytest.skip("grid not divisible by merge (covered by the error tests)")
    g = torch.tensor(grid, dtype=dtype, device=device)
    expected_pos = _qwen2vl_positions(grid, merge)
    lengths = torch.tensor([h * w for t, h, w in grid for _ in range(t)])
    expected_cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(torch.int32)
    for backend in native_backends(device):
        pos, cu = vision_positions(g, merge, backend=backend)
        assert pos.dtype == torch.int32 and cu.dtype == torch.int32, backend
        assert pos.device.type == device and cu.device.type == device, backend
        assert torch.equal(pos.cpu(), expected_pos), backend
        assert torch.equal(cu.cpu(), expected_cu), backend


@pytest.mark.skipif(not has_cpu_extension(), reason="needs the C++ extension (make build)")
def test_random_grids_cpp_equals_ref():
    for _ in range(20):
        n = int(torch.randint(1, 6, ()))
        m = int(torch.randint(1, 3, ()))
        g = torch.stack(
            [torch.randint(1, 3, (n,)), torch.randint(1, 9, (n,)) * m, torch.randint(1, 9, (n,)) * m], dim=1
        )
        for a, b in zip(vision_positions(g, m, backend="cpp"), vision_positions_ref(g, m)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["ref", "cpp"])
def test_empty_grid(backend):
    if backend == "cpp" and not has_cpu_extension():
        pytest.skip("needs the C++ extension (make build)")
    pos, cu = vision_positions(torch.empty(0, 3, dtype=torch.int64), 2, backend=backend)
    assert pos.shape == (0, 2) and cu.tolist() == [0]


BAD = [
    (torch.tensor([[1, 3, 4]]), 2, "divisible by merge_size"),
    (torch.tensor([[1, 4, 3]]), 2, "divisible by merge_size"),
    (torch.tensor([[1, 0, 4]]), 1, "zero or negative"),
    (torch.tensor([[1, -2, 4]]), 1, "zero or negative"),
    (torch.tensor([[0, 2, 2]]), 1, "zero or negative"),
    (torch.tensor([[1.0, 2.0, 2.0]]), 1, "dtype"),
    (torch.tensor([1, 2, 2]), 1, r"\[N, 3\]|-D"),
    (torch.tensor([[1, 2]]), 1, r"\[N, 3\]"),
    (torch.tensor([[1, 2, 2]]), 0, "merge_size must be >= 1"),
]


@pytest.mark.parametrize("grid,merge,msg", BAD)
@pytest.mark.parametrize("backend", ["ref", "cpp"])
def test_bad_input_is_a_clear_error(grid, merge, msg, backend):
    if backend == "cpp" and not has_cpu_extension():
        pytest.skip("needs the C++ extension (make build)")
    with pytest.raises((ValueError, RuntimeError), match=msg):
        vision_positions(grid, merge, backend=backend)


@pytest.mark.skipif(not has_cpu_extension(), reason="needs the C++ extension (make build)")
def test_opcheck():
    g = torch.tensor([[1, 4, 6], [2, 2, 2]])
    # Data-dependent output sizes: the fake kernel uses dynamic sizes, so aot_dispatch tests do not apply.
    torch.library.opcheck(
        torch.ops.omni_mega.vision_positions.default,
        (g, 2),
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_large_matches_cpp():
    g = torch.tensor([[1, 64, 96]] * 50 + [[2, 2, 2]] * 7, device="cuda")
    for a, b in zip(vision_positions(g, 2), vision_positions_ref(g.cpu(), 2)):
        assert torch.equal(a.cpu(), b)


def test_forced_unavailable_backend_is_clear():
    with pytest.raises(ValueError, match="does not run on device"):
        vision_positions(torch.tensor([[1, 2, 2]]), 1, backend="cuda")


@pytest.mark.parametrize("grid", [[[2**31, 2**31, 2**31]], [[1, 2**31 - 1, 1], [1, 1, 1]], [[2**62, 4, 4]]],
                         ids=["wraps-to-zero", "one-past-int32", "wraps-int64"])
def test_token_count_past_int32_is_an_error(grid):
    # (2^31)^3 wrapped to 0 tokens in int64: the check passed and 2^31 empty frames were planned (24 GB).
    last = len(grid) - 1
    for backend in ["ref", "cpp"] if has_cpu_extension() else ["ref"]:
        with pytest.raises((ValueError, RuntimeError)) as e:
            vision_positions(torch.tensor(grid), 1, backend=backend)
        assert str(e.value).splitlines()[0] == (
            f"vision_positions: grid_thw[{last}] brings the token count past 2147483647 (int32 cu_seqlens)")
