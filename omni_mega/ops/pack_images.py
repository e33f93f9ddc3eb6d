"""`pack_images`: uint8 HWC images -> one packed THD batch of normalized ViT patches in Qwen2-VL's exact order.

Tokens run by (image, merge-block row, merge-block col, in-block row, in-block col); the features of a token by
(channel, temporal, pixel row, pixel col), a still image repeated `temporal_patch_size` times, so a token has
C * tps * p * p features (3 * 2 * 14 * 14 = 1176). Normalization is (x / 255 - mean) / std, evaluated in float64
and rounded once to `out_dtype` by every backend, so all backends agree bit for bit.

Image sizes must already be multiples of patch_size * merge_size (`omni_mega.data.images.smart_resize`).
The op has no gradient: its input is uint8 pixels.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch

from omni_mega.ops import _backend, _checks, _ext
from omni_mega.ops.vision_positions import vision_positions

# Qwen2-VL's normalization constants (CLIP's).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OUT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
MAX_CHANNELS = 16  # kPackImagesMaxChannels in csrc/pack_images/pack_images.h


class PackedImages(NamedTuple):
    pixel_values: torch.Tensor  # out_dtype [T, C * tps * p * p]
    grid_thw: torch.Tensor  # int64 [N, 3]: (1, h / p, w / p) per image
    cu_seqlens: torch.Tensor  # int32 [N + 1]: token boundaries, one segment per image
    pos: torch.Tensor  # int32 [T, 2]: (row, col) in patches of every token (vision_positions)


def pack_images(
    images: Sequence[torch.Tensor] | torch.Tensor,
    sizes: torch.Tensor | None = None,
    *,
    offsets: torch.Tensor | None = None,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> PackedImages:
    """Normalizes and patchifies images into one packed sequence.

    Args:
        images: a list of uint8 [H_i, W_i, C] tensors (any strides, one device), or one flat uint8 [bytes] buffer
            holding the HWC images back to back (then `sizes` is required).
        sizes: int32/int64 [N, 2] (h, w) of each image in the flat buffer; None for a list.
        offsets: int32/int64 [N] byte offset of each image in the flat buffer; None = packed back to back.
        patch_size, merge_size, temporal_patch_size: the ViT's patch side, spatial merge side and temporal patch.
        mean, std: one float per channel (C = len(mean)); defaults are Qwen2-VL's CLIP constants.
        out_dtype: float32 | float64 | bfloat16 | float16.
        backend: "auto" | "ref" | "cpp" | "cuda".
    Returns:
        PackedImages(pixel_values out_dtype [T, C*tps*p*p], grid_thw int64 [N, 3], cu_seqlens int32 [N + 1],
        pos int32 [T, 2]), all on the images' device; T = sum_i (h_i / p) * (w_i / p).
    """
    data, sizes, offsets = _flatten(images, sizes, offsets, channels=len(mean), op="pack_images")
    args = (data, sizes, offsets, patch_size, merge_size, temporal_patch_size, [float(v) for v in mean],
            [float(v) for v in std], out_dtype)
    which = _backend.resolve(backend, data.device, op="pack_images")
    if which == "ref":
        pixel_values = _pack_flat_ref(*args)
    else:
        pixel_values = torch.ops.omni_mega.pack_images(*args)
    hw = sizes.to(device="cpu", dtype=torch.int64)
    grid_thw = torch.cat([torch.ones(len(hw), 1, dtype=torch.int64), hw // patch_size], dim=1).to(data.device)
    # Images are single frames, so vision_positions' per-frame cu_seqlens is per image.
    pos, cu_seqlens = vision_positions(grid_thw, merge_size, backend="ref" if which == "ref" else "auto")
    return PackedImages(pixel_values, grid_thw, cu_seqlens, pos)


def pack_images_ref(
    images: Sequence[torch.Tensor],
    *,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Plain-PyTorch oracle for `pixel_values`, written for clarity: images list of uint8 [H, W, C] ->
    out_dtype [T, C*tps*p*p]. Arithmetic in float64, one rounding to out_dtype at the end."""
    p, m, tps = patch_size, merge_size, temporal_patch_size
    mean64 = torch.tensor(mean, dtype=torch.float64)
    std64 = torch.tensor(std, dtype=torch.float64)
    chunks = []
    for img in images:
        h, w, c = img.shape
        x = (img.to(torch.float64).cpu() / 255.0 - mean64) / std64  # [H, W, C]
        # [H, W, C] -> (block row, in-block row, pixel row, block col, in-block col, pixel col, C)
        x = x.reshape(h // (p * m), m, p, w // (p * m), m, p, c)
        # -> (block row, block col, in-block row, in-block col | C, pixel row, pixel col)
        x = x.permute(0, 3, 1, 4, 6, 2, 5)
        # Repeat the still frame along a temporal axis placed after the channel.
        x = x.unsqueeze(5).expand(*x.shape[:5], tps, p, p)
        chunks.append(x.reshape(-1, c * tps * p * p))
    features = len(mean) * tps * p * p
    out = torch.cat(chunks) if chunks else torch.empty(0, features, dtype=torch.float64)
    device = images[0].device if len(images) else torch.device("cpu")
    return out.to(out_dtype).to(device)


def _pack_flat_ref(data, sizes, offsets, patch_size, merge_size, temporal_patch_size, mean, std, out_dtype):
    """The reference on the flat form: validates exactly like the C++ planner, then slices the images out."""
    _check_args(data, sizes, offsets, patch_size, merge_size, temporal_patch_size, mean, std, out_dtype)
    c = len(mean)
    images = [
        data[o : o + h * w * c].view(h, w, c) for (h, w), o in zip(sizes.tolist(), offsets.tolist())
    ]
    out = pack_images_ref(images, patch_size=patch_size, merge_size=merge_size,
                          temporal_patch_size=temporal_patch_size, mean=mean, std=std, out_dtype=out_dtype)
    return out.to(data.device)


def _flatten(images, sizes, offsets, *, channels: int, op: str):
    """A list of HWC images -> (flat uint8 buffer, int64 sizes [N, 2], int64 offsets [N]); a flat buffer passes.
    `op` names the public op in every message (pack_images or resize_images)."""
    if isinstance(images, torch.Tensor) and images.dim() == 1:
        if sizes is None:
            raise ValueError(f"{op}: a flat uint8 buffer needs sizes int [N, 2] (h, w)")
        if not isinstance(sizes, torch.Tensor):
            raise ValueError(f"{op}: sizes must be a tensor int [N, 2] (h, w), got {type(sizes).__name__}")
        if offsets is None and sizes.dim() != 2:
            offsets = torch.zeros(0, dtype=torch.int64)  # the op's checks report the malformed `sizes`
        elif offsets is None:
            # Back to back: exclusive prefix sum of h * w * C. Products past int64 wrap here, but each image's own
            # size is checked (overflow first) before its offset is used, and earlier images fit.
            nbytes = sizes.to("cpu", torch.int64).prod(dim=1) * channels
            offsets = (nbytes.cumsum(0) - nbytes).to(sizes.device)
        elif not isinstance(offsets, torch.Tensor):
            raise ValueError(f"{op}: offsets must be a tensor int [N], got {type(offsets).__name__}")
        return images, sizes, offsets
    if isinstance(images, torch.Tensor):
        raise ValueError(f"{op}: images must be a list of uint8 [H, W, C] tensors or a flat 1-D uint8 buffer, "
                         f"got one tensor of shape {tuple(images.shape)}")
    if sizes is not None or offsets is not None:
        raise ValueError(f"{op}: sizes/offsets are only for the flat-buffer form; a list carries its shapes")
    images = list(images)
    c_from = "len(mean)" if op == "pack_images" else "images[0].shape[2]"
    for i, img in enumerate(images):
        if not isinstance(img, torch.Tensor) or img.dim() != 3 or img.dtype != torch.uint8 or img.shape[2] != channels:
            got = f"{img.dtype} {tuple(img.shape)}" if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"{op}: images[{i}] must be uint8 [H, W, {channels}] (HWC, C = {c_from}), "
                             f"got {got}")
        if img.device != images[0].device:
            raise ValueError(f"{op}: images[{i}] is on {img.device}, images[0] on {images[0].device}")
    device = images[0].device if images else torch.device("cpu")
    if device.type == "cpu" and images:
        # numpy's single-threaded memcpy: torch.cat of uint8 on 2 OpenMP threads measured 3-10x slower here.
        data = torch.from_numpy(np.concatenate([img.reshape(-1).numpy() for img in images]))
    else:
        data = torch.cat([img.reshape(-1) for img in images]) if images else torch.empty(0, dtype=torch.uint8)
    sizes = torch.tensor([list(img.shape[:2]) for img in images], dtype=torch.int64).reshape(-1, 2)
    nbytes = sizes.prod(dim=1) * channels
    offsets = nbytes.cumsum(0) - nbytes
    return data.to(device), sizes, offsets


