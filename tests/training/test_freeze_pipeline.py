"""Freeze/unfreeze under pipeline parallelism (PP=2, 2 ranks), then resume of that run under TP=2.

The worker checks per step and boundary (frozen bitwise unchanged, trainable changed, exact Adam carry-over, RoPE
base recomputed in place); this test checks the summary and that the run resumes resharded (model and optimizer
through megatron's sharded optimizer state) with the same losses."""

import json
import shutil

import pytest

from tests.distributed.launch import torchrun
from tests.distributed.run_curriculum_freeze import TINY


@pytest.fixture(scope="module")
def pp_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("pp")
    torchrun("run_curriculum_freeze.py", [str(d / "run"), str(d / "out.json")], nproc=2, timeout=300)
    return d, json.loads((d / "out.json").read_text())


def test_frozen_first_pipeline_rank_does_not_hang(pp_run):
    _, out = pp_run
    rank0, rank1 = out["ranks"]
    # head_only and last_layer leave the first pipeline rank (layers 0-1, embedding) with nothing trainable.
    assert rank0["rank_trainable"][:2] == [0, 0] and rank0["rank_trainable"][2] > 0
    assert rank1["rank_trainable"][0] == 1  # the output layer
    # output_layer stays trainable into last_layer; layer 3 + output layer stay trainable into `all`.
    assert rank1["stages"][0]["carried"] == 1 and rank1["stages"][1]["carried"] == rank1["rank_trainable"][1]
    assert rank0["stages"][1]["carried"] == 0
    assert len(rank0["loss"]) == 6 and rank0["loss"] == rank1["loss"]
    # last_layer: the output layer's group runs at 0.5 x the stage LR (megatron aligns groups across ranks).
    (m_half, lr_half), (m_one, lr_one) = rank1["lr_groups"][1]
    assert (m_half, m_one) == (0.5, 1.0) and lr_half == pytest.approx(0.5 * lr_one) and lr_one > 0


def test_resume_under_another_layout(pp_run, tmp_path):
    d, out = pp_run
    run = tmp_path / "run"
    shutil.copytree(d / "run", run)
    # The worker saved at each stage end (steps 2, 4, 6): drop step 6 to resume from step 4 into the `all` stage.
    shutil.rmtree(run / "ckpt" / "step_0000006")
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("{}\n")
    overrides = [a for o in TINY if o != "parallel.pp=2" for a in ("--set", o)]
    torchrun("run_cli.py", ["train", str(cfg), "--run-dir", str(run), "--resume", "auto", *overrides,
                            "--set", "parallel.tp=2", "--set", "parallel.pp=1"], nproc=2, timeout=300)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 6] and rows[0]["stage"] == "all"
    # Step 5's loss needs the resharded weights; step 6's also the resharded Adam moments of the carried params.
    # TP=2 changes only the reduction order of the matmuls.
    assert [r["loss"] for r in rows] == pytest.approx(out["ranks"][0]["loss"][4:], rel=1e-5)
