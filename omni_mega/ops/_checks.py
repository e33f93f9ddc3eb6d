"""Input checks shared by the plain-PyTorch references, mirroring csrc/common/checks.h condition for condition and
message for message, so a reference rejects what the kernels reject and says it the same way.

Python integers do not overflow, but the kernels compute in int64: a value the kernels refuse as "overflows int64"
is refused here by the same bound, instead of being accepted by one backend and rejected by another.
"""

from __future__ import annotations

import torch

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


# c10's names, as TORCH_CHECK prints a dtype.
_C10_NAMES = {torch.uint8: "Byte", torch.int8: "Char", torch.int16: "Short", torch.int32: "Int", torch.int64: "Long",
              torch.float16: "Half", torch.bfloat16: "BFloat16", torch.float32: "Float", torch.float64: "Double",
              torch.bool: "Bool"}


def described(t: torch.Tensor) -> str:
    """dtype and shape as the C++ checks print them: `Float [4, 4]`."""
    return f"{_C10_NAMES.get(t.dtype, str(t.dtype))} {list(t.shape)}"


def check_flat_images(op: str, data: torch.Tensor, sizes: torch.Tensor, offsets: torch.Tensor) -> None:
    """A flat image batch: data uint8 [bytes], sizes int [N, 2] (h, w), offsets int [N]. Shapes and dtypes only."""
    if data.dim() != 1 or data.dtype != torch.uint8:
        raise ValueError(f"{op}: data must be 1-D with dtype Byte (uint8), got {described(data)}")
    if sizes.dim() != 2 or sizes.size(1) != 2 or sizes.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: sizes must have shape [N, 2] (h, w) and dtype Int/Long, got {described(sizes)}")
    if offsets.dim() != 1 or offsets.size(0) != sizes.size(0) or offsets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: offsets must have shape [N] = [{sizes.size(0)}] (one per row of sizes) and dtype "
                         f"Int/Long, got {described(offsets)}")


def check_image_extent(op: str, i: int, h: int, w: int, channels: int, off: int, numel: int) -> int:
    """Image i (h x w x C bytes from `off`, h and w >= 1) lies inside data; returns its byte count."""
    nbytes = h * w * channels
    if nbytes > INT64_MAX:
        raise ValueError(f"{op}: sizes[{i}] = ({h}, {w}): an image of {h} x {w} x {channels} bytes overflows int64")
    if off < 0:
        raise ValueError(f"{op}: offsets[{i}] = {off}: must be >= 0")
    if off + nbytes > numel:
        raise ValueError(f"{op}: offsets[{i}] = {off}: image {i} needs bytes [{off}, {off + nbytes}) of data, "
                         f"which has numel {numel}")
    return nbytes


def add_tokens_int32(op: str, total: int, tokens: int, what: str, i: int) -> int:
    """The running token count after item i of `what`; cu_seqlens are int32, so it must stay <= INT32_MAX."""
    if tokens > INT32_MAX - total:
        raise ValueError(f"{op}: {what}[{i}] brings the token count past {INT32_MAX} (int32 cu_seqlens)")
    return total + tokens
