"""The image-text source of `objective: contrastive`: every data-parallel rank's micro-batches of a step are
contiguous blocks of one stream (rank order = stream order, what the embedding gather assumes), each sample's text
is [EOD, caption] with its length and caption key, images match their captions, and a source rebuilt at a consumed
count or from a saved state gives the same next step as the one that kept running."""

import torch

from omni_mega.config import load_config
from omni_mega.config.plan import plan_stages
from omni_mega.data.image_text_source import build_image_text_source, caption_key
from omni_mega.data.source import StepSlice


def _plan(tmp_path):
    from omni_mega.data.demo.scenes import write_shape_scenes

    data = write_shape_scenes(tmp_path / "shapes", 40, seed=3)
    cfg = load_config(None, [
        "model.vit={num_layers: 1, hidden_size: 32, num_attention_heads: 2}",
        "model.contrastive={embed_dim: 16, hidden_size: 16, num_attention_heads: 2, max_text_length: 12}",
        "data={seq_length: 64, micro_batch_size: 3, global_batch_size: 12, max_pixels: 6272}",
        f"stages=[{{name: coca, steps: 4, objective: contrastive, trainable: [vit, image_pooler], "
        f"data: [{{name: s, source: mm_shards, path: '{data}'}}]}}]"])
    return cfg, plan_stages(cfg)[0]


def _keys(batches):
    return [k for b in batches for k in b["text_keys"].tolist()]


def test_ranks_split_one_stream_and_resume_exactly(tmp_path):
    cfg, plan = _plan(tmp_path)
    src = build_image_text_source(plan, cfg.model, tmp_path, 0)
    slices = [StepSlice(dp_rank=r, dp=2, num_micro=2, micro_batch_size=3, seq_length=64) for r in range(2)]
    whole = StepSlice(dp_rank=0, dp=1, num_micro=4, micro_batch_size=3, seq_length=64)
    per_rank = [src.materialize(src.plan_step(sl)) for sl in slices]
    assert _keys(per_rank[0]) + _keys(per_rank[1]) == _keys(src.materialize(src.plan_step(whole)))
    b = per_rank[0][0]
    assert b["grid_thw"].shape == (3, 3) and b["pixel_values"].shape[0] == int(b["grid_thw"].prod(1).sum())
    for row, n, key in zip(b["text"], b["text_lengths"].tolist(), b["text_keys"].tolist()):
        assert int(row[0]) == 256 and key == caption_key(row[1:1 + n].numpy())  # EOD, then the caption
        assert bytes(row[1:1 + n].tolist()).decode().startswith(("a ", "an "))
        assert bool((row[1 + n:] == 0).all())
    assert b["sample_mask"].tolist() == [1.0, 1.0, 1.0] and b["stats"]["images"] == 3
    src.advance(12)
    state = src.state_dict()
    nxt = _keys(src.materialize(src.plan_step(slices[1])))
    replayed = build_image_text_source(plan, cfg.model, tmp_path, 12)
    restored = build_image_text_source(plan, cfg.model, tmp_path, 0)
    restored.load_state_dict(state)
    for other in (replayed, restored):
        got = other.materialize(other.plan_step(slices[1]))
        assert _keys(got) == nxt and other.consumed_samples == 12
        want = src.materialize(src.plan_step(slices[1]))[0]["pixel_values"]
        torch.testing.assert_close(got[0]["pixel_values"], want)
