"""Training: the one loop (`train_loop`), the steps it runs, and pi_ref's log-probs.

    train_loop                 batches, step, evaluation, checkpoint/resume, NaN stop, progress
    LoopOptions                what the loop does besides stepping, with its defaults
    fit_offline                an offline method's run through it: pi_ref's log-probs, the stepper, the loop
    PairData                   an offline run's pairs: examples, every step's batch, the forwards
    preference_step            one step of an offline method of the registry (DPO's Eq. 7, IPO, ...)
    dpo_step                   the same, for DPO
    reward_model_step          one step of the Bradley-Terry loss, Eq. 2
    sft_step                   one step of next-token NLL (SFT, the pi_ref of Section 6)
    *_stepper                  step(indices) for train_loop: this process's share, one step, metrics averaged
    reference_logps_by_batch   pi_ref's log-probs in each step's own batch layout (bf16-exact step 0)
    training_batches           the seeded index batches of every step (resume relies on them)
    cycled_batches             the same for SFT's chunks and PPO's prompts: one permutation, cycled

The metric names follow the official code and TRL: rewards/chosen, rewards/rejected,
rewards/margins, rewards/accuracies, logps/chosen, logps/rejected, plus rewards/ties,
since a strict accuracy reads 0 (not 0.5) when every pair ties, as at step 0.
"""

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from dpo_core import frozen, progress
from dpo_core.data import collate_pairs
from dpo_core.distributed import local_share, mean_over_processes
from dpo_core.evaluate import preference_margins
from dpo_core.logprobs import concatenated_forward
from dpo_core.losses import bradley_terry_loss, implicit_reward
from dpo_core.methods import objective as method_objective
from dpo_core.precision import autocast_state, check_cache_off
from dpo_core.results import cached_tensors, fingerprint
from dpo_core.stats import clustered_interval


def flush_denormals():
    """Treat subnormal floats as zero on CPU (torch.set_flush_denormal). With a large beta the
    loss saturates, sigma'(.) underflows into the subnormal range and every multiplication by
    it runs in the CPU's slow microcode path: the cpu profile's beta = 5 run took 179 s for 60
    steps with subnormals and 82 s without, with the same training log to every digit."""
    return torch.set_flush_denormal(True)


@torch.no_grad()
def reference_logps(reference_model, batch, completion_only=False):
    """(chosen, rejected) summed log-probs under the frozen reference, each (B,), no graph."""
    return concatenated_forward(reference_model, batch, completion_only=completion_only)


def pair_batch_maker(examples, pad_token_id, device="cpu", bottom_states=None):
    """indices -> the collated batch of those `make_pair` examples on `device`: the step's batch,
    and the layout pi_ref's log-probs are computed in. bottom_states (`frozen.prepare`): per
    sequence, chosen then rejected, the frozen bottom's cached states, added as batch["bottom"]."""
    def make_batch(indices):
        batch = collate_pairs([examples[i] for i in indices], pad_token_id)
        if bottom_states is not None:  # chosen rows, then rejected rows, as concatenated_inputs stacks them
            batch["bottom"] = frozen.pad_states([bottom_states[i] for i in indices] +
                                                [bottom_states[len(examples) + i] for i in indices])
        return {k: v.to(device) for k, v in batch.items()}
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


def merged_evaluator(*evaluators):
    """One `evaluate(step)` for `train_loop` from several, called in order: their metrics side by side."""
    return lambda step: {name: value for evaluate in evaluators for name, value in evaluate(step).items()}


def held_out_accuracy(policy, reference_model, examples, beta, pad_token_id, cache_dir, batch_size=16, groups=None):
    """An `evaluate(step)` for `train_loop`: DPO's loss and implicit-reward accuracy (Eqs. 7, 5) of
    `policy` on held-out pairs. pi_ref's log-probs come once, in the layout the policy is scored in
    (consecutive batches of `batch_size`), cached like the training batches' own. `groups` (each
    pair's prompt): also the accuracy's 95% interval, whole prompts resampled
    (`stats.clustered_interval`), as eval_accuracy_low and eval_accuracy_high."""
    batches = consecutive_batches(len(examples), batch_size)
    make_batch = pair_batch_maker(examples, pad_token_id, next(reference_model.parameters()).device)
    reference = stacked(cached_reference_logps(cache_dir, reference_model, examples, batches, make_batch), batches)

    def evaluate(step):
        losses, margins = preference_margins(policy, examples, *reference, beta, pad_token_id, batch_size)
        correct = (margins > 0).float()
        out = {"eval_loss": losses.mean().item(), "eval_accuracy": correct.mean().item(),
               "eval_margin": margins.mean().item()}
        if groups is not None:
            _, out["eval_accuracy_low"], out["eval_accuracy_high"] = clustered_interval(correct.numpy(), groups)
        return out

    return evaluate


