"""The ViT, visual tokenizer and OmniModel on one process (megatron parallel state TP=PP=1, CPU)."""

import pytest
import torch

from omni_mega.config import ConnectorConfig, LLMConfig, ModelConfig, ParallelConfig, ViTConfig
from omni_mega.ops import visual_head_vet_ref

IMG, IND = -200, [-301, -302]


def _cfg(kind="mlp", **vit):
    return ModelConfig(
        llm=LLMConfig(num_layers=2, hidden_size=32, num_attention_heads=4, max_position_embeddings=64),
        vit=ViTConfig(**{"num_layers": 2, "hidden_size": 16, "num_attention_heads": 2, "patch_size": 2,
                         "pos_embed_grid": 3, **vit}),
        connector=ConnectorConfig(kind=kind, visual_vocab_size=135, num_indicators=2, indicator_token_ids=IND),
    )


def _build(cfg, dtype=torch.float32, **kw):
    from omni_mega.models.factory import build_model

    return build_model(cfg, ParallelConfig(), 128, 64, dtype, **kw)


def _images(grids, in_features=3 * 2 * 2 * 2, dtype=torch.float32):
    grid = torch.tensor(grids)
    return torch.randn(int(grid.prod(1).sum()), in_features, dtype=dtype), grid


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_vit_packed_equals_each_image_alone(megatron_single, layout):
    from omni_mega.models.vision.vit import VisionTransformer

    vit = VisionTransformer(_cfg(rope_layout=layout).vit, ParallelConfig(), torch.float64)
    grids = [[1, 4, 6], [1, 2, 2], [2, 2, 4]]  # odd aspect, the smallest image, a 2-frame video
    px, grid = _images(grids, dtype=torch.float64)
    packed = vit(px, grid)
    alone, start = [], 0
    for g in grids:
        n = g[0] * g[1] * g[2]
        alone.append(vit(px[start:start + n], torch.tensor([g])))
        start += n
    assert packed.shape == (6 + 1 + 4, 4 * 16)
    torch.testing.assert_close(packed, torch.cat(alone), rtol=1e-10, atol=1e-12)
    # Gradients too: the packed backward equals the sum of the per-image ones.
    w = torch.randn_like(packed)
    g_packed = torch.autograd.grad((packed * w).sum(), list(vit.parameters()))
    g_alone = torch.autograd.grad((torch.cat(alone) * w).sum(), list(vit.parameters()))
    for a, b in zip(g_packed, g_alone):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # Positions matter: the same patches under another grid shape give other features.
    other = vit(px[:24], torch.tensor([[1, 6, 4]]))
    assert not torch.allclose(other, alone[0])


@pytest.mark.parametrize("select", ["default", "full"])
def test_clip_style_vit_packed_features_and_gradients(megatron_single, select):
    """A class token per image, a pre-norm and features after the last-but-one layer: packing equals each image alone
    (the class token is one more token per image, kept with `full`), the table is read as is at the native 4x4 grid,
    the skipped layer and final norm do not change the features yet get a (zero) gradient."""
    from omni_mega.models.vision.vit import VisionTransformer

    cfg = _cfg(num_layers=3, merge_size=1, temporal_patch_size=1, rope_layout="none", pos_embed_grid=4,
               class_token=True, pre_norm=True, feature_layer=-2, final_norm=False, feature_select=select).vit
    vit = VisionTransformer(cfg, ParallelConfig(), torch.float64)
    grids = [[1, 4, 4], [1, 2, 3], [1, 4, 4]]
    px, grid = _images(grids, in_features=3 * 2 * 2, dtype=torch.float64)
    packed = vit(px, grid)
    extra = int(select == "full")
    assert packed.shape == (16 + 6 + 16 + 3 * extra, 16)
    alone, start = [], 0
    for g in grids:
        n = g[1] * g[2]
        alone.append(vit(px[start:start + n], torch.tensor([g])))
        start += n
    torch.testing.assert_close(packed, torch.cat(alone), rtol=1e-10, atol=1e-12)
    # at the native grid the position rows are the table's own (row 0 the class token's)
    table = vit.pos_embed.table
    torch.testing.assert_close(vit.pos_embed(torch.tensor([[1, 4, 4]]), torch.tensor([[1, 2]], dtype=torch.int32)),
                               table[1 + 1 * 4 + 2][None], rtol=0, atol=0)
    packed.pow(2).sum().backward()
    missing = [n for n, p in vit.named_parameters() if p.grad is None]
    assert not missing, missing
    last = vit.block.layers[2]
    assert all(float(p.grad.abs().max()) == 0.0 for p in [*last.parameters(), *vit.block.final_layernorm.parameters()])
    assert float(vit.class_token.weight.grad.abs().max()) > 0 and float(vit.pre_norm.weight.grad.abs().max()) > 0
    with torch.no_grad():
        for p in last.parameters():
            p.add_(1.0)
        torch.testing.assert_close(vit(px, grid), packed.detach(), rtol=0, atol=0)


