"""`PackedMultimodalSource`: the trainer's `BatchSource` for stages whose model has a ViT (built by
`omni_mega.data.multimodal.build_multimodal_source`).

One "sample" for the trainer is one PACK: a micro-batch of exactly `seq_length` positions (micro_batch_size 1)
holding whole image-text and text samples back to back (THD with `cu_seqlens`). The stream of packs of a stage:

1. Windows. Window w draws `pack_window` samples. Sample j is image-text or text by a token-share rule: a running
   deficit `sum(r * positions) - mm positions` (over the stage so far) picks image-text while it is >= 0, where
   r = the stage's multimodal ratio at the current stage progress (ramping linearly from `multimodal_ratio` to
   `multimodal_ratio_end`; progress = packs before the window + positions drawn in it / S, over the stage's packs).
   Inside a modality, datasets are chosen by weight and items by epoch permutations (`BlendSampler`). Sizes come
   from the index (image height/width, caption length): nothing is decoded to plan.
2. Packing. A window's samples go into packs by best-fit decreasing with a per-pack visual-token budget
   (`mm_packing.best_fit_decreasing`); the samples of the least-filled pack are carried into the next window's
   pool (at most once each), and the packs are shuffled (generator seeded by seed, stage, window).
   An image-text sample whose visual tokens alone exceed the budget or the pack is skipped when drawn (counted in
   `skipped`, logged; the next draw takes its place); text and captions longer than a pack are truncated.
3. Steps. A step takes the next `global_batch_size` packs and deals them to data-parallel ranks evenly by visual
   tokens (`mm_packing.assign_to_ranks`); each rank decodes only its packs' images (Pillow threads) and packs them
   with `omni_mega.ops.pack_images`. An image rejected at decode time turns its sample's span into padding.

Determinism and resume: a window is a pure function of (seed, stage index, window index) and the snapshot taken at
its start (sampler counts/credits, token deficit, carried samples, packs before it). `state_dict()` saves the
snapshot of the window holding the next pack plus the pack count, so a new process restored from it yields exactly
the batches an uninterrupted run would. Without a state, a source built at `consumed_samples` replays the stage's windows from the
stage start (sizes only) to reach the same place.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from omni_mega.data import mm_packing as mp
from omni_mega.data.blend import BlendSchedule
from omni_mega.data.images import DecodeStats, ImageRejected, decode_images
from omni_mega.data.sampler import BlendSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MMPackingSpec:
    """How one stage's packs are drawn and built (everything besides the datasets)."""

    seq_length: int  # S: positions per pack
    visual_budget: int  # merged visual tokens per pack at most
    pack_window: int  # samples drawn and packed together
    ratio_start: float  # multimodal token share at the stage start
    ratio_end: float  # ... at the stage end (linear ramp over stage progress)
    stage_packs: int  # packs in the stage (steps * global batch): the ramp's length
    stage_start: int = 0  # packs of the run before this stage (consumed_samples at the stage start)
    stage_index: int = 0
    seed: int = 1234
    image_token_id: int = -200
    eod: int = 256
    sep: int = 10
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280

    def ratio_at(self, progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        return self.ratio_start + (self.ratio_end - self.ratio_start) * p


@dataclass
class _Window:
    start: dict  # snapshot at its start: {"window", "start_pack", "text", "mm", "deficit", "carry"}
    end: dict  # snapshot at its end (= the next window's start)
    packs: list  # list[list[SampleRef]]

    @property
    def start_pack(self) -> int:
        return int(self.start["start_pack"])

    @property
    def end_pack(self) -> int:
        return int(self.end["start_pack"])


class PackedMultimodalSource:
    """BatchSource over image-text datasets (MMShardDataset interface) and text documents (mm_datasets.TextDocs).

    text_sets / mm_sets: datasets with their weights (relative within the modality); spec: MMPackingSpec;
    consumed_samples: packs of the whole run consumed so far. `micro_batches` yields the contract's dicts."""

    def __init__(self, spec: MMPackingSpec, text_sets: list, text_weights: list[float], mm_sets: list,
                 mm_weights: list[float], consumed_samples: int = 0, *, decode_threads: int = 2,
                 decode_backend: str = "pillow") -> None:
        if not text_sets and not mm_sets:
            raise ValueError("PackedMultimodalSource: no datasets (text_sets and mm_sets are both empty)")
        if consumed_samples < spec.stage_start:
            raise ValueError(f"PackedMultimodalSource: consumed_samples={consumed_samples} is before the stage "
                             f"start (stage_start={spec.stage_start} packs)")
        for kind, sets, w in (("text", text_sets, text_weights), ("mm", mm_sets, mm_weights)):
            if len(sets) != len(w) or any(not x > 0 for x in w):
                raise ValueError(f"PackedMultimodalSource: {kind}_weights must hold one positive weight per dataset "
                                 f"({len(sets)}), got {list(w)}")
        self.spec, self.text_sets, self.mm_sets = spec, list(text_sets), list(mm_sets)
        self.weights = {"text": list(text_weights), "mm": list(mm_weights)}
        self.decode_threads, self.decode_backend = decode_threads, decode_backend
        self.consumed_samples = int(consumed_samples)
        self.skipped: Counter = Counter()  # reason -> samples skipped when drawn (this process; see mm_packing)
        self.decode_stats = DecodeStats()  # every decode this rank did (this process)
        self._start_snap = {"window": 0, "start_pack": 0, "text": None, "mm": None, "deficit": 0.0, "carry": []}
        self._wins: list[_Window] = []
        self._nonpad = self._capacity = self._mm_positions = 0

    # ---- window drawing (sizes only) ------------------------------------------------------------------------------
    def _sampler(self, kind: str, state: dict | None) -> BlendSampler | None:
        sets = self.text_sets if kind == "text" else self.mm_sets
        if not sets:
            return None
        names = [f"{kind}{i}" for i in range(len(sets))]
        seed = (self.spec.seed * 1_000_003 + self.spec.stage_index * 1009 + (kind == "mm")) % (2**62)
        s = BlendSampler(BlendSchedule.constant(dict(zip(names, self.weights[kind]))),
                         {n: len(d) for n, d in zip(names, sets)}, seed=seed)
        if state is not None:
            s.load_state_dict(state)
        return s

    def _pick_mm(self, ratio: float, deficit: float) -> bool:
        if not self.mm_sets or ratio <= 0.0:
            return False
        return not self.text_sets or ratio >= 1.0 or deficit >= 0.0

    def _draw_mm(self, sampler: BlendSampler, order: int) -> mp.SampleRef | str:
        name, idx = sampler.next()
        k = int(name[2:])
        h, w, cap = self.mm_sets[k].meta(idx)
        sp = self.spec
        try:
            n_vis, _, _ = mp.visual_tokens(h, w, patch_size=sp.patch_size, merge_size=sp.merge_size,
                                           min_pixels=sp.min_pixels, max_pixels=sp.max_pixels)
        except ImageRejected as e:
            return self._skip(mp.BAD_SIZE, k, idx, str(e))
        reason = mp.mm_skip_reason(n_vis, sp.visual_budget, sp.seq_length)
        if reason is not None:
            return self._skip(reason, k, idx, f"{n_vis} visual tokens for a {h}x{w} image; budget "
                                              f"{sp.visual_budget}, pack {sp.seq_length}")
        return mp.SampleRef("mm", k, idx, mp.mm_positions(n_vis, int(cap), sp.seq_length), n_vis, order)

    def _skip(self, reason: str, k: int, idx: int, detail: str) -> str:
        self.skipped[reason] += 1
        n = self.skipped[reason]
        if n <= 10 or n % 1000 == 0:  # the first ten of each reason, then every thousandth (with the count)
            log.warning("multimodal packing: image-text sample %d of dataset %d skipped (%s, %d so far): %s", idx,
                        k, reason, n, detail)
        return reason

    def _build(self, snap: dict) -> _Window:
        """Draws and packs window snap["window"] from its start snapshot (a pure function of the snapshot)."""
        sp, S = self.spec, self.spec.seq_length
        samplers = {"text": self._sampler("text", snap["text"]), "mm": self._sampler("mm", snap["mm"])}
        carry = snap.get("carry") or []
        refs = [mp.SampleRef(k, d, i, n, v, j - len(carry), True) for j, (k, d, i, n, v) in enumerate(carry)]
        deficit, drawn = float(snap["deficit"]), 0
        for j in range(sp.pack_window):
            ratio = sp.ratio_at((snap["start_pack"] + drawn / S) / max(sp.stage_packs, 1))
            if self._pick_mm(ratio, deficit):
                ref = self._draw_mm(samplers["mm"], j)
            else:
                name, idx = samplers["text"].next()
                k = int(name[4:])
                n = min(self.text_sets[k].num_tokens(idx) - 1, S)
                ref = mp.SampleRef("text", k, idx, n, 0, j) if n >= 1 else mp.EMPTY_SAMPLE
                if n < 1:  # an empty document: nothing to predict
                    self.skipped[mp.EMPTY_SAMPLE] += 1
            if isinstance(ref, str):
                continue
            deficit += ratio * ref.positions - (ref.positions if ref.kind == "mm" else 0)
            drawn += ref.positions
            refs.append(ref)
        packs = mp.best_fit_decreasing(refs, S, sp.visual_budget)
        # The least-filled pack (BFD's last) goes back into the next window's pool, once per sample: without it
        # each window ends on a part-filled pack (tiny_omni's long_context stage, S=512, 64-sample windows: 93%).
        carry = []
        if packs and sum(s.positions for s in packs[-1]) < S and not any(s.carried for s in packs[-1]):
            carry = [[s.kind, s.dataset, s.index, s.positions, s.visual] for s in packs.pop()]
        # BFD returns packs fullest first, which groups text packs (truncated documents fill a pack) apart from
        # image-text ones; a seeded shuffle spreads both modalities and the visual work over the window's steps.
        perm = np.random.default_rng((sp.seed, sp.stage_index, int(snap["window"]))).permutation(len(packs))
        packs = [packs[i] for i in perm]
        end = {"window": int(snap["window"]) + 1, "start_pack": int(snap["start_pack"]) + len(packs),
               "text": samplers["text"].state_dict() if samplers["text"] else None,
               "mm": samplers["mm"].state_dict() if samplers["mm"] else None, "deficit": deficit, "carry": carry}
        return _Window(snap, end, packs)

    def _pack_at(self, p: int) -> list[mp.SampleRef]:
        """The p-th pack of the stage (building windows forward as needed)."""
        if p < int(self._start_snap["start_pack"]):
            raise ValueError(f"multimodal packing: pack {p} of the stage is before the source's position "
                             f"(window {self._start_snap['window']} starts at pack {self._start_snap['start_pack']})")
        if not self._wins:  # invariant: self._wins[0].start is self._start_snap
            self._wins = [self._build(self._start_snap)]
        empty = 0
        while self._wins[-1].end_pack <= p:
            self._wins.append(self._build(self._wins[-1].end))
            empty = empty + 1 if not self._wins[-1].packs else 0
            if empty >= 8:
                raise RuntimeError(f"multimodal packing: 8 windows in a row gave no pack (skipped so far: "
                                   f"{dict(self.skipped)}); raise max_pixels/visual budget or check the data")
        for w in self._wins:
            if w.start_pack <= p < w.end_pack:
                return w.packs[p - w.start_pack]
        raise AssertionError("unreachable: windows cover p")

    @property
    def cursor(self) -> int:
        """Packs of this stage consumed so far."""
        return self.consumed_samples - self.spec.stage_start

    def _trim(self) -> None:
        # Drop windows wholly before the cursor; their end snapshot becomes the replay start.
        while self._wins and self._wins[0].end_pack <= self.cursor and len(self._wins) > 1:
            self._start_snap = self._wins[0].end
            self._wins.pop(0)

    # ---- BatchSource --------------------------------------------------------------------------------------------
    def step_packs(self, global_batch: int) -> list[list[mp.SampleRef]]:
        """The next step's packs (sizes only), in stream order."""
        return [self._pack_at(self.cursor + i) for i in range(global_batch)]

    def micro_batches(self, sl) -> Iterator[dict]:
        """This rank's `sl.num_micro` packs of the next step as the contract's dicts (see `materialize`)."""
        if sl.micro_batch_size != 1:
            raise ValueError(f"multimodal batches need micro_batch_size == 1 (one pack each), got "
                             f"{sl.micro_batch_size}")
        if sl.seq_length != self.spec.seq_length:
            raise ValueError(f"StepSlice.seq_length={sl.seq_length} but the source packs {self.spec.seq_length}")
        packs = self.step_packs(sl.global_batch)
        ranks = mp.assign_to_ranks([sum(s.visual for s in p) for p in packs], sl.dp, sl.num_micro)
        mine = [packs[i] for i in ranks[sl.dp_rank]]
        for pack, decoded in zip(mine, self._decode(mine)):
            yield self._assemble(pack, decoded)

    def materialize(self, pack: list[mp.SampleRef]) -> dict:
        """Reads and decodes one pack: mm_packing.layout_pack's tensors, plus `pixel_values` float32
        [T, 3 * tps * p * p] and `grid_thw` int64 [N, 3] (images in placeholder order) when the pack holds images,
        and `stats` (python ints: text_tokens, visual_tokens, pad_tokens, mm_samples, text_samples,
        rejected_images, and mm_tokens = positions of the image-text samples)."""
        return self._assemble(pack, self._decode([pack])[0])

    def _decode(self, packs: list[list[mp.SampleRef]]) -> list[list[tuple]]:
        """Per pack, per image-text sample: (record, uint8 [H, W, 3] image or None when rejected). All images of
        the packs go through one decode_images call (one thread pool: starting one per pack cost ~10 ms/pack on the
        2-core dev machine)."""
        sp = self.spec
        mm = [(k, s) for k, p in enumerate(packs) for s in p if s.kind == "mm"]
        records = [self.mm_sets[s.dataset][s.index] for _, s in mm]
        images, _ = decode_images([r.image for r in records], patch_size=sp.patch_size, merge_size=sp.merge_size,
                                  min_pixels=sp.min_pixels, max_pixels=sp.max_pixels,
                                  num_threads=self.decode_threads, backend=self.decode_backend,
                                  stats=self.decode_stats)
        out: list[list[tuple]] = [[] for _ in packs]
        for (k, s), rec, im in zip(mm, records, images):
            out[k].append((rec, self._check_image(s, rec, im)))
        return out

    def _assemble(self, pack: list[mp.SampleRef], decoded: list[tuple]) -> dict:
        sp = self.spec
        seqs, kept, it = [], [], iter(decoded)
        for s in pack:
            if s.kind == "text":
                seqs.append(mp.text_sample_tokens(self.text_sets[s.dataset].tokens(s.index),
                                                  seq_length=sp.seq_length))
                continue
            rec, image = next(it)
            if image is None:
                seqs.append(None)  # its span becomes padding; every other sample keeps its place
            else:
                seqs.append(self._mm_tokens(s, rec))
                kept.append(image)
        out = mp.layout_pack(seqs, [s.positions for s in pack], sp.seq_length, sp.image_token_id)
        if kept:
            from omni_mega.ops import pack_images

            packed = pack_images(kept, patch_size=sp.patch_size, merge_size=sp.merge_size,
                                 temporal_patch_size=sp.temporal_patch_size, out_dtype=torch.float32)
            out["pixel_values"], out["grid_thw"] = packed.pixel_values, packed.grid_thw
        out["stats"] = self._pack_stats([s for s, q in zip(pack, seqs) if q is not None], len(pack))
        return out

    def _check_image(self, s: mp.SampleRef, rec, image: torch.Tensor | None) -> torch.Tensor | None:
        """The decoded image, or None when it was rejected or its size disagrees with the index (whose size
        planned the pack: a mismatch would put the wrong number of placeholders in it)."""
        if image is None:
            return None
        sp = self.spec
        factor = sp.patch_size * sp.merge_size
        n_vis = (image.shape[0] // factor) * (image.shape[1] // factor)
        if n_vis != s.visual:
            self.decode_stats.rejected["index_size_mismatch"] += 1
            log.warning("multimodal packing: image %s decodes to %d visual tokens but its index size gave %d: "
                        "sample becomes padding", getattr(rec, "key", s.index), n_vis, s.visual)
            return None
        return image

    def _mm_tokens(self, s: mp.SampleRef, rec) -> np.ndarray:
        sp = self.spec
        if mp.mm_positions(s.visual, len(rec.tokens), sp.seq_length) != s.positions:
            raise ValueError(f"image-text sample {rec.key} (dataset {s.dataset}, item {s.index}) has "
                             f"{len(rec.tokens)} caption tokens, which disagrees with the length in its index")
        return mp.mm_sample_tokens(s.visual, rec.tokens, image_token_id=sp.image_token_id, sep=sp.sep, eod=sp.eod,
                                   seq_length=sp.seq_length)

    def _pack_stats(self, kept: list[mp.SampleRef], n_samples: int) -> dict:
        """kept: the pack's samples whose span holds tokens (all but those with a rejected image)."""
        visual = sum(s.visual for s in kept)
        used = sum(s.positions for s in kept)
        return {"text_tokens": used - visual, "visual_tokens": visual, "pad_tokens": self.spec.seq_length - used,
                "mm_samples": sum(s.kind == "mm" for s in kept), "text_samples": sum(s.kind == "text" for s in kept),
                "rejected_images": n_samples - len(kept),
                "mm_tokens": sum(s.positions for s in kept if s.kind == "mm")}

    def advance(self, samples: int) -> None:
        for p in range(self.cursor, self.cursor + int(samples)):
            pack = self._pack_at(p)
            self._nonpad += sum(s.positions for s in pack)
            self._mm_positions += sum(s.positions for s in pack if s.kind == "mm")
            self._capacity += self.spec.seq_length
        self.consumed_samples += int(samples)
        self._trim()

    def packing_efficiency(self) -> float:
        """Non-pad positions / capacity over the packs consumed so far by this process (planned sizes; an image
        rejected at decode time is not subtracted). 0.0 before the first step."""
        return self._nonpad / self._capacity if self._capacity else 0.0

    def multimodal_share(self) -> float:
        """Positions of image-text samples / non-pad positions over the packs consumed so far by this process."""
        return self._mm_positions / self._nonpad if self._nonpad else 0.0

    def state_dict(self) -> dict:
        snap = self._start_snap  # the latest window start at or before the cursor: replaying from it is exact
        for w in self._wins:
            if w.end_pack <= self.cursor:
                snap = w.end
        return {"kind": "packed_multimodal", "stage_index": self.spec.stage_index,
                "consumed_samples": self.consumed_samples, "window": snap}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "packed_multimodal":
            raise ValueError(f"PackedMultimodalSource.load_state_dict: not a packed multimodal state: {sorted(state)}")
        if int(state["stage_index"]) != self.spec.stage_index:
            raise ValueError(f"PackedMultimodalSource.load_state_dict: state of stage {state['stage_index']}, "
                             f"source of stage {self.spec.stage_index}")
        consumed = int(state["consumed_samples"])
        if consumed < self.spec.stage_start or int(state["window"]["start_pack"]) > consumed - self.spec.stage_start:
            raise ValueError(f"PackedMultimodalSource.load_state_dict: inconsistent state {state}")
        self.consumed_samples = consumed
        self._start_snap, self._wins = dict(state["window"]), []
