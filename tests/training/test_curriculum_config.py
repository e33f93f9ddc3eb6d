"""Stage specs and module groups: bad input fails before any compute, naming the stage and the field; group names
resolve to the right modules whatever the pipeline layout (global layer indices)."""

import pytest
import torch

from omni_mega.config import ConfigError, load_config, validate
from omni_mega.config.plan import plan_stages
from omni_mega.models.groups import resolve
from omni_mega.training.freeze import apply_trainable
from omni_mega.config.groups import parse_group


def _cfg(*stages, extra=()):
    return load_config(None, [*extra, "stages=[" + ", ".join(stages) + "]"])


BAD = [
    (["{name: s1, steps: 0}"], "stages[s1].steps: must be >= 1, got 0"),
    (["{name: s1, tokens: 0}"], "stages[s1].tokens: must be >= 1"),
    (["{name: s1, steps: 2, tokens: 100}"], "stages[s1].tokens: set steps or tokens, not both"),
    (["{name: s1, steps: 2, trainable: []}"], "stages[s1].trainable: nothing trainable"),
    (["{name: s1, steps: 2, trainable: [llm.decoder]}"], "stages[s1].trainable: unknown module group 'llm.decoder'"),
    (["{name: s1, steps: 2, trainable: [vit]}"], "stages[s1].trainable: unknown module group 'vit'"),
    (["{name: s1, steps: 2, trainable: ['llm.embedding[0]']}"], "only layer lists"),
    (["{name: s1, steps: 2, trainable: ['llm.layers[x:]']}"], "is not a module-group name"),
    (["{name: s1, steps: 2, schedule: resume}"], "stages[s1].schedule: the first stage has no previous schedule"),
    (["{name: a, steps: 2}", "{name: b, steps: 2, schedule: resume, lr: 1.0}"], "stages[b].schedule: resume continues"),
    (["{name: s1, steps: 2, schedule: warm}"], "stages[s1].schedule: must be one of"),
    (["{name: s1, steps: 2, decay: exp}"], "stages[s1].decay"),
    (["{name: s1, steps: 2, lr: 1.0e-4, min_lr: 1.0e-3}"], "stages[s1].min_lr: must be in [0, lr=0.0001]"),
    (["{name: s1, steps: 2, seq_length: 8192}"], "stages[s1].seq_length: 8192 exceeds"),
    (["{name: s1, steps: 2, global_batch_size: 7}"], "stages[s1].global_batch_size: 7 is not a multiple"),
    (["{name: s1, steps: 2, data: [{name: d, weight: 0}]}"], "stages[s1].data[d].weight: must be > 0"),
    (["{name: s1, steps: 2, data: [{name: d, source: indexed}]}"], "stages[s1].data[d].path"),
    (["{name: s1, steps: 2, lr_mult: [{group: llm.embedding, mult: 0.1}]}"], "stages[s1].lr_mult[llm.embedding].group"),
    (["{name: s1, steps: 2, save: some}"], "stages[s1].save"),
    (["{name: s1, steps: 2, rope_base: 0}"], "stages[s1].rope_base"),
]


