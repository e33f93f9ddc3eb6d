"""The Pillow backend of `omni_mega.data.images`: open (header checks), decode, convert to 8-bit RGB and
smart-resize one image, and the `Decoded` result every backend returns per sample. Never raises for bad input: the
rejection travels in `Decoded.error`."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from omni_mega.data.images.sizes import (CORRUPT, EMPTY, MAX_PIXELS, MIN_PIXELS, TOO_LARGE, UNSUPPORTED_MODE,
                                          ZERO_SIZE, ImageRejected, target_size)

# deferred_resize hands numpy's read-only view of Pillow's pixels to torch (writable would cost a copy per image);
# only resize_images reads it.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", module=__name__)
# Refuse to decode images with more pixels than Pillow's decompression-bomb threshold (89.5 M).
MAX_DECODE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

@dataclass
class Decoded:
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


def is_16bit(img: Image.Image) -> bool:
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


def resize_to_factor(img: Image.Image, factor: int, min_pixels: int, max_pixels: int) -> tuple[Image.Image, int]:
    """RGB image -> smart_resize'd RGB image (Pillow BICUBIC, which antialiases when shrinking) and the
    -1/0/+1 of `target_size`."""
    w, h = img.size
    new_h, new_w, scale = target_size(h, w, factor, min_pixels, max_pixels)
    if (new_h, new_w) == (h, w):
        return img, scale
    return img.resize((new_w, new_h), Image.Resampling.BICUBIC), scale


def decode_one(data: bytes, *, factor: int = 28, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
               max_decode_pixels: int = MAX_DECODE_PIXELS, resize: bool = True) -> Decoded:
    """Pillow path for one image; never raises for bad input (the error is returned). With resize=False the image
    keeps its decoded size and `target` says what to resize it to (`resize_decoded` does it for a batch)."""
    try:
        img = open_image(data, max_decode_pixels)
        # 48/64-bit PNGs open as RGB/RGBA (Pillow keeps the high byte): still count them as converted.
        deep = f"{img.mode};16" if is_16bit(img) and img.mode in ("RGB", "RGBA") else None
        try:
            img.load()
        except Exception as e:  # truncated or corrupt pixel data
            raise ImageRejected(CORRUPT, f"{type(e).__name__}: {e}") from None
        rgb, converted_from = to_rgb(img)
        converted_from = deep or converted_from
        if not resize:
            return deferred_resize(np.asarray(rgb), converted_from, factor, min_pixels, max_pixels)
        rgb, scale = resize_to_factor(rgb, factor, min_pixels, max_pixels)
        return Decoded(torch.from_numpy(np.array(rgb)), None, converted_from, scale)
    except ImageRejected as e:
        return Decoded(None, e)


def deferred_resize(rgb: np.ndarray, converted_from: str | None, factor: int, min_pixels: int,
                    max_pixels: int) -> Decoded:
    """A decoded uint8 [H, W, 3] image with the smart_resize target it still needs (raises ImageRejected)."""
    h, w = rgb.shape[:2]
    new_h, new_w, scale = target_size(h, w, factor, min_pixels, max_pixels)
    return Decoded(torch.from_numpy(rgb), None, converted_from, scale, target=(new_h, new_w))
