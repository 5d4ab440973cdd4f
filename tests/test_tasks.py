"""TL;DR and Anthropic-HH rows in the hub datasets' own schemas -> prompt / chosen / rejected
text, checked on hand-written rows (the oracle) and on the synthetic fixtures."""

import datasets
import pytest

from dpo_core import tasks
from dpo_core.tiny import byte_tokenizer


def rows(**columns):
    return datasets.Dataset.from_dict(columns)


def test_tldr_comparison_splits_at_the_summary_cue_and_drops_equal_summaries():
    data = rows(prompt=["SUBREDDIT: r/a\nTITLE: t\nPOST: p", "SUBREDDIT: r/b\nTITLE: u\nPOST: q"],
                chosen=["TL;DR: short and right", "TL;DR: same"], rejected=["TL;DR:  wrong", "TL;DR: same"])
    pairs, dropped = tasks.tldr_pairs(data)
    assert dropped == 1
    assert pairs == [{"prompt": "SUBREDDIT: r/a\nTITLE: t\nPOST: p\nTL;DR:", "chosen": " short and right",
                      "rejected": " wrong"}]
    # prompt + completion reads as the post followed by its summary, as trlx joins them
    assert pairs[0]["prompt"] + pairs[0]["chosen"] == "SUBREDDIT: r/a\nTITLE: t\nPOST: p\nTL;DR: short and right"


def test_tldr_references_share_the_prompt_format_of_the_pairs():
    refs = tasks.tldr_references(rows(prompt=["SUBREDDIT: r/a\nTITLE: t\nPOST: p\nTL;DR:"], label=[" the gist "]))
    assert refs == [("SUBREDDIT: r/a\nTITLE: t\nPOST: p\nTL;DR:", " the gist")]
    assert refs[0][0] == tasks.tldr_pairs(rows(prompt=["SUBREDDIT: r/a\nTITLE: t\nPOST: p"], chosen=["TL;DR: x"],
                                               rejected=["TL;DR: y"]))[0][0]["prompt"]


def test_hh_keeps_single_turn_dialogues_and_splits_after_the_assistant_cue():
    single_c = "\n\nHuman: Is tea good?\n\nAssistant: Yes, in moderation."
    single_r = "\n\nHuman: Is tea good?\n\nAssistant: No."
    multi = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: Bye"
    other_prompt = "\n\nHuman: Is coffee good?\n\nAssistant: No."
    pairs, dropped = tasks.hh_single_turn(rows(chosen=[single_c, multi, single_c], rejected=[single_r, multi, other_prompt]))
    assert dropped == 2  # the multi-turn dialogue, and a pair whose two prompts differ
    assert pairs == [{"prompt": "\n\nHuman: Is tea good?\n\nAssistant:", "chosen": " Yes, in moderation.", "rejected": " No."}]


@pytest.mark.parametrize("name, parse", [("openai_summarize_comparisons", tasks.tldr_pairs), ("hh-rlhf", tasks.hh_single_turn)])
def test_fixtures_have_the_schema_and_parse(name, parse):
    data = tasks.fixture(name, n_rows=20)
    assert data.column_names == tasks.SCHEMAS[name]
    pairs, dropped = parse(data)
    assert len(pairs) + dropped == 20 and len(pairs) >= 10
    assert all(p["prompt"].endswith(("TL;DR:", "Assistant:")) and p["chosen"] != p["rejected"] for p in pairs)


def test_a_row_missing_a_column_is_named():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['rejected'\]"):
        tasks.hh_single_turn(rows(chosen=["x"]))


def test_encoding_leaves_out_and_counts_pairs_over_max_length():
    pairs = [{"prompt": "p" * 10, "chosen": " a", "rejected": " b"}, {"prompt": "p" * 100, "chosen": " a", "rejected": " b"}]
    examples, too_long = tasks.encode_text_pairs(byte_tokenizer(), pairs, max_length=40)
    assert len(examples) == 1 and too_long == 1
    assert examples[0]["chosen_labels"][-1] == byte_tokenizer().eos_token_id  # the answer ends with EOS
    with pytest.raises(ValueError, match="raise max_length"):
        tasks.encode_text_pairs(byte_tokenizer(), pairs[1:], max_length=40)


def test_hub_rows_load_from_the_hub_layout_through_the_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_HUB_MIRROR", str(tmp_path))
    folder = tmp_path / "Anthropic" / "hh-rlhf"
    folder.mkdir(parents=True)
    tasks.fixture("hh-rlhf", n_rows=6).to_pandas().to_json(folder / "test.jsonl", orient="records", lines=True)
    loaded = tasks.load_rows("hub:Anthropic/hh-rlhf", "test")
    assert loaded.column_names == ["chosen", "rejected"] and len(loaded) == 6
    assert tasks.hh_single_turn(loaded)[0] == tasks.hh_single_turn(tasks.fixture("hh-rlhf", n_rows=6))[0]
