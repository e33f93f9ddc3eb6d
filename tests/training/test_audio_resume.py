"""Exact resume inside the ASR job (objective ctc) and inside the omni SFT job (audio-text samples in LLM packs, the
audio encoder loaded from the ASR job and frozen) of a stage graph: a run SIGKILLed from outside after a checkpoint
and restarted with `--resume auto` reproduces the per-step losses of the uninterrupted graph bit for bit. Also:
`--stage` runs one job, a job that reads a missing job fails before training, the frozen encoder leaves E bitwise as
B wrote it. The harness is tests/training/test_exact_resume.py's."""

import json
import shutil

import pytest

from tests.training.test_exact_resume import _cmd, _finish, _kill_after, _losses, _start

CONFIG = """
name: audio_resume
model:
  llm: {{num_layers: 1, hidden_size: 32, num_attention_heads: 4, max_position_embeddings: 128}}
  audio: {{num_layers: 1, hidden_size: 32, num_attention_heads: 4, pool: 4}}
data: {{seq_length: 128, micro_batch_size: 1, global_batch_size: 2, pack_window: 8}}
optim: {{lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 1}}
train: {{log_interval: 1, tensorboard: false}}
stages:
  - {{name: asr, job: B, objective: ctc, steps: 4, seq_length: 256, ckpt_interval: 1, trainable: [audio, ctc_head],
     data: [{{name: sp, source: audio_shards, path: '{train}'}}], eval: {{heldout: '{heldout}', samples: 4}}}}
  - {{name: omni, job: E, steps: 4, ckpt_interval: 1, multimodal_ratio: 0.6, trainable: [llm, audio_projector],
     data: [{{name: t, source: demo_text, seed: 1}}, {{name: sp, source: audio_shards, path: '{train}'}}],
     init_from: {{audio: "job:B", ctc_head: "job:B"}}}}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from omni_mega.data.demo.speech import build_demo_speech

    d = tmp_path_factory.mktemp("audio_resume")
    speech = build_demo_speech(d / "data", num_train=48, num_heldout=4)
    cfg = d / "cfg.yaml"
    cfg.write_text(CONFIG.format(train=speech["train"], heldout=speech["heldout"]))
    straight, killed = d / "straight", d / "killed"
    p_straight = _start(_cmd(cfg, straight))  # the whole graph: B, then E
    _kill_after(_start(_cmd(cfg, killed, "--stage", "B")), killed / "B", 2)
    out = {"straight": _finish(p_straight), "missing": None}
    p_missing = _start(_cmd(cfg, d / "nowhere", "--stage", "E"))  # E before B exists: refused before step 1
    out["B"] = _finish(_start(_cmd(cfg, killed, "--stage", "asr", "--resume", "auto")))
    _kill_after(_start(_cmd(cfg, killed, "--stage", "E")), killed / "E", 2)
    out["E"] = _finish(_start(_cmd(cfg, killed, "--stage", "E", "--resume", "auto")))
    out["missing"] = _finish(p_missing, 2)
    return d, straight, killed, out


def test_ctc_job_resumes_bitwise(runs):
    _, straight, killed, out = runs
    assert "step_0000002: step 2, stage asr" in out["B"]
    losses = _losses(killed / "B")
    assert losses == _losses(straight / "B") and len(losses) == 4
    rows = [json.loads(x) for x in (straight / "B" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["cer"] for r in rows) and {r["objective"] for r in rows} == {"ctc"}


def test_omni_job_resumes_bitwise(runs):
    _, straight, killed, out = runs
    assert "step_0000002: step 2, stage omni" in out["E"]
    assert _losses(killed / "E") == _losses(straight / "E")
    rows = [json.loads(x) for x in (straight / "E" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["mm_ratio"] for r in rows) > 0  # audio-text samples were in the packs


def test_graph_order_and_missing_dependency(runs):
    _, straight, _, out = runs
    log = out["straight"]
    assert log.index("==== job B") < log.index("==== job E")
    assert "init_from group audio <- " in log and str(straight / "B") in log
    assert "config error" in out["missing"] and "nowhere/B" in out["missing"] and "step " not in out["missing"]


def test_frozen_encoder_unchanged_in_omni_job(runs):
    _, straight, _, _ = runs
    import torch

    from omni_mega.interop.dcp import tensor_metadata

    b, e = straight / "B" / "ckpt" / "step_0000004" / "dist", straight / "E" / "ckpt" / "step_0000004" / "dist"
    keys = [k for k in tensor_metadata(b) if k.startswith("audio.") and k in tensor_metadata(e)]
    assert len(keys) > 5
    tb, te = _read(b, keys), _read(e, keys)
    assert all(torch.equal(tb[k], te[k]) for k in keys)
    proj = [k for k in tensor_metadata(e) if k.startswith("audio_projector.")]
    assert proj and not all(torch.equal(x, y) for x, y in zip(_read(b, proj).values(), _read(e, proj).values()))
    shutil.rmtree(straight / "E" / "ckpt" / "step_0000001", ignore_errors=True)


def _read(ckpt_dir, keys) -> dict:
    import torch
    import torch.distributed.checkpoint as dcp

    from omni_mega.interop.dcp import tensor_metadata

    meta = tensor_metadata(ckpt_dir)
    state = {k: torch.empty(meta[k][0], dtype=meta[k][1]) for k in keys}
    dcp.load(state, checkpoint_id=str(ckpt_dir), no_dist=True)
    return state
