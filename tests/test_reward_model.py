"""The learned Bradley-Terry reward model beats chance on a toy preference set."""

import torch

from dpo_core.data import collate_pairs, encode_pair
from dpo_core.losses import bradley_terry_loss
from dpo_core.reward import ScalarRewardModel
from dpo_core.tiny import byte_tokenizer, tiny_gpt2

GOOD = ["great", "superb", "lovely", "moving", "brilliant", "fine", "a joy", "wonderful"]
BAD = ["awful", "dull", "boring", "a mess", "terrible", "weak", "tedious", "bad"]
SUBJECTS = ["The film was", "Acting:", "Overall", "The plot is", "Its score is", "I found it"]


def toy_pairs(words_good, words_bad, tok):
    return [encode_pair(tok, s, f" {g}.", f" {b}.", 64) for s in SUBJECTS for g, b in zip(words_good, words_bad)]


def accuracy(model, batch):
    with torch.no_grad():
        chosen, rejected = model.score_pairs(batch)
    return (chosen > rejected).float().mean().item()


def test_starts_indifferent_and_learns_to_beat_chance_on_held_out_pairs():
    tok = byte_tokenizer()
    model = ScalarRewardModel(tiny_gpt2(seed=0))
    train = collate_pairs(toy_pairs(GOOD[:6], BAD[:6], tok), tok.pad_token_id)
    held_out = collate_pairs(toy_pairs(GOOD[6:], BAD[6:], tok), tok.pad_token_id)
    chosen, rejected = model.score_pairs(train)
    assert torch.all(chosen == 0) and torch.all(rejected == 0)  # p = 1/2 for every pair at init
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        chosen, rejected = model.score_pairs(train)
        loss = bradley_terry_loss(chosen, rejected).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert accuracy(model, train) == 1.0
    assert accuracy(model, held_out) > 0.75, "must generalise beyond the training words"


def test_score_ids_matches_the_batched_pair_scores():
    tok = byte_tokenizer()
    model = ScalarRewardModel(tiny_gpt2(seed=1))
    torch.nn.init.normal_(model.head.weight)
    pairs = toy_pairs(GOOD[:2], BAD[:2], tok)
    chosen, _ = model.score_pairs(collate_pairs(pairs, tok.pad_token_id))
    alone = model.score_ids([p["chosen_input_ids"] for p in pairs], tok.pad_token_id, batch_size=1)
    torch.testing.assert_close(alone, chosen.detach(), rtol=1e-5, atol=1e-5)
