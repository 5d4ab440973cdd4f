"""The local judge's agreement tables (`agreement`) and their inputs (`imdb.judged_pairs`,
`imdb.win_rate_items`), on hand-made verdicts and files with answers worked out by hand."""

import json
from types import SimpleNamespace

import datasets
import pandas as pd
import pytest

from dpo_core import agreement, imdb
from dpo_core.tiny import byte_tokenizer


def test_agreement_counts_ties_half_consistency_over_valid_and_leaves_invalid_out():
    table = agreement.agreement_rows({"p": ["win", "win", "loss", "tie", "invalid"]}, {"p": 2.5}, draws=200)
    row = table.iloc[0]
    assert (row.n, row.n_invalid) == (4, 1)
    assert row.consistency == pytest.approx(3 / 4)
    assert row.agreement == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert row.agreement_consistent == pytest.approx(2 / 3)
    assert row.agreement_low <= row.agreement <= row.agreement_high and row.seconds_per_pair == 2.5


def test_agreement_by_margin_bins_the_pairs_by_their_gold_margin():
    verdicts = {"p": ["loss", "tie", "win", "win"]}  # the two clearest pairs agree, the two closest do not
    table = agreement.agreement_by_margin_rows(verdicts, [0.01, 0.02, 0.5, 0.9], n_bins=2, draws=200)
    assert table.agreement.tolist() == pytest.approx([0.25, 1.0])
    assert table.margin_low.tolist() == [0.01, 0.5] and table.margin_high.tolist() == [0.02, 0.9]


def test_two_prompts_are_compared_on_the_pairs_both_judged():
    table = agreement.prompt_agreement_rows({"a": ["win", "tie", "loss", "invalid"], "b": ["win", "win", "loss", "win"]},
                                            draws=200)
    row = table.iloc[0]
    assert row.n == 3 and row.same_verdict == pytest.approx(2 / 3) and row.both_consistent_and_same == pytest.approx(2 / 3)


def items(gold):
    return pd.DataFrame({"temperature": [0.0] * len(gold), "item": range(len(gold)), "prefix": "p",
                         "candidate": "c", "reference": "r", "gold_verdict": gold})


def test_two_judges_win_rates_and_paired_gaps_on_the_same_items():
    by_run = {"dpo": items(["win", "win", "win", "loss"]), "sft": items(["loss", "loss", "win", "loss"])}
    local = {"dpo": ["win", "tie", "win", "invalid"], "sft": ["loss", "loss", "loss", "win"]}
    rates = agreement.two_judge_rows(by_run, local, draws=200).set_index(["run", "judge"])
    assert rates.loc[("dpo", "gold")].win_rate == pytest.approx(0.75)
    assert rates.loc[("dpo", "local")].win_rate == pytest.approx(2.5 / 3)  # the invalid item left out
    assert (rates.loc[("dpo", "local")].n_tie, rates.loc[("dpo", "local")].n_invalid) == (1, 1)
    gaps = agreement.two_judge_gap_rows(by_run, local, "dpo", draws=200).set_index("judge")
    assert gaps.loc["gold"].gap == pytest.approx(0.75 - 0.25)
    assert gaps.loc["local"].gap == pytest.approx((1 + 0.5 + 1) / 3 - 0)  # the item invalid on one side dropped
    same = agreement.item_agreement_rows(by_run, local).set_index("run")
    assert same.loc["dpo"].same == pytest.approx(2 / 4) and same.loc["sft"].same == pytest.approx(2 / 4)


def test_judged_pairs_decode_the_pairs_and_give_their_gold_margin():
    tok = byte_tokenizer()
    ids = lambda text: tok(text)["input_ids"]  # noqa: E731
    pairs = datasets.Dataset.from_dict({"prompt_ids": [ids("the film"), ids("a movie")],
                                        "chosen_ids": [ids(" was great"), ids(" shone")],
                                        "rejected_ids": [ids(" was dull"), ids(" sagged")],
                                        "chosen_reward": [0.9, 0.6], "rejected_reward": [0.2, 0.5]})
    frame = imdb.judged_pairs(SimpleNamespace(pairs=pairs), tok, n=2).sort_values("pair")
    assert frame.prefix.tolist() == ["the film", "a movie"] and frame.chosen.tolist() == [" was great", " shone"]
    assert frame.margin.tolist() == pytest.approx([0.7, 0.1])


def test_win_rate_items_split_the_judged_texts_at_their_prompt(tmp_path):
    rows = [{"temperature": t, "context": "", "candidate": f"{p} cand {t}", "reference": f"{p} ref", "verdict": v}
            for t in (0.0, 1.0) for p, v in [("good film", "win"), ("bad film", "loss"), ("odd film", "tie")]]
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    frame = imdb.win_rate_items(tmp_path, ["good film", "bad film", "odd film"], n_prompts=2)
    assert len(frame) == 4 and frame["item"].tolist() == [0, 1, 0, 1]
    assert frame.candidate.tolist()[:2] == [" cand 0.0", " cand 0.0"] and frame.gold_verdict.tolist()[:2] == ["win", "loss"]
    with pytest.raises(ValueError, match="do not begin with its prompt"):
        imdb.win_rate_items(tmp_path, ["other", "bad film"], n_prompts=2)


def test_fewer_pairs_than_margin_bins_skips_the_empty_bins():
    table = agreement.agreement_by_margin_rows({"p": ["win", "loss", "win"]}, [0.1, 0.2, 0.3], n_bins=4, draws=200)
    assert table.n.sum() == 3 and len(table) == 3


def test_intervals_resample_whole_prompts_when_pairs_share_one():
    verdicts = {"p": ["win"] * 6 + ["loss"] * 6}  # two prompts, six pairs each: one agrees on all, one on none
    by_pair = agreement.agreement_rows(verdicts, draws=500).iloc[0]
    by_prompt = agreement.agreement_rows(verdicts, draws=500, groups=["a"] * 6 + ["b"] * 6).iloc[0]
    assert by_pair.agreement == by_prompt.agreement == 0.5
    assert (by_prompt.agreement_low, by_prompt.agreement_high) == (0.0, 1.0)  # two prompts: either may be drawn twice
    assert by_pair.agreement_high - by_pair.agreement_low < 0.7  # twelve independent pairs would be far tighter


def test_the_order_averaged_margin_is_read_as_a_second_verdict():
    table = agreement.margin_agreement_rows({"p": [1.0, -0.5, 0.0, None, 2.0]}, draws=200)
    row = table.iloc[0]
    assert row.n == 4 and row.margin_agreement == pytest.approx((1 + 0 + 0.5 + 1) / 4)  # a missing margin left out
    assert row.low <= row.margin_agreement <= row.high
