"""How far to trust the local judge (notebook 14): its verdicts against a known truth, Table 2's
analogue, and the IMDb win rates judged by it beside the gold classifier.

The truth is the gold sentiment classifier: on notebook 03's pairs, the completion it scored higher
is the candidate, so the local judge agrees when its verdict is "win". Each judge's verdict on a
pair comes from both orders (`judges.order_swap_verdict`): "win", "loss", "tie" (the orders
disagree) or "invalid" (no letter read).

    agreement_rows(...)          per prompt: consistency, agreement, each with its 95% interval
    margin_agreement_rows(...)   the same pairs read from the order-averaged log-prob margin (position bias cancels)
    agreement_by_margin_rows(...) the same per bin of the gold margin: does a clearer truth help?
    prompt_agreement_rows(...)   two prompts' verdicts on the same pairs
    two_judge_rows(...)          win rates per policy, temperature and judge (gold, local)
    two_judge_gap_rows(...)      a reference policy minus each other, paired, per judge
    item_agreement_rows(...)     the local judge's verdict against the gold one, item by item
    judge_readme(...)            figures/JUDGE.md
"""

import itertools

import numpy as np
import pandas as pd

from dpo_core import results, stats

AGREEMENT_COLUMNS = ["prompt", "n", "n_invalid", "consistency", "consistency_low", "consistency_high",
                     "agreement", "agreement_low", "agreement_high", "agreement_consistent",
                     "agreement_consistent_low", "agreement_consistent_high", "seconds_per_pair"]
WIN_RATE_COLUMNS = ["run", "temperature", "judge", "n", "win_rate", "low", "high", "n_tie", "n_invalid"]
GAP_COLUMNS = ["judge", "run", "temperature", "gap", "low", "high", "verdict"]


def _rate(values, draws, groups=None):
    """(mean, low, high) of 0/1 or 0/0.5/1 values with their bootstrap interval, resampling whole
    `groups` when given (pairs that share a prompt); NaNs when empty."""
    if not len(values):
        return np.nan, np.nan, np.nan
    return stats.clustered_interval(values, groups, draws) if groups is not None else stats.mean_interval(values, draws)


def _scores(verdicts):
    """Valid verdicts as win 1, tie 0.5, loss 0 (`stats.WIN_SCORE`)."""
    return [stats.WIN_SCORE[v] for v in verdicts if v in stats.WIN_SCORE]


def agreement_rows(verdicts_by_prompt, seconds_by_prompt=None, draws=2000, groups=None):
    """One row per judge prompt ({prompt: verdicts on pairs whose candidate is the gold-preferred
    completion}): n valid pairs and n invalid; consistency, the share of valid pairs whose two orders
    agree; agreement with the gold classifier counting an inconsistent pair as half (the gold-preferred
    completion's win rate); and agreement among the consistent pairs. 95% bootstrap intervals that
    resample `groups` (each pair's prompt: notebook 03's pairs of one prompt share its samples), or
    pairs when None."""
    rows = []
    for prompt, verdicts in verdicts_by_prompt.items():
        labels = groups if groups is not None else range(len(verdicts))
        valid = [(v, g) for v, g in zip(verdicts, labels) if v in stats.WIN_SCORE]
        consistent = [(v, g) for v, g in valid if v != "tie"]

        def rate(values, kept):
            return _rate(values, draws, [g for _, g in kept] if groups is not None else None)

        rows.append({"prompt": prompt, "n": len(valid), "n_invalid": len(verdicts) - len(valid),
                     **dict(zip(["consistency", "consistency_low", "consistency_high"],
                                rate([float(v != "tie") for v, _ in valid], valid))),
                     **dict(zip(["agreement", "agreement_low", "agreement_high"],
                                rate(_scores([v for v, _ in valid]), valid))),
                     **dict(zip(["agreement_consistent", "agreement_consistent_low", "agreement_consistent_high"],
                                rate(_scores([v for v, _ in consistent]), consistent))),
                     "seconds_per_pair": (seconds_by_prompt or {}).get(prompt, np.nan)})
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def margin_agreement_rows(margins_by_prompt, draws=2000, groups=None):
    """A second reading of the same verdicts, position bias cancelled: per prompt, the share of pairs
    whose order-averaged letter log-prob margin (`LocalJudge.judge_details`' logprob_margin: the
    candidate's letter minus the reference's, averaged over both orders) favours the gold-preferred
    completion, a margin of exactly 0 counting half; pairs without a margin (a letter not read) left
    out. 95% interval resampling `groups` (prompts) or pairs."""
    rows = []
    for prompt, margins in margins_by_prompt.items():
        labels = groups if groups is not None else range(len(margins))
        kept = [(m, g) for m, g in zip(margins, labels) if m is not None and np.isfinite(m)]
        values = [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m, _ in kept]
        share, low, high = _rate(values, draws, [g for _, g in kept] if groups is not None else None)
        rows.append({"prompt": prompt, "n": len(kept), "margin_agreement": share, "low": low, "high": high})
    return pd.DataFrame(rows, columns=["prompt", "n", "margin_agreement", "low", "high"])


