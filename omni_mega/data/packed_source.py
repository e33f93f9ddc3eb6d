"""`PackedSource`: a stage's micro-batches, for every model and every mix (text, image-text, or both).

The stream of packs (what is drawn, packed and where the stage stands) is `pack_stream.PackStream`; this module
turns one optimizer step of it into this rank's micro-batches. A step takes the next `global_batch_size` packs and
deals them to data-parallel ranks evenly by visual tokens (`packing.assign_to_ranks`); a rank's packs form
`num_micro` micro-batches of `micro_batch_size` packs each, laid end to end as one packed sequence.

Planning (`plan_step`, sizes only, cheap, in stream order) is apart from materialising (`materialize`: reading
tokens, decoding, resizing and packing images; a pure function of the plan, safe in a background thread), so
`prefetch.Prefetcher` can prepare the next steps while the current one trains, and the batches are the same bytes
either way. All images of a rank's step go through one `images.decode_and_pack` call: decode in a thread pool, one
batched resize into a flat buffer, and `pack_images` reading that buffer without a copy; each micro-batch's
`pixel_values` is a view of the packed result (its images are contiguous). An image rejected at decode time (or whose
decoded size disagrees with the index that planned its pack) turns its sample's span into padding; every other
sample keeps its place.

Micro-batch dict (all CPU): tokens / labels int64 [1, T], loss_mask float32 [1, T] (0 on padding and wherever the
input or the label is a placeholder or another no-loss id), position_ids int64 [1, T] (restarting per sample),
cu_seqlens int32 [n + 1], max_seqlen int, T = micro_batch_size x seq_length; pixel_values float32
[patches, 3 * tps * p * p] and grid_thw int64 [images, 3] when it holds images; `stats` (python ints, `STAT_KEYS`).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

import numpy as np
import torch

from omni_mega.data import packing as mp
from omni_mega.data.conversations.shards import IMAGE_MARK
from omni_mega.data.images import DecodeStats
from omni_mega.data.pack_stream import PackingSpec, PackStream

STAT_KEYS = ("text_tokens", "visual_tokens", "pad_tokens", "mm_samples", "text_samples", "rejected_images",
             "mm_tokens", "capacity", "supervised_tokens", "images")


class PackedSource:
    """The `data.source.BatchSource` of a stage. text_sets / mm_sets: the readers' datasets with their weights
    (relative within the modality); consumed_samples: packs of the whole run consumed so far."""

    def __init__(self, spec: PackingSpec, text_sets: list, text_weights: list[float], mm_sets: list,
                 mm_weights: list[float], consumed_samples: int = 0, *, decode_threads: int = 2,
                 decode_backend: str = "pillow") -> None:
        self.stream = PackStream(spec, text_sets, text_weights, mm_sets, mm_weights, consumed_samples)
        self.spec, self.text_sets, self.mm_sets = spec, list(text_sets), list(mm_sets)
        self.decode_threads, self.decode_backend = decode_threads, decode_backend
        self.decode_stats = DecodeStats()  # every decode this rank did (this process)
        self.totals: Counter = Counter()  # STAT_KEYS summed over the packs this process consumed (all ranks')

    # ---- the stream ---------------------------------------------------------------------------------------------
    @property
    def consumed_samples(self) -> int:
        return self.stream.consumed_samples

    @property
    def skipped(self) -> Counter:
        return self.stream.skipped

    def pack_at(self, p: int) -> list[mp.SampleRef]:
        return self.stream.pack_at(p)

    def step_packs(self, global_batch: int, ahead: int = 0) -> list[list[mp.SampleRef]]:
        """The packs of the step `ahead` steps after the next one (sizes only), in stream order."""
        first = self.stream.cursor + ahead * global_batch
        return [self.stream.pack_at(first + i) for i in range(global_batch)]

    def plan_step(self, sl, ahead: int = 0) -> list[list[list[mp.SampleRef]]]:
        """This rank's micro-batches of a step (`ahead` steps after the next one): per micro-batch, its packs."""
        if sl.seq_length != self.spec.seq_length:
            raise ValueError(f"StepSlice.seq_length={sl.seq_length} but the source packs {self.spec.seq_length}")
        packs = self.step_packs(sl.global_batch, ahead)
        per_rank = sl.num_micro * sl.micro_batch_size
        mine = mp.assign_to_ranks([sum(s.visual for s in p) for p in packs], sl.dp, per_rank)[sl.dp_rank]
        b = sl.micro_batch_size
        return [[packs[i] for i in mine[m * b:(m + 1) * b]] for m in range(sl.num_micro)]

    def advance(self, samples: int) -> None:
        for p in range(self.stream.cursor, self.stream.cursor + int(samples)):
            self.totals.update(self.pack_stats(self.stream.pack_at(p)))
        self.stream.advance(samples)

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    # ---- micro-batches ------------------------------------------------------------------------------------------
    def micro_batches(self, sl) -> Iterator[dict]:
        """This rank's `sl.num_micro` micro-batches of the next step (no prefetching)."""
        yield from self.materialize(self.plan_step(sl))

    def materialize(self, plan: list[list[list[mp.SampleRef]]]) -> list[dict]:
        """Reads and decodes the micro-batches of `plan_step` (see the module docstring for their tensors)."""
        samples = [s for micro in plan for pack in micro for s in pack if s.kind != "text"]
        records = [self.mm_sets[s.dataset][s.index] for s in samples]
        wanted = [self._images(s, rec) for s, rec in zip(samples, records)]  # (bytes, visual tokens) per image
        packed, kept = self._decode([b for w in wanted for b, _ in w], [v for w in wanted for _, v in w])
        rows = _image_rows(packed, kept)  # (first patch row, patches) of each kept image, None for a rejected one
        it, per_sample = iter(zip(kept, rows)), {}
        for s, rec, w in zip(samples, records, wanted):
            got = [next(it) for _ in w]
            ok = all(k for k, _ in got)  # a sample shows all its images or is left out (padding)
            per_image = [v for _, v in w][:len(getattr(rec, "images", [rec]))]  # a conversation's images, once each
            per_sample[id(s)] = (rec, per_image, ok, [r for _, r in got] if ok else [])
        out = []
        for micro in plan:
            parts = [self._assemble(pack, per_sample) for pack in micro]
            mb = _concat([p for p, _ in parts])
            used = [r for _, r in parts for r in r]
            if used:
                mb["pixel_values"], mb["grid_thw"] = _take_images(packed, used)
            clips = [per_sample[id(s)][0].audio for pack in micro for s in pack if s.kind == "audio"]
            if clips:  # the clips' log-mel frames, in placeholder order
                from omni_mega.data.audio.features import clip_features

                mb["audio_features"], mb["audio_cu_seqlens"] = clip_features(clips, self.spec.n_mels)
            out.append(mb)
        return out

    def _images(self, s: mp.SampleRef, rec) -> list[tuple[bytes, int]]:
        """The images a sample shows, in placeholder order, with the merged visual tokens each must give: a
        caption's one image; every image of a conversation once per sequence (each sequence is its own segment)."""
        if s.kind == "audio":
            return []
        if s.kind == "mm":
            return [(rec.image, s.visual)]
        per_image = _visual_per_image(s.visual, len(rec.sequences), rec, self.spec)
        return [(img, v) for _ in rec.sequences for img, v in zip(rec.images, per_image)]

    def materialize_pack(self, pack: list[mp.SampleRef]) -> dict:
        """One pack alone as a micro-batch."""
        return self.materialize([[pack]])[0]

    def _decode(self, images: list[bytes], visual: list[int]):
        """(PackedImages over the kept images, kept flag per image) for a step's images, in order."""
        if not images:
            return None, []
        from omni_mega.data.images import decode_and_pack

        sp = self.spec
        packed, kept_idx, _ = decode_and_pack(images, patch_size=sp.patch_size, merge_size=sp.merge_size,
                                              temporal_patch_size=sp.temporal_patch_size, min_pixels=sp.min_pixels,
                                              max_pixels=sp.max_pixels, num_threads=self.decode_threads,
                                              backend=self.decode_backend, stats=self.decode_stats,
                                              expect_tokens=visual)
        kept = np.zeros(len(images), dtype=bool)
        kept[kept_idx.numpy()] = True
        return packed, kept.tolist()

    def _assemble(self, pack: list[mp.SampleRef], per_sample: dict) -> tuple[dict, list]:
        """One pack's tensors, and the packed-image rows its placeholders show, in order. A sample whose image was rejected at decode time
        (any one, for a conversation) keeps its place as padding. Preference pairs add `pairs` (int64 [P, 2]: the
        segments of chosen and rejected) and `pair_ids` (int64 [P, 2]: dataset and item, for reference log-probs)."""
        sp = self.spec
        seqs, lengths, targets, kept, used, pairs, pair_ids = [], [], [], [], [], [], []
        for s in pack:
            if s.kind == "text":
                seqs.append(mp.text_sample_tokens(self.text_sets[s.dataset].tokens(s.index),
                                                  seq_length=sp.seq_length))
                lengths.append(s.positions), targets.append(None), kept.append(s)
                continue
            rec, per_image, ok, rows = per_sample[id(s)]
            if not ok:  # its span becomes padding; every other sample keeps its place
                seqs.append(None), lengths.append(s.positions), targets.append(None)
                continue
            kept.append(s)
            used += rows
            if s.kind == "mm":
                seqs.append(self._mm_tokens(s, rec)), lengths.append(s.positions), targets.append(None)
                continue
            if s.kind == "audio":  # [AUD] * n + SEP + transcript + EOD, as a caption after its image
                seqs.append(self.mm_sets[s.dataset].llm_tokens(s, rec, sp)), lengths.append(s.positions)
                targets.append(None)
                continue
            if len(rec.sequences) == 2:
                pairs.append([len(seqs), len(seqs) + 1])
                pair_ids.append([s.dataset, s.index])
            for q in rec.sequences:
                tokens, target = mp.conv_sequence_tokens(q.ids, q.mask, per_image, image_mark=IMAGE_MARK,
                                                         image_token_id=sp.image_token_id)
                seqs.append(tokens), lengths.append(len(tokens) - 1), targets.append(target)
        out = mp.layout_pack(seqs, lengths, sp.seq_length, (sp.image_token_id,) + tuple(sp.no_loss_ids),
                             target_masks=targets)
        out["stats"] = self.pack_stats(kept, len(pack))
        out["stats"]["supervised_tokens"] = int(out["loss_mask"].sum())
        out["stats"]["images"] = len(used)
        if pairs:
            out["pairs"], out["pair_ids"] = torch.tensor(pairs), torch.tensor(pair_ids)
        return out, used

    def _mm_tokens(self, s: mp.SampleRef, rec) -> np.ndarray:
        sp = self.spec
        if mp.mm_positions(s.visual, len(rec.tokens), sp.seq_length) != s.positions:
            raise ValueError(f"image-text sample {rec.key} (dataset {s.dataset}, item {s.index}) has "
                             f"{len(rec.tokens)} caption tokens, which disagrees with the length in its index")
        return mp.mm_sample_tokens(s.visual, rec.tokens, image_token_id=sp.image_token_id, sep=sp.sep, eod=sp.eod,
                                   seq_length=sp.seq_length)

    # ---- statistics ---------------------------------------------------------------------------------------------
    def pack_stats(self, kept: list[mp.SampleRef], n_samples: int | None = None) -> dict[str, int]:
        """STAT_KEYS of one pack from its samples' sizes; `kept`: the samples whose span holds tokens (all but those
        whose image was rejected at decode time), `n_samples`: all of the pack's samples (default: len(kept))."""
        rejected = (len(kept) if n_samples is None else n_samples) - len(kept)
        visual = sum(s.visual for s in kept)
        used = sum(s.positions for s in kept)
        return {"text_tokens": used - visual, "visual_tokens": visual, "pad_tokens": self.spec.seq_length - used,
                "mm_samples": sum(s.kind != "text" for s in kept), "text_samples": sum(s.kind == "text" for s in kept),
                "rejected_images": rejected, "mm_tokens": sum(s.positions for s in kept if s.kind != "text"),
                "capacity": self.spec.seq_length, "supervised_tokens": 0, "images": 0}

    def step_metrics(self, st: dict[str, int]) -> dict:
        """metrics.jsonl fields of one step from its packs' STAT_KEYS summed over micro-batches and data-parallel
        ranks; call before `advance` (the ratio target is the one the step's packs were drawn for)."""
        target = self.spec.ratio_at(self.stream.cursor / max(self.spec.stage_packs, 1))
        return step_record(st, target if self.spec.multimodal_metrics else None)

    def packing_efficiency(self) -> float:
        """Non-pad positions / capacity over the packs consumed so far by this process (0.0 before the first)."""
        t = self.totals
        return (t["capacity"] - t["pad_tokens"]) / t["capacity"] if t["capacity"] else 0.0

    def multimodal_share(self) -> float:
        """Positions of image-text samples / non-pad positions over the packs consumed so far by this process."""
        non_pad = self.totals["capacity"] - self.totals["pad_tokens"]
        return self.totals["mm_tokens"] / non_pad if non_pad else 0.0


