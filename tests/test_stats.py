"""The frontier's uncertainty: bootstrap intervals and paired matched-KL gaps on cases with
known answers."""

import math

import numpy as np
import pytest

from dpo_core.stats import (
    difference_at,
    interpolate_at,
    matched_difference,
    mean_interval,
    paired_comparisons,
    paired_win_difference,
    point_intervals,
    verdict,
)


def test_bootstrap_interval_of_a_mean_matches_the_normal_theory():
    rng = np.random.default_rng(0)
    values = rng.normal(0.6, 0.2, size=400)
    mean, low, high = mean_interval(values, draws=4000)
    half_width = 1.96 * 0.2 / math.sqrt(400)  # 0.0196
    assert low < mean < high and mean == pytest.approx(values.mean())
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    assert mean_interval(np.full(50, 0.3)) == (pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3))


def test_interpolation_hand_computed_and_nan_outside():
    out = interpolate_at([0.0, 3.0, 1.0], [0.5, 0.6, 0.7], [0.5, 2.0, 3.0, 4.0, -1.0])  # unsorted on purpose
    np.testing.assert_allclose(out[:3], [0.6, 0.65, 0.6])
    assert np.isnan(out[3]) and np.isnan(out[4])


def trajectory(base, shift, kls, noise=0.0, seed=0):
    """(points, prompts) arrays: per-prompt rewards base + shift (+ independent noise), KLs given per point."""
    rng = np.random.default_rng(seed)
    reward = base[None, :] + shift + noise * rng.normal(size=(len(kls), len(base)))
    kl = np.repeat(np.asarray(kls, dtype=float)[:, None], len(base), axis=1)
    return {"kl": kl, "reward": reward}


def test_paired_gap_of_a_shifted_copy_is_the_shift_with_a_tight_interval():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.9, size=256)  # what the prompts share: large, and cancels in the pairing
    a = trajectory(base, 0.05, [0, 1, 2, 4])
    b = trajectory(base, 0.0, [0, 1.5, 3, 5])
    result = matched_difference(a, b, draws=500)
    assert result["gap"] == pytest.approx(0.05) and result["low"] == pytest.approx(0.05)
    assert result["high"] == pytest.approx(0.05) and (result["kl_low"], result["kl_high"]) == (0.0, 4.0)
    assert result["p_below_zero"] == 0.0


def test_paired_gap_with_noise_covers_the_truth_and_no_difference_is_no_difference():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.2, 0.9, size=256)
    truth, covered = 0.03, 0
    for seed in range(20):
        a = trajectory(base, truth, [0, 1, 2], noise=0.1, seed=seed)
        b = trajectory(base, 0.0, [0, 1, 2], noise=0.1, seed=100 + seed)
        result = matched_difference(a, b, draws=300, seed=seed)
        covered += result["low"] <= truth <= result["high"]
    assert covered >= 16  # a 95% interval: about 19 of 20
    same = matched_difference(trajectory(base, 0, [0, 1], 0.1, 5), trajectory(base, 0, [0, 1], 0.1, 6), draws=300)
    assert same["low"] < 0 < same["high"]
    with pytest.raises(ValueError, match="same prompts"):
        matched_difference(trajectory(base, 0, [0, 1]), trajectory(base[:10], 0, [0, 1]))


def test_difference_at_given_kls_hand_computed():
    """a: reward 0.5 -> 0.7 over KL 0 -> 2; b: 0.5 -> 0.6 over KL 0 -> 4 (same for every prompt).
    At KL 1: a 0.6, b 0.525, gap 0.075; at KL 2: 0.7 - 0.55 = 0.15; at KL 3 a has no point: nan."""
    base = np.zeros(64)
    a = trajectory(base, 0.0, [0, 2])
    a["reward"] = np.repeat(np.array([[0.5], [0.7]]), 64, axis=1)
    b = trajectory(base, 0.0, [0, 4])
    b["reward"] = np.repeat(np.array([[0.5], [0.6]]), 64, axis=1)
    rows = difference_at(a, b, [1.0, 2.0, 3.0], draws=200)
    assert [r["kl"] for r in rows] == [1.0, 2.0, 3.0]
    for row, gap in zip(rows[:2], [0.075, 0.15]):
        assert row["gap"] == pytest.approx(gap) and row["low"] == pytest.approx(gap) and row["high"] == pytest.approx(gap)
    assert all(math.isnan(rows[2][k]) for k in ("gap", "low", "high"))


