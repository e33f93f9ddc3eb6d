"""Data for audio in LLM packs and for the stages that train one part alone (`objective: ctc | rvq | talker |
classify`), on the same stream of packs as every other stage (`pack_stream.PackStream`: windows, best-fit-decreasing
packing, data-parallel dealing, exact resume state).

Each dataset is wrapped in an item view that sizes its samples from the index (`sample_size(i)` -> (positions,
visual) or a counted skip reason), so a "pack" of `seq_length` positions is measured in what the part computes on:
- `AudioTextItems` (LLM packs, kind "audio"): `[AUD] * n + SEP + transcript + EOD`, n = the clip's pooled encoder
  frames (`model.audio.llm_tokens`), like an image and its caption;
- `ClipItems` (ctc / rvq / talker): a clip's encoder frames (ctc), codec frames (rvq), or transcript + BOS + codec
  frames (talker);
- `ImageItems` (classify): an image's patches, with its merged visual tokens as the visual load.
`TaskSource` (a `PackedSource`) turns a step's packs into the part's micro-batches: log-mel frames of the clips
(`audio_features`, `audio_cu_seqlens`), CTC targets, conditioning text, or packed images with class labels.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from omni_mega.config.plan import StagePlan
from omni_mega.config.model import AudioConfig, ModelConfig
from omni_mega.data import packing as mp
from omni_mega.data.audio.features import clip_features, mel_frames
from omni_mega.data.packed_source import STAT_KEYS, PackedSource

TASK_OBJECTIVES = ("ctc", "rvq", "talker", "classify")
OVER_PACK, TOO_SHORT, UNKNOWN_LABEL = "over_pack", "too_short", "unknown_label"
TRANSCRIPT_OVER_FRAMES = "transcript_over_frames"  # CTC cannot emit more labels than frames


class _Items:
    """A dataset seen through its index: `len`, `ds[i]`, `meta`, `text`, `tokenizer` delegate to it."""

    sample_kind = "item"

    def __init__(self, ds) -> None:
        self.ds = ds
        self.tokenizer = getattr(ds, "tokenizer", None)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds[i]

    def meta(self, i: int):
        return self.ds.meta(i)

    def text(self, i: int) -> str:
        return self.ds.text(i)

    def describe(self, i: int) -> str:
        return f"{self.sample_kind} item {i}: index entry {self.ds.meta(i)}"


class AudioTextItems(_Items):
    """Audio-transcript samples in LLM packs (kind "audio")."""

    sample_kind = "audio"

    def __init__(self, ds, audio: AudioConfig, seq_length: int) -> None:
        super().__init__(ds)
        self.audio, self.seq_length = audio, seq_length

    def tokens_of(self, i: int) -> int:
        rate, samples, _ = self.ds.meta(i)
        return self.audio.llm_tokens(mel_frames(rate, samples))

    def sample_size(self, i: int):
        n = self.tokens_of(i)
        if n + 1 > self.seq_length:
            return OVER_PACK
        return mp.mm_positions(n, self.ds.meta(i)[2], self.seq_length), 0

    def llm_tokens(self, s: mp.SampleRef, rec, spec) -> np.ndarray:
        """int64 `[AUD] * n + [SEP] + transcript + [EOD]` truncated to the pack."""
        n = self.tokens_of(s.index)
        if mp.mm_positions(n, len(rec.tokens), spec.seq_length) != s.positions:
            raise ValueError(f"audio sample {rec.key} (dataset {s.dataset}, item {s.index}) has {len(rec.tokens)} "
                             "transcript tokens, which disagrees with the length in its index")
        return mp.mm_sample_tokens(n, rec.tokens, image_token_id=self.audio.audio_token_id, sep=spec.sep,
                                   eod=spec.eod, seq_length=spec.seq_length)


class ClipItems(_Items):
    """Clips for ctc (encoder frames), rvq (codec frames) or talker (text + BOS + codec frames)."""

    def __init__(self, ds, task: str, model: ModelConfig, seq_length: int) -> None:
        super().__init__(ds)
        self.sample_kind, self.model, self.seq_length = task, model, seq_length

    def sample_size(self, i: int):
        rate, samples, ntok = self.ds.meta(i)
        mel = mel_frames(rate, samples)
        if self.sample_kind == "ctc":
            n = self.model.audio.encoder_frames(mel)
            if mel < 1:
                return TOO_SHORT
            if ntok > n:
                return TRANSCRIPT_OVER_FRAMES
        else:
            frames = self.model.codec.frames(mel)
            if frames < 1:
                return TOO_SHORT
            n = frames if self.sample_kind == "rvq" else ntok + frames + 1
            if self.sample_kind == "talker" and n > self.model.talker.max_positions:
                return OVER_PACK
        return (n, 0) if n <= self.seq_length else OVER_PACK


class ImageItems(_Items):
    """Labelled images for classify: positions = patches, visual = merged tokens; the text is the label."""

    sample_kind = "cls"

    def __init__(self, ds, labels: list[str], plan: StagePlan, model: ModelConfig) -> None:
        super().__init__(ds)
        self.labels = {name: k for k, name in enumerate(labels)}
        self.plan, self.vit = plan, model.vit

    def label(self, i: int) -> int | None:
        return self.labels.get(self.ds.text(i).strip())

    def sample_size(self, i: int):
        if self.label(i) is None:
            return UNKNOWN_LABEL
        h, w, _ = self.ds.meta(i)
        try:
            n_vis, _, _ = mp.visual_tokens(h, w, patch_size=self.vit.patch_size, merge_size=self.vit.merge_size,
                                           min_pixels=self.plan.min_pixels, max_pixels=self.plan.max_pixels)
        except mp.ImageRejected:
            return mp.BAD_SIZE
        patches = n_vis * self.vit.merge_size ** 2
        if patches > self.plan.seq_length or n_vis > self.plan.visual_budget:
            return OVER_PACK
        return patches, n_vis

    def describe(self, i: int) -> str:
        return f"image {i} ({self.ds.meta(i)[:2]}), label {self.ds.text(i).strip()!r} (known: {list(self.labels)})"


class TaskSource(PackedSource):
    """The micro-batches of a part-training stage: every sample of a micro-batch's packs, in pack order.

    ctc: audio_features [F, n_mels], audio_cu_seqlens int32 [N + 1], targets int64 [sum L], target_lengths int64 [N]
    rvq: audio_features, audio_cu_seqlens
    talker: audio_features, audio_cu_seqlens, text int64 [sum L], text_cu_seqlens int32 [N + 1]
    classify: pixel_values, grid_thw, class_labels int64 [N]
    and `stats` (STAT_KEYS) as every source."""

    def __init__(self, task: str, n_mels: int, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.task, self.n_mels = task, n_mels

    def materialize(self, plan: list) -> list[dict]:
        out = []
        for micro in plan:
            samples = [s for pack in micro for s in pack]
            mb = self._images_batch(samples) if self.task == "classify" else self._clips_batch(samples)
            stats = [self.pack_stats(pack) for pack in micro]
            mb["stats"] = {k: sum(st[k] for st in stats) for k in STAT_KEYS}
            out.append(mb)
        return out

    def _clips_batch(self, samples: list) -> dict:
        return clips_batch(self.task, [self.mm_sets[s.dataset][s.index] for s in samples], self.n_mels)

    def _images_batch(self, samples: list) -> dict:
        sp = self.spec
        return images_batch([self.mm_sets[s.dataset][s.index].image for s in samples],
                            [self.mm_sets[s.dataset].label(s.index) for s in samples], sp,
                            threads=self.decode_threads, backend=self.decode_backend, stats=self.decode_stats)


def clips_batch(task: str, records: list, n_mels: int) -> dict:
    """The micro-batch of a ctc / rvq / talker stage over audio records (AudioTextRecord), in order."""
    feats, cu = clip_features([r.audio for r in records], n_mels)
    mb = {"audio_features": feats, "audio_cu_seqlens": cu}
    tokens = [torch.as_tensor(np.asarray(r.tokens, dtype=np.int64)) for r in records]
    lengths = torch.tensor([len(t) for t in tokens], dtype=torch.int64)
    if task == "ctc":
        mb["targets"], mb["target_lengths"] = torch.cat(tokens), lengths
    elif task == "talker":
        mb["text"] = torch.cat(tokens)
        mb["text_cu_seqlens"] = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
    return mb


def images_batch(images: list[bytes], labels: list[int], sp, *, threads: int = 2, backend: str = "pillow",
                 stats=None) -> dict:
    """The micro-batch of a classify stage: images decoded and packed at the stage's resolution bounds, and the
    labels of the images that decoded (a rejected image leaves with its label; DecodeStats counts it)."""
    from omni_mega.data.images import decode_and_pack

    packed, kept, _ = decode_and_pack(images, patch_size=sp.patch_size, merge_size=sp.merge_size,
                                      temporal_patch_size=sp.temporal_patch_size, min_pixels=sp.min_pixels,
                                      max_pixels=sp.max_pixels, num_threads=threads, backend=backend, stats=stats)
    return {"pixel_values": packed.pixel_values, "grid_thw": packed.grid_thw,
            "class_labels": torch.tensor([labels[i] for i in kept.tolist()], dtype=torch.int64)}


def task_mels(task: str, model: ModelConfig) -> int:
    """Log-mel bins the task's part reads: the audio encoder's (ctc) or the codec's (rvq, talker)."""
    part = model.audio if task == "ctc" else model.codec if task in ("rvq", "talker") else None
    return part.n_mels if part is not None else 80


