"""Hugging Face interop on tiny random models of every supported architecture (built here, nothing downloaded; every
bias and norm gain re-drawn): import -> our model gives transformers' logits (fp32, relative error <= 1e-5) and its
greedy generation token for token (with an image for Qwen2-VL); the checkpoint holds exactly the model's keys;
export -> from_pretrained gives the same logits, and import -> export is bit-identical; bad input fails with one
clear error (CLI exit 2). TP=2 / PP=2: tests/distributed/test_interop_parallel.py."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch

from tests.interop.conftest import ARCHS, VL_ARCHS
from tests.interop.hf_models import VOCAB, vl_case

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.timeout(300)


def _ours(ck: Path):
    from omni_mega.config import ParallelConfig
    from omni_mega.interop.convert import read_checkpoint_info
    from omni_mega.models.factory import build_model
    from omni_mega.models.llm import padded_vocab_size
    from omni_mega.training.checkpoint import load_checkpoint

    from omni_mega.interop.dcp import tensor_metadata

    cfg, _ = read_checkpoint_info(ck)
    emb = ("llm." if cfg.vit is not None else "") + "embedding.word_embeddings.weight"
    vocab = padded_vocab_size(cfg.llm.vocab_size, 1) if cfg.llm.vocab_size else tensor_metadata(ck / "dist")[emb][0][0]
    model = build_model(cfg, ParallelConfig(), vocab, 256, torch.float32)
    load_checkpoint(ck, [model], None, with_optimizer=False)
    return cfg, model.eval()


def _inputs(arch: str):
    """(input_ids, our pixel_values, grid_thw, transformers' kwargs)."""
    if arch in VL_ARCHS:
        return vl_case(arch)
    ids = torch.randint(3, VOCAB, (1, 37), generator=torch.Generator().manual_seed(3))
    return ids, None, None, {"input_ids": ids}


def _hf_logits(model, hf_kw):
    with torch.no_grad():
        return model(**hf_kw).logits


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("arch", ARCHS)
def test_import_matches_transformers(megatron_single, imported, arch):
    from omni_mega.inference import Generator, SamplingParams
    from omni_mega.interop.dcp import tensor_metadata
    from omni_mega.training.checkpoint import CKPT_METADATA

    hf, _, ck = imported[arch]
    cfg, model = _ours(ck)
    keys = {v.key for v in model.sharded_state_dict(metadata=CKPT_METADATA).values()
            if type(v).__name__ in ("ShardedTensor", "ShardedTensorFactory")}
    assert keys == set(tensor_metadata(ck / "dist")), "checkpoint keys differ from the model's"
    ids, pv, grid, hf_kw = _inputs(arch)
    ref = _hf_logits(hf, hf_kw)
    with torch.no_grad():
        kw = {} if pv is None else {"pixel_values": pv, "grid_thw": grid}
        got = model(ids, torch.arange(ids.shape[1])[None], None, **kw)[..., :VOCAB]
    err = _rel(got, ref)
    print(f"{arch}: logits max relative error {err:.2e}")
    assert err <= 1e-5
    # greedy generation, token for token (EOS 2 stops both)
    with torch.no_grad():
        want = hf.generate(**hf_kw, max_new_tokens=16, do_sample=False, eos_token_id=2)[0, ids.shape[1]:].tolist()
    want = want[:want.index(2)] if 2 in want else want
    res = Generator(model, VOCAB).generate(ids[0], SamplingParams(max_new_tokens=16, eos_token_ids=[2]),
                                            pixel_values=pv, grid_thw=grid)
    assert res.ids == want and res.stopped_at_eos == (len(want) < 16)


def test_qwen2_5_vl_windows_matter(megatron_single, imported):
    """The test image spans four windows: with every ViT layer attending the whole image instead, the logits leave
    transformers' (the match above depends on the windowed layer)."""
    arch = "Qwen2_5_VLForConditionalGeneration"
    hf, _, ck = imported[arch]
    cfg, model = _ours(ck)
    assert (cfg.vit.window_size, cfg.vit.full_attention_layers) == (8, [1])
    ids, pv, grid, hf_kw = _inputs(arch)
    model.vit.cfg.full_attention_layers = [0, 1]
    with torch.no_grad():
        got = model(ids, torch.arange(ids.shape[1])[None], None, pixel_values=pv, grid_thw=grid)[..., :VOCAB]
    assert _rel(got, _hf_logits(hf, hf_kw)) > 1e-3


def _tensors(folder: Path) -> dict:
    from safetensors import safe_open

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_export_roundtrip(imported, tmp_path, arch):
    from omni_mega.interop import export_hf

    hf, hf_dir, ck = imported[arch]
    out = tmp_path / "hf"
    r = export_hf(ck, out, max_shard_bytes=200_000)
    assert len(r["files"]) > 1 and (out / "model.safetensors.index.json").exists()  # sharded
    a, b = _tensors(hf_dir), _tensors(out)
    assert set(a) == set(b)
    bad = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not bad, f"not bit-identical: {bad[:5]}"
    again = getattr(transformers, arch).from_pretrained(out).eval()
    hf_kw = _inputs(arch)[3]
    assert torch.equal(_hf_logits(again, hf_kw), _hf_logits(hf, hf_kw))


def test_qwen2_5_vl_exports_without_an_hf_origin(imported, tmp_path):
    """A trainer's checkpoint has no interop.json: the model config alone picks Qwen2.5-VL (its ViT has RMSNorm)."""
    from omni_mega.interop import export_hf
    from omni_mega.interop.convert import INTEROP

    arch = "Qwen2_5_VLForConditionalGeneration"
    hf, _, ck = imported[arch]
    bare = tmp_path / "ck"
    shutil.copytree(ck, bare)
    (bare / INTEROP).unlink()
    assert export_hf(bare, tmp_path / "hf")["architecture"] == arch
    again = getattr(transformers, arch).from_pretrained(tmp_path / "hf").eval()
    hf_kw = _inputs(arch)[3]
    assert torch.equal(_hf_logits(again, hf_kw), _hf_logits(hf, hf_kw))


def test_model_yaml_and_cli(imported, tmp_path, capsys):
    from omni_mega.cli import main
    from omni_mega.config import load_config

    _, hf_dir, _ = imported["Qwen2ForCausalLM"]
    yml = tmp_path / "run.yaml"
    assert main(["import-hf", str(hf_dir), "--out", str(tmp_path / "ck"), "--config-out", str(yml)]) == 0
    cfg = load_config(yml)
    assert cfg.model.llm.add_qkv_bias and cfg.model.llm.norm_epsilon == 1e-6 and cfg.model.llm.vocab_size == VOCAB
    assert "imported Qwen2ForCausalLM" in capsys.readouterr().out
    assert main(["import-hf", str(hf_dir), "--out", str(tmp_path / "ck")]) == 2  # exists: no silent overwrite
    assert "--overwrite" in capsys.readouterr().err
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    (tok / "tokenizer_config.json").write_text("{}")
    assert main(["export-hf", str(tmp_path / "ck"), "--out", str(tmp_path / "back"), "--dtype", "bf16",
                 "--tokenizer", str(tok)]) == 0
    assert json.loads((tmp_path / "back" / "config.json").read_text())["dtype"] == "bfloat16"
    assert (tmp_path / "back" / "tokenizer.json").exists() and (tmp_path / "back" / "tokenizer_config.json").exists()
    assert "tokenizer files tokenizer.json, tokenizer_config.json" in capsys.readouterr().out


# ---- bad input ------------------------------------------------------------------------------------------------------
def _copy(imported, arch, tmp_path) -> Path:
    d = tmp_path / "bad"
    shutil.copytree(imported[arch][1], d)
    return d


def _error(args, capsys) -> str:
    """Runs the CLI, which must exit 2; returns its stderr."""
    from omni_mega.cli import main

    code = main(args)
    return f"exit {code}: " + capsys.readouterr().err


def _one_line(err: str, *needles: str) -> bool:
    """The CLI exited 2 with one line, no traceback, naming every needle."""
    return (err.startswith("exit 2: ") and err.count("\n") == 1 and "Traceback" not in err
            and all(n in err for n in needles))


def test_bad_inputs(imported, tmp_path, capsys):
    out = ["--out", str(tmp_path / "o"), "--overwrite"]
    err = _error(["import-hf", str(tmp_path / "none"), *out], capsys)
    assert _one_line(err, "no such directory"), err
    d = _copy(imported, "Qwen3ForCausalLM", tmp_path)
    (d / "config.json").unlink()
    err = _error(["import-hf", str(d), *out], capsys)
    assert _one_line(err, "no config.json"), err
    shutil.rmtree(d)
    # a missing shard of an index
    d = _copy(imported, "LlamaForCausalLM", tmp_path)
    shard = sorted(d.glob("model-*.safetensors"))[-1]
    shard.unlink()
    err = _error(["import-hf", str(d), *out], capsys)
    assert _one_line(err, "missing", shard.name), err
    shutil.rmtree(d)
    # truncated safetensors
    d = _copy(imported, "Qwen3ForCausalLM", tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    err = _error(["import-hf", str(d), *out], capsys)
    assert _one_line(err, "truncated"), err
    f.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    err = _error(["import-hf", str(d), *out], capsys)
    assert _one_line(err, "truncated or not a safetensors file"), err
    # pickled weights only: refused, never unpickled
    f.unlink()
    (d / "pytorch_model.bin").write_bytes(b"not even a pickle")
    err = _error(["import-hf", str(d), *out], capsys)
    assert _one_line(err, "pickled", "convert them to safetensors"), err
    shutil.rmtree(d)
    # unsupported architecture: the error lists the supported ones
    d = _copy(imported, "Qwen3ForCausalLM", tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    err = _error(["import-hf", str(d), *out], capsys)
    assert _one_line(err, "GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2VLForConditionalGeneration"), err
    # config vs weights: one layer more in the config, a wrong width
    (d / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    err = _error(["import-hf", str(d), *out], capsys)
    assert _one_line(err, "disagree", "model.layers.2."), err
    (d / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 100}))
    err = _error(["import-hf", str(d), *out], capsys)
    assert _one_line(err, "disagree", "mlp.gate_proj.weight", "[96, 64]"), err
    (d / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1}))
    err = _error(["import-hf", str(d), *out], capsys)
    assert _one_line(err, "disagree", "model.layers.1."), err
    # export of something that is not a checkpoint
    err = _error(["export-hf", str(tmp_path / "none"), "--out", str(tmp_path / "e")], capsys)
    assert _one_line(err, "no such checkpoint"), err
    err = _error(["export-hf", str(d), "--out", str(tmp_path / "e")], capsys)
    assert _one_line(err, "no complete checkpoint"), err


