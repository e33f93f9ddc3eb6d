"""The audio encoder, the codec, the Talker and audio in OmniModel on one process (TP=PP=1, CPU): packed clips equal
clips run alone, the pooled placeholder accounting and its errors, the codec's straight-through gradients, the
Talker's layout, and every part reachable as a module group."""

import pytest
import torch

from omni_mega.config import LLMConfig, ModelConfig, ParallelConfig, ViTConfig
from omni_mega.config.model import AudioConfig, ClassifierConfig, CodecConfig, TalkerConfig

AUD = -300


def _cfg(**audio):
    return ModelConfig(
        llm=LLMConfig(num_layers=2, hidden_size=32, num_attention_heads=4, max_position_embeddings=128),
        audio=AudioConfig(**{"num_layers": 2, "hidden_size": 16, "num_attention_heads": 2, "n_mels": 8,
                             "pool": 2, "ctc_vocab_size": 20, **audio}),
        codec=CodecConfig(n_mels=8, frame_stack=4, dim=6, codebooks=2, codebook_size=16, hidden_size=24),
        talker=TalkerConfig(num_layers=1, hidden_size=16, num_attention_heads=2, text_vocab_size=30,
                            max_positions=64),
    )


def _build(cfg, dtype=torch.float64):
    from omni_mega.models.factory import build_model

    torch.manual_seed(0)
    return build_model(cfg, ParallelConfig(), 128, 128, dtype)


def test_encoder_packed_equals_each_clip_alone(megatron_single):
    model = _build(_cfg())
    enc = model.audio
    lengths = [7, 1, 12, 4]  # odd and even frame counts, a one-frame clip
    mel = torch.randn(sum(lengths), 8, dtype=torch.float64)
    cu = torch.tensor([0, 7, 8, 20, 24], dtype=torch.int32)
    packed, cu_out = enc(mel, cu)
    assert cu_out.tolist() == [0, 4, 5, 11, 13]  # ceil(L / 2) states per clip
    alone = [enc(mel[a:b], torch.tensor([0, b - a], dtype=torch.int32))[0] for a, b in zip(cu[:-1], cu[1:])]
    torch.testing.assert_close(packed, torch.cat(alone), rtol=1e-10, atol=1e-12)
    w = torch.randn_like(packed)
    g_packed = torch.autograd.grad((packed * w).sum(), list(enc.parameters()))
    g_alone = torch.autograd.grad((torch.cat(alone) * w).sum(), list(enc.parameters()))
    for a, b in zip(g_packed, g_alone):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # The CTC task reads the same states.
    logits, cu_ctc = model(None, None, task="ctc", audio_features=mel, audio_cu_seqlens=cu)
    assert logits.shape == (13, 21) and cu_ctc.tolist() == cu_out.tolist()


def test_pool_frames():
    from omni_mega.models.audio.encoder import pool_frames

    x = torch.arange(7, dtype=torch.float64)[:, None].repeat(1, 2)
    out, cu = pool_frames(x, torch.tensor([0, 5, 7]), 2)
    assert cu.tolist() == [0, 3, 4]
    assert out[:, 0].tolist() == [0.5, 2.5, 4.0, 5.5]  # a last, shorter window averages what it has


