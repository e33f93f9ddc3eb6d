"""Checkpoint faults: a changed, truncated or missing file is found by its manifest and the checkpoint is skipped
with a reason; a crafted RNG file or DCP `.metadata` (a pickle whose __reduce__ calls os.system) is refused and
runs nothing; a resume falls back to the newest intact checkpoint and still reproduces the run bit for bit;
`omni-mega verify-ckpt` exits 0 / 1 / 2 for intact / corrupt / bad path."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from omni_mega import cli
from omni_mega.training import checkpoint as ckpt_io
from omni_mega.runtime.manifest import file_checksum, verify_checkpoint, write_manifest
from omni_mega.training.safe_load import CheckpointLoadRefused, restricted_loads
from omni_mega.training.state import RngStateError, capture_rng, load_rng, restore_rng, rng_from_plain, rng_to_plain
from tests.distributed.launch import ROOT, free_port

CONFIG = """
name: ckpt_faults
model: {llm: {num_layers: 2, hidden_size: 32, num_attention_heads: 4, max_position_embeddings: 64}}
data: {seq_length: 16, micro_batch_size: 2, global_batch_size: 4}
optim: {lr: 1.0e-2, min_lr: 1.0e-3, warmup_steps: 2}
train: {log_interval: 1, tensorboard: false}
stages:
  - {name: a, steps: 3, ckpt_interval: 1, data: [{name: x, seed: 1, weight: 1}]}
"""


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port()), "PYTHONPATH": str(ROOT)}


def _train(cfg: Path, run: Path, *extra: str) -> str:
    p = subprocess.run([sys.executable, "-m", "omni_mega", "train", str(cfg), "--run-dir", str(run), *extra],
                       env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout + p.stderr


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(config, run dir) of a 3-step run with a checkpoint after every step; tests work on copies."""
    d = tmp_path_factory.mktemp("ckpt")
    cfg = d / "cfg.yaml"
    cfg.write_text(CONFIG)
    _train(cfg, d / "run")
    return cfg, d / "run"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    shutil.copytree(trained[1], tmp_path / "run")
    return tmp_path / "run"


def _step(run: Path, k: int) -> Path:
    return run / "ckpt" / f"step_{k:07d}"


class _Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint file would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ---- manifest ----------------------------------------------------------------------------------------------------


def test_intact_checkpoints_verify(run):
    for k in (1, 2, 3):
        assert verify_checkpoint(_step(run, k)) == []
    manifest = json.loads((_step(run, 3) / "manifest.json").read_text())
    listed = set(manifest["files"])
    assert {"trainer_state.json", "rng/rank_00000.pt", "dist/.metadata", "dist/common.pt"} <= listed
    assert any(f.endswith(".distcp") for f in listed) and "COMPLETE" not in listed
    good, skipped = ckpt_io.candidates(run)
    assert good == [_step(run, 3), _step(run, 2), _step(run, 1)] and skipped == []


