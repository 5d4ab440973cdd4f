"""Speed and memory of dpo_core against its peers, side by side in one run (issues 8 and 15).

Each measurement runs in its own child process (so peak RSS is its own) on the same model,
the same preference pairs, the same batch and sequence lengths, after warm-up. Jobs ending in
-bf16 run the matmuls in bf16 autocast (dpo_core) or with TRL's `bf16=True`; the rest in fp32.
Every job gets the model as dpo_core loads it, attention computed in fp32 (`models.attention_in_fp32`),
TRL and `model.generate` included, so both sides run the same model; jobs ending in -sdpa load it with
transformers' stock SDPA attention instead (bf16 attention under autocast), as a TRL user gets it.

    dpo-core[-bf16]         one DPO step of dpo_core (full model, reference log-probs precomputed,
                            fused AdamW: the optimizer transformers gives TRL by default)
    dpo-core-lean[-bf16]    the same with the LM head on completion positions only, in blocks
                            (`completion_only=True`: no (B, T, V) logits, less memory)
    dpo-core-lean-gc[-bf16] dpo-core-lean with gradient checkpointing, as TRL's default has it
    dpo-core-bf16-sdpa      dpo-core-bf16 with stock SDPA attention (what fp32 attention gains)
    dpo-core-lean-bf16-compiled  dpo-core-lean-bf16 with torch.compile (inductor) on the base model
    trl-default, trl-bf16   TRL's DPOTrainer at its defaults (gradient checkpointing on), fp32 / bf16
    trl-bf16-no-gc          TRL bf16 without gradient checkpointing
    trl-fast, trl-bf16-fast TRL without gradient checkpointing, reference log-probs precomputed
    trl-bf16-fast-sdpa      trl-bf16-fast with stock SDPA attention
    sample-core[-bf16]      dpo_core.sampling.sample, pure sampling, new tokens/s
    sample-core-bf16-compiled  the same with torch.compile on the model's forward (the decode step)
    sample-generate[-bf16]  model.generate(do_sample=True, top_k=0, top_p=1), the same prompts
    sample-{core,generate}-bf16-{32,256}  the same two at 32 prompts (PPO's rollouts) and 256 (an evaluation's)
    decode-bound[-bf16]     dpo_core's loop with argmax instead of sampling: the model's forward alone
    precompute[-bf16]       reference log-prob throughput (sequences/s)
    kl[-bf16]               exact + sampled sequence KL throughput (one evaluation's KL)
    reward[-bf16]           gold-reward scoring throughput (texts/s)
    eval-point[-bf16]       one frontier evaluation point (256 prompts: sample, KL, gold reward), seconds
    step-matmuls[-bf16]     the DPO step's matrix products alone (every linear layer's forward and two
                            backward products at the step's rows), GFLOP/s: the rate these shapes allow

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


def matmul_peak(n=2048, repeats=5, dtype=torch.float32):
    """Best GFLOP/s of an n x n matmul in `dtype`, measured now on this machine."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def step_matmul_rate(model_name, dtype=torch.float32, repeats=5):
    """GFLOP/s of a DPO step's matrix products alone, at the step's own shapes: for every linear layer
    (LM head included), the forward X W^T and the backward's dY W and dY^T X, at the rows of one step
    (PAIRS x 2 sequences x their tokens). Each distinct shape is timed (best of `repeats`) once and
    counted as often as the model has it. What the 2048 x 2048 peak overstates for these shapes: a step
    that did nothing but its matmuls would run at this rate."""
    from collections import Counter

    model, _ = load(model_name)
    rows = PAIRS * 2 * (PROMPT_TOKENS + COMPLETION_TOKENS)
    shapes = Counter(tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear))
    seconds = flops = 0.0
    for (out_features, in_features), count in shapes.items():
        x, w = torch.randn(rows, in_features).to(dtype), torch.randn(out_features, in_features).to(dtype)
        dy = torch.randn(rows, out_features).to(dtype)
        products = (lambda: x @ w.T, lambda: dy @ w, lambda: dy.T @ x)  # forward, grad of input, grad of weight
        for product in products:
            product()
            seconds += count * min(_timed(product) for _ in range(repeats))
        flops += count * 6 * rows * in_features * out_features
    return {"gflops": flops / seconds / 1e9, "matmul_s": seconds, "rows": rows,
            "shapes": {f"{o}x{i}": c for (o, i), c in shapes.items()}}


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


