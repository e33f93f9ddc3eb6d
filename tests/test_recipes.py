"""The full-size recipes validate for their documented H100 layouts, and their dry-runs print every stage with the
published schedule numbers (token totals within one optimizer step of the published length, RoPE bases, trainable
sets, resolution bounds), fitting an 80 GiB H100 by the plan's estimate."""

import re
from pathlib import Path

import pytest

from omni_mega.config import load_config, validate

CONFIGS = Path(__file__).resolve().parent.parent / "examples" / "configs"
STAGE = re.compile(r"\] stage (\S+) \(\w+\): ([\d,]+) steps x (\d+) x (\d+) = ([\d,]+) tokens .*RoPE base ([\d,.e+]+)")

# name -> (nodes of 8 H100s in the recipe's comment, [(stage, published tokens, RoPE base)])
PUBLISHED = {
    # Kimi-VL report: text 5.2T -> ViT alignment 0.1T -> joint 1.4T -> cooldown 0.6T -> long context 0.3T, RoPE
    # 50,000 -> 800,000 (the CoCa stage counts image-text pairs, not tokens)
    "kimi_vl_style": (64, [("text_pretrain", 5.2e12, 50_000), ("alignment", 0.1e12, 50_000),
                           ("joint_pretrain", 1.4e12, 50_000),
                           ("joint_cooldown", 0.6e12, 50_000), ("long_context", 0.3e12, 800_000)]),
    # Ovis2.5 P1-P3 (lengths are the recipe's stated choices; the report gives none)
    "ovis_5phase": (32, [("p1_visual_pretrain", 100e9, 1e6), ("p2_multimodal_pretrain", 500e9, 1e6),
                         ("p3_instruction_tuning", 100e9, 1e6), ("p4_dpo", 2000 * 32 * 8192, 1e6)]),
    # LLaVA: 558K x ~595, 1.2M x ~700, 665K x ~1,100 tokens
    "llava_3stage": (4, [("align_projector", 332.01e6, 10_000), ("align_vit", 840e6, 10_000),
                         ("instruct", 731.5e6, 10_000)]),
}


def _plan(name, capsys, *extra):
    from omni_mega.cli import main

    assert main(["train", str(CONFIGS / f"{name}.yaml"), "--dry-run", *extra]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_recipe_plans_match_published_schedule(name, capsys):
    nodes, stages = PUBLISHED[name]
    validate(load_config(CONFIGS / f"{name}.yaml"), world_size=nodes * 8)
    out = _plan(name, capsys, "--nodes", str(nodes), "--gpus-per-node", "8")
    rows = STAGE.findall(out)
    assert [r[0] for r in rows] == [s[0] for s in stages], out
    total = 0
    for (stage, steps, gbs, seq, tokens, rope), (_, want, want_rope) in zip(rows, stages):
        tokens, per_step = int(tokens.replace(",", "")), int(gbs) * int(seq)
        assert tokens == int(steps.replace(",", "")) * per_step
        assert 0 <= tokens - want < per_step, f"{stage}: {tokens} tokens vs published {want:g}"
        assert float(rope.replace(",", "")) == want_rope
        total += tokens
    assert abs(total - sum(s[1] for s in stages)) < len(stages) * 64 * 2 ** 20
    assert "total: " in out and "over an 80 GiB H100" not in out
    assert f"dp {nodes * 8 // _model_parallel(name)}" in out


def _model_parallel(name):
    p = load_config(CONFIGS / f"{name}.yaml").parallel
    return p.tp * p.pp * p.cp


def test_kimi_ratio_ramp_and_rewarmup(capsys):
    out = _plan("kimi_vl_style", capsys)  # no layout given: the smallest that fits (dp = ep = 8 with tp 4)
    assert "planning for world size 32" in out
    joint = out.split("] stage joint_pretrain (")[1].split("] stage joint_cooldown (")[0]
    assert "multimodal share 0 -> 0.4" in joint
    cooldown = out.split("] stage joint_cooldown (")[1].split("] stage long_context (")[0]
    assert "lr: rewarmup" in cooldown
    assert "multimodal share 0 (text only)" in out.split("] stage joint_pretrain (")[0]


def test_ovis_phases(capsys):
    out = _plan("ovis_5phase", capsys)
    p1, rest = out.split("] stage p2_multimodal_pretrain (")
    assert "resolution 448^2 - 896^2" in p1 and "resolution 448^2 - 1792^2" in rest
    trainable = re.search(r"trainable [\d,]+ params: (.*)", p1).group(1)
    assert [g.rsplit(" ", 1)[0] for g in trainable.split(", ")] == ["vit.layers[-1:]", "visual_head", "vet"]
    assert "llm " in re.search(r"trainable [\d,]+ params: (.*)", rest).group(1)
    text = (CONFIGS / "ovis_5phase.yaml").read_text()
    assert "P4 DPO + auxiliary NLL" in text and "lr 1e-5 constant after 100 warm-up steps" in text
    objectives = re.findall(r"\] stage (\S+) \((\w+)\)", out)
    assert objectives[2:] == [("p3_instruction_tuning", "sft"), ("p4_dpo", "dpo"), ("p5_grpo", "grpo")]
    p5 = out.split("] stage p5_grpo (")[1]
    assert "64 prompts x 8 samples of up to 4,096 new tokens" in p5
    assert "trainable 8,190,735,360 params: llm 8,190,735,360\n" in p5   # the LLM only
    assert "lr: new, step peak 5e-06 min 1e-07 warmup 0; 5e-06 -> 6.25e-07" in p5   # halved every 1K steps
    assert "GRPO stages not counted" in out


def test_llava_unfreezes_in_order(capsys):
    out = _plan("llava_3stage", capsys)
    sets = [m.group(1) for m in re.finditer(r"trainable [\d,]+ params: (.*)", out)]
    groups = [[g.rsplit(" ", 1)[0] for g in s.split(", ")] for s in sets]
    assert groups == [["projector"], ["projector", "vit"], ["projector", "vit", "llm"]]


QWEN3_8B = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096,
            "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 128, "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
            "max_position_embeddings": 40960, "tie_word_embeddings": False, "hidden_act": "silu"}


