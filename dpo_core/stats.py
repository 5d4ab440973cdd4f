"""Uncertainty for the frontier: bootstrap intervals over prompts, and paired comparisons of two
methods at matched KL.

Every point of Fig. 2 (left) is a mean over held-out prompts of one sample each, so its
uncertainty is that of a mean over prompts: resample the prompts. Two methods evaluated on the
same prompts with the same sampling seed are compared *paired*: one resample of the prompts
serves both, so what the prompts share cancels.

    bootstrap_indices(n, draws, seed)        (draws, n) prompt indices, resampled with replacement
    mean_interval(values, ...)               mean and 95% percentile interval of a per-prompt mean
    interpolate_at(kl, reward, at)           a trajectory's reward at given KLs (linear, KL-sorted)
    matched_difference(a, b, ...)            mean reward gap of trajectory a over b on their shared KL
                                             range, with its paired bootstrap interval
    difference_at(a, b, kls, ...)            the same gap at each given KL, with its paired interval
    point_intervals(trajectories, ...)       every evaluation's interval, for the figure's error bars
    verdict(gap, low, high, name, paired)    a paired gap in words: no difference, higher or lower
    paired_comparisons(trajectories, ...)    one run against every other: both gaps, with verdicts
    paired_win_difference(verdicts_a, ...)   win rate of a minus b's, judged on the same prompts, paired
    gap_summary(chosen, rejected, ...)       the gold-score gap of preference pairs: median, small-gap shares
    clustered_interval(values, groups, ...)  a mean's interval when values come in dependent groups (pairs of a prompt)
"""

import numpy as np
import pandas as pd


def bootstrap_indices(n, draws=2000, seed=0):
    """(draws, n) indices into n prompts, drawn with replacement: one row per bootstrap replicate."""
    return np.random.default_rng(seed).integers(0, n, size=(draws, n))