def step_record(st: dict[str, int], mm_target: float | None) -> dict:
    """metrics.jsonl fields from a step's STAT_KEYS; the image-text fields only for a multimodal model
    (`mm_target` not None: the multimodal token share the step's packs were drawn for)."""
    non_pad = st["capacity"] - st["pad_tokens"]
    rec = {"packing_efficiency": non_pad / max(st["capacity"], 1), "text_tokens": st["text_tokens"],
           "pad_tokens": st["pad_tokens"], "text_samples": st["text_samples"],
           "supervised_tokens": st.get("supervised_tokens", 0)}
    if mm_target is not None:
        rec.update({"mm_ratio_target": mm_target, "mm_ratio": st["mm_tokens"] / max(non_pad, 1),
                    "visual_tokens": st["visual_tokens"], "images": st.get("images", st["mm_samples"]),
                    "rejected_images": st["rejected_images"]})
    return rec


def _visual_per_image(visual: int, n_seqs: int, rec, spec: PackingSpec) -> list[int]:
    """Merged visual tokens of each image of a conversation sample at the stage's resolution (from the sizes its
    index recorded: the same numbers that planned the pack)."""
    per_image = [mp.visual_tokens(h, w, patch_size=spec.patch_size, merge_size=spec.merge_size,
                                  min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)[0]
                 for h, w in rec.meta["images"]]
    if sum(per_image) * n_seqs != visual:
        raise ValueError(f"conversation sample {rec.key}: its images give {sum(per_image) * n_seqs} visual tokens, "
                         f"its index planned {visual}")
    return per_image


