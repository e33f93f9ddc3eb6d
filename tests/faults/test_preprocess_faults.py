"""Faults of the preprocessing tools, each run as a user runs it (a subprocess of tools/preprocess_data.py or
tools/preprocess_mmdata.py): the exit code, one line on stderr without a traceback, and an existing dataset left
exactly as it was. NullTokenizer and the byte tokenizer keep these fast (no vocab files, no torch)."""

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT_TOOL = os.path.join(ROOT, "tools", "preprocess_data.py")
MM_TOOL = os.path.join(ROOT, "tools", "preprocess_mmdata.py")
NULL = ["--tokenizer-type", "NullTokenizer", "--vocab-size", "100"]


def _drop_dac_override() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so that a
    root process obeys file permissions like any user (prctl(PR_CAPBSET_DROP); a no-op for non-root)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        libc.prctl(24, cap, 0, 0, 0)


def run(tool, *args, obey_permissions=False, wrapper=None, timeout=120):
    """(returncode, stderr) of one tool run; `obey_permissions`: root too is kept out of a read-only directory by
    its permissions; `wrapper`: Python code run before the tool (to kill it midway)."""
    # ROOT first: the wrapper imports omni_mega before the tool puts its checkout on sys.path.
    code = f"import sys\nsys.path.insert(0, {ROOT!r})\n" + (wrapper or "") + \
        f"\nimport runpy\nsys.argv = [{os.path.basename(tool)!r}, *sys.argv[1:]]\n" \
        f"runpy.run_path({tool!r}, run_name='__main__')\n"
    preexec = _drop_dac_override if obey_permissions and os.geteuid() == 0 else None
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec, cwd="/")
    return proc.returncode, proc.stderr


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(directory, names=None) -> dict:
    """{name: bytes} of the files in `directory` (starting with `names`), temporaries left out."""
    return {n: open(os.path.join(directory, n), "rb").read() for n in sorted(os.listdir(directory))
            if (names is None or n.startswith(names)) and ".tmp-" not in n}


def write_jsonl(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    return str(path)


@pytest.fixture
def text_dataset(tmp_path):
    """An existing 3-document dataset out_text_document.{bin,idx} and its bytes."""
    inp = write_jsonl(tmp_path / "good.jsonl", [{"text": "1 2 3"}, {"text": "4 5"}, {"text": "6"}])
    rc, err = run(TEXT_TOOL, "--input", inp, "--output-prefix", str(tmp_path / "out"), *NULL, "--workers", "1")
    assert rc == 0, err
    return str(tmp_path / "out"), snapshot(tmp_path, "out_")


def test_all_input_rejected_exits_1_and_keeps_the_dataset(tmp_path, text_dataset):
    prefix, before = text_dataset
    inp = write_jsonl(tmp_path / "bad.jsonl", ['{"text": "unterminated', '{"title": "x"}', "not json", {"text": "3 x"}])
    rc, err = run(TEXT_TOOL, "--input", inp, "--output-prefix", prefix, *NULL, "--workers", "2")
    line = one_line(err)
    assert rc == 1 and "no documents with tokens to write: all 4 input lines were rejected" in line
    assert "(malformed JSON: 2, missing key: 1, tokenizer error: 1)" in line and "dataset is untouched" in line
    assert snapshot(tmp_path, "out_") == before
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


@pytest.mark.parametrize("lines", [[], [{"text": ""}] * 3], ids=["empty-file", "only-empty-documents"])
def test_nothing_to_write_exits_1(tmp_path, text_dataset, lines):
    prefix, before = text_dataset
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    rc, err = run(TEXT_TOOL, "--input", inp, "--output-prefix", prefix, *NULL, "--workers", "1")
    assert rc == 1 and one_line(err).startswith("preprocess_data.py: error: no documents with tokens to write")
    assert snapshot(tmp_path, "out_") == before


def test_missing_output_directory_exits_2(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"text": "1 2"}])
    missing = tmp_path / "no" / "such"
    rc, err = run(TEXT_TOOL, "--input", inp, "--output-prefix", str(missing / "out"), *NULL, "--workers", "1")
    assert rc == 2 and one_line(err) == f"preprocess_data.py: error: --output-prefix: output directory {missing} " \
                                        "does not exist"


