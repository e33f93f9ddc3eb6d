"""The part-training objectives' arithmetic: the packed CTC loss equals torch.nn.functional.ctc_loss, greedy CTC
decoding, edit distances and error rates, Talker targets, codebook usage."""

import torch
import torch.nn.functional as F

from omni_mega.objectives.ctc import error_counts, greedy_decode, packed_ctc_loss, split_targets
from omni_mega.objectives.parts import decoder_of, edit_distance


def test_packed_ctc_loss_equals_torch_ctc_loss():
    g = torch.Generator().manual_seed(0)
    lengths, tl, C = [9, 4, 13], [3, 2, 5], 7
    logits = torch.randn(sum(lengths), C, generator=g, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 9, 13, 26], dtype=torch.int32)
    targets = torch.randint(0, C - 1, (sum(tl),), generator=g)
    got = packed_ctc_loss(logits, cu, targets, torch.tensor(tl), blank=C - 1)
    want, at, t_at = 0.0, 0, 0
    for n, m in zip(lengths, tl):  # each clip alone, as torch computes it
        lp = F.log_softmax(logits[at:at + n].float(), -1)[:, None]
        want = want + F.ctc_loss(lp, targets[None, t_at:t_at + m], [n], [m], blank=C - 1, reduction="sum")
        at, t_at = at + n, t_at + m
    torch.testing.assert_close(got, want)
    g1 = torch.autograd.grad(got, logits)[0]
    logits2 = logits.detach().clone().requires_grad_(True)
    want2, at, t_at = 0.0, 0, 0
    for n, m in zip(lengths, tl):
        lp = F.log_softmax(logits2[at:at + n].float(), -1)[:, None]
        want2 = want2 + F.ctc_loss(lp, targets[None, t_at:t_at + m], [n], [m], blank=C - 1, reduction="sum")
        at, t_at = at + n, t_at + m
    torch.testing.assert_close(g1, torch.autograd.grad(want2, logits2)[0])
    # zero_infinity: a clip with more labels than frames adds 0 instead of inf.
    inf = packed_ctc_loss(logits[:2], torch.tensor([0, 2]), targets[:3], torch.tensor([3]), blank=C - 1)
    assert float(inf) == 0.0


def test_greedy_decode_merges_repeats_and_drops_blanks():
    blank = 4
    best = [[0, 0, 4, 0, 1, 1, 4, 4, 2], [4, 4, 3, 3]]
    logits = torch.full((13, 5), -5.0)
    for t, k in enumerate([k for b in best for k in b]):
        logits[t, k] = 5.0
    cu = torch.tensor([0, 9, 13])
    assert greedy_decode(logits, cu, blank) == [[0, 0, 1, 2], [3]]


def test_edit_distances_and_rates():
    assert edit_distance("kitten", "sitting") == 3 and edit_distance([], [1, 2]) == 2
    dec = decoder_of({"kind": "byte"})
    hyps, refs = [list(b"la mali"), list(b"mumi")], [list(b"la mali"), list(b"mu mi")]
    c = error_counts(hyps, refs, dec)
    assert c == {"char_errors": 1.0, "chars": 12.0, "word_errors": 2.0, "words": 4.0}
    assert split_targets(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 3])) == [[1], [2, 3, 4]]


def test_talker_targets_and_usage():
    from omni_mega.objectives.rvq import usage
    from omni_mega.objectives.talker import talker_targets

    codes = torch.tensor([[1, 5], [2, 6], [3, 7]])
    base, res = talker_targets(codes, torch.tensor([0, 2, 3]), eos=9)
    assert base.tolist() == [1, 2, 9, 3, 9] and res.tolist() == [[5], [6], [7]]
    assert usage(codes, 8) == (3 + 3) / 16


def test_heldout_scores_at_first_interval_and_last_steps():
    """Held-out scoring runs at the stage's first step, every interval-th step and before its last step, so the
    final record's held-out numbers describe the trained part, not the model one interval earlier."""
    from types import SimpleNamespace

    from omni_mega.objectives.parts import HeldOut

    scored = []
    plan = SimpleNamespace(start_step=7, steps=11, cfg=SimpleNamespace(eval=SimpleNamespace(interval=4)))
    held = HeldOut(("x",))
    held.batches = [{}]
    for step in range(plan.start_step, plan.start_step + plan.steps):
        ctx = SimpleNamespace(plan=plan, step=step,
                              forward_only=lambda b, f, c, s=step: scored.append(s) or [{"x": torch.tensor([s, 1.0])}])
        held.before_step(ctx, None)
        v = held.values("cpu")
        assert v["eval_step"].tolist() == [float(held.step), 1.0] and v["x"][0] == held.step
    assert [s - plan.start_step for s in scored] == [0, 4, 8, 10]
