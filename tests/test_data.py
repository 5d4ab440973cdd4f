"""Pair construction and collation: prompt masking, bad input, padding values."""

import pytest
import torch

from dpo_core.data import collate_pairs, encode_pair, make_pair
from dpo_core.tiny import byte_tokenizer


def test_make_pair_masks_the_prompt_only():
    ex = make_pair([5, 6], [7, 8, 9], [10], max_length=8)
    assert ex["chosen_input_ids"] == [5, 6, 7, 8, 9]
    assert ex["chosen_labels"] == [-100, -100, 7, 8, 9]
    assert ex["rejected_input_ids"] == [5, 6, 10]
    assert ex["rejected_labels"] == [-100, -100, 10]


@pytest.mark.parametrize(
    "prompt, chosen, rejected, match",
    [
        ([], [1], [2], "empty prompt"),
        ([1], [], [2], "empty chosen completion"),
        ([1], [2], [], "empty rejected completion"),
        ([1], [2, 3], [2, 3], "chosen equals rejected"),
        ([1] * 6, [2, 3], [4], "max_length=7"),
    ],
)
def test_bad_pairs_are_clear_errors(prompt, chosen, rejected, match):
    with pytest.raises(ValueError, match=match):
        make_pair(prompt, chosen, rejected, max_length=7)


def test_encode_pair_keeps_the_prompt_as_an_exact_prefix_and_appends_eos_on_request():
    tok = byte_tokenizer()
    ex = encode_pair(tok, "Great", " film", " mess", max_length=32, append_eos=True)
    prompt_ids = tok("Great", add_special_tokens=False)["input_ids"]
    assert ex["chosen_input_ids"][: len(prompt_ids)] == prompt_ids
    assert ex["chosen_input_ids"][-1] == tok.eos_token_id
    assert ex["chosen_labels"][-1] == tok.eos_token_id  # the EOS we want learned is never masked
    assert tok.decode(ex["chosen_input_ids"][:-1]) == "Great film"


def test_collate_right_pads_with_minus_100_labels_and_zero_mask():
    batch = collate_pairs([make_pair([1], [2], [3, 4, 5], 8), make_pair([1, 1], [2, 2, 2], [3], 8)], pad_token_id=0)
    assert batch["chosen_input_ids"].tolist() == [[1, 2, 0, 0, 0], [1, 1, 2, 2, 2]]
    assert batch["chosen_labels"].tolist() == [[-100, 2, -100, -100, -100], [-100, -100, 2, 2, 2]]
    assert batch["chosen_attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["rejected_input_ids"].shape == (2, 4)
    assert batch["rejected_labels"].dtype == torch.long


def test_preference_rows_all_pairs_by_score_ties_and_identical_samples_dropped():
    from dpo_core.data import preference_rows

    prompts = [[1], [2]]
    completions = [[10], [11], [12], [20], [20], [21]]  # prompt 2's first two samples are identical
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.3, 0.7, 0.7]])
    rows, n_ties = preference_rows(prompts, completions, scores)
    assert n_ties == 1  # prompt 2: samples 1 and 2 tie at 0.7
    assert [(r["chosen_ids"], r["rejected_ids"]) for r in rows] == [([10], [11]), ([10], [12]), ([12], [11]),
                                                                   ([21], [20])]  # [20] vs [20] dropped
    assert rows[0]["chosen_reward"] == pytest.approx(0.9) and rows[0]["prompt_ids"] == [1]


def test_sentence_prefixes_take_each_texts_first_lines_text_major():
    """Line 0 of a text is its opening (the paper's prompt); lines 1.. open its next sentences; a
    text with fewer lines gives fewer prompts; blank lines are skipped; lengths drawn as review_prefixes'."""
    from dpo_core.data import review_prefixes, sentence_prefixes
    tok = byte_tokenizer()
    texts = ["good film . \nbad plot . \nfine cast . ", "one line only . ", "a . \n\nb . \nc . "]
    got = sentence_prefixes(tok, texts, 2, 2, 4, seed=0)
    lines = ["good film . ", "bad plot . ", "one line only . ", "a . ", "b . "]
    assert got == review_prefixes(tok, lines, 2, 4, seed=0)
    assert len(got) == 5 and got[0] == tok("good film . ", add_special_tokens=False)["input_ids"][: len(got[0])]


def test_first_prompts_keeps_the_pairs_of_the_first_n_distinct_prompts():
    from dpo_core.data import first_prompts
    prompts = [[1], [1], [2], [3], [2], [3], [4]]
    assert first_prompts(prompts, 2) == [0, 1, 2, 4]
    assert first_prompts(prompts, 4) == list(range(7))
    with pytest.raises(ValueError, match="5 prompts asked for"):
        first_prompts(prompts, 5)


def test_rows_on_other_prompts_drops_the_rows_of_a_prompt_the_training_set_has():
    from dpo_core.data import rows_on_other_prompts
    held = [[5, 6], [5, 6], [7], [8, 9], [7]]  # [7] is also a training prompt: two reviews opening alike
    assert rows_on_other_prompts(held, [[1], [7], [5]]) == [0, 1, 3]  # [5] is not [5, 6]
    assert rows_on_other_prompts(held, []) == [0, 1, 2, 3, 4]
