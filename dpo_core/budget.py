"""Methods matched on compute: the one budget rule of the frontier, and what each method gets.

The rule: **every trained method gets the same number of sequences through a backward pass.**

    offline method (DPO, IPO, hinge, Preferred-FT, Unlikelihood)   2 x batch_size per step
                                                                   (chosen and rejected go through
                                                                   the one differentiated forward)
    PPO, PPO-GT                                                    prompts_per_step x ppo_epochs per
                                                                   iteration (each rollout once per epoch)

Why this rule: it counts the work every method must do to learn (a backward pass is two thirds of a
step's FLOPs) on any machine, unlike wall time, and it is symmetric in information: with PPO's 2
epochs, one PPO rollout (one gold query) and one DPO pair (one gold comparison) each cost 2
sequences, so a DPO run matched to PPO-GT sees as many gold-labelled comparisons as PPO-GT receives
gold scores of its own samples. What the rule leaves out, and each method's table row says: PPO's
sampling and its reference and value passes (extra forward FLOPs, `flops`), and the shared pipeline
that every method reads (SFT, notebook 03's samples and labels, the evaluations).

    backward_sequences(...)   a run's sequences through backward, for either kind of method
    offline_steps(...)        an offline method's steps within a budget of sequences
    ppo_iterations(...)       PPO's iterations within a budget of sequences
    flops(...)                a run's training FLOPs (forward 2N per token, backward 4N; Kaplan et al.)
    budget_row(...)           one method's row of the README's compute table
"""

import math


def offline_backward_sequences(steps, batch_size):
    """Sequences through backward in `steps` steps of `batch_size` pairs: both sides of every pair."""
    return 2 * batch_size * steps


def ppo_backward_sequences(iterations, prompts_per_step, ppo_epochs):
    """Sequences through backward in `iterations` PPO iterations: every rollout, once per epoch."""
    return iterations * prompts_per_step * ppo_epochs


def offline_steps(budget_sequences, batch_size):
    """The most steps of `batch_size` pairs that stay within `budget_sequences` (floor: never over)."""
    if budget_sequences < 0 or batch_size <= 0:
        raise ValueError(f"need a budget >= 0 and batch_size > 0, got {budget_sequences} and {batch_size}")
    return budget_sequences // (2 * batch_size)


def ppo_iterations(budget_sequences, prompts_per_step, ppo_epochs):
    """The most PPO iterations that stay within `budget_sequences` (floor: never over)."""
    if budget_sequences < 0 or prompts_per_step <= 0 or ppo_epochs <= 0:
        raise ValueError("need a budget >= 0, prompts_per_step > 0 and ppo_epochs > 0")
    return budget_sequences // (prompts_per_step * ppo_epochs)


def forward_flops_per_token(n_parameters, embedding_parameters, hidden_size, vocab_size):
    """A decoder's forward FLOPs per token: 2 per non-embedding weight, plus the output layer's
    2 x hidden x vocab (tied to the embedding, so not among the non-embedding weights)."""
    return 2 * (n_parameters - embedding_parameters) + 2 * hidden_size * vocab_size


def flops(kind, forward_per_token, tokens_per_sequence, *, steps=0, batch_size=0, prompts_per_step=0,
          ppo_epochs=0, new_tokens=0):
    """A run's training FLOPs (estimate; backward = 2 x forward).

    offline: each step, both sides of each pair forward and backward, and pi_ref's forward of them
    once (its log-probs are cached per batch). ppo: each iteration, `new_tokens` sampled per rollout
    (one forward per token), the old log-probs with values and pi_ref's log-probs (two forwards),
    then `ppo_epochs` forward and backward passes. The gold or learned scorer is not counted (a
    22M-parameter classifier, under 3% of an iteration)."""
    if kind == "offline":
        sequences = 2 * batch_size * steps
        return sequences * tokens_per_sequence * forward_per_token * (3 + 1)
    if kind == "ppo":
        rollouts = prompts_per_step * steps
        per_rollout = new_tokens + tokens_per_sequence * (2 + 3 * ppo_epochs)
        return rollouts * per_rollout * forward_per_token
    raise ValueError(f"kind must be offline or ppo, got {kind!r}")


def budget_row(method, kind, *, steps, batch_size=0, prompts_per_step=0, ppo_epochs=0, minibatch_size=0,
               gold_queries, forward_per_token, tokens_per_sequence, new_tokens=0, wall_s=math.nan):
    """One method's row of the compute table: gold queries, optimizer steps, sequences through
    backward, training TFLOPs (estimate) and training wall time (minutes). `steps`: optimizer steps
    of an offline method, iterations of PPO (each `ppo_epochs` passes of minibatches)."""
    if kind == "offline":
        sequences, optimizer_steps = offline_backward_sequences(steps, batch_size), steps
    else:
        sequences = ppo_backward_sequences(steps, prompts_per_step, ppo_epochs)
        optimizer_steps = steps * ppo_epochs * math.ceil(prompts_per_step / minibatch_size)
    total = flops(kind, forward_per_token, tokens_per_sequence, steps=steps, batch_size=batch_size,
                  prompts_per_step=prompts_per_step, ppo_epochs=ppo_epochs, new_tokens=new_tokens)
    return {"method": method, "gold_queries": gold_queries, "optimizer_steps": optimizer_steps,
            "backward_sequences": sequences, "tflops": total / 1e12, "wall_minutes": wall_s / 60}
