"""The audio encoder under TP=2 and TP=2 + SP reproduces the TP=1 losses and global gradient norms (weights saved at
TP=1 through dist_checkpointing, loaded resharded), for the CTC path (encoder + head alone) and for audio placed in
the LLM's sequence, over two optimizer steps. One torchrun launch runs every layout (see the worker)."""

import json
import math

import pytest

from tests.distributed.launch import torchrun


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    torchrun("run_audio_parallel.py", [str(d / "ckpt"), str(d / "out.json")], nproc=2, timeout=300)
    return json.loads((d / "out.json").read_text())


@pytest.mark.parametrize("layout", ["tp2", "tp2sp"])
def test_audio_layout_matches_tp1(results, layout):
    ref, got = results["ref"], results[layout]
    assert all(math.isfinite(x) for x in ref["loss"] + ref["grad_norm"]), ref
    assert len(ref["loss"]) == 4 and ref["loss"][2] != ref["loss"][0], ref  # ctc, lm per step; the step moved
    assert got["loss"] == pytest.approx(ref["loss"], rel=2e-5), (got, ref)
    assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=2e-4), (got, ref)