def mean_interval(values, draws=2000, seed=0, level=0.95):
    """(mean, low, high): the mean of per-prompt `values` (n,) and its percentile bootstrap interval."""
    values = np.asarray(values, dtype=float)
    means = values[bootstrap_indices(len(values), draws, seed)].mean(-1)  # (draws,)
    tail = (1 - level) / 2 * 100
    return float(values.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def interpolate_at(kl, reward, at):
    """Reward of a trajectory at the KLs `at`, linear between its points taken in KL order
    (a run's KL can dip; sorting makes the curve a function). Outside the trajectory's KL range: nan."""
    kl, reward = np.asarray(kl, dtype=float), np.asarray(reward, dtype=float)
    order = np.argsort(kl, kind="stable")
    out = np.interp(at, kl[order], reward[order])
    return np.where((np.asarray(at) < kl.min()) | (np.asarray(at) > kl.max()), np.nan, out)


def _gap(kl_a, reward_a, kl_b, reward_b, grid_size):
    """Mean of a's minus b's interpolated reward over a grid of their shared KL range (nan if none)."""
    low, high = max(np.min(kl_a), np.min(kl_b)), min(np.max(kl_a), np.max(kl_b))
    if not high > low:
        return np.nan
    grid = np.linspace(low, high, grid_size)
    return float(np.mean(interpolate_at(kl_a, reward_a, grid) - interpolate_at(kl_b, reward_b, grid)))


def _paired(a, b):
    """a's and b's per-prompt KL and reward as float arrays, checked to share their prompts."""
    kl_a, reward_a, kl_b, reward_b = (np.asarray(x, dtype=float) for x in (a["kl"], a["reward"], b["kl"], b["reward"]))
    if kl_a.shape[1] != kl_b.shape[1]:
        raise ValueError(f"a paired comparison needs the same prompts: {kl_a.shape[1]} against {kl_b.shape[1]}")
    return kl_a, reward_a, kl_b, reward_b


def matched_difference(a, b, draws=2000, seed=0, level=0.95, grid_size=50):
    """How much more reward trajectory `a` reaches than `b` at the same KL, paired over prompts.

    Args:
        a, b: dicts with per-prompt arrays "kl" and "reward", each (points, n_prompts): every
            evaluation of a method's runs on the same n prompts (the same order in a and b).
    Returns:
        dict: gap (the mean of a - b over their shared range of mean KL, both interpolated
        linearly in KL), low and high (the percentile interval of the gap when the prompts are
        resampled, the same resample for a and b), kl_low and kl_high (the shared range), and
        p_below_zero (the share of replicates where the gap is <= 0).
    """
    kl_a, reward_a, kl_b, reward_b = _paired(a, b)
    gap = _gap(kl_a.mean(1), reward_a.mean(1), kl_b.mean(1), reward_b.mean(1), grid_size)
    replicates = []
    for idx in bootstrap_indices(kl_a.shape[1], draws, seed):
        replicates.append(_gap(kl_a[:, idx].mean(1), reward_a[:, idx].mean(1), kl_b[:, idx].mean(1),
                               reward_b[:, idx].mean(1), grid_size))
    replicates = np.array(replicates)
    replicates = replicates[~np.isnan(replicates)]
    tail = (1 - level) / 2 * 100
    return {"gap": gap, "low": float(np.percentile(replicates, tail)), "high": float(np.percentile(replicates, 100 - tail)),
            "kl_low": float(max(kl_a.mean(1).min(), kl_b.mean(1).min())),
            "kl_high": float(min(kl_a.mean(1).max(), kl_b.mean(1).max())),
            "p_below_zero": float((replicates <= 0).mean())}


def difference_at(a, b, kls, draws=2000, seed=0, level=0.95):
    """Reward of trajectory `a` minus `b` at each KL in `kls`, both interpolated linearly along their
    mean-KL path (`interpolate_at`), paired over prompts as in `matched_difference`.

    Returns:
        list of dicts, one per KL: kl, gap, low, high (percentile interval over the same prompt
        resamples for a and b); gap, low and high are nan where either trajectory does not reach kl.
    """
    kl_a, reward_a, kl_b, reward_b = _paired(a, b)

    def gaps(idx):  # (len(kls),) for one resample of the prompts
        return (interpolate_at(kl_a[:, idx].mean(1), reward_a[:, idx].mean(1), kls)
                - interpolate_at(kl_b[:, idx].mean(1), reward_b[:, idx].mean(1), kls))

    point = gaps(np.arange(kl_a.shape[1]))
    replicates = np.array([gaps(idx) for idx in bootstrap_indices(kl_a.shape[1], draws, seed)])  # (draws, len(kls))
    tail = (1 - level) / 2 * 100
    rows = []
    for j, kl in enumerate(kls):
        r = replicates[:, j][~np.isnan(replicates[:, j])]
        low, high = (np.percentile(r, tail), np.percentile(r, 100 - tail)) if np.isfinite(point[j]) and len(r) else (np.nan, np.nan)
        rows.append({"kl": float(kl), "gap": float(point[j]), "low": float(low), "high": float(high)})
    return rows


def point_intervals(trajectories, draws=2000, seed=0, level=0.95):
    """Every evaluation's percentile interval over prompts (`mean_interval`): the figure's error bars.

    Args:
        trajectories: {run: trajectory}, each with "reward" (points, n_prompts) and its points' key,
            "setting" (Best-of-N: one point per N) or else "step".
    Returns:
        DataFrame with run, point (the key's value), reward_low and reward_high: one row per point.
    """
    rows = []
    for run, t in trajectories.items():
        for key, rewards in zip(t["setting" if "setting" in t else "step"], t["reward"]):
            _, low, high = mean_interval(rewards, draws, seed, level)
            rows.append({"run": run, "point": key, "reward_low": low, "reward_high": high})
    return pd.DataFrame(rows)


def verdict(gap, low, high, name, paired=True):
    """A paired gap of run `name` over another, in words: "not paired: different prompts" (the runs
    were evaluated on different prompts), "no overlap in KL" (no gap to measure), "no difference" (the
    interval holds 0), else "`name` higher" or "`name` lower"."""
    if not paired:
        return "not paired: different prompts"
    if pd.isna(gap):
        return "no overlap in KL"
    if low <= 0 <= high:
        return "no difference"
    return f"{name} higher" if low > 0 else f"{name} lower"


def paired_comparisons(trajectories, reference, methods, kls, draws=2000, seed=0):
    """Run `reference` against every other run, paired over prompts: its reward gap at matched KL
    averaged over their shared KL range (`matched_difference`), and the gap at each KL of `kls`
    that both reach (`difference_at`), every row with its `verdict`.

    Args:
        trajectories: {run: {"kl", "reward"}}, each (points, n_prompts), as `matched_difference` takes them.
        methods: {run: method}, for the tables' method column.
    Returns:
        (over_range, at_kl): over_range has one row per other run (gap nan where the two runs do not
        share their prompts); at_kl one row per (run, KL) with a gap, columns run, method, kl, gap, low, high.
    """
    ref = trajectories[reference]
    rows = []
    for run, t in trajectories.items():
        if run == reference:
            continue
        same_prompts = t["kl"].shape[1] == ref["kl"].shape[1]
        result = matched_difference(ref, t, draws, seed) if same_prompts else {"gap": float("nan")}
        rows.append({"run": run, "method": methods[run], **result, "paired": same_prompts})
    at_kl = pd.DataFrame([{"run": c["run"], "method": c["method"], **row} for c in rows if not pd.isna(c["gap"])
                          for row in difference_at(ref, trajectories[c["run"]], kls, draws, seed)
                          if not pd.isna(row["gap"])], columns=["run", "method", "kl", "gap", "low", "high"])
    over_range = pd.DataFrame(rows)
    for table in (over_range, at_kl):  # no low or high column when no pair shares its prompts
        table["verdict"] = [verdict(r.gap, getattr(r, "low", None), getattr(r, "high", None), reference,
                                    getattr(r, "paired", True)) for r in table.itertuples()]
    return over_range.drop(columns="paired"), at_kl


WIN_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}  # a tie counts half, as in `judges.win_rate`