def test_overwritten_bytes_are_found_and_skipped(run):
    distcp = max((_step(run, 3) / "dist").glob("*.distcp"), key=lambda p: p.stat().st_size)
    size = distcp.stat().st_size
    with open(distcp, "r+b") as f:  # 4 KiB in the middle, size unchanged
        f.seek(size // 2)
        f.write(os.urandom(4096))
    assert distcp.stat().st_size == size
    rel = distcp.relative_to(_step(run, 3)).as_posix()
    assert verify_checkpoint(_step(run, 3)) == [
        f"{rel}: checksum mismatch (the bytes changed after the checkpoint was written)"]
    good, skipped = ckpt_io.candidates(run)
    assert good == [_step(run, 2), _step(run, 1)]
    assert skipped == [f"{_step(run, 3)}: fails verification: {rel}: checksum mismatch (the bytes changed after the "
                       "checkpoint was written)"]


def test_truncated_and_missing_files_are_found(run):
    rng = _step(run, 2) / "rng" / "rank_00000.pt"
    size = rng.stat().st_size
    rng.write_bytes(rng.read_bytes()[:100])
    (_step(run, 2) / "dist" / "common.pt").unlink()
    problems = verify_checkpoint(_step(run, 2))
    assert problems == ["dist/common.pt: missing",
                        f"rng/rank_00000.pt: size 100 bytes, manifest.json says {size} (truncated or overwritten)"]
    good, skipped = ckpt_io.candidates(run)
    assert good == [_step(run, 3), _step(run, 1)] and len(skipped) == 1 and "dist/common.pt: missing" in skipped[0]


def test_missing_manifest_and_extra_files(run):
    (_step(run, 1) / "notes.txt").write_text("a user's note: not part of the checkpoint")
    assert verify_checkpoint(_step(run, 1)) == []  # unlisted files are ignored
    (_step(run, 1) / "manifest.json").unlink()
    assert verify_checkpoint(_step(run, 1)) == [
        "no manifest.json (written before checksums were kept, or the save was interrupted)"]


def test_explicit_corrupt_checkpoint_is_a_config_error(run):
    (_step(run, 2) / "trainer_state.json").write_text("{}")
    with pytest.raises(Exception, match=r"step_0000002: checkpoint fails verification: trainer_state.json: size"):
        ckpt_io.resolve_ckpt(_step(run, 2))


def test_verification_streams_and_its_cost(run, capsys):
    total = sum(p.stat().st_size for p in _step(run, 3).rglob("*") if p.is_file())
    t = time.perf_counter()
    assert verify_checkpoint(_step(run, 3)) == []
    took = time.perf_counter() - t
    big = run / "big.bin"  # larger than one read chunk: the streamed checksum equals the one-shot one
    data = os.urandom(9 << 20)
    big.write_bytes(data)
    import xxhash

    assert file_checksum(big) == xxhash.xxh3_64(data).hexdigest()
    with capsys.disabled():
        print(f"\n  verify_checkpoint: {total / 1e6:.2f} MB in {took * 1e3:.1f} ms")


# ---- no code runs on load ----------------------------------------------------------------------------------------


def test_payload_runs_under_plain_pickle(tmp_path):
    # The control: the payload these tests use does run when unpickled without our restrictions.
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_crafted_rng_file_is_refused(run, tmp_path):
    marker = tmp_path / "ran"
    rng = _step(run, 3) / "rng" / "rank_00000.pt"
    torch.save({"python": _Payload(marker)}, rng)
    with pytest.raises(RngStateError, match=rf"{rng}: refusing to unpickle an RNG state that holds Python objects"):
        load_rng(rng)
    assert not marker.exists()


def test_old_format_rng_file_is_refused(run):
    rng = _step(run, 3) / "rng" / "rank_00000.pt"
    torch.save(capture_rng(), rng)  # what save_rng wrote before: Python and NumPy state tuples
    with pytest.raises(RngStateError, match=str(rng)):
        load_rng(rng)


def test_rng_round_trip_is_exact(tmp_path):
    import random

    import numpy as np

    random.gauss(0, 1)  # a cached gaussian in both generators: part of the state
    np.random.standard_normal()
    path = tmp_path / "rng.pt"
    torch.save(rng_to_plain(capture_rng()), path)
    want = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    load_rng(path)
    assert (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == want
    restore_rng(rng_from_plain(torch.load(path, weights_only=True), str(path)))  # loads without unpickling objects


def test_crafted_metadata_is_refused(run, tmp_path):
    from megatron.core import dist_checkpointing

    marker = tmp_path / "ran"
    meta = _step(run, 3) / "dist" / ".metadata"
    meta.write_bytes(pickle.dumps(_Payload(marker)))
    with restricted_loads(), pytest.raises(CheckpointLoadRefused, match=rf"{meta}: refusing to unpickle posix.system"):
        dist_checkpointing.load_tensors_metadata(str(meta.parent))
    assert not marker.exists()


def test_resume_skips_crafted_checkpoints_and_reproduces_the_run(trained, run, tmp_path):
    """The crafted files come with rewritten manifests (an attacker who knows the format): verification passes,
    loading refuses them, the trainer falls back to step 1 and replays steps 2-3 bit for bit."""
    cfg, straight = trained
    marker = tmp_path / "ran"
    (_step(run, 3) / "dist" / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    torch.save({"python": _Payload(marker)}, _step(run, 2) / "rng" / "rank_00000.pt")
    for k in (2, 3):
        write_manifest(_step(run, k))
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(rows[0] + "\n")  # as if the run had stopped after step 1
    log = _train(cfg, run, "--resume", "auto")
    assert not marker.exists()
    assert f"{_step(run, 3)} failed to load" in log and "refusing to unpickle posix.system" in log
    assert f"{_step(run, 2)} failed to load" in log and "refusing to unpickle an RNG state" in log
    assert f"resumed from {_step(run, 1)}: step 1" in log
    assert _losses(run) == _losses(straight)  # == on floats parsed from the same JSON text: bitwise


# ---- verify-ckpt -------------------------------------------------------------------------------------------------


def test_verify_ckpt_exit_codes(run, tmp_path, capsys):
    assert cli.main(["verify-ckpt", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{_step(run, k)}: OK" for k in (3, 2, 1)]
    assert cli.main(["verify-ckpt", str(_step(run, 2))]) == 0
    (_step(run, 1) / "trainer_state.json").write_text("{}")
    capsys.readouterr()
    assert cli.main(["verify-ckpt", str(run / "ckpt")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"{_step(run, 3)}: OK", f"{_step(run, 2)}: OK"]
    assert out[2].startswith(f"{_step(run, 1)}: CORRUPT: trainer_state.json: size 2 bytes")
    assert cli.main(["verify-ckpt", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["verify-ckpt", str(tmp_path / "empty")]) == 2
