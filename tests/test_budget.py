"""The budget rule (dpo_core.budget) on hand-computed cases."""

import math

import pytest

from dpo_core import budget


def test_the_cpu_profile_ppo_gt_budget_gives_dpo_120_steps_and_equal_gold():
    # PPO-GT: 30 iterations x 32 rollouts x 2 epochs = 1,920 sequences through backward
    ppo = budget.ppo_backward_sequences(30, 32, 2)
    assert ppo == 1920
    # DPO at 8 pairs a step: 16 sequences a step -> 120 steps, 960 pairs: PPO-GT's 960 gold scores
    steps = budget.offline_steps(ppo, 8)
    assert steps == 120 and steps * 8 == 30 * 32
    assert budget.offline_backward_sequences(steps, 8) == ppo


def test_steps_round_down_never_over_budget():
    assert budget.offline_steps(100, 8) == 6  # 96 of 100 sequences; 7 steps would be 112
    assert budget.offline_steps(15, 8) == 0
    assert budget.ppo_iterations(1919, 32, 2) == 29
    assert budget.ppo_iterations(1920, 32, 2) == 30
    with pytest.raises(ValueError):
        budget.offline_steps(100, 0)
    with pytest.raises(ValueError):
        budget.ppo_iterations(-1, 32, 2)


def test_flops_hand_computed():
    # a 10-weight model, 2 embedding weights, hidden 1, vocab 3: 2 * 8 + 2 * 3 = 22 FLOPs a token forward
    f = budget.forward_flops_per_token(10, 2, 1, 3)
    assert f == 22
    # offline: 1 step of 2 pairs, 5 tokens a sequence: 4 sequences x 5 tokens x 22 x (fwd 1 + bwd 2 + pi_ref 1)
    assert budget.flops("offline", f, 5, steps=1, batch_size=2) == 4 * 5 * 22 * 4
    # ppo: 1 iteration of 2 rollouts, 3 sampled tokens, 5-token sequences, 2 epochs:
    # per rollout 3 + 5 * (2 + 3 * 2) = 43 token-forwards
    assert budget.flops("ppo", f, 5, steps=1, prompts_per_step=2, ppo_epochs=2, new_tokens=3) == 2 * 43 * 22
    with pytest.raises(ValueError):
        budget.flops("online", f, 5)


def test_budget_row_for_ppo_counts_minibatch_steps():
    row = budget.budget_row("ppo_gt", "ppo", steps=30, prompts_per_step=32, ppo_epochs=2, minibatch_size=16,
                            gold_queries=960, forward_per_token=1.0, tokens_per_sequence=40, new_tokens=32,
                            wall_s=120.0)
    assert row["optimizer_steps"] == 120 and row["backward_sequences"] == 1920
    assert row["wall_minutes"] == 2.0
    assert math.isclose(row["tflops"], 30 * 32 * (32 + 40 * 8) / 1e12)
    offline = budget.budget_row("dpo", "offline", steps=120, batch_size=8, gold_queries=768,
                                forward_per_token=1.0, tokens_per_sequence=40)
    assert offline["optimizer_steps"] == 120 and offline["backward_sequences"] == 1920
    assert math.isnan(offline["wall_minutes"])
