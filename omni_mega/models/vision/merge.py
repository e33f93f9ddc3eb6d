"""Spatial merge of ViT tokens and the placeholder accounting that ties merged tokens to `input_ids`."""

from __future__ import annotations

import torch


def spatial_merge(x: torch.Tensor, merge_size: int) -> torch.Tensor:
    """Concatenates each merge_size x merge_size block of neighbouring patches into one token.

    `vision_positions` orders tokens so that every merge block is m*m consecutive rows, so the merge is a view.
    Args:
        x: [T, hidden], T divisible by merge_size**2.
    Returns:
        [T / m^2, m^2 * hidden], same dtype.
    """
    m2 = merge_size * merge_size
    if x.size(0) % m2:
        raise ValueError(f"spatial_merge: T={x.size(0)} tokens is not divisible by merge_size^2={m2}")
    return x.reshape(x.size(0) // m2, m2 * x.size(1))


def merged_tokens_per_image(grid_thw: torch.Tensor, merge_size: int, extra: int = 0) -> list[int]:
    """Placeholders each image needs in input_ids: t * ((h / m) * (w / m) + extra), extra being the feature tokens
    per frame beyond its patches (a kept class token). grid_thw: int [N, 3]."""
    return [t * ((h // merge_size) * (w // merge_size) + extra) for t, h, w in grid_thw.tolist()]


def check_placeholders(input_ids: torch.Tensor, image_token_id: int, grid_thw: torch.Tensor, merge_size: int,
                       extra: int = 0) -> int:
    """Raises ValueError unless input_ids hold exactly one placeholder per merged visual token.

    input_ids: int [b, s]; grid_thw: int [N, 3]. Returns the number of placeholders."""
    found = int((input_ids == image_token_id).sum())
    per_image = merged_tokens_per_image(grid_thw, merge_size, extra)
    need = sum(per_image)
    if found != need:
        raise ValueError(
            f"input_ids hold {found} image placeholder tokens (id {image_token_id}) but grid_thw {grid_thw.tolist()} "
            f"needs {need} after the {merge_size}x{merge_size} merge (per image: {per_image}); the data pipeline must "
            f"insert t*(h/{merge_size})*(w/{merge_size}{f' + {extra}' if extra else ''}) placeholders per image, in "
            "image order"
        )
    return found
