"""objective dpo on fixed tensors: sequence log-probs per segment, the loss formula against a float64 hand
computation, ln 2 (+ the NLL term) when the reference is the policy, the NLL term as the chosen reply's mean CE,
and the reference table's round trip."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omni_mega.objectives.dpo import ReferenceTable, dpo_loss, sequence_logps

CU = torch.tensor([0, 5, 9, 12, 17, 20], dtype=torch.int32)  # pair 0: segments 0, 1; pair 1: segments 3, 4
PAIRS, IDS = torch.tensor([[0, 1], [3, 4]]), torch.tensor([[0, 2], [0, 5]])


def _batch():
    mask = torch.zeros(1, 20)
    for a, b in ((2, 5), (6, 9), (14, 17), (18, 20)):  # reply tokens of the four paired segments
        mask[0, a:b] = 1
    mask[0, 9:12] = 1  # a segment outside any pair (another sample of the pack) is ignored
    return {"loss_mask": mask, "cu_seqlens": CU, "pairs": PAIRS, "pair_ids": IDS}


def _hand(per_token, mask, beta, alpha, ref):
    pt, m = per_token.double()[0], mask.double()[0]
    seg = lambda k: -(pt[CU[k]:CU[k + 1]] * m[CU[k]:CU[k + 1]]).sum()  # noqa: E731
    n = lambda k: m[CU[k]:CU[k + 1]].sum()  # noqa: E731
    out = []
    for (c, r), (rc, rr) in zip(PAIRS.tolist(), ref):
        margin = beta * ((seg(c) - rc) - (seg(r) - rr))
        out.append(-F.logsigmoid(margin) + alpha * (-seg(c) / n(c)))
    return torch.stack(out)


def test_sequence_logps_sum_masked_tokens_per_segment():
    per_token, b = torch.rand(1, 20), _batch()
    logp, count = sequence_logps(per_token, b["loss_mask"], CU)
    assert count.tolist() == [3, 3, 3, 3, 2]
    assert logp[3].item() == pytest.approx(-per_token[0, 14:17].sum().item(), rel=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.3])
def test_loss_matches_the_formula(alpha):
    per_token, b = torch.rand(1, 20) * 3, _batch()
    table = ReferenceTable([6])
    ref = [(-4.0, -5.5), (-7.25, -6.0)]
    table.put(IDS, torch.tensor([r[0] for r in ref]), torch.tensor([r[1] for r in ref]))
    cfg = SimpleNamespace(beta=0.1, nll_weight=alpha)
    total, count, values = dpo_loss(cfg, table, b, per_token)
    want = _hand(per_token, b["loss_mask"], 0.1, alpha, ref)
    assert int(count) == 2 and total.item() == pytest.approx(want.sum().item(), rel=1e-5)
    assert values["loss"][0].item() == pytest.approx(want.sum().item(), rel=1e-5) and values["loss"][1] == 2


def test_reference_equal_to_policy_gives_ln2_plus_the_nll_of_the_chosen():
    per_token, b = torch.rand(1, 20) * 2, _batch()
    logp, count = sequence_logps(per_token, b["loss_mask"], CU)
    table = ReferenceTable([6])
    table.put(IDS, logp[PAIRS[:, 0]], logp[PAIRS[:, 1]])
    _, _, values = dpo_loss(SimpleNamespace(beta=0.1, nll_weight=1.0), table, b, per_token)
    mean = lambda name: (values[name][0] / values[name][1]).item()  # noqa: E731
    assert mean("dpo_loss") == pytest.approx(math.log(2), abs=1e-6)
    chosen_ce = [(per_token[0, a:e]).mean().item() for a, e in ((2, 5), (14, 17))]  # the chosen replies' tokens
    assert mean("nll_loss") == pytest.approx(float(np.mean(chosen_ce)), rel=1e-6)
    assert mean("loss") == pytest.approx(math.log(2) + float(np.mean(chosen_ce)), rel=1e-6)
    assert mean("reward_accuracy") == 0.0 and mean("reward_margin") == pytest.approx(0.0, abs=1e-6)


def test_missing_reference_is_an_error_and_the_table_round_trips(tmp_path):
    table = ReferenceTable([6, 2])
    with pytest.raises(RuntimeError, match="no reference log-probs"):
        table.get(IDS, "cpu")
    table.put(torch.tensor([[1, 1]]), torch.tensor([-1.5]), torch.tensor([-2.5]))
    table.save(tmp_path / "ref.npz")
    back = ReferenceTable.load(tmp_path / "ref.npz", [6, 2])
    assert back.get(torch.tensor([[1, 1]]), "cpu")[1].item() == -2.5
    with pytest.raises(ValueError, match="items"):
        ReferenceTable.load(tmp_path / "ref.npz", [6, 3])
