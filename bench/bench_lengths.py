"""Step time against sequence length, dpo_core against TRL, one run (issue 8, item 5).

For each completion length, the same jobs as bench_dpo.py (each in its own process, the same
model, pairs and batch of 8, fp32): dpo_core's step (plain; lean: LM head on completion tokens
in blocks; lean-gc: lean with gradient checkpointing) and TRL's DPOTrainer at its defaults and in
its fastest configuration. Writes bench/LENGTHS.json and the plot bench/step_time_vs_length.png.

Usage: python bench/bench_lengths.py --model smollm2-135m --lengths 16,32,64,128 --steps 3
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_dpo  # noqa: E402

JOBS = ("dpo-core", "dpo-core-lean", "dpo-core-lean-gc", "trl-fast", "trl-default")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", default="16,32,64,128", help="completion tokens (the prompt is 8)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for length in map(int, args.lengths.split(",")):
        job_args = argparse.Namespace(model=args.model, steps=args.steps, warmup=args.warmup, completion_tokens=length)
        for job in JOBS:
            result = bench_dpo.run_job(job, job_args)
            rows.append({"completion_tokens": length, "job": job, **result})
    out = Path(__file__).with_name("LENGTHS.json")
    out.write_text(json.dumps({"model": args.model, "prompt_tokens": bench_dpo.PROMPT_TOKENS, "pairs": bench_dpo.PAIRS,
                               "rows": rows}, indent=2))
    plot(rows, args.model, Path(__file__).with_name("step_time_vs_length.png"))
    print(f"[lengths] wrote {out}")


def plot(rows, model, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for job, marker in zip(JOBS, "o^vsd"):
        points = [(r["completion_tokens"] + bench_dpo.PROMPT_TOKENS, r["step_median_s"]) for r in rows
                  if r["job"] == job and "step_median_s" in r]
        if points:
            ax.plot(*zip(*points), marker=marker, label=job)
    ax.set(xlabel="sequence length (8 prompt + completion tokens)", ylabel="seconds per DPO step (8 pairs)",
           title=f"{model}, fp32, 2 cores", xscale="log", yscale="log")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
