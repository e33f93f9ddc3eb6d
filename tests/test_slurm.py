"""SLURM launchers: rendered for a small config and run under bash with stub srun/torchrun/scontrol, so the test
checks the commands the job would really issue (node count, nproc-per-node, rendezvous endpoint, resume flag), the
DP that results, the USR1 checkpoint-and-requeue path, and `bash -n` on every rendered script."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from omni_mega.config import ConfigError
from omni_mega.launch.slurm import PretrainJob, render, render_preprocess, render_pretrain

CONFIG = """
name: slurm_small
model: {llm: {num_layers: 4, hidden_size: 32, num_attention_heads: 4, max_position_embeddings: 64}}
parallel: {tp: 2, pp: 2}
data: {seq_length: 32, micro_batch_size: 1, global_batch_size: 8}
stages: [{name: only, steps: 3}]
"""

STUBS = {
    # srun: log, then run the command (torchrun / python) like a one-task step would
    "srun": 'echo "srun $*" >> "$STUB_LOG"; while [[ "$1" == --* ]]; do shift; done; exec "$@"',
    # torchrun: log its argv; in "wait" mode stay up until the checkpoint request file appears (a trainer that
    # honours it), otherwise exit at once (a finished run)
    "torchrun": 'echo "torchrun $*" >> "$STUB_LOG"; touch "$STUB_DIR/started"\n'
                'if [[ "${STUB_MODE:-}" == wait ]]; then for i in $(seq 200); do '
                '[[ -e "$RUN_DIR_STUB/SAVE_AND_EXIT" ]] && exit 0; sleep 0.05; done; exit 9; fi',
    "scontrol": 'if [[ "$1 $2" == "show hostnames" ]]; then printf "node001\\nnode002\\n"; '
                'else echo "scontrol $*" >> "$STUB_LOG"; fi',
    "python": 'echo "python $*" >> "$STUB_LOG"',
}


@pytest.fixture
def stubs(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    return tmp_path


def _config(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(CONFIG)
    return str(path)


def _env(stub_dir, run_dir, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(PATH=f"{stub_dir / 'bin'}:{env['PATH']}", STUB_LOG=str(stub_dir / "log"), STUB_DIR=str(stub_dir),
               RUN_DIR_STUB=str(run_dir), SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="node[001-002]",
               SLURM_JOB_ID="4242", CKPT_GRACE_S="5")
    env.update(extra)
    return env


def _bash_n(script: Path) -> None:
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _pretrain_script(tmp_path, nodes=2, gpus=4, overrides=()):
    run_dir = tmp_path / "run"
    text = render_pretrain(PretrainJob(_config(tmp_path), nodes, gpus, run_dir=str(run_dir), overrides=overrides))
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    _bash_n(script)
    return script, run_dir, text


def test_pretrain_script_issues_the_right_commands(stubs, tmp_path):
    script, run_dir, text = _pretrain_script(tmp_path)
    lines = text.splitlines()
    for want in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300", "EXPECTED_DP=2", "TP=2", "PP=2"):
        assert want in lines, want
    r = subprocess.run(["bash", str(script)], env=_env(stubs, run_dir), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "world=8 tp=2 pp=2 cp=1 dp=2 master=node001:29500" in r.stdout
    log = (stubs / "log").read_text().splitlines()
    torchrun = [x for x in log if x.startswith("torchrun")]
    assert torchrun == [f"torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=node001:29500 "
                        f"--rdzv-id=4242 -m omni_mega train {tmp_path / 'small.yaml'} --run-dir {run_dir} "
                        f"--resume auto"]
    assert log[0].startswith("srun --kill-on-bad-exit=1")
    assert not any(x.startswith("scontrol requeue") for x in log)  # a finished run is not requeued


def test_usr1_asks_for_a_checkpoint_then_requeues(stubs, tmp_path):
    script, run_dir, _ = _pretrain_script(tmp_path)
    proc = subprocess.Popen(["bash", str(script)], env=_env(stubs, run_dir, STUB_MODE="wait"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not (stubs / "started").exists():
        assert time.time() < deadline and proc.poll() is None, "torchrun stub never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)  # what `--signal=B:USR1@300` delivers to the batch shell
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (run_dir / "SAVE_AND_EXIT").exists()
    assert "scontrol requeue 4242" in (stubs / "log").read_text().splitlines()


def test_layout_checks(stubs, tmp_path):
    with pytest.raises(ConfigError, match="tp x pp x cp"):
        render_pretrain(PretrainJob(_config(tmp_path), nodes=3, gpus_per_node=1))  # 3 GPUs for tp 2 x pp 2
    with pytest.raises(ConfigError, match="global_batch_size"):
        render_pretrain(PretrainJob(_config(tmp_path), nodes=3, gpus_per_node=4))  # dp 3 does not divide 8
    # Overrides reach the layout check and the trainer; the script refuses an allocation that cannot hold the layout
    # (tp 2 x pp 4 = 8 GPUs: 2 nodes fit with dp 1, a requeue onto 1 node of 4 GPUs does not).
    script, run_dir, text = _pretrain_script(tmp_path, overrides=("parallel.pp=4",))
    assert "EXPECTED_DP=1" in text.splitlines()
    r = subprocess.run(["bash", str(script)], env=_env(stubs, run_dir), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert (stubs / "log").read_text().splitlines()[-1].endswith("--resume auto --set parallel.pp=4")
    r = subprocess.run(["bash", str(script)], env=_env(stubs, run_dir, SLURM_JOB_NUM_NODES="1"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "not a multiple of tp x pp x cp = 2 x 4 x 1" in r.stderr
    with pytest.raises(ValueError, match="JOB_NAME"):
        render("#SBATCH --job-name={{JOB_NAME}}", {})

    from omni_mega.launch.slurm import main

    out = tmp_path / "cli.sbatch"
    assert main(["pretrain", _config(tmp_path), "--nodes", "2", "--gpus-per-node", "4", "-o", str(out)]) == 0
    assert "EXPECTED_DP=2" in out.read_text().splitlines()
    assert main(["pretrain", _config(tmp_path), "--nodes", "3", "--gpus-per-node", "1"]) == 2  # a config error


@pytest.mark.parametrize("mode,tool,out_flag", [("text", "tools/preprocess_data.py", "--output-prefix"),
                                                ("mm", "tools/preprocess_mmdata.py", "--output-dir")])
def test_preprocess_script(stubs, tmp_path, mode, tool, out_flag):
    script = tmp_path / "prep.sbatch"
    script.write_text(render_preprocess(mode, "/data/in put.jsonl", str(tmp_path / "out" / "docs"),
                                        "--tokenizer-type HuggingFaceTokenizer --tokenizer-model /tok/t.json"))
    _bash_n(script)
    r = subprocess.run(["bash", str(script)], env=_env(stubs, tmp_path, SLURM_CPUS_PER_TASK="7"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    cmd = [x for x in (stubs / "log").read_text().splitlines() if x.startswith("python")]
    assert cmd == [f"python {tool} --input /data/in put.jsonl {out_flag} {tmp_path / 'out' / 'docs'} "
                   "--tokenizer-type HuggingFaceTokenizer --tokenizer-model /tok/t.json"
                   + (" --append-eod" if mode == "text" else "") + " --workers 7"]
    with pytest.raises(ValueError, match="mode"):
        render_preprocess("video", "a", "b")