def test_recipes_start_from_hf_models(capsys, tmp_path):
    import json

    out = _plan("llava_3stage", capsys)
    assert "init_from.llm: /models/vicuna-7b-v1.5 not found here; its config.json was not checked" in out
    out = _plan("ovis_5phase", capsys)
    assert "init_from.llm: /models/Qwen3-8B not found here" in out
    # With the folder present, --dry-run checks its config.json against model.llm (no weights are read).
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_8B))
    src = f"stages.0.init_from={{llm: 'hf:{tmp_path}'}}"
    out = _plan("ovis_5phase", capsys, "--set", src)
    assert "config.json matches the model (llm)" in out
    (tmp_path / "config.json").write_text(json.dumps({**QWEN3_8B, "num_hidden_layers": 28}))
    from omni_mega.cli import main

    assert main(["train", str(CONFIGS / "ovis_5phase.yaml"), "--dry-run", "--set", src]) == 2
    assert "model.llm.num_layers: config 36, " in capsys.readouterr().err


SIGLIP_SO400M = {"architectures": ["SiglipModel"], "model_type": "siglip",
                 "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                                   "num_attention_heads": 16, "patch_size": 14, "image_size": 384,
                                   "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}}


def test_kimi_vit_starts_from_siglip(capsys, tmp_path):
    import json

    assert "init_from.vit: /models/siglip-so400m-patch14-384 not found here" in _plan("kimi_vl_style", capsys)
    (tmp_path / "config.json").write_text(json.dumps(SIGLIP_SO400M))
    out = _plan("kimi_vl_style", capsys, "--set", f"stages.0.init_from={{vit: 'hf:{tmp_path}'}}")
    assert "config.json matches the model (vit)" in out


CLIP_L14_336 = {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model", "hidden_size": 1024,
                "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 14,
                "image_size": 336, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}


SIGLIP2_SO400M_NAFLEX = {"architectures": ["Siglip2Model"], "model_type": "siglip2",
                         "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                                           "num_attention_heads": 16, "patch_size": 16, "num_patches": 256,
                                           "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}}


def test_ovis_vit_starts_from_siglip2(capsys, tmp_path):
    import json

    assert "init_from.vit: /models/siglip2-so400m-patch16-naflex not found here" in _plan("ovis_5phase", capsys)
    (tmp_path / "config.json").write_text(json.dumps(SIGLIP2_SO400M_NAFLEX))
    out = _plan("ovis_5phase", capsys, "--set", f"stages.0.init_from={{vit: 'hf:{tmp_path}'}}")
    assert "config.json matches the model (vit)" in out


def test_llava_vit_starts_from_clip(capsys, tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps(CLIP_L14_336))
    out = _plan("llava_3stage", capsys, "--set", f"stages.0.init_from={{vit: 'hf:{tmp_path}'}}")
    assert "config.json matches the model (vit)" in out


def test_kimi_moonlight_moe_and_the_coca_job(capsys):
    cfg = load_config(CONFIGS / "kimi_vl_style.yaml")
    validate(cfg, world_size=64 * 8)
    llm = cfg.model.llm
    assert (llm.num_layers, llm.hidden_size, llm.num_moe_experts, llm.moe_router_topk) == (27, 2048, 64, 6)
    widths = (llm.ffn_hidden_size, llm.moe_ffn_hidden_size, llm.moe_shared_expert_intermediate_size)
    assert widths == (11264, 1408, 2816)
    assert llm.moe_layer_freq == [0] + [1] * 26 and llm.moe_router_score_function == "sigmoid"
    assert llm.moe_router_enable_expert_bias and llm.multi_latent_attention and llm.kv_lora_rank == 512
    assert (llm.vocab_size, llm.rotary_base, cfg.parallel.ep) == (163840, 50000, 8)
    out = _plan("kimi_vl_style", capsys, "--nodes", "64", "--gpus-per-node", "8")
    moe = re.findall(r"llm mixture of experts: ([\d,]+) total, ([\d,]+) activated", out)
    assert len(moe) == 2, out  # one per job
    total, active = (int(x.replace(",", "")) for x in moe[-1])
    assert 15.5e9 < total < 16.5e9 and 2.6e9 < active < 3.2e9, (total, active)  # Moonlight-16B-A3B
    vit_job, lm_job = out.split("==== job lm ")
    assert "stage coca (contrastive): 60,000 steps x 32768 image-text pairs" in vit_job
    assert re.search(r"trainable [\d,]+ params: vit [\d,]+, image_pooler [\d,]+, text_tower [\d,]+, "
                     r"caption_decoder [\d,]+\n", vit_job)
    # the lm job leaves the towers behind: alignment trains the CoCa ViT and the projector into the frozen LLM
    assert "text_tower" not in lm_job and "caption_decoder" not in lm_job
    align = lm_job.split("] stage alignment (")[1].split("] stage joint_pretrain (")[0]
    assert re.search(r"trainable [\d,]+ params: vit [\d,]+, projector [\d,]+\n", align)
    assert "init_from vit <- job:vit" in out
    assert "over an 80 GiB H100" not in out


def test_kimi_joint_stage_continues_the_text_schedule():
    from omni_mega.config.graph import job_config
    from omni_mega.config.plan import plan_stages
    from omni_mega.training.curriculum import LRPlan

    cfg = job_config(load_config(CONFIGS / "kimi_vl_style.yaml"), "lm")
    plans = {p.name: p for p in plan_stages(cfg)}
    lr = LRPlan(cfg)
    text, joint = plans["text_pretrain"], plans["joint_pretrain"]
    cool, long_ctx = plans["joint_cooldown"], plans["long_context"]
    assert [s.schedule for s in cfg.stages] == ["new", "resume", "resume", "rewarmup", "resume"]
    # joint pre-training: one schedule with the text stage (alignment between them resumes it too), so its first
    # step's LR is the text stage's last and every later step follows the text stage's segment
    assert lr.segment_of(joint.index) == lr.segment_of(text.index)
    last_text = lr.lr(text.start_step + text.steps - 1)
    assert last_text == pytest.approx(3.0e-4) and lr.lr(joint.start_step) == pytest.approx(last_text, rel=1e-12)
    seg = lr.segment_of(text.index)
    assert seg.length == text.steps + plans["alignment"].steps + joint.steps
    assert lr.lr(joint.start_step + joint.steps - 1) == pytest.approx(3.0e-4)
    # the cooldown re-warms up: a new segment starting from the joint stage's LR, decaying to its floor
    assert lr.segment_of(cool.index) != seg
    first_cool = lr.lr(cool.start_step)
    assert 1.0e-4 < first_cool < last_text  # on the way from 3e-4 down to the cooldown's peak 1e-4
    assert lr.lr(cool.start_step + 500) == pytest.approx(1.0e-4, rel=1e-3)
    # long context resumes the cooldown's linear decay: same segment, its first step one decay step further
    assert lr.segment_of(long_ctx.index) == lr.segment_of(cool.index)
    a, b, c = (lr.lr(long_ctx.start_step + k) for k in (-2, -1, 0))
    assert c < b < a and (a - b) == pytest.approx(b - c, rel=1e-6)
    assert lr.lr(long_ctx.start_step + long_ctx.steps - 1) == pytest.approx(1.0e-5)
