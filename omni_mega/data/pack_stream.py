"""The stream of packs of one stage, by size only: what is drawn, how it is packed, where the stream stands.

One "sample" for the trainer is one PACK of exactly `seq_length` positions holding whole samples back to back (THD
with `cu_seqlens`): image-text samples, and text items (documents cut into pack-sized pieces by their reader).

1. Windows. Window w draws `pack_window` samples. Sample j is image-text or text by a token-share rule: a running
   deficit `sum(r * positions) - mm positions` (over the stage so far) picks image-text while it is >= 0, where
   r = the stage's multimodal ratio at the current stage progress (ramping linearly from `ratio_start` to
   `ratio_end`; progress = packs before the window + positions drawn in it / S, over the stage's packs).
   Inside a modality, datasets are chosen by weight and items by epoch permutations (`BlendSampler`). Sizes come
   from the index (image height/width, caption length, document length): nothing is read or decoded to plan.
2. Packing. A window's samples go into packs by best-fit decreasing with a per-pack visual-token budget
   (`packing.best_fit_decreasing`); the samples of the least-filled pack are carried into the next window's
   pool (at most once each), and the packs are shuffled (generator seeded by seed, stage, window).
   An image-text sample whose visual tokens alone exceed the budget or the pack is skipped when drawn (counted in
   `skipped`, logged; the next draw takes its place); an empty text item is skipped and counted the same way.

Determinism and resume: a window is a pure function of (seed, stage index, window index) and the snapshot taken at
its start (sampler counts/credits, token deficit, carried samples, packs before it). `state_dict()` saves the
snapshot of the window holding the next pack plus the pack count, so a new process restored from it yields exactly
the packs an uninterrupted run would. Without a state, a stream built at `consumed_samples` replays the stage's
windows from the stage start (sizes only) to reach the same place.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np

from omni_mega.config.plan import ramp
from omni_mega.data import packing as mp
from omni_mega.data.blend import BlendSchedule
from omni_mega.data.images.sizes import ImageRejected
from omni_mega.data.sampler import BlendSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackingSpec:
    """How one stage's packs are drawn and built (everything besides the datasets). `data.source.build_source`
    fills it from the stage plan and the model config: no field has a default of its own."""

    seq_length: int  # S: positions per pack
    visual_budget: int  # merged visual tokens per pack at most
    pack_window: int  # samples drawn and packed together
    ratio_start: float  # multimodal token share at the stage start
    ratio_end: float  # ... at the stage end (linear ramp over stage progress)
    stage_packs: int  # packs in the stage (steps * global batch): the ramp's length
    stage_start: int  # packs of the run before this stage (consumed_samples at the stage start)
    stage_index: int
    seed: int
    image_token_id: int  # one placeholder per merged visual token
    eod: int | None  # None: text items are used as stored (no EOD known)
    sep: int | None  # between an image's placeholders and its caption; None: no image-text samples possible
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int  # smart_resize bounds
    max_pixels: int
    no_loss_ids: tuple[int, ...] = ()  # more ids never predicted nor predicted from (e.g. VET indicator tokens)
    multimodal_metrics: bool = True  # report the image-text fields (mm_ratio, visual_tokens, ...) per step
    n_mels: int = 80  # log-mel bins of audio samples (model.audio.n_mels)

    def ratio_at(self, progress: float) -> float:
        return ramp(self.ratio_start, self.ratio_end, progress)


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


class PackStream:
    """The stage's packs (sizes only) over text items (`readers` TextDocs: `len`, `num_tokens(i)`) and image-text
    items (`meta(i)` -> (height, width, caption length)), with weights relative within each modality;
    consumed_samples: packs of the whole run consumed so far."""

    def __init__(self, spec: PackingSpec, text_sets: list, text_weights: list[float], mm_sets: list,
                 mm_weights: list[float], consumed_samples: int = 0) -> None:
        if not text_sets and not mm_sets:
            raise ValueError("packed source: no datasets (text_sets and mm_sets are both empty)")
        if consumed_samples < spec.stage_start:
            raise ValueError(f"packed source: consumed_samples={consumed_samples} is before the stage start "
                             f"(stage_start={spec.stage_start} packs)")
        if mm_sets and spec.sep is None:
            raise ValueError("packed source: image-text datasets need a separator id, and their tokenizer names no "
                             "'sep' and is not byte-level")
        for kind, sets, w in (("text", text_sets, text_weights), ("mm", mm_sets, mm_weights)):
            if len(sets) != len(w) or any(not x > 0 for x in w):
                raise ValueError(f"packed source: {kind}_weights must hold one positive weight per dataset "
                                 f"({len(sets)}), got {list(w)}")
        self.spec, self.text_sets, self.mm_sets = spec, list(text_sets), list(mm_sets)
        self.weights = {"text": list(text_weights), "mm": list(mm_weights)}
        self.consumed_samples = int(consumed_samples)
        self.skipped: Counter = Counter()  # reason -> samples skipped when drawn (this process; see packing)
        self._start_snap = {"window": 0, "start_pack": 0, "text": None, "mm": None, "deficit": 0.0, "carry": []}
        self._wins: list[_Window] = []

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
        if hasattr(self.mm_sets[k], "sample_size"):  # sized by its dataset: audio clips, items of part stages
            return self._draw_sized(k, idx, order)
        if getattr(self.mm_sets[k], "sequences_per_sample", None):  # conversations, pairs, prompts
            return self._draw_conv(k, idx, order)
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

    def _draw_conv(self, k: int, idx: int, order: int) -> mp.SampleRef | str:
        """A conversation sample (every sequence of it in this pack, side by side): its images sized at the stage's
        resolution from the index; skipped (counted) when they exceed the visual budget or it exceeds the pack."""
        sp = self.spec
        lengths, sizes = self.mm_sets[k].meta(idx)
        try:
            per_image = [mp.visual_tokens(h, w, patch_size=sp.patch_size, merge_size=sp.merge_size,
                                          min_pixels=sp.min_pixels, max_pixels=sp.max_pixels)[0] for h, w in sizes]
        except ImageRejected as e:
            return self._skip(mp.BAD_SIZE, k, idx, str(e))
        positions, visual = sum(mp.conv_positions(lengths, per_image)), sum(per_image) * len(lengths)
        if visual > sp.visual_budget or positions > sp.seq_length:
            return self._skip(mp.OVER_BUDGET if visual > sp.visual_budget else mp.OVER_PACK, k, idx,
                              f"{positions} positions with {visual} visual tokens; budget {sp.visual_budget}, pack "
                              f"{sp.seq_length}")
        return mp.SampleRef("conv", k, idx, positions, visual, order)

    def _draw_sized(self, k: int, idx: int, order: int) -> mp.SampleRef | str:
        """A sample whose dataset sizes it (`sample_size(i)` -> (positions, visual) or a skip reason, `sample_kind`,
        `describe(i)`): audio-text samples in LLM packs, and the clips and images of stages that train one part."""
        ds = self.mm_sets[k]
        size = ds.sample_size(idx)
        if isinstance(size, str):
            return self._skip(size, k, idx, ds.describe(idx))
        return mp.SampleRef(ds.sample_kind, k, idx, int(size[0]), int(size[1]), order)

    def _skip(self, reason: str, k: int, idx: int, detail: str) -> str:
        self.skipped[reason] += 1
        n = self.skipped[reason]
        if n <= 10 or n % 1000 == 0:  # the first ten of each reason, then every thousandth (with the count)
            log.warning("packing: sample %d of image-text/conversation dataset %d skipped (%s, %d so far): %s",
                        idx, k, reason, n, detail)
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
            deficit += ratio * ref.positions - (ref.positions if ref.kind != "text" else 0)
            drawn += ref.positions
            refs.append(ref)
        packs = mp.best_fit_decreasing(refs, S, sp.visual_budget)
        # The least-filled pack (BFD's last) goes back into the next window's pool, once per sample: without it
        # each window ends on a part-filled pack (tiny_omni's long_context stage, S=512, 64-sample windows: 93%).
        carry = []
        if packs and sum(s.positions for s in packs[-1]) < S and not any(s.carried for s in packs[-1]):
            carry = [[s.kind, s.dataset, s.index, s.positions, s.visual] for s in packs.pop()]
        # BFD returns packs fullest first, which groups text packs (document pieces fill a pack) apart from
        # image-text ones; a seeded shuffle spreads both modalities and the visual work over the window's steps.
        perm = np.random.default_rng((sp.seed, sp.stage_index, int(snap["window"]))).permutation(len(packs))
        packs = [packs[i] for i in perm]
        end = {"window": int(snap["window"]) + 1, "start_pack": int(snap["start_pack"]) + len(packs),
               "text": samplers["text"].state_dict() if samplers["text"] else None,
               "mm": samplers["mm"].state_dict() if samplers["mm"] else None, "deficit": deficit, "carry": carry}
        return _Window(snap, end, packs)

    def pack_at(self, p: int) -> list[mp.SampleRef]:
        """The p-th pack of the stage (building windows forward as needed)."""
        if p < int(self._start_snap["start_pack"]):
            raise ValueError(f"packing: pack {p} of the stage is before the source's position "
                             f"(window {self._start_snap['window']} starts at pack {self._start_snap['start_pack']})")
        if not self._wins:  # invariant: self._wins[0].start is self._start_snap
            self._wins = [self._build(self._start_snap)]
        empty = 0
        while self._wins[-1].end_pack <= p:
            self._wins.append(self._build(self._wins[-1].end))
            empty = empty + 1 if not self._wins[-1].packs else 0
            if empty >= 8:
                raise RuntimeError(f"packing: 8 windows in a row gave no pack (skipped so far: "
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

    def advance(self, samples: int) -> None:
        self.consumed_samples += int(samples)
        self._trim()

    def state_dict(self) -> dict:
        snap = self._start_snap  # the latest window start at or before the cursor: replaying from it is exact
        for w in self._wins:
            if w.end_pack <= self.cursor:
                snap = w.end
        return {"kind": "packed", "stage_index": self.spec.stage_index,
                "consumed_samples": self.consumed_samples, "window": snap}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") not in ("packed", "packed_multimodal"):
            raise ValueError(f"PackStream.load_state_dict: not a packed-source state: {sorted(state)}")
        if int(state["stage_index"]) != self.spec.stage_index:
            raise ValueError(f"PackStream.load_state_dict: state of stage {state['stage_index']}, "
                             f"source of stage {self.spec.stage_index}")
        consumed = int(state["consumed_samples"])
        if consumed < self.spec.stage_start or int(state["window"]["start_pack"]) > consumed - self.spec.stage_start:
            raise ValueError(f"PackStream.load_state_dict: inconsistent state {state}")
        self.consumed_samples = consumed
        self._start_snap, self._wins = dict(state["window"]), []