def test_read_only_output_directory_exits_2(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"text": "1 2"}])
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, err = run(TEXT_TOOL, "--input", inp, "--output-prefix", str(ro / "out"), *NULL, "--workers", "1",
                      obey_permissions=True)
        assert rc == 2 and one_line(err) == (f"preprocess_data.py: error: --output-prefix: cannot write to output "
                                             f"directory {ro}: Permission denied")
        rc, err = run(MM_TOOL, "--input", inp, "--output-dir", str(ro / "ds"), obey_permissions=True)
        assert rc == 2 and f"--output-dir: cannot write to output directory {ro}: Permission denied" in one_line(err)
        # preprocess_mmdata creates a missing parent (preprocess.sbatch relies on it), or says why it cannot.
        rc, err = run(MM_TOOL, "--input", inp, "--output-dir", str(ro / "a" / "ds"), obey_permissions=True)
        assert rc == 2 and f"--output-dir: cannot create output directory {ro / 'a'}: Permission denied" in \
            one_line(err)
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


def test_swapped_vocab_and_merges_files(tmp_path, gpt2_files):
    vocab, merges = gpt2_files
    inp = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    common = ["--input", inp, "--output-prefix", str(tmp_path / "o"), "--tokenizer-type", "GPT2BPETokenizer",
              "--workers", "1"]
    rc, err = run(TEXT_TOOL, *common, "--vocab-file", merges, "--merge-file", vocab)
    assert rc == 2 and one_line(err) == (
        f"preprocess_data.py: error: --vocab-file {merges}: not a JSON object of token -> id (GPT-2's encoder.json) "
        "(it looks like a merges file: were --vocab-file and --merge-file swapped?)")
    rc, err = run(TEXT_TOOL, *common, "--vocab-file", vocab, "--merge-file", vocab)
    assert rc == 2 and one_line(err) == (
        f"preprocess_data.py: error: --merge-file {vocab}: not a '#version' line, then one merge 'left right' per "
        "line (GPT-2's vocab.bpe) (it looks like a JSON vocab file: were --vocab-file and --merge-file swapped?)")
    assert not [n for n in os.listdir(tmp_path) if n.startswith("o")]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path, text_dataset):
    prefix, _ = text_dataset
    host, dead, alive = socket.gethostname(), _dead_pid(), os.getpid()
    stale = [f"out_text_document.bin.tmp-{host}-{dead}", f"out_text_document.idx.tmp-{host}-{dead}"]
    kept = [f"out_text_document.bin.tmp-{host}-{alive}", f"out_text_document.bin.tmp-otherhost-{dead}"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / f"out.tmp-{host}-{dead}").mkdir()  # a partitioned run's directory
    (tmp_path / f"out.tmp-{host}-{dead}" / "part0_text.bin").write_bytes(b"x")
    inp = write_jsonl(tmp_path / "in.jsonl", [{"text": "7 8"}])
    rc, err = run(TEXT_TOOL, "--input", inp, "--output-prefix", prefix, *NULL, "--workers", "1")
    assert rc == 0, err
    left = os.listdir(tmp_path)
    assert not set(stale) & set(left) and f"out.tmp-{host}-{dead}" not in left
    assert set(kept) <= set(left)  # a live process's, and another host's (its PID cannot be checked here)
    assert f"removed stale temporary {tmp_path / stale[0]}" in err


def kill_after_first_call(target: str) -> str:
    """Python code that makes `module:attribute` (a function or Class.method) kill its process with SIGKILL right
    after its first call returns: a run killed midway, with no cleanup at all."""
    module, attr = target.split(":")
    return f"""
import importlib, os, signal
_obj = importlib.import_module({module!r})
_path = {attr!r}.split(".")
for _p in _path[:-1]:
    _obj = getattr(_obj, _p)
_real = getattr(_obj, _path[-1])
def _dying(*a, **k):
    out = _real(*a, **k)
    os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(_obj, _path[-1], _dying)
"""


