"""The IMDb experiment's plumbing (notebooks 02-10): what each stage reads from the stages before
it, and the one evaluation every policy of the frontier gets.

    preferences(...)          notebook 03's outputs: pairs, examples, test prompts, pi_ref's directory
    load_reward_model(...)    notebook 05's learned reward model, ready to score ids
    load_policy(...)          pi_ref, or pi_ref with a training run's weights, and its method and setting
    frontier_evaluator(...)   evaluate(step) for `train.train_loop`: one frontier point, samples kept;
                              step 0 (pi = pi_ref) computed once and shared by every run
    trajectory(run_dir)       a run's evaluations per prompt, for intervals and paired comparisons
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
from dpo_core.precision import autocast_state
from dpo_core.reward import ScalarRewardModel


def preferences(results_root, profile, run="main"):
    """Notebook 03's run `run`: a namespace with dir, params, sft_dir (pi_ref's run), pairs (the
    Dataset), examples (`make_pair` dicts), test_prompts, test_references and max_length."""
    prefs_dir, prefs = results.upstream(results_root, profile, "03_imdb_preferences", run)
    sft_dir, _ = results.upstream(results_root, profile, "02_imdb_sft", prefs["sft_run"])
    pairs = datasets.load_from_disk(str(prefs_dir / "pairs"))
    max_length = prefs["max_prefix_tokens"] + prefs["max_new_tokens"]
    examples = [make_pair(p, c, r, max_length) for p, c, r in zip(pairs["prompt_ids"], pairs["chosen_ids"],
                                                                    pairs["rejected_ids"])]
    return SimpleNamespace(dir=prefs_dir, params=prefs, sft_dir=sft_dir, pairs=pairs, examples=examples,
                           test_prompts=json.loads((prefs_dir / "test_prompts.json").read_text()),
                           test_references=json.loads((prefs_dir / "test_references.json").read_text()),
                           max_length=max_length)


def load_reward_model(results_root, profile, run, sft_dir):
    """Notebook 05's Bradley-Terry reward model (Eq. 2) on pi_ref's body, eval mode."""
    rm_dir, _ = results.upstream(results_root, profile, "05_imdb_reward_model", run)
    model = ScalarRewardModel(results.load_model(sft_dir / "model")[0])
    results.load_trained_parameters(model, rm_dir / "reward_model.safetensors")
    return model.eval()


def load_policy(results_root, profile, spec, sft_dir):
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


def frontier_evaluator(policy, reference, prompts, gold, tokenizer, max_new_tokens, seed, samples, cache_dir):
    """`evaluate(step)` for `train.train_loop`: one frontier point (`evaluate.evaluate_policy`:
    fresh pure samples with one seed, exact and sampled KL, gold reward), its samples appended to
    `samples` with their step. While the policy still equals pi_ref (step 0) the point is the same
    for every run, so it is computed once, cached in `cache_dir` by pi_ref's weights, the prompts,
    the seed, the judge and the precision, and loaded by every later run."""
    def point():
        metrics, rows = evaluate_policy(policy, reference, prompts, gold, tokenizer, max_new_tokens, seed)
        return {"metrics": metrics, "samples": rows}

    def evaluate(step):
        if step == 0 and same_weights(policy, reference):
            key = results.fingerprint(reference, prompts, seed, max_new_tokens, gold.model, autocast_state())
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
