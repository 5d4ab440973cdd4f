"""SentimentReward on the tiny classifier, the tie-rate and AUC helpers, and a small real
fine-tune of the gold reward (the full one is `make assets`)."""

import json

import pytest
import torch
from learned import gold_reward_finetune
from sklearn.metrics import roc_auc_score

from dpo_core.gold import roc_auc
from dpo_core.reward import SentimentReward, positive_label_index, tie_rate, tiny_classifier

TEXTS = ["a gem .", "the worst film i have seen this year , dull and lifeless .", "ok", "x" * 600, "i loved it"]


def test_positive_index_comes_from_id2label():
    assert positive_label_index({0: "NEGATIVE", 1: "POSITIVE"}) == 1
    assert positive_label_index({"0": "positive", "1": "negative"}) == 0
    with pytest.raises(ValueError, match="positive class"):
        positive_label_index({0: "A", 1: "B"})


def test_probabilities_in_unit_interval_and_batch_equals_one_at_a_time():
    reward = SentimentReward(*tiny_classifier(), batch_size=64)
    batched = reward(TEXTS)
    assert batched.shape == (5,) and ((batched >= 0) & (batched <= 1)).all()
    single = SentimentReward(*tiny_classifier(), batch_size=1)(TEXTS)
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-6)
    assert torch.equal(reward(TEXTS), batched)  # deterministic: eval mode, no dropout


def test_long_text_is_truncated_to_the_classifier_length_and_ids_are_refused():
    reward = SentimentReward(*tiny_classifier())
    assert reward.max_length == 256
    assert torch.isfinite(reward(["word " * 1000])).all()
    with pytest.raises(TypeError, match="decode token ids first"):
        reward([[1, 2, 3]])


def test_tie_rate_hand_computed():
    # row 0: one tied pair of six; row 1: all six pairs tie
    assert tie_rate([[1.0, 1.0, 2.0, 3.0], [0.5, 0.5, 0.5, 0.5]]) == pytest.approx(7 / 12)
    assert tie_rate([[0.1, 0.2], [0.3, 0.4]]) == 0.0


def test_roc_auc_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (300,), generator=g)
    scores = torch.rand(300, generator=g) + 0.3 * labels
    scores[:50] = scores[50:100]  # some ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)


def test_small_real_finetune_of_the_gold_reward(tmp_path):
    """CI's run of the gold-reward preparation, shortened to 40 steps: real MiniLM, real snippets."""
    result = gold_reward_finetune(seed=0, out_dir=tmp_path)
    assert json.loads((tmp_path / "quality.json").read_text())["steps"] == 40
    scores = torch.tensor(result["scores"])  # two clearly positive, then two clearly negative sentences
    assert ((scores >= 0) & (scores <= 1)).all()
    # Thresholds from seeds x CPU kernel sets (tests/MARGINS.md). 40 steps leave the classifier
    # timid (p 0.61-0.68), so the old check that each positive outscores each negative sat
    # 0.003-0.03 from failing; the means differ by 0.03-0.04 everywhere, the held-out AUC is 0.74-0.80.
    assert result["roc_auc"] > 0.6  # well above chance (0.5), on 400 held-out sentences
    assert scores[:2].mean() > scores[2:].mean() + 0.01, f"clear sentiment misordered: {scores.tolist()}"


def test_the_judge_scores_in_fp32_inside_a_bf16_run():
    reward = SentimentReward(*tiny_classifier())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = reward(TEXTS)
    assert torch.equal(inside, reward(TEXTS))
