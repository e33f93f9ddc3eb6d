"""The dry-run plan: analytic parameter counts against built models (exact, per group and per TP split), the
activation formula against Korthikanti et al. 2022's closed forms, and the memory bookkeeping over layouts."""

import os

import pytest
import torch

from omni_mega.config import (ConnectorConfig, LLMConfig, ModelConfig, ParallelConfig, RunConfig, StageConfig,
                              ViTConfig)
from omni_mega.training import dry_run as P


@pytest.fixture(scope="module")
def megatron_single():
    """megatron-core parallel state for one process (TP=PP=1, gloo, CPU mode), torn down after this module."""
    from omni_mega.runtime import init_distributed, shutdown
    from tests.distributed.launch import free_port

    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    yield init_distributed(ParallelConfig(), seed=1234)
    shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _llm(**kw):
    base = dict(num_layers=3, hidden_size=48, num_attention_heads=6, num_query_groups=2, vocab_size=300,
                max_position_embeddings=64)
    return LLMConfig(**{**base, **kw})


def _vit(**kw):
    base = dict(num_layers=3, hidden_size=24, num_attention_heads=2, patch_size=2, ffn_hidden_size=40,
                pos_embed_grid=3)
    return ViTConfig(**{**base, **kw})


CASES = {
    # text: GQA + SwiGLU + RMSNorm, untied; and MHA + GELU + LayerNorm, tied, ffn set explicitly
    "text_gqa_swiglu": ModelConfig(llm=_llm()),
    # Qwen3-style: own head dim, q/k/v bias, per-head q/k norms, tied
    "text_headdim_qkvbias_qknorm": ModelConfig(llm=_llm(kv_channels=12, add_qkv_bias=True, qk_layernorm=True,
                                                       untie_embeddings=False)),
    "text_tied_gelu_ln": ModelConfig(llm=_llm(num_query_groups=None, activation="gelu", normalization="LayerNorm",
                                             untie_embeddings=False, ffn_hidden_size=72)),
    # LLaVA-style projector with a SwiGLU RMSNorm ViT; Ovis-style visual head + VET with indicator rows
    "omni_mlp": ModelConfig(llm=_llm(), vit=_vit(activation="swiglu", normalization="RMSNorm", merge_size=1),
                            connector=ConnectorConfig(kind="mlp", projector_hidden_size=20)),
    # SigLIP-style tower: patch bias, no 2D RoPE, tanh GELU
    "omni_siglip_like": ModelConfig(llm=_llm(), vit=_vit(patch_bias=True, rope_layout="none", activation="gelu_tanh",
                                                         merge_size=1), connector=ConnectorConfig(kind="mlp")),
    "omni_vet": ModelConfig(llm=_llm(), vit=_vit(pos_embed_grid=0, temporal_patch_size=1),
                            connector=ConnectorConfig(kind="vet", visual_vocab_size=150, num_indicators=3,
                                                      indicator_token_ids=[-301, -302])),
}
GROUPS = ["llm", "llm.embedding", "llm.layers", "llm.layers[1:]", "llm.layers[-1]", "llm.final_norm",
          "llm.output_layer"]
VISION = ["vit", "vit.patch_embed", "vit.layers", "vit.layers[-1:]", "vit.layers[0:2]"]


@pytest.mark.parametrize("case", list(CASES))
def test_counts_match_built_model_exactly(megatron_single, case):
    from omni_mega.models.factory import build_model
    from omni_mega.models.groups import resolve

    model_cfg = CASES[case]
    cfg = RunConfig(model=model_cfg, stages=[StageConfig()])
    model = build_model(model_cfg, ParallelConfig(), P.llm_vocab(cfg), 64, torch.float32)
    leaves = P.leaves(cfg)
    params = list(model.parameters())
    assert sum(x.total for x in leaves.values()) == sum(p.numel() for p in params)
    # TP classification: what the plan divides by tp is exactly what megatron marks tensor-model-parallel.
    split = sum(p.numel() for p in params if getattr(p, "tensor_model_parallel", False))
    assert sum(x.split for x in leaves.values()) == split
    groups = list(GROUPS)
    if model_cfg.vit is not None:
        groups += VISION + (["projector"] if model_cfg.connector.kind == "mlp" else ["visual_head", "vet"])
    names = list(leaves)
    for g in groups:
        want = sum(p.numel() for p in resolve([model], g))
        got = sum(leaves[k].total for k in P.group_leaves(g, names, cfg))
        assert got == want, g


def test_sizing_rules_agree_with_the_models():
    from omni_mega.models import llm as M

    for v, tp in [(257, 1), (257, 8), (163840, 4), (50257, 3), (32000, 6)]:
        assert P.padded_vocab_size(v, tp) == M.padded_vocab_size(v, tp)
    for kw in [dict(), dict(activation="gelu"), dict(hidden_size=4096, num_attention_heads=32),
               dict(ffn_hidden_size=100)]:
        c = _llm(**kw)
        assert P.ffn_size(c) == M.ffn_size(c)


def test_llama2_7b_count_is_the_published_one():
    # Llama-2-7B (the LLaVA-1.5 LLM): 6,738,415,616 parameters in its released checkpoint.
    llm = LLMConfig(num_layers=32, hidden_size=4096, num_attention_heads=32, ffn_hidden_size=11008, vocab_size=32000)
    cfg = RunConfig(model=ModelConfig(llm=llm))
    assert sum(x.total for x in P.leaves(cfg).values()) == 6_738_415_616


