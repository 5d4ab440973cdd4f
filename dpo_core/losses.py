"""The objectives the DPO paper compares, one equation per function.

Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model", NeurIPS 2023, arXiv:2305.18290. Equation numbers refer to that paper.

    dpo_loss              Eq. 7 (and the cDPO form when label_smoothing > 0)
    ipo_loss              IPO (Azar et al. 2023, Eq. 17), the official DPO code's `ipo` branch
    hinge_loss            the hinge (SLiC-HF) loss on the same log-ratios (Zhao et al. 2023; TRL's "hinge")
    dpo_gradient_weight   the per-pair weight sigma(r_l - r_w) of the gradient, Section 4
    implicit_reward       Eq. 5 without the beta * log Z(x) term (it cancels in every pair)
    bradley_terry_loss    Eq. 2, the reward-model loss PPO's learned reward is fitted with
    preferred_ft_loss     Preferred-FT baseline of Section 6: NLL of the chosen completion
    unlikelihood_loss     Unlikelihood baseline of Section 6: raise log p(y_w), lower log p(y_l)

Every function takes per-example tensors of shape (B,) and returns per-example values;
the reduction (usually `.mean()`) is left to the caller, as in the official code.
All sequence log-probs are *sums* over completion tokens (see `logprobs.sequence_logps`);
beta is only comparable between runs that use the same reduction.
"""

import torch
import torch.nn.functional as F


def implicit_reward(policy_logps, reference_logps, beta):
    """Eq. 5 up to its prompt-only term: r(x, y) = beta * log pi(y|x) / pi_ref(y|x).

    The dropped beta * log Z(x) depends on x alone, so it cancels inside every
    Bradley-Terry comparison (Eq. 1) of two completions of the same prompt.
    Shapes: (B,) -> (B,).
    """
    return beta * (policy_logps - reference_logps)


def dpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    beta,
    label_smoothing=0.0,
):
    """Eq. 7: -log sigma(beta * [log pi/pi_ref (y_w) - log pi/pi_ref (y_l)]), per pair.

    label_smoothing = eps > 0 gives conservative DPO (cDPO), which assumes each label is
    flipped with probability eps: -(1 - eps) log sigma(h) - eps log sigma(-h).
    eps = 0 is exactly Eq. 7.

    Args:
        policy_chosen_logps: (B,) summed log pi_theta(y_w | x).
        policy_rejected_logps: (B,) summed log pi_theta(y_l | x).
        reference_chosen_logps: (B,) summed log pi_ref(y_w | x); no gradient flows here.
        reference_rejected_logps: (B,) summed log pi_ref(y_l | x).
        beta: the KL penalty strength of Eq. 3, > 0.
        label_smoothing: cDPO's eps in [0, 0.5).
    Returns:
        losses (B,), chosen_rewards (B,), rejected_rewards (B,); the rewards are the
        implicit rewards of Eq. 5, detached (they are for logging).
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (the KL penalty strength of Eq. 3), got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    policy_logratios = policy_chosen_logps - policy_rejected_logps
    reference_logratios = reference_chosen_logps - reference_rejected_logps
    logits = beta * (policy_logratios - reference_logratios)  # (B,)
    # logsigmoid is the stable form: log(sigmoid(x)) is -inf below about -88 in fp32.
    losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    chosen_rewards = implicit_reward(policy_chosen_logps, reference_chosen_logps, beta).detach()
    rejected_rewards = implicit_reward(policy_rejected_logps, reference_rejected_logps, beta).detach()
    return losses, chosen_rewards, rejected_rewards


def preference_logits(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
    """h = log pi/pi_ref (y_w) - log pi/pi_ref (y_l), the log-ratio margin every pairwise loss
    here is a function of (Eq. 7 is -log sigma(beta * h)). Shapes: (B,) -> (B,)."""
    return (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)


def ipo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", Eq. 17): (h - 1 / (2 beta))^2, a squared loss that pulls the log-ratio margin
    h to a finite target instead of pushing it to infinity, so it cannot overfit deterministic
    preferences the way Eq. 7 can. The form of the official DPO code (summed log-probs, beta
    as IPO's tau). Shapes: (B,) -> (B,)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (IPO's regularisation tau), got {beta}")
    h = preference_logits(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return (h - 1 / (2 * beta)) ** 2


def hinge_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """The hinge loss of SLiC-HF (Zhao et al. 2023) on DPO's reference-normalised log-ratios,
    max(0, 1 - beta * h), as in RSO (Liu et al. 2023) and TRL's `loss_type="hinge"`: zero once a
    pair is ordered with margin 1 / beta, where Eq. 7 keeps pushing. Shapes: (B,) -> (B,)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (1 / the hinge's margin), got {beta}")
    h = preference_logits(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return torch.relu(1 - beta * h)


def dpo_gradient_weight(chosen_rewards, rejected_rewards):
    """Section 4: the gradient of Eq. 7 is
        -beta * sigma(r_l - r_w) * (grad log pi(y_w|x) - grad log pi(y_l|x)),
    so each pair is weighted by how badly the implicit reward mis-orders it.
    Shapes: (B,) -> (B,).
    """
    return torch.sigmoid(rejected_rewards - chosen_rewards)


def bradley_terry_loss(chosen_rewards, rejected_rewards):
    """Eq. 2: -log sigma(r_phi(x, y_w) - r_phi(x, y_l)), the negative log-likelihood of the
    Bradley-Terry preference model (Eq. 1) for a learned reward r_phi. Shapes: (B,) -> (B,)."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards)


def preferred_ft_loss(policy_chosen_logps):
    """Preferred-FT (Section 6): supervised fine-tuning on the chosen completion only,
    -log pi_theta(y_w | x). Shapes: (B,) -> (B,)."""
    return -policy_chosen_logps


def unlikelihood_loss(policy_chosen_logps, policy_rejected_logps, alpha):
    """Unlikelihood (Section 6): maximise log pi(y_w|x) and minimise log pi(y_l|x), with the
    optional coefficient alpha in [0, 1] on the unlikelihood term:
        -log pi(y_w|x) + alpha * log pi(y_l|x).
    This is the literal form of the paper's description. It is unbounded below; the paper's
    App. C.3 attributes Unlikelihood's degenerate samples to exactly that.
    Shapes: (B,) -> (B,).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (Section 6), got {alpha}")
    return -policy_chosen_logps + alpha * policy_rejected_logps