def test_visual_tokenizer_matches_reference(megatron_single):
    model = _build(_cfg("vet"), torch.float64)
    vt = model.connector
    assert (vt.vt, vt.vp) == (133, 256)  # 135 - 2 indicators, padded to a multiple of 128
    with torch.no_grad():  # non-trivial LayerNorm parameters
        vt.head.ln_weight.normal_()
        vt.head.ln_bias.normal_()
    x = torch.randn(7, 64, dtype=torch.float64, requires_grad=True)
    ref = visual_head_vet_ref(x, vt.head.weight[:133], vt.head.ln_weight[:133], vt.head.ln_bias[:133],
                              vt.vet.table[:133], num_indicators=0)
    params = [x, vt.head.weight, vt.head.ln_weight, vt.head.ln_bias, vt.vet.table]
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, params, g)
    # tp = 1 uses the fused op; the TP path (explicit all-reduces, padded rows masked) runs here on a 1-rank group.
    for out in (vt(x), vt._forward_tp(x)):
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
        got = torch.autograd.grad(out, params, g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
        assert all(float(t[133:].abs().max()) == 0.0 for t in got[1:])  # padded rows: no gradient
    ind = vt.indicator(torch.tensor([1, 0]))
    torch.testing.assert_close(ind, vt.vet.indicators.flip(0))


def _batch(with_image=True):
    ids = torch.randint(0, 120, (2, 16))
    if not with_image:
        return ids, None, None
    px, grid = _images([[1, 4, 4], [1, 2, 6]])  # 4 + 3 placeholders
    ids[0, 3:7] = IMG
    ids[1, 5:8] = IMG
    return ids, px, grid


@pytest.mark.parametrize("kind", ["mlp", "vet"])
def test_omni_forward_placeholders_and_dummy_path(megatron_single, kind):
    model = _build(_cfg(kind))
    ids, px, grid = _batch()
    if kind == "vet":
        ids[0, 2], ids[0, 7] = IND
    labels = torch.randint(0, 120, (2, 16))
    loss = model(ids, None, None, labels=labels, pixel_values=px, grid_thw=grid)
    assert loss.shape == (2, 16) and torch.isfinite(loss).all()
    # The image reaches exactly the placeholder positions and what follows them (causal LLM).
    loss2 = model(ids, None, None, labels=labels, pixel_values=px * 2, grid_thw=grid)
    first = 3
    torch.testing.assert_close(loss2[0, :first], loss[0, :first])
    torch.testing.assert_close(loss2[1, :5], loss[1, :5])
    assert not torch.allclose(loss2[0, first:], loss[0, first:])
    # Too few / too many placeholders, or placeholders without pixels: a clear error.
    short = ids.clone()
    short[1, 7] = 5
    with pytest.raises(ValueError, match=r"hold 6 image placeholder tokens \(id -200\) .* needs 7"):
        model(short, None, None, pixel_values=px, grid_thw=grid)
    with pytest.raises(ValueError, match="no pixel_values"):
        model(ids, None, None)
    with pytest.raises(ValueError, match="without grid_thw"):
        model(ids, None, None, pixel_values=px)
    # Text-only: same loss as the bare LLM, and every parameter still gets a gradient (zero-weighted dummy image).
    text, _, _ = _batch(with_image=False)
    out = model(text, None, None, labels=labels)
    torch.testing.assert_close(out, model.llm(text, None, None, labels=labels))
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert float(model.vit.patch_embed.weight.grad.abs().max()) == 0.0


def test_mrope_text_only_equals_rope(megatron_single):
    rope = _build(_cfg())
    mrope = _build(_cfg(), mrope_section=[2, 1, 1])  # head_dim 8: 4 rotary pairs
    mrope.load_state_dict(rope.state_dict())
    from omni_mega.models.mrope import get_rope_index

    text = torch.randint(0, 120, (2, 16))
    pos3, _ = get_rope_index(text, IMG, None, 2)
    torch.testing.assert_close(mrope(text, pos3, None), rope(text, torch.arange(16).expand(2, 16), None))
    ids, px, grid = _batch()
    pos3, _ = get_rope_index(ids, IMG, grid, 2)
    out = mrope(ids, pos3, None, pixel_values=px, grid_thw=grid)
    assert torch.isfinite(out).all()
    # Given plain positions, the model computes the 3D ones itself (what the trainer's packed batches carry).
    torch.testing.assert_close(mrope(ids, torch.arange(16).expand(2, 16), None, pixel_values=px, grid_thw=grid), out)
    assert not torch.allclose(rope(ids, torch.arange(16).expand(2, 16), None, pixel_values=px, grid_thw=grid), out)


def test_packed_rope_index_restarts_per_sample():
    from omni_mega.models.mrope import get_rope_index, packed_rope_index

    ids, _, grid = _batch()  # row 0: an image of grid [1, 4, 4] (4 tokens); row 1: [1, 2, 6] (3 tokens)
    packed = torch.cat([ids[0, :12], ids[1, :9], ids[0, 12:]])[None]  # 3 samples, the images in order
    cu = torch.tensor([0, 12, 21, 25], dtype=torch.int32)
    got = packed_rope_index(packed, IMG, grid, 2, cu)
    want = torch.cat([get_rope_index(ids[:1, :12], IMG, grid[:1], 2)[0],
                      get_rope_index(ids[1:, :9], IMG, grid[1:], 2)[0],
                      get_rope_index(ids[:1, 12:], IMG, None, 2)[0]], dim=2)
    assert got.shape == (3, 1, 25) and torch.equal(got, want)
    assert got[:, 0, 12].tolist() == [0, 0, 0]  # the second sample starts again at 0


def test_named_groups_contract(megatron_single):
    from omni_mega.models.groups import resolve

    model = _build(_cfg("vet"))
    groups = model.named_groups()
    assert set(groups) >= {"vit", "vit.patch_embed", "vit.layers", "visual_head", "vet", "projector", "llm",
                           "llm.embedding", "llm.layers", "llm.output_layer", "llm.final_norm"}
    vit_layers = groups["vit.layers"]
    assert vit_layers.total_layers == 2 and sorted(vit_layers.layers) == [0, 1]
    assert vit_layers.modules == list(model.vit.block.layers)
    assert groups["projector"].modules == [] and groups["vet"].modules == [model.connector.vet]
    covered = {id(p) for n in ("vit", "visual_head", "vet", "llm") for m in groups[n].modules for p in m.parameters()}
    assert covered == {id(p) for p in model.parameters()}
    patch = {id(p) for m in groups["vit.patch_embed"].modules for p in m.parameters()}
    assert patch == {id(model.vit.patch_embed.weight), id(model.vit.pos_embed.table)}
    # The curriculum's resolver slices the ViT layers by global index.
    last = {id(p) for p in resolve([model], "vit.layers[-1:]")}
    assert last == {id(p) for p in model.vit.block.layers[1].parameters()}