def _image_rows(packed, kept: list[bool]) -> list[tuple[int, int] | None]:
    """(first patch row, patch count, image index) in `packed` of each decoded image, None where it was rejected."""
    out, row, k = [], 0, 0
    for ok in kept:
        if not ok:
            out.append(None)
            continue
        n = int(packed.grid_thw[k].prod())
        out.append((row, n, k))
        row, k = row + n, k + 1
    return out


def _take_images(packed, rows: list[tuple[int, int, int]]):
    """pixel_values and grid_thw of the images `rows` names, in order: a view of the packed buffer when they sit
    back to back (always, unless a conversation lost one of its images), else a copy of the rows needed."""
    first, last = rows[0], rows[-1]
    grid = torch.stack([packed.grid_thw[k] for _, _, k in rows])
    if all(b[0] == a[0] + a[1] and b[2] == a[2] + 1 for a, b in zip(rows, rows[1:])):
        return packed.pixel_values[first[0]:last[0] + last[1]], grid
    return torch.cat([packed.pixel_values[r:r + n] for r, n, _ in rows]), grid


def _concat(packs: list[dict]) -> dict:
    """Packs laid end to end as one packed sequence: segments (cu_seqlens) shifted, positions kept per sample."""
    if len(packs) == 1:
        return packs[0]
    cu, at = [torch.zeros(1, dtype=torch.int32)], 0
    for p in packs:
        cu.append(p["cu_seqlens"][1:] + at)
        at += int(p["tokens"].shape[1])
    out = {k: torch.cat([p[k] for p in packs], dim=1) for k in ("tokens", "labels", "loss_mask", "position_ids")}
    out["cu_seqlens"] = torch.cat(cu)
    out["max_seqlen"] = max(p["max_seqlen"] for p in packs)
    out["stats"] = {k: sum(p["stats"][k] for p in packs) for k in STAT_KEYS}
    pairs, segments = [], 0
    for p in packs:  # pair segment indices move by the segments of the packs before
        if "pairs" in p:
            pairs.append((p["pairs"] + segments, p["pair_ids"]))
        segments += len(p["cu_seqlens"]) - 1
    if pairs:
        out["pairs"], out["pair_ids"] = torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs])
    return out
