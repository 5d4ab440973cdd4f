"""The learning-rate probe behind DPO's regime (issue: the fair frontier), on the whole KL range.

Runs notebook 04 (and 06) by papermill for each (run, overrides) below, on the finished 02 and 03
runs of `results/<profile>/`, into a separate tree `results/<profile>-probe/` (the frontier figure
never sees them), and writes `bench/LR_PROBE.md`: each run's evaluations (step, KL, gold reward with
its 95% interval over prompts, the policy's per-token entropy, pi_ref's NLL of the samples), and the
paired comparisons at matched KL that choose the learning rate: every DPO learning rate against
PPO-GT and against each other, at KL 1, 2 and 4 and over their shared range.

    python bench/lr_probe.py                 # every probe below
    python bench/lr_probe.py --only dpo      # the probes whose name starts with "dpo"
    python bench/lr_probe.py --table-only    # rewrite LR_PROBE.md from the finished probes

What makes it able to see what it tests (the earlier probe compared learning rates at KL 0.5,
where the fast run's curve was still a straight line from pi_ref):
- each learning rate gets the steps to cross KL 2 (the slowest as many as this probe can afford,
  and the table says where it ends), and every run is evaluated densely (PPO-GT too: every 3
  iterations up to 15), so no part of a curve the comparison reads is one straight segment;
- warm-up is 10% of each run's steps (RMSprop without bias correction amplifies step t by
  1/sqrt(1 - 0.99^t): 2.2x at the end of a 24-step warm-up), and the Adam run is the control that
  tells an optimizer effect from DPO's own.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from dpo_core import imdb, results, stats

ROOT = Path(__file__).resolve().parents[1]
COMPARE_AT_KL = [1.0, 2.0, 4.0]


PAIRS = "prompts-480"  # 480 prompts x 6 pairs = 2,880: the longest run (360 steps of 8) sees each pair once


def dpo(lr, steps, early, optimizer_name="rmsprop"):
    return ("04_imdb_dpo_and_baselines", "dpo_beta-0.1", {
        "method": "dpo", "setting": 0.1, "learning_rate": lr, "n_steps": steps, "warmup_steps": steps // 10,
        "optimizer_name": optimizer_name, "preferences_run": PAIRS, "eval_every": 60, "eval_early": early,
        "checkpoint_every": 60})


PROBES = {  # run name: (notebook, the profile's params file it starts from, overrides)
    PAIRS: ("03_imdb_preferences", None, {"n_prompts": 480}),
    "ppo_gt_target-6": ("06_imdb_ppo", "ppo_gt_target-6", {"preferences_run": PAIRS, "n_steps": 30, "eval_every": 5,
                                                            "eval_early": [3, 6, 9, 12], "checkpoint_every": 10}),
    "dpo_lr-3e-05": dpo(3e-5, 120, [10, 20, 30, 45, 90]),
    "dpo_lr-1e-05": dpo(1e-5, 360, [20, 40, 90, 150, 210, 270, 330]),
    "dpo_lr-3e-06": dpo(3e-6, 360, [40, 90, 150, 210, 270, 330]),
    "dpo_lr-1e-05_adam": dpo(1e-5, 360, [20, 40, 90, 150, 210, 270, 330], "adam"),
}


def link_upstream(profile, probe_root):
    """The probe tree sees the profile's finished 02, 03 and 05 `main` runs (symlinks, so the probe's
    own 03 runs land beside them in the probe tree, not in the profile's)."""
    for name in ("02_imdb_sft", "03_imdb_preferences", "05_imdb_reward_model"):
        source, target = ROOT / "results" / profile / name / "main", probe_root / profile / name / "main"
        if target.parent.is_symlink():  # the older layout linked the whole notebook folder
            target.parent.unlink()
        if source.exists() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve())


