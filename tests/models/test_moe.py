"""Mixture of experts and multi-latent attention in one process: the dry-run's analytic counts (total, TP-split,
activated, per module group) against built models, the dense/MoE layer pattern, and the router following the
stage's per-token-loss setting."""

import pytest
import torch

from omni_mega.config import DataConfig, LLMConfig, ModelConfig, ParallelConfig, RunConfig, StageConfig
from omni_mega.training import dry_run as P

MOE = dict(num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=24, moe_layer_freq=[0, 1, 1],
           moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True, moe_aux_loss_coeff=0.01)
MLA = dict(multi_latent_attention=True, kv_lora_rank=16, qk_head_dim=8, qk_pos_emb_head_dim=4, v_head_dim=12)
CASES = {
    "moe_shared": dict(MOE, moe_shared_expert_intermediate_size=40),
    "moe_every_2nd_gelu": dict(MOE, moe_layer_freq=2, activation="gelu", normalization="LayerNorm"),
    "mla": MLA,
    "mla_qlora_moe": dict(MOE, **MLA, q_lora_rank=20, moe_shared_expert_intermediate_size=24),
}
GROUPS = ["llm", "llm.layers", "llm.layers[1:]", "llm.layers[0]", "llm.experts", "llm.router", "llm.shared_experts"]


def _cfg(kw) -> RunConfig:
    llm = LLMConfig(num_layers=3, hidden_size=48, num_attention_heads=4, vocab_size=300, max_position_embeddings=64,
                    ffn_hidden_size=64, **kw)
    return RunConfig(model=ModelConfig(llm=llm), data=DataConfig(seq_length=32), stages=[StageConfig()])


@pytest.mark.parametrize("case", list(CASES))
def test_counts_match_built_model(megatron_single, case):
    from omni_mega.models.factory import build_model
    from omni_mega.models.groups import resolve

    cfg = _cfg(CASES[case])
    model = build_model(cfg.model, ParallelConfig(), P.llm_vocab(cfg), 64, torch.float32)
    leaves, params = P.leaves(cfg), list(model.parameters())
    assert sum(x.total for x in leaves.values()) == sum(p.numel() for p in params)
    assert sum(x.split for x in leaves.values()) == sum(p.numel() for p in params
                                                        if getattr(p, "tensor_model_parallel", False))
    names = list(leaves)
    moe = cfg.model.llm.num_moe_experts is not None
    for g in GROUPS if moe else GROUPS[:4]:
        want = sum(p.numel() for p in resolve([model], g))
        assert sum(leaves[k].total for k in P.group_leaves(g, names, cfg)) == want, g
    if moe:  # activated: top-k of the routed experts per MoE layer
        llm = cfg.model.llm
        one = sum(p.numel() for p in model.decoder.layers[-1].mlp.experts.local_experts[0].parameters())
        skipped = (llm.num_moe_experts - llm.moe_router_topk) * one * sum(llm.moe_layers())
        assert sum(x.activated for x in leaves.values()) == sum(p.numel() for p in params) - skipped
        kinds = ["MoELayer" if type(layer.mlp).__name__ == "MoELayer" else "MLP" for layer in model.decoder.layers]
        assert kinds == ["MoELayer" if m else "MLP" for m in llm.moe_layers()]


def test_moe_layer_pattern():
    assert LLMConfig(num_layers=4, num_moe_experts=2, moe_layer_freq=2).moe_layers() == [True, False, True, False]
    assert LLMConfig(num_layers=3, num_moe_experts=2, moe_layer_freq=[0, 1, 1]).moe_layers() == [False, True, True]
    assert LLMConfig(num_layers=3).moe_layers() == [False] * 3
    from omni_mega.config import ConfigError

    with pytest.raises(ConfigError, match="moe_layer_freq"):
        LLMConfig(num_layers=3, num_moe_experts=2, moe_layer_freq=[0, 1])
    with pytest.raises(ConfigError, match="moe_router_topk"):
        LLMConfig(num_moe_experts=2, moe_router_topk=3)


def test_router_follows_the_stage_per_token_setting(megatron_single):
    from omni_mega.models.factory import build_model

    cfg = _cfg(CASES["moe_shared"])
    model = build_model(cfg.model, ParallelConfig(), P.llm_vocab(cfg), 64, torch.float32)
    router = model.decoder.layers[1].mlp.router
    assert router.calculate_per_token_loss is False
    model.config.calculate_per_token_loss = True  # what the trainer sets for a per-token objective (sft, dpo)
    assert router.calculate_per_token_loss is True


def test_validation_of_the_layout():
    from omni_mega.config import ConfigError, validate

    cfg = _cfg(CASES["moe_shared"])
    cfg.parallel = ParallelConfig(ep=4)
    validate(cfg, world_size=4)
    with pytest.raises(ConfigError, match="tp x ep x pp"):
        validate(cfg, world_size=2)
    cfg.parallel = ParallelConfig(ep=3)
    with pytest.raises(ConfigError, match="does not divide model.llm.num_moe_experts"):
        validate(cfg, world_size=6)
    cfg.parallel = ParallelConfig(tp=2)
    with pytest.raises(ConfigError, match="sequence parallelism"):
        validate(cfg, world_size=2)
    dense = _cfg({})
    dense.parallel = ParallelConfig(ep=2)
    with pytest.raises(ConfigError, match="dense model"):
        validate(dense, world_size=2)
