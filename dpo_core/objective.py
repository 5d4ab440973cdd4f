"""The KL-constrained RLHF objective and its closed-form optimum, on explicit distributions.

For teaching and tests: when the completions of a prompt can be enumerated (a categorical
over K completions), Eq. 3 can be evaluated exactly and Eq. 4 computed in closed form.

    rlhf_objective          Eq. 3: E_pi[r] - beta * KL(pi || pi_ref)
    optimal_policy_logps    Eq. 4: pi_r ∝ pi_ref * exp(r / beta)
    log_partition           log Z(x) of Eq. 4

Tensors hold the last dimension K over completions of one prompt; leading dims broadcast.
"""

import torch


def log_partition(reference_logps, rewards, beta):
    """log Z(x) = log sum_y pi_ref(y|x) exp(r(x, y) / beta). (..., K) -> (...)."""
    return torch.logsumexp(reference_logps + rewards / beta, dim=-1)


def optimal_policy_logps(reference_logps, rewards, beta):
    """Eq. 4: log pi_r(y|x) = log pi_ref(y|x) + r(x, y) / beta - log Z(x). (..., K) -> (..., K)."""
    return reference_logps + rewards / beta - log_partition(reference_logps, rewards, beta).unsqueeze(-1)


def rlhf_objective(policy_logps, reference_logps, rewards, beta):
    """Eq. 3 for one prompt: sum_y pi(y) r(y) - beta * sum_y pi(y) log(pi(y) / pi_ref(y)).

    Args are log-probabilities over all K completions (they must each sum to one in prob).
    (..., K) -> (...).
    """
    probs = policy_logps.exp()
    expected_reward = (probs * rewards).sum(-1)
    kl = (probs * (policy_logps - reference_logps)).sum(-1)
    return expected_reward - beta * kl
