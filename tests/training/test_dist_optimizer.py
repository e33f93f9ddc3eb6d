"""megatron's distributed optimizer through a stage boundary (2 CPU ranks over gloo, data-parallel 2): Adam state is
resharded and carried (the same losses as the plain optimizer, moments unchanged by the rebuild), and a run resumed
from the boundary checkpoint repeats the straight run's losses."""

import json

import pytest

from tests.distributed.launch import torchrun


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    work = tmp_path_factory.mktemp("distopt")
    torchrun("run_dist_optimizer.py", [str(work), str(work / "out.json")], timeout=300)
    return json.loads((work / "out.json").read_text())


def test_state_carried_across_the_boundary(result):
    assert len(result["before"]) == len(result["after"]) > 0
    assert any(v != 0.0 for v in result["before"]), "no Adam state before the boundary: nothing was tested"
    assert result["after"] == result["before"]


def test_same_losses_as_the_plain_optimizer(result):
    # Sharded Adam is the same arithmetic; the gradient reduction order differs (reduce-scatter vs all-reduce).
    assert len(result["dist"]) == len(result["plain"]) == 6
    assert result["dist"] == pytest.approx(result["plain"], rel=1e-5)


def test_resume_from_the_boundary_checkpoint(result):
    assert result["resumed"] == result["dist"][3:]
