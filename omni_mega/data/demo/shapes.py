"""Built-in labelled images for `objective: classify` (the μOmni vision stage on CPU): one shape per image (circle,
square or triangle, the label) in a random colour, size and place on a light background, 56 x 56 pixels (2 x 2
merged visual tokens at patch 14), drawn with Pillow (nothing downloaded) into image-text shards whose text is the
label. Built once per data dir, atomically, as the other demo data."""

from __future__ import annotations

import io
import os
import random
import shutil
import uuid
from pathlib import Path

from PIL import Image, ImageDraw

from omni_mega.data.demo.scenes import COLOURS, SHAPES
from omni_mega.data.multimodal.shards import BYTE_TOKENIZER, MMShardWriter
from omni_mega.data.shard_io import DATASET_JSON

VERSION = 1
NUM_TRAIN, NUM_HELDOUT = 1200, 96
SEED = 7_2026
SIDE = 56
LABELS = SHAPES  # the classifier's labels, in order


def make_sample(split: str, index: int) -> tuple[bytes, str]:
    """(PNG bytes, label) of image `index` of `split`."""
    rng = random.Random((SEED + (split == "heldout")) * 1_000_003 + index)
    shape, colour = LABELS[index % len(LABELS)], rng.choice(sorted(COLOURS))
    img = Image.new("RGB", (SIDE, SIDE), tuple(rng.randint(225, 255) for _ in range(3)))
    size = rng.uniform(0.45, 0.85) * SIDE
    cx, cy = (rng.uniform(size / 2, SIDE - size / 2) for _ in range(2))
    box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=COLOURS[colour])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue(), shape


def _write_split(out_dir: Path, split: str, n: int) -> None:
    with MMShardWriter(out_dir, dict(BYTE_TOKENIZER), shard_size=1000) as writer:
        for i in range(n):
            png, label = make_sample(split, i)
            writer.add(png, list(label.encode()), height=SIDE, width=SIDE, text=label)
        writer.finish(source=f"omni_mega.data.demo.shapes v{VERSION} ({split})", labels=list(LABELS),
                      bad_input={"counts": {}, "first": {}})


def build_demo_shapes(data_dir: str | Path, *, num_train: int = NUM_TRAIN,
                      num_heldout: int = NUM_HELDOUT) -> dict[str, Path]:
    """{"train": dir, "heldout": dir} of labelled shape images (`MMShardDataset` directories), built once."""
    name = f"demo_shapes_v{VERSION}"
    if (num_train, num_heldout) != (NUM_TRAIN, NUM_HELDOUT):
        name += f"_{num_train}_{num_heldout}"
    root = Path(data_dir) / name
    paths = {"train": root / "train", "heldout": root / "heldout"}
    if all((p / DATASET_JSON).is_file() for p in paths.values()):
        return paths
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(data_dir) / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_split(tmp / "train", "train", num_train)
        _write_split(tmp / "heldout", "heldout", num_heldout)
        try:
            os.rename(tmp, root)
        except OSError:
            if not all((p / DATASET_JSON).is_file() for p in paths.values()):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