def apply_loss(optimizer, loss, name, hint=""):
    """Backpropagate `loss` and take one optimizer step, unless it is not finite: then raise
    before the weights change, with `name` and `hint` in the message."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{name} is {loss.item()}; weights left unchanged{hint}")
    check_cache_off(loss.device.type)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    # free the gradients now: kept until the next step's backward, they lived through its whole
    # forward, on top of the activations (SmolLM2 bf16 step: peak RSS 4,061 -> 3,429 MB; bench/README.md)
    optimizer.zero_grad(set_to_none=True)


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


def preference_step(policy, optimizer, batch, objective, reference_logps=(None, None), forward=concatenated_forward):
    """One optimizer step of an offline preference method of the registry (`methods.METHODS`:
    DPO's Eq. 7, IPO, hinge, Preferred-FT, Unlikelihood) on a collated batch; returns the metrics
    measured before the update. A non-finite loss stops before the weights change.

    Args:
        objective: a `methods.objective`: the method with this run's setting (DPO's beta, ...) and options.
        reference_logps: pi_ref's (chosen, rejected) log-probs of this batch, in its layout
            (`reference_logps_by_batch`); the reference-free baselines ignore them.
        forward: `forward(policy, batch)` -> (chosen, rejected) log-probs;
            `frozen.concatenated_top_forward` runs only the trained top on cached bottom states.
    """
    method, beta = objective.method, objective.setting
    policy_chosen_logps, policy_rejected_logps = forward(policy, batch)
    losses = objective.losses(policy_chosen_logps, policy_rejected_logps, *reference_logps)
    apply_loss(optimizer, losses.mean(), f"{method.name} loss", " (lower the learning rate?)")
    if not method.uses_reference:
        return {"loss": losses.mean().item(), "logps/chosen": policy_chosen_logps.detach().mean().item(),
                "logps/rejected": policy_rejected_logps.detach().mean().item()}
    chosen_rewards = implicit_reward(policy_chosen_logps, reference_logps[0], beta).detach()  # Eq. 5
    rejected_rewards = implicit_reward(policy_rejected_logps, reference_logps[1], beta).detach()
    return dpo_metrics(losses, chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps)


def preference_stepper(policy, optimizer, schedule, make_batch, objective, reference_by_batch=None,
                       forward=concatenated_forward, accelerator=None):
    """`step(indices)` for `train_loop`: this process's share of the pairs (`distributed.local_share`),
    collated (`make_batch`), one `preference_step`, the scheduler stepped, and the metrics averaged
    over processes. `reference_by_batch`: pi_ref's log-probs per local batch, from
    `cached_reference_logps` over the same local shares."""
    def step(indices):
        indices = local_share(indices, accelerator)  # all of them in one process
        reference = reference_by_batch[tuple(indices)] if reference_by_batch is not None else (None, None)
        device = next(policy.parameters()).device
        policy.train()
        metrics = preference_step(policy, optimizer, make_batch(indices), objective,
                                  [None if x is None else x.to(device) for x in reference], forward)
        schedule.step()
        return mean_over_processes(metrics, accelerator)
    return step


@dataclass
class PairData:
    """An offline run's pairs as its steps meet them, and how the policy and pi_ref score them."""
    examples: list  # `data.make_pair` examples
    batches: list  # every step's pair indices, all processes' (`training_batches`): a pure function of the run
    make_batch: Callable  # indices -> the collated batch on the device (`pair_batch_maker`)
    forward: Callable = concatenated_forward  # (policy, batch) -> (chosen, rejected) log-probs, each (B,)
    reference_forward: Callable = concatenated_forward  # the same for pi_ref (its log-probs are cached)


def fit_offline(run, policy, reference_model, objective, optimizer, schedule, pairs, options=None):
    """One run of an offline method of the registry (`methods`: DPO's Eq. 7, IPO, ...) on `pairs`:
    pi_ref's log-probs of every step's batch in that batch's own layout, cached in `run.cache`
    (`cached_reference_logps`; reference-free methods skip them), then `preference_stepper`
    through `train_loop`, one step per batch. Call it inside `precision.autocast`.

    Args:
        run: a `run.Run`: its cache and its accelerator (None: one process).
        policy: what each step differentiates: the model, or a `logprobs.SequenceScorer` around it
            (DDP-wrapped under several processes); `pairs.forward` scores it, `pairs.reference_forward` pi_ref.
        objective: `methods.objective(name, setting, **options)`.
        pairs: a `PairData`.
        options: `LoopOptions` (evaluation, logging, checkpoint, progress).
    Returns:
        (train_log, eval_rows) of `train_loop`.
    """
    reference_by_batch = None
    if objective.method.uses_reference:
        reference_by_batch = cached_reference_logps(run.cache, reference_model, pairs.examples,
                                                    [local_share(b, run.accelerator) for b in pairs.batches],
                                                    pairs.make_batch, pairs.reference_forward)
    step = preference_stepper(policy, optimizer, schedule, pairs.make_batch, objective, reference_by_batch,
                              pairs.forward, run.accelerator)
    return train_loop(step, pairs.batches, options)


