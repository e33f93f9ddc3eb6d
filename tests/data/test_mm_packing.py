"""Pure multimodal packing pieces (omni_mega.data.packing): one pack's layout against hand-built tensors, best-fit
decreasing (capacity, budget, the best-fit choice), data-parallel dealing, sample token construction."""

import numpy as np
import pytest
import torch

from omni_mega.data import packing as mp

IMG, SEP, EOD = -200, 10, 256


def test_layout_of_one_pack_matches_hand_built_tensors():
    # An image-text sample with 3 placeholders and caption "AB", a text document "xyz", a sample whose image was
    # rejected at decode time (2 positions), then 2 positions of trailing padding: S = 16.
    mm = mp.mm_sample_tokens(3, np.array([65, 66], dtype=np.int32), image_token_id=IMG, sep=SEP, eod=EOD,
                             seq_length=16)
    assert mm.tolist() == [IMG, IMG, IMG, SEP, 65, 66, EOD]
    text = mp.text_sample_tokens(np.array([120, 121, 122, EOD]), seq_length=16)
    assert text.tolist() == [120, 121, 122, EOD]
    out = mp.layout_pack([mm, text, None], [6, 3, 5], 16, IMG)
    assert out["tokens"].tolist() == [[IMG, IMG, IMG, SEP, 65, 66, 120, 121, 122, 0, 0, 0, 0, 0, 0, 0]]
    assert out["labels"].tolist() == [[IMG, IMG, SEP, 65, 66, EOD, 121, 122, EOD, 0, 0, 0, 0, 0, 0, 0]]
    # Loss only where neither input nor label is a placeholder: the first caption token is predicted from SEP.
    assert out["loss_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 0, 1, 2, 3, 4, 0, 1]]
    assert out["cu_seqlens"].tolist() == [0, 6, 9, 14, 16] and out["cu_seqlens"].dtype == torch.int32
    assert out["max_seqlen"] == 6
    for k in ("tokens", "labels", "position_ids"):
        assert out[k].dtype == torch.int64 and out[k].shape == (1, 16)
    assert out["loss_mask"].dtype == torch.float32


def test_layout_exactly_full_pack_has_no_padding_segment_and_overflow_raises():
    a = mp.text_sample_tokens(np.arange(1, 40), seq_length=8)  # truncated to S + 1 tokens
    assert a.tolist() == list(range(1, 10))
    out = mp.layout_pack([a], [8], 8, IMG)
    assert out["cu_seqlens"].tolist() == [0, 8] and out["loss_mask"].sum() == 8
    assert out["labels"][0, -1] == 9  # truncated: the last label is a document token, not EOD
    with pytest.raises(ValueError, match="overflow"):
        mp.layout_pack([a, a], [8, 8], 8, IMG)
    with pytest.raises(ValueError, match="expected positions"):
        mp.layout_pack([a], [5], 8, IMG)


def test_mm_caption_truncates_to_the_pack():
    t = mp.mm_sample_tokens(4, np.arange(30, 60), image_token_id=IMG, sep=SEP, eod=EOD, seq_length=7)
    assert t.tolist() == [IMG] * 4 + [SEP, 30, 31, 32] and mp.mm_positions(4, 30, 7) == 7


def test_skip_reasons():
    assert mp.mm_skip_reason(10, budget=9, seq_length=64) == mp.OVER_BUDGET
    assert mp.mm_skip_reason(64, budget=100, seq_length=64) == mp.OVER_PACK  # no position left for SEP
    assert mp.mm_skip_reason(63, budget=63, seq_length=64) is None


def _ref(i, positions, visual=0):
    return mp.SampleRef("mm" if visual else "text", 0, i, positions, visual, i)


def test_best_fit_picks_the_tightest_pack_not_the_first():
    # Decreasing order 7, 4, 4, 2 into S = 10: after 7 -> A (free 3) and 4, 4 -> B (free 2), the 2 goes to the
    # tightest pack B (first fit would put it in A).
    packs = mp.best_fit_decreasing([_ref(0, 2), _ref(1, 4), _ref(2, 7), _ref(3, 4)], 10, budget=10)
    assert [[s.index for s in p] for p in packs] == [[0, 1, 3], [2]]  # fullest first; draw order inside a pack


def test_best_fit_respects_the_visual_budget():
    # Positions would fit in one pack, but 3 + 3 visual tokens exceed a budget of 4.
    packs = mp.best_fit_decreasing([_ref(0, 3, 3), _ref(1, 3, 3), _ref(2, 2)], 10, budget=4)
    assert sorted(sum(s.visual for s in p) for p in packs) == [3, 3] and len(packs) == 2
    with pytest.raises(ValueError, match="does not fit"):
        mp.best_fit_decreasing([_ref(0, 3, 5)], 10, budget=4)


def test_best_fit_random_never_exceeds_capacity_or_budget_and_keeps_every_sample():
    rng = np.random.default_rng()
    S, budget = 97, 41
    refs = [_ref(i, int(rng.integers(1, S + 1)), int(rng.integers(0, 42)) if rng.random() < 0.5 else 0)
            for i in range(300)]
    refs = [r if r.visual < r.positions else _ref(r.order, r.positions) for r in refs]
    packs = mp.best_fit_decreasing(refs, S, budget)
    assert sorted(s.order for p in packs for s in p) == list(range(300))
    assert all(sum(s.positions for s in p) <= S and sum(s.visual for s in p) <= budget for p in packs)
    # Any-fit property without a binding budget: at most one pack is at most half full.
    loose = mp.best_fit_decreasing(refs, S, budget=10**6)
    assert sum(2 * sum(s.positions for s in p) <= S for p in loose) <= 1
    assert [sum(s.positions for s in p) for p in packs] == sorted((sum(s.positions for s in p) for p in packs),
                                                                  reverse=True)


def test_assign_to_ranks_hand_case_and_random_balance():
    assert mp.assign_to_ranks([10, 8, 6, 0], dp=2, per_rank=2) == [[0, 3], [1, 2]]
    rng = np.random.default_rng()
    for dp, per in ((2, 5), (3, 4), (1, 3)):
        vis = rng.integers(0, 200, dp * per).tolist()
        out = mp.assign_to_ranks(vis, dp, per)
        assert sorted(i for o in out for i in o) == list(range(dp * per))  # disjoint and complete
        assert all(len(o) == per for o in out)
        loads = [sum(vis[i] for i in o) for o in out]
        assert max(loads) - min(loads) <= max(vis)  # greedy least-loaded dealing bound
    with pytest.raises(ValueError, match="dp \\* per_rank"):
        mp.assign_to_ranks([1, 2, 3], dp=2, per_rank=2)


def test_visual_tokens_from_size_matches_smart_resize():
    # 28 x 200 at patch 14, merge 2 with min 56*56: upscaled by smart_resize to 56 x 308 -> 2 x 11 merged tokens.
    n, h, w = mp.visual_tokens(28, 200, patch_size=14, merge_size=2, min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    from omni_mega.data.images import smart_resize

    assert (h, w) == smart_resize(28, 200, 28, 56 * 56, 28 * 28 * 1280) and n == (h // 28) * (w // 28)
    with pytest.raises(mp.ImageRejected):
        mp.visual_tokens(1, 500, patch_size=14, merge_size=2, min_pixels=56 * 56, max_pixels=10**6)
