"""`ImageTextSource`: micro-batches of whole image-text samples (B images with their captions), for objectives that
compare images with texts (`objective: contrastive`) rather than predict packed sequences.

The stream: sample p of the stage is the p-th draw of a `BlendSampler` over the stage's image-text datasets (by
weight, epoch permutations of each), skipping (counted, logged) the images whose size the index says smart_resize
refuses or that exceed the stage's visual budget. One step takes the next `global_batch_size` samples; data-parallel
rank r gets the r-th contiguous block, cut into `num_micro` micro-batches of `micro_batch_size` samples (so
gathering a micro-batch's embeddings over the ranks in rank order gives the step's samples in stream order).

Micro-batch dict (CPU): pixel_values float32 [patches, C * tps * p * p] and grid_thw int64 [B, 3] (one image per
sample, `images.decode_and_pack`, decoded in one call per step), text int64 [B, L + 1] (the tokenizer's EOD as BOS,
then the caption cut to `max_text` tokens, right-padded with 0), text_lengths int64 [B], sample_mask float32 [B]
(0 for an image rejected at decode time: a merge-block of zeros stands in, and the losses leave it out),
text_keys int64 [B] (a hash of each caption's tokens: equal captions are positives of each other), `stats`.

Resume: the state is the sampler's state at the cursor and the samples consumed; a source built without a state at
`consumed_samples` replays the stage's draws from the start (index reads only), so both give the same samples.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from omni_mega.data import packing as mp
from omni_mega.data.images import DecodeStats
from omni_mega.data.images.sizes import ImageRejected
from omni_mega.data.sampler import BlendSampler
from omni_mega.data.blend import BlendSchedule

log = logging.getLogger(__name__)
STAT_KEYS = ("images", "text_tokens", "visual_tokens", "rejected_images")


@dataclass(frozen=True)
class ImageTextSpec:
    """How one stage's samples are drawn and sized (`data.source.build_source` fills it from the plan)."""

    stage_index: int
    stage_start: int  # samples of the run before this stage
    seed: int
    eod: int  # BOS of every text (and what ends every caption for a decoder)
    max_text: int  # caption tokens kept
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    visual_budget: int  # merged visual tokens per image at most (larger images are skipped when drawn)


