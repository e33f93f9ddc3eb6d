"""Greedy captions from a trained OmniModel: the prompt is `[image_token_id] * n_vis + [SEP]` (the layout the packer
trains on, `omni_mega.data.source`), then the argmax token is appended until EOD or `max_new_tokens`, by the same
KV-cache generator as `omni-mega generate` (`omni_mega.inference`). One process only (tp = pp = 1): the whole model
must be in this rank's single chunk.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from omni_mega.config import ConnectorConfig, RunConfig
from omni_mega.inference import greedy_decode  # noqa: F401  (re-exported: callers import it from here)


def check_layout(cfg: RunConfig) -> None:
    """Greedy generation needs the whole model in one chunk on one process."""
    par = cfg.parallel
    if par.tp != 1 or par.pp != 1 or par.vpp is not None or par.cp != 1:
        raise ValueError(f"generate: greedy captioning runs with parallel.tp=1, pp=1, cp=1 and no vpp (one model "
                         f"chunk on one process); got tp={par.tp}, pp={par.pp}, vpp={par.vpp}, cp={par.cp}. Load the "
                         "checkpoint under that layout (dist checkpoints reshard) to caption.")
    if cfg.model.vit is None:
        raise ValueError("generate: model.vit is not set; captioning needs a vision model")


def image_prompt(image: bytes, cfg: RunConfig, *, min_pixels: int, max_pixels: int, sep: int):
    """(prompt int64 [n_vis + 1], pixel_values float32 [T, C*tps*p*p], grid_thw int64 [1, 3]) for one encoded image,
    resized with the same smart_resize bounds as training."""
    from omni_mega.data.images import decode_images
    from omni_mega.ops import pack_images

    vit = cfg.model.vit
    images, stats = decode_images([image], patch_size=vit.patch_size, merge_size=vit.merge_size,
                                  min_pixels=min_pixels, max_pixels=max_pixels, backend="pillow", num_threads=1)
    if images[0] is None:
        raise ValueError(f"image_prompt: the image was rejected ({stats.summary()})")
    packed = pack_images(images, patch_size=vit.patch_size, merge_size=vit.merge_size,
                         temporal_patch_size=vit.temporal_patch_size)
    t, h, w = (int(v) for v in packed.grid_thw[0])
    n_vis = t * h * w // vit.merge_size**2
    image_token_id = (cfg.model.connector or ConnectorConfig()).image_token_id
    prompt = torch.tensor([image_token_id] * n_vis + [sep], dtype=torch.int64)
    return prompt, packed.pixel_values, packed.grid_thw


def caption_dataset(model, cfg: RunConfig, dataset, indices: list[int], *, min_pixels: int, max_pixels: int,
                    max_new_tokens: int = 64) -> list[dict]:
    """Greedy captions for samples `indices` of an `MMShardDataset` with byte-level tokens.
    Returns [{"key", "true", "generated", "exact"}] (texts decoded from bytes)."""
    from omni_mega.data.demo import text as demo_text

    check_layout(cfg)
    tok = dict(getattr(dataset, "tokenizer", {}) or {})
    if tok.get("kind") != "byte":
        raise ValueError(f"caption_dataset: decoding captions needs byte-level tokens, the dataset has {tok}")
    eod, sep = int(tok.get("eod", demo_text.EOD)), int(tok.get("sep", 10))
    rows = []
    for i in indices:
        rec = dataset[i]
        prompt, px, grid = image_prompt(rec.image, cfg, min_pixels=min_pixels, max_pixels=max_pixels, sep=sep)
        ids = greedy_decode(model, prompt, eod=eod, vocab_size=int(tok.get("vocab_size", demo_text.VOCAB_SIZE)),
                            max_new_tokens=max_new_tokens, pixel_values=px, grid_thw=grid)
        true, gen = demo_text.decode([int(t) for t in rec.tokens]), demo_text.decode(ids)
        rows.append({"key": rec.key, "true": true, "generated": gen, "exact": true == gen})
    return rows


def write_captions(trainer, heldout_dir: str | Path, n: int = 6, max_new_tokens: int = 64) -> Path:
    """Captions for the first `n` held-out images after training (the last stage's resolution bounds), written to
    `<run dir>/captions.json`."""
    from omni_mega.data.multimodal.shards import MMShardDataset

    ds = MMShardDataset(heldout_dir)
    lo, hi = trainer.plans[-1].min_pixels, trainer.plans[-1].max_pixels
    rows = caption_dataset(trainer.chunks[0], trainer.cfg, ds, list(range(min(n, len(ds)))), min_pixels=lo,
                           max_pixels=hi, max_new_tokens=max_new_tokens)
    path = Path(trainer.run_dir) / "captions.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"dataset": str(heldout_dir), "step": trainer.state.step, "captions": rows}, indent=1))
    tmp.replace(path)
    return path
