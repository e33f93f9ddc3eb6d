"""Answer held-out conversations greedily and score exact match: `omni-mega eval` and the learning tests.

For each conversation of a conversation dataset (`ConvShardDataset`, kind sft), the prompt is everything before its
last assistant answer (the stored ids up to the last supervised run, its header included) and the reference is that
answer; the model continues the prompt greedily until the template's end-of-turn token (the last token of the
supervised run) or `max_new_tokens`. Images are shown at the given resolution bounds, expanded into placeholders as
in training. Exact match compares the decoded texts with surrounding whitespace stripped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from omni_mega.config import ConnectorConfig, ModelConfig
from omni_mega.data import packing as mp
from omni_mega.data.conversations.shards import IMAGE_MARK
from omni_mega.data.conversations.templates import tokenizer_decoder


def split_last_answer(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(prompt ids, answer ids without its end-of-turn, the end-of-turn id) of a stored sequence."""
    sup = np.flatnonzero(mask)
    if not len(sup):
        raise ValueError("the conversation has no supervised answer")
    start = sup[-1]
    while start > 0 and mask[start - 1]:
        start -= 1
    return ids[:start], ids[start:sup[-1]], int(ids[sup[-1]])


def greedy(model, prompt: torch.Tensor, *, stop: int, vocab_size: int, max_new_tokens: int, pixel_values=None,
           grid_thw=None) -> list[int]:
    """Greedy continuation of int64 [L] `prompt` with the KV-cache generator; stops at `stop` (not returned)."""
    from omni_mega.inference import Generator, SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens, eos_token_ids=[stop])
    return Generator(model, vocab_size).generate(prompt, params, pixel_values=pixel_values, grid_thw=grid_thw).ids


def answer_dataset(model, cfg: ModelConfig, dataset, indices: list[int], *, min_pixels: int, max_pixels: int,
                   vocab_size: int, max_new_tokens: int = 32) -> list[dict]:
    """[{"key", "reference", "answer", "exact"}] for `indices` of a conversation dataset; `cfg` is the model's."""
    from omni_mega.data.images import decode_and_pack

    decode = tokenizer_decoder(dataset.tokenizer)
    conn, vit = cfg.connector or ConnectorConfig(), cfg.vit
    rows = []
    for i in indices:
        rec = dataset[i]
        seq = rec.sequences[-1]
        prompt, ref, stop = split_last_answer(seq.ids, seq.mask)
        px = grid = None
        if rec.images:
            packed, kept, _ = decode_and_pack(rec.images, patch_size=vit.patch_size, merge_size=vit.merge_size,
                                              temporal_patch_size=vit.temporal_patch_size, min_pixels=min_pixels,
                                              max_pixels=max_pixels, backend="pillow", num_threads=1)
            if len(kept) != len(rec.images):
                raise ValueError(f"conversation {rec.key}: an image was rejected")
            px, grid = packed.pixel_values, packed.grid_thw
            visual = [int(g.prod()) // vit.merge_size ** 2 for g in grid]
            prompt, _ = mp.conv_sequence_tokens(prompt, np.zeros(len(prompt), np.uint8), visual,
                                                image_mark=IMAGE_MARK, image_token_id=conn.image_token_id)
        got = greedy(model, torch.as_tensor(np.asarray(prompt, dtype=np.int64)), stop=stop, vocab_size=vocab_size,
                     max_new_tokens=max_new_tokens, pixel_values=px, grid_thw=grid)
        reference, answer = decode([int(t) for t in ref]).strip(), decode(got).strip()
        rows.append({"key": rec.key, "reference": reference, "answer": answer, "exact": reference == answer})
    return rows


def write_eval(rows: list[dict], out_dir: Path, step: int | None = None) -> tuple[Path, Path]:
    """eval.json and eval.md (accuracy, then each answer beside its reference)."""
    acc = sum(r["exact"] for r in rows) / max(len(rows), 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "eval.json", out_dir / "eval.md"
    js.write_text(json.dumps({"exact_match": acc, "n": len(rows), "step": step, "answers": rows}, indent=1))
    esc = lambda t: t.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = [f"# Exact match: {acc:.1%} of {len(rows)}" + (f" (step {step})" if step is not None else ""), "",
             "| key | reference | answer | exact |", "|---|---|---|---|"]
    lines += [f"| {r['key']} | {esc(r['reference'])} | {esc(r['answer'])} | {'yes' if r['exact'] else 'no'} |"
              for r in rows]
    md.write_text("\n".join(lines) + "\n")
    return js, md
