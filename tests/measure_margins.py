"""Measure how far each learned-outcome test sits from its threshold, over seeds, on the CPU
kernels this process runs with. Not a test (timings and sweeps are not tests); its output
chose the thresholds in tests/learned.py's tests (see tests/MARGINS.md).

    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
        .venv/bin/python tests/measure_margins.py --seeds 20 --out build/margins-avx2.json
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import learned  # noqa: E402


def summary(values):
    values = sorted(values)
    return {"min": values[0], "median": values[len(values) // 2], "max": values[-1], "n": len(values)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--finetune-seeds", type=int, default=3, help="the real MiniLM fine-tune (slow)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--reward-model-only", action="store_true", help="only the reward model's margins (fast)")
    args = parser.parse_args()
    seeds = range(args.seeds)
    start = time.perf_counter()
    rows = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "env": {k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
                                                     "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")}}
    rm = [learned.reward_model_run(seed) for seed in seeds]
    rows["reward_model/train_min_margin"] = summary([m["train"].min().item() for _, m in rm])
    rows["reward_model/train_accuracy"] = summary([(m["train"] > 0).float().mean().item() for _, m in rm])
    rows["reward_model/train_mean_margin"] = summary([m["train"].mean().item() for _, m in rm])
    rows["reward_model/held_out_accuracy"] = summary([(m["held_out"] > 0).float().mean().item() for _, m in rm])
    rows["reward_model/held_out_mean_margin"] = summary([m["held_out"].mean().item() for _, m in rm])
    rows["reward_model/seed0_held_out_accuracy"] = (rm[0][1]["held_out"] > 0).float().mean().item()
    if args.reward_model_only:
        rows["reward_model/seed0_train_min_margin"] = rm[0][1]["train"].min().item()
        rows["reward_model/seed0_held_out_mean_margin"] = rm[0][1]["held_out"].mean().item()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))
        print(json.dumps(rows, indent=1))
        return
    rows["dpo_one_step_gain"] = summary([learned.dpo_one_step_gain(seed) for seed in seeds])
    gains = [learned.ppo_score_gain(seed, iterations=30) for seed in seeds]
    rows["ppo_score_gain"] = summary([last["score"] - first["score"] for first, last in gains])
    rows["ppo_score_gain/seed0"] = gains[0][1]["score"] - gains[0][0]["score"]
    rows["greedy_top_gap"] = summary([learned.greedy_top_gap(seed) for seed in seeds])
    rows["greedy_top_gap/seed2"] = learned.greedy_top_gap(2)  # the seed tests/test_sampling_evaluate.py uses
    rows["reward_model/seed0_train_min_margin"] = rm[0][1]["train"].min().item()
    rows["reward_model/seed0_held_out_mean_margin"] = rm[0][1]["held_out"].mean().item()
    rows["dpo_one_step_gain/seed0"] = learned.dpo_one_step_gain(0)
    rows["finetune"] = [learned.gold_reward_finetune(seed) for seed in range(args.finetune_seeds)]
    rows["seconds"] = time.perf_counter() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
