"""PPO against a KL-penalised reward: the RLHF baseline DPO is compared with (Section 6).

The paper's PPO follows Ziegler et al. (2019) / Stiennon et al. (2020), as in TRL's IMDb
example: the reward of a completion is the (learned or gold) score at its last token minus a
per-token KL penalty to pi_ref, advantages come from GAE over a value head, and the policy
takes clipped-ratio steps. The KL coefficient adapts so that the KL tracks a target
(the paper sweeps targets 3, 6, 9, 12).

    kl_penalized_rewards   r_t = -kl_coef * (log pi - log pi_ref)_t, + score at the last token
    gae                    generalised advantage estimation (Schulman et al., 2016)
    ppo_policy_loss        the clipped surrogate objective (Schulman et al., 2017)
    ppo_value_loss         the clipped value loss
    AdaptiveKLController   Ziegler et al.'s proportional controller of the KL coefficient
    ppo_step               one iteration: rollouts, KL-penalised advantages, clipped updates (PPOConfig)

Tensors are (B, T) over completion positions with a (B, T) 0/1 `mask`; the last real
token of row b is the last position where mask[b] is 1.
"""

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from dpo_core.evaluate import completion_batch
from dpo_core.frozen import bottom_hidden, final_hidden, lm_logits
from dpo_core.logprobs import token_logps
from dpo_core.sampling import sample
from dpo_core.train import apply_loss


def masked_mean(values, mask):
    return (values * mask).sum() / mask.sum()


def last_token_index(mask):
    """(B,) index of each row's last unmasked position."""
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    return (positions * mask).argmax(-1)


def kl_penalized_rewards(scores, policy_logps, reference_logps, mask, kl_coef):
    """Per-token rewards of Eq. 3 turned into an RL signal.

    Args:
        scores: (B,) the reward model's score of each full completion.
        policy_logps, reference_logps: (B, T) log-probs of the sampled tokens.
        mask: (B, T) 1 on completion tokens.
        kl_coef: the current KL coefficient (beta of Eq. 3).
    Returns:
        rewards (B, T), and the per-token KL estimate (B, T) it penalised.
    """
    kl = (policy_logps - reference_logps) * mask
    rewards = -kl_coef * kl
    rewards[torch.arange(len(scores)), last_token_index(mask)] += scores
    return rewards, kl


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalised advantage estimation, backwards over each completion.

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last token is 0),
    A_t = delta_t + gamma * lam * A_{t+1}; returns R_t = A_t + V_t. Masked positions are 0.
    (B, T) -> advantages (B, T), returns (B, T).
    """
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(rewards.shape[0])
    next_advantage = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * m
        # past the end of a row, carry nothing back into its last real token
        next_value = torch.where(m.bool(), values[:, t], torch.zeros_like(next_value))
        next_advantage = torch.where(m.bool(), advantage, torch.zeros_like(next_advantage))
    return advantages, (advantages + values) * mask


def whiten(values, mask, eps=1e-8):
    """Zero-mean, unit-variance over the masked entries (advantage normalisation)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def ppo_policy_loss(logps, old_logps, advantages, mask, clip_range=0.2):
    """The clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1-e, 1+e)), r = pi/pi_old.
    Returns (loss, fraction of tokens where the clip was active)."""
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction.item()


def ppo_value_loss(values, old_values, returns, mask, clip_range=0.2):
    """0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped within clip_range of the old value."""
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


class AdaptiveKLController:
    """Ziegler et al. (2019): beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon),
    after each batch of n samples, so the sequence-level KL drifts toward `target`."""

    def __init__(self, init_kl_coef=0.2, target=6.0, horizon=10000):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl, n_samples):
        error = max(-0.2, min(0.2, current_kl / self.target - 1))
        self.value *= 1 + error * n_samples / self.horizon
        return self.value

    def state_dict(self):  # for checkpoint.Checkpoint
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


class ValueHead(torch.nn.Module):
    """V(x, y_<t) from the policy's last hidden state at each position, (B, T, H) -> (B, T)."""

    def __init__(self, hidden_size):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden):
        return self.linear(hidden).squeeze(-1)


def normalized(score, reference_scores):
    """The score rescaled to mean 0 and variance 1 over samples of the initial policy, as Ziegler
    et al. (2019, Sec. 2.2) do, so that a KL coefficient weighs the same for any reward scale
    (our learned reward model's raw scores spread about 0.05, the gold reward's about 0.3)."""
    mean, std = reference_scores.mean().item(), reference_scores.std().item()
    if not std > 0:
        raise ValueError("the reference samples all score the same; cannot normalise the reward")
    return lambda prompts, completions: (torch.as_tensor(score(prompts, completions)).float() - mean) / std