def load(model_name, sdpa=False):
    """The model as dpo_core loads it (attention in fp32 on CPU, `models.attention_in_fp32`), or with
    transformers' stock SDPA attention (`sdpa=True`), as a TRL user gets it."""
    from dpo_core import assets

    model, tokenizer = assets.load_policy(model_name)
    if sdpa:
        model.set_attn_implementation("sdpa")
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


def bench_dpo_core(model_name, steps, warmup, lean=False, checkpointing=False, precision="fp32", compiled=False,
                   sdpa=False):
    from dpo_core import precision as precisions
    from dpo_core.data import collate_pairs, make_pair
    from dpo_core.logprobs import concatenated_forward
    from dpo_core.models import disable_dropout
    from dpo_core.train import dpo_step, reference_logps

    model, tok = load(model_name, sdpa)
    disable_dropout(model).train()
    if checkpointing:  # recompute each block's activations in the backward instead of keeping them
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if compiled:  # inductor on the base model (the LM head and the log-softmax stay eager)
        model.base_model.forward = torch.compile(model.base_model.forward, dynamic=False)
    forward = (lambda m, b: concatenated_forward(m, b, completion_only=True)) if lean else concatenated_forward
    pairs = make_pairs(tok, PAIRS)
    batch = collate_pairs([make_pair(*p, max_length=PROMPT_TOKENS + COMPLETION_TOKENS) for p in pairs], tok.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)  # what TRL (transformers) uses by default
    with precisions.autocast(precision):
        ref_c, ref_r = reference_logps(model, batch)  # precomputed once, in the step's layout; pi = pi_ref at the start
        reset_peak_rss()
        times = [_timed(lambda: dpo_step(model, optimizer, batch, ref_c, ref_r, 0.1, forward=forward))
                 for _ in range(warmup + steps)]
    tokens = int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
    return {**step_stats(times[warmup:], tokens, sum(p.numel() for p in model.parameters())),
            "first_step_s": times[0], "train_peak_rss_mb": peak_rss_mb()}


def bench_trl(model_name, steps, warmup, fast, bf16=False, checkpointing=None, sdpa=False):
    import datasets
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    model, tok = load(model_name, sdpa)
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
                       bf16=bf16, use_cpu=True, report_to=[], logging_steps=1000, save_strategy="no",
                       dataloader_drop_last=True, max_length=PROMPT_TOKENS + COMPLETION_TOKENS,
                       **({"gradient_checkpointing": False, "precompute_ref_log_probs": True} if fast else {}),
                       **({} if checkpointing is None else {"gradient_checkpointing": checkpointing}))
    # The default keeps a separate reference model; pass a copy (the tiny model has no hub name to reload).
    ref_model = None if fast else copy.deepcopy(model)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=data, processing_class=tok,
                         callbacks=[Clock()])
    trainer.train()
    tokens = 2 * PAIRS * (PROMPT_TOKENS + COMPLETION_TOKENS)  # nominal: the same pairs as dpo-core
    return {**step_stats(times[warmup:], tokens, sum(p.numel() for p in model.parameters())),
            "train_peak_rss_mb": peak_rss_mb()}


def bench_sampling(model_name, method, new_tokens=32, n_prompts=64, precision="fp32", compiled=False):
    from dpo_core import precision as precisions
    from dpo_core.sampling import sample

    model, tok = load(model_name)
    if compiled:  # inductor on the forward the decode loop calls (prefill and one-token steps)
        model.forward = torch.compile(model.forward, dynamic=True)
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
    # no_grad, not inference_mode: under inference_mode autocast's weight cache stays empty, so every
    # decode step recast every weight (copies took 43% of a bf16 sampling run)
    with torch.no_grad(), precisions.autocast(precision), precisions.weights_fixed():
        first = _timed(run)  # warm-up (and compilation, where compiled)
        times = [_timed(run) for _ in range(3)]
    return {"seconds_median": statistics.median(times), "first_s": first,
            "new_tokens_per_s": n_prompts * new_tokens / statistics.median(times)}


def bench_precompute(model_name, precision="fp32"):
    from dpo_core import precision as precisions
    from dpo_core.data import collate_pairs, make_pair
    from dpo_core.train import reference_logps

    model, tok = load(model_name)
    batch = collate_pairs([make_pair(*p, max_length=PROMPT_TOKENS + COMPLETION_TOKENS) for p in make_pairs(tok, 32)], tok.pad_token_id)
    with precisions.autocast(precision):
        reference_logps(model, batch)
        seconds = statistics.median(_timed(lambda: reference_logps(model, batch)) for _ in range(3))
    return {"sequences_per_s": 64 / seconds}


