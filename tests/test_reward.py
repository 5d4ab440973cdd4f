"""SentimentReward on the tiny classifier, the tie-rate and AUC helpers, and a small real
fine-tune of the gold reward (the full one is `make assets`)."""

import json

import pytest
import torch
from sklearn.metrics import roc_auc_score

from dpo_core import assets
from dpo_core.reward import (
    SentimentReward,
    finetune_sentiment_classifier,
    positive_label_index,
    roc_auc,
    tie_rate,
    tiny_classifier,
)

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
    for name in assets.CORPORA:
        assets.prepare_corpus(name)
    held_out = assets.load_corpus("pang-lee-sentences").shuffle(seed=0).select(range(400))
    report = finetune_sentiment_classifier(
        assets.minilm_base_dir(), assets.load_corpus("rotten-tomatoes"), tmp_path, max_steps=40,
        eval_sets={"pang-lee-sentences[:400]": held_out}, log_every=20,
    )
    assert json.loads((tmp_path / "quality.json").read_text())["steps"] == 40
    assert report["quality"]["pang-lee-sentences[:400]"]["roc_auc"] > 0.7  # well above chance (0.5)
    reward = SentimentReward.from_pretrained(tmp_path)
    positive = ["this movie was absolutely wonderful , i loved it !", "a moving , beautifully acted film ."]
    negative = ["a dull , lifeless mess of a film .", "the worst movie i have ever sat through ."]
    scores = reward(positive + negative)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores[:2].min() > scores[2:].max(), f"clear sentiment misordered: {scores.tolist()}"