@pytest.mark.parametrize("stages,msg", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_stage(stages, msg):
    with pytest.raises(ConfigError) as e:
        validate(_cfg(*stages), world_size=1)
    assert msg in str(e.value)


def test_world_size_rule_per_stage():
    cfg = _cfg("{name: s1, steps: 2, global_batch_size: 6}", extra=["data.micro_batch_size=2"])
    validate(cfg, world_size=1)
    with pytest.raises(ConfigError, match=r"stages\[s1\].global_batch_size: 6 is not divisible by micro_batch_size x dp"):
        validate(cfg, world_size=2)


def test_tokens_become_steps_and_stages_inherit():
    cfg = _cfg("{name: a, tokens: 3000}", "{name: b, steps: 4, seq_length: 256, rope_base: 160000}",
               "{name: c, steps: 2, global_batch_size: 16}",
               extra=["data.seq_length=128", "data.global_batch_size=8", "model.llm.rotary_base=10000"])
    assert cfg.stages[0].steps == 3  # ceil(3000 / (8 * 128))
    plans = plan_stages(cfg)
    assert [(p.start_step, p.seq_length, p.global_batch_size, p.rope_base) for p in plans] == [
        (0, 128, 8, 10000), (3, 256, 8, 160000), (7, 128, 16, 160000)]  # rope base carries forward
    validate(cfg, world_size=1)


def test_vision_groups_need_a_vision_model():
    stage = "{name: s1, steps: 2, trainable: ['vit.layers[-1:]', projector]}"
    with pytest.raises(ConfigError, match=r"stages\[s1\].trainable: unknown module group 'vit.layers\[-1:\]'"):
        validate(_cfg(stage), world_size=1)  # a text-only model has no vision groups
    # multimodal runs pack one sequence per micro-batch (validate: data.micro_batch_size must be 1)
    cfg = _cfg(stage, extra=["model.vit.num_layers=2", "model.connector.kind=mlp", "data.micro_batch_size=1"])
    validate(cfg, world_size=1)
    assert cfg.stages[0].trainable == ["vit.layers[-1:]", "projector"]


@pytest.mark.parametrize("name,base,index", [
    ("llm", "llm", None), ("llm.layers[-2:]", "llm.layers", slice(-2, None)), ("llm.layers[3]", "llm.layers", 3),
    ("vit.layers[1:3]", "vit.layers", slice(1, 3)), ("llm.layers[:-1]", "llm.layers", slice(None, -1)),
])
def test_parse_group(name, base, index):
    ref = parse_group(name)
    assert ref.base == base and ref.index == index


class _Layer(torch.nn.Module):
    def __init__(self, number):
        super().__init__()
        self.layer_number = number  # megatron: global, 1-based
        self.w = torch.nn.Parameter(torch.randn(3))


class _Chunk(torch.nn.Module):
    """Stands in for a GPTModel chunk of one pipeline rank: the attributes the resolver reads."""

    def __init__(self, first_layer, n_local, total, pre, post):
        super().__init__()
        self.pre_process, self.post_process = pre, post
        self.config = type("C", (), {"num_layers": total})()
        self.decoder = torch.nn.Module()
        self.decoder.layers = torch.nn.ModuleList(_Layer(first_layer + i + 1) for i in range(n_local))
        self.decoder.final_layernorm = torch.nn.LayerNorm(3) if post else None
        self.embedding = torch.nn.Embedding(5, 3) if pre else None
        self.output_layer = torch.nn.Linear(3, 5) if post else None


def test_layer_slices_use_global_indices_under_pipeline():
    first, second = _Chunk(0, 2, 4, True, False), _Chunk(2, 2, 4, False, True)
    assert resolve([first], "llm.layers[-2:]") == []  # the last two layers live on the second rank
    assert resolve([second], "llm.layers[-2:]") == [l.w for l in second.decoder.layers]
    assert resolve([first], "llm.layers[1]") == [first.decoder.layers[1].w]
    assert resolve([first], "llm.output_layer") == [] and len(resolve([second], "llm.output_layer")) == 2
    assert resolve([first], "llm.embedding") == [first.embedding.weight]


def test_apply_trainable_sets_requires_grad_and_rejects_empty_groups():
    chunk = _Chunk(0, 3, 3, True, True)
    counts = apply_trainable([chunk], "s", ["llm.layers[-1:]", "llm.output_layer"])
    assert counts == {"llm.layers[-1:]": 3, "llm.output_layer": 20}
    trainable = {n for n, p in chunk.named_parameters() if p.requires_grad}
    assert trainable == {"decoder.layers.2.w", "output_layer.weight", "output_layer.bias"}
    with pytest.raises(ConfigError, match=r"stages\[s\].trainable: group 'llm.layers\[5:\]' selects no parameters"):
        apply_trainable([chunk], "s", ["llm.layers[5:]"])


def test_example_curriculum():
    """The demo curriculum: pretrain -> cooldown (re-warm-up to a higher peak, then decay) -> long context (2x
    sequence, 16x RoPE base)."""
    from omni_mega.training.schedules import build_segments, lr_for_step

    cfg = load_config("examples/configs/tiny_text_curriculum.yaml")
    validate(cfg, world_size=1)
    pre, cool, long = plan_stages(cfg)
    assert long.seq_length == 2 * pre.seq_length and long.rope_base == 16 * pre.rope_base
    segs, _ = build_segments(cfg)
    end_pre, peak_cool = lr_for_step(segs, pre.end_step - 1), max(lr_for_step(segs, s) for s in range(cool.start_step, cool.end_step))
    assert cool.cfg.schedule == "rewarmup" and peak_cool > cfg.optim.lr > end_pre
    assert lr_for_step(segs, cool.end_step - 1) == pytest.approx(cool.cfg.min_lr)
