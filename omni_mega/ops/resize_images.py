"""`resize_images`: uint8 HWC images -> the same images resized with Pillow's BICUBIC filter, bit for bit.

Qwen2-VL's processor (and every Ovis/LLaVA pipeline built on transformers) resizes with Pillow, so a training
stack that wants the same pixels must reproduce Pillow's resample exactly, not approximately. The algorithm, as
Pillow 13 computes it (checked against Pillow on thousands of random shapes in tests/ops/test_resize_images.py):

- Two separable 1-D passes, with a uint8 image (rounded and clipped) between them.
- Per axis, per output index o: center = (o + 0.5) * in / out; the filter is Keys' cubic with a = -0.5, stretched
  by max(in / out, 1) when shrinking (that is the antialiasing); the taps are the input indices whose centers lie
  within its support. Weights are normalized to sum 1 in float64, then rounded to 22-bit fixed point.
- Each output value is (2^21 + sum of pixel * weight) >> 22 in int32, clipped to [0, 255].
- The horizontal pass runs first, except when the image shrinks vertically and 2 * out_w - out_h > 2 * in_w - in_h
  (measured against Pillow 13: its rule for the cheaper order); the order changes the result by up to a few levels.

Backends: "ref" (plain PyTorch, int64, exact by construction) and "cpp" (threads over images and rows; both passes
are vectorized weighted sums of whole rows, the horizontal one on a transposed block). There is no CUDA kernel: the
GPU decode path (`omni_mega.data.images.dali`) resizes with torch's antialiased bicubic, close to Pillow, not exact.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

from omni_mega.ops import _backend, _checks, _ext

PRECISION_BITS = 22  # fixed-point weight bits: 255 * sum|w| * 2^22 stays inside int32
MAX_CHANNELS = 16  # kResizeMaxChannels in csrc/resize_images/resize_images.h


class ResizedImages(NamedTuple):
    data: torch.Tensor  # uint8 [sum_i h_i * w_i * C]: the resized HWC images back to back
    sizes: torch.Tensor  # int64 [N, 2]: (h, w) of each resized image
    offsets: torch.Tensor  # int64 [N]: first byte of each image in `data`

    def images(self) -> list[torch.Tensor]:
        """Views uint8 [h_i, w_i, C] into `data`, one per image."""
        n = len(self.sizes)
        if n == 0:
            return []
        c = self.data.numel() // max(1, int(self.sizes.prod(dim=1).sum()))
        return [self.data[o : o + h * w * c].view(h, w, c) for (h, w), o in zip(self.sizes.tolist(),
                                                                                  self.offsets.tolist())]


def resize_images(
    images: Sequence[torch.Tensor] | torch.Tensor,
    out_sizes: torch.Tensor | Sequence[Sequence[int]],
    *,
    sizes: torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
    channels: int = 3,
    backend: str = "auto",
) -> ResizedImages:
    """Resizes every image to out_sizes[i] = (h, w) with Pillow's BICUBIC filter (antialiased when shrinking).

    Args:
        images: a list of uint8 [H_i, W_i, C] CPU tensors (any strides), or one flat uint8 buffer holding the HWC
            images back to back (then `sizes`, and `offsets` unless back to back, are required).
        out_sizes: int [N, 2] target (h, w) per image, each >= 1.
        sizes, offsets: for the flat form only, as in `omni_mega.ops.pack_images`.
        channels: C for the flat form (a list carries it).
        backend: "auto" | "ref" | "cpp".
    Returns:
        ResizedImages(data, sizes, offsets): one flat buffer that `pack_images(data, sizes, offsets=offsets)` reads
        directly; an image already at its target size is copied unchanged.
    """
    from omni_mega.ops.pack_images import _flatten

    if not (isinstance(images, torch.Tensor) and images.dim() == 1) and len(images):
        channels = int(images[0].shape[-1]) if isinstance(images[0], torch.Tensor) and images[0].dim() == 3 else 3
    data, sizes, offsets = _flatten(images, sizes, offsets, channels=channels, op="resize_images")
    out_sizes = _integer_sizes(out_sizes)
    which = _backend.resolve(backend, data.device, op="resize_images")
    if which == "cuda":
        raise ValueError("resize_images: runs on CPU tensors (the GPU decode path resizes with "
                         "torch.nn.functional.interpolate)")
    if which == "ref":
        out = _resize_flat_ref(data, sizes, offsets, out_sizes, channels)
    else:
        out = torch.ops.omni_mega.resize_images(data, sizes, offsets, out_sizes, channels)
    nbytes = out_sizes.prod(dim=1) * channels
    return ResizedImages(out, out_sizes, nbytes.cumsum(0) - nbytes)


def _integer_sizes(out_sizes) -> torch.Tensor:
    """out_sizes as int64 [N, 2]; fractional sizes are refused, never rounded (every backend sees the same ints)."""
    try:
        t = torch.as_tensor(out_sizes)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise ValueError(f"resize_images: out_sizes must be int64 integers [N, 2] (h, w), got {out_sizes!r} ({e})")
    if t.numel() == 0:  # [] has no dtype to speak of
        return torch.empty(0, 2, dtype=torch.int64)
    if t.dtype not in (torch.int32, torch.int64):
        shown = out_sizes if not isinstance(out_sizes, torch.Tensor) else t.tolist() if t.numel() <= 8 else t.shape
        raise ValueError(f"resize_images: out_sizes must have dtype Int/Long (whole pixels), got {t.dtype}: {shown}")
    if t.dim() == 1 and t.numel() % 2 == 0:  # [h0, w0, h1, w1, ...]
        t = t.reshape(-1, 2)
    return t.to(torch.int64)  # any other shape is reported by the op's checks


def resize_images_ref(image: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Plain-PyTorch oracle, written for clarity: uint8 [H, W, C] -> uint8 [out_h, out_w, C], Pillow's BICUBIC
    resample restated with int64 tensors (every step is exact integer arithmetic after the float64 weights)."""
    h, w, _ = image.shape
    x = image.to(torch.int64)
    if (out_h, out_w) == (h, w):
        return image.clone()
    if vertical_first(h, w, out_h, out_w):
        return _pass(_pass(x, out_h, dim=0), out_w, dim=1).to(torch.uint8)
    return _pass(_pass(x, out_w, dim=1), out_h, dim=0).to(torch.uint8)