def bench_kl(model_name, precision="fp32"):
    """Exact and sampled sequence KL of 64 completions of 32 tokens (one evaluation's KL)."""
    from dpo_core import precision as precisions
    from dpo_core.evaluate import sequence_kl

    model, tok = load(model_name)
    pairs = make_pairs(tok, 64)
    prompts, completions = [p for p, _, _ in pairs], [c for _, c, _ in pairs]
    with precisions.autocast(precision):
        sequence_kl(model, model, prompts[:8], completions[:8], tok.pad_token_id)
        seconds = statistics.median(_timed(lambda: sequence_kl(model, model, prompts, completions, tok.pad_token_id))
                                    for _ in range(3))
    return {"sequences_per_s": 64 / seconds}


def bench_reward(model_name, precision="fp32"):
    """Gold-reward scoring throughput; with precision bf16 the classifier itself in bf16 autocast
    (SentimentReward always scores in fp32, so this measures what that choice costs)."""
    from dpo_core import assets

    reward = assets.load_reward("tiny" if model_name == "tiny" else "minilm-sentiment")
    texts = assets.load_corpus("pang-lee-sentences")["text"][:256]

    def score():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            for start in range(0, len(texts), reward.batch_size):
                enc = reward.tokenizer(texts[start : start + reward.batch_size], padding=True, truncation=True,
                                       max_length=reward.max_length, return_tensors="pt")
                reward.model(**enc)

    score()
    seconds = statistics.median(_timed(score) for _ in range(3))
    return {"texts_per_s": len(texts) / seconds}


def bench_eval_point(model_name, precision="fp32", n_prompts=256, new_tokens=32):
    """One frontier evaluation point as notebooks 04 and 06 take it (`evaluate.evaluate_policy`:
    256 prompts sampled, exact and sampled KL, gold reward), timed whole and by part. The policy is
    a copy of the reference (step 0's point; the same work as any other)."""
    from dpo_core import assets
    from dpo_core import precision as precisions
    from dpo_core.evaluate import evaluate_policy, sequence_kl
    from dpo_core.sampling import sample

    model, tok = load(model_name)
    reference = copy.deepcopy(model)
    reward = assets.load_reward("tiny" if model_name == "tiny" else "minilm-sentiment")
    prompts = [p for p, _, _ in make_pairs(tok, n_prompts)]
    ids = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    with precisions.autocast(precision):
        evaluate_policy(model, reference, prompts[:16], reward, tok, new_tokens, seed=0)  # warm-up
        sample_s = _timed(lambda: sample(model, prompts, new_tokens, generator=torch.Generator().manual_seed(0), **ids))
        completions = sample(model, prompts, new_tokens, generator=torch.Generator().manual_seed(0), **ids)
        kl_s = _timed(lambda: sequence_kl(model, reference, prompts, completions, tok.pad_token_id,
                                          with_diagnostics=True))
        texts = [tok.decode(p + c, skip_special_tokens=True) for p, c in zip(prompts, completions)]
        reward_s = _timed(lambda: reward(texts))
        point_s = _timed(lambda: evaluate_policy(model, reference, prompts, reward, tok, new_tokens, seed=0))
    return {"point_s": point_s, "sample_s": sample_s, "kl_s": kl_s, "reward_s": reward_s, "prompts": n_prompts}


SAMPLER_BATCHES = (32, 256)  # prompts per sampling call besides the jobs' standard 64


def sampler_job(method, n_prompts):
    """The bf16 sampling job's name at n_prompts; the standard 64 carries no suffix."""
    return f"sample-{method}-bf16" + ("" if n_prompts == 64 else f"-{n_prompts}")

