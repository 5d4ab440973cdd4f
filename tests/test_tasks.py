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


def test_judge_context_strips_the_answer_cue():
    assert tasks.judge_context("SUBREDDIT: r/a\nPOST: p\nTL;DR:") == "SUBREDDIT: r/a\nPOST: p"
    assert tasks.judge_context("\n\nHuman: Is tea good?\n\nAssistant:") == "Is tea good?"


def tiny_examples():
    tok = byte_tokenizer()
    pairs, _ = tasks.hh_single_turn(tasks.fixture("hh-rlhf", n_rows=10))
    return tok, tasks.encode_text_pairs(tok, pairs, max_length=200)[0]


def test_reference_logps_precomputed_in_batches_equal_one_pair_at_a_time():
    import torch

    from dpo_core.data import collate_pairs
    from dpo_core.logprobs import concatenated_forward
    from dpo_core.tiny import tiny_gpt2
    from dpo_core.train import precompute_reference_logps

    tok, examples = tiny_examples()
    model = tiny_gpt2(seed=0).eval()
    chosen, rejected = precompute_reference_logps(model, examples, tok.pad_token_id, batch_size=3)
    with torch.no_grad():
        one = [concatenated_forward(model, collate_pairs([e], tok.pad_token_id)) for e in examples]
    torch.testing.assert_close(chosen, torch.cat([c for c, _ in one]), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rejected, torch.cat([r for _, r in one]), rtol=1e-5, atol=1e-4)


def test_held_out_preference_accuracy_of_pi_ref_is_the_papers_invariant():
    import math

    from dpo_core.evaluate import preference_accuracy
    from dpo_core.tiny import tiny_gpt2
    from dpo_core.train import precompute_reference_logps

    tok, examples = tiny_examples()
    model = tiny_gpt2(seed=0).eval()
    reference = precompute_reference_logps(model, examples, tok.pad_token_id)
    metrics = preference_accuracy(model, examples, *reference, beta=0.5, pad_token_id=tok.pad_token_id)
    # pi = pi_ref: loss ln 2, every implicit reward 0, so no pair is ranked right
    assert abs(metrics["eval_loss"] - math.log(2)) < 1e-5 and abs(metrics["eval_margin"]) < 1e-5
    assert metrics["eval_accuracy"] == 0.0


def test_best_of_n_returns_the_highest_scoring_sample_of_each_prompt():
    import torch

    from dpo_core.sampling import best_of_n, sample
    from dpo_core.tiny import tiny_gpt2

    model, prompts = tiny_gpt2(seed=0).eval(), [[65, 66], [67]]
    score = lambda ps, cs: torch.tensor([float(sum(c)) for c in cs])  # noqa: E731
    picked = best_of_n(model, prompts, 4, score, 5, generator=torch.Generator().manual_seed(0))
    pool = sample(model, [p for p in prompts for _ in range(4)], 5, generator=torch.Generator().manual_seed(0))
    assert picked == [max(pool[:4], key=sum), max(pool[4:], key=sum)]


def test_make_judge_names_the_two_kinds():
    from dpo_core.judges import ChatJudge, GoldRewardJudge, make_judge

    assert isinstance(make_judge("chat:gpt-4-0314", "dialogue", "/nonexistent"), ChatJudge)
    assert isinstance(make_judge("reward:tiny", "dialogue", "/nonexistent"), GoldRewardJudge)
    with pytest.raises(ValueError, match="use chat:<model>"):
        make_judge("gpt-4", "dialogue", "/nonexistent")


def test_task_data_keeps_test_queries_apart_from_held_out_pairs():
    # hh: comparisons and test queries from one dataset; held-out pairs from the front of its test
    # split, queries from its end, so with 3 + 3 of the fixture's test pairs none is both
    train, dropped, held_out, test = tasks.task_data("hh", "fixture:hh-rlhf", "fixture:hh-rlhf", 0, 3, 3)
    test_pairs, _ = tasks.hh_single_turn(tasks.load_rows("fixture:hh-rlhf", "test"))
    assert held_out == test_pairs[:3] and test == [(p["prompt"], p["chosen"].strip()) for p in test_pairs[-3:]]
    assert len(test_pairs) >= 6  # so the first 3 and the last 3 are different rows
    assert len(train) + dropped == 24 and dropped == 24 // 5  # the fixture's multi-turn rows, every 5th
    # tldr: the test posts come from the references, from their front
    _, _, _, tldr_test = tasks.task_data("tldr", "fixture:openai_summarize_comparisons",
                                         "fixture:openai_summarize_tldr", 0, 4, 2)
    assert tldr_test == tasks.tldr_references(tasks.load_rows("fixture:openai_summarize_tldr", "test"))[:2]


def test_the_task_registry_names_its_tasks_and_their_judge_prompts():
    assert tasks.TASKS["tldr"].judge_prompt == "summarization_concise" and tasks.TASKS["hh"].judge_prompt == "dialogue"
    assert tasks.TASKS["hh"].strip and not tasks.TASKS["tldr"].strip
    with pytest.raises(ValueError, match=r"unknown task 'summ'; the tasks are \['hh', 'tldr'\]"):
        tasks.task_data("summ", "fixture:hh-rlhf", "fixture:hh-rlhf")
