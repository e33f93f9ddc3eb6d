"""Greedy captioning (`omni_mega.training.generate`) on a tiny randomly initialised OmniModel (CPU, TP=PP=1): output
ids in the real vocabulary and at most max_new_tokens, deterministic, each token the argmax of a full forward over
everything before it (the loop is causal and complete), stop at EOD, the image prompt layout, captions of a small
demo dataset, and a clear error for layouts it cannot run."""

from __future__ import annotations

import os

import pytest
import torch

from omni_mega.config import load_config
from omni_mega.training import generate as gen

IMG = -200
CONFIG = [
    "model.llm={num_layers: 2, hidden_size: 32, num_attention_heads: 4, max_position_embeddings: 128}",
    "model.vit={num_layers: 1, hidden_size: 32, num_attention_heads: 2, patch_size: 14, merge_size: 2}",
    f"model.connector={{kind: vet, visual_vocab_size: 64, num_indicators: 0, image_token_id: {IMG}}}",
    "data={micro_batch_size: 1, global_batch_size: 1, min_pixels: 784, max_pixels: 25088}",
]
VOCAB = 257


@pytest.fixture(scope="module")
def model():
    from omni_mega.models.factory import build_model
    from omni_mega.models.llm import padded_vocab_size
    from omni_mega.runtime import init_distributed, shutdown
    from tests.distributed.launch import free_port

    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    cfg = load_config(None, CONFIG)
    init_distributed(cfg.parallel, seed=7)
    m = build_model(cfg.model, cfg.parallel, padded_vocab_size(VOCAB, 1), 128, torch.float32)
    # A random init predicts nearly uniform logits; sharpen the head so greedy picks vary with the context.
    with torch.no_grad():
        m.llm.output_layer.weight.mul_(40)
    yield cfg, m
    shutdown()
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _image(h: int, w: int) -> bytes:
    import io

    from PIL import Image

    arr = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_image_prompt_layout(model):
    cfg, _ = model
    prompt, px, grid = gen.image_prompt(_image(56, 84), cfg, min_pixels=784, max_pixels=25088, sep=10)
    assert grid.tolist() == [[1, 4, 6]]  # 56 x 84 px at patch 14: 4 x 6 patches, one temporal patch
    assert prompt.tolist() == [IMG] * 6 + [10]  # (4 / 2) x (6 / 2) merged tokens, then SEP
    assert px.shape == (24, 3 * 2 * 14 * 14) and px.dtype == torch.float32


def test_greedy_decode_causal_deterministic_and_stops(model):
    cfg, m = model
    prompt, px, grid = gen.image_prompt(_image(28, 56), cfg, min_pixels=784, max_pixels=25088, sep=10)
    free = gen.greedy_decode(m, prompt, eod=-1, vocab_size=VOCAB, max_new_tokens=9, pixel_values=px, grid_thw=grid)
    assert len(free) == 9 and all(0 <= t < VOCAB for t in free)
    assert gen.greedy_decode(m, prompt, eod=-1, vocab_size=VOCAB, max_new_tokens=9, pixel_values=px,
                             grid_thw=grid) == free
    assert m.training  # restored after decoding
    # Teacher-forced check: token k is the argmax over the real vocabulary of one forward over prompt + free[:k].
    m.eval()
    with torch.no_grad():
        ids = torch.cat([prompt, torch.tensor(free[:-1])]).unsqueeze(0)
        logits = m(ids, torch.arange(ids.shape[1]).unsqueeze(0), None, pixel_values=px, grid_thw=grid)
    m.train()
    want = logits[0, len(prompt) - 1:, :VOCAB].argmax(-1).tolist()
    assert want == free
    assert len(set(free)) > 1, "degenerate model: the checks above would not tell tokens apart"
    # Stopping: with eod = the 4th generated id, decoding ends at its first occurrence, without it.
    stop = free[3]
    out = gen.greedy_decode(m, prompt, eod=stop, vocab_size=VOCAB, max_new_tokens=9, pixel_values=px, grid_thw=grid)
    assert out == free[: free.index(stop)]


def test_vocab_padding_rows_never_chosen(model):
    cfg, m = model
    with torch.no_grad():  # make a padding row (id 300 >= 257) the best logit everywhere
        w = m.llm.output_layer.weight
        saved = w[300].clone()
        w[300] = w[:VOCAB].sum(0) * 1e3
    try:
        prompt, px, grid = gen.image_prompt(_image(28, 28), cfg, min_pixels=784, max_pixels=25088, sep=10)
        out = gen.greedy_decode(m, prompt, eod=-1, vocab_size=VOCAB, max_new_tokens=4, pixel_values=px, grid_thw=grid)
        assert len(out) == 4 and max(out) < VOCAB
        assert gen.greedy_decode(m, prompt, eod=-1, vocab_size=301, max_new_tokens=1, pixel_values=px,
                                 grid_thw=grid) == [300]
    finally:
        with torch.no_grad():
            w[300] = saved


