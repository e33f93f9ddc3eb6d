"""objective grpo: advantages (population std), k3, the clipped per-token loss on fixed numbers, the rewards, and the
rollout log-probs against a training-mode forward of the same tokens (so the ratio is 1 on a rollout batch's first
step)."""

import math
from types import SimpleNamespace

import pytest
import torch

from omni_mega.objectives import rewards as R
from omni_mega.objectives.grpo import advantages, grpo_loss, k3


def test_advantages_use_the_population_std_and_equal_rewards_give_zero():
    a = advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]))
    assert a[0].tolist() == pytest.approx([0.9998, -0.9998, -0.9998, 0.9998], abs=1e-4)  # std 0.5, eps 1e-4
    assert a[1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_k3_is_zero_for_equal_policies_and_positive_otherwise():
    lp = torch.log(torch.tensor([0.2, 0.5, 0.9]))
    assert torch.equal(k3(lp, lp), torch.zeros(3))
    assert (k3(lp, lp - 0.3) > 0).all() and (k3(lp, lp + 0.3) > 0).all()


def _batch(ratio: float, adv: float, n: int = 4):
    old = torch.full((1, n), -1.0)
    return ({"loss_mask": torch.tensor([[0.0] + [1.0] * (n - 1)]), "old_logp": old,
             "advantage": torch.full((1, n), adv)}, -(old + math.log(ratio)))  # per-token CE = -logp


@pytest.mark.parametrize("ratio, adv, want, clipped", [(1.5, 1.0, -1.2, 1.0), (1.5, -1.0, 1.5, 0.0),
                                                       (0.5, -1.0, 0.8, 1.0), (1.0, 2.0, -2.0, 0.0)])
def test_clipped_surrogate_per_token(ratio, adv, want, clipped):
    cfg = SimpleNamespace(clip_low=0.2, clip_high=0.2, kl_beta=0.0)
    batch, ce = _batch(ratio, adv)
    total, count, values = grpo_loss(cfg, batch, ce)
    assert int(count) == 3 and total.item() / 3 == pytest.approx(want, rel=1e-5)
    assert (values["clip_fraction"][0] / values["clip_fraction"][1]).item() == clipped


def test_kl_term_adds_beta_times_k3():
    cfg = SimpleNamespace(clip_low=0.2, clip_high=0.2, kl_beta=0.1)
    batch, ce = _batch(1.0, 0.0)
    batch["ref_logp"] = torch.full((1, 4), -1.5)
    total, _, values = grpo_loss(cfg, batch, ce)
    want = 0.1 * (math.exp(-0.5) + 0.5 - 1)
    assert total.item() / 3 == pytest.approx(want, rel=1e-5)
    assert (values["kl"][0] / values["kl"][1]).item() == pytest.approx(want / 0.1, rel=1e-5)


def test_rewards():
    assert R.answer_reward("I think <answer> 42.0 </answer>", "42") == 1.0
    assert R.answer_reward("so \\boxed{7}", "7") == 1.0 and R.answer_reward("Red.", "red") == 1.0
    assert R.answer_reward("<answer>41</answer>", "42") == 0.0
    assert R.format_reward("x <answer>2</answer>", "") == 1.0 and R.format_reward("<answer>2</answer> extra", "") == 0.0
    pen = R.length_penalty(100)
    assert pen("", "", 40) == 0.0 and pen("", "", 75) == pytest.approx(-0.5) and pen("", "", 500) == -1.0
    rs = R.build_rewards([SimpleNamespace(name="mine", weight=2.0, function="operator:eq", max_length=1)])
    assert rs[0][0] == "mine" and rs[0][2]("x", "x") == 1.0 and rs[0][2]("x", "y") == 0.0
    with pytest.raises(ValueError, match="cannot import"):
        R.build_rewards([SimpleNamespace(name="bad", weight=1.0, function="no.such:thing", max_length=1)])


@pytest.fixture(scope="module")
def tiny_model():
    import os

    from omni_mega.config import LLMConfig, ModelConfig, ParallelConfig
    from omni_mega.models.factory import build_model
    from omni_mega.runtime import init_distributed, shutdown
    from tests.distributed.launch import free_port

    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    init_distributed(ParallelConfig(), seed=3)
    cfg = ModelConfig(llm=LLMConfig(num_layers=2, hidden_size=32, num_attention_heads=4, max_position_embeddings=128))
    yield build_model(cfg, ParallelConfig(), 384, 128, torch.float32)
    shutdown()
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_rollout_logprobs_equal_a_training_forward(tiny_model):
    """Two rollouts packed into one micro-batch: the training forward's log-probs at the response tokens are the
    generator's (so rho = 1 before the first update)."""
    from omni_mega.inference import Generator, SamplingParams
    from omni_mega.objectives.base import packed_seq_params
    from omni_mega.objectives.grpo import GRPOObjective

    plan = SimpleNamespace(seq_length=96, seed=1, index=0, start_step=0,
                           cfg=SimpleNamespace(grpo=SimpleNamespace(rewards=[SimpleNamespace(
                               name="answer", weight=1.0, function=None, max_length=1)], ppo_epochs=1)))
    obj = GRPOObjective(plan)
    prompts, samples = [], []
    for k, prompt in enumerate(([5, 6, 7, 8], [9, 10, 11])):
        res = Generator(tiny_model, 300).generate(prompt, SamplingParams(max_new_tokens=12, temperature=1.0, seed=k))
        prompts.append({"key": (0, k), "prompt_ids": torch.tensor(prompt), "pixel_values": None, "grid_thw": None})
        samples.append({"key": [0, k], "response": res.ids, "logprobs": res.logprobs, "advantage": 1.0})
    (mb,) = obj._pack(prompts, samples)
    tiny_model.eval()
    with torch.no_grad():
        ce = tiny_model(mb["tokens"], mb["position_ids"], None, labels=mb["labels"].masked_fill(mb["loss_mask"] == 0, 0),
                        packed_seq_params=packed_seq_params(mb))
    mask = mb["loss_mask"][0] > 0
    assert int(mask.sum()) == sum(len(s["response"]) for s in samples)
    err = (-ce[0][mask] - mb["old_logp"][0][mask]).abs().max().item()
    assert err < 1e-4, err
