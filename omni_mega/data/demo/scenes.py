"""Built-in image-text demo data, made on first use with Pillow (nothing downloaded), in the real shard format.

Two kinds of samples, half each, byte-level tokens (`omni_mega.data.demo.text`: ids 0..255 = bytes, EOD = 256):
- text lines: a run of words from `pydoc_data.topics` rendered in dark ink on a light background; the caption is
  the text (an OCR-style task);
- shape scenes: one or two shapes from a small vocabulary (circle, square, triangle x seven colours) placed left to
  right on a light background; the caption names them in that order ("a red circle and a blue square"), so a tiny
  model can visibly learn them within a few CPU minutes.

Images are 28-112 px high and at most 224 px wide (1-2 to 4x8 merged visual tokens at patch 14, merge 2), PNG.
Every sample comes from a generator seeded by (split, index): the same Pillow version gives the same bytes.
`build_demo_data` writes both splits into a temporary directory and renames it into place, so two ranks calling it
at once are safe (the loser of the rename discards its copy) and an interrupted build leaves nothing that looks done.
"""

from __future__ import annotations

import functools
import io
import os
import random
import shutil
import uuid
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from omni_mega.data.multimodal.shards import BYTE_TOKENIZER, MMShardWriter
from omni_mega.data.shard_io import DATASET_JSON

