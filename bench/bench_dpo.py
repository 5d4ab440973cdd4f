"""Speed and memory of dpo_core against its peers, side by side in one run (issue 8).

Each measurement runs in its own child process (so peak RSS is its own) on the same model,
the same preference pairs, the same batch and sequence lengths, fp32, after warm-up:

    dpo-core        one DPO step of dpo_core (full model, reference log-probs precomputed, fused
                    AdamW: the optimizer transformers gives TRL by default)
    dpo-core-lean   the same with the LM head on completion positions only, in blocks
                    (`completion_only=True`: no (B, T, V) logits, less memory)
    dpo-core-lean-gc  dpo-core-lean with gradient checkpointing, as TRL's default has it
    trl-default     TRL's DPOTrainer at its defaults, in fp32 (bf16=False; everything else default)
    trl-fast        TRL's DPOTrainer with gradient checkpointing off and reference log-probs precomputed
    sample-core     dpo_core.sampling.sample, pure sampling, new tokens/s
    sample-generate model.generate(do_sample=True, top_k=0, top_p=1), the same prompts
    decode-bound    dpo_core's loop with argmax instead of sampling: the model's forward alone
    precompute      reference log-prob throughput (sequences/s)
    reward          gold-reward scoring throughput (texts/s)

Usage: python bench/bench_dpo.py --model tiny --steps 8   (writes bench/RESULTS.md)
"""

import argparse
import copy
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

PAIRS, PROMPT_TOKENS, COMPLETION_TOKENS = 8, 8, 32


