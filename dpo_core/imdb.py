"""The IMDb experiment's plumbing (notebooks 02-10): what each stage reads from the stages before
it, and the one evaluation every policy of the frontier gets.

    preferences(...)          notebook 03's outputs: pairs, examples, test prompts, pi_ref's directory
    policy_and_reference(...) pi_ref twice: the policy to train and the frozen reference
    load_reward_model(...)    notebook 05's learned reward model, ready to score ids
    load_run_policy(...)      pi_ref, or pi_ref with a training run's weights, and its method and setting
    frontier_evaluator(...)   evaluate(step) for `train.train_loop`: one frontier point, samples kept;
                              step 0 (pi = pi_ref) computed once and shared by every run
    trajectory(run_dir)       a run's evaluations per prompt, for intervals and paired comparisons
    loop_share(run_dir)       looping completions per evaluation: sentiment or gaming?
    sample_pool(...)          K pure samples per prompt with their texts (notebooks 03, 07)
    continuations(...)        each held-out review's own next tokens: what win rates judge against
    preference_metrics(...)   notebook 03's summary of its pairs
    reference_samples(...)    pi_ref's distinct samples in the pairs (PPO's reward normalisation)
    normalized_on_pi_ref(...) a score rescaled on those samples (PPO's training signal)
    prefixed_texts(...)       prefix + completion as the gold judge reads it
    judged_pairs(...)         notebook 03's pairs as text, with their gold margin (the local judge's agreement)
    win_rate_items(...)       notebook 09's judged samples split into prefix and continuations
"""

import json
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pandas as pd
import torch

from dpo_core import results
from dpo_core.data import make_pair
from dpo_core.evaluate import best_of_n_kl_bound, evaluate_policy
from dpo_core.ppo import normalized
from dpo_core.precision import autocast_state
from dpo_core.reward import ScalarRewardModel, tie_rate
from dpo_core.sampling import sample
from dpo_core.stats import gap_summary


def preferences(results_root, profile, run="main"):
    """Notebook 03's run `run`: a namespace with dir, params, sft_dir (pi_ref's run), pairs (the
    Dataset), examples (`make_pair` dicts), train_prompts (the distinct prompts of the pairs, sorted),
    test_prompts, test_references and max_length."""
    prefs_dir, prefs = results.upstream(results_root, profile, "03_imdb_preferences", run)
    sft_dir, _ = results.upstream(results_root, profile, "02_imdb_sft", prefs["sft_run"])
    pairs = datasets.load_from_disk(str(prefs_dir / "pairs"))
    max_length = prefs["max_prefix_tokens"] + prefs["max_new_tokens"]
    examples = [make_pair(p, c, r, max_length) for p, c, r in zip(pairs["prompt_ids"], pairs["chosen_ids"],
                                                                    pairs["rejected_ids"])]
    return SimpleNamespace(dir=prefs_dir, params=prefs, sft_dir=sft_dir, pairs=pairs, examples=examples,
                           train_prompts=[list(p) for p in sorted({tuple(p) for p in pairs["prompt_ids"]})],
                           test_prompts=json.loads((prefs_dir / "test_prompts.json").read_text()),
                           test_references=json.loads((prefs_dir / "test_references.json").read_text()),
                           max_length=max_length)


def policy_and_reference(prefs):
    """pi_ref twice from notebook 02's run: (policy to train, frozen reference, tokenizer)."""
    policy, tokenizer = results.load_model(prefs.sft_dir / "model")
    reference, _ = results.load_model(prefs.sft_dir / "model")  # a separate copy, never trained
    return policy, reference.requires_grad_(False), tokenizer


def load_reward_model(results_root, profile, run, sft_dir):
    """Notebook 05's Bradley-Terry reward model (Eq. 2) on pi_ref's body, eval mode."""
    rm_dir, _ = results.upstream(results_root, profile, "05_imdb_reward_model", run)
    model = ScalarRewardModel(results.load_model(sft_dir / "model")[0])
    results.load_trained_parameters(model, rm_dir / "reward_model.safetensors")
    return model.eval()


