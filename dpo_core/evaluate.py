"""Evaluation for the reward-KL frontier (Fig. 2 left): sequence-level KL(pi || pi_ref)
on fresh samples of held-out prompts, and the mean gold reward; also held-out preference accuracy,
SFT's held-out NLL and Best-of-N's points.

Footnote 3 of the paper defines the sequence-level KL as the sum of the per-timestep KL
divergences. Two estimates are computed on the same samples y ~ pi(.|x):

    sampled  sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]       (k1: unbiased, noisy)
    exact    sum_t sum_v pi(v | x, y_<t) [log pi(v | .) - log pi_ref(v | .)]  (per-token exact)

Both sum over completion tokens only; their expectations over y are equal.
"""

import math

import torch
import torch.nn.functional as F

from dpo_core import progress
from dpo_core.data import collate_pairs
from dpo_core.logprobs import check_plain_output_layer, concatenated_forward, pad_right, position_ids_from_mask
from dpo_core.losses import dpo_loss
from dpo_core.precision import weights_fixed
from dpo_core.sampling import sample


def kl_from_logits(policy_logits, reference_logits, labels, ignore_index=-100):
    """Sequence-level KL estimates from the two models' logits over the same sequences.

    Args:
        policy_logits, reference_logits: (B, T, V) over `input_ids`.
        labels: (B, T) `input_ids` with prompt and padding positions set to `ignore_index`.
    Returns:
        sampled (B,), exact (B,), both fp32 sums over completion positions.
    """
    labels = labels[:, 1:]
    mask = labels != ignore_index  # (B, T-1)
    policy = torch.log_softmax(policy_logits[:, :-1].float(), -1)  # (B, T-1, V)
    reference = torch.log_softmax(reference_logits[:, :-1].float(), -1)
    index = labels.masked_fill(~mask, 0).unsqueeze(-1)
    sampled = (policy.gather(-1, index) - reference.gather(-1, index)).squeeze(-1)  # (B, T-1)
    exact = (policy.exp() * (policy - reference)).sum(-1)  # (B, T-1)
    return (sampled * mask).sum(-1), (exact * mask).sum(-1)


def completion_batch(prompts, completions, pad_token_id):
    """Right-padded input_ids, attention_mask, labels (prompt masked) for prompt + completion ids."""
    if any(len(c) == 0 for c in completions):
        raise ValueError("empty completion: a sample with no tokens has no log-prob; check max_new_tokens")
    ids = [torch.tensor(p + c) for p, c in zip(prompts, completions)]
    labels = [torch.tensor([-100] * len(p) + c) for p, c in zip(prompts, completions)]
    length = max(len(x) for x in ids)
    input_ids = pad_right(ids, length, pad_token_id)
    attention_mask = pad_right([torch.ones_like(x) for x in ids], length, 0)
    return input_ids, attention_mask, pad_right(labels, length, -100)


def token_kl(policy_logits, reference_logits, labels):
    """Footnote 3's two per-token terms at N scored positions, from both models' logits there, and
    the policy's entropy: (N, V), (N, V), (N,) -> sampled, exact, log pi_ref(label), entropy, each
    (N,) fp32.

        sampled = log p(y_t) - log q(y_t)
        exact   = sum_v p(v) (log p(v) - log q(v))
        entropy = -sum_v p(v) log p(v)

    entropy + exact = sum_v p(v) (-log q(v)): the expected pi_ref NLL of the policy's next token. So
    a policy can gain KL by sharpening (entropy falls) or by diffusing (entropy rises): the entropy
    column of every evaluation says which.

    The same quantities as `kl_from_logits` (its oracle in the tests), from the fused fp32
    log-softmax kernel rather than logsumexp's separate max, subtract, exp and sum passes over the
    (N, V) block: 7.7 against 17.9 ms for 64 rows of SmolLM2's 49,152 logits (bench/README.md).
    Identical models give exactly 0: log p - log q is 0 everywhere."""
    log_p = torch.log_softmax(policy_logits, -1, dtype=torch.float32)  # (N, V)
    log_q = torch.log_softmax(reference_logits, -1, dtype=torch.float32)
    exact = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)  # sum p (log p - log q), (N,)
    index = labels[:, None]
    reference_logps = log_q.gather(-1, index).squeeze(-1)
    sampled = log_p.gather(-1, index).squeeze(-1) - reference_logps
    entropy = -(log_p.exp() * log_p).sum(-1)
    return sampled, exact, reference_logps, entropy


def _scored_hidden(model, inputs, scored):
    """Final hidden states (after the final norm) at the scored positions: (N, H)."""
    hidden = model.base_model(**inputs).last_hidden_state  # (B, T, H)
    return hidden[:, :-1][scored]


