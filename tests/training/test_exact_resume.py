"""Exact resume: a run SIGKILLed from outside (a real subprocess) and restarted with `--resume auto` reproduces the
per-step losses of an uninterrupted run bit for bit, resuming right after a stage boundary (from a trainable_only
checkpoint, whose frozen part comes from the last full one) and in the middle of the first stage; incomplete and
corrupt checkpoints (found by their manifests) are reported and skipped; a checkpoint of another model shape is
refused before training."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.distributed.launch import ROOT, free_port

CONFIG = """
name: resume_test
model: {llm: {num_layers: 2, hidden_size: 32, num_attention_heads: 4, max_position_embeddings: 64}}
data: {seq_length: 16, micro_batch_size: 2, global_batch_size: 4}
optim: {lr: 1.0e-2, min_lr: 1.0e-3, warmup_steps: 2}
train: {log_interval: 1, tensorboard: false}
stages:
  - {name: a, steps: 3, ckpt_interval: 1, data: [{name: x, seed: 1, weight: 1}, {name: y, seed: 2, weight: 2}]}
  - {name: b, steps: 3, ckpt_interval: 1, save: trainable_only, schedule: rewarmup, lr: 2.0e-2, warmup_steps: 1,
     trainable: ["llm.layers[-1:]", llm.output_layer], rope_base: 160000, seq_length: 32}
"""
STEPS = 6


def _cmd(cfg: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "omni_mega", "train", str(cfg), "--run-dir", str(run), *extra]


def _env() -> dict:
    # One thread: CPU matmuls are then deterministic run to run; a free port: tests may run side by side.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port()), "PYTHONPATH": str(ROOT)}


def _start(cmd: list[str]) -> subprocess.Popen:
    # Own process group: a kill takes dist_checkpointing's writer processes with it, as a node failure would.
    return subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, expect: int = 0) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == expect, f"exit {proc.returncode}:\n{out[-4000:]}"
    return out


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len({r["step"] for r in rows}) == len(rows), "a step was recorded twice"
    return {r["step"]: r["loss"] for r in rows}


def _keep_up_to(run: Path, step: int) -> None:
    for d in (run / "ckpt").glob("step_*"):
        if d.name.endswith(".tmp") or int(d.name[5:]) > step:
            shutil.rmtree(d)


def _kill_after(proc: subprocess.Popen, run: Path, step: int) -> None:
    """SIGKILL from outside once `step`'s checkpoint is complete (the `latest` pointer names it)."""
    latest, deadline = run / "ckpt" / "latest", time.time() + 240
    try:
        while not (latest.exists() and int(latest.read_text().strip()[5:]) >= step):
            assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before the kill step"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """All subprocesses, two at a time or more (each is single-threaded): the straight run beside the killed one,
    then the resumes, the init_from run and the refused resume side by side."""
    d = tmp_path_factory.mktemp("resume")
    cfg = d / "cfg.yaml"
    cfg.write_text(CONFIG)
    straight, killed = d / "straight", d / "killed"
    p_straight = _start(_cmd(cfg, straight))
    _kill_after(_start(_cmd(cfg, killed)), killed, 4)
    out = {"straight": _finish(p_straight)}
    for name, k in (("k4", 4), ("k2", 2)):
        shutil.copytree(killed, d / name)
        _keep_up_to(d / name, k)
    ck = d / "k4" / "ckpt"  # an interrupted save (no marker) and a corrupt one (marker, truncated files)
    shutil.copytree(ck / "step_0000004", ck / "step_0000005")
    (ck / "step_0000005" / "COMPLETE").unlink()
    shutil.copytree(ck / "step_0000004", ck / "step_0000006")
    for f in (ck / "step_0000006" / "dist").glob("*.distcp"):
        f.write_bytes(f.read_bytes()[:100])
    # A stage starting from straight's step 6: trainable_only (stage b's layer 1 and output layer).
    init_cfg = d / "init.yaml"
    init_cfg.write_text(CONFIG.split("stages:")[0] + "stages:\n"
                        f"  - {{name: a, steps: 1, init_from: '{straight / 'ckpt' / 'step_0000006'}', "
                        "data: [{name: x, seed: 1, weight: 1}, {name: y, seed: 2, weight: 2}]}\n")
    procs = {
        "k4": _start(_cmd(cfg, d / "k4", "--resume", "auto")),
        "k2": _start(_cmd(cfg, d / "k2", "--resume", "auto")),
        "init": _start(_cmd(init_cfg, d / "init")),
        "shape": _start(_cmd(cfg, killed, "--resume", "auto", "--set", "model.llm.hidden_size=64")),
    }
    out.update({k: _finish(p, 2 if k == "shape" else 0) for k, p in procs.items()})
    return d, straight, out


def test_straight_run_is_a_curriculum(runs):
    _, straight, _ = runs
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["a"] * 3 + ["b"] * 3
    assert rows[3]["rope_base"] == 160000 and rows[3]["seq_length"] == 32
    assert rows[3]["trainable_params"] < rows[2]["trainable_params"]
    assert rows[3]["lr"] > rows[2]["lr"]  # rewarmup from where stage a ended to stage b's higher peak
    assert (straight / "ckpt" / "latest").read_text() == "step_0000006"


def test_resume_after_kill_right_after_stage_boundary(runs):
    d, straight, out = runs
    log = out["k4"]
    assert "step_0000005: incomplete" in log
    assert "step_0000006: fails verification: dist/" in log and "(truncated or overwritten)" in log
    assert "resumed from" in log and "step_0000004: step 4, stage b" in log
    assert "resume from partial checkpoint" in log and "step_0000003" in log  # frozen part from the last full one
    assert _losses(d / "k4") == _losses(straight)  # bitwise: == on floats parsed from the same JSON text


def test_resume_after_kill_mid_stage(runs):
    d, straight, out = runs
    assert "step_0000002: step 2, stage a" in out["k2"]
    assert _losses(d / "k2") == _losses(straight)


def test_resume_refuses_another_model_shape(runs):
    _, _, out = runs
    assert "--resume auto" in out["shape"] and "model.llm.hidden_size: checkpoint 32, config 64" in out["shape"]
    assert "step " not in out["shape"]  # no training step ran


def test_stage_init_from_a_partial_checkpoint(runs):
    d, straight, out = runs
    assert "7 parameter tensors from the checkpoint, 8 kept from the current model" in out["init"]
    # Same data and init as the straight run's step 1, but layer 1 and the head are the trained ones.
    assert _losses(d / "init")[1] != _losses(straight)[1]


def test_report(runs):
    _, straight, _ = runs
    p = subprocess.run([sys.executable, "-m", "omni_mega", "report", str(straight)], env=_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "report.png" in p.stdout, p.stderr[-2000:]
    png, md = straight / "report.png", straight / "report.md"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    text = md.read_text()
    assert "| a | 1-3 |" in text and "| b | 4-6 |" in text and "160000" in text
