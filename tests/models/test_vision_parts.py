"""Pieces of the vision side that need no parallel state: packed attention, SP norms, merge/placeholder
accounting, the image loss mask and M-RoPE position ids."""

from types import SimpleNamespace

import pytest
import torch

from omni_mega.models.mrope import get_rope_index
from omni_mega.models.vision.attention import packed_attention
from omni_mega.models.vision.merge import check_placeholders, merged_tokens_per_image, spatial_merge
from omni_mega.models.vision.norms import SPNorm


def _dense_per_segment(q, k, v, lengths, causal, scale):
    rep = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    outs, s = [], 0
    for n in lengths:
        qs, ks, vs = (t[s:s + n].transpose(0, 1) for t in (q, k, v))  # [H, n, D]
        att = qs @ ks.transpose(1, 2) * scale
        if causal:
            att = att.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        outs.append((att.softmax(-1) @ vs).transpose(0, 1))
        s += n
    return torch.cat(outs)


@pytest.mark.parametrize("causal", [False, True])
def test_packed_attention_matches_each_segment_alone(causal):
    lengths = [5, 0, 1, 7]  # an empty and a single-token segment
    T, H, Hk, D = sum(lengths), 4, 2, 8
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(H, T, D, dtype=torch.float64).transpose(0, 1).requires_grad_()  # non-contiguous THD view
    k = torch.randn(T, Hk, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(T, Hk, D, dtype=torch.float64, requires_grad=True)
    out = packed_attention(q, k, v, cu, max(lengths), causal=causal, scale=D ** -0.5)
    ref = _dense_per_segment(q, k, v, lengths, causal, D ** -0.5)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_packed_attention_rejects_bad_cu_seqlens():
    q = torch.randn(6, 2, 4)
    with pytest.raises(ValueError, match="cu_seqlens covers 5 tokens but q has T=6"):
        packed_attention(q, q, q, torch.tensor([0, 2, 5], dtype=torch.int32), 3, causal=False, scale=0.5)


@pytest.mark.parametrize("norm", ["RMSNorm", "LayerNorm"])
def test_sp_norm_matches_torch_and_marks_params(norm):
    cfg = SimpleNamespace(normalization=norm, layernorm_zero_centered_gamma=False, params_dtype=torch.float64,
                          sequence_parallel=True)
    mod = SPNorm(cfg, 12, eps=1e-6)
    ref = (torch.nn.RMSNorm if norm == "RMSNorm" else torch.nn.LayerNorm)(12, eps=1e-6, dtype=torch.float64)
    with torch.no_grad():
        for p in mod.parameters():
            p.normal_()
        ref.load_state_dict(mod.state_dict())
    x = torch.randn(5, 3, 12, dtype=torch.float64)
    torch.testing.assert_close(mod(x), ref(x))
    mod(x).square().sum().backward()
    ref(x).square().sum().backward()
    for (n, a), b in zip(mod.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
        assert a.sequence_parallel is True, n  # finalize_model_grads all-reduces these under SP
    assert len(list(mod.parameters())) == (1 if norm == "RMSNorm" else 2)


def test_merge_and_placeholder_accounting():
    grid = torch.tensor([[1, 4, 6], [2, 2, 2], [1, 2, 2]])
    assert merged_tokens_per_image(grid, 2) == [6, 2, 1]
    x = torch.randn(24 + 8 + 4, 5)
    merged = spatial_merge(x, 2)
    assert merged.shape == (9, 20)
    torch.testing.assert_close(merged[1], x[4:8].reshape(-1))  # one merge block = 4 consecutive tokens
    ids = torch.full((2, 8), 7)
    ids[0, 1:7] = -200
    ids[1, 0:3] = -200
    assert check_placeholders(ids, -200, grid, 2) == 9
    ids[1, 2] = 7  # one placeholder short
    with pytest.raises(ValueError, match=r"hold 8 image placeholder tokens .* needs 9 .*per image: \[6, 2, 1\]"):
        check_placeholders(ids, -200, grid, 2)


def test_mrope_positions_follow_qwen2_vl():
    # text(2) image(grid 1x4x6 -> 2x3 merged) text(2) video(grid 2x2x2 -> 2 frames of 1x1) text(1)
    img, grid = -200, torch.tensor([[1, 4, 6], [2, 2, 2]])
    ids = torch.tensor([[1, 2] + [img] * 6 + [3, 4] + [img] * 2 + [5]])
    pos, delta = get_rope_index(ids, img, grid, 2)
    t = [0, 1] + [2] * 6 + [5, 6] + [7, 8] + [9]
    h = [0, 1] + [2, 2, 2, 3, 3, 3] + [5, 6] + [7, 7] + [9]
    w = [0, 1] + [2, 3, 4, 2, 3, 4] + [5, 6] + [7, 7] + [9]
    assert pos[:, 0].tolist() == [t, h, w]
    assert delta.tolist() == [10 - 13]
    text = torch.tensor([[4, 5, 6]])
    p, d = get_rope_index(text, img, None, 2, attention_mask=torch.tensor([[1, 1, 0]]))
    assert p[:, 0].tolist() == [[0, 1, 1]] * 3 and d.tolist() == [0]
    with pytest.raises(ValueError, match="needs 6 consecutive placeholders"):
        get_rope_index(ids[:, :6], img, grid[:1], 2)


@pytest.mark.parametrize("grid,side", [([[1, 6, 8]], 2), ([[2, 8, 8], [1, 4, 12]], 2), ([[1, 12, 10]], 3),
                                       ([[1, 4, 4]], 4), ([[3, 6, 6]], 1)])
def test_window_order_follows_qwen2_5_vl(grid, side):
    """Windows of whole merge blocks per frame (edge windows cut short, several images and frames): the block order
    and window boundaries are transformers' `get_vision_window_index` (window_size = side x merge x patch pixels)."""
    vision_utils = pytest.importorskip("transformers.vision_utils")
    from omni_mega.models.vision.windows import window_order

    g = torch.tensor(grid)
    want_blocks, want_cu = vision_utils.get_vision_window_index(g, spatial_merge_size=2, window_size=side * 2 * 14,
                                                                patch_size=14)
    perm, cu = window_order(g, 2, side)
    assert torch.equal(perm.view(-1, 4), want_blocks[:, None] * 4 + torch.arange(4))  # merge blocks stay whole
    assert torch.equal(cu, want_cu.to(torch.int32))
