"""3D M-RoPE position ids for the LLM with Qwen2-VL's `get_rope_index` semantics (images; videos use t = frames).

Text tokens advance all three axes (temporal, height, width) together: position = running index. An image with
merged grid (t, h/m, w/m) gets, for its placeholder tokens in (t, row, col) order, positions
start + (t_idx, row, col) where start is the position the next text token would have had; the text after the image
resumes at max(image positions) + 1. Megatron's GPTModel takes these as `position_ids` [3, b, s] with
position_embedding_type="mrope" and an `mrope_section`.
"""

from __future__ import annotations

import torch

from omni_mega.models.vision.merge import merged_tokens_per_image


def get_rope_index(input_ids: torch.Tensor, image_token_id: int, grid_thw: torch.Tensor | None, merge_size: int,
                   attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Args:
        input_ids: int [b, s], one placeholder per merged visual token; images consumed in order across the batch.
        image_token_id: the placeholder id.
        grid_thw: int [N, 3] (t, h, w) in patches, or None for text only.
        merge_size: spatial merge side.
        attention_mask: optional [b, s], 1 = real token; padding gets position 1 on every axis (as Qwen2-VL).
    Returns:
        position_ids: int64 [3, b, s]; deltas: int64 [b] = (max position + 1) - number of real tokens, used to
        continue positions when generating.
    """
    b, s = input_ids.shape
    grids = [] if grid_thw is None else grid_thw.tolist()
    counts = [] if grid_thw is None else merged_tokens_per_image(grid_thw, merge_size)
    pos = torch.ones(3, b, s, dtype=torch.long)
    deltas = torch.zeros(b, dtype=torch.long)
    img = 0
    for i in range(b):
        keep = torch.ones(s, dtype=torch.bool) if attention_mask is None else attention_mask[i].bool().cpu()
        ids = input_ids[i].cpu()[keep].tolist()
        chunks, j, nxt = [], 0, 0
        while j < len(ids):
            if ids[j] == image_token_id:
                if img >= len(grids):
                    raise ValueError(f"sample {i}: more image placeholder runs than images in grid_thw ({len(grids)})")
                t, h, w = grids[img]
                n, hm, wm = counts[img], h // merge_size, w // merge_size
                if ids[j:j + n] != [image_token_id] * n:
                    raise ValueError(f"sample {i}: image {img} with grid {grids[img]} needs {n} consecutive "
                                     f"placeholders at token {j}")
                ti = torch.arange(t).view(t, 1, 1).expand(t, hm, wm).reshape(-1)
                hi = torch.arange(hm).view(1, hm, 1).expand(t, hm, wm).reshape(-1)
                wi = torch.arange(wm).view(1, 1, wm).expand(t, hm, wm).reshape(-1)
                chunks.append(torch.stack([ti, hi, wi]) + nxt)
                nxt = int(chunks[-1].max()) + 1
                j, img = j + n, img + 1
            else:
                k = j
                while k < len(ids) and ids[k] != image_token_id:
                    k += 1
                chunks.append(torch.arange(nxt, nxt + k - j).expand(3, -1))
                nxt, j = nxt + k - j, k
        row = torch.cat(chunks, dim=1) if chunks else torch.zeros(3, 0, dtype=torch.long)
        pos[:, i, keep] = row
        deltas[i] = (int(row.max()) + 1 if row.numel() else 0) - len(ids)
    if img != len(grids):
        raise ValueError(f"grid_thw has {len(grids)} images but input_ids hold placeholders for {img}")
    return pos.to(input_ids.device), deltas.to(input_ids.device)


def packed_rope_index(input_ids: torch.Tensor, image_token_id: int, grid_thw: torch.Tensor | None, merge_size: int,
                      cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """`get_rope_index` for a packed (THD) row: positions restart in every segment of `cu_seqlens` (int32 [n + 1]
    over input_ids [1, T]), and the images of `grid_thw` are consumed in order across segments. Returns int64
    [3, 1, T]. Without cu_seqlens every row of input_ids [b, s] is one sample."""
    if cu_seqlens is None:
        return get_rope_index(input_ids, image_token_id, grid_thw, merge_size)[0]
    if input_ids.shape[0] != 1:
        raise ValueError(f"packed_rope_index: a packed batch has one row, got input_ids {tuple(input_ids.shape)}")
    per_image = [] if grid_thw is None else merged_tokens_per_image(grid_thw, merge_size)
    bounds, rows, img = cu_seqlens.tolist(), [], 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        seg = input_ids[:, a:b]
        n_img, need = 0, int((seg == image_token_id).sum())
        while need > 0:
            need -= per_image[img + n_img]
            n_img += 1
        grids = grid_thw[img:img + n_img] if n_img else None
        rows.append(get_rope_index(seg, image_token_id, grids, merge_size)[0])
        img += n_img
    return torch.cat(rows, dim=2) if rows else torch.zeros(3, 1, 0, dtype=torch.long, device=input_ids.device)
