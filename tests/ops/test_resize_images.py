"""resize_images: both backends equal Pillow 13's Image.resize(BICUBIC) bit for bit, in every layout the op takes."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from omni_mega.ops import has_cpu_extension, pack_images, resize_images
from omni_mega.ops.resize_images import _pass, vertical_first

needs_cpp = pytest.mark.skipif(not has_cpu_extension(), reason="needs the C++ extension (make build)")
BACKENDS = ["ref", pytest.param("cpp", marks=needs_cpp)]

# (h, w, out_h, out_w), one or more per kind of resize; small, because the ref backend runs them too.
CASES = [
    (5, 7, 13, 17), (3, 2, 29, 31),  # upscale
    (40, 50, 9, 11), (37, 23, 4, 5),  # downscale
    (10, 40, 25, 13), (31, 6, 7, 19),  # mixed: one axis up, one down
    (1, 1, 5, 4), (1, 9, 4, 3), (8, 1, 3, 6),  # 1-pixel input (or a 1-pixel axis)
    (9, 7, 1, 1), (13, 5, 1, 3), (2, 11, 5, 1),  # 1-pixel output
    (6, 8, 6, 8), (1, 1, 1, 1),  # identity: copied
    (12, 9, 12, 4), (12, 9, 5, 9), (7, 3, 7, 11), (4, 5, 17, 5),  # one axis unchanged
    (300, 20, 3, 7), (2, 300, 5, 3),  # extreme shrink: 100x wide filters
    # Pass order (vertical_first: out_h < h and 2 * out_w - out_h > 2 * w - h), both sides and the boundary:
    (20, 10, 5, 30), (20, 10, 5, 8), (33, 21, 17, 19), (24, 16, 11, 12),  # vertical first
    (10, 20, 5, 8), (20, 10, 10, 5), (21, 33, 19, 17), (24, 16, 11, 9),  # horizontal first; (20, 10, 10, 5)
    # sits at equality (2 * 5 - 10 == 2 * 10 - 20) and (24, 16, 11, 9) one below it
]
VERTICAL_FIRST = [c for c in CASES if c[2] != c[0] and c[3] != c[1] and vertical_first(*c)]
HORIZONTAL_FIRST = [c for c in CASES if c[2] != c[0] and c[3] != c[1] and not vertical_first(*c)]


def _pillow(img: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """uint8 [H, W, C] (C 1 or 3) -> Pillow's BICUBIC resize as uint8 [out_h, out_w, C]; C == 1 runs in mode L."""
    a = img.contiguous().numpy()
    pil = Image.fromarray(a[:, :, 0], "L") if a.shape[2] == 1 else Image.fromarray(a, "RGB")
    out = np.array(pil.resize((out_w, out_h), Image.Resampling.BICUBIC))
    return torch.from_numpy(out.reshape(out_h, out_w, a.shape[2]))


def _random_image(g: torch.Generator, h: int, w: int, c: int) -> torch.Tensor:
    return torch.randint(0, 256, (h, w, c), dtype=torch.uint8, generator=g)


def _random_cases(g: torch.Generator, n: int, max_side: int) -> list[tuple[int, int, int, int]]:
    return [tuple(v) for v in torch.randint(1, max_side + 1, (n, 4), generator=g).tolist()]


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_pillow_in_one_batched_call(backend, channels):
    g = torch.Generator().manual_seed(1000 + channels)
    cases = list(CASES)
    if backend == "cpp":  # the fast backend also takes a few hundred random shapes and two large images
        cases += _random_cases(g, 300, 48) + [(611, 457, 224, 336), (480, 599, 700, 812)]
    images = [_random_image(g, h, w, channels) for h, w, _, _ in cases]
    out = resize_images(images, [(oh, ow) for _, _, oh, ow in cases], backend=backend)
    assert out.data.dtype == torch.uint8 and out.sizes.tolist() == [[oh, ow] for _, _, oh, ow in cases]
    got = out.images()
    assert len(got) == len(cases)
    bad = [(h, w, oh, ow) for (h, w, oh, ow), img, r in zip(cases, images, got)
           if not torch.equal(r, _pillow(img, oh, ow))]
    assert not bad, f"{backend} differs from Pillow for (h, w, out_h, out_w) in {bad[:10]}"
    for (h, w, oh, ow), img, r in zip(cases, images, got):
        if (h, w) == (oh, ow):
            assert torch.equal(r, img)  # same size: copied unchanged


