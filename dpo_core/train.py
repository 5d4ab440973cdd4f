"""One DPO optimisation step and the metrics logged around it.

The metric names follow the official code and TRL: rewards/chosen, rewards/rejected,
rewards/margins, rewards/accuracies, logps/chosen, logps/rejected, plus rewards/ties,
since a strict accuracy reads 0 (not 0.5) when every pair ties, as at step 0.
"""

import functools
from pathlib import Path

import torch

from dpo_core.data import collate_pairs
from dpo_core.logprobs import concatenated_forward
from dpo_core.losses import bradley_terry_loss, dpo_loss
from dpo_core.precision import autocast_state, check_cache_off
from dpo_core.results import cached_tensors, fingerprint


def flush_denormals():
    """Treat subnormal floats as zero on CPU (torch.set_flush_denormal). With a large beta the
    loss saturates, sigma'(.) underflows into the subnormal range and every multiplication by
    it runs in the CPU's slow microcode path: the cpu profile's beta = 5 run took 179 s for 60
    steps with subnormals and 82 s without, with the same training log to every digit."""
    return torch.set_flush_denormal(True)


def disable_dropout(model):
    """Dropout off in every module: with it on, pi != pi_ref at step 0 and the reference
    log-probs are noise (the official code and TRL do the same)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


@torch.no_grad()
def reference_logps(reference_model, batch, completion_only=False):
    """(chosen, rejected) summed log-probs under the frozen reference, each (B,), no graph."""
    return concatenated_forward(reference_model, batch, completion_only=completion_only)


def pair_batch_maker(examples, pad_token_id, device="cpu"):
    """indices -> the collated batch of those `make_pair` examples on `device` (the DPO step's
    batch, and the layout pi_ref's log-probs are computed in)."""
    def make_batch(indices):
        return {k: v.to(device) for k, v in collate_pairs([examples[i] for i in indices], pad_token_id).items()}
    return make_batch


def consecutive_batches(n, batch_size):
    """[0..B-1], [B..2B-1], ...: the layout of an evaluation pass over n pairs."""
    return [list(range(start, min(n, start + batch_size))) for start in range(0, n, batch_size)]


def precompute_reference_logps(reference_model, examples, pad_token_id, batch_size=16, completion_only=False):
    """pi_ref's (chosen, rejected) log-probs of every `make_pair` example, each (N,), in consecutive
    batches of `batch_size`: the layout `evaluate.preference_accuracy` scores the policy in.
    completion_only: the path the policy will be scored with (`logprobs.forward_logps`)."""
    device = next(reference_model.parameters()).device
    forward = functools.partial(concatenated_forward, completion_only=completion_only)
    batches = consecutive_batches(len(examples), batch_size)
    by_batch = reference_logps_by_batch(reference_model, batches, pair_batch_maker(examples, pad_token_id, device),
                                        forward)
    return stacked(by_batch, batches)


def stacked(by_batch, batches):
    """(chosen (N,), rejected (N,)) in the order of `batches` from a `reference_logps_by_batch` dict."""
    return tuple(torch.cat([by_batch[tuple(b)][side] for b in batches]) for side in (0, 1))


@torch.no_grad()
def reference_logps_by_batch(reference_model, batches, make_batch, forward=concatenated_forward):
    """pi_ref's (chosen, rejected) log-probs of every training batch, each computed in that
    batch's own layout: the same pairs in the same order, collated and padded the same way, and
    the same `forward` as the policy's step. In bf16 a sequence's log-prob depends on the batch
    it sits in (0.1 nats on SmolLM2, against 1e-5 in fp32; precision.py), so only this keeps
    step 0 exactly at loss ln 2 and zero rewards. Run it in the same `precision.autocast`.

    Args:
        batches: lists of pair indices, as the loop will meet them (`pair_batches`).
        make_batch: indices -> a collated batch on the model's device (the step's own).
    Returns:
        {tuple(indices): (chosen (B,), rejected (B,))}, fp32 on the CPU.
    """
    out = {}
    for indices in batches:
        if tuple(indices) not in out:
            chosen, rejected = forward(reference_model, make_batch(indices))
            out[tuple(indices)] = (chosen.float().cpu(), rejected.float().cpu())
    return out


def cached_reference_logps(cache_dir, reference_model, examples, batches, make_batch, forward=concatenated_forward):
    """`reference_logps_by_batch`, stored in `cache_dir/reference-<fingerprint>.safetensors` and
    loaded from there by any later run with the same reference weights, pairs, batches, forward
    and precision (a rerun, another beta or method with the same seed; `results.cached_tensors`).
    An unreadable file is recomputed."""
    batches = [list(b) for b in batches]
    key = fingerprint(reference_model, [[e[k] for k in ("chosen_input_ids", "chosen_labels", "rejected_input_ids",
                                                         "rejected_labels")] for e in examples],
                      batches, forward, autocast_state())
    unique = list({tuple(b): b for b in batches}.values())

    def compute():
        by_batch = reference_logps_by_batch(reference_model, unique, make_batch, forward)
        return {"chosen": torch.cat([by_batch[tuple(b)][0] for b in unique]).contiguous(),
                "rejected": torch.cat([by_batch[tuple(b)][1] for b in unique]).contiguous()}

    n_rows = sum(map(len, unique))
    stored = cached_tensors(Path(cache_dir) / f"reference-{key[:24]}.safetensors", compute, "reference",
                            valid=lambda t: len(t["chosen"]) == len(t["rejected"]) == n_rows)
    sizes = [len(b) for b in unique]
    return {tuple(b): (c, r) for b, c, r in zip(unique, stored["chosen"].split(sizes), stored["rejected"].split(sizes))}


def apply_loss(optimizer, loss, name, hint=""):
    """Backpropagate `loss` and take one optimizer step, unless it is not finite: then raise
    before the weights change, with `name` and `hint` in the message."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{name} is {loss.item()}; weights left unchanged{hint}")
    check_cache_off(loss.device.type)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


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


def dpo_step(policy, optimizer, batch, reference_chosen_logps, reference_rejected_logps, beta, label_smoothing=0.0,
             forward=concatenated_forward):
    """One optimizer step of Eq. 7 on a collated preference batch; returns the metrics
    measured before the update. A non-finite loss stops before the weights change.
    `forward(policy, batch)` -> (chosen, rejected) log-probs; `frozen.concatenated_top_forward`
    runs only the trained top on cached bottom states."""
    policy_chosen_logps, policy_rejected_logps = forward(policy, batch)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        beta,
        label_smoothing,
    )
    loss = losses.mean()
    apply_loss(optimizer, loss, "DPO loss", " (lower the learning rate?)")
    return dpo_metrics(losses, chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps)


def transformer_blocks(model):
    """The ModuleList of transformer blocks of a causal LM (Llama-style `layers`, GPT-2 `h`)."""
    base = model.base_model
    for name in ("layers", "h"):
        if isinstance(getattr(base, name, None), torch.nn.ModuleList):
            return getattr(base, name)
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}")


def train_top_layers(model, n_layers):
    """Freeze everything but the top `n_layers` blocks and the final norm (n_layers=0: train all).

    A CPU lever: the (tied) embedding and LM head stay frozen, so the optimizer touches about
    a tenth of SmolLM2's weights. Returns the number of trainable parameters.
    """
    if n_layers > 0:
        model.requires_grad_(False)
        transformer_blocks(model)[-n_layers:].requires_grad_(True)
        for name in ("norm", "ln_f"):
            if hasattr(model.base_model, name):
                getattr(model.base_model, name).requires_grad_(True)
    else:
        model.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def reference_free_step(policy, optimizer, batch, objective, forward=concatenated_forward):
    """One optimizer step of a baseline that needs no reference model (Preferred-FT,
    Unlikelihood): `objective(policy_chosen_logps, policy_rejected_logps)` -> (B,) losses."""
    policy_chosen_logps, policy_rejected_logps = forward(policy, batch)
    loss = objective(policy_chosen_logps, policy_rejected_logps).mean()
    apply_loss(optimizer, loss, "loss", " (lower the learning rate?)")
    return {"loss": loss.item(), "logps/chosen": policy_chosen_logps.detach().mean().item(),
            "logps/rejected": policy_rejected_logps.detach().mean().item()}


def reward_model_step(model, optimizer, batch):
    """One optimizer step of the Bradley-Terry loss (Eq. 2) for a `reward.ScalarRewardModel`."""
    chosen, rejected = model.score_pairs(batch)
    loss = bradley_terry_loss(chosen, rejected).mean()
    apply_loss(optimizer, loss, "reward-model loss")
    return {"loss": loss.item(), "accuracy": (chosen > rejected).float().mean().item()}


def sft_step(model, optimizer, input_ids, attention_mask):
    """One step of next-token NLL (mean over real tokens) on a right-padded (B, T) batch."""
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    apply_loss(optimizer, loss, "SFT loss")
    return loss.item()


def warmup_lr(optimizer, warmup_steps):
    """Linear warm-up from 0 to the optimizer's lr over `warmup_steps`, then constant
    (the paper: 150 steps to 1e-6 with RMSprop)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))


