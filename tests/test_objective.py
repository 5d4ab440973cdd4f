"""Eq. 3 and Eq. 4 on a categorical over K completions, and Eq. 5 recovering the reward."""

import torch

from dpo_core.losses import implicit_reward
from dpo_core.objective import log_partition, optimal_policy_logps, rlhf_objective


def categorical(seed, K=6):
    g = torch.Generator().manual_seed(seed)
    reference = torch.log_softmax(torch.randn(K, generator=g, dtype=torch.float64), -1)
    rewards = torch.rand(K, generator=g, dtype=torch.float64)
    return reference, rewards


def test_optimal_policy_is_normalised_and_beats_other_policies():
    reference, rewards = categorical(0)
    for beta in (0.05, 0.1, 1.0, 5.0):
        best = optimal_policy_logps(reference, rewards, beta)
        assert abs(best.exp().sum().item() - 1) < 1e-12
        value = rlhf_objective(best, reference, rewards, beta)
        # the maximum of Eq. 3 is beta * log Z (closed form, Appendix A.1)
        assert torch.isclose(value, beta * log_partition(reference, rewards, beta))
        g = torch.Generator().manual_seed(1)
        for _ in range(200):
            other = torch.log_softmax(best + 0.5 * torch.randn(len(best), generator=g, dtype=torch.float64), -1)
            assert rlhf_objective(other, reference, rewards, beta) <= value + 1e-12


def test_eq5_recovers_the_reward_up_to_a_prompt_constant():
    reference, rewards = categorical(2)
    beta = 0.5
    best = optimal_policy_logps(reference, rewards, beta)
    recovered = implicit_reward(best, reference, beta)  # = r - beta * log Z
    torch.testing.assert_close(recovered + beta * log_partition(reference, rewards, beta), rewards)


def test_large_beta_keeps_the_reference_small_beta_picks_the_best():
    reference, rewards = categorical(3)
    torch.testing.assert_close(optimal_policy_logps(reference, rewards, 1e6), reference, rtol=0, atol=1e-5)
    assert optimal_policy_logps(reference, rewards, 1e-4).exp()[rewards.argmax()] > 0.999
