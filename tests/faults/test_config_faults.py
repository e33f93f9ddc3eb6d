"""`omni-mega train BAD --dry-run` for each kind of broken config: exit code 2 and one line on stderr naming the
problem, never a Python traceback (the command is run as a user runs it, in a subprocess)."""

import os
import subprocess
import sys

import pytest

from tests.distributed.launch import ROOT

GOOD = "examples/configs/tiny_text.yaml"

# name -> (file content (None: use GOOD), extra CLI args, what stderr must say)
CASES = {
    "yaml-syntax": ("name: t\noptim:\n  lr: 1\n   warmup_steps: 2\n", [], "{cfg}:4:16: YAML syntax error"),
    "directory": ("<dir>", [], "config {cfg} is a directory"),
    "not-utf8": (b"name: caf\xe9\n", [], "config file {cfg} is not UTF-8 text: byte 0xe9 at offset 9"),
    "empty": ("# nothing here\n", [], "config file {cfg} is empty"),
    "index-out-of-range": (None, ["--set", "stages.5.steps=1"],
                           "stages has 1 item (indices 0..0), so there is no index 5"),
    "unknown-item-name": (None, ["--set", "stages.cooldown.steps=1"],
                          "stages has no item named 'cooldown'; names: pretrain"),
    "unparseable-value": (None, ["--set", "optim.lr=[1,"], "cannot parse the value '[1,' as YAML"),
}


def _config(tmp_path, name: str, content) -> str:
    if content is None:
        return GOOD
    path = tmp_path / f"{name}.yaml"
    if content == "<dir>":
        path.mkdir()
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """All cases at once (each subprocess spends its time importing torch): name -> (config, CompletedProcess-like)."""
    tmp = tmp_path_factory.mktemp("configs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = {}
    for name, (content, extra, _) in CASES.items():
        cfg = _config(tmp, name, content)
        cmd = [sys.executable, "-m", "omni_mega", "train", cfg, "--dry-run", *extra]
        procs[name] = cfg, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True)
    out = {}
    for name, (cfg, p) in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        out[name] = cfg, p.returncode, stdout, stderr
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_bad_config_is_one_line_and_exit_2(results, name):
    cfg, rc, stdout, stderr = results[name]
    expected = CASES[name][2].format(cfg=cfg)
    assert "Traceback" not in stderr + stdout, stderr
    assert rc == 2, (rc, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omni-mega: config error: "), stderr
    assert expected in lines[0], lines[0]


def test_list_item_by_name_works_end_to_end():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "omni_mega", "train", GOOD, "--dry-run", "--set", "stages.pretrain.steps=7"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "stage pretrain (lm): 7 steps" in p.stdout, p.stdout
