"""Pure pieces of multimodal sequence packing: sample sizes, best-fit-decreasing packing under a visual-token
budget, data-parallel assignment of a step's packs, and the tensor layout of one pack.

Nothing here reads data or decodes images, so every function is a deterministic function of its arguments (the
same on every rank) and is tested against hand-built expectations (tests/data/test_mm_packing.py).

Length convention: a sample of n tokens x[0..n-1] occupies n - 1 positions of a pack (inputs x[:-1], labels x[1:],
shifted inside the sample), so an image-text sample `[img] * v + [SEP] + caption (L) + [EOD]` takes v + L + 1
positions and a text document of D tokens + EOD takes D positions. A sample is truncated to at most S + 1 tokens
(S positions) for a pack of S positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from omni_mega.data.images.sizes import ImageRejected, target_size

# Reasons an image-text sample is skipped when a window is drawn (counted in PackedMultimodalSource.skipped).
OVER_BUDGET, OVER_PACK, BAD_SIZE, EMPTY_SAMPLE = "visual_over_budget", "visual_over_pack", "bad_image_size", "empty"


@dataclass(frozen=True)
class SampleRef:
    """One drawn sample, located and sized without reading its payload."""

    kind: str  # "text" | "mm" (an image and its caption) | "conv" (a conversation or pair: 1+ sequences with images)
    dataset: int  # index into the source's mm or text dataset list
    index: int  # item index inside that dataset
    positions: int  # pack positions it takes (already truncated to the pack length)
    visual: int  # merged visual tokens (placeholders); 0 for text
    order: int  # draw order inside its window (the tie-break that keeps packing deterministic)
    carried: bool = False  # drawn in the previous window and carried over from its least-filled pack


def visual_tokens(height: int, width: int, *, patch_size: int, merge_size: int, min_pixels: int,
                  max_pixels: int) -> tuple[int, int, int]:
    """Merged visual tokens of an image of (height, width) pixels after smart_resize, computed from the size in the
    index BEFORE decoding: (n_vis, resized height, resized width); n_vis = 1 * (h / p / m) * (w / p / m) for a still
    image (grid t = 1). Raises ImageRejected for sizes smart_resize refuses (extreme aspect, zero side)."""
    factor = patch_size * merge_size
    h, w, _ = target_size(int(height), int(width), factor, min_pixels, max_pixels)
    return (h // factor) * (w // factor), h, w


def mm_positions(n_vis: int, caption_len: int, seq_length: int) -> int:
    """Pack positions of an image-text sample (caption truncated so the sample fits one pack)."""
    return min(n_vis + caption_len + 1, seq_length)


def mm_skip_reason(n_vis: int, budget: int, seq_length: int) -> str | None:
    """Why an image-text sample cannot be packed at all (None = it can): its visual tokens alone exceed the
    per-pack budget, or leave no position for SEP (so no caption token could be predicted)."""
    if n_vis > budget:
        return OVER_BUDGET
    if n_vis + 1 > seq_length:
        return OVER_PACK
    return None


def best_fit_decreasing(samples: list[SampleRef], seq_length: int, budget: int) -> list[list[SampleRef]]:
    """Packs samples into bins of `seq_length` positions and `budget` visual tokens, best fit decreasing.

    Samples go in order of decreasing positions (then decreasing visual tokens, then draw order); each goes to the
    open pack with the least free positions that still holds it (positions and visual budget), else to a new pack.
    Inside a pack, samples keep their draw order. Every sample must fit an empty pack (callers skip the rest).
    Returns the packs, fullest first (ties: the pack opened first)."""
    for s in samples:
        if s.positions > seq_length or s.visual > budget or s.positions < 1:
            raise ValueError(f"best_fit_decreasing: sample {s} does not fit a pack of {seq_length} positions and "
                             f"{budget} visual tokens")
    free_pos: list[int] = []
    free_vis: list[int] = []
    bins: list[list[SampleRef]] = []
    for s in sorted(samples, key=lambda s: (-s.positions, -s.visual, s.order)):
        best, best_free = -1, seq_length + 1
        for b in range(len(bins)):  # O(samples x packs): a window is a few hundred samples
            if s.positions <= free_pos[b] < best_free and s.visual <= free_vis[b]:
                best, best_free = b, free_pos[b]
        if best < 0:
            bins.append([])
            free_pos.append(seq_length)
            free_vis.append(budget)
            best = len(bins) - 1
        bins[best].append(s)
        free_pos[best] -= s.positions
        free_vis[best] -= s.visual
    order = sorted(range(len(bins)), key=lambda b: (free_pos[b], b))
    return [sorted(bins[b], key=lambda s: s.order) for b in order]


def assign_to_ranks(visual: list[int], dp: int, per_rank: int) -> list[list[int]]:
    """Deals a step's packs to data-parallel ranks so each rank's visual work is even.

    visual: merged visual tokens of each of the step's dp * per_rank packs. Packs in order of decreasing visual
    tokens (ties: lower pack index) go to the least-loaded rank that has room (ties: lower rank). Returns, per rank,
    its pack indices in ascending order. Pure and deterministic: every rank computes the same assignment."""
    if len(visual) != dp * per_rank:
        raise ValueError(f"assign_to_ranks: need dp * per_rank = {dp} * {per_rank} packs, got {len(visual)}")
    load = [0] * dp
    out: list[list[int]] = [[] for _ in range(dp)]
    for i in sorted(range(len(visual)), key=lambda i: (-visual[i], i)):
        r = min((r for r in range(dp) if len(out[r]) < per_rank), key=lambda r: (load[r], r))
        out[r].append(i)
        load[r] += visual[i]
    return [sorted(o) for o in out]


def layout_pack(seqs: list[np.ndarray | None], lengths: list[int], seq_length: int,
                no_loss_ids: int | tuple[int, ...], pad_id: int = 0,
                target_masks: list[np.ndarray | None] | None = None) -> dict:
    """Tensors of one pack of `seq_length` positions.

    seqs: per sample, its (already truncated) int64 token ids [lengths[i] + 1], or None for a sample whose span
        becomes padding (its image was rejected at decode time: it keeps its place and segment, loss 0).
    no_loss_ids: ids never predicted and never predicted from (the image placeholder, indicator tokens).
    target_masks: per sequence, None (every target counts) or uint8 [lengths[i] + 1] over its tokens, 1 where the
        token is a supervised target (answer-only loss: a conversation's assistant tokens).
    Returns {"tokens", "labels": int64 [1, S], "loss_mask": float32 [1, S] (0 on padding and wherever the input or
    the label is one of no_loss_ids), "position_ids": int64 [1, S] (restart at 0 per sample and for the trailing
    padding), "cu_seqlens": int32 [n + 1] (the trailing padding is one more segment), "max_seqlen": int}."""
    S = seq_length
    ids = torch.tensor([no_loss_ids] if isinstance(no_loss_ids, int) else list(no_loss_ids), dtype=torch.int64)
    tokens = torch.full((S,), pad_id, dtype=torch.int64)
    labels = torch.full((S,), pad_id, dtype=torch.int64)
    mask = torch.zeros(S, dtype=torch.float32)
    pos = torch.zeros(S, dtype=torch.int64)
    bounds, at = [0], 0
    for k, (seq, n) in enumerate(zip(seqs, lengths)):
        if at + n > S:
            raise ValueError(f"layout_pack: samples of {sum(lengths)} positions overflow a pack of {S}")
        if seq is not None:
            t = torch.as_tensor(np.asarray(seq, dtype=np.int64))
            if t.numel() != n + 1:
                raise ValueError(f"layout_pack: sample has {t.numel()} tokens, expected positions + 1 = {n + 1}")
            tokens[at:at + n], labels[at:at + n] = t[:-1], t[1:]
            mask[at:at + n] = (~torch.isin(t[:-1], ids) & ~torch.isin(t[1:], ids)).float()
            target = None if target_masks is None else target_masks[k]
            if target is not None:
                mask[at:at + n] *= torch.as_tensor(np.asarray(target[1:], dtype=np.float32))
        pos[at:at + n] = torch.arange(n)
        at += n
        bounds.append(at)
    if at < S:
        pos[at:] = torch.arange(S - at)
        bounds.append(S)
    cu = torch.tensor(bounds, dtype=torch.int32)
    return {"tokens": tokens[None], "labels": labels[None], "loss_mask": mask[None], "position_ids": pos[None],
            "cu_seqlens": cu, "max_seqlen": int((cu[1:] - cu[:-1]).max())}


def mm_sample_tokens(n_vis: int, caption: np.ndarray, *, image_token_id: int, sep: int, eod: int,
                     seq_length: int) -> np.ndarray:
    """int64 `[img] * n_vis + [SEP] + caption + [EOD]`, truncated to seq_length + 1 tokens."""
    out = np.concatenate([np.full(n_vis, image_token_id, dtype=np.int64), np.array([sep], dtype=np.int64),
                          np.asarray(caption, dtype=np.int64).reshape(-1), np.array([eod], dtype=np.int64)])
    return out[: seq_length + 1]


def conv_positions(lengths: list[int], visual: list[int]) -> list[int]:
    """Pack positions of each sequence of a conversation sample: its tokens less one, each image mark replaced by
    the image's merged visual tokens (`visual`, per image; every sequence shows every image once)."""
    extra = sum(v - 1 for v in visual)
    return [n - 1 + extra for n in lengths]


def conv_sequence_tokens(ids: np.ndarray, target: np.ndarray, visual: list[int], *, image_mark: int,
                         image_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A stored conversation sequence with each image mark expanded into its `visual` placeholders: (int64 tokens,
    uint8 target mask, 0 on the placeholders)."""
    ids, target = np.asarray(ids, dtype=np.int64), np.asarray(target, dtype=np.uint8)
    at = np.flatnonzero(ids == image_mark)
    if len(at) != len(visual):
        raise ValueError(f"conversation sequence marks {len(at)} images, its sample has {len(visual)}")
    reps = np.ones(len(ids), dtype=np.int64)
    reps[at] = visual
    tokens, mask = np.repeat(ids, reps), np.repeat(target, reps)
    image = np.repeat(np.isin(np.arange(len(ids)), at), reps)
    tokens[image], mask[image] = image_token_id, 0
    return tokens, mask


def text_sample_tokens(tokens: np.ndarray, *, seq_length: int) -> np.ndarray:
    """int64 tokens of a text item (its dataset already ended a whole document with EOD), truncated to
    seq_length + 1 tokens."""
    return np.asarray(tokens, dtype=np.int64).reshape(-1)[: seq_length + 1]


__all__ = ["SampleRef", "visual_tokens", "mm_positions", "mm_skip_reason", "best_fit_decreasing", "assign_to_ranks",
           "layout_pack", "mm_sample_tokens", "text_sample_tokens", "conv_positions", "conv_sequence_tokens",
           "ImageRejected", "OVER_BUDGET", "OVER_PACK", "BAD_SIZE", "EMPTY_SAMPLE"]