# ---- composed init_from: errors before step 1 ---------------------------------------------------------------------
def test_init_from_errors_name_group_tensor_and_shapes(megatron_single, imported, tmp_path):
    from omni_mega.config import ConfigError, ParallelConfig, RunConfig
    from omni_mega.training import init_from

    cfg3, q3 = _ours(imported["Qwen3ForCausalLM"][2])
    run3 = RunConfig(model=cfg3)
    q2_ck = imported["Qwen2ForCausalLM"][2]
    # Qwen3's head dim is 24, Qwen2's 16: the fused QKV differs
    with pytest.raises(ConfigError, match=r"stages\[s\]\.init_from\.llm \(.*\): decoder\.layers\.0\.self_attention"
                                          r"\.linear_proj\.weight: the source's .* has shape \[64, 64\], the model's "
                                          r"is \[64, 96\]"):
        init_from.prepare({"llm": str(q2_ck)}, "stages[s].init_from", [q3], run3, tmp_path, tp=1, is_rank0=True)
    with pytest.raises(ConfigError, match=r"init_from\.vision: unknown module group 'vision'"):
        init_from.prepare({"vision": str(q2_ck)}, "stages[s].init_from", [q3], run3, tmp_path, tp=1, is_rank0=True)
    cfg_vl, vl = _ours(imported["Qwen2VLForConditionalGeneration"][2])
    hf_q2 = imported["Qwen2ForCausalLM"][1]
    with pytest.raises(ConfigError, match=r"init_from\.vit \(hf:.*\): the source has no tensor for vit\..* it does "
                                          r"not hold group 'vit'"):
        init_from.prepare({"llm": f"hf:{hf_q2}", "vit": f"hf:{hf_q2}"}, "stages[s].init_from", [vl],
                          RunConfig(model=cfg_vl), tmp_path, tp=1, is_rank0=True)
    with pytest.raises(ConfigError, match=r"init_from\.llm: .*no complete checkpoint"):
        init_from.prepare({"llm": str(tmp_path / "nothing")}, "stages[s].init_from", [q3], run3, tmp_path, tp=1,
                          is_rank0=True)
    with pytest.raises(ConfigError, match=r"init_from\.llm \(hf:.*\): .*no such directory"):
        init_from.prepare({"llm": f"hf:{tmp_path / 'nothing'}"}, "stages[s].init_from", [q3], run3, tmp_path,
                          tp=1, is_rank0=True)
    # a one-source hf: init_from of a text model into the VLM loads the llm part and keeps the rest
    src = init_from.prepare(f"hf:{hf_q2}", "stages[s].init_from", [vl], RunConfig(model=cfg_vl), tmp_path, tp=1,
                            is_rank0=True)
    lines = init_from.apply(src, [vl])
    assert src[0].names and all(n.startswith("llm.") for n in src[0].names) and src[0].kept
    assert "init_from the whole model <- hf:" in lines[0] and "kept" in lines[0]
    assert ParallelConfig().tp == 1


