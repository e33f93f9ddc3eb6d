"""`vision_positions`: (row, col) of every vision token and per-frame `cu_seqlens` for packed images.

Token order is Qwen2-VL's: frame, merge-block row, merge-block col, in-block row, in-block col. The 2D RoPE and the
image packing op consume these positions.
"""

from __future__ import annotations

import torch

from omni_mega.ops import _backend, _checks, _ext


def vision_positions_ref(grid_thw: torch.Tensor, merge_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch oracle, written for clarity (same contract as `vision_positions`)."""
    _check_grid(grid_thw, merge_size)
    m = merge_size
    pos_chunks, lengths = [], []
    for t, h, w in grid_thw.tolist():
        rows = torch.arange(h).view(h // m, m, 1, 1).expand(h // m, m, w // m, m)  # [br, ir, bc, ic]
        cols = torch.arange(w).view(1, 1, w // m, m).expand(h // m, m, w // m, m)
        # Reorder to (br, bc, ir, ic): the merge block is the inner unit.
        rows = rows.permute(0, 2, 1, 3).reshape(-1)
        cols = cols.permute(0, 2, 1, 3).reshape(-1)
        frame = torch.stack([rows, cols], dim=-1)
        pos_chunks += [frame] * t
        lengths += [h * w] * t
    pos = torch.cat(pos_chunks) if pos_chunks else torch.empty(0, 2, dtype=torch.long)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.long)
    cu[1:] = torch.tensor(lengths, dtype=torch.long).cumsum(0)
    return pos.to(torch.int32).to(grid_thw.device), cu.to(torch.int32).to(grid_thw.device)


def vision_positions(
    grid_thw: torch.Tensor, merge_size: int = 1, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of packed vision tokens.

    Args:
        grid_thw: int32/int64 [N, 3], (t, h, w) of each image/video in patches; h and w divisible by `merge_size`.
        merge_size: side of the spatial merge block (2 for Qwen2-VL's 2x2 merge, 1 for none).
        backend: "auto" | "ref" | "cpp" | "cuda".
    Returns:
        pos: int32 [T, 2] (row, col), T = sum t*h*w, on grid_thw's device.
        cu_seqlens: int32 [sum t + 1], one segment per frame.
    """
    which = _backend.resolve(backend, grid_thw.device, op="vision_positions")
    if which == "ref":
        return vision_positions_ref(grid_thw, merge_size)
    return torch.ops.omni_mega.vision_positions(grid_thw, merge_size)


def _check_grid(grid_thw: torch.Tensor, merge_size: int) -> None:
    # Same rules and wording as csrc/common/checks.h, so every backend fails the same way.
    if grid_thw.dim() != 2 or grid_thw.size(1) != 3:
        raise ValueError(f"grid_thw must have shape [N, 3] (t, h, w), got {tuple(grid_thw.shape)}")
    if grid_thw.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"grid_thw must have dtype Int/Long, got {grid_thw.dtype}")
    if merge_size < 1:
        raise ValueError(f"merge_size must be >= 1, got {merge_size}")
    total = 0
    for i, (t, h, w) in enumerate(grid_thw.tolist()):
        if t < 1 or h < 1 or w < 1:
            raise ValueError(f"grid_thw[{i}] = ({t}, {h}, {w}) has a zero or negative size; every t, h, w must be >= 1")
        if h % merge_size or w % merge_size:
            raise ValueError(f"grid_thw[{i}] = ({t}, {h}, {w}): h and w must be divisible by merge_size={merge_size}")
        total = _checks.add_tokens_int32("vision_positions", total, t * h * w, "grid_thw", i)


if _ext.has_cpu_extension():

    @torch.library.register_fake("omni_mega::vision_positions")
    def _vision_positions_fake(grid_thw, merge_size):
        # Output sizes depend on the grid's values: both are data-dependent.
        ctx = torch.library.get_ctx()
        tokens = ctx.new_dynamic_size()
        frames = ctx.new_dynamic_size()
        return (
            grid_thw.new_empty((tokens, 2), dtype=torch.int32),
            grid_thw.new_empty((frames + 1,), dtype=torch.int32),
        )