@pytest.mark.parametrize("t", [1, 2, 8])
def test_activation_formula_reduces_to_korthikanti(t):
    s, b, h, a = 2048, 2, 1024, 16
    # 4h GELU MLP, full multi-head attention: Table 2 of the paper, selective recompute.
    sp = P.layer_activation_bytes(s, b, h, a, a, 4 * h, False, t, sp=True)
    no_sp = P.layer_activation_bytes(s, b, h, a, a, 4 * h, False, t, sp=False)
    assert sp == pytest.approx(34 * s * b * h / t)
    assert no_sp == pytest.approx(s * b * h * (10 + 24 / t))
    # GQA keeps fewer K/V bytes; SwiGLU keeps two fc1 halves.
    assert P.layer_activation_bytes(s, b, h, a, 4, 4 * h, False, t, True) < sp
    assert P.layer_activation_bytes(s, b, h, a, a, 4 * h, True, t, True) == pytest.approx(sp + 8 * s * b * h / t)


def _run(tp=2, pp=2, vpp=None, untie=True, stages=None):
    llm = _llm(num_layers=8, untie_embeddings=untie)
    return RunConfig(model=ModelConfig(llm=llm, vit=_vit(), connector=ConnectorConfig()),
                     parallel=ParallelConfig(tp=tp, pp=pp, vpp=vpp, sp=tp > 1),
                     stages=stages or [StageConfig(trainable=["llm", "vit", "projector"])])


@pytest.mark.parametrize("pp,vpp,untie", [(1, None, True), (2, None, True), (4, 2, True), (2, None, False)])
def test_pipeline_ranks_partition_the_model(pp, vpp, untie):
    cfg = _run(tp=1, pp=pp, vpp=vpp, untie=untie)
    lay = P.layout_of(cfg, pp)
    held = [P.rank_leaves(cfg, lay, r) for r in range(pp)]
    flat = [k for ks in held for k in ks]
    assert sorted(flat) == sorted(P.leaves(cfg)), "every leaf on exactly one pipeline rank"
    total = sum(x.total for x in P.leaves(cfg).values())
    copy = P.leaves(cfg)["llm.embedding"].total if (not untie and pp > 1) else 0  # tied: the last rank's copy
    assert sum(P.rank_params(cfg, lay, r) for r in range(pp)) == total + copy
    if vpp:  # interleaved: rank 0 holds chunks 0 and pp (layers 0 and 4 with one layer per chunk)
        assert [k for k in held[0] if k.startswith("llm.layers")] == ["llm.layers.0", "llm.layers.4"]


def test_memory_follows_the_trainable_set_and_dp():
    frozen_llm = StageConfig(name="a", trainable=["projector"])
    everything = StageConfig(name="b", trainable=["llm", "vit", "projector"])
    cfg = _run(stages=[frozen_llm, everything])
    lay1, lay8 = P.layout_of(cfg, 4), P.layout_of(cfg, 32)
    names = list(P.leaves(cfg))
    proj = set(P.group_leaves("projector", names, cfg))
    full = set(names)
    m_proj = P.stage_memory(cfg, lay1, 64, 8, proj)
    m_full1, m_full8 = P.stage_memory(cfg, lay1, 64, 8, full), P.stage_memory(cfg, lay8, 64, 64, full)
    assert len(m_full1) == 2  # first and last pipeline rank
    assert m_proj[1].grads == 0 and m_proj[1].optimizer == 0  # nothing trains on the last rank
    assert m_proj[0].weights == m_full1[0].weights
    assert m_proj[0].grads == 4 * P.leaves(cfg)["projector"].per_rank(2)
    assert m_full8[0].optimizer == pytest.approx(m_full1[0].optimizer / 8)  # Adam state sharded over dp
    assert m_full8[0].grads == m_full1[0].grads  # the fp32 grad buffer is not
    cfg.optim.distributed_optimizer = False  # replicated Adam state: dp no longer divides it
    assert P.stage_memory(cfg, lay8, 64, 64, full)[0].optimizer == m_full1[0].optimizer
    # The ViT's activations count only while the ViT trains.
    assert m_full1[0].activations > m_proj[0].activations
    assert m_full1[1].activations == m_proj[1].activations


def test_planning_world_size():
    cfg = _run(tp=2, pp=2)
    assert P.planning_world_size(cfg, 16, 1) == (16, None)
    assert P.planning_world_size(cfg, None, 8) == (8, None)
    world, note = P.planning_world_size(cfg, None, 1)
    assert world == 4 and "--nodes" in note


def test_cli_dry_run_prints_every_stage(capsys):
    from omni_mega.cli import main

    cfg = "examples/configs/tiny_text_curriculum.yaml"
    assert main(["train", cfg, "--dry-run", "--world-size", "2", "--set", "stages.2.global_batch_size=8"]) == 0
    out = capsys.readouterr().out
    for name in ("pretrain", "cooldown", "long_context"):
        assert f"] stage {name} (lm): " in out
    assert "world 2 = tp 1 x pp 1 x cp 1 x dp 2" in out and "memory/GPU pp rank 0" in out
    assert main(["train", cfg, "--dry-run", "--world-size", "2", "--nodes", "1"]) == 2
    # A layout the config cannot use is a config error naming the field.
    assert main(["train", cfg, "--dry-run", "--world-size", "2"]) == 2
    assert "global_batch_size" in capsys.readouterr().err