def task_items(task: str, ds, plan: StagePlan, model: ModelConfig):
    """A part-training stage's item view of dataset `ds`."""
    if task == "classify":
        return ImageItems(ds, list(model.classifier.labels), plan, model)
    if getattr(ds, "modality", None) != "audio":
        raise ValueError(f"stage {plan.name!r}: objective {task} reads audio datasets (demo_audio, audio_shards)")
    return ClipItems(ds, task, model, plan.seq_length)


def heldout_dataset(plan: StagePlan, data_dir: str | Path):
    """The held-out split a part-training stage scores on: `eval.heldout`, else the built-in demo's held-out split
    of the stage's first dataset (demo_audio, demo_shapes); None when neither exists."""
    path = plan.cfg.eval.heldout
    source = plan.mix[0].source
    if path is None and source == "demo_audio":
        from omni_mega.data.demo.speech import build_demo_speech

        path = build_demo_speech(data_dir)["heldout"]
    elif path is None and source == "demo_shapes":
        from omni_mega.data.demo.shapes import build_demo_shapes

        path = build_demo_shapes(data_dir)["heldout"]
    if path is None:
        return None
    if plan.objective == "classify":
        from omni_mega.data.multimodal.shards import MMShardDataset

        return MMShardDataset(path)
    from omni_mega.data.audio.shards import AudioShardDataset

    return AudioShardDataset(path)