def _audio_batch(lengths, pool=2, text=3):
    """input_ids with one placeholder per pooled frame of each clip, then `text` text tokens per clip."""
    ids = []
    for n in lengths:
        ids += [AUD] * (-(-((n + 1) // 2) // pool)) + list(range(1, text + 1))
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    return torch.tensor([ids]), torch.randn(sum(lengths), 8, dtype=torch.float64), cu


def test_audio_placed_at_placeholders(megatron_single):
    model = _build(_cfg())
    ids, mel, cu = _audio_batch([9, 4])
    pos = torch.arange(ids.size(1))[None]
    logits = model(ids, pos, None, audio_features=mel, audio_cu_seqlens=cu)
    assert logits.shape[:2] == (1, ids.size(1))
    emb = model.embed(ids, pos, None, None, mel, cu)[:, 0]  # [s, h]
    aud, _ = model.audio_embeddings(mel, cu)
    torch.testing.assert_close(emb[(ids[0] == AUD)], aud)
    # A text position keeps its embedding.
    text = model.llm.embedding(input_ids=ids.masked_fill(ids == AUD, 0), position_ids=pos)[:, 0]
    torch.testing.assert_close(emb[ids[0] != AUD], text[ids[0] != AUD])


def test_placeholder_count_mismatch_is_a_clear_error(megatron_single):
    model = _build(_cfg())
    ids, mel, cu = _audio_batch([9, 4])
    pos = torch.arange(ids.size(1))[None]
    short = ids[:, 1:]  # one placeholder fewer
    with pytest.raises(ValueError, match=r"hold 3 audio placeholder tokens \(id -300\) but the audio_features need "
                                         r"4 \(per clip: \[3, 1\]\)"):
        model(short, pos[:, 1:], None, audio_features=mel, audio_cu_seqlens=cu)
    with pytest.raises(ValueError, match="audio placeholder tokens .* but no audio_features were given"):
        model(ids, pos, None)


def test_text_only_batch_keeps_audio_parts_in_the_graph(megatron_single):
    model = _build(_cfg(), torch.float32)
    ids = torch.tensor([[1, 2, 3, 4]])
    out = model(ids, torch.arange(4)[None], None)
    out.float().sum().backward()
    assert model.audio.conv1.weight.grad is not None and model.audio_projector.mlp.linear_fc1.weight.grad is not None


def test_codec_straight_through_and_shapes(megatron_single):
    model = _build(_cfg())
    mel = torch.randn(19, 8, dtype=torch.float64)
    cu = torch.tensor([0, 9, 19], dtype=torch.int32)
    out = model(None, None, task="codec", audio_features=mel, audio_cu_seqlens=cu)
    assert out["cu"].tolist() == [0, 2, 4] and out["codes"].shape == (4, 2) and out["recon"].shape == (4, 32)
    assert int(out["codes"].max()) < 16
    loss = torch.nn.functional.mse_loss(out["recon"], out["target"]) + out["codebook_loss"] + out["commit_loss"]
    loss.backward()
    codec = model.codec
    assert codec.encoder[0].weight.grad.abs().sum() > 0  # through the straight-through estimator
    assert codec.codebooks.grad.abs().sum() > 0  # the codebook loss
    codes, _ = codec.encode(mel, cu)
    assert torch.equal(codes, out["codes"])
    torch.testing.assert_close(codec.decode(codes), out["recon"])


def test_talker_layout_and_generation(megatron_single):
    model = _build(_cfg())
    talker = model.talker
    text = torch.tensor([3, 4, 5, 6, 7], dtype=torch.int64)
    text_cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    codes = torch.randint(0, 16, (5, 2))
    codes_cu = torch.tensor([0, 3, 5], dtype=torch.int32)
    base, res = talker(text, text_cu, codes, codes_cu)
    assert base.shape == (3 + 1 + 2 + 1, 17) and res.shape == (5, 1, 16)
    # Causal: the prediction of a sample's frame j does not change when later frames change.
    codes2 = codes.clone()
    codes2[2] = (codes2[2] + 1) % 16  # sample 0's last frame (an input only to the EOS prediction)
    base2, _ = talker(text, text_cu, codes2, codes_cu)
    torch.testing.assert_close(base2[:3], base[:3])
    assert not torch.allclose(base2[3], base[3])
    torch.testing.assert_close(base2[4:], base[4:])  # the other sample is untouched
    out = talker.generate(text[:2], max_frames=4)
    assert out.shape[1] == 2 and out.shape[0] <= 4


def test_part_groups(megatron_single):
    from omni_mega.models.groups import resolve

    cfg = _cfg()
    cfg.vit = ViTConfig(num_layers=1, hidden_size=16, num_attention_heads=2, patch_size=2)
    cfg.classifier = ClassifierConfig(labels=["a", "b", "c"])
    model = _build(cfg)
    n = lambda g: sum(p.numel() for p in resolve([model], g))  # noqa: E731
    assert n("audio") == sum(p.numel() for p in model.audio.parameters())
    assert n("audio.layers[-1:]") == sum(p.numel() for p in model.audio.block.layers[1].parameters())
    assert n("audio.conv") == sum(p.numel() for m in (model.audio.conv1, model.audio.conv2) for p in m.parameters())
    for g in ("ctc_head", "audio_projector", "codec", "talker", "talker.layers[0]", "classifier"):
        assert n(g) > 0, g
    px = torch.randn(2 * 16, 3 * 2 * 2 * 2, dtype=torch.float64)
    logits = model(None, None, task="classify", pixel_values=px, grid_thw=torch.tensor([[1, 4, 4], [1, 4, 4]]))
    assert logits.shape == (2, 3)


def test_dry_run_counts_the_parts_as_built(megatron_single):
    """training.dry_run's parameter counts of the audio encoder, CTC head, audio projector, codec, Talker and
    classifier equal the built modules' (the dry-run imports no torch, so it restates them)."""
    from omni_mega.config import RunConfig
    from omni_mega.training.dry_run import part_leaves

    cfg = _cfg()
    cfg.vit = ViTConfig(num_layers=1, hidden_size=16, num_attention_heads=2, patch_size=2)
    cfg.classifier = ClassifierConfig(labels=["a", "b", "c"])
    model = _build(cfg)
    leaves = part_leaves(RunConfig(model=cfg))
    count = lambda prefix: sum(v.total for k, v in leaves.items() if k == prefix or k.startswith(prefix + "."))  # noqa: E731
    numel = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    for name, module in (("audio", model.audio), ("ctc_head", model.ctc_head),
                         ("audio_projector", model.audio_projector), ("codec", model.codec),
                         ("talker", model.talker), ("classifier", model.classifier)):
        assert count(name) == numel(module), name


def test_init_from_group_loads_its_buffers(megatron_single, tmp_path):
    """A group loaded by init_from brings its saved buffers: the codec's usage EMA (its dead-entry statistics)
    arrives as written, so a frozen codec stays bitwise as its job saved it."""
    import json

    from megatron.core import dist_checkpointing

    from omni_mega.config import RunConfig
    from omni_mega.models.groups import resolve_buffers
    from omni_mega.runtime.manifest import MARKER, write_manifest
    from omni_mega.training import init_from
    from omni_mega.training.checkpoint import CKPT_METADATA

    cfg = _cfg()
    src = _build(cfg)
    assert [id(b) for b in resolve_buffers([src], "codec")] == [id(src.codec.usage_ema)]
    src.codec.usage_ema.copy_(torch.rand(src.codec.usage_ema.shape))
    src.codec.codebooks.data.add_(1.0)
    step = tmp_path / "step_0000001"
    (step / "dist").mkdir(parents=True)
    dist_checkpointing.save(src.sharded_state_dict(metadata=CKPT_METADATA), str(step / "dist"))
    write_manifest(step)
    (step / MARKER).write_text(json.dumps({"step": 1}))

    dst = _build(cfg)
    assert not torch.equal(dst.codec.usage_ema, src.codec.usage_ema)
    sources = init_from.prepare({"codec": str(step)}, "init_from", [dst], RunConfig(model=cfg), tmp_path / "cache",
                                tp=1, is_rank0=True)
    init_from.apply(sources, [dst])
    assert torch.equal(dst.codec.usage_ema, src.codec.usage_ema)
    assert torch.equal(dst.codec.codebooks, src.codec.codebooks)