def run(profile, probe_root, name, notebook, base_name, overrides):
    out = probe_root / profile / notebook / name
    if (out / "FINISHED").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    params = ROOT / "params" / profile / notebook
    base = params / f"{base_name}.yaml" if base_name else params.with_suffix(".yaml")
    args = [sys.executable, "-m", "papermill", "-k", "python3", "--cwd", str(ROOT), "--no-progress-bar",
            f"notebooks/{notebook}.ipynb", str(out / "executed.ipynb"), "-f", str(base),
            "-p", "profile", profile, "-p", "results_root", str(probe_root), "-p", "run_name", name]
    args += ["-y", yaml.safe_dump(overrides)]  # YAML, as papermill reads it: 3.0e-06 stays a float
    start = time.perf_counter()
    subprocess.run(args, cwd=ROOT, check=True)
    print(f"[probe] {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return out


def summary(out):
    metrics = pd.read_csv(out / "metrics.csv")
    t = imdb.trajectory(out)
    rows = []
    for i, row in metrics.iterrows():
        _, low, high = stats.mean_interval(t["reward"][i])
        rows.append({"run": out.name, "step": int(row.step), "kl": row.kl, "reward": row.reward, "low": low,
                     "high": high, "entropy": row.get("entropy", float("nan")),
                     "reference_nll": row.get("reference_nll", float("nan")), "tokens": row.completion_tokens,
                     "distinct_2": row.get("distinct_2", float("nan"))})
    return rows


def comparisons(finished):
    """Every DPO run against PPO-GT and against every other DPO run, paired at matched KL."""
    trajectories = {out.name: imdb.trajectory(out) for out in finished}
    methods = {name: "ppo_gt" if name.startswith("ppo") else "dpo" for name in trajectories}
    over, at = [], []
    dpo_runs = sorted(name for name in trajectories if name.startswith("dpo"))
    for i, reference in enumerate(dpo_runs):
        others = {name: t for name, t in trajectories.items() if name.startswith("ppo") or name in dpo_runs[i + 1:]}
        if not others:
            continue
        over_range, at_kl = stats.paired_comparisons({reference: trajectories[reference], **others}, reference,
                                                     methods, COMPARE_AT_KL)
        over += [{"a": reference, "b": r.run, "gap": r.gap, "low": r.low, "high": r.high,
                  "kl_range": f"{r.kl_low:.2f}-{r.kl_high:.2f}", "verdict": r.verdict} for r in over_range.itertuples()]
        at += [{"a": reference, "b": r.run, "kl": r.kl, "gap": r.gap, "low": r.low, "high": r.high,
                "verdict": r.verdict} for r in at_kl.itertuples()]
    return over, at


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--only", default="", help="run only the probes whose name starts with this")
    parser.add_argument("--table-only", action="store_true", help="run nothing; rewrite LR_PROBE.md from finished probes")
    args = parser.parse_args()
    probe_root = ROOT / "results" / f"{args.profile}-probe"
    link_upstream(args.profile, probe_root)
    rows, finished, seconds = [], [], {}
    for name, (notebook, base_name, overrides) in PROBES.items():
        out = probe_root / args.profile / notebook / name
        if (name.startswith(args.only) or notebook < "04") and not args.table_only:
            run(args.profile, probe_root, name, notebook, base_name, overrides)
        if (out / "FINISHED").exists() and notebook >= "04":
            rows += summary(out)
            finished.append(out)
    points = results.markdown_table(rows, ["run", "step", "kl", "reward", "low", "high", "entropy", "reference_nll",
                                           "tokens", "distinct_2"])
    over, at = comparisons(finished)
    text = (f"# Learning-rate probe ({args.profile} profile)\n\nWritten by `bench/lr_probe.py` (its docstring says "
            "what each run is). DPO beta 0.1, batch 8, warm-up 10% of the steps; PPO-GT target 6: 30 iterations of "
            "32 rollouts. Whole model, evaluated on the profile's 256 held-out prompts with one sampling seed; "
            "interval: 95% bootstrap over prompts. entropy: the policy's per-token entropy at its own samples; "
            "reference_nll: pi_ref's per-token NLL of them (entropy + KL per token, in expectation).\n\n"
            f"## Every evaluation\n\n{points}\n\n"
            "## Paired gaps at matched KL (a minus b; 95% interval over the same prompt resamples)\n\n"
            "Over the shared KL range:\n\n"
            f"{results.markdown_table(over, ['a', 'b', 'gap', 'low', 'high', 'kl_range', 'verdict'])}\n\n"
            f"At KL {', '.join(f'{k:g}' for k in COMPARE_AT_KL)} (where both runs reach it):\n\n"
            f"{results.markdown_table(at, ['a', 'b', 'kl', 'gap', 'low', 'high', 'verdict'])}\n")
    (ROOT / "bench" / "LR_PROBE.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
