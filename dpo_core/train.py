"""One DPO optimisation step and the metrics logged around it.

The metric names follow the official code and TRL: rewards/chosen, rewards/rejected,
rewards/margins, rewards/accuracies, logps/chosen, logps/rejected, plus rewards/ties,
since a strict accuracy reads 0 (not 0.5) when every pair ties, as at step 0.
"""

import torch

from dpo_core.logprobs import concatenated_forward
from dpo_core.losses import dpo_loss


def disable_dropout(model):
    """Dropout off in every module: with it on, pi != pi_ref at step 0 and the reference
    log-probs are noise (the official code and TRL do the same)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


@torch.no_grad()
def reference_logps(reference_model, batch):
    """(chosen, rejected) summed log-probs under the frozen reference, each (B,), no graph."""
    return concatenated_forward(reference_model, batch)


def dpo_metrics(losses, chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps):
    """Batch means of the per-pair quantities, as plain floats."""
    margins = chosen_rewards - rejected_rewards
    return {
        "loss": losses.mean().item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": margins.mean().item(),
        "rewards/accuracies": (margins > 0).float().mean().item(),
        "rewards/ties": (margins == 0).float().mean().item(),
        "logps/chosen": policy_chosen_logps.detach().mean().item(),
        "logps/rejected": policy_rejected_logps.detach().mean().item(),
    }


def dpo_step(policy, optimizer, batch, reference_chosen_logps, reference_rejected_logps, beta, label_smoothing=0.0):
    """One optimizer step of Eq. 7 on a collated preference batch; returns the metrics
    measured before the update. A non-finite loss stops before the weights change."""
    policy_chosen_logps, policy_rejected_logps = concatenated_forward(policy, batch)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta,
        label_smoothing,
    )
    loss = losses.mean()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"DPO loss is {loss.item()}; weights left unchanged (lower the learning rate?)")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return dpo_metrics(losses, chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps)
