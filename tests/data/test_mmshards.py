"""omni_mega.data.multimodal.shards: writer/reader round trip, WebDataset readability, atomic writes, damaged datasets."""

import io
import json
import multiprocessing
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from omni_mega.data.multimodal import shards as mmshards
from omni_mega.data.multimodal.shards import BYTE_TOKENIZER, MMShardDataset, MMShardWriter


def _samples(n, seed):
    """n fresh samples: real PNG/JPEG images of odd sizes, random token runs (one empty, one single), texts."""
    g = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(g.integers(1, 40)), int(g.integers(1, 70))
        img = Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, "PNG" if i % 2 else "JPEG")
        length = [0, 1][i] if i < 2 else int(g.integers(2, 300))
        tokens = g.integers(0, 2**31 - 1, length).astype(np.int32)
        out.append((buf.getvalue(), tokens, h, w, f"caption {i} ünïcödé {g.integers(1e9)}"))
    return out


def _write(out_dir, samples, shard_size):
    with MMShardWriter(out_dir, dict(BYTE_TOKENIZER), shard_size=shard_size) as w:
        for image, tokens, h, wd, text in samples:
            w.add(image, tokens, height=h, width=wd, text=text, meta={"note": text[:9]})
        w.finish(bad_input={"counts": {}, "first": {}}, extra_field=7)
    return out_dir


def test_round_trip_bytes_tokens_meta_order(tmp_path):
    samples = _samples(8, seed=int(np.random.SeedSequence().entropy % 2**32))
    _write(tmp_path / "ds", samples, shard_size=3)  # shards of 3, 3, 2
    ds = MMShardDataset(tmp_path / "ds")
    assert len(ds) == 8 and ds.tokenizer == BYTE_TOKENIZER and ds.info["extra_field"] == 7
    assert [s["samples"] for s in ds.info["shards"]] == [3, 3, 2]
    for i, (image, tokens, h, w, text) in enumerate(samples):
        rec = ds[i]
        assert rec.key == f"{i:08d}" and rec.image == image and rec.tokens.dtype == np.int32
        np.testing.assert_array_equal(rec.tokens, tokens)
        assert ds.meta(i) == (h, w, len(tokens)) and ds.text(i) == text
    assert ds[-1].image == samples[-1][0]
    np.testing.assert_array_equal(ds.num_tokens, [len(s[1]) for s in samples])
    np.testing.assert_array_equal(ds.heights, [s[2] for s in samples])
    for bad in (8, -9):
        with pytest.raises(IndexError, match="out of range"):
            ds[bad]


