"""A careless or hostile user at the trainer's edges, each as a real `omni-mega train` process:
- two processes on one run dir: the second refuses at once (exit 2, one line naming the holder); the first finishes
  with every metrics row, in order;
- a fresh run into a dir that holds a run refuses; `--overwrite` moves the old run aside (never deletes it);
- a resume that falls back past a corrupt checkpoint records every step once, and stale `*.tmp` dirs are removed;
- a resume with fewer stages than the checkpoint's: exit 2, one line, no traceback;
- 2,000 steps of a tiny run: resident memory at step 2,000 within 5% of step 200 (a leak check)."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.training.test_exact_resume import _cmd, _env, _finish, _start

CONFIG = """
name: faults
model: {llm: {num_layers: 1, hidden_size: 16, num_attention_heads: 2, max_position_embeddings: 32}}
data: {seq_length: 16, micro_batch_size: 2, global_batch_size: 4}
optim: {lr: 1.0e-2, min_lr: 1.0e-3, warmup_steps: 2}
train: {log_interval: 50, tensorboard: false}
stages:
  - {name: a, steps: 3, ckpt_interval: 1}
  - {name: b, steps: %d, ckpt_interval: 2}
"""


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _one_line_error(out: str, *words: str) -> None:
    lines = [x for x in out.splitlines() if x.startswith("omni-mega:")]
    assert len(lines) == 1 and all(w in lines[0] for w in words), out[-3000:]
    assert "Traceback" not in out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    (d / "short.yaml").write_text(CONFIG % 3)
    (d / "long.yaml").write_text(CONFIG % 2000)
    return d


def test_second_process_on_a_run_dir_refuses_at_once(work):
    run = work / "locked"
    first = _start(_cmd(work / "long.yaml", run, "--set", "stages.1.steps=120"))
    deadline = time.time() + 120
    while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size):
        assert first.poll() is None and time.time() < deadline, "the first run ended or stalled"
        time.sleep(0.1)
    second = _finish(_start(_cmd(work / "long.yaml", run, "--resume", "auto")), expect=2)
    _one_line_error(second, "run dir error", str(run), "in use by", '"pid"')
    _finish(first)
    assert [r["step"] for r in _rows(run)] == list(range(1, 124))


def test_fresh_run_into_a_used_dir_refuses_and_overwrite_moves_it_aside(work):
    run = work / "used"
    _finish(_start(_cmd(work / "short.yaml", run)))
    refused = _finish(_start(_cmd(work / "short.yaml", run)), expect=2)
    _one_line_error(refused, "already holds a run", "step_0000006", "--resume auto", "--overwrite")
    _finish(_start(_cmd(work / "short.yaml", run, "--overwrite")))
    (old,) = work.glob("used.prev-*")
    assert (old / "ckpt" / "step_0000006" / "COMPLETE").exists() and len(_rows(old)) == 6
    assert [r["step"] for r in _rows(run)] == list(range(1, 7))


def test_fallback_resume_records_each_step_once_and_cleans_temporaries(work):
    src, run = work / "fallback_src", work / "fallback"
    _finish(_start(_cmd(work / "short.yaml", src)))
    shutil.copytree(src, run)
    for f in (run / "ckpt" / "step_0000006" / "dist").glob("*.distcp"):  # the newest checkpoint: corrupt
        f.write_bytes(f.read_bytes()[:64])
    (run / "ckpt" / "step_0000009.tmp").mkdir()  # a save a killed run left half-written
    (run / "ckpt" / "step_0000009.tmp" / "junk").write_text("x")
    out = _finish(_start(_cmd(work / "short.yaml", run, "--resume", "auto")))
    assert "step_0000009.tmp" in out and not (run / "ckpt" / "step_0000009.tmp").exists()
    assert "step_0000006: fails verification" in out and "resumed from" in out and "step_0000005: step 5" in out
    rows = _rows(run)
    assert [r["step"] for r in rows] == list(range(1, 7)), [r["step"] for r in rows]
    assert [r["loss"] for r in rows] == [r["loss"] for r in _rows(src)]  # and bitwise the uninterrupted run's


def test_resume_with_fewer_stages_is_one_clear_error(work):
    run = work / "fallback_src"  # a finished two-stage run (the test above)
    one_stage = work / "one_stage.yaml"
    one_stage.write_text(CONFIG.split("  - {name: b")[0])
    out = _finish(_start(_cmd(one_stage, run, "--resume", "auto")), expect=2)
    _one_line_error(out, "config error", "stage 2 ('b')", "1 stage(s): a")


def test_resident_memory_flat_over_2000_steps(work):
    """The leak check: 2,000 steps (40 checkpoints), resident memory from metrics.jsonl."""
    run = work / "soak"
    p = subprocess.run(_cmd(work / "long.yaml", run, "--set", "stages.1.steps=1997", "--set", "stages.1.ckpt_interval=50"),
                       env=_env(), cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rss = {r["step"]: r["host_rss_mb"] for r in _rows(run)}
    assert len(rss) == 2000 and rss[200] > 0
    assert abs(rss[2000] - rss[200]) <= 0.05 * rss[200], (rss[200], rss[1000], rss[2000])