def dpo_step(policy, optimizer, batch, reference_chosen_logps, reference_rejected_logps, beta, label_smoothing=0.0,
             forward=concatenated_forward):
    """One optimizer step of Eq. 7 (`preference_step` with the registry's DPO)."""
    return preference_step(policy, optimizer, batch, method_objective("dpo", beta, label_smoothing=label_smoothing),
                           (reference_chosen_logps, reference_rejected_logps), forward)


def reward_model_step(model, optimizer, batch):
    """One optimizer step of the Bradley-Terry loss (Eq. 2) for a `reward.ScalarRewardModel`."""
    chosen, rejected = model.score_pairs(batch)
    loss = bradley_terry_loss(chosen, rejected).mean()
    apply_loss(optimizer, loss, "reward-model loss")
    return {"loss": loss.item(), "accuracy": (chosen > rejected).float().mean().item()}


def reward_model_stepper(model, optimizer, make_batch, schedule=None, accelerator=None):
    """`step(indices)` for `train_loop`: this process's share of the pairs, collated by `make_batch`,
    one `reward_model_step` (Eq. 2), the scheduler stepped, the metrics averaged over processes."""
    def step(indices):
        model.train()
        metrics = reward_model_step(model, optimizer, make_batch(local_share(indices, accelerator)))
        if schedule is not None:
            schedule.step()
        return mean_over_processes(metrics, accelerator)
    return step


def sft_step(model, optimizer, input_ids, attention_mask):
    """One step of next-token NLL (mean over real tokens) on a right-padded (B, T) batch."""
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    apply_loss(optimizer, loss, "SFT loss")
    return loss.item()


def sft_stepper(model, optimizer, chunks, accelerator=None):
    """`step(indices)` for `train_loop` on equal-length token chunks (notebook 02): this process's
    share, one `sft_step` (every row full length, so the mean of the processes' means is the mean
    over tokens), the loss averaged over processes."""
    def step(indices):
        ids = torch.tensor([chunks[i] for i in local_share(indices, accelerator)])  # (B, T)
        ids = ids.to(next(model.parameters()).device)
        model.train()
        return mean_over_processes({"loss": sft_step(model, optimizer, ids, torch.ones_like(ids))}, accelerator)
    return step


def warmup_lr(optimizer, warmup_steps):
    """Linear warm-up from 0 to the optimizer's lr over `warmup_steps`, then constant
    (the paper: 150 steps to 1e-6 with RMSprop)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))


def rmsprop_with_warmup(parameters, learning_rate, warmup_steps):
    """The paper's optimizer for every DPO-style stage (App. B): RMSprop at `learning_rate` after a
    linear warm-up over `warmup_steps` (the paper: 1e-6 and 150). Returns (optimizer, schedule).

    torch's RMSprop (alpha 0.99, no momentum) has no bias correction: its running mean of squared
    gradients starts at 0, so step t is amplified by about 1/sqrt(1 - 0.99^t) (3.2x at t = 10, 1.3x
    at 100). The paper's long warm-up hides that; a short one exposes it."""
    optimizer = torch.optim.RMSprop(parameters, lr=learning_rate)
    return optimizer, warmup_lr(optimizer, warmup_steps)


OFFLINE_OPTIMIZERS = ("rmsprop", "adam")


def offline_optimizer(name, parameters, learning_rate, warmup_steps):
    """(optimizer, schedule) for an offline method's run: "rmsprop", the paper's
    (`rmsprop_with_warmup`), or "adam", bias-corrected with momentum (betas 0.9, 0.999; PPO's
    optimizer in notebook 06), the control that tells an optimizer effect from a method's."""
    if name == "rmsprop":
        return rmsprop_with_warmup(parameters, learning_rate, warmup_steps)
    if name != "adam":
        raise ValueError(f"optimizer must be one of {OFFLINE_OPTIMIZERS}, got {name!r}")
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    return optimizer, warmup_lr(optimizer, warmup_steps)


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
    """The index batch of every step of `train_loop` (and `fit_offline`), a pure function of its arguments (resume
    and `reference_logps_by_batch` rely on that): seeded shuffles (`pair_batches`), bucketed by
    length when `lengths` are given (`length_bucketed`)."""
    batches = pair_batches(n_pairs, batch_size, n_steps, seed)
    return batches if lengths is None else length_bucketed(batches, lengths, seed)