def policy_forward(policy, value_head, input_ids, attention_mask, labels, bottom=None, n_top=0):
    """Per-token log-probs of the sampled tokens, the values at the positions that chose them,
    and the completion mask, each (B, T-1) in the shifted (label) frame. With `bottom`
    (frozen-bottom states, see frozen.py) only the top n_top blocks run."""
    hidden = final_hidden(policy, input_ids, attention_mask, bottom, n_top)  # (B, T, H)
    logps, mask = token_logps(lm_logits(policy, hidden), labels)
    values = value_head(hidden[:, :-1].float())
    return logps, values, mask.float()


class PPOModels(NamedTuple):
    """The three models of a PPO iteration."""
    policy: torch.nn.Module  # the LM being trained
    value_head: torch.nn.Module  # `ValueHead` on the policy's last hidden state
    reference: torch.nn.Module  # frozen pi_ref: the KL penalty's other side


@dataclass
class PPOConfig:
    """One PPO iteration's settings, with the defaults of TRL's IMDb example (minGPT's pattern)."""
    max_new_tokens: int = 32  # completion length of each rollout
    pad_token_id: int = 0  # the tokenizer's pad id (rollouts are padded to one length)
    eos_token_id: Optional[int] = None  # a rollout stops there; None: always max_new_tokens
    ppo_epochs: int = 2  # passes of clipped updates over each rollout batch
    minibatch_size: int = 16  # rollouts per update
    clip_range: float = 0.2  # the ratio clip of the policy loss and the value clip
    vf_coef: float = 0.1  # weight of the value loss
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE's lambda
    n_top: int = 0  # > 0: only the top n_top blocks train; the frozen bottom runs once per rollout batch


def ppo_step(models, optimizer, prompts, score, kl_controller, generator, config):
    """One PPO iteration: sample the prompts, score, compute KL-penalised advantages, then
    `config.ppo_epochs` passes of clipped updates in minibatches. `score(prompts, completions)`
    returns (B,) rewards (the learned reward model for PPO, the gold reward for PPO-GT).

    config.n_top > 0 (only the top n_top blocks trained, `models.train_top_layers`): the frozen
    bottom runs once per rollout batch and its states serve pi, pi_ref (whose bottom is the same
    frozen weights) and every minibatch pass.
    """
    policy, value_head, reference = models
    c, n_top = config, config.n_top
    policy.eval()
    completions = sample(policy, prompts, c.max_new_tokens, temperature=1.0, eos_token_id=c.eos_token_id,
                         pad_token_id=c.pad_token_id, generator=generator)
    input_ids, attention_mask, labels = completion_batch(prompts, completions, c.pad_token_id)
    with torch.no_grad():
        bottom = bottom_hidden(policy, input_ids, attention_mask, n_top) if n_top else None  # (B, T, H)
        old_logps, old_values, mask = policy_forward(policy, value_head, input_ids, attention_mask, labels, bottom, n_top)
        ref_hidden = final_hidden(reference, input_ids, attention_mask, bottom, n_top)
        ref_logps, _ = token_logps(lm_logits(reference, ref_hidden), labels)
        scores = torch.as_tensor(score(prompts, completions), dtype=torch.float32)
        rewards, kl = kl_penalized_rewards(scores, old_logps, ref_logps, mask, kl_controller.value)
        advantages, returns = gae(rewards, old_values, mask, c.gamma, c.lam)
        advantages = whiten(advantages, mask)
    policy.train()
    stats = []
    for _ in range(c.ppo_epochs):
        for idx in torch.randperm(len(prompts), generator=generator).split(c.minibatch_size):
            logps, values, m = policy_forward(policy, value_head, input_ids[idx], attention_mask[idx], labels[idx],
                                              None if bottom is None else bottom[idx], n_top)
            policy_loss, clip_fraction = ppo_policy_loss(logps, old_logps[idx], advantages[idx], m, c.clip_range)
            value_loss = ppo_value_loss(values, old_values[idx], returns[idx], m, c.clip_range)
            loss = policy_loss + c.vf_coef * value_loss
            apply_loss(optimizer, loss, "PPO loss")
            stats.append((policy_loss.item(), value_loss.item(), clip_fraction))
    sequence_kl = kl.sum(-1).mean().item()
    metrics = {"score": scores.mean().item(), "kl_train": sequence_kl, "kl_coef": kl_controller.value,
               "policy_loss": sum(s[0] for s in stats) / len(stats), "value_loss": sum(s[1] for s in stats) / len(stats),
               "clip_fraction": sum(s[2] for s in stats) / len(stats)}
    kl_controller.update(sequence_kl, len(prompts))
    return metrics
