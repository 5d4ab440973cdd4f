"""What training only the top blocks costs in reward at a given KL (issue 8's frozen-bottom lever).

The `cpu` profile's DPO runs (notebook 04) train the top 4 of SmolLM2's 30 blocks on cached
hidden states of the frozen bottom. This script reruns notebook 04 with `train_layers: 0` (the
whole model trained; same pairs, steps, batch and evaluation) for the given beta and learning-rate
settings, into build/frozen_cost/ next to links to the cpu profile's finished 02 and 03 runs, and
writes bench/FROZEN_COST.md: every evaluation point (KL, gold reward) of the whole-model runs
beside those of the committed top-4 DPO runs. The whole model moves much further per step at
the top-4 runs' learning rate, so a comparison at a given KL needs a lower one.

Usage (after `make figures`): python bench/frozen_cost.py --settings 0.1:1e-4,0.1:1e-5
"""

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "04_imdb_dpo_and_baselines"


def link_inputs(profile_dir, out_dir):
    """out_dir/<profile>/{02,03,cache} -> the finished runs of the real profile (read only)."""
    for name in ("02_imdb_sft", "03_imdb_preferences"):
        if not (profile_dir / name / "main" / "FINISHED").exists():
            sys.exit(f"{profile_dir / name} has no finished run: run `make figures` first")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("02_imdb_sft", "03_imdb_preferences"):
        if not (out_dir / name).exists():
            (out_dir / name).symlink_to(profile_dir / name)


def read_metrics(run):
    with open(run / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items() if k != "method"} for row in csv.DictReader(f)]


def run_whole_model(beta, learning_rate, root, profile):
    run_name = f"dpo_beta-{beta}_whole_lr-{float(learning_rate)}"
    out = root / profile / NOTEBOOK / run_name
    if not (out / "FINISHED").exists():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "papermill", "-k", "python3", "--cwd", str(ROOT), "--no-progress-bar",
                        "--log-output", str(ROOT / "notebooks" / f"{NOTEBOOK}.ipynb"), str(out / "executed.ipynb"),
                        "-f", str(ROOT / "params" / profile / NOTEBOOK / f"dpo_beta-{beta}.yaml"),
                        "-p", "profile", profile, "-p", "results_root", str(root), "-p", "run_name", run_name,
                        "-p", "train_layers", "0", "-p", "learning_rate", str(float(learning_rate))], check=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default="0.1:1e-4,0.1:1e-5", help="beta:learning_rate of each whole-model run")
    parser.add_argument("--profile", default="cpu")
    args = parser.parse_args()
    profile_dir = ROOT / "results" / args.profile
    root = ROOT / "build" / "frozen_cost"
    link_inputs(profile_dir, root / args.profile)
    rows = []  # (trained, beta, lr, step, kl, reward)
    for top in sorted((profile_dir / NOTEBOOK).glob("dpo_beta-*")):
        params = json.loads((top / "params.json").read_text())
        rows += [("top 4", params["beta"], params["learning_rate"], m["step"], m["kl"], m["reward"])
                 for m in read_metrics(top)]
    for setting in args.settings.split(","):
        beta, learning_rate = setting.split(":")
        whole = run_whole_model(beta, learning_rate, root, args.profile)
        rows += [("whole", float(beta), float(learning_rate), m["step"], m["kl"], m["reward"]) for m in read_metrics(whole)]
    lines = ["# Training the top 4 blocks vs the whole model (cpu profile, notebook 04)", "",
             "Written by `bench/frozen_cost.py`; do not edit by hand. Same pairs, steps (120), batch (8 pairs), "
             "optimizer (RMSprop, 10 warm-up steps) and evaluation (64 held-out prefixes, one sampling seed); "
             "`top 4` are the committed cpu-profile DPO runs (frozen bottom, cached states), `whole` the same "
             "notebook with `train_layers: 0`. Each row is one evaluation point; sorted by KL. Step times of the "
             "two paths: `bench/LEVERS.md` (frozen-bottom).", "",
             "| trained | beta | lr | step | KL | gold reward |", "|---|---|---|---|---|---|"]
    for trained, beta, lr, step, kl, reward in sorted(rows, key=lambda r: r[4]):
        if step > 0:
            lines.append(f"| {trained} | {beta:g} | {lr:g} | {step:.0f} | {kl:.2f} | {reward:.3f} |")
    (ROOT / "bench" / "FROZEN_COST.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
