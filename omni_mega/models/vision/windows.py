"""Windowed attention for the packed ViT (Qwen2.5-VL): every frame is cut into square windows of whole merge blocks,
the pack is reordered so that each window is contiguous, and windowed layers attend inside `cu_seqlens` segments of
one window each.

Attention is permutation-equivariant once the 2D RoPE positions travel with their tokens, so full-attention layers
run on the reordered pack unchanged (its per-frame segments stay contiguous: windows never cross a frame), and the
output is put back in `vision_positions` order before the spatial merge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def window_order(grid_thw: torch.Tensor, merge_size: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The window layout of a pack in `vision_positions` order (merge blocks contiguous).

    Args:
        grid_thw: int [N, 3] (t, h, w) in patches, h and w divisible by merge_size.
        merge_size: side of a merge block in patches.
        side: side of a window in merge blocks (>= 1); edge windows of a frame are smaller.
    Returns:
        perm: int64 [T], patch indexes in window order (packed[perm] is the reordered pack);
        cu_windows: int32 [W + 1], the windows' boundaries in the reordered pack, in patches.
    """
    m2 = merge_size * merge_size
    blocks, lengths, base = [], [], 0
    for t, h, w in grid_thw.tolist():
        gh, gw = h // merge_size, w // merge_size
        idx = torch.arange(t * gh * gw).view(t, gh, gw) + base
        ph, pw = (-gh) % side, (-gw) % side  # pad every frame to whole windows with -1 (dropped below)
        idx = F.pad(idx, (0, pw, 0, ph), value=-1)
        nh, nw = (gh + ph) // side, (gw + pw) // side
        idx = idx.view(t, nh, side, nw, side).permute(0, 1, 3, 2, 4).reshape(t * nh * nw, side * side)
        keep = idx >= 0
        blocks.append(idx[keep])  # row-major order: windows of frame 0 first, blocks in each window row by row
        lengths.append(keep.sum(1) * m2)
        base += t * gh * gw
    order = torch.cat(blocks) if blocks else torch.empty(0, dtype=torch.long)
    perm = (order[:, None] * m2 + torch.arange(m2)).reshape(-1)
    lengths = torch.cat(lengths) if lengths else torch.empty(0, dtype=torch.long)
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    return perm, cu