def _chunked_token_kl(policy, reference, hidden, targets, chunk_rows):
    """`token_kl` over N scored positions, each model's output layer applied `chunk_rows` rows at a
    time: (N, H), (N, H), (N,) -> sampled, exact, reference log-probs, policy entropy, each (N,)."""
    heads = policy.get_output_embeddings(), reference.get_output_embeddings()
    chunks = [token_kl(heads[0](hidden[0][i : i + chunk_rows]), heads[1](hidden[1][i : i + chunk_rows]),
                       targets[i : i + chunk_rows])
              for i in range(0, len(targets), chunk_rows)]
    return [torch.cat(terms) for terms in zip(*chunks)]


@torch.no_grad()
def sequence_kl(policy, reference, prompts, completions, pad_token_id, batch_size=64, with_diagnostics=False,
                chunk_rows=64):
    """(sampled, exact) sequence-level KL(pi || pi_ref) for each (prompt, completion), each (N,);
    with_diagnostics, also log pi_ref(completion | prompt), (N,): how natural pi_ref finds it, and
    the policy's entropy summed over the completion's positions, (N,): sharpened or diffused.

    The LM heads run on completion positions only, `chunk_rows` positions at a time (`token_kl`;
    a (64, 49,152) fp32 block is 12.5 MB; 16 to 256 rows ran the same): no (B, T, V) logits are ever
    held, and prompt and padding positions cost no head FLOPs. Like `logprobs.forward_logps(
    completion_only=True)`, this needs models whose logits are their output layer on the final
    hidden states (`logprobs.check_plain_output_layer`)."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: the first completion token is predicted from the prompt's last one")
    check_plain_output_layer(policy)
    check_plain_output_layer(reference)
    device = next(policy.parameters()).device
    sampled, exact, reference_logps, entropy = [], [], [], []
    with progress.bar(len(prompts), "KL", enabled=len(prompts) > batch_size, leave=False) as bar:
        for start in range(0, len(prompts), batch_size):
            input_ids, mask, labels = completion_batch(
                prompts[start : start + batch_size], completions[start : start + batch_size], pad_token_id
            )
            inputs = dict(input_ids=input_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
            inputs = {name: x.to(device) for name, x in inputs.items()}
            targets = labels[:, 1:].to(device)  # position t predicts token t + 1
            scored = targets != -100  # (B, T-1)
            with weights_fixed(device):
                hidden = _scored_hidden(policy, inputs, scored), _scored_hidden(reference, inputs, scored)  # (N, H)
                per_token = _chunked_token_kl(policy, reference, hidden, targets[scored], chunk_rows)
            # back to (B, T-1) and summed along each row: the same order on every device, unlike index_add_
            s, e, r, h = (t.new_zeros(scored.shape).masked_scatter_(scored, t).sum(-1).cpu() for t in per_token)
            sampled.append(s)
            exact.append(e)
            reference_logps.append(r)
            entropy.append(h)
            bar.update(len(input_ids))
    out = torch.cat(sampled), torch.cat(exact)
    return (*out, torch.cat(reference_logps), torch.cat(entropy)) if with_diagnostics else out


def distinct_bigrams(ids):
    """Share of a completion's bigrams that are distinct: 1 for no repetition, low for loops."""
    bigrams = list(zip(ids, ids[1:]))
    return len(set(bigrams)) / len(bigrams) if bigrams else 1.0


def evaluate_policy(policy, reference, prompts, reward, tokenizer, max_new_tokens, seed, batch_size=None):
    """One point of the frontier: fresh pure samples for fixed prompts, with a fixed sampling seed
    (common random numbers across checkpoints and methods), their KL to pi_ref and gold reward.

    Returns (metrics, samples): metrics has kl (exact), kl_sampled, reward, completion_tokens,
    distinct_2, reference_nll and entropy (the policy's own, per token);
    samples is a list of dicts (text, completion ids, reward, per-sample KLs).
    batch_size: prompts decoded together; default `sampling.decode_batch_size` (256 IMDb prompts at
    once). bf16 samples depend on it (the batch shape changes the kernels' sums), so runs that are
    compared must use the same.
    """
    policy_was_training = policy.training
    policy.eval()
    completions = sample(policy, prompts, max_new_tokens, temperature=1.0, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(seed),
                         batch_size=batch_size)
    kl_sampled, kl_exact, reference_logps, entropy = sequence_kl(policy, reference, prompts, completions,
                                                                 tokenizer.pad_token_id, with_diagnostics=True)
    texts = [tokenizer.decode(p + c, skip_special_tokens=True) for p, c in zip(prompts, completions)]
    rewards = reward(texts)
    policy.train(policy_was_training)
    lengths = torch.tensor([len(c) for c in completions], dtype=torch.float32)
    # is a reward gain real sentiment or gaming the judge? length, repetition, and how natural pi_ref finds the text
    reference_nll = (-reference_logps / lengths).tolist()
    entropy = (entropy / lengths).tolist()  # the policy's own per-token entropy at its samples' positions
    distinct = [distinct_bigrams(c) for c in completions]
    metrics = {"kl": kl_exact.mean().item(), "kl_sampled": kl_sampled.mean().item(), "reward": rewards.mean().item(),
               "completion_tokens": lengths.mean().item(), "distinct_2": sum(distinct) / len(distinct),
               "reference_nll": sum(reference_nll) / len(reference_nll), "entropy": sum(entropy) / len(entropy)}
    samples = [{"text": t, "completion_ids": c, "reward": r, "kl": k, "kl_sampled": s, "reference_nll": n,
                "entropy": h, "distinct_2": d}
               for t, c, r, k, s, n, h, d in zip(texts, completions, rewards.tolist(), kl_exact.tolist(),
                                                 kl_sampled.tolist(), reference_nll, entropy, distinct)]
    return metrics, samples


