"""Exact resume inside an SFT, a DPO and a GRPO stage: a run SIGKILLed from outside and restarted with
`--resume auto` reproduces the uninterrupted run's per-step losses bit for bit (the DPO stage's reference
log-probs come back from the file its first start wrote; the GRPO stage's KL reference from the checkpoint at its
start, and its second epoch on a rollout batch trains on the rollouts the checkpoint holds)."""

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
    prompts = [{"messages": [{"role": "user", "content": f"Say {w}."}], "answer": w} for w in ("red", "blue", "gold")]
    for name, recs, kind in (("sft", conv, "sft"), ("pref", pairs, "preference"), ("prompts", prompts, "prompts")):
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
  - {{name: grpo, steps: 3, ckpt_interval: 1, objective: grpo, schedule: rewarmup, lr: 5.0e-3, warmup_steps: 0,
     global_batch_size: 2, grpo: {{group_size: 3, max_new_tokens: 6, kl_beta: 0.1, ppo_epochs: 2,
     rewards: [{{name: share, function: 'tests.rewards:byte_share'}}]}},
     data: [{{name: q, source: conversations, path: '{d / "prompts"}'}}]}}
""")
    straight, killed = d / "straight", d / "killed"
    p_straight = _start(_cmd(cfg, straight))
    _kill_after(_start(_cmd(cfg, killed)), killed, 8)
    _finish(p_straight)
    for name, k in (("k8", 8), ("k4", 4), ("k2", 2)):
        shutil.copytree(killed, d / name)
        _keep_up_to(d / name, k)
    procs = {k: _start(_cmd(cfg, d / k, "--resume", "auto")) for k in ("k8", "k4", "k2")}
    out = {k: _finish(p) for k, p in procs.items()}
    return d, straight, out


def test_resume_inside_the_grpo_stage(runs):
    d, straight, out = runs
    assert "step_0000008: step 8, stage grpo" in out["k8"]
    assert _losses(d / "k8") == _losses(straight)
    rows = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()][6:]
    assert [r["objective"] for r in rows] == ["grpo"] * 3
    assert rows[0]["rollout_ms"] > 0 and rows[1]["rollout_ms"] == 0 and rows[2]["rollout_ms"] > 0  # 2 epochs a batch
    assert rows[1]["kl"] > 0 and rows[0]["reward_std"] > 0  # the KL term and the advantages were live


def test_report_shows_each_objectives_metrics(runs, tmp_path):
    from omni_mega.training.report import write_report

    _, straight, _ = runs
    mine = tmp_path / "run"
    shutil.copytree(straight, mine)
    png, md = write_report(mine)
    lines = md.read_text().splitlines()
    dpo = [x for x in lines if x.startswith("| dpo | dpo |")]
    grpo = [x for x in lines if x.startswith("| grpo | grpo |")]
    assert len(dpo) == 1 and "reward_accuracy" in dpo[0], lines
    assert len(grpo) == 1 and "reward_mean" in grpo[0] and "kl" in grpo[0], lines
    assert png.stat().st_size > 0


def test_resume_inside_the_dpo_stage(runs):
    d, straight, out = runs
    assert "step_0000004: step 4, stage dpo" in out["k4"] and "reference log-probs loaded" in out["k4"]
    assert _losses(d / "k4") == _losses(straight)


def test_resume_inside_the_sft_stage(runs):
    d, straight, out = runs
    assert "step_0000002: step 2, stage sft" in out["k2"]
    assert _losses(d / "k2") == _losses(straight)
    rows = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["objective"] for r in rows] == ["sft"] * 3 + ["dpo"] * 3 + ["grpo"] * 3 and rows[3]["dpo_loss"] == pytest.approx(0.6931,
                                                                                                            abs=1e-3)
