"""Encoded image bytes -> uint8 HWC RGB tensors at Qwen2-VL sizes, and on to a packed THD batch.

Path: decode (DALI CPU when installed and backend="auto"/"dali", DALI GPU with "dali-mixed", else Pillow) ->
convert to RGB -> `smart_resize` to multiples of patch_size * merge_size with Pillow's antialiased BICUBIC ->
`omni_mega.ops.pack_images` (`decode_and_pack` does all of it). The CPU paths decode in a thread pool, then resize
every image of the call in one `omni_mega.ops.resize_images` call (C++, threads over rows, Pillow's exact integer
arithmetic: the same pixels as Pillow's resize at ~2x its speed), writing one flat buffer that pack_images reads
without a copy; without the C++ extension each thread resizes with Pillow itself.

Bad input never stops a run and never shifts samples: `decode_images` returns one entry per input, `None` for a
rejected image, and counts every rejection (and every conversion or resize) by reason in a `DecodeStats`, logging
one line per rejection. Pillow releases the GIL while decoding, converting and resizing, so a thread pool scales.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)
# deferred_resize hands numpy's read-only view of Pillow's pixels to torch (writable would cost a copy per image);
# only resize_images reads it.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", module=__name__)

# Qwen2-VL's processor defaults (transformers Qwen2VLImageProcessor: size shortest_edge / longest_edge).
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280
MAX_ASPECT_RATIO = 200
# Refuse to decode images with more pixels than Pillow's decompression-bomb threshold (89.5 M).
MAX_DECODE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

# Rejection reasons (DecodeStats.rejected keys).
EMPTY, CORRUPT, ZERO_SIZE, EXTREME_ASPECT, TOO_LARGE, UNSUPPORTED_MODE = (
    "empty", "corrupt", "zero_size", "extreme_aspect", "too_large", "unsupported_mode")


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Qwen2-VL's target size: both sides multiples of `factor`, area within [min_pixels, max_pixels], aspect kept.

    Each side is rounded to the factor with Python's round() (ties to even); if the area then exceeds max_pixels
    both sides shrink by beta = sqrt(h*w / max_pixels) and floor to the factor (never below one factor); if it is
    under min_pixels both grow by beta = sqrt(min_pixels / (h*w)) and ceil. Same arithmetic as transformers'
    `qwen2_vl.image_processing_qwen2_vl.smart_resize`. Raises ValueError for an aspect ratio above 200, a side
    <= 0, or (only possible with min_pixels == 0) a side that rounds to 0.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"smart_resize: height and width must be positive, got ({height}, {width})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"smart_resize: absolute aspect ratio must be at most {MAX_ASPECT_RATIO}, got "
                         f"{max(height, width) / min(height, width)} for ({height}, {width})")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if h_bar == 0 or w_bar == 0:
        raise ValueError(f"smart_resize: ({height}, {width}) rounds to ({h_bar}, {w_bar}) with factor {factor} and "
                         f"min_pixels {min_pixels}; a side of 0 cannot be patchified")
    return h_bar, w_bar


class ImageRejected(Exception):
    """An image that cannot be used; `reason` is one of the rejection constants above."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class DecodeStats:
    """What happened to the images of a run: kept, rejected by reason, converted by source mode, resized."""

    seen: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    converted: Counter = field(default_factory=Counter)  # source mode ("L", "RGBA", "CMYK", "I;16", ...) -> count
    downscaled: int = 0  # larger than max_pixels (or than the rounding allowed): resized down
    upscaled: int = 0  # smaller than min_pixels: resized up

    def reject(self, index: int, err: ImageRejected) -> None:
        self.rejected[err.reason] += 1
        log.warning("image %d rejected (%s): %s", index, err.reason, err.detail)

    def merge(self, other: "DecodeStats") -> None:
        self.seen += other.seen
        self.kept += other.kept
        self.rejected.update(other.rejected)
        self.converted.update(other.converted)
        self.downscaled += other.downscaled
        self.upscaled += other.upscaled

    def summary(self) -> str:
        return (f"images: {self.kept}/{self.seen} kept; rejected {dict(self.rejected)}; converted to RGB "
                f"{dict(self.converted)}; downscaled {self.downscaled}, upscaled {self.upscaled}")


