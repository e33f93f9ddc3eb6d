"""tools/preprocess_mmdata.py (omni_mega/data/multimodal/preprocess.py): JSONL and folder inputs, every kind of bad input counted, survivors in order."""

import io
import json
import os
import runpy
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from omni_mega.data.multimodal.shards import MMShardDataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "preprocess_mmdata.py")


@pytest.fixture(scope="module")
def tool():
    from omni_mega.data.multimodal import preprocess as preprocess_mm

    return preprocess_mm


def _png_bytes(img, fmt="PNG"):
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _rgb(h, w, g):
    return Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _zero_width_png():
    """A PNG whose header declares width 0 (Pillow cannot write one)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", 0, 4, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _make_jsonl_input(d):
    """A JSONL file mixing good pairs (RGB and convertible images) with every kind of bad input.
    Returns (path, [(image bytes, text) of the good lines in order])."""
    g = np.random.default_rng()
    (d / "img").mkdir()
    files = {
        "rgb1.png": _png_bytes(_rgb(17, 33, g)), "rgb2.jpg": _png_bytes(_rgb(40, 9, g), "JPEG"),
        "gray.png": _png_bytes(Image.fromarray(g.integers(0, 256, (5, 7), dtype=np.uint8), "L")),
        "rgba.png": _png_bytes(Image.fromarray(g.integers(0, 256, (6, 6, 4), dtype=np.uint8), "RGBA")),
        "cmyk.jpg": _png_bytes(Image.fromarray(g.integers(0, 256, (8, 8, 4), dtype=np.uint8), "CMYK"), "JPEG"),
        "deep.png": _png_bytes(Image.fromarray(g.integers(0, 65535, (4, 9), dtype=np.uint16))),
        "noise.png": bytes(g.integers(0, 256, 300, dtype=np.uint8)),
        "zero.png": b"", "zerow.png": _zero_width_png(),
        "wide.png": _png_bytes(_rgb(1, 201, g)),
    }
    files["cut.png"] = _png_bytes(_rgb(64, 64, g))[:200]  # truncated pixel data
    for name, data in files.items():
        (d / "img" / name).write_bytes(data)
    (d / "img" / "adir.png").mkdir()  # exists but cannot be read as a file
    abs_rgb2 = str(d / "img" / "rgb2.jpg")
    lines = [
        (json.dumps({"image": "img/rgb1.png", "text": "first caption"}), "rgb1.png"),
        ('{"image": "img/rgb1.png", "text": "unterminated', "malformed JSON"),
        (json.dumps({"image": "img/gray.png", "text": "gray ünï"}), "gray.png"),
        (json.dumps({"image": "img/rgb1.png"}), "missing key"),
        (json.dumps({"image": "img/nothere.png", "text": "x"}), "missing image file"),
        (json.dumps({"image": "img/adir.png", "text": "x"}), "unreadable image file"),
        (json.dumps({"image": abs_rgb2, "text": "absolute path"}), "rgb2.jpg"),
        (json.dumps({"image": "img/noise.png", "text": "x"}), "image corrupt"),
        (json.dumps({"image": "img/cut.png", "text": "x"}), "image corrupt"),
        (json.dumps({"image": "img/zero.png", "text": "x"}), "image empty"),
        (json.dumps({"image": "img/zerow.png", "text": "x"}), "image zero_size"),
        (json.dumps({"image": "img/wide.png", "text": "x"}), "image extreme_aspect"),
        (json.dumps({"image": "img/rgba.png", "text": "   "}), "empty text"),
        (json.dumps({"image": "img/rgba.png", "text": "alpha"}), "rgba.png"),
        (json.dumps({"image": 5, "text": "x"}), "value not a string"),
        ('"just a string"', "malformed JSON"),
        (json.dumps({"image": "img/cmyk.jpg", "text": "cmyk"}), "cmyk.jpg"),
        (json.dumps({"image": "img/deep.png", "text": "sixteen bits"}), "deep.png"),
        (json.dumps({"image": "img/rgb1.png", "text": "last"}), "rgb1.png"),
    ]
    raw = [line.encode() for line, _ in lines]
    raw.insert(9, b"\xff\xfe not utf-8")  # line 10
    (d / "pairs.jsonl").write_bytes(b"\n".join(raw) + b"\n")
    good = [(files[name], json.loads(line)["text"]) for line, name in lines if name in files]
    return d / "pairs.jsonl", good


@pytest.mark.parametrize("workers", [1, 2])
def test_jsonl_bad_input_counted_survivors_in_order(tmp_path, tool, monkeypatch, workers):
    monkeypatch.setattr(tool, "JOB_ITEMS", 3)  # several jobs, so worker results are reordered
    inp, good = _make_jsonl_input(tmp_path)
    out = tool.main(["--input", str(inp), "--output-dir", str(tmp_path / "ds"), "--shard-size", "4",
                     "--workers", str(workers), "--log-interval", "100"])
    expected_bad = {"malformed JSON": 2, "missing key": 1, "missing image file": 1, "unreadable image file": 1,
                    "image corrupt": 2, "image empty": 1, "image zero_size": 1, "image extreme_aspect": 1,
                    "empty text": 1, "value not a string": 1, "not UTF-8": 1}
    assert out["bad"] == expected_bad
    assert out["bad_first"]["malformed JSON"] == ["pairs.jsonl:2", "pairs.jsonl:17"]
    assert out["bad_first"]["not UTF-8"] == ["pairs.jsonl:10"]
    assert out["bad_first"]["image corrupt"] == ["pairs.jsonl:8", "pairs.jsonl:9"]
    assert out["converted"] == {"L": 1, "RGBA": 1, "CMYK": 1, "I;16": 1}
    assert out["samples"] == len(good) == 7 and out["seen"] == 20 and out["shards"] == 2
    ds = MMShardDataset(tmp_path / "ds")
    assert ds.info["bad_input"] == {"counts": expected_bad, "first": out["bad_first"]}
    assert ds.info["converted"] == out["converted"] and ds.info["input_samples"] == 20
    for i, (image, text) in enumerate(good):
        rec = ds[i]
        assert rec.image == image and ds.text(i) == text
        np.testing.assert_array_equal(rec.tokens, list(text.encode()))  # byte tokens, no EOD
        h, w = Image.open(io.BytesIO(image)).size[::-1]
        assert ds.meta(i) == (h, w, len(text.encode()))


def test_folder_input_and_cli_script(tmp_path, monkeypatch, capsys):
    g = np.random.default_rng()
    src = tmp_path / "folder"
    (src / "b").mkdir(parents=True)
    images = {"a.png": _png_bytes(_rgb(9, 13, g)), "b/c.JPG": _png_bytes(_rgb(21, 5, g), "JPEG"),
              "d.png": _png_bytes(_rgb(3, 3, g)), "e.png": b"not an image"}
    for name, data in images.items():
        (src / name).write_bytes(data)
    captions = {"a.txt": "the a image", "b/c.txt": "see", "e.txt": "broken"}  # d.png has none
    for name, text in captions.items():
        (src / name).write_text(text)
    (src / "orphan.txt").write_text("a caption without an image is ignored")
    monkeypatch.setattr(sys, "argv", ["preprocess_mmdata.py", "--input", str(src), "--output-dir",
                                      str(tmp_path / "ds"), "--workers", "2", "--log-interval", "1"])
    runpy.run_path(TOOL, run_name="__main__")
    err = capsys.readouterr().err
    assert "Processed 1 samples" in err and "samples/s" in err and "MB/s" in err
    assert "missing caption file: 1 (first at d.png)" in err and "image corrupt: 1 (first at e.png)" in err
    ds = MMShardDataset(tmp_path / "ds")
    assert [ds[i].image for i in range(len(ds))] == [images["a.png"], images["b/c.JPG"]]
    assert [ds.text(i) for i in range(len(ds))] == ["the a image", "see"]
    assert ds.meta(1) == (21, 5, 3)


def test_null_tokenizer_and_argument_errors(tmp_path, tool, capsys):
    g = np.random.default_rng()
    (tmp_path / "x.png").write_bytes(_png_bytes(_rgb(4, 4, g)))
    lines = [{"img": "x.png", "caption": "3 1 4"}, {"img": "x.png", "caption": "not ids"},
             {"img": "x.png", "caption": "12"}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(o) + "\n" for o in lines))
    out = tool.main(["--input", str(tmp_path / "p.jsonl"), "--output-dir", str(tmp_path / "ds"), "--image-key", "img",
                     "--text-key", "caption", "--tokenizer-type", "NullTokenizer", "--vocab-size", "20"])
    assert out["bad"] == {"tokenizer error": 1} and out["bad_first"]["tokenizer error"] == ["p.jsonl:2"]
    ds = MMShardDataset(tmp_path / "ds")
    assert ds.tokenizer == {"kind": "NullTokenizer", "vocab_size": 21, "eod": 20}
    assert [ds[i].tokens.tolist() for i in range(len(ds))] == [[3, 1, 4], [12]]
    with pytest.raises(SystemExit):
        tool.main(["--input", str(tmp_path / "none*.jsonl"), "--output-dir", str(tmp_path / "o")])
    assert "no such JSONL file(s) or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--input", str(tmp_path / "p.jsonl"), "--output-dir", str(tmp_path / "o"), "--shard-size", "0"])
    assert "--shard-size must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