def agreement_by_margin_rows(verdicts_by_prompt, margins, n_bins=4, draws=2000, groups=None):
    """`agreement_rows` per quantile bin of the gold margin (chosen minus rejected score, one per pair,
    in the order of the verdicts): does the judge agree more where the truth is clearer? Bins left
    empty (fewer pairs than bins) are skipped."""
    bins = pd.qcut(pd.Series(margins).rank(method="first"), n_bins, labels=False).to_numpy()
    columns = ["prompt", "margin_low", "margin_high", "n", "consistency", "agreement", "agreement_low", "agreement_high"]
    rows = []
    for b in range(n_bins):
        inside = bins == b
        if not inside.any():
            continue
        span = np.asarray(margins)[inside]
        table = agreement_rows({p: [v for v, keep in zip(vs, inside) if keep] for p, vs in verdicts_by_prompt.items()},
                               draws=draws, groups=None if groups is None else list(np.asarray(groups)[inside]))
        rows.append(table.assign(margin_low=span.min(), margin_high=span.max()))
    return pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)


def prompt_agreement_rows(verdicts_by_prompt, draws=2000):
    """For each two prompts, over the pairs where both gave a valid verdict: the share with the same
    verdict (win, loss or tie) with its 95% interval, and the share where both are consistent and agree."""
    rows = []
    for (a, va), (b, vb) in itertools.combinations(verdicts_by_prompt.items(), 2):
        both = [(x, y) for x, y in zip(va, vb) if x in stats.WIN_SCORE and y in stats.WIN_SCORE]
        same, low, high = _rate([float(x == y) for x, y in both], draws)
        rows.append({"a": a, "b": b, "n": len(both), "same_verdict": same, "low": low, "high": high,
                     "both_consistent_and_same": float(np.mean([x == y != "tie" for x, y in both])) if both else np.nan})
    return pd.DataFrame(rows, columns=["a", "b", "n", "same_verdict", "low", "high", "both_consistent_and_same"])


def two_judge_rows(items_by_run, local_by_run, draws=2000):
    """Win rates of each policy (notebook 09's run) at each temperature by the gold classifier (its
    recorded verdicts, `imdb.win_rate_items`) and by the local judge ({run: verdicts in the items'
    order}), on the same items, ties counting half, with 95% bootstrap intervals over prompts."""
    rows = []
    for run, items in items_by_run.items():
        frame = items.assign(local_verdict=local_by_run[run])
        for temperature, group in frame.groupby("temperature"):
            for judge, column in (("gold", "gold_verdict"), ("local", "local_verdict")):
                verdicts = group[column].tolist()
                rate, low, high = _rate(_scores(verdicts), draws)
                rows.append({"run": run, "temperature": float(temperature), "judge": judge, "n": len(_scores(verdicts)),
                             "win_rate": rate, "low": low, "high": high, "n_tie": verdicts.count("tie"),
                             "n_invalid": verdicts.count("invalid")})
    return pd.DataFrame(rows, columns=WIN_RATE_COLUMNS)


