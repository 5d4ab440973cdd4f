"""The learned Bradley-Terry reward model (Eq. 2) starts indifferent, fits its training pairs and
generalises to held-out words."""

import torch
from learned import BAD, GOOD, reward_model_run, toy_pairs

from dpo_core.data import collate_pairs
from dpo_core.reward import ScalarRewardModel
from dpo_core.tiny import byte_tokenizer, tiny_gpt2


def test_starts_indifferent_fits_its_pairs_and_generalises_to_held_out_words():
    init, margins = reward_model_run(seed=0)
    assert torch.all(init == 0)  # a zero head: p = 1/2 for every pair at init, exactly
    # Thresholds from 20 seeds x every CPU kernel set x 1 and 2 threads (tests/MARGINS.md): held-out
    # *accuracy* (12 pairs, steps of 1/12) ranged 0.50-1.0 and is not asserted (0.75 was crossed); the
    # mean held-out margin stayed positive on every seed; one seed left 1 of 36 training pairs unfitted.
    assert (margins["train"] > 0).float().mean() >= 0.9 and margins["train"].mean() > 1.0, margins["train"]
    assert margins["held_out"].mean() > 0, f"must generalise beyond the training words: {margins['held_out']}"

def test_score_ids_matches_the_batched_pair_scores():
    tok = byte_tokenizer()
    model = ScalarRewardModel(tiny_gpt2(seed=1))
    torch.nn.init.normal_(model.head.weight)
    pairs = toy_pairs(GOOD[:2], BAD[:2], tok)
    chosen, _ = model.score_pairs(collate_pairs(pairs, tok.pad_token_id))
    alone = model.score_ids([p["chosen_input_ids"] for p in pairs], tok.pad_token_id, batch_size=1)
    torch.testing.assert_close(alone, chosen.detach(), rtol=1e-5, atol=1e-5)