JOBS = {
    "dpo-core": lambda a: bench_dpo_core(a.model, a.steps, a.warmup),
    "dpo-core-lean": lambda a: bench_dpo_core(a.model, a.steps, a.warmup, lean=True),
    "dpo-core-lean-gc": lambda a: bench_dpo_core(a.model, a.steps, a.warmup, lean=True, checkpointing=True),
    "dpo-core-bf16": lambda a: bench_dpo_core(a.model, a.steps, a.warmup, precision="bf16"),
    "dpo-core-lean-bf16": lambda a: bench_dpo_core(a.model, a.steps, a.warmup, lean=True, precision="bf16"),
    "dpo-core-lean-gc-bf16": lambda a: bench_dpo_core(a.model, a.steps, a.warmup, lean=True, checkpointing=True,
                                                      precision="bf16"),
    "dpo-core-bf16-sdpa": lambda a: bench_dpo_core(a.model, a.steps, a.warmup, precision="bf16", sdpa=True),
    "dpo-core-lean-bf16-compiled": lambda a: bench_dpo_core(a.model, a.steps, a.warmup, lean=True, precision="bf16",
                                                            compiled=True),
    "trl-default": lambda a: bench_trl(a.model, a.steps, a.warmup, fast=False),
    "trl-fast": lambda a: bench_trl(a.model, a.steps, a.warmup, fast=True),
    "trl-bf16": lambda a: bench_trl(a.model, a.steps, a.warmup, fast=False, bf16=True),
    "trl-bf16-no-gc": lambda a: bench_trl(a.model, a.steps, a.warmup, fast=False, bf16=True, checkpointing=False),
    "trl-bf16-fast": lambda a: bench_trl(a.model, a.steps, a.warmup, fast=True, bf16=True),
    "trl-bf16-fast-sdpa": lambda a: bench_trl(a.model, a.steps, a.warmup, fast=True, bf16=True, sdpa=True),
    "sample-core": lambda a: bench_sampling(a.model, "core"),
    "sample-core-bf16": lambda a: bench_sampling(a.model, "core", precision="bf16"),
    "sample-core-bf16-compiled": lambda a: bench_sampling(a.model, "core", precision="bf16", compiled=True),
    "sample-generate": lambda a: bench_sampling(a.model, "generate"),
    "sample-generate-bf16": lambda a: bench_sampling(a.model, "generate", precision="bf16"),
    # the batch sizes the project samples at: PPO's 32 rollouts, an evaluation's 256 prompts at once
    **{sampler_job(method, n): (lambda a, method=method, n=n: bench_sampling(a.model, method, n_prompts=n,
                                                                          precision="bf16"))
       for n in SAMPLER_BATCHES for method in ("core", "generate")},
    "decode-bound": lambda a: bench_sampling(a.model, "decode-bound"),
    "decode-bound-bf16": lambda a: bench_sampling(a.model, "decode-bound", precision="bf16"),
    "precompute": lambda a: bench_precompute(a.model),
    "precompute-bf16": lambda a: bench_precompute(a.model, "bf16"),
    "kl": lambda a: bench_kl(a.model),
    "kl-bf16": lambda a: bench_kl(a.model, "bf16"),
    "reward": lambda a: bench_reward(a.model),
    "reward-bf16": lambda a: bench_reward(a.model, "bf16"),
    "eval-point": lambda a: bench_eval_point(a.model),
    "eval-point-bf16": lambda a: bench_eval_point(a.model, "bf16"),
    "step-matmuls": lambda a: step_matmul_rate(a.model),
    "step-matmuls-bf16": lambda a: step_matmul_rate(a.model, torch.bfloat16),
}
BF16 = lambda job: "bf16" in job  # noqa: E731  (which peak a job's MFU is measured against)