def cycled_batches(n_items, batch_size, n_steps, seed):
    """The index batch of every step for SFT's chunks and PPO's prompts: one seeded permutation,
    read in order and wrapped around. Step i (from 1) takes positions i*B .. i*B + B - 1 (mod n):
    the first pass starts at position B, as every run of these notebooks has been made."""
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed)).tolist()
    return [[order[(i * batch_size + j) % n_items] for j in range(batch_size)] for i in range(1, n_steps + 1)]


def pair_lengths(examples):
    """Per `make_pair` example, the longer of its two sequences: what it costs in a padded batch."""
    return [max(len(e["chosen_input_ids"]), len(e["rejected_input_ids"])) for e in examples]


def evaluation_steps(n_steps, every, early=()):
    """The steps a run evaluates after: 0 (pi_ref), every `every`-th, the last, and `early` ones
    (dense early: DPO's reward moves most in its first tens of steps)."""
    return sorted({0, n_steps, *range(every, n_steps, every), *(s for s in early if 0 <= s <= n_steps)})


@dataclass
class LoopOptions:
    """What `train_loop` does besides stepping, with its defaults (`run.Run.loop` makes one per run)."""
    evaluate: Optional[Callable] = None  # evaluate(step) -> one evaluation's metrics (a frontier point); None: none
    eval_at: Sequence[int] = ()  # the steps evaluated after (0: before training; `evaluation_steps`)
    log_every: int = 10  # print the step's metrics every N steps and after the last
    checkpoint: Any = None  # a `checkpoint.Checkpoint`: resume from it, save every checkpoint.every steps and at the end
    on_evaluate: Optional[Callable] = None  # on_evaluate(train_log, eval_rows) after each evaluation (live curves)
    desc: str = "train"  # the progress bar's label
    show_progress: bool = True  # False on all but the main process of a multi-process run


def train_loop(step, batches, options=None):
    """The one optimisation loop: SFT, DPO and the baselines, the reward model, PPO, the gold
    reward's fine-tune. Batching, logging, evaluation, checkpoints and resume, the NaN stop and
    the progress bar live here once.

    Args:
        step: `step(indices)` runs one optimizer step on those items and returns its metrics.
        batches: the index batch of every step (`training_batches`, `cycled_batches`): one step
            per batch. It must be a pure function of the run's parameters, or resume breaks.
        options: `LoopOptions`. With a checkpoint the loop resumes from it when it holds a state
            of this run, and saves to it every `checkpoint.every` steps and after the last.
    Returns:
        (train_log, eval_rows): lists of dicts, one per step and one per evaluation.
    """
    options = options or LoopOptions()
    n_steps, evaluate, checkpoint = len(batches), options.evaluate, options.checkpoint
    eval_at = set(options.eval_at) if evaluate is not None else set()
    resumed = checkpoint.restore() if checkpoint is not None else None
    first, train_log, eval_rows = (1, [], []) if resumed is None else (resumed[0] + 1, resumed[1], resumed[2])
    last_saved = None if resumed is None else first - 1

    def evaluate_at(i):
        start = time.perf_counter()
        eval_rows.append({"step": i, **evaluate(i)})
        took = time.perf_counter() - start  # printed: what an evaluation costs next to a step (the bar's rate)
        bar.write(f"eval at step {i} ({took:.0f} s): "
                  + " ".join(f"{k} {v:.4g}" for k, v in eval_rows[-1].items() if k != "step"))
        if options.on_evaluate is not None:
            options.on_evaluate(train_log, eval_rows)

    with progress.bar(n_steps, options.desc, initial=first - 1, enabled=options.show_progress) as bar:
        if resumed is None and 0 in eval_at:
            evaluate_at(0)
        for i in range(first, n_steps + 1):
            try:
                train_log.append({"step": i, **step(batches[i - 1])})
            except FloatingPointError as err:
                if checkpoint is None:
                    raise FloatingPointError(f"step {i}: {err}") from err
                saved = f"holds step {last_saved}" if last_saved is not None else "was not written yet"
                raise FloatingPointError(f"step {i}: {err}; the last good checkpoint {checkpoint.path} {saved}") \
                    from err
            bar.update()
            bar.set_postfix(loss=f"{train_log[-1].get('loss', float('nan')):.4f}", refresh=False)
            if i % options.log_every == 0 or i == n_steps:
                bar.write(f"step {i}: " + " ".join(f"{k} {v:.4f}" for k, v in train_log[-1].items() if k != "step"))
            if i in eval_at:
                evaluate_at(i)
            if checkpoint is not None and checkpoint.due(i, n_steps):
                checkpoint.save(i, train_log, eval_rows, final=i == n_steps)
                last_saved = i
    return train_log, eval_rows