def test_init_from_config_accepts_a_map(tmp_path):
    from omni_mega.config import ConfigError, load_config

    cfg = load_config(None, ["stages=[{name: a, init_from: {llm: 'hf:/m/qwen3', vit: runs/p1}}]"])
    assert cfg.stages[0].init_from == {"llm": "hf:/m/qwen3", "vit": "runs/p1"}
    assert load_config(None, ["stages=[{name: a, init_from: runs/p1}]"]).stages[0].init_from == "runs/p1"
    with pytest.raises(ConfigError, match=r"init_from"):
        load_config(None, ["stages=[{name: a, init_from: [runs/p1]}]"])


def test_dry_run_checks_hf_sources(imported, tmp_path, capsys):
    from omni_mega.cli import main

    hf_q3 = imported["Qwen3ForCausalLM"][1]
    yml = tmp_path / "run.yaml"
    yml.write_text(f"""
model:
  llm: {{num_layers: 2, hidden_size: 64, num_attention_heads: 4, num_query_groups: 2, kv_channels: 24,
        ffn_hidden_size: 96, vocab_size: 250, qk_layernorm: true, max_position_embeddings: 256}}
data: {{seq_length: 64, micro_batch_size: 1, global_batch_size: 1}}
stages:
  - {{name: a, steps: 1, init_from: {{llm: 'hf:{hf_q3}'}}}}
  - {{name: b, steps: 1, init_from: 'hf:/nonexistent/Qwen3-1.7B'}}
""")
    assert main(["train", str(yml), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "config.json matches the model" in out and "/nonexistent/Qwen3-1.7B not found here" in out
    assert main(["train", str(yml), "--dry-run", "--set", "model.llm.num_layers=4"]) == 2
    assert "model.llm.num_layers: config 4, " in capsys.readouterr().err


def test_export_a_trained_checkpoint(megatron_single, tmp_path):
    """A model trained here (a trainer run dir, demo byte vocabulary) exports, and transformers gives our logits."""
    import subprocess
    import sys

    from omni_mega.interop import export_hf
    from tests.distributed.launch import ROOT

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "omni_mega", "train", "examples/configs/tiny_text.yaml", "--run-dir", str(run),
           "--set", "model.llm={num_layers: 2, hidden_size: 64, num_attention_heads: 4, num_query_groups: 2, "
           "max_position_embeddings: 128}", "--set", "data.seq_length=32", "--set", "data.micro_batch_size=1",
           "--set", "data.global_batch_size=2", "--set", "stages=[{name: p, steps: 2}]",
           "--set", "train.tensorboard=false"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "0"}
    env.pop("MASTER_ADDR", None), env.pop("MASTER_PORT", None)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    r = export_hf(run, tmp_path / "hf")
    assert r["architecture"] == "LlamaForCausalLM" and r["step_dir"].endswith("step_0000002")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    cfg, ours = _ours(Path(r["step_dir"]))
    ids = torch.randint(0, 257, (1, 20))
    with torch.no_grad():
        want = ours(ids, torch.arange(20)[None], None)[..., :hf.config.vocab_size]
        got = hf(input_ids=ids).logits
    assert _rel(got, want) <= 1e-5


def test_sizing_rules_agree_with_the_models():
    from omni_mega.config import LLMConfig
    from omni_mega.interop import arch
    from omni_mega.models import llm as M

    for v, tp in [(250, 1), (32000, 1), (151936, 8), (50257, 3)]:
        assert arch.padded_vocab(v, tp) == M.padded_vocab_size(v, tp)
    for kw in [dict(), dict(activation="gelu"), dict(ffn_hidden_size=100), dict(hidden_size=4096,
                                                                             num_attention_heads=32)]:
        c = LLMConfig(**kw)
        assert arch.ffn_width(c) == M.ffn_size(c)


def test_rope_base_change_keeps_the_scaling(megatron_single):
    """A long-context stage's new RoPE base (training.curriculum.set_rope_base) keeps llama3 / yarn scaling, and a
    fractional base is not truncated."""
    from omni_mega.config import LLMConfig, ParallelConfig, RopeScalingConfig
    from omni_mega.models.llm import build_llm, rope_inv_freq
    from omni_mega.training.curriculum import rotary_modules, set_rope_base

    for scaling in (RopeScalingConfig(type="llama3", factor=8.0, original_max_position_embeddings=64),
                    RopeScalingConfig(type="yarn", factor=4.0, original_max_position_embeddings=64), None):
        cfg = LLMConfig(num_layers=1, hidden_size=64, num_attention_heads=4, rotary_base=12345.5,
                        rope_scaling=scaling, vocab_size=128)
        m = build_llm(cfg, ParallelConfig(), 128, 64, torch.float32)
        (rot,) = rotary_modules([m])
        assert torch.equal(rot.inv_freq, rope_inv_freq(16, 12345.5, scaling)[0])
        set_rope_base([m], 500000.0)
        want = rope_inv_freq(16, 500000.0, scaling)[0]
        assert torch.equal(rot.inv_freq, want)
        if scaling is not None:
            assert not torch.equal(want, rope_inv_freq(16, 500000.0, None)[0])  # the scaling is really there


def _cli(*args, timeout=180):
    import os
    import subprocess
    import sys

    from tests.distributed.launch import ROOT

    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "omni_mega", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_generate_cli(imported, tmp_path, capsys):
    """`omni-mega generate`: prompt ids and text (a tokenizer recorded at import), an image for the VLM, JSON lines,
    and one-line errors."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    hf, hf_dir, ck = imported["Qwen2ForCausalLM"]
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    tok.save(str(tok_dir / "tokenizer.json"))
    p = _cli("generate", ck, "--prompt-ids", "5,6,7", "--prompt", "w5 w6 w7", "--tokenizer", tok_dir,
             "--max-new-tokens", "6", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert [r["prompt_ids"] for r in rows] == [[5, 6, 7], [5, 6, 7]]
    with torch.no_grad():
        want = hf.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=6, do_sample=False,
                           eos_token_id=2)[0, 3:].tolist()
    assert rows[0]["ids"] == rows[1]["ids"] == (want[:want.index(2)] if 2 in want else want)
    assert rows[1]["text"] == " ".join(f"w{i}" for i in rows[1]["ids"])
    # an image for the VLM
    from PIL import Image

    Image.new("RGB", (20, 12), (200, 30, 60)).save(tmp_path / "img.png")
    vl = imported["Qwen2VLForConditionalGeneration"][2]
    p = _cli("generate", vl, "--prompt-ids", "5,6", "--image", tmp_path / "img.png", "--max-new-tokens", "4", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    row = json.loads(p.stdout.splitlines()[-1])
    assert row["prompt_ids"][0] == 242 and 240 in row["prompt_ids"] and row["prompt_ids"][-2:] == [5, 6]
    assert len(row["ids"]) <= 4
    # errors: one line, exit 2, before any model is built
    from omni_mega.cli import main

    for args, needle in (((ck, "--prompt", "hi"), "needs a tokenizer"),
                         ((ck, "--prompt-ids", "1", "--image", tmp_path / "img.png"), "no vision tower"),
                         ((ck, "--prompt-ids", "1,x"), "comma-separated integers"),
                         ((tmp_path / "none", "--prompt-ids", "1"), "no such checkpoint")):
        err = _error(["generate", *map(str, args)], capsys)
        assert _one_line(err, needle), err


def test_sampling_is_seeded_and_restricted_by_top_p(megatron_single, imported):
    from omni_mega.inference import Generator, SamplingParams

    _, model = _ours(imported["Qwen2ForCausalLM"][2])
    g = Generator(model, VOCAB)
    run = lambda seed, top_p=0.9: g.generate([5, 6, 7], SamplingParams(  # noqa: E731
        max_new_tokens=8, temperature=1.5, top_p=top_p, seed=seed)).ids
    assert run(3) == run(3) and run(3) != run(4)
    greedy = g.generate([5, 6, 7], SamplingParams(max_new_tokens=8)).ids
    assert run(3, top_p=1e-6) == greedy  # a tiny nucleus keeps only the argmax


def test_siglip_vision_tower_into_a_vit_group(megatron_single, tmp_path, capsys):
    """SiglipVisionModel alone: imported, loaded as the `vit` group of a VLM by init_from (hf:), gives transformers'
    features; export -> bit-identical, from_pretrained works; config/weights checks apply."""
    from omni_mega.config import ConnectorConfig, LLMConfig, ModelConfig, ParallelConfig, RunConfig
    from omni_mega.interop import export_hf, import_hf
    from omni_mega.models.factory import build_model
    from omni_mega.training import init_from
    from tests.interop.hf_models import build_siglip, patches_row_major

    hf = build_siglip(tmp_path / "sig")
    r = import_hf(tmp_path / "sig", tmp_path / "sig.ckpt")
    vit = r["config"].vit
    assert (vit.rope_layout, vit.activation, vit.pos_embed_grid, vit.patch_bias) == ("none", "gelu_tanh", 4, True)
    cfg = ModelConfig(llm=LLMConfig(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=128),
                      vit=vit, connector=ConnectorConfig(kind="mlp"))
    model = build_model(cfg, ParallelConfig(), 128, 64, torch.float32).eval()
    src = init_from.prepare({"vit": f"hf:{tmp_path / 'sig'}"}, "stages[s].init_from", [model], RunConfig(model=cfg),
                            tmp_path / "cache", tp=1, is_rank0=True)
    init_from.apply(src, [model])
    image = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf(pixel_values=image).last_hidden_state[0]  # [16, 32], row-major patches
        got = model.vit(patches_row_major(image, 4), torch.tensor([[1, 4, 4]]))  # merge 1: row-major too
    err = _rel(got, want)
    with capsys.disabled():
        print(f"SiglipVisionModel: features max relative error {err:.2e}")
    assert err <= 1e-5
    export_hf(tmp_path / "sig.ckpt", tmp_path / "sig_out")
    a, b = _tensors(tmp_path / "sig"), _tensors(tmp_path / "sig_out")
    tower = {k for k in a if not k.startswith("head.")}  # the pooling head is not part of the tower
    assert set(b) == tower and all(torch.equal(a[k], b[k]) for k in tower)
    again = transformers.SiglipVisionModel.from_pretrained(tmp_path / "sig_out").eval()
    with torch.no_grad():
        assert torch.equal(again(pixel_values=image).last_hidden_state[0], want)
    cfg_json = json.loads((tmp_path / "sig" / "config.json").read_text())
    (tmp_path / "sig" / "config.json").write_text(json.dumps({**cfg_json, "intermediate_size": 48}))
    capsys.readouterr()  # transformers' progress bars
    err = _error(["import-hf", str(tmp_path / "sig"), "--out", str(tmp_path / "x")], capsys)
    assert _one_line(err, "disagree", "mlp.fc1.weight"), err


def test_clip_vision_tower_into_a_vit_group(megatron_single, tmp_path, capsys):
    """CLIPVisionModel alone: imported, loaded as the `vit` group by init_from (hf:); with the class token kept
    (`feature_select: full`) two packed images give transformers' last_hidden_state each (class token first, no
    post_layernorm); export -> bit-identical, from_pretrained works. CLIPModel's vision half imports too."""
    import dataclasses

    from omni_mega.config import ConnectorConfig, LLMConfig, ModelConfig, ParallelConfig, RunConfig
    from omni_mega.interop import export_hf, import_hf
    from omni_mega.models.factory import build_model
    from omni_mega.training import init_from
    from tests.interop.hf_models import CLIP_IMAGE, PATCH, build_clip, patches_row_major

    hf = build_clip(tmp_path / "clip")
    first = import_hf(tmp_path / "clip", tmp_path / "clip.ckpt")
    vit = first["config"].vit
    assert (vit.class_token, vit.pre_norm, vit.final_norm, vit.pos_embed_grid, vit.activation) == \
        (True, True, False, CLIP_IMAGE // PATCH, "quick_gelu")
    cfg = ModelConfig(llm=LLMConfig(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=128),
                      vit=dataclasses.replace(vit, feature_select="full"), connector=ConnectorConfig(kind="mlp"))
    model = build_model(cfg, ParallelConfig(), 128, 64, torch.float32).eval()
    src = init_from.prepare({"vit": f"hf:{tmp_path / 'clip'}"}, "stages[s].init_from", [model], RunConfig(model=cfg),
                            tmp_path / "cache", tp=1, is_rank0=True)
    init_from.apply(src, [model])
    images = torch.randn(2, 3, CLIP_IMAGE, CLIP_IMAGE, generator=torch.Generator().manual_seed(2))
    n = CLIP_IMAGE // PATCH
    with torch.no_grad():
        want = hf(pixel_values=images).last_hidden_state  # [2, 1 + n^2, 32]
        pv = torch.cat([patches_row_major(images[i:i + 1], PATCH) for i in range(2)])
        got = model.vit(pv, torch.tensor([[1, n, n]] * 2))
    err = _rel(got, want.reshape(-1, 32))
    with capsys.disabled():
        print(f"CLIPVisionModel: features max relative error {err:.2e}")
    assert err <= 1e-5
    export_hf(tmp_path / "clip.ckpt", tmp_path / "clip_out")
    a, b = _tensors(tmp_path / "clip"), _tensors(tmp_path / "clip_out")
    assert set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    again = transformers.CLIPVisionModel.from_pretrained(tmp_path / "clip_out").eval()
    with torch.no_grad():
        assert torch.equal(again(pixel_values=images).last_hidden_state, want)
    full = build_clip(tmp_path / "clipmodel", "CLIPModel")
    r = import_hf(tmp_path / "clipmodel", tmp_path / "clipmodel.ckpt")
    assert r["architecture"] == "CLIPModel" and r["tensors"] == first["tensors"]
    export_hf(tmp_path / "clipmodel.ckpt", tmp_path / "clipmodel_out")
    b = _tensors(tmp_path / "clipmodel_out")
    tower = {k.removeprefix("vision_model."): v for k, v in _tensors(tmp_path / "clipmodel").items()
             if k.startswith("vision_model.")}
    assert set(b) == set(tower) and all(torch.equal(tower[k], b[k]) for k in b)
    assert torch.equal(tower["embeddings.class_embedding"], full.vision_model.embeddings.class_embedding)


def test_llava_full_strategy_keeps_the_class_token(megatron_single, imported):
    """vision_feature_select_strategy "full": one more image placeholder per image (the class token's features)."""
    from omni_mega.config import ParallelConfig
    from omni_mega.interop.convert import read_checkpoint_info
    from omni_mega.models.factory import build_model
    from omni_mega.training.checkpoint import load_checkpoint
    from tests.interop.hf_models import IMAGE_TOKEN

    hf, _, ck = imported["LlavaForConditionalGeneration"]
    cfg, _ = read_checkpoint_info(ck)
    cfg.vit.feature_select = "full"
    model = build_model(cfg, ParallelConfig(), 256, 256, torch.float32)
    load_checkpoint(ck, [model], None, with_optimizer=False)
    ids, pv, grid, hf_kw = vl_case("LlavaForConditionalGeneration")
    ids = torch.cat([ids[:, :3], torch.tensor([[IMAGE_TOKEN]]), ids[:, 3:]], dim=1)
    with torch.no_grad():
        ref = hf(**{**hf_kw, "input_ids": ids}, vision_feature_select_strategy="full").logits
        got = model.eval()(ids, torch.arange(ids.shape[1])[None], None, pixel_values=pv, grid_thw=grid)[..., :VOCAB]
    assert _rel(got, ref) <= 1e-5


def test_llava_unsupported_configs_name_what_is_missing(imported):
    from omni_mega.interop.arch import family_of
    from omni_mega.interop.errors import InteropError

    cfg = json.loads((imported["LlavaForConditionalGeneration"][1] / "config.json").read_text())
    fam = family_of(cfg)
    cases = [({"vision_feature_layer": [-2, -1]}, "one layer only"),
             ({"vision_feature_layer": -5}, "feature_layer"),
             ({"vision_feature_select_strategy": "pool"}, "'pool'"),
             ({"projector_hidden_act": "relu"}, "projector_hidden_act 'relu'"),
             ({"vision_config": {**cfg["vision_config"], "model_type": "siglip_vision_model"}}, "siglip_vision_model"),
             ({"text_config": {**cfg["text_config"], "model_type": "gemma"}}, "'gemma' language model")]
    for change, text in cases:
        with pytest.raises(InteropError, match=re.escape(text)):
            fam.to_config({**cfg, **change})


def test_siglip2_naflex_tower_into_a_vit_group(megatron_single, tmp_path, capsys):
    """Siglip2VisionModel (NaFlex): two images of different non-square grids, one shrinking the 4x4 position table
    along a side (antialiased resize) and one growing it, padded in one HF batch, give transformers' features through
    `init_from: {vit: hf:...}`; export -> bit-identical, from_pretrained gives the same features; Siglip2Model's
    vision half imports and exports the same way."""
    from omni_mega.config import ConnectorConfig, LLMConfig, ModelConfig, ParallelConfig, RunConfig
    from omni_mega.interop import export_hf, import_hf
    from omni_mega.models.factory import build_model
    from omni_mega.training import init_from
    from tests.interop.hf_models import build_siglip2, patches_channels_last, patches_row_major

    hf = build_siglip2(tmp_path / "sig2")
    r = import_hf(tmp_path / "sig2", tmp_path / "sig2.ckpt")
    vit = r["config"].vit
    assert (vit.rope_layout, vit.activation, vit.pos_embed_grid, vit.pos_embed_antialias) == ("none", "gelu_tanh", 4,
                                                                                                True)
    cfg = ModelConfig(llm=LLMConfig(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=128),
                      vit=vit, connector=ConnectorConfig(kind="mlp"))
    model = build_model(cfg, ParallelConfig(), 128, 64, torch.float32).eval()
    src = init_from.prepare({"vit": f"hf:{tmp_path / 'sig2'}"}, "stages[s].init_from", [model], RunConfig(model=cfg),
                            tmp_path / "cache", tp=1, is_rank0=True)
    init_from.apply(src, [model])
    g = torch.Generator().manual_seed(3)
    grids = [(3, 5), (6, 2)]  # patches; 16 rows in the padded batch, so both images carry padding
    images = [torch.randn(1, 3, 4 * h, 4 * w, generator=g) for h, w in grids]
    pv = torch.zeros(2, 16, 48)
    mask = torch.zeros(2, 16, dtype=torch.long)
    for i, (im, (h, w)) in enumerate(zip(images, grids)):
        pv[i, :h * w] = patches_channels_last(im, 4)
        mask[i, :h * w] = 1
    hf_in = {"pixel_values": pv, "pixel_attention_mask": mask, "spatial_shapes": torch.tensor(grids)}
    with torch.no_grad():
        out = hf(**hf_in).last_hidden_state
        want = torch.cat([out[i, :h * w] for i, (h, w) in enumerate(grids)])
        got = model.vit(torch.cat([patches_row_major(im, 4) for im in images]),
                        torch.tensor([[1, h, w] for h, w in grids]))
    err = _rel(got, want)
    with capsys.disabled():
        print(f"Siglip2VisionModel: features max relative error {err:.2e}")
    assert err <= 1e-5
    export_hf(tmp_path / "sig2.ckpt", tmp_path / "sig2_out")
    a, b = _tensors(tmp_path / "sig2"), _tensors(tmp_path / "sig2_out")
    tower = {k for k in a if not k.startswith("head.")}
    assert set(b) == tower and all(torch.equal(a[k], b[k]) for k in tower)
    again = transformers.Siglip2VisionModel.from_pretrained(tmp_path / "sig2_out").eval()
    with torch.no_grad():
        assert torch.equal(again(**hf_in).last_hidden_state, out)

    full = build_siglip2(tmp_path / "full", full=True)
    assert import_hf(tmp_path / "full", tmp_path / "full.ckpt")["config"].vit == vit
    export_hf(tmp_path / "full.ckpt", tmp_path / "full_out")
    a, b = full.vision_model.state_dict(), _tensors(tmp_path / "full_out")
    tower = {k for k in a if not k.startswith("head.")}
    assert set(b) == tower and all(torch.equal(a[k], b[k]) for k in tower)
    assert json.loads((tmp_path / "full_out" / "config.json").read_text())["architectures"] == ["Siglip2VisionModel"]


def test_trainer_stage_starts_from_an_hf_llm(tmp_path):
    """The trainer's path: `init_from: {llm: hf:...}` is converted into the run dir before step 1, logged and loaded;
    with a vanishing LR the stage's checkpoint still holds transformers' weights."""
    import math

    from tests.interop.hf_models import _text

    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**_text(vocab_size=300))).eval()
    hf.save_pretrained(tmp_path / "qwen2")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""