def matmul_peak(n=2048, repeats=5):
    """Best fp32 GFLOP/s of an n x n matmul, measured now on this machine."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def reset_peak_rss():
    """Start this process's peak-RSS count afresh (Linux: /proc/self/clear_refs), so that what
    follows is measured without the model loading before it; a no-op elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb():
    """Peak RSS since the last `reset_peak_rss` (VmHWM), else since the process started."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def load(model_name):
    from dpo_core import assets

    model, tokenizer = assets.load_policy(model_name)
    return model, tokenizer


def make_pairs(tokenizer, n_pairs, seed=0, completion_tokens=None):
    """Prompt = 8 tokens of a real review; chosen / rejected = the next 32 (or completion_tokens)
    tokens of two reviews."""
    completion_tokens = completion_tokens or COMPLETION_TOKENS
    from dpo_core import assets

    texts = assets.load_corpus("pang-lee-reviews").shuffle(seed=seed)["text"][: 2 * n_pairs]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    out = []
    for i in range(n_pairs):
        a, b = ids[2 * i], ids[2 * i + 1]
        out.append((a[:PROMPT_TOKENS], a[PROMPT_TOKENS : PROMPT_TOKENS + completion_tokens],
                    b[PROMPT_TOKENS : PROMPT_TOKENS + completion_tokens]))
    return out


def step_stats(times, tokens, n_params):
    median = statistics.median(times)
    return {"step_median_s": median, "step_min_s": min(times), "step_max_s": max(times),
            "tokens_per_s": tokens / median, "gflops": 6 * n_params * tokens / median / 1e9}


def bench_dpo_core(model_name, steps, warmup, lean=False, checkpointing=False):
    from dpo_core.data import collate_pairs, make_pair
    from dpo_core.logprobs import concatenated_forward
    from dpo_core.models import disable_dropout
    from dpo_core.train import dpo_step, reference_logps

    model, tok = load(model_name)
    disable_dropout(model).train()
    if checkpointing:  # recompute each block's activations in the backward instead of keeping them
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    forward = (lambda m, b: concatenated_forward(m, b, completion_only=True)) if lean else concatenated_forward
    pairs = make_pairs(tok, PAIRS)
    batch = collate_pairs([make_pair(*p, max_length=PROMPT_TOKENS + COMPLETION_TOKENS) for p in pairs], tok.pad_token_id)
    ref_c, ref_r = reference_logps(model, batch)  # precomputed once; pi = pi_ref at the start
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)  # what TRL (transformers) uses by default
    reset_peak_rss()
    times = [_timed(lambda: dpo_step(model, optimizer, batch, ref_c, ref_r, 0.1, forward=forward))
             for _ in range(warmup + steps)]
    tokens = int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
    return {**step_stats(times[warmup:], tokens, sum(p.numel() for p in model.parameters())),
            "train_peak_rss_mb": peak_rss_mb()}


def bench_trl(model_name, steps, warmup, fast):
    import datasets
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    model, tok = load(model_name)
    pairs = make_pairs(tok, PAIRS * (warmup + steps))
    data = datasets.Dataset.from_list([{"prompt": tok.decode(p), "chosen": tok.decode(c), "rejected": tok.decode(r)}
                                       for p, c, r in pairs])
    times = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            reset_peak_rss()  # after loading, and after TRL fast's reference precompute (as for dpo-core)

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    config = DPOConfig(output_dir="/tmp/bench-trl", per_device_train_batch_size=PAIRS, max_steps=warmup + steps,
                       bf16=False, use_cpu=True, report_to=[], logging_steps=1000, save_strategy="no",
                       dataloader_drop_last=True, max_length=PROMPT_TOKENS + COMPLETION_TOKENS,
                       **({"gradient_checkpointing": False, "precompute_ref_log_probs": True} if fast else {}))
    # The default keeps a separate reference model; pass a copy (the tiny model has no hub name to reload).
    ref_model = None if fast else copy.deepcopy(model)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=data, processing_class=tok,
                         callbacks=[Clock()])
    trainer.train()
    tokens = 2 * PAIRS * (PROMPT_TOKENS + COMPLETION_TOKENS)  # nominal: the same pairs as dpo-core
    return {**step_stats(times[warmup:], tokens, sum(p.numel() for p in model.parameters())),
            "train_peak_rss_mb": peak_rss_mb()}


def bench_sampling(model_name, method, new_tokens=32, n_prompts=64):
    from dpo_core.sampling import sample

    model, tok = load(model_name)
    prompts = [p for p, _, _ in make_pairs(tok, n_prompts)]
    g = torch.Generator().manual_seed(0)
    if method == "generate":
        ids = torch.tensor(prompts)  # all prompts are exactly 8 tokens: no padding
        run = lambda: model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, top_p=1.0,
                                     temperature=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     pad_token_id=tok.pad_token_id)
    else:
        temperature = 0 if method == "decode-bound" else 1.0
        run = lambda: sample(model, prompts, new_tokens, temperature=temperature, pad_token_id=tok.pad_token_id,
                             generator=g)
    with torch.inference_mode():
        run()  # warm-up
        times = [_timed(run) for _ in range(3)]
    return {"seconds_median": statistics.median(times), "new_tokens_per_s": n_prompts * new_tokens / statistics.median(times)}


def bench_precompute(model_name):
    from dpo_core.data import collate_pairs, make_pair
    from dpo_core.train import reference_logps

    model, tok = load(model_name)
    batch = collate_pairs([make_pair(*p, max_length=PROMPT_TOKENS + COMPLETION_TOKENS) for p in make_pairs(tok, 32)], tok.pad_token_id)
    reference_logps(model, batch)
    seconds = statistics.median(_timed(lambda: reference_logps(model, batch)) for _ in range(3))
    return {"sequences_per_s": 64 / seconds}


def bench_reward(model_name):
    from dpo_core import assets

    reward = assets.load_reward("tiny" if model_name == "tiny" else "minilm-sentiment")
    texts = assets.load_corpus("pang-lee-sentences")["text"][:256]
    reward(texts[:32])
    seconds = statistics.median(_timed(lambda: reward(texts)) for _ in range(3))
    return {"texts_per_s": len(texts) / seconds}


JOBS = {
    "dpo-core": lambda a: bench_dpo_core(a.model, a.steps, a.warmup),
    "dpo-core-lean": lambda a: bench_dpo_core(a.model, a.steps, a.warmup, lean=True),
    "dpo-core-lean-gc": lambda a: bench_dpo_core(a.model, a.steps, a.warmup, lean=True, checkpointing=True),
    "trl-default": lambda a: bench_trl(a.model, a.steps, a.warmup, fast=False),
    "trl-fast": lambda a: bench_trl(a.model, a.steps, a.warmup, fast=True),
    "sample-core": lambda a: bench_sampling(a.model, "core"),
    "sample-generate": lambda a: bench_sampling(a.model, "generate"),
    "decode-bound": lambda a: bench_sampling(a.model, "decode-bound"),
    "precompute": lambda a: bench_precompute(a.model),
    "reward": lambda a: bench_reward(a.model),
}


def _child(name, args, queue):
    global COMPLETION_TOKENS
    COMPLETION_TOKENS = getattr(args, "completion_tokens", COMPLETION_TOKENS)  # a spawned child starts from defaults
    try:
        result = JOBS[name](args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put(result)
    except Exception as err:  # reported in the table, not hidden
        queue.put({"error": f"{type(err).__name__}: {err}"})


def run_job(name, args):
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_child, args=(name, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    print(f"[bench] {args.model} {name}: {json.dumps(result)}", flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny or smollm2-135m")
    parser.add_argument("--steps", type=int, default=8, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--jobs", default=",".join(JOBS), help="comma-separated subset of " + ",".join(JOBS))
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.json")))
    args = parser.parse_args()
    peak = matmul_peak()
    print(f"[bench] fp32 matmul peak: {peak:.1f} GFLOP/s, {torch.get_num_threads()} threads", flush=True)
    results = {name: run_job(name, args) for name in args.jobs.split(",")}
    record = {"model": args.model, "matmul_peak_gflops": peak, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "pairs": PAIRS, "prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
              "results": results}
    path = Path(args.out)
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous[args.model] = record
    path.write_text(json.dumps(previous, indent=2))
    path.with_suffix(".md").write_text(render(previous))
    print(f"[bench] wrote {path} and {path.with_suffix('.md')}")


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "n/a"


def render(records):
    """RESULTS.md: every measurement, then the issue's targets as ratios from the same run."""
    lines = ["# Benchmark results", "", "Written by `bench/bench_dpo.py` (`make bench`); do not edit by hand.", ""]
    for model, rec in records.items():
        r = rec["results"]
        lines += [f"## {model}", "",
                  f"torch {rec['torch']}, {rec['threads']} threads, fp32; matmul peak measured in this run: "
                  f"{rec['matmul_peak_gflops']:.1f} GFLOP/s. Batch: {rec['pairs']} pairs of "
                  f"{rec['prompt_tokens']} + {rec['completion_tokens']} tokens.", "",
                  "| job | step median s (min-max) | tokens/s | GFLOP/s (6NT) | MFU | peak RSS MB: training / whole process |",
                  "|---|---|---|---|---|---|"]
        for job in ("dpo-core", "dpo-core-lean", "dpo-core-lean-gc", "trl-default", "trl-fast"):
            x = r.get(job, {})
            if "step_median_s" in x:
                lines.append(f"| {job} | {x['step_median_s']:.3f} ({x['step_min_s']:.3f}-{x['step_max_s']:.3f}) | "
                             f"{x['tokens_per_s']:.0f} | {x['gflops']:.1f} | {x['gflops'] / rec['matmul_peak_gflops']:.0%} | "
                             f"{x.get('train_peak_rss_mb', 0):.0f} / {x['peak_rss_mb']:.0f} |")
            elif x:
                lines.append(f"| {job} | failed: {x.get('error')} | | | | |")
        lines += ["", "| job | result | peak RSS MB |", "|---|---|---|"]
        for job in ("sample-core", "sample-generate", "decode-bound", "precompute", "reward"):
            x = r.get(job, {})
            values = ", ".join(f"{k} {v:.1f}" for k, v in x.items() if k != "peak_rss_mb" and isinstance(v, float))
            lines.append(f"| {job} | {values or x.get('error', 'not run')} | {x.get('peak_rss_mb', 0):.0f} |")
        tps = {j: r.get(j, {}).get("tokens_per_s") for j in ("dpo-core", "dpo-core-lean", "trl-default", "trl-fast")}
        rss = {j: r.get(j, {}).get("train_peak_rss_mb", 0) for j in
               ("dpo-core", "dpo-core-lean", "dpo-core-lean-gc", "trl-default", "trl-fast")}
        s_core, s_gen, s_bound = (r.get(j, {}).get("new_tokens_per_s") for j in ("sample-core", "sample-generate", "decode-bound"))
        mfu = {j: r.get(j, {}).get("gflops", 0) / rec["matmul_peak_gflops"] for j in ("dpo-core", "dpo-core-lean")}
        lines += ["", "| target | dpo-core | dpo-core-lean |", "|---|---|---|",
                  f"| DPO step >= 5x TRL default (tokens/s) | {ratio(tps['dpo-core'], tps['trl-default'])} | "
                  f"{ratio(tps['dpo-core-lean'], tps['trl-default'])} |",
                  f"| DPO step >= 2x TRL fastest (tokens/s) | {ratio(tps['dpo-core'], tps['trl-fast'])} | "
                  f"{ratio(tps['dpo-core-lean'], tps['trl-fast'])} |",
                  f"| >= 70% of matmul peak (full-model step; nominal 6NT FLOPs) | {mfu['dpo-core']:.0%} | "
                  f"{mfu['dpo-core-lean']:.0%} |",
                  f"| peak memory while training no higher than TRL fastest (no checkpointing either) | {rss['dpo-core']:.0f} vs "
                  f"{rss['trl-fast']:.0f} MB | {rss['dpo-core-lean']:.0f} vs {rss['trl-fast']:.0f} MB |",
                  f"| peak memory while training no higher than TRL default (checkpointing: dpo-core-lean-gc) | | "
                  f"{rss['dpo-core-lean-gc']:.0f} vs {rss['trl-default']:.0f} MB |",
                  f"| sampler >= 1.5x model.generate | {ratio(s_core, s_gen)} | |",
                  f"| sampler within 20% of the decode bound | {ratio(s_core, s_bound)} of it | |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
