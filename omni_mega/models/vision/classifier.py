"""Image classifier on the ViT (`objective: classify`): each image's merged features averaged, then a linear layer
over the labels. Replicated on every TP rank (the ViT's output is full on every rank)."""

from __future__ import annotations

import torch


def image_means(features: torch.Tensor, grid_thw: torch.Tensor, merge_size: int) -> torch.Tensor:
    """Merged ViT features [T / m^2, D] of packed images -> their per-image means [N, D]."""
    counts = torch.tensor([t * (h // merge_size) * (w // merge_size) for t, h, w in grid_thw.tolist()],
                          device=features.device)
    seg = torch.repeat_interleave(torch.arange(counts.numel(), device=features.device), counts)
    sums = features.new_zeros(counts.numel(), features.size(1)).index_add(0, seg, features)
    return sums / counts[:, None].to(features.dtype)


class ImageClassifier(torch.nn.Module):
    def __init__(self, in_features: int, num_labels: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(in_features, dtype=dtype)
        self.head = torch.nn.Linear(in_features, num_labels, dtype=dtype)

    def forward(self, features: torch.Tensor, grid_thw: torch.Tensor, merge_size: int) -> torch.Tensor:
        """[T / m^2, D] merged features -> logits [N images, labels]."""
        return self.head(self.norm(image_means(features, grid_thw, merge_size)))