def build_task_source(plan: StagePlan, model: ModelConfig, data_dir: str | Path, consumed_samples: int, *,
                      decode_threads: int = 2) -> TaskSource:
    """The source of a part-training stage (`plan.objective` in TASK_OBJECTIVES): its datasets as item views, one
    pack = `seq_length` positions of the part (encoder frames, codec frames, talker positions, image patches)."""
    from omni_mega.config.model import ConnectorConfig, ViTConfig
    from omni_mega.data.pack_stream import PackingSpec
    from omni_mega.data.readers import open_mm_dataset

    task = plan.objective
    items = [task_items(task, open_mm_dataset(d, Path(data_dir)), plan, model) for d in plan.mix]
    vit, conn = model.vit or ViTConfig(), model.connector or ConnectorConfig()
    n_mels = task_mels(task, model)
    spec = PackingSpec(
        seq_length=plan.seq_length, visual_budget=plan.visual_budget, pack_window=plan.pack_window,
        ratio_start=1.0, ratio_end=1.0, stage_packs=plan.samples, stage_start=plan.samples_before,
        stage_index=plan.index, seed=plan.seed, image_token_id=conn.image_token_id, eod=None, sep=0,
        patch_size=vit.patch_size, merge_size=vit.merge_size, temporal_patch_size=vit.temporal_patch_size,
        min_pixels=plan.min_pixels, max_pixels=plan.max_pixels, multimodal_metrics=False, n_mels=n_mels)
    return TaskSource(task, n_mels, spec, [], [], items, [d.weight for d in plan.mix], consumed_samples,
                      decode_threads=decode_threads)


def wrap_audio(mm_sets: list, model: ModelConfig, plan: StagePlan) -> list:
    """LLM packs: audio datasets become `AudioTextItems` (needs model.audio); other datasets stay as they are."""
    out = []
    for d, ds in zip([d for d in plan.mix if d.structured], mm_sets):
        if getattr(ds, "modality", None) == "audio":
            if model.audio is None:
                raise ValueError(f"stage {plan.name!r}: dataset {d.name!r} holds audio and the model has no audio "
                                 "encoder (model.audio)")
            ds = AudioTextItems(ds, model.audio, plan.seq_length)
        out.append(ds)
    return out


def heldout_batches(plan: StagePlan, model: ModelConfig, data_dir: str | Path, *, limit: int,
                    per_batch: int = 16) -> tuple[list[dict], object] | None:
    """(micro-batches of the first `limit` held-out items that fit the stage's packs, the held-out dataset), in the
    stage's micro-batch format; None when the stage has no held-out split (`heldout_dataset`)."""
    ds = heldout_dataset(plan, data_dir)
    if ds is None:
        return None
    items = task_items(plan.objective, ds, plan, model)
    keep = [i for i in range(len(items)) if not isinstance(items.sample_size(i), str)][:limit]
    if not keep:
        raise ValueError(f"stage {plan.name!r}: no held-out item of {ds.path} fits the stage's packs")
    out = []
    for a in range(0, len(keep), per_batch):
        idx = keep[a:a + per_batch]
        if plan.objective == "classify":
            from omni_mega.config.model import ViTConfig

            vit = model.vit or ViTConfig()
            sp = SimpleNamespace(patch_size=vit.patch_size, merge_size=vit.merge_size,
                                 temporal_patch_size=vit.temporal_patch_size, min_pixels=plan.min_pixels,
                                 max_pixels=plan.max_pixels)
            out.append(images_batch([ds[i].image for i in idx], [items.label(i) for i in idx], sp, threads=1))
        else:
            out.append(clips_batch(plan.objective, [ds[i] for i in idx], task_mels(plan.objective, model)))
    return out, ds
