"""The learning-rate and data-size probes behind the `cpu` profile's settings (issue: the faithful frontier).

Runs notebook 04 (and 06) by papermill for each (run, overrides) below, on the finished 02, 03
and 05 runs of `results/<profile>/`, into a separate tree `results/<profile>-probe/` (the frontier
figure never sees them), and writes `bench/LR_PROBE.md`: each run's evaluations (step, KL, gold
reward with its 95% interval over prompts) and training accuracy.

    python bench/lr_probe.py                 # every probe below
    python bench/lr_probe.py --only dpo      # the probes whose name starts with "dpo"
    python bench/lr_probe.py --only data     # is DPO limited by its pairs? (below)

The data probes hold out a quarter of the prompts' pairs (`held_out_fraction`) and train DPO as the
profile does on the rest, once on the profile's 192 prompts and once on 384 (a second 03 run): if
the held-out accuracy and the gold reward against steps coincide, the pair count does not limit
DPO at this number of steps.
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
SHORT = {"n_steps": 60, "eval_every": 30, "eval_early": [15], "checkpoint_every": 0}
PROBES = {  # run name: (notebook, overrides)
    **{f"dpo_beta-0.1_lr-{lr:g}": ("04_imdb_dpo_and_baselines", {"method": "dpo", "setting": 0.1,
                                                                 "learning_rate": lr, **SHORT})
       for lr in (3e-6, 1e-5, 3e-5)},
    "data-384-prompts": ("03_imdb_preferences", {"n_prompts": 384}),
    **{f"data_dpo_{n}-prompts": ("04_imdb_dpo_and_baselines", {"method": "dpo", "setting": 0.1, "learning_rate": 3e-5,
                                                              "held_out_fraction": 0.25, "preferences_run": run, **SHORT})
       for n, run in ((192, "main"), (384, "data-384-prompts"))},
    "ppo_gt_target-6_lr-1e-05": ("06_imdb_ppo", {"method": "ppo_gt", "target_kl": 6.0, "learning_rate": 1e-5,
                                                 "train_layers": 0, "init_kl_coef": 0.1, "kl_horizon": 256,
                                                 "n_steps": 30, "eval_every": 15, "checkpoint_every": 0}),
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


def run(profile, probe_root, name, notebook, overrides):
    out = probe_root / profile / notebook / name
    if (out / "FINISHED").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    params = ROOT / "params" / profile / notebook
    base = min(params.glob("*.yaml")) if params.is_dir() else params.with_suffix(".yaml")
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
    train = pd.read_csv(out / "train_log.csv")
    t = imdb.trajectory(out)
    rows = []
    for i, row in metrics.iterrows():
        _, low, high = stats.mean_interval(t["reward"][i])
        column = "rewards/accuracies" if "rewards/accuracies" in train else "kl_train" if "kl_train" in train else None
        accuracy = train[train.step <= row.step].tail(10)[column].mean() if column and row.step > 0 else float("nan")
        rows.append({"run": out.name, "step": int(row.step), "kl": row.kl, "reward": row.reward, "low": low,
                     "high": high, "train_last_10": accuracy, "tokens": row.completion_tokens,
                     "distinct_2": row.get("distinct_2", float("nan")),
                     "held_out_accuracy": row.get("eval_accuracy", float("nan"))})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--only", default="", help="run only the probes whose name starts with this")
    parser.add_argument("--table-only", action="store_true", help="run nothing; rewrite LR_PROBE.md from finished probes")
    args = parser.parse_args()
    probe_root = ROOT / "results" / f"{args.profile}-probe"
    link_upstream(args.profile, probe_root)
    rows = []
    for name, (notebook, overrides) in PROBES.items():
        out = probe_root / args.profile / notebook / name
        if name.startswith(args.only) and not args.table_only:
            run(args.profile, probe_root, name, notebook, overrides)
        if (out / "FINISHED").exists() and notebook != "03_imdb_preferences":  # the table: every finished probe
            rows += summary(out)
    table = results.markdown_table(rows, ["run", "step", "kl", "reward", "low", "high", "train_last_10",
                                          "tokens", "distinct_2", "held_out_accuracy"])
    text = (f"# Learning-rate probe ({args.profile} profile)\n\nWritten by `bench/lr_probe.py`; DPO: 60 steps, batch 8; "
            f"PPO-GT: 30 iterations of 32 rollouts; whole model, evaluated on the profile's held-out prompts (interval: 95% bootstrap over prompts). "
            "train_last_10: the implicit-reward accuracy (offline methods) or the rollouts' KL (PPO) over the last "
            "10 training steps before the evaluation; held_out_accuracy (data probes): the implicit reward's accuracy "
            "on the pairs of the held-out quarter of the prompts.\n\n"
            f"{table}\n")
    (ROOT / "bench" / "LR_PROBE.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