def paired_win_difference(verdicts_a, verdicts_b, draws=2000, seed=0, level=0.95):
    """(gap, low, high): policy a's win rate minus policy b's, both judged prompt by prompt against the
    same references, with the paired bootstrap interval over prompts (one resample serves both, so
    what a prompt's reference makes easy or hard cancels). A prompt with an "invalid" verdict on
    either side is left out of both."""
    if len(verdicts_a) != len(verdicts_b):
        raise ValueError(f"a paired comparison needs the same prompts: {len(verdicts_a)} against {len(verdicts_b)}")
    both = [(WIN_SCORE[a], WIN_SCORE[b]) for a, b in zip(verdicts_a, verdicts_b) if a in WIN_SCORE and b in WIN_SCORE]
    if not both:
        return float("nan"), float("nan"), float("nan")
    return mean_interval([a - b for a, b in both], draws, seed, level)


def gap_summary(chosen_rewards, rejected_rewards, thresholds=(0.05, 0.1)):
    """How clear the preference pairs are: the gold-score gap chosen minus rejected (>= 0 by
    construction), its median and quartiles, and the share of pairs with a gap under each
    threshold (a label that rests on a tiny gap encodes the judge's noise more than sentiment).
    Returns a dict: gap_median, gap_q25, gap_q75, gap_under_<t> for each t."""
    gap = np.asarray(chosen_rewards, dtype=float) - np.asarray(rejected_rewards, dtype=float)
    if gap.size == 0:
        raise ValueError("no pairs: a gap summary needs at least one pair")
    out = {"gap_median": float(np.median(gap)), "gap_q25": float(np.quantile(gap, 0.25)),
           "gap_q75": float(np.quantile(gap, 0.75))}
    out.update({f"gap_under_{t:g}": float((gap < t).mean()) for t in thresholds})
    return out


def clustered_interval(values, groups, draws=2000, seed=0, level=0.95):
    """(mean, low, high): the mean of `values` and its percentile bootstrap interval when they come
    in dependent groups (the 6 pairs of one prompt are one ranking of 4 samples): whole groups are
    resampled, so the interval counts prompts, not pairs. With one value per group it is
    `mean_interval`'s resampling."""
    values = np.asarray(values, dtype=float)
    labels, index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    sums, counts = np.bincount(index, values, len(labels)), np.bincount(index, minlength=len(labels))
    picks = bootstrap_indices(len(labels), draws, seed)  # (draws, groups)
    means = sums[picks].sum(-1) / counts[picks].sum(-1)
    tail = (1 - level) / 2 * 100
    return float(values.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))
