import numpy as np
import pytest
import torch

from omni_mega.ops import has_cpu_extension, pack_images, pack_images_ref
from omni_mega.ops.pack_images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from omni_mega.testing import assert_matches_oracle, devices, native_backends

needs_cpp = pytest.mark.skipif(not has_cpu_extension(), reason="needs the C++ extension (make build)")




def _qwen2vl_patches(img_hwc: torch.Tensor, p: int, m: int, tps: int, mean, std) -> torch.Tensor:
    """Independent re-statement of Qwen2-VL's image processor in float64, from its published shapes: normalize a CHW
    frame, tile it tps times, reshape to 9-D, transpose(0, 3, 6, 4, 7, 2, 1, 5, 8), flatten."""
    x = img_hwc.cpu().numpy().astype(np.float64) / 255.0
    x = (x - np.array(mean)) / np.array(std)
    patches = np.tile(x.transpose(2, 0, 1)[None], (tps, 1, 1, 1))  # [tps, C, H, W]
    c, gh, gw, gt = patches.shape[1], patches.shape[2] // p, patches.shape[3] // p, 1
    patches = patches.reshape(gt, tps, c, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return torch.from_numpy(patches.reshape(gt * gh * gw, c * tps * p * p).copy())


def _random_images(grids, p, m, c, device="cpu"):
    """uint8 HWC images with grid (gh, gw) merge blocks each; every other image a non-contiguous view."""
    out = []
    for k, (bh, bw) in enumerate(grids):
        h, w = bh * p * m, bw * p * m
        if k % 2:
            img = torch.randint(0, 256, (c, h, w), dtype=torch.uint8, device=device).permute(1, 2, 0)  # strided
        else:
            img = torch.randint(0, 256, (h, w, c), dtype=torch.uint8, device=device)
        out.append(img)
    return out


# (patch, merge, temporal, channels, grids in merge blocks): Qwen2-VL's defaults, then odd patches, no merge,
# 3-frame temporal patches, a 4-channel and a 1-channel layout, single-block images.
CONFIGS = [
    (14, 2, 2, 3, [(1, 2), (3, 1)]),
    (3, 2, 2, 3, [(5, 3), (1, 1), (2, 7)]),
    (2, 1, 3, 3, [(7, 5), (1, 1)]),
    (5, 3, 1, 4, [(1, 3), (2, 1)]),
    (4, 2, 2, 1, [(3, 3)]),
]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("p,m,tps,c,grids", CONFIGS)
def test_order_matches_qwen2vl_restatement(device, p, m, tps, c, grids):
    mean = torch.rand(c).tolist() if c != 3 else list(OPENAI_CLIP_MEAN)
    std = (torch.rand(c) + 0.1).tolist() if c != 3 else list(OPENAI_CLIP_STD)
    images = _random_images(grids, p, m, c, device)
    oracle = torch.cat([_qwen2vl_patches(img, p, m, tps, mean, std) for img in images])
    for backend in native_backends(device):
        out = pack_images(images, patch_size=p, merge_size=m, temporal_patch_size=tps, mean=mean, std=std,
                          backend=backend)
        assert out.pixel_values.dtype == torch.float32 and out.pixel_values.device.type == device, backend
        assert_matches_oracle(out.pixel_values, oracle, name=f"{backend} pixel_values")
        # One float64 evaluation rounded once: the oracle rounded to fp32 is the exact expected value.
        assert torch.equal(out.pixel_values.cpu(), oracle.float()), backend
        expected_grid = [[1, img.shape[0] // p, img.shape[1] // p] for img in images]
        assert out.grid_thw.tolist() == expected_grid and out.grid_thw.dtype == torch.int64, backend
        lengths = [g[1] * g[2] for g in expected_grid]
        assert out.cu_seqlens.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist(), backend
        assert out.cu_seqlens.dtype == torch.int32 and out.pos.shape == (sum(lengths), 2), backend


def _qwen2vl_positions(gh, gw, m):
    rows = np.arange(gh)[:, None].repeat(gw, 1).reshape(gh // m, m, gw // m, m).transpose(0, 2, 1, 3).reshape(-1)
    cols = np.arange(gw)[None, :].repeat(gh, 0).reshape(gh // m, m, gw // m, m).transpose(0, 2, 1, 3).reshape(-1)
    return np.stack([rows, cols], axis=1)


@pytest.mark.parametrize("backend", ["ref", "cpp"])
def test_pos_matches_token_order(backend):
    if backend == "cpp" and not has_cpu_extension():
        pytest.skip("needs the C++ extension (make build)")
    images = _random_images([(2, 3), (1, 1)], 2, 2, 3)
    out = pack_images(images, patch_size=2, merge_size=2, backend=backend)
    expected = np.concatenate([_qwen2vl_positions(img.shape[0] // 2, img.shape[1] // 2, 2) for img in images])
    assert out.pos.dtype == torch.int32 and out.pos.numpy().tolist() == expected.tolist()
    # pos says which pixels a token holds: token k's first feature is pixel (2*row, 2*col), channel 0.
    img0 = images[0].double() / 255
    k = 7
    r, c = out.pos[k].tolist()
    want = (img0[2 * r, 2 * c, 0] - OPENAI_CLIP_MEAN[0]) / OPENAI_CLIP_STD[0]
    assert out.pixel_values[k, 0].item() == pytest.approx(want.item(), abs=1e-6)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtypes_match_oracle(device, dtype):
    images = _random_images([(2, 1), (1, 3)], 3, 2, 3, device)
    oracle = pack_images_ref([i.cpu() for i in images], patch_size=3, out_dtype=torch.float64)
    ref_same = pack_images_ref([i.cpu() for i in images], patch_size=3, out_dtype=dtype)
    for backend in native_backends(device):
        out = pack_images(images, patch_size=3, out_dtype=dtype, backend=backend).pixel_values
        assert out.dtype == dtype, backend
        assert_matches_oracle(out, oracle, ref_same_dtype=ref_same, name=f"{backend} {dtype}")
        assert torch.equal(out.cpu(), ref_same), backend


@needs_cpp
def test_flat_buffer_with_gaps_and_many_threads():
    # Flat form, int32 sizes and offsets with gaps between images; enough block rows to spread over threads.
    p, m, c = 14, 2, 3
    sizes = torch.tensor([[56, 84], [28, 28], [112, 28], [28, 140]], dtype=torch.int32)
    nbytes = (sizes[:, 0] * sizes[:, 1] * c).tolist()
    offsets, pos = [], 5
    for n in nbytes:
        offsets.append(pos)
        pos += n + 7
    data = torch.randint(0, 256, (pos,), dtype=torch.uint8)
    offsets_t = torch.tensor(offsets, dtype=torch.int32)
    got = pack_images(data, sizes, offsets=offsets_t, backend="cpp")
    want = pack_images(data, sizes, offsets=offsets_t, backend="ref")
    assert torch.equal(got.pixel_values, want.pixel_values)
    images = [data[o : o + n].view(h, w, c) for o, n, (h, w) in zip(offsets, nbytes, sizes.tolist())]
    oracle = torch.cat([_qwen2vl_patches(i, p, m, 2, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD) for i in images])
    assert torch.equal(got.pixel_values, oracle.float())
    for a, b in zip(got[1:], want[1:]):
        assert torch.equal(a, b)
    # Back-to-back default offsets equal the list form.
    back = torch.cat([i.reshape(-1) for i in images])
    assert torch.equal(pack_images(back, sizes.long(), backend="cpp").pixel_values, got.pixel_values)


@pytest.mark.parametrize("backend", ["ref", "cpp"])
def test_empty_batch(backend):
    if backend == "cpp" and not has_cpu_extension():
        pytest.skip("needs the C++ extension (make build)")
    out = pack_images([], backend=backend)
    assert out.pixel_values.shape == (0, 1176) and out.grid_thw.shape == (0, 3)
    assert out.cu_seqlens.tolist() == [0] and out.pos.shape == (0, 2)


def _flat(h, w, c=3):
    return torch.randint(0, 256, (h * w * c,), dtype=torch.uint8), torch.tensor([[h, w]])


BAD = [
    (dict(sizes=torch.tensor([[28, 30]])), "multiples of patch_size \\* merge_size = 28"),
    (dict(sizes=torch.tensor([[0, 28]])), "multiples of patch_size"),
    (dict(sizes=torch.tensor([[28, 28, 1]])), r"sizes must have shape \[N, 2\]"),
    (dict(sizes=torch.tensor([[28.0, 28.0]])), "sizes must have"),
    (dict(offsets=torch.tensor([10])), "needs bytes"),
    (dict(offsets=torch.tensor([0, 0])), r"offsets must have shape \[N\]"),
    (dict(data=torch.zeros(28 * 28 * 3, dtype=torch.int32)), "data must"),
    (dict(std=[0.2, 0.0, 0.3]), "must be finite with std != 0"),
    (dict(std=[0.2, 0.3]), "std must have 3 entries"),
    (dict(out_dtype=torch.int32), "out_dtype must be"),
    (dict(patch_size=0), "patch_size must be >= 1"),
    (dict(temporal_patch_size=0), "temporal_patch_size must be >= 1"),
]


@pytest.mark.parametrize("kwargs,msg", BAD)
@pytest.mark.parametrize("backend", ["ref", "cpp"])
def test_bad_input_is_a_clear_error(kwargs, msg, backend):
    if backend == "cpp" and not has_cpu_extension():
        pytest.skip("needs the C++ extension (make build)")
    data, sizes = _flat(28, 28)
    kwargs = dict(kwargs)
    data = kwargs.pop("data", data)
    sizes = kwargs.pop("sizes", sizes)
    with pytest.raises((ValueError, RuntimeError), match=msg):
        pack_images(data, sizes, backend=backend, **kwargs)


def test_bad_list_input_names_the_image():
    good = torch.zeros(28, 28, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"images\[1\] must be uint8 \[H, W, 3\]"):
        pack_images([good, torch.zeros(28, 28, 4, dtype=torch.uint8)])
    with pytest.raises(ValueError, match=r"images\[0\] must be uint8"):
        pack_images([good.float()])
    with pytest.raises(ValueError, match="needs sizes"):
        pack_images(good.reshape(-1))
    with pytest.raises(ValueError, match="a list of uint8"):
        pack_images(good)


@needs_cpp
def test_opcheck():
    data, sizes = _flat(28, 56)
    # Data-dependent output size: the fake kernel uses a dynamic size, so aot_dispatch tests do not apply.
    torch.library.opcheck(
        torch.ops.omni_mega.pack_images.default,
        (data, sizes, torch.tensor([0]), 14, 2, 2, list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD), torch.bfloat16),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_matches_transformers_when_installed():
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    except Exception as e:  # transformers is a benchmark-only dependency
        pytest.skip(f"needs transformers' Qwen2VLImageProcessorPil ({type(e).__name__})")
    from PIL import Image

    # Sizes already multiples of 28 and above min_pixels, so transformers does not resize.
    images = _random_images([(2, 3), (3, 2)], 14, 2, 3)
    proc = Qwen2VLImageProcessorPil()
    theirs = proc(images=[Image.fromarray(i.contiguous().numpy()) for i in images], return_tensors="np")
    ours = pack_images(images)
    # transformers normalizes in float32 steps: a few ulp apart from our single rounding.
    torch.testing.assert_close(ours.pixel_values, torch.from_numpy(theirs["pixel_values"]), atol=2e-6, rtol=1e-6)
    assert ours.grid_thw.tolist() == theirs["image_grid_thw"].tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_large_matches_cpu():
    images = _random_images([(16, 23), (1, 1), (9, 4)], 14, 2, 3, "cuda")
    got = pack_images(images, out_dtype=torch.bfloat16)
    want = pack_images_ref([i.cpu() for i in images], out_dtype=torch.bfloat16)
    assert torch.equal(got.pixel_values.cpu(), want)


def test_forced_unavailable_backend_is_clear():
    with pytest.raises(ValueError, match="does not run on device"):
        pack_images([torch.zeros(28, 28, 3, dtype=torch.uint8)], backend="cuda")


# ---- integer overflow: every backend refuses the same inputs with the same message ----

I64 = 2**63 - 1


def _messages(call) -> set[str]:
    """The first line of each backend's error (ref raises ValueError, cpp RuntimeError)."""
    out = set()
    for backend in ["ref", "cpp"] if has_cpu_extension() else ["ref"]:
        with pytest.raises((ValueError, RuntimeError)) as e:
            call(backend)
        out.add(str(e.value).splitlines()[0])
    return out


def test_offset_near_int64_max_is_an_error_not_a_crash():
    # off + bytes wrapped past INT64_MAX to a negative number, passed `<= numel`, and the kernel read wild memory.
    data, sizes = _flat(28, 28)
    msgs = _messages(lambda b: pack_images(data, sizes, offsets=torch.tensor([I64 - 100]), backend=b))
    assert msgs == {f"pack_images: offsets[0] = {I64 - 100}: image 0 needs bytes [{I64 - 100}, {I64 - 100 + 2352}) "
                    "of data, which has numel 2352"}


def test_image_bytes_past_int64_are_an_error_not_an_empty_batch():
    # 28 * 2^31 squared x 3 bytes is 0 mod 2^64 and so is its token count: the image used to vanish silently.
    side = 28 * 2**31
    empty = torch.empty(0, dtype=torch.uint8)
    msgs = _messages(lambda b: pack_images(empty, torch.tensor([[side, side]]), offsets=torch.tensor([0]), backend=b))
    assert msgs == {f"pack_images: sizes[0] = ({side}, {side}): an image of {side} x {side} x 3 bytes overflows int64"}


def test_features_past_int64_are_an_error():
    data, sizes = _flat(28, 28)
    msgs = _messages(lambda b: pack_images(data, sizes, temporal_patch_size=2**62, backend=b))
    assert msgs == {"pack_images: C * temporal_patch_size * patch_size^2 = 3 x 4611686018427387904 x 14^2 features "
                    "per token overflows int64"}
