"""The learned Bradley-Terry reward model (Eq. 2) starts indifferent, fits its training pairs and
generalises to held-out subjects (prompts)."""

import torch
from learned import BAD, GOOD, SUBJECTS, reward_model_run, toy_pairs

from dpo_core.data import collate_pairs
from dpo_core.reward import ScalarRewardModel
from dpo_core.tiny import byte_tokenizer, tiny_gpt2


def test_starts_indifferent_fits_its_pairs_and_generalises_to_held_out_subjects():
    init, margins = reward_model_run(seed=0)
    assert torch.all(init == 0)  # a zero head: p = 1/2 for every pair at init, exactly
    # Thresholds from 20 seeds x every CPU kernel set x 1 and 2 threads (tests/MARGINS.md). Held-out
    # *accuracy* (16 pairs, steps of 1/16) is not asserted: it ranged 0.56-0.94 over seeds.
    assert (margins["train"] > 0).float().mean() >= 0.9 and margins["train"].mean() > 1.0, margins["train"]
    assert margins["held_out"].mean() > 0.5, f"must generalise to unseen subjects: {margins['held_out']}"

def test_score_ids_matches_the_batched_pair_scores():
    tok = byte_tokenizer()
    model = ScalarRewardModel(tiny_gpt2(seed=1))
    torch.nn.init.normal_(model.head.weight)
    pairs = toy_pairs(SUBJECTS[:1], tok, GOOD[:2], BAD[:2])
    chosen, _ = model.score_pairs(collate_pairs(pairs, tok.pad_token_id))
    alone = model.score_ids([p["chosen_input_ids"] for p in pairs], tok.pad_token_id, batch_size=1)
    torch.testing.assert_close(alone, chosen.detach(), rtol=1e-5, atol=1e-5)
