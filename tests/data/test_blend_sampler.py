"""Stage blends and the blend sampler: weights per stage and ramps, mixing accuracy, determinism, exact resume."""

import json

import numpy as np
import pytest

from omni_mega.data.blend import BlendSchedule, StageMix
from omni_mega.data.sampler import BlendSampler


def draw(sampler, n):
    return [sampler.next() for _ in range(n)]


def test_mixing_holds_weights_within_one_percent():
    rng = np.random.default_rng()  # fresh weights each run
    raw = rng.uniform(0.05, 1.0, size=4)
    weights = {f"s{i}": float(w) for i, w in enumerate(raw)}
    sampler = BlendSampler(BlendSchedule.constant(weights), {k: 97 + 13 * i for i, k in enumerate(weights)}, seed=3)
    names = [name for name, _ in draw(sampler, 10_000)]
    target = raw / raw.sum()
    got = np.array([names.count(k) for k in weights]) / 10_000
    assert np.abs(got - target).max() < 0.01, (got, target)
    # Low discrepancy: every prefix is already close (a few samples), not only the full 10,000.
    for n in (100, 1000, 5000):
        counts = np.array([names[:n].count(k) for k in weights])
        assert np.abs(counts - n * target).max() <= 2, n


def test_linear_ramp_inside_a_stage_and_stage_switch():
    schedule = BlendSchedule([
        StageMix("text-only", 2_000, {"text": 1.0}),
        StageMix("ramp", 10_000, {"text": 1.0, "mm": 0.0}, end_weights={"text": 0.2, "mm": 0.8}),
        StageMix("hold", 3_000, {"text": 1.0, "mm": 3.0}),
    ])
    assert schedule.sources == ["text", "mm"] and schedule.total_samples == 15_000
    np.testing.assert_allclose(schedule.weights_at(2_000 + 5_000), [0.6, 0.4])  # halfway through the ramp
    np.testing.assert_allclose(schedule.weights_at(14_000), [0.25, 0.75])
    np.testing.assert_allclose(schedule.weights_at(10**9), [0.25, 0.75])  # the last stage holds afterwards
    names = [n for n, _ in draw(BlendSampler(schedule, {"text": 50, "mm": 30}), 15_000)]
    assert names[:2_000] == ["text"] * 2_000
    ramp = names[2_000:12_000]
    # mm share over the ramp is the mean of a linear 0 -> 0.8 ramp = 0.4, and over each quarter its own mean.
    assert abs(ramp.count("mm") / 10_000 - 0.4) < 0.01
    for q in range(4):
        expect = 0.8 * (q + 0.5) / 4
        assert abs(ramp[q * 2_500:(q + 1) * 2_500].count("mm") / 2_500 - expect) < 0.01, q
    assert abs(names[12_000:].count("mm") / 3_000 - 0.75) < 0.01


def test_deterministic_per_seed_and_epochs_are_permutations():
    schedule = BlendSchedule.constant({"a": 2.0, "b": 1.0})
    sizes = {"a": 7, "b": 5}
    one, two = draw(BlendSampler(schedule, sizes, seed=11), 300), draw(BlendSampler(schedule, sizes, seed=11), 300)
    other = draw(BlendSampler(schedule, sizes, seed=12), 300)
    assert one == two
    assert [n for n, _ in one] == [n for n, _ in other] and one != other  # the seed moves the order, not the mix
    a_indices = [i for n, i in one if n == "a"]
    for epoch in range(len(a_indices) // 7):
        assert sorted(a_indices[epoch * 7:(epoch + 1) * 7]) == list(range(7))
    assert a_indices[:7] != a_indices[7:14]  # a new permutation every epoch
    plain = draw(BlendSampler(schedule, sizes, seed=11, shuffle=False), 30)
    assert [i for n, i in plain if n == "b"] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]


def test_state_dict_resumes_exactly():
    schedule = BlendSchedule([StageMix("s1", 400, {"a": 1.0, "b": 1.0}, end_weights={"a": 0.1, "b": 0.9}),
                              StageMix("s2", 400, {"a": 0.3, "b": 0.3, "c": 0.4})])
    sizes = {"a": 13, "b": 29, "c": 7}
    reference = draw(BlendSampler(schedule, sizes, seed=5), 900)
    for k in (0, 1, 399, 401, 777):
        first = BlendSampler(schedule, sizes, seed=5)
        assert draw(first, k) == reference[:k]
        state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint round trip keeps
        resumed = BlendSampler(BlendSchedule.from_dict(json.loads(json.dumps(schedule.to_dict()))), sizes, seed=5)
        resumed.load_state_dict(state)
        assert draw(resumed, 900 - k) == reference[k:], k
    with pytest.raises(ValueError, match="seed"):
        BlendSampler(schedule, sizes, seed=6).load_state_dict(state)


def test_bad_blends_are_rejected():
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        StageMix("x", 10, {"a": -1.0, "b": 2.0})
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        StageMix("x", 10, {"a": 0.0})
    with pytest.raises(ValueError, match="num_samples must be > 0"):
        StageMix("x", 0, {"a": 1.0})
    with pytest.raises(ValueError, match="sizes has no entry for sources"):
        BlendSampler(BlendSchedule.constant({"a": 1.0, "b": 1.0}), {"a": 3})
    with pytest.raises(ValueError, match="has weight but no samples"):
        draw(BlendSampler(BlendSchedule.constant({"a": 1.0}), {"a": 0}), 1)
