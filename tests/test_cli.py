import json
import os
import subprocess
import sys
from pathlib import Path

import omni_mega

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "omni_mega", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def test_version():
    p = _cli("--version")
    assert p.returncode == 0 and omni_mega.__version__ in p.stdout


def test_dry_run_prints_plan():
    p = _cli("train", "examples/configs/tiny_text.yaml", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "stage pretrain (lm): 200 steps" in p.stdout and "204,800 tokens" in p.stdout


def test_config_error_exit_code_and_message():
    p = _cli("train", "examples/configs/tiny_text.yaml", "--dry-run", "--set", "parallel.tp=3")
    assert p.returncode == 2
    assert "parallel.tp: tp=3 does not divide model.llm.num_attention_heads=4" in p.stderr


def test_short_training_run_writes_metrics(tmp_path):
    run = tmp_path / "run"
    p = _cli("train", "examples/configs/tiny_text.yaml", "--run-dir", str(run), "--set", "stages=[{name: s1, steps: 30}]",
             "--set", "train.log_interval=10", "--set", "optim.warmup_steps=5")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31))
    for key in ("step", "stage", "loss", "lr", "tokens", "grad_norm", "tokens_per_s"):
        assert key in rows[0], key
    assert rows[0]["stage"] == "s1" and rows[-1]["tokens"] == 30 * 8 * 128
    # Byte-level LM on English: starts near chance over the padded vocabulary (ln 384 = 5.95) and must learn
    # something in 30 steps.
    assert 5.5 < rows[0]["loss"] < 6.2, rows[0]
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.5, (rows[0]["loss"], rows[-1]["loss"])
    assert any(f.name.startswith("events") for f in (run / "tensorboard").iterdir())
    assert "ETA" in p.stdout and "tok/s" in p.stdout