def test_caption_dataset_on_demo_data(model, tmp_path):
    from omni_mega.data.demo.scenes import build_demo_data
    from omni_mega.data.multimodal.shards import MMShardDataset

    cfg, m = model
    ds = MMShardDataset(build_demo_data(tmp_path, num_train=2, num_heldout=2)["heldout"])
    rows = gen.caption_dataset(m, cfg, ds, [0, 1], min_pixels=784, max_pixels=25088, max_new_tokens=5)
    assert [r["key"] for r in rows] == [ds[0].key, ds[1].key]
    assert rows[1]["true"] == bytes(ds[1].tokens.tolist()).decode() and len(rows[1]["true"]) > 3
    assert all(len(r["generated"].encode()) <= 5 * 3 and r["exact"] == (r["generated"] == r["true"]) for r in rows)


def test_layout_errors():
    with pytest.raises(ValueError, match=r"tp=1, pp=1.*got tp=2, pp=1"):
        gen.check_layout(load_config(None, CONFIG + ["parallel.tp=2"]))
    with pytest.raises(ValueError, match="model.vit is not set"):
        gen.check_layout(load_config(None, []))
    with pytest.raises(ValueError, match="non-empty int64"):
        gen.greedy_decode(torch.nn.Linear(1, 1), torch.zeros(0, dtype=torch.int64), eod=0, vocab_size=1)


def test_batched_sampling_matches_one_at_a_time(model):
    """Generator.sample_batch decodes groups of continuations of several prompts (different lengths and images)
    together, each prompt prefilled once; each row equals generate() with that row's seed: the same tokens, stop
    and log-probs."""
    from omni_mega.inference import Generator, Prompt, SamplingParams

    cfg, m = model
    with torch.no_grad():  # soften the sharpened head so samples at temperature 1 differ between seeds
        m.llm.output_layer.weight.div_(8)
    try:
        prompts = [Prompt(*gen.image_prompt(_image(28, 56), cfg, min_pixels=784, max_pixels=25088, sep=10)),
                   Prompt(*gen.image_prompt(_image(56, 56), cfg, min_pixels=784, max_pixels=25088, sep=11))]
        assert len(prompts[0].ids) != len(prompts[1].ids)
        g = Generator(m, VOCAB)
        seeds = [[3, 11, 12], [40, 41]]

        def one_by_one(params):
            return [[g.generate(pr.ids, SamplingParams(**{**params.__dict__, "seed": s}), pixel_values=pr.pixel_values,
                                grid_thw=pr.grid_thw) for s in ss] for pr, ss in zip(prompts, seeds)]

        free = SamplingParams(max_new_tokens=6, temperature=1.0)
        first = one_by_one(free)
        assert len({tuple(r.ids) for rows in first for r in rows}) > 2, "degenerate: rows would not tell seeds apart"
        stop = first[0][1].ids[2]  # a token some rows draw: those rows stop there, the others run on
        params = SamplingParams(max_new_tokens=6, temperature=1.0, eos_token_ids=[stop])
        want = one_by_one(params)
        got = g.sample_batch(prompts, params, seeds)
        flat = [r for rows in want for r in rows]
        assert any(r.stopped_at_eos for r in flat) and not all(r.stopped_at_eos for r in flat)
        assert [len(rows) for rows in got] == [3, 2]
        for a, b in zip([r for rows in got for r in rows], flat):
            assert (a.ids, a.stopped_at_eos, a.prompt_ids) == (b.ids, b.stopped_at_eos, b.prompt_ids)
            assert len(a.logprobs) == len(b.logprobs) == len(b.ids) + b.stopped_at_eos
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
        single = g.sample(prompts[1].ids, params, seeds[1], pixel_values=prompts[1].pixel_values,
                          grid_thw=prompts[1].grid_thw)
        assert [r.ids for r in single] == [r.ids for r in want[1]]
        with pytest.raises(ValueError, match="at least one seed"):
            g.sample_batch(prompts, free, [[1], []])
    finally:
        with torch.no_grad():
            m.llm.output_layer.weight.mul_(8)