def preference_accuracy(policy, examples, reference_chosen_logps, reference_rejected_logps, beta, pad_token_id,
                        batch_size=16):
    """DPO's loss and implicit-reward accuracy (Eq. 7, Eq. 5) on held-out preference pairs:
    how often beta * log pi/pi_ref ranks the human-chosen answer first (ties count as wrong)."""
    losses, margins = preference_margins(policy, examples, reference_chosen_logps, reference_rejected_logps, beta,
                                         pad_token_id, batch_size)
    return {"eval_loss": losses.mean().item(), "eval_accuracy": (margins > 0).float().mean().item(),
            "eval_margin": margins.mean().item()}


@torch.no_grad()
def preference_margins(policy, examples, reference_chosen_logps, reference_rejected_logps, beta, pad_token_id,
                       batch_size=16):
    """Per held-out pair, DPO's loss (Eq. 7) and its implicit-reward margin r(x, y_w) - r(x, y_l)
    (Eq. 5): (losses (N,), margins (N,)); a pair is ranked right when its margin is > 0."""
    was_training = policy.training
    policy.eval()
    device = next(policy.parameters()).device
    losses, margins = [], []
    for start in range(0, len(examples), batch_size):
        batch = collate_pairs(examples[start : start + batch_size], pad_token_id)
        chosen, rejected = concatenated_forward(policy, {k: v.to(device) for k, v in batch.items()})
        loss, chosen_rewards, rejected_rewards = dpo_loss(
            chosen.cpu(), rejected.cpu(), reference_chosen_logps[start : start + batch_size],
            reference_rejected_logps[start : start + batch_size], beta)
        losses.append(loss)
        margins.append(chosen_rewards - rejected_rewards)
    policy.train(was_training)
    return torch.cat(losses), torch.cat(margins)


def best_of_n_kl_bound(n):
    """KL(best-of-n || pi) <= log n - (n - 1) / n (Stiennon et al. 2020; Beirami et al. 2024 show
    it is an upper bound): the x-coordinate of Best-of-N on the frontier, which trains nothing."""
    return math.log(n) - (n - 1) / n


@torch.no_grad()
def held_out_nll(model, chunks):
    """Mean next-token NLL per token of equal-length held-out chunks (every token real): the check
    that SFT moved pi_ref toward the corpus (notebook 02). Puts the model in eval mode and leaves it
    there; the ids go to the model's device."""
    ids = torch.tensor(chunks).to(next(model.parameters()).device)  # (N, T)
    return model.eval()(input_ids=ids, labels=ids).loss.item()


def best_of_n_points(learned_scores, gold_scores, texts, max_new_tokens):
    """Best-of-N's frontier points from one pool of samples per prompt: for N = 1, 2, 4, ... up to
    the pool size, the learned reward model's pick among each prompt's first N samples, scored by
    the gold reward, at KL `best_of_n_kl_bound(N)` (no policy is trained, so the KL is analytic).

    Args:
        learned_scores, gold_scores: (P, K) per prompt and sample.
        texts: the P * K decoded samples, prompt-major.
    Returns:
        (rows, samples): one metrics row per N, and per N and prompt the picked text and its reward.
    """
    k = learned_scores.shape[1]
    rows, samples, n = [], [], 1
    while n <= k:
        best = learned_scores[:, :n].argmax(-1)  # (P,)
        picked = gold_scores[torch.arange(len(best)), best]  # (P,)
        rows.append({"method": "best_of_n", "setting": n, "step": 0, "kl": best_of_n_kl_bound(n),
                     "kl_sampled": float("nan"), "reward": picked.mean().item(), "completion_tokens": max_new_tokens})
        samples += [{"step": 0, "setting": n, "text": texts[i * k + j], "reward": r}
                    for i, (j, r) in enumerate(zip(best.tolist(), picked.tolist()))]
        n *= 2
    return rows, samples
