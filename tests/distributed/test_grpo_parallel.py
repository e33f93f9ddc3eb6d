"""GRPO under TP=2 with sequence parallelism and under PP=2 equals TP=1: the same weights (through
dist_checkpointing) and prompts give the same rollouts (equal rewards and response lengths: the KV-cache generator
samples the same tokens with its logits split over TP ranks or computed on the last pipeline stage) and the same loss
and gradient norm over two steps. A multimodal GRPO stage at PP=2 that trains only the LLM leaves the vision side
bitwise unchanged on every rank."""

import json

import pytest

from tests.distributed.launch import torchrun

WORKER = "run_parallel_equivalence.py"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    from omni_mega.data.conversations.preprocess import main

    d = tmp_path_factory.mktemp("prompts")
    lines = [json.dumps({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"}], "answer": str(a + b)})
             for a in range(8) for b in range(4)]
    (d / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    main(["--input", str(d / "prompts.jsonl"), "--output-dir", str(d / "ds"), "--kind", "prompts"])
    return d / "ds"


def _grpo(prompts) -> list[str]:
    # 4 prompts x 4 samples of up to 12 tokens per step; besides the answer (a random tiny model rarely gets it
    # right) a reward function that differs between any two samples, so that advantages are not zero.
    share = "tests.rewards:byte_share"
    return [f"--set=stages=[{{name: s, steps: 2, objective: grpo, global_batch_size: 4, grpo: {{group_size: 4, "
            f"max_new_tokens: 12, rewards: [{{name: answer}}, {{name: letters, weight: 0.5, function: '{share}'}}]}}, "
            f"data: [{{name: p, source: conversations, path: '{prompts}'}}]}}]", "--set=optim.lr=3e-3",
            "--set=data.micro_batch_size=1", "--set=data.seq_length=128", "--set=model.llm.max_position_embeddings=256"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prompts):
    d = tmp_path_factory.mktemp("grpo_equiv")
    ckpt, out = d / "ckpt", d / "ref.json"
    torchrun(WORKER, ["save", str(ckpt), str(out), *_grpo(prompts)], nproc=1)
    return ckpt, json.loads(out.read_text())


@pytest.mark.parametrize("layout", [["--set=parallel.tp=2", "--set=parallel.sp=true"],
                                    ["--set=parallel.pp=2"]], ids=["tp2_sp", "pp2"])
def test_grpo_layout_matches_single_process(reference, prompts, layout, tmp_path):
    ckpt, ref = reference
    out = tmp_path / "out.json"
    torchrun(WORKER, ["load", str(ckpt), str(out), *_grpo(prompts), *layout], nproc=2)
    got = json.loads(out.read_text())
    for g, r in zip(got["metrics"], ref["metrics"]):  # the rollouts: the same tokens were sampled
        for k in ("reward_mean", "reward_std", "response_length", "zero_advantage_groups"):
            assert g[k] == pytest.approx(r[k], abs=1e-9), (k, got["metrics"], ref["metrics"])
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-4, abs=1e-6), (got, ref)
    assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4), (got, ref)
    assert ref["grad_norm"][0] > 0 and ref["metrics"][0]["reward_std"] > 0  # advantages were not all zero


def test_multimodal_grpo_at_pp2_keeps_the_vision_side_frozen(tmp_path):
    out = tmp_path / "out.json"
    torchrun(WORKER, ["fresh", str(tmp_path / "unused"), str(out), "--set=parallel.pp=2",
                      "--set=model.vit={num_layers: 2, hidden_size: 32, num_attention_heads: 2, patch_size: 14, "
                      "temporal_patch_size: 2, merge_size: 2}",
                      "--set=model.connector={kind: vet, visual_vocab_size: 128, num_indicators: 0, "
                      "image_token_id: -200}",
                      "--set=stages=[{name: s, steps: 2, objective: grpo, global_batch_size: 2, trainable: [llm], "
                      "max_pixels: 3136, min_pixels: 3136, grpo: {group_size: 2, max_new_tokens: 6, "
                      "rewards: [{name: length, max_length: 6}]}, data: [{name: p, source: demo_prompts}]}]",
                      "--set=data.micro_batch_size=1", "--set=data.seq_length=128",
                      "--set=model.llm.max_position_embeddings=256"], nproc=2)
    got = json.loads(out.read_text())
    # rank 0 holds the ViT, connector and the first LLM layers: vision frozen (checked bitwise on every rank), LLM moved
    assert got["frozen"] > 0 and got["trained"] > 0, got
