"""The multimodal side of a training step: the data source, the forward step over packed micro-batches and the
per-step data statistics (`metrics.jsonl`: mm_ratio, packing_efficiency, visual_tokens, images, ...).

A multimodal micro-batch (`omni_mega.data.multimodal`, one packed sequence, b = 1) holds tokens/labels/position_ids
int64 [1, S], loss_mask float32 [1, S], cu_seqlens int32 [n + 1], max_seqlen int, and, when the pack has images,
pixel_values float32 [T, 3 * tps * p * p] and grid_thw int64 [N, 3]; `stats` is a dict of python ints.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

STAT_KEYS = ("text_tokens", "visual_tokens", "pad_tokens", "mm_samples", "text_samples", "rejected_images")


def build_mm_source(cfg, plan, data_dir: Path, consumed_samples: int):
    """The packed multimodal `BatchSource` of a stage (tests replace this function with a fake)."""
    from omni_mega.data.multimodal import build_multimodal_source

    return build_multimodal_source(cfg, plan, data_dir, consumed_samples)


def unwrap(model):
    """The OmniModel inside megatron's DDP (or any `.module` wrapper)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def mm_forward_step(data_iterator, model):
    """forward_step_func for megatron's schedules over packed multimodal micro-batches (THD through
    PackedSeqParams; pixels reach the vision tower on the first pipeline stage only, later chunks ignore them)."""
    from omni_mega.data.text import to_packed_seq_params
    from omni_mega.training.trainer import masked_lm_loss

    batch = next(data_iterator)
    mask = unwrap(model).loss_mask(batch["tokens"], batch["labels"], batch["loss_mask"])
    # Targets under a zero mask (image placeholders, padding) may lie outside the vocabulary: point them at id 0 so
    # the cross entropy never indexes out of range; they carry no loss either way.
    labels = batch["labels"].masked_fill(mask == 0, 0)
    out = model(batch["tokens"], batch["position_ids"], None, labels=labels,
                pixel_values=batch.get("pixel_values"), grid_thw=batch.get("grid_thw"),
                packed_seq_params=to_packed_seq_params(batch))
    return out, partial(masked_lm_loss, mask)


def pack_stats(mb: dict, image_token_id: int) -> dict[str, int]:
    """The source's per-pack stats plus `mm_tokens` (tokens of segments holding an image placeholder, i.e. the
    image-text samples: their visual and caption tokens) and `capacity` (S), counted from the pack itself."""
    st = {k: int(mb.get("stats", {}).get(k, 0)) for k in STAT_KEYS}
    tokens, cu = mb["tokens"][0], mb["cu_seqlens"].tolist()
    is_img = (tokens == image_token_id).to(torch.int64)
    st["mm_tokens"] = sum(b - a for a, b in zip(cu[:-1], cu[1:]) if b > a and int(is_img[a:b].sum()) > 0)
    st["capacity"] = int(tokens.numel())
    return st


def tapped(batches: Iterator[dict], device: torch.device, image_token_id: int, sink: list) -> Iterator[dict]:
    """Moves each micro-batch's tensors to `device` and appends its `pack_stats` to `sink` as it is consumed
    (megatron's schedule pulls from the iterator; this is where the step's data statistics come from)."""
    for mb in batches:
        sink.append(pack_stats(mb, image_token_id))
        yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in mb.items() if k != "stats"}


def step_stats(sink: list[dict], device: torch.device, dp_group=None) -> dict[str, int]:
    """Sums the packs of one step over micro-batches and data-parallel ranks (one small all-reduce of int64 over the
    DP group; pipeline ranks of one replica read the same packs, so they are not added again)."""
    keys = STAT_KEYS + ("mm_tokens", "capacity")
    local = torch.tensor([sum(s[k] for s in sink) for k in keys], dtype=torch.int64)
    if dist.is_initialized() and dp_group is not None and dist.get_world_size(dp_group) > 1:
        t = local.to(device)
        dist.all_reduce(t, group=dp_group)
        local = t.cpu()
    return dict(zip(keys, local.tolist()))


def mm_record(st: dict[str, int], target: float | None) -> dict:
    """metrics.jsonl fields of one multimodal step (all ranks of the step summed)."""
    non_pad = st["capacity"] - st["pad_tokens"]
    return {
        "mm_ratio_target": target, "mm_ratio": st["mm_tokens"] / max(non_pad, 1),
        "packing_efficiency": non_pad / max(st["capacity"], 1), "visual_tokens": st["visual_tokens"],
        "text_tokens": st["text_tokens"], "pad_tokens": st["pad_tokens"], "images": st["mm_samples"],
        "text_samples": st["text_samples"], "rejected_images": st["rejected_images"],
    }