def test_difference_at_pairs_the_prompts_and_covers_the_truth():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.2, 0.9, size=256)  # shared by a and b: cancels when paired
    a = trajectory(base, 0.04, [0, 1, 2])
    b = trajectory(base, 0.0, [0, 1, 2])
    row = difference_at(a, b, [1.5], draws=300)[0]
    assert row["gap"] == pytest.approx(0.04) and row["high"] - row["low"] < 1e-9  # unpaired it would be ~0.05 wide
    covered = 0
    for seed in range(20):
        noisy_a = trajectory(base, 0.04, [0, 1, 2], noise=0.1, seed=seed)
        noisy_b = trajectory(base, 0.0, [0, 1, 2], noise=0.1, seed=50 + seed)
        row = difference_at(noisy_a, noisy_b, [1.5], draws=300, seed=seed)[0]
        covered += row["low"] <= 0.04 <= row["high"]
    assert covered >= 16
    with pytest.raises(ValueError, match="same prompts"):
        difference_at(trajectory(base, 0, [0, 1]), trajectory(base[:10], 0, [0, 1]), [0.5])


def test_point_intervals_are_mean_interval_of_each_point():
    rng = np.random.default_rng(4)
    runs = {"dpo": {"step": np.array([0, 10]), "kl": np.zeros((2, 30)), "reward": rng.uniform(size=(2, 30))},
            "bon": {"setting": np.array([1, 4]), "kl": np.zeros((2, 30)), "reward": rng.uniform(size=(2, 30))}}
    table = point_intervals(runs, draws=300)
    assert list(table.columns) == ["run", "point", "reward_low", "reward_high"]
    assert list(zip(table.run, table.point)) == [("dpo", 0), ("dpo", 10), ("bon", 1), ("bon", 4)]  # bon by setting
    for row, (run, i) in zip(table.itertuples(), [("dpo", 0), ("dpo", 1), ("bon", 0), ("bon", 1)]):
        _, low, high = mean_interval(runs[run]["reward"][i], 300)
        assert (row.reward_low, row.reward_high) == (low, high)


def test_verdict_rules_on_hand_made_gaps():
    assert verdict(float("nan"), None, None, "ref") == "no overlap in KL"
    assert verdict(float("nan"), None, None, "ref", paired=False) == "not paired: different prompts"
    assert verdict(0.1, -0.01, 0.2, "ref") == "no difference"
    assert verdict(0.0, 0.0, 0.0, "ref") == "no difference"  # an interval that touches 0 holds it
    assert verdict(0.1, 0.05, 0.2, "ref") == "ref higher"
    assert verdict(-0.1, -0.2, -0.05, "ref") == "ref lower"


def test_paired_comparisons_are_matched_difference_and_difference_at_with_verdicts():
    rng = np.random.default_rng(5)
    base = rng.uniform(0.2, 0.9, size=64)
    runs = {"higher": trajectory(base, 0.0, [0, 1, 2, 4]), "ref": trajectory(base, 0.05, [0, 1, 2, 4]),
            "lower": trajectory(base, 0.0, [0, 1.5, 3, 5]), "same": trajectory(base, 0.05, [0, 1, 2]),
            "other_prompts": trajectory(base[:10], 0.0, [0, 1])}
    runs["higher"]["reward"] += 0.1
    methods = {"higher": "ipo", "lower": "ppo", "same": "dpo", "other_prompts": "best_of_n"}
    over_range, at_kl = paired_comparisons(runs, "ref", methods, [1.0, 3.0], draws=200)
    assert list(over_range.run) == ["higher", "lower", "same", "other_prompts"]
    assert list(over_range.method) == ["ipo", "ppo", "dpo", "best_of_n"]
    assert list(over_range.verdict) == ["ref lower", "ref higher", "no difference", "not paired: different prompts"]
    expected = matched_difference(runs["ref"], runs["lower"], draws=200)
    assert over_range.iloc[1][list(expected)].to_dict() == expected
    assert math.isnan(over_range.gap.iloc[3])  # other prompts: not compared at all
    assert list(at_kl.columns) == ["run", "method", "kl", "gap", "low", "high", "verdict"]
    reached = [("higher", 1.0), ("higher", 3.0), ("lower", 1.0), ("lower", 3.0), ("same", 1.0)]  # "same" stops at 2
    assert list(zip(at_kl.run, at_kl.kl)) == reached
    row = difference_at(runs["ref"], runs["lower"], [3.0], draws=200)[0]
    assert at_kl.iloc[3][["kl", "gap", "low", "high"]].to_dict() == row
    assert list(at_kl.verdict) == ["ref lower", "ref lower", "ref higher", "ref higher", "no difference"]