VERSION = 1  # bump when the generated samples change, so cached copies are rebuilt
NUM_TRAIN, NUM_HELDOUT = 3000, 16
SHARD_SIZE = 1000
SEED = 20260
MAX_WIDTH = 224
COLOURS = {"red": (220, 30, 30), "green": (30, 150, 40), "blue": (30, 60, 220), "yellow": (235, 200, 0),
           "orange": (245, 125, 0), "purple": (140, 40, 180), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")


@functools.cache
def _words() -> tuple[str, ...]:
    """ASCII words of pydoc_data.topics (at most 12 characters), in corpus order."""
    from pydoc_data.topics import topics

    words = " ".join(topics[k] for k in sorted(topics)).split()
    return tuple(w for w in words if w.isascii() and w.isprintable() and len(w) <= 12)


@functools.cache
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's embedded font (FreeType), no system fonts needed


def text_line_sample(rng: random.Random) -> tuple[Image.Image, str]:
    """A line of 1-5 topic words rendered dark on light; returns (RGB image, the text)."""
    height = rng.choice((28, 42, 56))
    font = _font(int(height * rng.uniform(0.5, 0.62)))
    words = _words()
    start = rng.randrange(len(words) - 8)
    text = words[start]
    for w in words[start + 1 : start + rng.randint(1, 5)]:
        if font.getlength(f"{text} {w}") > MAX_WIDTH - 12:
            break
        text = f"{text} {w}"
    while font.getlength(text) > MAX_WIDTH - 12:  # a single long word in a big font
        text = text[:-1]
    width = max(28, min(MAX_WIDTH, int(font.getlength(text)) + rng.randint(8, 16)))  # >= one merged patch
    bg = tuple(rng.randint(215, 255) for _ in range(3))
    ink = tuple(rng.randint(0, 70) for _ in range(3))
    img = Image.new("RGB", (width, height), bg)
    left, top, _, bottom = font.getbbox(text)
    y = (height - (bottom + top)) // 2  # vertically centred on the glyphs' box
    ImageDraw.Draw(img).text((rng.randint(3, max(3, width - int(font.getlength(text)) - 3)), y), text, fill=ink,
                             font=font)
    return img, text


def shape_scene_sample(rng: random.Random) -> tuple[Image.Image, str]:
    """One or two coloured shapes left to right; returns (RGB image, caption naming them in that order)."""
    img, objects = shape_scene(rng)
    return img, caption(objects)


def caption(objects: list[tuple[str, str]]) -> str:
    """'a red square and an orange circle' for [(colour, shape), ...]."""
    return " and ".join(f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}" for colour, shape in objects)


def shape_scene(rng: random.Random, n: int | None = None) -> tuple[Image.Image, list[tuple[str, str]]]:
    """One or two coloured shapes left to right (`n` of them when given); returns (RGB image, [(colour, shape)] left
    to right)."""
    n = rng.choice((1, 2)) if n is None else n
    height = rng.choice((56, 84, 112))
    width = rng.choice([w for w in (56, 84, 112, 140, 168, 196, 224) if w >= n * height * 0.8])
    img = Image.new("RGB", (width, height), tuple(rng.randint(225, 255) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    cell = width / n
    names = []
    for k in range(n):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        size = rng.uniform(0.55, 0.85) * min(cell, height)
        cx = cell * k + cell / 2 + rng.uniform(-0.08, 0.08) * cell
        cy = height / 2 + rng.uniform(-0.1, 0.1) * height
        box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
        names.append((colour, shape))
    return img, names


def make_sample(split: str, index: int) -> tuple[bytes, str, int, int, str]:
    """(PNG bytes, caption, height, width, kind) of sample `index` of `split`; kinds alternate by index."""
    rng = random.Random((SEED + (split == "heldout")) * 1_000_003 + index)
    kind = "text_line" if index % 2 == 0 else "shape_scene"
    img, caption = (text_line_sample if kind == "text_line" else shape_scene_sample)(rng)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue(), caption, img.height, img.width, kind


def _write_split(out_dir: Path, split: str, n: int) -> None:
    kinds: dict[str, int] = {}
    with MMShardWriter(out_dir, dict(BYTE_TOKENIZER), shard_size=SHARD_SIZE) as writer:
        for i in range(n):
            png, caption, h, w, kind = make_sample(split, i)
            kinds[kind] = kinds.get(kind, 0) + 1
            writer.add(png, list(caption.encode("utf-8")), height=h, width=w, text=caption, meta={"kind": kind})
        writer.finish(source=f"omni_mega.data.demo.scenes v{VERSION} ({split})", kinds=kinds,
                      bad_input={"counts": {}, "first": {}})


def write_shape_scenes(out_dir: str | Path, n: int, *, seed: int, objects: int | None = None) -> Path:
    """An `MMShardDataset` directory of `n` shape scenes alone (byte-tokenized captions; `objects` shapes each, or
    one or two): the image-text data of the contrastive objective's learning test."""
    rng = random.Random(seed)
    with MMShardWriter(Path(out_dir), dict(BYTE_TOKENIZER), shard_size=SHARD_SIZE) as writer:
        for _ in range(n):
            img, objs = shape_scene(rng, objects)
            buf = io.BytesIO()
            img.save(buf, "PNG")
            text = caption(objs)
            writer.add(buf.getvalue(), list(text.encode("utf-8")), height=img.height, width=img.width, text=text,
                       meta={"kind": "shape_scene"})
        writer.finish(source=f"omni_mega.data.demo.scenes shape scenes (seed {seed})", kinds={"shape_scene": n},
                      bad_input={"counts": {}, "first": {}})
    return Path(out_dir)


def _complete(root: Path) -> bool:
    return all((root / split / DATASET_JSON).is_file() for split in ("train", "heldout"))


def build_demo_data(data_dir: str | Path, *, num_train: int = NUM_TRAIN,
                    num_heldout: int = NUM_HELDOUT) -> dict[str, Path]:
    """Builds the demo image-text data under `data_dir` once (a few seconds) and returns
    {"train": dir, "heldout": dir}, both `MMShardDataset` directories. Later calls return the cached copy.
    Non-default sizes (for tests) get their own directory."""
    name = f"demo_mm_v{VERSION}"
    if (num_train, num_heldout) != (NUM_TRAIN, NUM_HELDOUT):
        name += f"_{num_train}_{num_heldout}"
    root = Path(data_dir) / name
    paths = {"train": root / "train", "heldout": root / "heldout"}
    if _complete(root):
        return paths
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(data_dir) / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_split(tmp / "train", "train", num_train)
        _write_split(tmp / "heldout", "heldout", num_heldout)
        try:
            os.rename(tmp, root)  # atomic; fails when another process renamed its copy first
        except OSError:
            if not _complete(root):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
