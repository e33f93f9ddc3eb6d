"""Qwen2-VL image sizes: `smart_resize` (both sides multiples of patch_size * merge_size, area within bounds) and the
rejection reasons every decode backend uses. Pure Python: the packer sizes images from the index with it before any
image is decoded."""

from __future__ import annotations

import math

# Qwen2-VL's processor defaults (transformers Qwen2VLImageProcessor: size shortest_edge / longest_edge).
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280
MAX_ASPECT_RATIO = 200
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


def target_size(h: int, w: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int, int]:
    """smart_resize with rejections as ImageRejected; also returns -1 / +1 when the max_pixels / min_pixels rule
    applied (the image was scaled down / up beyond rounding), else 0."""
    try:
        new_h, new_w = smart_resize(h, w, factor, min_pixels, max_pixels)
    except ValueError as e:
        raise ImageRejected(EXTREME_ASPECT if "aspect" in str(e) else ZERO_SIZE, str(e)) from None
    rounded = round(h / factor) * round(w / factor) * factor * factor
    return new_h, new_w, (rounded < min_pixels) - (rounded > max_pixels)