def test_paired_comparisons_with_no_comparable_run():
    base = np.linspace(0.2, 0.8, 16)
    runs = {"ref": trajectory(base, 0.0, [0, 1]), "other_prompts": trajectory(base[:4], 0.0, [0, 1])}
    over_range, at_kl = paired_comparisons(runs, "ref", {"other_prompts": "ppo"}, [0.5], draws=50)
    assert list(over_range.verdict) == ["not paired: different prompts"] and len(at_kl) == 0 and "verdict" in at_kl
    assert "paired" not in over_range


def test_paired_win_difference_hand_computed_ties_half_invalid_dropped():
    # per prompt: 1 - 0, 1 - 1, 0 - 0, 0.5 - 1 -> mean 0.125; the invalid prompt leaves both sides
    gap, low, high = paired_win_difference(["win", "win", "loss", "tie", "invalid"],
                                           ["loss", "win", "loss", "win", "win"])
    assert gap == pytest.approx(0.125)
    assert low <= gap <= high
    assert paired_win_difference(["win"] * 8, ["win"] * 8) == (0.0, 0.0, 0.0)  # the same verdicts: no spread at all
    with pytest.raises(ValueError, match="same prompts"):
        paired_win_difference(["win", "loss"], ["win"])


def test_paired_win_difference_is_tighter_than_the_unpaired_errors_when_prompts_drive_the_verdicts():
    # both policies win on the easy half of the prompts and lose on the hard half; a wins 10 more of 200
    rng = np.random.default_rng(0)
    easy = rng.random(200) < 0.5
    b = np.where(easy, "win", "loss")
    a = b.copy()
    a[np.flatnonzero(~easy)[:10]] = "win"
    gap, low, high = paired_win_difference(list(a), list(b))
    assert gap == pytest.approx(10 / 200)
    assert low > 0  # paired: a detectable gain
    unpaired_se = math.sqrt(2 * 0.5 * 0.5 / 200)  # about 0.05: unpaired, 0.05 would sit inside two errors
    assert high - low < 2 * 1.96 * unpaired_se / 2


def test_gap_summary_hand_computed():
    """Dyadic scores, so every gap is exact: gaps 0.75, 0.125, 0.25, 0.5, 0.25."""
    from dpo_core.stats import gap_summary
    chosen = [1.0, 0.5, 0.75, 0.75, 0.5]
    rejected = [0.25, 0.375, 0.5, 0.25, 0.25]
    out = gap_summary(chosen, rejected, thresholds=(0.25, 0.5))
    assert out["gap_median"] == 0.25
    assert out["gap_under_0.25"] == 1 / 5  # 0.125 only: strictly under
    assert out["gap_under_0.5"] == 3 / 5  # 0.125 and the two 0.25s
    assert out["gap_q25"] == 0.25 and out["gap_q75"] == 0.5
    default = gap_summary([0.9, 0.5, 0.3], [0.1, 0.47, 0.22])  # gaps 0.8, 0.03, 0.08
    assert default["gap_under_0.05"] == pytest.approx(1 / 3) and default["gap_under_0.1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no pairs"):
        gap_summary([], [])


def test_clustered_interval_resamples_whole_groups():
    """Two prompts, one all right (6 pairs) and one all wrong (6 pairs): every resample of the 2
    prompts gives 0, 0.5 or 1, so the 95% interval spans [0, 1]; treated as 12 independent pairs
    it would be far narrower. One value per group: the same interval as mean_interval."""
    from dpo_core.stats import clustered_interval
    values, groups = [1.0] * 6 + [0.0] * 6, ["a"] * 6 + ["b"] * 6
    mean, low, high = clustered_interval(values, groups, draws=2000)
    assert mean == 0.5 and low == 0.0 and high == 1.0
    _, naive_low, naive_high = mean_interval(values, draws=2000)
    assert naive_low > 0.1 and naive_high < 0.9
    rng = np.random.default_rng(1)
    singles = rng.uniform(size=30)
    assert clustered_interval(singles, [f"g{i:02d}" for i in range(30)], draws=500) == \
        pytest.approx(mean_interval(singles, draws=500))
