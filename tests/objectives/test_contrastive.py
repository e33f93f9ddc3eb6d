"""`objective: contrastive` (SigLIP / CLIP + CoCa captioning): the losses against float64 loops on fixed tensors
(values and gradients), CLIP's limits (identical embeddings -> ~0, unrelated ones -> ~ln B), caption targets, the
dry run's count of the towers, the data-parallel gather (DP=2 equals one rank with the whole batch, torchrun), and
learning: a tiny CoCa stage (CLIP loss + 2 x captioning) through the real trainer and image-text source retrieves the
captions of held-out shape scenes (image -> text recall@1, see the thresholds' comment)."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from omni_mega.objectives.contrastive import caption_loss, contrastive_terms, positives
from tests.distributed.launch import torchrun


def _draw(b: int, d: int, g: torch.Generator, dtype=torch.float64):
    img = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1)
    txt = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1)
    return img, txt


def _siglip_loop(img, txt, t, bias, keys, mask) -> torch.Tensor:
    """-1/B_valid sum_i sum_j log sigmoid(s_ij (t x_i.y_j + b)), s_ij = +1 for equal captions (i == j included)."""
    total, n = 0.0, 0
    for i in range(img.size(0)):
        if not mask[i]:
            continue
        n += 1
        for j in range(txt.size(0)):
            if not mask[j]:
                continue
            s = 1.0 if i == j or keys[i] == keys[j] else -1.0
            z = t * (img[i] @ txt[j]) + bias
            total = total - torch.log(1.0 / (1.0 + torch.exp(-s * z)))
    return total / n


def _clip_loop(img, txt, t, keys, mask) -> torch.Tensor:
    """1/(2 B_valid) sum_i [CE(t x_i.Y, targets_i) + CE(t y_i.X, targets_i)], targets spread over equal captions."""
    total, n = 0.0, 0
    valid = [j for j in range(img.size(0)) if mask[j]]
    for i in valid:
        n += 1
        pos = [j for j in valid if j == i or keys[j] == keys[i]]
        for a, b in ((img, txt), (txt, img)):
            logits = torch.stack([t * (a[i] @ b[j]) for j in valid])
            lse = torch.logsumexp(logits, 0)
            total = total - sum(logits[valid.index(j)] - lse for j in pos) / len(pos)
    return total / (2 * n)


def _terms(kind, img, txt, t, bias, keys, mask):
    out = {"image": img, "text": txt, "logit_scale": t, "logit_bias": bias}
    return contrastive_terms(out, mask, kind, None, keys)


@pytest.mark.parametrize("kind", ["siglip", "clip"])
@pytest.mark.parametrize("case", ["distinct", "duplicates_and_a_rejected_image"])
def test_loss_equals_the_float64_formula(kind, case):
    g = torch.Generator().manual_seed(7)
    b, d = 7, 5
    img, txt = _draw(b, d, g)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    t = torch.tensor(3.7, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.3, dtype=torch.float64, requires_grad=True)
    if case == "distinct":
        keys, mask = torch.arange(b), torch.ones(b, dtype=torch.float64)
    else:  # samples 1, 4 and 6 share a caption; image 2 was rejected at decode time
        keys = torch.tensor([0, 1, 2, 3, 1, 5, 1])
        mask = torch.tensor([1, 1, 0, 1, 1, 1, 1], dtype=torch.float64)
    got = _terms(kind, img, txt, t, bias, keys, mask)
    want = (_siglip_loop(img, txt, t, bias, keys, mask) if kind == "siglip"
            else _clip_loop(img, txt, t, keys, mask))
    torch.testing.assert_close(got["loss"], want, rtol=1e-12, atol=1e-12)
    inputs = [img, txt, t] + ([bias] if kind == "siglip" else [])
    for a, w in zip(torch.autograd.grad(got["loss"], inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, w, rtol=1e-10, atol=1e-12)
    assert got["images"] == float(mask.sum())
    # positives(): the own caption and every equal one
    pos = positives(b, 0, keys, keys)
    dup = case != "distinct"
    assert pos.diagonal().all() and bool(pos[1, 6]) == dup and bool(pos[6, 4]) == dup and int(pos.sum()) == b + 6 * dup


def test_clip_limits_identical_near_zero_random_about_ln_b():
    g = torch.Generator().manual_seed(3)
    b = 64
    img, txt = _draw(b, 512, g)
    ones, keys = torch.ones(b, dtype=torch.float64), torch.arange(b)
    same = _terms("clip", img, img.clone(), torch.tensor(100.0, dtype=torch.float64), torch.tensor(0.0), keys, ones)
    assert float(same["loss"]) < 1e-6 and same["hits"] == b
    rnd = _terms("clip", img, txt, torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0), keys, ones)
    assert abs(float(rnd["loss"]) - math.log(b)) < 0.02, (float(rnd["loss"]), math.log(b))


def test_caption_targets_and_loss():
    from omni_mega.models.contrastive import IGNORE, caption_labels

    eod = 256
    text = torch.tensor([[eod, 5, 6, 7], [eod, 9, 0, 0]])  # BOS then captions of 3 and 1 tokens, right-padded
    labels = caption_labels(text, torch.tensor([3, 1]), eod)
    I = IGNORE  # noqa: E741
    assert labels.tolist() == [[5, 6, 7, eod, I], [9, eod, I, I, I]]
    logits = torch.randn(2, 5, 300)  # the loss is taken in float32 (bf16 logits are upcast)
    total, n = caption_loss(logits, labels)
    want = sum(-F.log_softmax(logits[i, j], -1)[labels[i, j]] for i in range(2) for j in range(5) if labels[i, j] != I)
    assert n == 6
    torch.testing.assert_close(total, want, rtol=1e-6, atol=1e-5)
    # a rejected sample (mask 0) adds no token
    assert caption_loss(logits, labels, torch.tensor([1.0, 0.0]))[1] == 4


def test_dry_run_counts_the_towers_as_built():
    from omni_mega.config import load_config
    from omni_mega.models.contrastive import ContrastiveTowers
    from omni_mega.training.dry_run import contrastive_leaves, llm_vocab

    cfg = load_config(None, ["model.vit={num_layers: 1, hidden_size: 32, num_attention_heads: 2}",
                             "model.contrastive={embed_dim: 24, hidden_size: 48, num_attention_heads: 4, "
                             "text_layers: 2, decoder_layers: 3, max_text_length: 40}"])
    vocab = llm_vocab(cfg)
    towers = ContrastiveTowers(cfg.model.contrastive, 4 * 32, vocab, torch.float32)
    leaves = contrastive_leaves(cfg)
    for name in ("image_pooler", "text_tower", "caption_decoder"):
        assert leaves[name].total == sum(p.numel() for p in getattr(towers, name).parameters()), name


def test_dp2_gather_equals_one_rank_with_the_whole_batch(tmp_path):
    out = tmp_path / "gather.json"
    torchrun("run_contrastive_gather.py", [str(out)], nproc=2, timeout=180)
    res = json.loads(out.read_text())
    assert set(res) == {"siglip", "clip"}
    for kind, r in res.items():
        assert r["loss_err"] <= 1e-6 and r["grad_err"] <= 1e-6, (kind, r)
        assert r["grad_norm"] > 0, (kind, r)


# ---- learning ------------------------------------------------------------------------------------------------------
STEPS = 2000  # the shape is learned late (see the test's measurements); ~6 min on 2 cores
TRAIN_SCENES = 4800


@pytest.fixture(scope="module")
def rt():
    from omni_mega.config import load_config
    from omni_mega.runtime import init_distributed, shutdown
    from tests.distributed.launch import free_port

    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    yield init_distributed(load_config(None, ["name=x"]).parallel, seed=1)
    shutdown()
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _coca_config(train_dir, seed: int = 1, steps: int = STEPS, loss: str = "clip",
                 caption_weight: float = 2.0) -> list[str]:
    return [f"name=coca{seed}", "train.tensorboard=false", "train.log_interval=10", f"train.seed={seed}",
            "model.llm={num_layers: 1, hidden_size: 32, num_attention_heads: 2, max_position_embeddings: 64}",
            "model.vit={num_layers: 2, hidden_size: 32, num_attention_heads: 2}",
            "model.contrastive={embed_dim: 32, hidden_size: 32, num_attention_heads: 2, text_layers: 1, "
            f"decoder_layers: 1, max_text_length: 32, init_logit_scale: 2.659}}",  # CLIP's 1 / 0.07
            "data={seq_length: 64, micro_batch_size: 16, global_batch_size: 32, max_pixels: 6272, "
            f"seed: {seed}}}",
            "optim={lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 5}",
            f"stages=[{{name: coca, steps: {steps}, objective: contrastive, "
            f"contrastive: {{loss: {loss}, caption_weight: {caption_weight}}}, "
            "trainable: [vit, image_pooler, text_tower, caption_decoder], "
            f"data: [{{name: shapes, source: mm_shards, path: '{train_dir}'}}]}}]"]


def retrieval(chunk, model_cfg, heldout_dir, plan) -> tuple[float, float]:
    """Image -> text retrieval over a held-out set, each image against every distinct caption of the set:
    (recall@1: the best-scoring caption is the image's own, share whose best caption names the right colour)."""
    from omni_mega.data.images import decode_and_pack
    from omni_mega.data.multimodal.shards import MMShardDataset

    ds = MMShardDataset(heldout_dir)
    recs = [ds[i] for i in range(len(ds))]
    vit = model_cfg.vit
    packed, kept, _ = decode_and_pack([r.image for r in recs], patch_size=vit.patch_size, merge_size=vit.merge_size,
                                      temporal_patch_size=vit.temporal_patch_size, min_pixels=plan.min_pixels,
                                      max_pixels=plan.max_pixels)
    assert len(kept) == len(recs)
    captions = sorted({bytes(int(x) for x in r.tokens) for r in recs})
    n = max(len(c) for c in captions)
    text = torch.zeros(len(captions), n + 1, dtype=torch.int64)
    text[:, 0] = 256  # the byte tokenizer's EOD, the BOS of every caption
    for i, c in enumerate(captions):
        text[i, 1:1 + len(c)] = torch.tensor(list(c))
    model = getattr(chunk, "module", chunk)
    model.eval()
    with torch.no_grad():
        img = model.towers.embed(model.vit(packed.pixel_values, packed.grid_thw), packed.grid_thw, vit.merge_size)
        txt = model.towers.embed(text=text, text_lengths=torch.tensor([len(c) for c in captions]))
    model.train()
    best = [captions[b] for b in (img @ txt.t()).argmax(1).tolist()]
    own = [bytes(int(x) for x in r.tokens) for r in recs]
    hits = sum(b == o for b, o in zip(best, own))
    colour = sum(b.split()[1] == o.split()[1] for b, o in zip(best, own))  # "a red circle" -> "red"
    return hits / len(recs), colour / len(recs)


def test_coca_stage_learns_shape_scenes(rt, tmp_path):
    from omni_mega.config import load_config
    from omni_mega.data.demo.scenes import write_shape_scenes
    from omni_mega.training.trainer import Trainer

    train = write_shape_scenes(tmp_path / "train", TRAIN_SCENES, seed=1, objects=1)
    heldout = write_shape_scenes(tmp_path / "heldout", 100, seed=2, objects=1)
    tr = Trainer(load_config(None, _coca_config(train)), rt, tmp_path / "run")
    tr.train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = rows[0]
    last = {k: sum(r[k] for r in rows[-50:]) / 50 for k in ("caption_loss", "contrastive_loss")}  # steps vary
    # Measured, seeds 1-3 (train.seed and data.seed; one CPU thread each, two runs side by side: 5-6 min): held-out
    # recall@1 0.98 / 0.99 / 0.97 (chance 1/21), the right colour 1.0 in all three; contrastive loss 3.6 -> 0.39-0.60,
    # caption loss 6.3 -> 0.0001-0.0015. The colour is learned within ~100 steps, the shape late: otherwise alike,
    # recall@1 was 0.41-0.49 after 60 steps (seeds 1-3), 0.86-0.89 after 800 (seed 1, decaying or constant lr),
    # 0.87-0.93 after 1,000 (seeds 2-3, constant lr) and 0.89-0.95 after 1,500 (seeds 1, 3); after 800 steps 1,200
    # scenes gave 0.68 and 9,600 gave 0.68-0.78.
    assert last["caption_loss"] < 0.05 * first["caption_loss"], (first, last)
    assert last["contrastive_loss"] < 0.3 * first["contrastive_loss"], (first, last)
    recall, colour = retrieval(tr.chunks[0], tr.cfg.model, heldout, tr.plans[0])
    assert recall >= 0.9 and colour >= 0.95, (recall, colour)


def test_validation_keeps_the_towers_to_contrastive_stages(tmp_path):
    from omni_mega.config import ConfigError, load_config, validate

    base = ["model.vit={num_layers: 1, hidden_size: 32, num_attention_heads: 2}",
            "model.contrastive={embed_dim: 16, hidden_size: 16, num_attention_heads: 2}"]
    coca = ("{name: coca, steps: 2, objective: contrastive, trainable: [vit, text_tower], "
            "data: [{name: m, source: demo_mm}]}")
    validate(load_config(None, base + [f"stages=[{coca}]"]))
    later = "{name: align, steps: 2, trainable: [projector, caption_decoder]}"
    with pytest.raises(ConfigError, match="trained only by objective contrastive"):
        validate(load_config(None, base + [f"stages=[{coca}, {later}]"]))
    with pytest.raises(ConfigError, match="get no gradient from objective contrastive"):
        validate(load_config(None, base + [f"stages=[{coca.replace('vit, text_tower', 'llm, text_tower')}]"]))
    with pytest.raises(ConfigError, match="needs model.vit and model.contrastive"):
        validate(load_config(None, base[:1] + [f"stages=[{coca.replace(', text_tower', '')}]"]))