def pair_batches(n_pairs, batch_size, n_steps, seed):
    """Index batches for `n_steps` steps: seeded shuffles of all pairs, epoch after epoch."""
    g = torch.Generator().manual_seed(seed)
    order = []
    while len(order) < n_steps * batch_size:
        order += torch.randperm(n_pairs, generator=g).tolist()
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(n_steps)]


def length_bucketed(batches, lengths, seed, window=16):
    """`batches` regrouped so that each holds pairs of similar length: less padding per step.

    Within each run of `window` consecutive batches, the pairs are sorted by length, cut into
    batches of the same sizes, and those batches put back in a seeded random order. Every pair
    still appears at the same step give or take `window`, and the result is still a pure
    function of the seed (resume relies on that). Long prompts and answers of varied length
    (TL;DR, HH) waste most to padding; the IMDb pairs of the cpu profile only 7%.

    Args:
        batches: lists of pair indices, as `pair_batches` gives them.
        lengths: per pair index, its padded cost (e.g. the longer of its two sequences).
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(batches), window):
        group = batches[start : start + window]
        ordered = sorted((i for batch in group for i in batch), key=lambda i: lengths[i])
        sizes = [len(batch) for batch in group]
        cuts = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
        regrouped = [ordered[a:b] for a, b in zip(cuts, cuts[1:])]
        out += [regrouped[k] for k in torch.randperm(len(regrouped), generator=g).tolist()]
    return out


def training_batches(n_pairs, batch_size, n_steps, seed, lengths=None):
    """The index batch of every step of `train_on_pairs`, a pure function of its arguments (resume
    and `reference_logps_by_batch` rely on that): seeded shuffles (`pair_batches`), bucketed by
    length when `lengths` are given (`length_bucketed`)."""
    batches = pair_batches(n_pairs, batch_size, n_steps, seed)
    return batches if lengths is None else length_bucketed(batches, lengths, seed)


def pair_lengths(examples):
    """Per `make_pair` example, the longer of its two sequences: what it costs in a padded batch."""
    return [max(len(e["chosen_input_ids"]), len(e["rejected_input_ids"])) for e in examples]


def train_on_pairs(step, pairs, n_steps, batch_size, seed, evaluate, eval_every, log_every=10, checkpoint=None,
                   lengths=None):
    """The loop shared by DPO and the offline baselines.

    Args:
        step: `step(indices)` runs one optimizer step on those pairs and returns its metrics.
        pairs: number of preference pairs available.
        evaluate: `evaluate(step_number)` returns the metrics of one frontier point; called
            before training, every `eval_every` steps and after the last step.
        checkpoint: a `checkpoint.Checkpoint`; the loop resumes from it when it holds a state of
            this run, and saves to it every `checkpoint.every` steps and after the last.
        lengths: per pair, its length; given, batches are bucketed by length (`length_bucketed`).
    Returns:
        (train_log, eval_rows): lists of dicts, one per step and one per evaluation.
    """
    resumed = checkpoint.restore() if checkpoint is not None else None
    if resumed is None:
        first, train_log, eval_rows = 1, [], [{"step": 0, **evaluate(0)}]
        if len(eval_rows[-1]) > 1:  # stages without an evaluation (lambda n: {}) have nothing to say
            print(f"step 0: {eval_rows[-1]}")
    else:
        done, train_log, eval_rows = resumed
        first = done + 1
    last_saved = None if resumed is None else first - 1
    batches = training_batches(pairs, batch_size, n_steps, seed, lengths)  # the data position is the step
    for i in range(first, n_steps + 1):
        try:
            train_log.append({"step": i, **step(batches[i - 1])})
        except FloatingPointError as err:
            if checkpoint is None:
                raise FloatingPointError(f"step {i}: {err}") from err
            saved = f"holds step {last_saved}" if last_saved is not None else "was not written yet"
            raise FloatingPointError(f"step {i}: {err}; the last good checkpoint {checkpoint.path} {saved}") from err
        if i % log_every == 0 or i == n_steps:
            print(f"step {i}: " + " ".join(f"{k} {v:.4f}" for k, v in train_log[-1].items() if k != "step"))
        if i % eval_every == 0 or i == n_steps:
            eval_rows.append({"step": i, **evaluate(i)})
            print(f"eval at step {i}: {eval_rows[-1]}")
        if checkpoint is not None and checkpoint.due(i, n_steps):
            checkpoint.save(i, train_log, eval_rows, final=i == n_steps)
            last_saved = i
    return train_log, eval_rows