def test_pass_order_rule_matters():
    # The rule picks each order on some case, and the other order gives a different image on every case with all
    # four sides >= 2 (a 1-pixel input axis makes its pass a pure replication, so the order cannot matter; a
    # 1-pixel output is a single rounding that can agree by chance): the equality with Pillow above holds only
    # because the rule is right, on both of its sides.
    g = torch.Generator().manual_seed(7)
    for group, vf in ((VERTICAL_FIRST, True), (HORIZONTAL_FIRST, False)):
        tested = [c for c in group if min(c) >= 2]
        assert len(tested) >= 4
        for h, w, oh, ow in tested:
            img = _random_image(g, h, w, 3)
            x = img.to(torch.int64)
            other = _pass(_pass(x, ow, dim=1), oh, dim=0) if vf else _pass(_pass(x, oh, dim=0), ow, dim=1)
            assert not torch.equal(other.to(torch.uint8), _pillow(img, oh, ow)), (h, w, oh, ow, vf)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    g = torch.Generator().manual_seed(11)
    chw = torch.randint(0, 256, (3, 19, 26), dtype=torch.uint8, generator=g)
    wide = _random_image(g, 30, 17, 3)
    views = [chw.permute(1, 2, 0), wide[::2, 1::3], wide[:, :, 1:2]]  # strided HWC, stepped slices, one channel
    outs = [(7, 40), (5, 9), (44, 6)]
    for view, (oh, ow) in zip(views, outs):
        assert not view.is_contiguous()
        got = resize_images([view], [(oh, ow)], backend=backend).images()[0]
        want = resize_images([view.contiguous()], [(oh, ow)], backend=backend).images()[0]
        assert torch.equal(got, want) and torch.equal(got, _pillow(view, oh, ow))


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_form_with_gaps_equals_list_form(backend, channels):
    g = torch.Generator().manual_seed(13 + channels)
    cases = [(9, 14, 4, 21), (1, 1, 3, 2), (16, 5, 16, 8), (7, 7, 7, 7), (25, 12, 3, 3)]
    images = [_random_image(g, h, w, channels) for h, w, _, _ in cases]
    offsets, pos = [], 3  # a gap before the first image and after each one
    for img in images:
        offsets.append(pos)
        pos += img.numel() + 5
    data = torch.randint(0, 256, (pos,), dtype=torch.uint8, generator=g)
    for img, o in zip(images, offsets):
        data[o : o + img.numel()] = img.reshape(-1)
    sizes = torch.tensor([[h, w] for h, w, _, _ in cases], dtype=torch.int32)
    out_sizes = torch.tensor([[oh, ow] for _, _, oh, ow in cases], dtype=torch.int32)
    flat = resize_images(data, out_sizes, sizes=sizes, offsets=torch.tensor(offsets, dtype=torch.int32),
                         channels=channels, backend=backend)
    listed = resize_images(images, out_sizes, backend=backend)
    assert torch.equal(flat.data, listed.data)
    assert torch.equal(flat.sizes, listed.sizes) and torch.equal(flat.offsets, listed.offsets)
    # Back to back, no offsets given: the same again.
    back = torch.cat([i.reshape(-1) for i in images])
    assert torch.equal(resize_images(back, out_sizes, sizes=sizes, channels=channels, backend=backend).data,
                       listed.data)


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_offsets_and_pack_images(backend):
    g = torch.Generator().manual_seed(17)
    cases = [(50, 61, 28, 56), (30, 20, 84, 28), (56, 28, 56, 28), (100, 90, 28, 28)]
    images = [_random_image(g, h, w, 3) for h, w, _, _ in cases]
    out = resize_images(images, [(oh, ow) for _, _, oh, ow in cases], backend=backend)
    nbytes = [oh * ow * 3 for _, _, oh, ow in cases]
    assert out.offsets.tolist() == np.concatenate([[0], np.cumsum(nbytes)[:-1]]).tolist()
    assert out.data.numel() == sum(nbytes) and out.sizes.dtype == out.offsets.dtype == torch.int64
    base = out.data.data_ptr()
    for view, o, (_, _, oh, ow) in zip(out.images(), out.offsets.tolist(), cases):
        assert view.shape == (oh, ow, 3) and view.data_ptr() == base + o  # a view into data, not a copy
    want = pack_images([_pillow(img, oh, ow) for img, (_, _, oh, ow) in zip(images, cases)], backend=backend)
    got = pack_images(out.data, out.sizes, offsets=out.offsets, backend=backend)
    assert torch.equal(got.pixel_values, want.pixel_values) and torch.equal(got.grid_thw, want.grid_thw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    out = resize_images([], torch.empty(0, 2, dtype=torch.int64), backend=backend)
    assert out.data.numel() == 0 and out.sizes.shape == (0, 2) and out.images() == []


def _flat_image(h=6, w=5, c=3):
    return torch.randint(0, 256, (h * w * c,), dtype=torch.uint8), torch.tensor([[h, w]])


BAD = [
    (dict(out_sizes=torch.tensor([[0, 4]])), r"out_sizes\[0\] = \(0, 4\): height and width must be >= 1"),
    (dict(out_sizes=torch.tensor([[3, 0]])), r"out_sizes\[0\] = \(3, 0\)"),
    (dict(out_sizes=torch.tensor([[3, 4], [5, 6]])), r"out_sizes must have shape \[N, 2\] = \[1, 2\]"),
    (dict(offsets=torch.tensor([7])), r"offsets\[0\] = 7: image 0 needs bytes \[7, 97\) of data"),
    (dict(offsets=torch.tensor([-1])), r"offsets\[0\] = -1"),
    (dict(data=torch.zeros(90, dtype=torch.int32)), "data must .*dtype Byte"),
    (dict(sizes=torch.tensor([[0, 5]])), r"sizes\[0\] = \(0, 5\): height and width must be >= 1"),
    (dict(channels=17), "channels must be in 1..16"),
]


@pytest.mark.parametrize("kwargs,msg", BAD)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_is_a_clear_error(kwargs, msg, backend):
    data, sizes = _flat_image()
    kwargs = dict(kwargs)
    data, sizes = kwargs.pop("data", data), kwargs.pop("sizes", sizes)
    out_sizes = kwargs.pop("out_sizes", torch.tensor([[3, 4]]))
    # ref validates in Python (ValueError); cpp's TORCH_CHECKs surface as RuntimeError: same messages.
    with pytest.raises(ValueError if backend == "ref" else RuntimeError, match=msg):
        resize_images(data, out_sizes, sizes=sizes, backend=backend, **kwargs)


@needs_cpp
def test_op_checks_shapes_and_dtypes_of_its_arguments():
    data, sizes = _flat_image()
    off, out_sizes = torch.tensor([0]), torch.tensor([[3, 4]])
    op = torch.ops.omni_mega.resize_images
    with pytest.raises(RuntimeError, match=r"out_sizes must have shape \[N, 2\] = \[1, 2\].*got \[1, 3\]"):
        op(data, sizes, off, torch.tensor([[3, 4, 5]]), 3)
    with pytest.raises(RuntimeError, match="out_sizes must have dtype Int/Long, got Float"):
        op(data, sizes, off, out_sizes.float(), 3)
    with pytest.raises(RuntimeError, match="data must be 1-D"):
        op(data.view(2, -1), sizes, off, out_sizes, 3)
    with pytest.raises(RuntimeError, match=r"offsets must have shape \[N\] = \[1\]"):
        op(data, sizes, torch.tensor([0, 0]), out_sizes, 3)


@needs_cpp
def test_opcheck():
    data, sizes = _flat_image(7, 9)
    # The output length is data-dependent (sum of out_h * out_w * C read from a tensor): the fake kernel returns
    # a new dynamic size, which every opcheck test (aot_dispatch_dynamic included) accepts, so none is left out.
    torch.library.opcheck(
        torch.ops.omni_mega.resize_images.default,
        (data, sizes, torch.tensor([0]), torch.tensor([[4, 12]]), 3),
    )


BIG = (1024, 512, 1024, 1024)  # horizontal pass only (no intermediate buffer): one 3 MiB output from the pool


@needs_cpp
@pytest.mark.skipif(os.environ.get("OMNI_MEGA_HOST_CACHE_MB") == "0", reason="host cache turned off by env var")
def test_host_cache_recycles_large_outputs():
    h, w, oh, ow = BIG
    img = torch.zeros(h, w, 3, dtype=torch.uint8)
    torch.ops.omni_mega.host_cache_clear()
    assert torch.ops.omni_mega.host_cache_free_bytes() == 0
    out = resize_images([img], [(oh, ow)], backend="cpp")
    ptr, nbytes = out.data.data_ptr(), out.data.numel()
    assert torch.ops.omni_mega.host_cache_free_bytes() == 0
    del out
    freed = torch.ops.omni_mega.host_cache_free_bytes()
    assert freed >= nbytes
    again = resize_images([img], [(oh, ow)], backend="cpp")
    assert torch.ops.omni_mega.host_cache_free_bytes() == 0  # the freed block went back out
    assert again.data.data_ptr() == ptr
    torch.ops.omni_mega.host_cache_clear()


@needs_cpp
def test_host_cache_off_by_env_var():
    h, w, oh, ow = BIG
    code = (
        "import torch; from omni_mega.ops import resize_images\n"
        f"out = resize_images([torch.zeros({h}, {w}, 3, dtype=torch.uint8)], [({oh}, {ow})], backend='cpp')\n"
        "n = out.data.numel(); del out\n"
        "print(n, torch.ops.omni_mega.host_cache_free_bytes())"
    )
    env = dict(os.environ, OMNI_MEGA_HOST_CACHE_MB="0")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    nbytes, free = map(int, res.stdout.split()[-2:])
    assert nbytes == oh * ow * 3 and free == 0


def _jpegs() -> list[bytes]:
    """8 JPEGs, 30..700 px, smooth gradients plus noise; one grayscale (converted to RGB on decode)."""
    g = np.random.default_rng(23)
    sizes = [(30, 41), (700, 523), (97, 310), (256, 256), (45, 660), (333, 77), (128, 200), (61, 59)]
    out = []
    for k, (h, w) in enumerate(sizes):
        ramp = np.add.outer(np.linspace(0, 200, h), np.linspace(0, 55, w))[:, :, None]
        img = np.clip(ramp + g.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        pil = Image.fromarray(img[:, :, 0], "L") if k == 3 else Image.fromarray(img, "RGB")
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


@needs_cpp
def test_images_path_equals_pillow(monkeypatch):
    from omni_mega.data.images import decode as images_mod

    jpegs = _jpegs()
    # 30x41 is under min_pixels (upscaled); 700x523 and others are over max_pixels (downscaled).
    kw = dict(min_pixels=112 * 112, max_pixels=28 * 28 * 60, backend="pillow")
    batched, stats_b = images_mod.decode_images(jpegs, **kw)
    packed_b, kept_b, _ = images_mod.decode_and_pack(jpegs, **kw)
    monkeypatch.setattr(images_mod, "_cpp_resize", lambda: False)  # per-image Pillow decode + resize_to_factor
    pillow, stats_p = images_mod.decode_images(jpegs, **kw)
    packed_p, kept_p, _ = images_mod.decode_and_pack(jpegs, **kw)
    assert stats_b.upscaled >= 1 and stats_b.downscaled >= 1 and stats_b.kept == len(jpegs)
    assert (stats_b.upscaled, stats_b.downscaled, stats_b.kept) == (stats_p.upscaled, stats_p.downscaled,
                                                                     stats_p.kept)
    for i, (a, b) in enumerate(zip(batched, pillow)):
        assert a.shape == b.shape and torch.equal(a, b), f"image {i}: {tuple(a.shape)} vs {tuple(b.shape)}"
    assert torch.equal(kept_b, kept_p) and torch.equal(packed_b.grid_thw, packed_p.grid_thw)
    assert torch.equal(packed_b.pixel_values, packed_p.pixel_values)


# ---- integer overflow, float images and fractional sizes: the same error from every backend ----

I32, I64 = 2**31 - 1, 2**63 - 1


def _messages(call) -> set[str]:
    """The first line of each backend's error (ref raises ValueError, cpp RuntimeError)."""
    out = set()
    for backend in ["ref", "cpp"] if has_cpu_extension() else ["ref"]:
        with pytest.raises((ValueError, RuntimeError)) as e:
            call(backend)
        out.add(str(e.value).splitlines()[0])
    return out


def test_offset_near_int64_max_is_an_error_not_a_crash():
    data, sizes = _flat_image(2, 2)
    off = torch.tensor([I64 - 5])
    msgs = _messages(lambda b: resize_images(data, [[3, 3]], sizes=sizes, offsets=off, backend=b))
    assert msgs == {f"resize_images: offsets[0] = {I64 - 5}: image 0 needs bytes [{I64 - 5}, {I64 + 7}) of data, "
                    "which has numel 12"}


def test_image_bytes_past_int64_are_an_error():
    data, _ = _flat_image(2, 2)
    sizes = torch.tensor([[I32, I32]])  # (2^31 - 1)^2 x 3 > INT64_MAX
    msgs = _messages(lambda b: resize_images(data, [[3, 3]], sizes=sizes, offsets=torch.tensor([0]), backend=b))
    assert msgs == {f"resize_images: sizes[0] = ({I32}, {I32}): an image of {I32} x {I32} x 3 bytes overflows int64"}


@pytest.mark.parametrize("name,value", [("sizes", [[2**32, 1]]), ("out_sizes", [[1, 2**31]])])
def test_sides_past_int32_are_an_error(name, value):
    data, sizes = _flat_image(2, 2)
    kw = dict(sizes=torch.tensor(value) if name == "sizes" else sizes, offsets=torch.tensor([0]))
    out_sizes = value if name == "out_sizes" else [[3, 3]]
    msgs = _messages(lambda b: resize_images(data, out_sizes, backend=b, **kw))
    (h, w), = value
    assert msgs == {f"resize_images: {name}[0] = ({h}, {w}): height and width must be <= {I32}"}


@pytest.mark.parametrize("form", ["list", "flat"])
def test_float_image_names_resize_images(form):
    img = torch.rand(4, 4, 3)
    if form == "list":
        msgs = _messages(lambda b: resize_images([img], [[2, 2]], backend=b))
        assert msgs == {"resize_images: images[0] must be uint8 [H, W, 3] (HWC, C = images[0].shape[2]), got "
                        "torch.float32 (4, 4, 3)"}
    else:
        msgs = _messages(lambda b: resize_images(img.reshape(-1), [[2, 2]], sizes=torch.tensor([[4, 4]]), backend=b))
        assert msgs == {"resize_images: data must be 1-D with dtype Byte (uint8), got Float [48]"}


@pytest.mark.parametrize("out_sizes", [torch.tensor([[2.7, 2.2]]), [[2.5, 3]], torch.tensor([[2.0, 3.0]])],
                         ids=["float-tensor", "fractional-list", "integral-float-tensor"])
def test_fractional_out_sizes_are_refused_not_rounded(out_sizes):
    img = torch.zeros(4, 4, 3, dtype=torch.uint8)
    for msg in _messages(lambda b: resize_images([img], out_sizes, backend=b)):
        assert msg.startswith("resize_images: out_sizes must have dtype Int/Long (whole pixels), got torch.float")


@needs_cpp
def test_op_refuses_float_out_sizes():
    data, sizes = _flat_image(2, 2)
    with pytest.raises(RuntimeError, match="resize_images: out_sizes must have dtype Int/Long, got Float"):
        torch.ops.omni_mega.resize_images(data, sizes, torch.tensor([0]), torch.tensor([[2.5, 3.0]]), 3)


BAD_CACHE_MB = ["-1", "abc", "99999999999999999999", "5x", "1073741825"]


@needs_cpp
def test_bad_host_cache_env_var_is_a_clear_error():
    # One process for all values: a pool that failed to start reads the variable again on the next call.
    code = ("import os, torch; from omni_mega.ops import resize_images\n"
            f"for v in {BAD_CACHE_MB!r}:\n"
            "    os.environ['OMNI_MEGA_HOST_CACHE_MB'] = v\n"
            "    try:\n"
            "        resize_images([torch.zeros(2, 2, 3, dtype=torch.uint8)], [(1024, 512)], backend='cpp')\n"
            "    except RuntimeError as e:\n"
            "        print(str(e).splitlines()[0])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f'OMNI_MEGA_HOST_CACHE_MB must be a whole number of MiB in 0..1073741824, got "{v}"' for v in BAD_CACHE_MB
    ]