def test_killed_rerun_keeps_the_text_dataset(tmp_path, text_dataset):
    prefix, before = text_dataset
    inp = write_jsonl(tmp_path / "in.jsonl", [{"text": f"{i} {i}"} for i in range(50)])
    wrapper = kill_after_first_call("omni_mega.data.text.preprocess:append_documents")
    rc, _ = run(TEXT_TOOL, "--input", inp, "--output-prefix", prefix, *NULL, "--workers", "1", wrapper=wrapper)
    assert rc == -signal.SIGKILL
    assert snapshot(tmp_path, "out_text_document.") == before  # the old dataset, whole
    assert [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # the killed run's temporaries...
    rc, err = run(TEXT_TOOL, "--input", inp, "--output-prefix", prefix, *NULL, "--workers", "1")
    assert rc == 0 and not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # ...removed by the next run


def _png(g, h=6, w=5):
    buf = io.BytesIO()
    Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def mm_dataset(tmp_path):
    """An existing 8-sample image-text dataset and the bytes of all its files."""
    g = np.random.default_rng()
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(8):
        (tmp_path / "img" / f"{i}.png").write_bytes(_png(g))
        lines.append({"image": f"img/{i}.png", "text": f"caption {i}"})
    inp = write_jsonl(tmp_path / "pairs.jsonl", lines)
    ds = tmp_path / "ds"
    from omni_mega.data.multimodal import preprocess as mm

    # In this process: the image decoder imports torch (omni_mega.data.images), ~5 s per fresh process here.
    assert mm.main(["--input", inp, "--output-dir", str(ds), "--shard-size", "3"])["samples"] == 8
    return ds, snapshot(ds)


def test_mm_all_rejected_keeps_the_8_sample_dataset(tmp_path, mm_dataset):
    from omni_mega.data.multimodal.shards import MMShardDataset

    ds, before = mm_dataset
    # Rejections found before any image is decoded (decoding imports torch: ~5 s in a fresh process here).
    inp = write_jsonl(tmp_path / "bad.jsonl", [{"image": "img/0.png", "text": "  "},
                                                {"image": "img/missing.png", "text": "y"}, "{not json",
                                                {"image": "img/1.png"}])
    rc, err = run(MM_TOOL, "--input", inp, "--output-dir", str(ds), "--workers", "2")
    line = one_line(err)
    assert rc == 1 and "no samples to write: all 4 input samples were rejected (empty text: 1, malformed JSON: 1, " \
                       "missing image file: 1, missing key: 1)" in line and "existing dataset is untouched" in line
    assert snapshot(ds) == before and len(MMShardDataset(ds)) == 8
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_mm_killed_rerun_keeps_dataset_json(tmp_path, mm_dataset):
    """Killed right after it opened its writer: MMShardWriter deletes dataset.json in its directory there, which is
    now a temporary one next to the dataset."""
    from omni_mega.data.multimodal.shards import MMShardDataset

    ds, before = mm_dataset
    inp = write_jsonl(tmp_path / "more.jsonl", [{"image": f"img/{i % 8}.png", "text": f"again {i}"}
                                                for i in range(20)])
    wrapper = kill_after_first_call("omni_mega.data.multimodal.shards:MMShardWriter.__init__")
    rc, _ = run(MM_TOOL, "--input", inp, "--output-dir", str(ds), wrapper=wrapper)
    assert rc == -signal.SIGKILL
    assert snapshot(ds) == before and len(MMShardDataset(ds)) == 8  # dataset.json and shards as they were
    assert [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    from omni_mega.data.multimodal import preprocess as mm

    out = mm.main(["--input", inp, "--output-dir", str(ds)])  # the next run, in this process (see mm_dataset)
    assert out["notes"] and len(MMShardDataset(ds)) == 20 and not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_mm_output_dir_with_other_files_is_refused(tmp_path, capsys):
    from omni_mega.data.multimodal import preprocess as mm

    inp = write_jsonl(tmp_path / "p.jsonl", [{"image": "x.png", "text": "x"}])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a dataset")
    with pytest.raises(SystemExit) as exit_:  # in this process (see mm_dataset)
        mm.main(["--input", inp, "--output-dir", str(tmp_path / "mine")])
    assert exit_.value.code == 2
    assert "holds files that are not part of a dataset (notes.txt)" in one_line(capsys.readouterr().err)
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_mm_folder_symlink_loops_are_counted(tmp_path):
    g = np.random.default_rng()
    src = tmp_path / "folder"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(_png(g))
    (src / "a.txt").write_text("a caption")
    (src / "sub" / "b.png").write_bytes(_png(g))
    (src / "sub" / "b.txt").write_text("b caption")
    os.symlink("..", src / "sub" / "up")  # a directory loop
    os.symlink("loop2.png", src / "loop1.png")  # an image symlink that resolves to itself
    os.symlink("loop1.png", src / "loop2.png")
    os.symlink("sub", src / "zsub")  # the same directory a second time
    from omni_mega.data.multimodal import preprocess as mm

    out = mm.main(["--input", str(src), "--output-dir", str(tmp_path / "ds")])
    assert out["samples"] == 2
    assert out["bad"] == {"symlink_loop": 3, "directory reached twice (symlink)": 1}
    assert out["bad_first"]["symlink_loop"] == ["loop1.png", "loop2.png", "sub/up"]
