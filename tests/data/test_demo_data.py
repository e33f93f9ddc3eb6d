"""omni_mega.data.demo.scenes: the built-in image-text data (content, determinism, caching, races, interrupted builds)."""

import multiprocessing
import os
import re

import numpy as np
import pytest

from omni_mega.data.demo import scenes as demo
from omni_mega.data.demo.scenes import build_demo_data
from omni_mega.data.images import decode_images
from omni_mega.data.multimodal.shards import BYTE_TOKENIZER, MMShardDataset

COLOUR = "|".join(demo.COLOURS)
SHAPE = "|".join(demo.SHAPES)
SHAPE_CAPTION = re.compile(rf"^(an? ({COLOUR}) ({SHAPE}))( and an? ({COLOUR}) ({SHAPE}))?$")


def _files(root):
    return {os.path.relpath(os.path.join(r, n), root): open(os.path.join(r, n), "rb").read()
            for r, _, names in os.walk(root) for n in names}


def test_default_build_content(tmp_path):
    paths = build_demo_data(tmp_path)
    assert set(paths) == {"train", "heldout"} and not [n for n in os.listdir(tmp_path) if "tmp" in n]
    train, heldout = MMShardDataset(paths["train"]), MMShardDataset(paths["heldout"])
    assert (len(train), len(heldout)) == (demo.NUM_TRAIN, demo.NUM_HELDOUT) == (3000, 16)
    assert train.tokenizer == heldout.tokenizer == BYTE_TOKENIZER
    assert train.info["kinds"] == {"text_line": 1500, "shape_scene": 1500} and len(train.info["shards"]) == 3
    assert 28 <= train.heights.min() and train.heights.max() <= 112
    assert 28 <= train.widths.min() and train.widths.max() <= 224
    words = set(demo._words())
    g = np.random.default_rng()
    picks = [(heldout, i) for i in range(16)] + [(train, int(i)) for i in g.choice(3000, 40, replace=False)]
    images, stats = decode_images([ds[i].image for ds, i in picks], backend="pillow", num_threads=1)
    assert stats.kept == len(picks) and not stats.rejected and not stats.converted  # plain RGB PNGs
    for (ds, i), img in zip(picks, images):
        rec, caption = ds[i], ds.text(i)
        assert rec.tokens.tolist() == list(caption.encode()) and 256 not in rec.tokens  # bytes, no EOD
        assert ds.meta(i)[:2] == (ds.heights[i], ds.widths[i]) and ds.meta(i)[2] == len(caption.encode())
        if i % 2:  # shape scenes: caption from the small vocabulary; image not blank
            assert SHAPE_CAPTION.match(caption), caption
            assert img.float().std() > 10
        else:  # text lines: words of the corpus, dark ink on a light background
            assert caption and set(caption.split()) <= words, caption
            assert img.float().mean() > 150 and img.min() < 100
    assert heldout[0].image != train[0].image and heldout.text(1) + heldout.text(3) != train.text(1) + train.text(3)


def test_deterministic_and_cached(tmp_path, monkeypatch):
    a = build_demo_data(tmp_path / "a", num_train=20, num_heldout=4)
    b = build_demo_data(tmp_path / "b", num_train=20, num_heldout=4)
    fa, fb = _files(a["train"].parent), _files(b["train"].parent)
    assert fa == fb and len(fa) == 6  # {train, heldout} x {dataset.json, 1 shard tar, 1 index}
    monkeypatch.setattr(demo, "make_sample", lambda *a: pytest.fail("cached data was rebuilt"))
    assert build_demo_data(tmp_path / "a", num_train=20, num_heldout=4) == a


def test_lost_rename_race_keeps_the_winner(tmp_path, monkeypatch):
    won = build_demo_data(tmp_path, num_train=6, num_heldout=2)
    before = _files(won["train"].parent)
    real, calls = demo._complete, []

    def late(root):  # the first completeness check misses the winner's copy: this call builds its own
        calls.append(root)
        return len(calls) > 1 and real(root)

    monkeypatch.setattr(demo, "_complete", late)
    assert build_demo_data(tmp_path, num_train=6, num_heldout=2) == won
    assert len(calls) == 2  # checked again after its rename failed
    assert _files(won["train"].parent) == before
    assert sorted(os.listdir(tmp_path)) == ["demo_mm_v1_6_2"]  # the loser's temporary copy is gone


def _build_in_child(data_dir, conn):
    conn.send({k: str(v) for k, v in build_demo_data(data_dir, num_train=30, num_heldout=2).items()})


def test_two_processes_build_at_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    pipes = [ctx.Pipe() for _ in range(2)]
    procs = [ctx.Process(target=_build_in_child, args=(tmp_path, child)) for _, child in pipes]
    for p in procs:
        p.start()
    results = [parent.recv() for parent, _ in pipes]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert results[0] == results[1] and os.listdir(tmp_path) == ["demo_mm_v1_30_2"]
    assert len(MMShardDataset(results[0]["train"])) == 30


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    real = demo.make_sample

    def failing(split, index):
        if index == 5:
            raise KeyboardInterrupt
        return real(split, index)

    monkeypatch.setattr(demo, "make_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        build_demo_data(tmp_path, num_train=8, num_heldout=2)
    assert os.listdir(tmp_path) == []