def _check_args(data, sizes, offsets, p, m, tps, mean, std, out_dtype) -> None:
    # Same rules and wording as csrc/pack_images/pack_images.h, so every backend fails the same way.
    _checks.check_flat_images("pack_images", data, sizes, offsets)
    for name, v in (("patch_size", p), ("merge_size", m), ("temporal_patch_size", tps)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if not 1 <= len(mean) <= MAX_CHANNELS:
        raise ValueError(f"mean must have 1..{MAX_CHANNELS} entries (one per channel), got {len(mean)}")
    if len(std) != len(mean):
        raise ValueError(f"std must have {len(mean)} entries (one per channel, like mean), got {len(std)}")
    if any(s == 0 or not math.isfinite(s) for s in std) or not all(math.isfinite(v) for v in mean):
        raise ValueError(f"std must be finite with std != 0, got {list(std)}")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be Float/Double/BFloat16/Half, got {out_dtype}")
    c = len(mean)
    factor = p * m
    if factor > _checks.INT64_MAX:
        raise ValueError(f"pack_images: patch_size * merge_size = {p} x {m} overflows int64")
    features = c * tps * p * p
    if features > _checks.INT64_MAX:
        raise ValueError(f"pack_images: C * temporal_patch_size * patch_size^2 = {c} x {tps} x {p}^2 features per "
                         "token overflows int64")
    tokens = 0
    for i, ((h, w), o) in enumerate(zip(sizes.tolist(), offsets.tolist())):
        if h <= 0 or w <= 0 or h % factor or w % factor:
            raise ValueError(f"pack_images: sizes[{i}] = ({h}, {w}): height and width must be positive multiples of "
                             f"patch_size * merge_size = {factor} "
                             "(resize with omni_mega.data.images.smart_resize first)")
        _checks.check_image_extent("pack_images", i, h, w, c, o, data.numel())
        tokens = _checks.add_tokens_int32("pack_images", tokens, (h // p) * (w // p), "sizes", i)
    if tokens * features > _checks.INT64_MAX:
        raise ValueError(f"pack_images: the output of {tokens} tokens x {features} features overflows int64")

if _ext.has_cpu_extension():

    @torch.library.register_fake("omni_mega::pack_images")
    def _pack_images_fake(data, sizes, offsets, patch_size, merge_size, temporal_patch_size, mean, std, out_dtype):
        # The token count depends on the values in `sizes`: a data-dependent size.
        tokens = torch.library.get_ctx().new_dynamic_size()
        features = len(mean) * temporal_patch_size * patch_size * patch_size
        return data.new_empty((tokens, features), dtype=out_dtype)
