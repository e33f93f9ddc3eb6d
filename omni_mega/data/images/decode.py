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

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import torch

from omni_mega.data.images.pillow import MAX_DECODE_PIXELS, Decoded, decode_one
from omni_mega.data.images.sizes import MAX_PIXELS, MIN_PIXELS, ImageRejected

INDEX_SIZE_MISMATCH = "index_size_mismatch"  # rejection reason: the decoded size disagrees with the index

log = logging.getLogger(__name__)


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


def resize_decoded(results: list[Decoded]):
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
        backend: "pillow" | "dali" (DALI CPU decode, `omni_mega.data.images.dali`) | "dali-mixed" (GPU decode; the
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


def _decode_all(samples: Sequence[bytes], backend: str, num_threads: int, kw: dict,
                expect_tokens: Sequence[int] | None = None):
    """One Decoded per sample at its final size, and the flat ResizedImages holding the kept CPU images when the
    batched C++ resize ran (None otherwise)."""
    batched = backend != "dali-mixed" and _cpp_resize()  # mixed decodes and resizes on the GPU
    if backend in ("dali", "dali-mixed"):
        from omni_mega.data.images import dali as image_dali

        results = image_dali.decode_with_dali(samples, device="mixed" if backend == "dali-mixed" else "cpu",
                                              num_threads=num_threads, resize=not batched, **kw)
    elif backend == "pillow":
        def one(s: bytes) -> Decoded:
            return decode_one(s, resize=not batched, **kw)

        if num_threads > 1 and len(samples) > 1:
            with ThreadPoolExecutor(num_threads) as pool:
                results = list(pool.map(one, samples))
        else:
            results = [one(s) for s in samples]
    else:
        raise ValueError(f"decode_images: backend must be 'auto', 'pillow', 'dali' or 'dali-mixed', got {backend!r}")
    if expect_tokens is not None:
        _reject_mismatches(results, expect_tokens, kw["factor"])
    return results, (resize_decoded(results) if batched else None)


def _account(results: list[Decoded], stats: DecodeStats) -> list[torch.Tensor | None]:
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
                 backend: str = "auto", stats: DecodeStats | None = None, max_decode_pixels: int = MAX_DECODE_PIXELS,
                 expect_tokens: Sequence[int] | None = None):
    """decode_images, also returning the flat ResizedImages behind the kept images (None when the batched C++
    resize did not run). expect_tokens: merged visual tokens each sample must give (what an index planned); an
    image that decodes to another count is rejected as INDEX_SIZE_MISMATCH before it is resized or packed."""
    stats = stats if stats is not None else DecodeStats()
    kw = dict(factor=patch_size * merge_size, min_pixels=min_pixels, max_pixels=max_pixels,
              max_decode_pixels=max_decode_pixels)
    if backend == "auto":
        from omni_mega.data.images import dali as image_dali

        backend = "dali" if image_dali.dali_available() else "pillow"
    results, flat = _decode_all(samples, backend, num_threads, kw, expect_tokens)
    return _account(results, stats), stats, flat


def _reject_mismatches(results: list[Decoded], expect: Sequence[int], factor: int) -> None:
    if len(expect) != len(results):
        raise ValueError(f"decode_images: expect_tokens has {len(expect)} entries for {len(results)} samples")
    for r, want in zip(results, expect):
        if r.image is None:
            continue
        h, w = r.target or tuple(r.image.shape[:2])
        got = (h // factor) * (w // factor)
        if got != want:
            r.image, r.target = None, None
            r.error = ImageRejected(INDEX_SIZE_MISMATCH, f"decodes to {got} visual tokens ({h}x{w} after resize) "
                                                         f"but its index size gave {want}")
