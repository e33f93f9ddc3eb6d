"""Every op, fed extreme integers on every CPU backend (ref, cpp), either returns the reference's result or raises
RuntimeError/ValueError with the reference's message; it never kills the process (a segfault or abort) and never
returns a different answer. The calls run in a subprocess (tests/faults/ops_fuzz_worker.py) so a crash is seen as a
signal exit and reported with the case that caused it."""

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict

import pytest

from omni_mega.ops import has_cpu_extension
from tests.distributed.launch import ROOT
from tests.faults.ops_fuzz_worker import CASES, MAX_CASES

SEED, COUNT = 20261122, 150
MAX_RESTARTS = 4

pytestmark = pytest.mark.skipif(not has_cpu_extension(), reason="needs the C++ extension (make build)")


def _run_worker(start: str | None) -> tuple[int, list[str], str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tests.faults.ops_fuzz_worker", str(SEED), str(COUNT)] + ([start] if start else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    return p.returncode, p.stdout.splitlines(), p.stderr


@pytest.fixture(scope="module")
def fuzz_results() -> dict[str, list[dict]]:
    """Results per op. A crashed case becomes a row with verdict 'crashed: <signal>'; the next worker goes on
    after it."""
    rows, start = defaultdict(list), None
    for _ in range(MAX_RESTARTS + 1):
        rc, lines, err = _run_worker(start)
        last = None
        for line in lines:
            if line.startswith("START "):
                last = line.split()[1:]
            elif line.startswith("{"):
                row = json.loads(line)
                rows[row["op"]].append(row)
                last = None
        if rc == 0:
            return rows
        assert rc < 0 and last, f"fuzz worker exited {rc} outside a case:\n{err[-3000:]}"
        op, k = last[0], int(last[1])
        rows[op].append(dict(op=op, k=k, verdict=f"crashed: {signal.Signals(-rc).name}"))
        nxt = k + 1
        if nxt >= min(COUNT, MAX_CASES.get(op, COUNT)):
            names = list(CASES)
            if names.index(op) + 1 == len(names):
                return rows
            op, nxt = names[names.index(op) + 1], 0
        start = f"{op}:{nxt}"
    rows["_"].append(dict(verdict=f"more than {MAX_RESTARTS} crashes: fuzzing stopped"))
    return rows


@pytest.mark.parametrize("op", list(CASES))
def test_extreme_integers_never_crash_or_disagree(fuzz_results, op):
    rows = fuzz_results[op]
    bad = [f"case {r['k']}: {r['verdict']} (ref: {r.get('ref')}, cpp: {r.get('cpp')})" for r in rows
           if r["verdict"] != "ok"]
    assert not fuzz_results.get("_"), fuzz_results["_"]
    assert not bad, f"{len(bad)} of {len(rows)} {op} cases failed:\n" + "\n".join(bad[:10])
    assert len(rows) == min(COUNT, MAX_CASES.get(op, COUNT))
    # A fuzz whose calls all fail (or all succeed) tests less than it seems: both outcomes must occur.
    succeeded = sum(r["ref"] == "ok" for r in rows)
    if op != "host_cache":  # valid inputs by design
        assert 0 < succeeded < len(rows), f"{op}: {succeeded} of {len(rows)} cases succeeded"
    else:
        assert succeeded == len(rows)