@dataclass
class _Decoded:
    image: torch.Tensor | None  # uint8 [H, W, 3]
    error: ImageRejected | None = None
    converted_from: str | None = None
    scale: int = 0  # -1 down, +1 up, 0 same pixel count or only rounded
    target: tuple[int, int] | None = None  # (h, w) the image still has to be resized to; None: already there


def open_image(data: bytes, max_decode_pixels: int = MAX_DECODE_PIXELS) -> Image.Image:
    """Reads the header only (Pillow is lazy) and refuses what cannot or should not be decoded."""
    if len(data) == 0:
        raise ImageRejected(EMPTY, "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below decides
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageRejected(TOO_LARGE, str(e)) from None
    except Exception as e:  # UnidentifiedImageError, struct errors from broken headers, ...
        if _png_header_has_zero_side(data):  # Pillow refuses these outright: give them their own reason
            raise ImageRejected(ZERO_SIZE, "PNG header declares a 0 width or height") from None
        raise ImageRejected(CORRUPT, f"{type(e).__name__}: {e}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageRejected(ZERO_SIZE, f"{w}x{h}")
    if w * h > max_decode_pixels:
        raise ImageRejected(TOO_LARGE, f"{w}x{h} = {w * h} pixels > max_decode_pixels={max_decode_pixels}")
    return img


def _png_header_has_zero_side(data: bytes) -> bool:
    # PNG: 8-byte signature, then the IHDR chunk (4-byte length, b"IHDR", big-endian width, height).
    return data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and (
        int.from_bytes(data[16:20], "big") == 0 or int.from_bytes(data[20:24], "big") == 0)


def _is_16bit(img: Image.Image) -> bool:
    """True for 16-bit-per-channel data, read from the (not yet loaded) image's tile raw mode, e.g. 'RGB;16B'."""
    for tile in img.tile or []:
        args = tile.args if isinstance(tile.args, tuple) else (tile.args,)
        if any(isinstance(a, str) and ";16" in a for a in args):
            return True
    return img.mode.startswith("I;16")


def to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    """Any Pillow mode -> 8-bit RGB; returns the source mode when it converted. Transparency is composited onto
    white (as transformers' convert_rgb does); 16-bit gray is scaled by 255/65535, not clipped."""
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit PNGs open as I;16 (or I): Pillow's convert("RGB") would clip at 255, so scale to 8 bits.
        a = np.asarray(img, dtype=np.int64)
        if a.min() < 0 or a.max() > 65535:
            raise ImageRejected(UNSUPPORTED_MODE, f"mode {mode} values outside [0, 65535]")
        gray = ((a * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB"), mode
    if mode == "F":
        raise ImageRejected(UNSUPPORTED_MODE, "floating-point image (mode F) has no defined 8-bit range")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), mode
    return img.convert("RGB"), mode


def target_size(h: int, w: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int, int]:
    """smart_resize with rejections as ImageRejected; also returns -1 / +1 when the max_pixels / min_pixels rule
    applied (the image was scaled down / up beyond rounding), else 0."""
    try:
        new_h, new_w = smart_resize(h, w, factor, min_pixels, max_pixels)
    except ValueError as e:
        raise ImageRejected(EXTREME_ASPECT if "aspect" in str(e) else ZERO_SIZE, str(e)) from None
    rounded = round(h / factor) * round(w / factor) * factor * factor
    return new_h, new_w, (rounded < min_pixels) - (rounded > max_pixels)


def resize_to_factor(img: Image.Image, factor: int, min_pixels: int, max_pixels: int) -> tuple[Image.Image, int]:
    """RGB image -> smart_resize'd RGB image (Pillow BICUBIC, which antialiases when shrinking) and the
    -1/0/+1 of `target_size`."""
    w, h = img.size
    new_h, new_w, scale = target_size(h, w, factor, min_pixels, max_pixels)
    if (new_h, new_w) == (h, w):
        return img, scale
    return img.resize((new_w, new_h), Image.Resampling.BICUBIC), scale


def decode_one(data: bytes, *, factor: int = 28, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
               max_decode_pixels: int = MAX_DECODE_PIXELS, resize: bool = True) -> _Decoded:
    """Pillow path for one image; never raises for bad input (the error is returned). With resize=False the image
    keeps its decoded size and `target` says what to resize it to (`resize_decoded` does it for a batch)."""
    try:
        img = open_image(data, max_decode_pixels)
        # 48/64-bit PNGs open as RGB/RGBA (Pillow keeps the high byte): still count them as converted.
        deep = f"{img.mode};16" if _is_16bit(img) and img.mode in ("RGB", "RGBA") else None
        try:
            img.load()
        except Exception as e:  # truncated or corrupt pixel data
            raise ImageRejected(CORRUPT, f"{type(e).__name__}: {e}") from None
        rgb, converted_from = to_rgb(img)
        converted_from = deep or converted_from
        if not resize:
            return deferred_resize(np.asarray(rgb), converted_from, factor, min_pixels, max_pixels)
        rgb, scale = resize_to_factor(rgb, factor, min_pixels, max_pixels)
        return _Decoded(torch.from_numpy(np.array(rgb)), None, converted_from, scale)
    except ImageRejected as e:
        return _Decoded(None, e)


def deferred_resize(rgb: np.ndarray, converted_from: str | None, factor: int, min_pixels: int,
                    max_pixels: int) -> _Decoded:
    """A decoded uint8 [H, W, 3] image with the smart_resize target it still needs (raises ImageRejected)."""
    h, w = rgb.shape[:2]
    new_h, new_w, scale = target_size(h, w, factor, min_pixels, max_pixels)
    return _Decoded(torch.from_numpy(rgb), None, converted_from, scale, target=(new_h, new_w))


def resize_decoded(results: list[_Decoded]):
    """Resizes every kept image of `results` to its target in one `omni_mega.ops.resize_images` call; returns the
    ResizedImages (one flat buffer, kept images in order) and points each result's `image` at its view in it."""
    from omni_mega.ops import resize_images

    kept = [r for r in results if r.image is not None]
    out = resize_images([r.image for r in kept], [r.target or tuple(r.image.shape[:2]) for r in kept])
    for r, view in zip(kept, out.images()):
        r.image, r.target = view, None
    return out


def _cpp_resize() -> bool:
    from omni_mega.ops import has_cpu_extension

    return has_cpu_extension()


def decode_images(samples: Sequence[bytes], *, patch_size: int = 14, merge_size: int = 2,
                  min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS, num_threads: int = 2,
                  backend: str = "auto", stats: DecodeStats | None = None,
                  max_decode_pixels: int = MAX_DECODE_PIXELS) -> tuple[list[torch.Tensor | None], DecodeStats]:
    """Decodes, converts to RGB and smart-resizes every sample.

    Args:
        samples: encoded images (JPEG, PNG, anything Pillow reads), N of them.
        backend: "pillow" | "dali" (DALI CPU decode, `omni_mega.data.image_dali`) | "dali-mixed" (GPU decode; the
            results are then CUDA tensors) | "auto" (DALI CPU when installed, else Pillow).
        stats: accumulate into this DecodeStats (a new one when None).
    Returns:
        (images, stats): images[i] is uint8 [H_i, W_i, 3] RGB with H_i, W_i multiples of patch_size * merge_size,
        or None when sample i was rejected (stats says why; a warning was logged).
    """
    images, stats, _ = _decode_flat(samples, patch_size=patch_size, merge_size=merge_size, min_pixels=min_pixels,
                                    max_pixels=max_pixels, num_threads=num_threads, backend=backend, stats=stats,
                                    max_decode_pixels=max_decode_pixels)
    return images, stats


def _decode_all(samples: Sequence[bytes], backend: str, num_threads: int, kw: dict):
    """One _Decoded per sample at its final size, and the flat ResizedImages holding the kept CPU images when the
    batched C++ resize ran (None otherwise)."""
    batched = backend != "dali-mixed" and _cpp_resize()  # mixed decodes and resizes on the GPU
    if backend in ("dali", "dali-mixed"):
        from omni_mega.data import image_dali

        results = image_dali.decode_with_dali(samples, device="mixed" if backend == "dali-mixed" else "cpu",
                                              num_threads=num_threads, resize=not batched, **kw)
    elif backend == "pillow":
        def one(s: bytes) -> _Decoded:
            return decode_one(s, resize=not batched, **kw)

        if num_threads > 1 and len(samples) > 1:
            with ThreadPoolExecutor(num_threads) as pool:
                results = list(pool.map(one, samples))
        else:
            results = [one(s) for s in samples]
    else:
        raise ValueError(f"decode_images: backend must be 'auto', 'pillow', 'dali' or 'dali-mixed', got {backend!r}")
    return results, (resize_decoded(results) if batched else None)


def _account(results: list[_Decoded], stats: DecodeStats) -> list[torch.Tensor | None]:
    out = []
    for i, r in enumerate(results):
        stats.seen += 1
        if r.error is not None:
            stats.reject(i, r.error)
        else:
            stats.kept += 1
            if r.converted_from:
                stats.converted[r.converted_from] += 1
            stats.downscaled += r.scale < 0
            stats.upscaled += r.scale > 0
        out.append(r.image)
    return out


def decode_and_pack(samples: Sequence[bytes], *, patch_size: int = 14, merge_size: int = 2,
                    temporal_patch_size: int = 2, out_dtype: torch.dtype = torch.float32, **decode_kwargs):
    """decode_images + pack_images on the kept images.

    Returns:
        (packed, kept, stats): packed is `omni_mega.ops.PackedImages` over the kept images in input order;
        kept int64 [K] indices of the samples it holds (rejected samples are absent, never shifted onto others).
    """
    from omni_mega.ops import pack_images

    kw = dict(patch_size=patch_size, merge_size=merge_size, temporal_patch_size=temporal_patch_size,
              out_dtype=out_dtype)
    images, stats, flat = _decode_flat(samples, patch_size=patch_size, merge_size=merge_size, **decode_kwargs)
    kept = [i for i, img in enumerate(images) if img is not None]
    if flat is not None and kept:  # the resized images sit back to back already: pack reads them without a copy
        packed = pack_images(flat.data, flat.sizes, offsets=flat.offsets, **kw)
    else:
        packed = pack_images([images[i] for i in kept], **kw)
    return packed, torch.tensor(kept, dtype=torch.int64), stats


def _decode_flat(samples: Sequence[bytes], *, patch_size: int = 14, merge_size: int = 2,
                 min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS, num_threads: int = 2,
                 backend: str = "auto", stats: DecodeStats | None = None, max_decode_pixels: int = MAX_DECODE_PIXELS):
    """decode_images, also returning the flat ResizedImages behind the kept images (None when the batched C++
    resize did not run)."""
    stats = stats if stats is not None else DecodeStats()
    kw = dict(factor=patch_size * merge_size, min_pixels=min_pixels, max_pixels=max_pixels,
              max_decode_pixels=max_decode_pixels)
    if backend == "auto":
        from omni_mega.data import image_dali

        backend = "dali" if image_dali.dali_available() else "pillow"
    results, flat = _decode_all(samples, backend, num_threads, kw)
    return _account(results, stats), stats, flat