class ImageTextSource:
    """The `data.source.BatchSource` of a stage whose objective reads image-text samples. mm_sets: image-text
    datasets (`multimodal.shards.MMShardDataset` interface) with their weights; consumed_samples: samples of the
    whole run consumed so far."""

    def __init__(self, spec: ImageTextSpec, mm_sets: list, weights: list[float], consumed_samples: int = 0, *,
                 decode_threads: int = 2, decode_backend: str = "pillow") -> None:
        if not mm_sets:
            raise ValueError("image-text source: the stage names no image-text dataset")
        if len(weights) != len(mm_sets) or any(not w > 0 for w in weights):
            raise ValueError(f"image-text source: one positive weight per dataset ({len(mm_sets)}), got {weights}")
        if consumed_samples < spec.stage_start:
            raise ValueError(f"image-text source: consumed_samples={consumed_samples} is before the stage start "
                             f"({spec.stage_start})")
        self.spec, self.mm_sets, self.weights = spec, list(mm_sets), list(weights)
        self.decode_threads, self.decode_backend = decode_threads, decode_backend
        self.decode_stats = DecodeStats()
        self.skipped: Counter = Counter()
        self.cursor = 0  # samples of this stage consumed
        self.sampler = self._new_sampler()  # state at the cursor
        # drawn after the cursor: ((dataset, item, merged visual tokens), the sampler's state after the draw)
        self.ahead: list[tuple[tuple[int, int, int], dict]] = []
        self._replay(int(consumed_samples) - spec.stage_start)

    # ---- the stream ---------------------------------------------------------------------------------------------
    def _new_sampler(self) -> BlendSampler:
        names = [f"mm{i}" for i in range(len(self.mm_sets))]
        seed = (self.spec.seed * 1_000_003 + self.spec.stage_index * 1009 + 7) % (2 ** 62)
        return BlendSampler(BlendSchedule.constant(dict(zip(names, self.weights))),
                            {n: len(d) for n, d in zip(names, self.mm_sets)}, seed=seed)

    def _draw(self, sampler: BlendSampler) -> tuple[int, int, int]:
        """The next usable sample (dataset, item, merged visual tokens); skipped ones are counted."""
        sp = self.spec
        for _ in range(1000):
            name, idx = sampler.next()
            k = int(name[2:])
            h, w, _ = self.mm_sets[k].meta(idx)
            try:
                n_vis = mp.visual_tokens(h, w, patch_size=sp.patch_size, merge_size=sp.merge_size,
                                         min_pixels=sp.min_pixels, max_pixels=sp.max_pixels)[0]
            except ImageRejected as e:
                self._skip(mp.BAD_SIZE, k, idx, str(e))
                continue
            if n_vis > sp.visual_budget:
                self._skip(mp.OVER_BUDGET, k, idx, f"{n_vis} visual tokens, budget {sp.visual_budget}")
                continue
            return k, idx, n_vis
        raise RuntimeError(f"image-text source: 1000 draws in a row were skipped ({dict(self.skipped)}); raise "
                           "max_pixels / the visual budget or check the data")

    def _skip(self, reason: str, k: int, idx: int, detail: str) -> None:
        self.skipped[reason] += 1
        n = self.skipped[reason]
        if n <= 10 or n % 1000 == 0:
            log.warning("image-text source: sample %d of dataset %d skipped (%s, %d so far): %s", idx, k, reason, n,
                        detail)

    def _replay(self, samples: int) -> None:
        for _ in range(samples):
            self._draw(self.sampler)
        self.cursor = samples

    def _sample(self, j: int) -> tuple[int, int, int]:
        """The j-th sample after the cursor (drawn forward on a copy of the cursor's sampler as needed)."""
        while len(self.ahead) <= j:
            sampler = self._new_sampler()
            sampler.load_state_dict(self.ahead[-1][1] if self.ahead else self.sampler.state_dict())
            ref = self._draw(sampler)
            self.ahead.append((ref, sampler.state_dict()))
        return self.ahead[j][0]

    @property
    def consumed_samples(self) -> int:
        return self.spec.stage_start + self.cursor

    def plan_step(self, sl, ahead: int = 0) -> list[list[tuple[int, int, int]]]:
        """This rank's micro-batches of a step (`ahead` steps after the next one): per micro-batch its samples."""
        per_rank = sl.num_micro * sl.micro_batch_size
        first = ahead * sl.global_batch + sl.dp_rank * per_rank
        mine = [self._sample(first + i) for i in range(per_rank)]
        b = sl.micro_batch_size
        return [mine[m * b:(m + 1) * b] for m in range(sl.num_micro)]

    def advance(self, samples: int) -> None:
        samples = int(samples)
        if samples:
            self._sample(samples - 1)
            self.sampler.load_state_dict(self.ahead[samples - 1][1])
            self.ahead = self.ahead[samples:]
        self.cursor += samples

    def state_dict(self) -> dict:
        return {"kind": "image_text", "stage_index": self.spec.stage_index,
                "consumed_samples": self.consumed_samples, "sampler": copy.deepcopy(self.sampler.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "image_text" or int(state["stage_index"]) != self.spec.stage_index:
            raise ValueError("ImageTextSource.load_state_dict: not this stage's image-text state: "
                             f"{state.get('kind')}, "
                             f"stage {state.get('stage_index')}")
        self.sampler = self._new_sampler()
        self.sampler.load_state_dict(state["sampler"])
        self.cursor, self.ahead = int(state["consumed_samples"]) - self.spec.stage_start, []

    # ---- micro-batches ------------------------------------------------------------------------------------------
    def materialize(self, plan: list[list[tuple[int, int, int]]]) -> list[dict]:
        """Reads and decodes the micro-batches of `plan_step` (see the module docstring). Pure: safe in a thread."""
        sp = self.spec
        refs = [r for micro in plan for r in micro]
        records = [self.mm_sets[k][i] for k, i, _ in refs]
        from omni_mega.data.images import decode_and_pack

        packed, kept_idx, _ = decode_and_pack([rec.image for rec in records], patch_size=sp.patch_size,
                                              merge_size=sp.merge_size, temporal_patch_size=sp.temporal_patch_size,
                                              min_pixels=sp.min_pixels, max_pixels=sp.max_pixels,
                                              num_threads=self.decode_threads, backend=self.decode_backend,
                                              stats=self.decode_stats, expect_tokens=[v for _, _, v in refs])
        kept = set(kept_idx.tolist())
        rows, row, k = {}, 0, 0  # sample -> (first patch row, patches, grid) in the packed buffer
        for j in range(len(refs)):
            if j in kept:
                grid = packed.grid_thw[k]
                n = int(grid.prod())
                rows[j], row, k = (row, n, grid), row + n, k + 1
        out, j = [], 0
        for micro in plan:
            out.append(self._micro(packed, rows, records[j:j + len(micro)], range(j, j + len(micro)), micro))
            j += len(micro)
        return out

    def _micro(self, packed, rows: dict, records: list, idx: range, refs: list) -> dict:
        sp = self.spec
        m = sp.merge_size
        per_patch = sp.temporal_patch_size * 3 * sp.patch_size ** 2
        pixels, grids, texts, lengths, mask = [], [], [], [], []
        for j, rec in zip(idx, records):
            if j in rows:
                r, n, grid = rows[j]
                pixels.append(packed.pixel_values[r:r + n])
                grids.append(grid.to(torch.int64))
                mask.append(1.0)
            else:  # rejected at decode time: a zero merge block keeps the row; the losses leave it out
                pixels.append(torch.zeros(m * m, per_patch))
                grids.append(torch.tensor([1, m, m], dtype=torch.int64))
                mask.append(0.0)
            tokens = np.asarray(rec.tokens[: sp.max_text], dtype=np.int64)
            texts.append(tokens)
            lengths.append(len(tokens))
        width = max(lengths) + 1
        text = torch.zeros(len(records), width, dtype=torch.int64)
        text[:, 0] = sp.eod
        for i, t in enumerate(texts):
            text[i, 1:1 + len(t)] = torch.from_numpy(t)
        grid_thw = torch.stack(grids)
        contiguous = all(j in rows for j in idx) and all(rows[b][0] == rows[a][0] + rows[a][1]
                                                         for a, b in zip(idx, idx[1:]))
        pixel_values = (packed.pixel_values[rows[idx[0]][0]:rows[idx[-1]][0] + rows[idx[-1]][1]] if contiguous
                        else torch.cat(pixels))
        kept = [v for v, ok in zip(refs, mask) if ok]
        stats = {"images": int(sum(mask)), "text_tokens": int(sum(lengths)),
                 "rejected_images": int(len(mask) - sum(mask)),
                 "visual_tokens": int(sum(v for _, _, v in kept))}
        return {"pixel_values": pixel_values, "grid_thw": grid_thw, "text": text,
                "text_lengths": torch.tensor(lengths, dtype=torch.int64),
                "text_keys": torch.tensor([caption_key(t) for t in texts], dtype=torch.int64),
                "sample_mask": torch.tensor(mask, dtype=torch.float32), "stats": stats}

    def step_metrics(self, stats: dict[str, int]) -> dict:
        """metrics.jsonl fields of a step from its micro-batches' `stats` summed over data-parallel ranks."""
        return {k: int(stats.get(k, 0)) for k in STAT_KEYS}


def caption_key(tokens: np.ndarray) -> int:
    """A 63-bit hash of a caption's token ids (equal captions, equal keys): the contrastive loss counts samples
    with the same caption as positives of each other."""
    import hashlib

    digest = hashlib.blake2b(np.ascontiguousarray(tokens, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def build_image_text_source(plan, model, data_dir, consumed_samples: int, *, decode_threads: int = 2):
    """The `ImageTextSource` of stage `plan` (a `config.plan.StagePlan` whose mix holds only image-text datasets)."""
    from omni_mega.data.readers import open_mm_dataset, special_ids, tokenizer_of

    mix = list(plan.mix)
    bad = [d.name for d in mix if not d.multimodal]
    if bad or model.vit is None:
        raise ValueError(f"stage {plan.name!r}: objective {plan.objective} reads image-text datasets with a vision "
                         f"model; {'datasets ' + str(bad) + ' are not image-text' if bad else 'model.vit is not set'}")
    eod, _ = special_ids([tokenizer_of(d, data_dir) for d in mix], [d.name for d in mix])
    vit = model.vit
    max_text = model.contrastive.max_text_length if getattr(model, "contrastive", None) else plan.seq_length
    spec = ImageTextSpec(stage_index=plan.index, stage_start=plan.samples_before, seed=plan.seed,
                         eod=0 if eod is None else eod, max_text=max_text, patch_size=vit.patch_size,
                         merge_size=vit.merge_size, temporal_patch_size=vit.temporal_patch_size,
                         min_pixels=plan.min_pixels, max_pixels=plan.max_pixels, visual_budget=plan.visual_budget)
    return ImageTextSource(spec, [open_mm_dataset(d, data_dir) for d in mix], [d.weight for d in mix],
                           consumed_samples, decode_threads=decode_threads)
