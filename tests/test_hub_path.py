"""The `hub:` path (the paper profile), offline, against fixture folders in the hub's own
file layout served through $DPO_HUB_MIRROR."""

import pandas as pd
import pytest
import torch

from dpo_core import assets
from dpo_core.reward import tiny_classifier
from dpo_core.tiny import byte_tokenizer, tiny_gpt2


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_HUB_MIRROR", str(tmp_path))
    return tmp_path


def test_hub_model_loads_from_a_snapshot_folder(mirror):
    tiny_gpt2(seed=3).save_pretrained(mirror / "gpt2-large")  # config.json + model.safetensors
    byte_tokenizer().save_pretrained(mirror / "gpt2-large")
    model, tokenizer = assets.load_policy("hub:gpt2-large")
    ids = torch.tensor([tokenizer("a fine film")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_gpt2(seed=3)(ids).logits)
    assert tokenizer.pad_token is not None


def test_hub_imdb_loads_from_parquet_shards_in_the_hub_layout(mirror):
    # stanfordnlp/imdb on the hub: plain_text/{train,test,unsupervised}-00000-of-00001.parquet
    folder = mirror / "stanfordnlp" / "imdb" / "plain_text"
    folder.mkdir(parents=True)
    for split, n in (("train", 6), ("test", 4)):
        pd.DataFrame({"text": [f"{split} review {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}).to_parquet(
            folder / f"{split}-00000-of-00001.parquet"
        )
    test = assets.load_corpus("hub:stanfordnlp/imdb", split="test")
    assert test["text"] == [f"test review {i}" for i in range(4)] and test["label"] == [0, 1, 0, 1]
    assert len(assets.load_corpus("hub:stanfordnlp/imdb")) == 6


def test_hub_reward_reads_the_positive_index_from_id2label(mirror):
    model, tokenizer = tiny_classifier(seed=1)
    model.config.id2label, model.config.label2id = {0: "POSITIVE", 1: "NEGATIVE"}, {"POSITIVE": 0, "NEGATIVE": 1}
    folder = mirror / "siebert" / "sentiment-roberta-large-english"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    reward = assets.load_reward("hub:siebert/sentiment-roberta-large-english")
    assert reward.positive_index == 0
    texts = ["loved it", "hated it, a total waste of time"]
    with torch.no_grad():
        expected = torch.softmax(model.eval()(**tokenizer(texts, padding=True, return_tensors="pt")).logits, -1)[:, 0]
    torch.testing.assert_close(reward(texts), expected, rtol=1e-5, atol=1e-6)