def test_shards_are_plain_webdataset_tars(tmp_path):
    samples = _samples(5, seed=3)
    _write(tmp_path / "ds", samples, shard_size=2)
    got = []
    for shard in sorted((tmp_path / "ds").glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            got += [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    assert [n for n, _ in got[:4]] == ["00000000.jpg", "00000000.ids", "00000000.txt", "00000000.json"]
    assert got[4][0] == "00000001.png" and len(got) == 20
    by_name = dict(got)
    for i, (image, tokens, h, w, text) in enumerate(samples):
        ext = "png" if i % 2 else "jpg"
        assert by_name[f"{i:08d}.{ext}"] == image
        assert by_name[f"{i:08d}.ids"] == tokens.astype("<i4").tobytes()  # int32 little-endian
        assert by_name[f"{i:08d}.txt"].decode() == text
        assert json.loads(by_name[f"{i:08d}.json"]) == {"height": h, "width": w, "num_tokens": len(tokens),
                                                        "note": text[:9]}


def test_same_input_gives_same_bytes_and_rewrite_drops_stale_shards(tmp_path):
    samples = _samples(7, seed=5)
    _write(tmp_path / "a", samples, shard_size=2)
    _write(tmp_path / "b", samples, shard_size=2)
    for name in sorted(os.listdir(tmp_path / "a")):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    _write(tmp_path / "a", samples[:3], shard_size=2)  # rewrite in place with fewer shards
    assert sorted(os.listdir(tmp_path / "a")) == ["dataset.json", "shard-00000.idx.npy", "shard-00000.tar",
                                                  "shard-00001.idx.npy", "shard-00001.tar"]
    assert len(MMShardDataset(tmp_path / "a")) == 3


def test_exception_inside_writer_leaves_nothing(tmp_path):
    out = tmp_path / "ds"
    _write(out, _samples(3, seed=1), shard_size=2)  # an older complete dataset in the same place
    with pytest.raises(RuntimeError, match="boom"):
        with MMShardWriter(out, dict(BYTE_TOKENIZER), shard_size=2) as w:
            for i, (image, tokens, h, wd, text) in enumerate(_samples(5, seed=2)):
                if i == 3:
                    raise RuntimeError("boom")
                w.add(image, tokens, height=h, width=wd, text=text)
    assert not (out / "dataset.json").exists() and not list(out.glob("*.tmp-*"))
    with pytest.raises(FileNotFoundError, match="interrupted"):
        MMShardDataset(out)


def _killed_writer(out):
    w = MMShardWriter(out, dict(BYTE_TOKENIZER), shard_size=2)
    for image, tokens, h, wd, text in _samples(5, seed=4):
        w.add(image, tokens, height=h, width=wd, text=text)
    os._exit(3)  # like SIGKILL before finish(): no cleanup at all


def test_killed_writer_leaves_only_temporaries(tmp_path):
    child = multiprocessing.get_context("fork").Process(target=_killed_writer, args=(tmp_path / "ds",))
    child.start()
    child.join(30)
    assert child.exitcode == 3
    names = os.listdir(tmp_path / "ds")
    assert names and all(".tmp-" in n for n in names)  # two finished shards and the open one, all temporary
    with pytest.raises(FileNotFoundError):
        MMShardDataset(tmp_path / "ds")


def test_damaged_dataset_is_refused(tmp_path):
    out = _write(tmp_path / "ds", _samples(4, seed=6), shard_size=4)
    tar = out / "shard-00000.tar"
    tar.write_bytes(tar.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        MMShardDataset(out)
    info = json.loads((out / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps({**info, "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        MMShardDataset(out)


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="shard_size must be >= 1, got 0"):
        MMShardWriter(tmp_path, dict(BYTE_TOKENIZER), shard_size=0)
    with pytest.raises(ValueError, match="tokenizer must name"):
        MMShardWriter(tmp_path, {"kind": "byte"})
    with MMShardWriter(tmp_path / "w", dict(BYTE_TOKENIZER)) as w:
        with pytest.raises(ValueError, match="1-D integer array, got float64"):
            w.add(b"x", np.ones(3), height=1, width=1)
        with pytest.raises(ValueError, match=r"positive, got \(0, 5\)"):
            w.add(b"x", [1], height=0, width=5)
        with pytest.raises(ValueError, match="key must be"):
            w.add(b"x", [1], height=1, width=1, key="a.b")


def _read_in_child(ds, conn):
    conn.send(ds[1].image)


def test_reads_after_fork(tmp_path):
    samples = _samples(3, seed=7)
    ds = MMShardDataset(_write(tmp_path / "ds", samples, shard_size=2))
    assert ds[0].image == samples[0][0]  # parent opened its descriptor first
    ctx = multiprocessing.get_context("fork")
    parent, child_end = ctx.Pipe()
    child = ctx.Process(target=_read_in_child, args=(ds, child_end))
    child.start()
    assert parent.recv() == samples[1][0]
    child.join(30)
    assert ds[2].image == samples[2][0]


def test_image_ext_from_magic():
    assert mmshards.image_ext(b"\x89PNG\r\n\x1a\nrest") == "png"
    assert mmshards.image_ext(b"\xff\xd8\xff\xe0") == "jpg"
    assert mmshards.image_ext(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert mmshards.image_ext(b"") == "img"