def load_run_policy(results_root, profile, spec, sft_dir):
    """(model, tokenizer, method, setting) for `spec`: "sft" (pi_ref) or "<notebook>/<run>" (pi_ref
    with that finished run's trained weights; its method and setting from its params)."""
    model, tokenizer = results.load_model(sft_dir / "model")
    if spec == "sft":
        return model, tokenizer, "sft", 0.0
    notebook, run = spec.split("/")
    run_path, params = results.upstream(results_root, profile, notebook, run)
    results.load_trained_parameters(model, run_path / "policy.safetensors")
    metrics = pd.read_csv(run_path / "metrics.csv")
    return model, tokenizer, params["method"], float(metrics.setting.iloc[0])


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# part of the cached pi_ref point's key: raise it whenever the point's computation changes (the
# sampler's batches or draw, the KL's arithmetic), so a results folder never serves an old point
POINT_VERSION = "3: 256-row decode batches, two-level draw, completion-only KL, the policy's entropy"


def frontier_evaluator(policy, reference, prompts, gold, tokenizer, max_new_tokens, seed, samples, cache_dir):
    """`evaluate(step)` for `train.train_loop`: one frontier point (`evaluate.evaluate_policy`:
    fresh pure samples with one seed, exact and sampled KL, gold reward), its samples appended to
    `samples` with their step. While the policy still equals pi_ref (step 0) the point is the same
    for every run, so it is computed once, cached in `cache_dir` by pi_ref's weights, the prompts,
    the seed, the judge, the precision and POINT_VERSION, and loaded by every later run."""
    def point():
        metrics, rows = evaluate_policy(policy, reference, prompts, gold, tokenizer, max_new_tokens, seed)
        return {"metrics": metrics, "samples": rows}

    def evaluate(step):
        if step == 0 and same_weights(policy, reference):
            key = results.fingerprint(reference, prompts, seed, max_new_tokens, gold.model, autocast_state(),
                                      POINT_VERSION)
            value = results.cached_json(cache_dir / f"pi-ref-point-{key[:24]}.json", point, "pi_ref point")
        else:
            value = point()
        samples.extend({"step": step, **s} for s in value["samples"])
        return value["metrics"]

    return evaluate


def trajectory(run_dir, by="step"):
    """A finished run's evaluations per prompt, from its samples.jsonl: {"step": (points,),
    "kl": (points, prompts), "reward": (points, prompts)}, in `by` order (Best-of-N: by "setting",
    N, with its analytic KL bound for every prompt)."""
    frame = pd.read_json(Path(run_dir) / "samples.jsonl", lines=True)
    if "kl" not in frame:  # Best-of-N trains nothing: its KL is the analytic bound
        frame["kl"] = frame["setting"].map(best_of_n_kl_bound)
    groups = [group for _, group in frame.groupby(by, sort=True)]
    return {by: np.array([g[by].iloc[0] for g in groups]), "kl": np.stack([g["kl"].to_numpy() for g in groups]),
            "reward": np.stack([g["reward"].to_numpy() for g in groups])}


def loop_share(run_dir, threshold=0.8):
    """Is a reward gain sentiment or the policy gaming the classifier with degenerate text? Per
    evaluation step of a finished run (its samples.jsonl): the share of completions that loop
    (`distinct_2` below `threshold`: under 80% of their bigrams distinct, e.g. ". . . . ."), the
    mean gold reward of those and of the rest, and pi_ref's mean per-token NLL of the samples.
    Returns a DataFrame indexed by step."""
    frame = pd.read_json(Path(run_dir) / "samples.jsonl", lines=True)
    loops = frame.distinct_2 < threshold
    grouped = frame.assign(loops=loops, reward_loops=frame.reward.where(loops),
                           reward_rest=frame.reward.where(~loops)).groupby("step")
    return grouped.agg(loops=("loops", "mean"), reward_loops=("reward_loops", "mean"),
                       reward_rest=("reward_rest", "mean"), reference_nll=("reference_nll", "mean"))


def sample_pool(model, prompts, k, tokenizer, max_new_tokens, seed):
    """K pure samples (temperature 1) of `model` per prompt, prompt-major: (repeated prompts, completion
    ids, texts of prompt + completion without special tokens). Call it inside `precision.autocast`."""
    repeated = [p for p in prompts for _ in range(k)]
    completions = sample(model, repeated, max_new_tokens, temperature=1.0, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(seed))
    return repeated, completions, prefixed_texts(tokenizer, repeated, completions)


def continuations(tokenizer, texts, prompts, n_tokens):
    """Each held-out review's own next `n_tokens` tokens after its prefix: the reference text that
    win rates judge a policy's completion against."""
    return [tokenizer(text, add_special_tokens=False)["input_ids"][len(p) : len(p) + n_tokens]
            for text, p in zip(texts, prompts)]