def two_judge_gap_rows(items_by_run, local_by_run, reference_run, draws=2000):
    """The reference policy's win rate minus every other's, paired prompt by prompt
    (`stats.paired_win_difference`), at each temperature, by each judge: where do the judges agree?"""
    rows = []
    reference = items_by_run[reference_run].assign(local_verdict=local_by_run[reference_run])
    for run, items in items_by_run.items():
        if run == reference_run:
            continue
        other = items.assign(local_verdict=local_by_run[run])
        for temperature, ours in reference.groupby("temperature"):
            theirs = other[other.temperature == temperature]
            if ours["item"].tolist() != theirs["item"].tolist():
                raise ValueError(f"{reference_run} and {run} were not judged on the same prompts at T = {temperature:g}")
            for judge, column in (("gold", "gold_verdict"), ("local", "local_verdict")):
                gap, low, high = stats.paired_win_difference(ours[column].tolist(), theirs[column].tolist(), draws)
                verdict = stats.verdict(gap, low, high, reference_run) if not np.isnan(gap) else "no valid verdicts"
                rows.append({"judge": judge, "run": run, "temperature": float(temperature), "gap": gap, "low": low,
                             "high": high, "verdict": verdict})
    return pd.DataFrame(rows, columns=GAP_COLUMNS)


def item_agreement_rows(items_by_run, local_by_run):
    """Per policy and temperature, on the same items: how often the local judge's verdict equals the
    gold classifier's, and how often it is a tie (its two orders disagreed) or invalid."""
    rows = []
    for run, items in items_by_run.items():
        frame = items.assign(local_verdict=local_by_run[run])
        for temperature, group in frame.groupby("temperature"):
            rows.append({"run": run, "temperature": float(temperature), "n": len(group),
                         "same": float((group.local_verdict == group.gold_verdict).mean()),
                         "local_tie": float((group.local_verdict == "tie").mean()),
                         "local_invalid": float((group.local_verdict == "invalid").mean())})
    return pd.DataFrame(rows, columns=["run", "temperature", "n", "same", "local_tie", "local_invalid"])


def _markdown(frame):
    return (results.markdown_table(frame.to_dict("records"), list(frame.columns)) if len(frame) else "(none)") + "\n"


def judge_readme(judge_model, n_pairs, agreement, margin_agreement, by_margin, prompts, win_rates, gaps, item_agreement,
                 stages, win_rate_prompt, n_prompts):
    """The text of figures/JUDGE.md: every table of notebook 14, with what produced it."""
    lines = [
        "# figures/JUDGE.md: how far to trust the local judge",
        "",
        "Regenerated by `notebooks/14_judge_agreement.ipynb` (`make judge`); do not edit by hand.",
        "",
        f"Judge: `{judge_model}` through llama.cpp (xllamacpp), temperature 0, every comparison judged in both "
        "orders (an inconsistent pair counts as a tie), the verdict read from the two letters' log-probs.",
        "",
        f"## Agreement with the gold classifier (Table 2's analogue), {n_pairs} of notebook 03's pairs",
        "",
        "The candidate is the completion the gold classifier scored higher; agreement counts an inconsistent "
        "pair as half; 95% bootstrap intervals over prompts (a prompt's pairs share its samples).",
        "",
        _markdown(agreement),
        "The same pairs read from the order-averaged log-prob margin (the candidate's letter minus the reference's, "
        "averaged over both orders, so a preference for a position cancels): the share favouring the "
        "gold-preferred completion. A second reading, not the App. C.2 protocol:",
        "",
        _markdown(margin_agreement),
        "By gold margin (quantile bins of chosen minus rejected gold score):",
        "",
        _markdown(by_margin),
        "Between prompts, on the same pairs:",
        "",
        _markdown(prompts),
        f"## IMDb win rates by both judges (prompt `{win_rate_prompt}`, the first {n_prompts} test prompts)",
        "",
        "![two judges](winrate_two_judges.png)",
        "",
        _markdown(win_rates),
        "Paired gaps, the reference policy minus each other, per judge:",
        "",
        _markdown(gaps),
        "Item by item, the local judge's verdict against the gold classifier's (ties: the local judge's orders disagreed):",
        "",
        _markdown(item_agreement),
        "Wall time of each stage in this execution, and the requests that reached the model (0: every reply "
        "came from the verdict cache, so the time is not the judge's cost):",
        "",
        _markdown(pd.DataFrame(stages, columns=["stage", "minutes", "uncached_requests"])),
    ]
    return "\n".join(lines)