def _child(name, args, queue):
    global COMPLETION_TOKENS
    COMPLETION_TOKENS = getattr(args, "completion_tokens", COMPLETION_TOKENS)  # a spawned child starts from defaults
    try:
        result = JOBS[name](args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put(result)
    except Exception as err:  # reported in the table, not hidden
        queue.put({"error": f"{type(err).__name__}: {err}"})


def cpu_description():
    """The CPU's model name and the flags that decide bf16 speed (avx512_bf16, amx_bf16)."""
    from dpo_core.precision import cpuinfo_lines

    model, flags = cpuinfo_lines()
    if not model:
        return platform.processor() or platform.machine()
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    return f"{model.split(':', 1)[1].strip()} ({', '.join(bf16) or 'no native bf16'})"


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
    peak, peak_bf16 = matmul_peak(), matmul_peak(dtype=torch.bfloat16)
    print(f"[bench] matmul peak: fp32 {peak:.1f}, bf16 {peak_bf16:.1f} GFLOP/s, {torch.get_num_threads()} threads",
          flush=True)
    results = {name: run_job(name, args) for name in args.jobs.split(",")}
    record = {"model": args.model, "matmul_peak_gflops": peak, "matmul_peak_bf16_gflops": peak_bf16,
              "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "cpu": cpu_description(),
              "pairs": PAIRS, "prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
              "results": results}
    path = Path(args.out)
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous[args.model] = record
    path.write_text(json.dumps(previous, indent=2))
    path.with_suffix(".md").write_text(render(previous))
    print(f"[bench] wrote {path} and {path.with_suffix('.md')}")


def sampler_batch_rows(r):
    """The sampler against model.generate at each batch size measured (bf16), as rows of a table."""
    rows = [(n, *(r.get(sampler_job(method, n), {}).get("new_tokens_per_s") for method in ("core", "generate")))
            for n in sorted((64, *SAMPLER_BATCHES))]
    rows = [(n, core, gen) for n, core, gen in rows if core and gen]
    if len(rows) < 2:
        return []
    return ["", "The sampler against `model.generate` by batch size (bf16, 32 new tokens, new tokens/s):", "",
            "| prompts at once | dpo_core | model.generate | ratio | >= 2x? |", "|---|---|---|---|---|"] + [
        f"| {n} | {core:.0f} | {gen:.0f} | {ratio(core, gen)} | {'yes' if core >= 2 * gen else 'no'} |"
        for n, core, gen in rows]


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "n/a"


STEP_JOBS = [j for j in JOBS if j.startswith(("dpo-core", "trl"))]


def render(records):
    """RESULTS.md: every measurement, then the targets as ratios from the same run."""
    lines = ["# Benchmark results", "", "Written by `bench/bench_dpo.py` (`make bench`); do not edit by hand.", ""]
    for model, rec in records.items():
        r = rec["results"]
        peaks = {False: rec["matmul_peak_gflops"], True: rec.get("matmul_peak_bf16_gflops") or rec["matmul_peak_gflops"]}
        lines += [f"## {model}", "",
                  f"{rec['cpu'] + ', ' if 'cpu' in rec else ''}torch {rec['torch']}, {rec['threads']} threads; matmul peaks measured in this run (2048 x 2048): "
                  f"fp32 {peaks[False]:.1f}, bf16 {peaks[True]:.1f} GFLOP/s. Batch: {rec['pairs']} pairs of "
                  f"{rec['prompt_tokens']} + {rec['completion_tokens']} tokens. MFU: nominal 6NT FLOPs against the "
                  "peak of the precision the job uses.", "",
                  "| job | step median s (min-max) | first step s | tokens/s | GFLOP/s (6NT) | MFU | peak RSS MB: training / process |",
                  "|---|---|---|---|---|---|---|"]
        for job in STEP_JOBS:
            x = r.get(job, {})
            if "step_median_s" in x:
                lines.append(f"| {job} | {x['step_median_s']:.3f} ({x['step_min_s']:.3f}-{x['step_max_s']:.3f}) | "
                             f"{x.get('first_step_s', float('nan')):.1f} | {x['tokens_per_s']:.0f} | {x['gflops']:.1f} | "
                             f"{x['gflops'] / peaks[BF16(job)]:.0%} | {x.get('train_peak_rss_mb', 0):.0f} / {x['peak_rss_mb']:.0f} |")
            elif x:
                lines.append(f"| {job} | failed: {x.get('error')} | | | | | |")
        lines += ["", "| job | fp32 | bf16 | bf16 / fp32 |", "|---|---|---|---|"]
        for job, unit in (("sample-core", "new_tokens_per_s"), ("sample-generate", "new_tokens_per_s"),
                          ("decode-bound", "new_tokens_per_s"), ("precompute", "sequences_per_s"),
                          ("kl", "sequences_per_s"), ("reward", "texts_per_s")):
            a, b = r.get(job, {}).get(unit), r.get(f"{job}-bf16", {}).get(unit)
            lines.append(f"| {job} ({unit}) | {a or float('nan'):.1f} | {b or float('nan'):.1f} | {ratio(b, a)} |")
        points = {job: r.get(job, {}) for job in ("eval-point", "eval-point-bf16")}
        if any("point_s" in x for x in points.values()):
            lines += ["", "One frontier evaluation point (`evaluate_policy`, 256 prompts x 32 tokens), seconds:", "",
                      "| job | whole point | sampling | exact + sampled KL | gold reward |", "|---|---|---|---|---|"]
            lines += [f"| {job} | {x['point_s']:.1f} | {x['sample_s']:.1f} | {x['kl_s']:.1f} | {x['reward_s']:.1f} |"
                      for job, x in points.items() if "point_s" in x]
        ok = {j: r[j] for j in STEP_JOBS if "tokens_per_s" in r.get(j, {})}
        core = max((j for j in ok if j.startswith("dpo-core")), key=lambda j: ok[j]["tokens_per_s"], default=None)
        trl = max((j for j in ok if j.startswith("trl")), key=lambda j: ok[j]["tokens_per_s"], default=None)
        core_bf16 = max((j for j in ok if j.startswith("dpo-core") and BF16(j)), key=lambda j: ok[j]["gflops"], default=None)
        sampler = {k: r.get(k, {}).get("new_tokens_per_s") for k in
                   ("sample-core", "sample-core-bf16", "sample-generate", "sample-generate-bf16")}
        best_core_sampler = max([v for k, v in sampler.items() if "core" in k and v] or [0])
        best_generate = max([v for k, v in sampler.items() if "generate" in k and v] or [0])
        lines += ["", "| target | measured | met? |", "|---|---|---|"]
        if core and trl:
            speedup = ok[core]["tokens_per_s"] / ok[trl]["tokens_per_s"]
            lines.append(f"| best full-model DPO step >= 1.5x TRL's best configuration | {core} against {trl}: "
                         f"{speedup:.2f}x | {'yes' if speedup >= 1.5 else 'no'} |")
            rss = (ok[core].get("train_peak_rss_mb", 0), ok[trl].get("train_peak_rss_mb", 0))
            lines.append(f"| peak RSS no higher than TRL's (the two fastest) | {rss[0]:.0f} against {rss[1]:.0f} MB | "
                         f"{'yes' if rss[0] <= rss[1] else 'no'} |")
        if core_bf16:
            mfu = ok[core_bf16]["gflops"] / peaks[True]
            lines.append(f"| >= 60% of the bf16 matmul peak | {core_bf16}: {mfu:.0%} | {'yes' if mfu >= 0.6 else 'no'} |")
        shaped = r.get("step-matmuls-bf16", {}).get("gflops")
        if core_bf16 and shaped:
            lines.append(f"| (context) the step's matmuls alone, at its shapes ({r['step-matmuls-bf16']['rows']} rows) | "
                         f"{shaped:.0f} GFLOP/s, {shaped / peaks[True]:.0%} of the peak; {core_bf16} runs at "
                         f"{ok[core_bf16]['gflops'] / shaped:.0%} of that rate | n/a |")
        if best_core_sampler and best_generate:
            lines.append(f"| sampler >= 2x model.generate (best against best) | {ratio(best_core_sampler, best_generate)} | "
                         f"{'yes' if best_core_sampler >= 2 * best_generate else 'no'} |")
        lines += sampler_batch_rows(r)
        lines += compile_verdicts(r)
        lines.append("")
    return "\n".join(lines)


# A typical run of the cpu profile: notebook 04 takes 60 DPO steps; its 3-4 frontier evaluations sample
# 256 prompts each, about 16 calls the size of the sampling jobs' 64 prompts.
TYPICAL_STEPS, TYPICAL_SAMPLING_CALLS = 60, 16


# (path, eager job, compiled job, its seconds, its first call's seconds, calls in a typical run)
COMPILED_PATHS = [
    (f"training step ({TYPICAL_STEPS} steps)", "dpo-core-lean-bf16", "dpo-core-lean-bf16-compiled", "step_median_s",
     "first_step_s", TYPICAL_STEPS),
    (f"sampler ({TYPICAL_SAMPLING_CALLS} x 64 prompts)", "sample-core-bf16", "sample-core-bf16-compiled",
     "seconds_median", "first_s", TYPICAL_SAMPLING_CALLS),
]


def compile_verdicts(r):
    """torch.compile kept only where it gains >= 1.2x over a typical run, compile time included."""
    rows = []
    for name, eager_job, compiled_job, seconds, first, calls in COMPILED_PATHS:
        eager, compiled = r.get(eager_job, {}), r.get(compiled_job, {})
        if seconds in eager and seconds in compiled and first in compiled:
            # compilation is what the compiled job's first call costs beyond the eager one's
            overhead = max(compiled[first] - eager.get(first, eager[seconds]), 0)
            gain = calls * eager[seconds] / (overhead + calls * compiled[seconds])
            rows.append((name, eager[seconds], compiled[seconds], overhead, gain))
    if not rows:
        return []
    lines = ["", "torch.compile (inductor), bf16, against the same job eager, over a typical cpu-profile run:", "",
             "| path | eager s | compiled s | compile overhead s | gain over a typical run | keep (>= 1.2x)? |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {a:.3f} | {b:.3f} | {c:.0f} | {g:.2f}x | {'yes' if g >= 1.2 else 'no'} |"
              for name, a, b, c, g in rows]
    return lines


if __name__ == "__main__":
    sys.exit(main())