def vertical_first(h: int, w: int, out_h: int, out_w: int) -> bool:
    """Pillow 13's pass order: vertical first when shrinking vertically and 2 * out_w - out_h > 2 * w - h."""
    return out_h < h and 2 * out_w - out_h > 2 * w - h


def bicubic_weights(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output index: its first input index int64 [n_out] and its fixed-point weights int64 [n_out, taps]
    (zero beyond each index's own taps). Python floats are IEEE doubles, as in Pillow's C."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)  # antialiasing: widen the filter by the shrink factor
    support = 2.0 * stretch  # Keys' cubic has support 2
    inv = 1.0 / stretch
    taps = math.ceil(support) * 2 + 1
    first = torch.zeros(n_out, dtype=torch.int64)
    weights = torch.zeros(n_out, taps, dtype=torch.int64)
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        ws = [_keys_cubic((i + lo - center + 0.5) * inv) for i in range(hi - lo)]
        total = sum(ws)  # left to right, as the C loop adds
        for i, wt in enumerate(ws):
            wt = wt / total if total != 0.0 else wt
            fixed = wt * (1 << PRECISION_BITS)
            weights[o, i] = math.trunc(fixed - 0.5) if wt < 0 else math.trunc(fixed + 0.5)
        first[o] = lo
    return first, weights


def _keys_cubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _pass(x: torch.Tensor, n_out: int, dim: int) -> torch.Tensor:
    """One 1-D pass along `dim` of int64 [H, W, C] values in 0..255; returns int64 values in 0..255."""
    n_in = x.shape[dim]
    if n_in == n_out:
        return x
    first, weights = bicubic_weights(n_in, n_out)
    idx = (first[:, None] + torch.arange(weights.shape[1])).clamp(max=n_in - 1)  # zero weights past the end
    gathered = x.index_select(dim, idx.reshape(-1))
    if dim == 0:  # [n_out * taps, W, C]
        acc = (gathered.view(n_out, -1, *x.shape[1:]) * weights[:, :, None, None]).sum(1)
    else:  # [H, n_out * taps, C]
        acc = (gathered.view(x.shape[0], n_out, -1, x.shape[2]) * weights[None, :, :, None]).sum(2)
    return ((acc + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS).clamp(0, 255)


def _resize_flat_ref(data, sizes, offsets, out_sizes, channels):
    _check_args(data, sizes, offsets, out_sizes, channels)
    chunks = [
        resize_images_ref(data[o : o + h * w * channels].view(h, w, channels), oh, ow).reshape(-1)
        for (h, w), o, (oh, ow) in zip(sizes.tolist(), offsets.tolist(), out_sizes.tolist())
    ]
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8)


def _check_args(data, sizes, offsets, out_sizes, channels) -> None:
    # Same rules and wording as csrc/resize_images/resize_images.h, so every backend fails the same way.
    _checks.check_flat_images("resize_images", data, sizes, offsets)
    if not 1 <= channels <= MAX_CHANNELS:
        raise ValueError(f"resize_images: channels must be in 1..{MAX_CHANNELS}, got {channels}")
    n = sizes.size(0)
    if out_sizes.dim() != 2 or out_sizes.size(1) != 2 or out_sizes.size(0) != n:
        raise ValueError(f"resize_images: out_sizes must have shape [N, 2] = [{n}, 2] (one (h, w) per image), got "
                         f"{tuple(out_sizes.shape)}")
    if out_sizes.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"resize_images: out_sizes must have dtype Int/Long, got {out_sizes.dtype}")
    total = 0
    for i, ((h, w), o, (oh, ow)) in enumerate(zip(sizes.tolist(), offsets.tolist(), out_sizes.tolist())):
        _check_side("sizes", i, h, w)
        _check_side("out_sizes", i, oh, ow)
        _checks.check_image_extent("resize_images", i, h, w, channels, o, data.numel())
        if oh * ow * channels > _checks.INT64_MAX:
            raise ValueError(f"resize_images: out_sizes[{i}] = ({oh}, {ow}): an image of {oh} x {ow} x {channels} "
                             "bytes overflows int64")
        total += oh * ow * channels
        if total > _checks.INT64_MAX:
            raise ValueError(f"resize_images: out_sizes[{i}] brings the output past int64 bytes")


def _check_side(name: str, i: int, h: int, w: int) -> None:
    """Each side in 1..INT32_MAX: the C++ taps hold input indices as int32."""
    if h <= 0 or w <= 0:
        raise ValueError(f"resize_images: {name}[{i}] = ({h}, {w}): height and width must be >= 1")
    if h > _checks.INT32_MAX or w > _checks.INT32_MAX:
        raise ValueError(f"resize_images: {name}[{i}] = ({h}, {w}): height and width must be <= {_checks.INT32_MAX}")

if _ext.has_cpu_extension():

    @torch.library.register_fake("omni_mega::resize_images")
    def _resize_images_fake(data, sizes, offsets, out_sizes, channels):
        return data.new_empty((torch.library.get_ctx().new_dynamic_size(),))


__all__ = ["ResizedImages", "resize_images", "resize_images_ref", "bicubic_weights", "vertical_first"]