model:
  llm: {{num_layers: 2, hidden_size: 64, num_attention_heads: 4, num_query_groups: 2, ffn_hidden_size: 96,
        vocab_size: 300, add_qkv_bias: true, norm_epsilon: 1.0e-6, rotary_base: 1.0e6, max_position_embeddings: 64}}
data: {{seq_length: 32, micro_batch_size: 1, global_batch_size: 2}}
train: {{tensorboard: false}}
stages:
  - {{name: a, steps: 2, lr: 1.0e-9, min_lr: 0.0, init_from: {{llm: "hf:{tmp_path / 'qwen2'}"}}}}
""")
    p = _cli("train", cfg, "--run-dir", tmp_path / "run", timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert "init_from group llm <- hf:" in log and "converting" in log, log[-3000:]
    assert any((tmp_path / "run" / "init_from").glob("qwen2-*/COMPLETE"))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    from omni_mega.interop.dcp import TensorReader

    ck = TensorReader(tmp_path / "run" / "ckpt" / "step_0000002" / "dist")
    emb = ck.read("embedding.word_embeddings.weight")
    assert torch.allclose(emb[:300], hf.model.embed_tokens.weight, atol=1e-6) and not emb[300:].any()
    down = ck.read("decoder.layers.1.mlp.linear_fc2.weight")
    assert torch.allclose(down, hf.model.layers[1].mlp.down_proj.weight, atol=1e-6)