def preference_metrics(pairs, n_ties, scores, completions):
    """Notebook 03's summary of its pairs: counts, the tie rate, the gold reward of all samples and
    of the chosen and rejected sides, the gold gap's distribution (`stats.gap_summary`) and the mean
    completion length."""
    return {"n_pairs": len(pairs), "n_ties": n_ties, "tie_rate": tie_rate(scores), "reward_mean": scores.mean().item(),
            "chosen_reward_mean": sum(pairs["chosen_reward"]) / len(pairs),
            "rejected_reward_mean": sum(pairs["rejected_reward"]) / len(pairs),
            **gap_summary(pairs["chosen_reward"], pairs["rejected_reward"]),
            "completion_tokens_mean": sum(map(len, completions)) / len(completions)}


def reference_samples(pairs, n):
    """The first `n` distinct (prompt, completion) samples of pi_ref in the pairs, each side of each
    pair: PPO normalises its reward by their scores. Returns (prompts, completions), lists of ids."""
    seen = list(dict.fromkeys((tuple(row["prompt_ids"]), tuple(row[side])) for row in pairs
                              for side in ("chosen_ids", "rejected_ids")))[:n]
    return [list(p) for p, _ in seen], [list(c) for _, c in seen]


def normalized_on_pi_ref(score, pairs, n):
    """PPO's training signal: `score(prompts, completions)` rescaled to mean 0 and variance 1 over pi_ref's
    own samples (the first `n` distinct ones in the pairs, `reference_samples`; `ppo.normalized`).
    Returns (the normalised score, the raw scores of those samples)."""
    reference_scores = torch.as_tensor(score(*reference_samples(pairs, n)))
    return normalized(score, reference_scores), reference_scores


def prefixed_texts(tokenizer, prompts, completions):
    """prefix + completion as text, special tokens dropped: what the gold judge reads."""
    return [tokenizer.decode(p + c, skip_special_tokens=True) for p, c in zip(prompts, completions)]


def judged_pairs(prefs, tokenizer, n, seed=0):
    """`n` of notebook 03's pairs (drawn without replacement, seeded) as text for a pairwise judge: the
    prefix, the completion the gold reward scored higher (`chosen`) and the other, their gold scores and
    the gold margin (chosen minus rejected, >= 0: how clear the truth is). A DataFrame, one row per pair;
    `prompt` keys the prompt (its ids), for intervals that resample prompts: its pairs share its samples."""
    rows = torch.randperm(len(prefs.pairs), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    pairs = prefs.pairs.select(rows)

    def text(ids):
        return tokenizer.decode(ids, skip_special_tokens=True)

    frame = pd.DataFrame({"pair": rows, "prompt": [" ".join(map(str, p)) for p in pairs["prompt_ids"]],
                          "prefix": [text(p) for p in pairs["prompt_ids"]],
                          "chosen": [text(c) for c in pairs["chosen_ids"]],
                          "rejected": [text(r) for r in pairs["rejected_ids"]],
                          "chosen_reward": pairs["chosen_reward"], "rejected_reward": pairs["rejected_reward"]})
    return frame.assign(margin=frame.chosen_reward - frame.rejected_reward)


def win_rate_items(run_dir, prefixes, n_prompts):
    """Notebook 09's judged samples of one policy (its samples.jsonl): the first `n_prompts` prompts at
    each temperature, with the candidate's and the reference's text split at the prompt's `prefixes`
    (the texts as 09 judged them begin with it) and the gold judge's verdict. A DataFrame: temperature,
    item (the prompt's index), prefix, candidate, reference, gold_verdict."""
    samples = pd.read_json(Path(run_dir) / "samples.jsonl", lines=True)
    rows = []
    for temperature, group in samples.groupby("temperature", sort=True):
        for item, (candidate, reference, verdict) in enumerate(zip(group.candidate, group.reference, group.verdict)):
            if item == n_prompts:
                break
            prefix = prefixes[item]
            if not (candidate.startswith(prefix) and reference.startswith(prefix)):
                raise ValueError(f"{run_dir}: item {item}'s texts do not begin with its prompt {prefix!r}")
            rows.append({"temperature": float(temperature), "item": item, "prefix": prefix,
                         "candidate": candidate[len(prefix):], "reference": reference[len(prefix):],
                         "gold_verdict": verdict})
    return pd.DataFrame(rows)
