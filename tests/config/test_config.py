"""One test per configuration rule: each bad config fails before any compute, naming the field and the fix."""

import pytest

from omni_mega.config import ConfigError, RunConfig, load_config, validate

EXAMPLES = ["examples/configs/tiny_text.yaml"]


def _cfg(*overrides):
    return load_config(None, list(overrides))


@pytest.mark.parametrize("path", EXAMPLES)
def test_examples_load_and_validate(path):
    cfg = load_config(path)
    validate(cfg, world_size=1)
    assert cfg.total_steps > 0


def test_overrides_are_typed_and_nested():
    cfg = _cfg("parallel.tp=2", "optim.lr=1e-3", "model.llm.num_layers=6", "stages=[{name: a, steps: 3}, {name: b, steps: 4}]")
    assert cfg.parallel.tp == 2 and cfg.optim.lr == 1e-3 and cfg.model.llm.num_layers == 6
    assert [s.name for s in cfg.stages] == ["a", "b"] and cfg.total_steps == 7
    assert isinstance(_cfg("optim.lr=1").optim.lr, float)  # an int where a float is expected is widened


RULES = [
    # (overrides, world_size, message fragment)
    (["parallel.tpp=2"], None, "parallel.tpp: unknown key; did you mean 'tp'"),
    (["model.llm.hiden_size=64"], None, "did you mean 'hidden_size'"),
    (["parallel.tp=two"], None, "parallel.tp: expected int"),
    (["parallel.tp=3"], None, "does not divide model.llm.num_attention_heads=4"),
    (["model.llm.num_query_groups=2", "parallel.tp=4"], None, "num_query_groups=2"),
    (["parallel.pp=4", "model.llm.num_layers=2"], None, "larger than model.llm.num_layers=2"),
    (["parallel.pp=2", "model.llm.num_layers=3"], None, "divisible by pp x vpp"),
    (["parallel.tp=2"], 3, "world size 3 is not divisible by tp x pp x cp"),
    (["parallel.tp=2", "parallel.pp=2"], 6, "world size 6"),
    (["data.global_batch_size=6", "data.micro_batch_size=2"], 2, "not divisible by micro_batch_size x dp"),
    (["data.seq_length=8192"], None, "exceeds model.llm.max_position_embeddings"),
    (["parallel.sp=true"], None, "sequence parallelism needs parallel.tp > 1"),
    (["parallel.vpp=2"], None, "interleaving needs parallel.pp >= 2"),
    (["model.llm.hidden_size=66"], None, "not divisible by num_attention_heads"),
    (["optim.min_lr=1.0", "optim.lr=0.1"], None, "optim.min_lr"),
    (["optim.decay=exp"], None, "optim.decay"),
    (["data.global_batch_size=7", "data.micro_batch_size=2"], None, "not a multiple of micro_batch_size"),
    (["stages=[{name: a, steps: 0}]"], None, "stages[a].steps"),
    (["stages=[{name: a, steps: 1}, {name: a, steps: 1}]"], None, "unique"),
    (["stages=[{name: a, stepz: 1}]"], None, "did you mean 'steps'"),
    # CLIP-style vision towers
    (["model.vit={num_layers: 2, feature_layer: -3}"], None, "model.vit.feature_layer: must name one of the 2 layers"),
    (["model.vit={num_layers: 2, feature_layer: 3}"], None, "model.vit.feature_layer"),
    (["model.vit={feature_select: pooled}"], None, "model.vit.feature_select: must be default or full"),
    (["model.vit={feature_select: full}"], None, "full keeps the class token in the features: it needs class_token"),
    (["model.vit={class_token: true, pos_embed_grid: 4, rope_layout: none}"], None,
     "model.vit.class_token: needs merge_size 1"),
    (["model.vit={class_token: true, merge_size: 1}"], None, "needs a learned position table"),
    (["model.vit={window_size: 20}"], None, "model.vit.window_size: must be 0"),
    (["model.vit={full_attention_layers: [1]}"], None, "model.vit.full_attention_layers: only means something with"),
    (["model.vit={window_size: 112, full_attention_layers: [1, 2]}"], None, "must be distinct layer indexes in"),
]


@pytest.mark.parametrize("overrides,world,msg", RULES, ids=[r[2][:40] for r in RULES])
def test_rule(overrides, world, msg):
    with pytest.raises(ConfigError, match=msg.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        cfg = _cfg(*overrides)
        validate(cfg, world_size=world)


def test_valid_layouts_pass():
    validate(_cfg("parallel.tp=2", "parallel.pp=2", "model.llm.num_layers=4"), world_size=8)
    cfg = _cfg("parallel.tp=2", "parallel.pp=2", "parallel.vpp=2", "model.llm.num_layers=4")
    validate(cfg, world_size=4)
    assert cfg.parallel.data_parallel_size(8) == 2


def test_yaml_file_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)
    p.write_text("parallel: {tp: 1}\nmodel: {llm: {vocab: 3}}\n")
    with pytest.raises(ConfigError, match="model.llm.vocab: unknown key; did you mean 'vocab_size'"):
        load_config(p)


def test_defaults_are_a_valid_config():
    cfg = RunConfig()
    validate(cfg, world_size=1)  # raises ConfigError if any default breaks a rule
    assert cfg.total_steps == sum(s.steps for s in cfg.stages) > 0
