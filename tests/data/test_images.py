import io
import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from omni_mega.data.images import dali as image_dali
from omni_mega.data.images import DecodeStats, decode_and_pack, decode_images, smart_resize
from omni_mega.ops import pack_images

needs_dali = pytest.mark.skipif(not image_dali.dali_available(),
                                reason="needs nvidia-dali (pip install omni_mega[dali])")


def _rand_rgb(h, w, seed=None):
    g = np.random.default_rng(seed)
    # Smooth gradients plus noise: JPEG-like content rather than pure noise.
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=-1)
    return np.clip(base + g.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)


def _encode(img: Image.Image, fmt: str, tmp_path, name: str, **kw) -> bytes:
    path = tmp_path / f"{name}.{fmt.lower()}"
    img.save(path, fmt, **kw)
    return path.read_bytes()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_raw(width: int, height: int, depth: int, color: int, rows: bytes) -> bytes:
    """Hand-written PNG (Pillow cannot write 48-bit RGB or 0-size PNGs)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))


# ---------------------------------------------------------------- smart_resize


@pytest.mark.parametrize(
    "hw,kw,expected",
    [
        ((56, 84), {}, (56, 84)),  # exact multiples stay
        ((70, 280), {}, (56, 280)),  # 70 / 28 = 2.5: Python's round() ties to even -> 2, not 3
        ((126, 98), {}, (112, 112)),  # 4.5 -> 4 (ties to even), 3.5 -> 4
        ((10, 10), {}, (56, 56)),  # tiny: below min_pixels, ceil
        ((1, 1), {}, (56, 56)),
        ((10000, 10000), {}, (980, 980)),  # huge: beta = sqrt(1e8 / 1003520), floor(35.78) * 28
        ((1, 200), {}, (28, 812)),  # aspect exactly 200 is allowed
        ((30, 6000), {"max_pixels": 3136}, (28, 784)),  # floor would give 0: never below one factor
        ((100, 100), {"factor": 32, "min_pixels": 0, "max_pixels": 10**9}, (96, 96)),
    ],
)
def test_smart_resize_cases(hw, kw, expected):
    assert smart_resize(*hw, **kw) == expected


@pytest.mark.parametrize("hw,msg", [((1, 201), "aspect ratio"), ((5000, 20), "aspect ratio"), ((0, 10), "positive"),
                                    ((5, 10), "rounds to")])
def test_smart_resize_rejects(hw, msg):
    kw = {"min_pixels": 0} if hw == (5, 10) else {}
    with pytest.raises(ValueError, match=msg):
        smart_resize(*hw, **kw)


def test_smart_resize_matches_transformers_when_installed():
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as theirs
    except Exception as e:
        pytest.skip(f"needs transformers ({type(e).__name__})")
    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(1, 5000, (400, 2), generator=g).tolist() + [[h, 28 * k] for h in (14, 42, 70) for k in (1, 9)]
    for h, w in sizes:
        if max(h, w) / min(h, w) > 200:
            continue
        for mn, mx in ((56 * 56, 28 * 28 * 1280), (448 * 448, 1344 * 1792)):
            assert smart_resize(h, w, 28, mn, mx) == theirs(h, w, 28, mn, mx), (h, w, mn, mx)


# ---------------------------------------------------------------- decoding and bad input


def _bad_and_odd_inputs(tmp_path) -> dict[str, bytes]:
    rgb = Image.fromarray(_rand_rgb(60, 90, 0))
    jpeg = _encode(rgb, "JPEG", tmp_path, "rgb", quality=90)
    gray16 = Image.fromarray((np.arange(40 * 56, dtype=np.uint16).reshape(40, 56) * 29).astype(np.uint16))
    rgb16 = (np.arange(30 * 40 * 3, dtype=np.int64).reshape(30, 40, 3) * 17 % 65536).astype(">u2")
    rgb16_rows = b"".join(b"\x00" + rgb16[y].tobytes() for y in range(30))
    rgba = np.dstack([_rand_rgb(40, 50, 1), np.tile(np.array([0, 255], np.uint8), (40, 25))])
    return {
        "jpeg": jpeg,
        "truncated": jpeg[: len(jpeg) // 2],
        "garbage": b"not an image at all" * 10,
        "empty": b"",
        "zero_size": _png_raw(0, 10, 8, 2, b""),
        "gray_png": _encode(rgb.convert("L"), "PNG", tmp_path, "gray"),
        "cmyk_jpeg": _encode(rgb.convert("CMYK"), "JPEG", tmp_path, "cmyk", quality=95),
        "rgba_png": _encode(Image.fromarray(rgba, "RGBA"), "PNG", tmp_path, "rgba"),
        "gray16_png": _encode(gray16, "PNG", tmp_path, "gray16"),
        "rgb16_png": _png_raw(40, 30, 16, 2, rgb16_rows),
        "extreme_aspect": _encode(Image.fromarray(_rand_rgb(2, 500, 2)), "PNG", tmp_path, "wide"),
        "big": _encode(Image.fromarray(_rand_rgb(300, 400, 3)), "JPEG", tmp_path, "big"),
    }


REJECTED = {"truncated": "corrupt", "garbage": "corrupt", "empty": "empty", "zero_size": "zero_size",
            "extreme_aspect": "extreme_aspect"}
CONVERTED = {"gray_png": "L", "cmyk_jpeg": "CMYK", "rgba_png": "RGBA", "gray16_png": "I;16", "rgb16_png": "RGB;16"}


@pytest.mark.parametrize("backend", ["pillow", "dali"])
def test_each_bad_input_is_counted_and_never_shifts_samples(tmp_path, caplog, backend):
    if backend == "dali" and not image_dali.dali_available():
        pytest.skip("needs nvidia-dali (pip install omni_mega[dali])")
    inputs = _bad_and_odd_inputs(tmp_path)
    names = list(inputs)
    max_pixels = 28 * 28 * 20  # "big" (300x400) exceeds it and is resized down
    with caplog.at_level(logging.WARNING, logger="omni_mega.data.images.decode"):
        images, stats = decode_images([inputs[n] for n in names], max_pixels=max_pixels, backend=backend)
    assert len(images) == len(names)
    for name, img in zip(names, images):
        if name in REJECTED:
            assert img is None, name
        else:
            assert img is not None and img.dtype == torch.uint8 and img.shape[2] == 3, name
            assert img.shape[0] % 28 == 0 and img.shape[1] % 28 == 0, name
            # Every kept image equals decoding it alone: nothing shifted.
            alone, _ = decode_images([inputs[name]], max_pixels=max_pixels, backend="pillow")
            assert torch.equal(img, alone[0]), name
    assert stats.seen == len(names) and stats.kept == len(names) - len(REJECTED)
    assert dict(stats.rejected) == {r: list(REJECTED.values()).count(r) for r in set(REJECTED.values())}
    assert dict(stats.converted) == {m: 1 for m in CONVERTED.values()}
    assert stats.downscaled == 1
    assert stats.upscaled == 3  # 40x50, 40x56, 30x40 round to under min_pixels = 3136
    logged = [r.getMessage() for r in caplog.records]
    for name, reason in REJECTED.items():
        assert any(f"image {names.index(name)} rejected ({reason})" in m for m in logged), name
    assert "rejected" in stats.summary()


def test_conversions_keep_the_right_pixels(tmp_path):
    inputs = _bad_and_odd_inputs(tmp_path)
    # No resizing: factor 1 and no pixel limits, so the converted pixels are compared directly.
    kw = dict(patch_size=1, merge_size=1, min_pixels=0, max_pixels=10**9)
    (rgba, gray16, rgb16, gray), _ = decode_images(
        [inputs["rgba_png"], inputs["gray16_png"], inputs["rgb16_png"], inputs["gray_png"]], backend="pillow", **kw)
    # RGBA: transparent columns composite onto white, opaque ones keep their color.
    src = np.asarray(Image.open(io.BytesIO(inputs["rgba_png"])))
    assert (rgba[:, 0::2].numpy() == 255).all()
    assert np.array_equal(rgba[:, 1::2].numpy(), src[:, 1::2, :3])
    # 16-bit gray scaled by 255/65535 with rounding (not clipped at 255).
    v16 = np.arange(40 * 56).reshape(40, 56) * 29
    assert np.array_equal(gray16[..., 0].numpy(), (v16 * 255 + 32767) // 65535)
    assert torch.equal(gray16[..., 0], gray16[..., 2])
    # 48-bit RGB keeps the high byte of each sample (Pillow's reading).
    v = (np.arange(30 * 40 * 3).reshape(30, 40, 3) * 17 % 65536) >> 8
    assert np.array_equal(rgb16.numpy(), v)
    assert torch.equal(gray[..., 0], gray[..., 1]) and gray.shape == (60, 90, 3)


def test_too_large_is_refused_before_decoding(tmp_path):
    big = _encode(Image.fromarray(_rand_rgb(100, 120, 4)), "PNG", tmp_path, "x")
    images, stats = decode_images([big], max_decode_pixels=100 * 119, backend="pillow")
    assert images == [None] and dict(stats.rejected) == {"too_large": 1}


def test_resize_is_pillow_bicubic_to_smart_size(tmp_path):
    data = _encode(Image.fromarray(_rand_rgb(333, 517, 5)), "JPEG", tmp_path, "odd")
    (img,), stats = decode_images([data], max_pixels=28 * 28 * 64, backend="pillow")
    h, w = smart_resize(333, 517, 28, 56 * 56, 28 * 28 * 64)
    want = Image.open(io.BytesIO(data)).convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    assert img.shape == (h, w, 3) and np.array_equal(img.numpy(), np.asarray(want)) and stats.downscaled == 1


def test_threads_and_stats_accumulate(tmp_path):
    inputs = _bad_and_odd_inputs(tmp_path)
    samples = list(inputs.values())
    one, s1 = decode_images(samples, num_threads=1, backend="pillow")
    stats = DecodeStats()
    two, _ = decode_images(samples, num_threads=2, stats=stats, backend="pillow")
    decode_images(samples[:3], num_threads=2, stats=stats, backend="pillow")
    for a, b in zip(one, two):
        assert (a is None and b is None) or torch.equal(a, b)
    assert stats.seen == len(samples) + 3 and stats.rejected["corrupt"] == s1.rejected["corrupt"] + 2


def test_decode_and_pack_keeps_indices(tmp_path):
    inputs = _bad_and_odd_inputs(tmp_path)
    samples = [inputs["jpeg"], inputs["truncated"], inputs["big"], inputs["empty"], inputs["gray_png"]]
    packed, kept, stats = decode_and_pack(samples, out_dtype=torch.bfloat16)
    assert kept.tolist() == [0, 2, 4] and stats.kept == 3
    images, _ = decode_images([samples[i] for i in kept.tolist()])
    want = pack_images(images, out_dtype=torch.bfloat16)
    assert torch.equal(packed.pixel_values, want.pixel_values) and torch.equal(packed.grid_thw, want.grid_thw)


def test_end_to_end_matches_transformers_when_installed(tmp_path):
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    except Exception as e:
        pytest.skip(f"needs transformers ({type(e).__name__})")
    samples = [_encode(Image.fromarray(_rand_rgb(h, w, h)), "JPEG", tmp_path, f"{h}", quality=85)
               for h, w in ((97, 211), (300, 150), (20, 30))]
    packed, kept, _ = decode_and_pack(samples, max_pixels=28 * 28 * 40)
    pil = [Image.open(io.BytesIO(s)).convert("RGB") for s in samples]
    theirs = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 40)(images=pil, return_tensors="np")
    assert packed.grid_thw.tolist() == theirs["image_grid_thw"].tolist()
    torch.testing.assert_close(packed.pixel_values, torch.from_numpy(theirs["pixel_values"]), atol=2e-6, rtol=1e-6)


# ---------------------------------------------------------------- DALI


@needs_dali
def test_dali_cpu_equals_pillow(tmp_path, caplog):
    inputs = _bad_and_odd_inputs(tmp_path)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation "rotate 90": Pillow ignores it, so DALI must too
    rotated = _encode(Image.fromarray(_rand_rgb(40, 70, 8)), "JPEG", tmp_path, "exif", exif=exif)
    gray_jpeg = _encode(Image.fromarray(_rand_rgb(45, 33, 7)).convert("L"), "JPEG", tmp_path, "gj")
    plain = [inputs["jpeg"], inputs["gray_png"], inputs["big"], rotated, gray_jpeg,
             _encode(Image.fromarray(_rand_rgb(57, 61, 9)), "PNG", tmp_path, "p")]
    # Plain decodes only (factor 1, no limits): DALI's decoder against Pillow's, byte for byte.
    kw = dict(patch_size=1, merge_size=1, min_pixels=0, max_pixels=10**9)
    with caplog.at_level(logging.INFO, logger="omni_mega.data.images.dali"):
        dali, _ = decode_images(plain, backend="dali", **kw)
    assert not caplog.records, "the DALI batch fell back to Pillow: nothing compared"
    pil, _ = decode_images(plain, backend="pillow", **kw)
    for i, (a, b) in enumerate(zip(dali, pil)):
        assert torch.equal(a, b), i


@needs_dali
def test_dali_batch_with_bad_samples_matches_pillow(tmp_path):
    samples = list(_bad_and_odd_inputs(tmp_path).values())
    dali, s_dali = decode_images(samples, backend="dali")
    pil, s_pil = decode_images(samples, backend="pillow")
    for a, b in zip(dali, pil):
        assert (a is None and b is None) or torch.equal(a, b)
    assert s_dali == s_pil


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="backend must be"):
        decode_images([b""], backend="opencv")
