"""Exact resume inside an SFT stage and inside a DPO stage: a run SIGKILLed from outside and restarted with
`--resume auto` reproduces the uninterrupted run's per-step losses bit for bit (the DPO stage's reference
log-probs come back from the file its first start wrote)."""

import json
import shutil

import pytest

from tests.training.test_exact_resume import _cmd, _finish, _keep_up_to, _kill_after, _losses, _start


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from omni_mega.data.conversations.preprocess import main

    d = tmp_path_factory.mktemp("post_resume")
    conv = [{"messages": [{"role": "user", "content": f"Spell {w}."}, {"role": "assistant", "content": " ".join(w)}]}
            for w in ("cat", "dog", "bird", "fish", "horse", "mouse", "lion", "bear", "wolf", "deer")]
    pairs = [{"prompt": f"Say {w}.", "chosen": w, "rejected": w[::-1]} for w in ("red", "blue", "green", "gold")]
    for name, recs, kind in (("sft", conv, "sft"), ("pref", pairs, "preference")):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        main(["--input", str(d / f"{name}.jsonl"), "--output-dir", str(d / name), "--kind", kind])
    cfg = d / "cfg.yaml"
    cfg.write_text(f"""
name: post_resume
model: {{llm: {{num_layers: 2, hidden_size: 32, num_attention_heads: 4, max_position_embeddings: 128}}}}
data: {{seq_length: 96, micro_batch_size: 1, global_batch_size: 2, pack_window: 8}}
optim: {{lr: 1.0e-2, min_lr: 1.0e-3, warmup_steps: 1}}
train: {{log_interval: 1, tensorboard: false}}
stages:
  - {{name: sft, steps: 3, ckpt_interval: 1, objective: sft, data: [{{name: c, source: conversations, path: '{d / "sft"}'}}]}}
  - {{name: dpo, steps: 3, ckpt_interval: 1, objective: dpo, schedule: rewarmup, lr: 5.0e-3, warmup_steps: 1,
     data: [{{name: p, source: conversations, path: '{d / "pref"}'}}]}}
""")
    straight, killed = d / "straight", d / "killed"
    p_straight = _start(_cmd(cfg, straight))
    _kill_after(_start(_cmd(cfg, killed)), killed, 4)
    _finish(p_straight)
    for name, k in (("k4", 4), ("k2", 2)):
        shutil.copytree(killed, d / name)
        _keep_up_to(d / name, k)
    procs = {k: _start(_cmd(cfg, d / k, "--resume", "auto")) for k in ("k4", "k2")}
    out = {k: _finish(p) for k, p in procs.items()}
    return d, straight, out


def test_resume_inside_the_dpo_stage(runs):
    d, straight, out = runs
    assert "step_0000004: step 4, stage dpo" in out["k4"] and "reference log-probs loaded" in out["k4"]
    assert _losses(d / "k4") == _losses(straight)


def test_resume_inside_the_sft_stage(runs):
    d, straight, out = runs
    assert "step_0000002: step 2, stage sft" in out["k2"]
    assert _losses(d / "k2") == _losses(straight)
    rows = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["objective"] for r in rows] == ["sft"] * 3 + ["dpo"] * 3 and rows[3]["dpo_loss"] == pytest.approx(0.6931,
                                                                                                            abs=1e-3)
