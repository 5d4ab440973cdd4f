"""The speed levers of issue 8, one at a time, each against the plain path in the same process,
interleaved (A, B, A, B, ...) so that a busy or throttled machine slows both alike.

    lm-head-scored      the LM head on completion positions only (`logprobs.scored_logps`)
                        against logits at every position; full-model DPO step
    lm-head-scored-top  the same on the cpu profile's path: top 4 blocks on cached bottom states
    frozen-bottom       top-4 training on cached bottom states against the full forward
    reference-cached    pi_ref's log-probs precomputed against a reference forward in every step
    threads             torch.set_num_threads(1) against the default
    malloc              glibc malloc tunables (no extra package) against the default: own processes

Usage: python bench/bench_levers.py --model smollm2-135m --reps 5   (writes bench/LEVERS.md)
Each lever also reports whether the two paths give the same log-probs (the plain one is the oracle).
"""

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_dpo import load, make_pairs  # noqa: E402

N_TOP = 4  # the cpu profile's train_layers (1 on the 2-block tiny model)


def n_top(model):
    from dpo_core.train import transformer_blocks

    return min(N_TOP, len(transformer_blocks(model)) - 1)


def setup(model_name, prompt_tokens, completion_tokens, pairs=8):
    from dpo_core.data import collate_pairs, make_pair
    from dpo_core.train import disable_dropout, reference_logps

    model, tok = load(model_name)
    disable_dropout(model).train()
    rows = make_pairs(tok, pairs)  # 8 + 32 tokens of real reviews; stretch the prompt from the review text
    texts = make_pairs(tok, pairs, seed=1)
    examples = []
    for (p, c, r), (q, _, _) in zip(rows, texts):
        prompt = (q * (prompt_tokens // max(1, len(q)) + 1))[:prompt_tokens]
        examples.append(make_pair(prompt, c[:completion_tokens], r[:completion_tokens], 4096))
    batch = collate_pairs(examples, tok.pad_token_id)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    ref = reference_logps(reference, batch)
    return model, reference, batch, ref


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(variants, reps, warmup=1):
    """{name: median seconds} of zero-argument callables, run alternately."""
    times = {name: [] for name in variants}
    for i in range(warmup + reps):
        for name, fn in variants.items():
            t = timed(fn)
            if i >= warmup:
                times[name].append(t)
    return {name: statistics.median(t) for name, t in times.items()}


def lever_lm_head(model_name, reps, prompt_tokens, completion_tokens, top):
    from dpo_core import frozen
    from dpo_core.logprobs import concatenated_forward
    from dpo_core.train import dpo_step, train_top_layers

    model, _, batch, (ref_c, ref_r) = setup(model_name, prompt_tokens, completion_tokens)
    k = n_top(model)
    if top:
        train_top_layers(model, k)
        from dpo_core.logprobs import concatenated_inputs

        inputs = concatenated_inputs(batch)
        with torch.no_grad():
            batch["bottom"] = frozen.bottom_hidden(model, inputs["input_ids"], inputs["attention_mask"], k)

        def plain_forward(m, b):  # the full-logits path on the same cached states
            from dpo_core.logprobs import sequence_logps

            hidden = frozen.top_hidden(m, b["bottom"], inputs["attention_mask"], k)
            logps = sequence_logps(frozen.lm_logits(m, hidden), inputs["labels"])
            return logps[: len(logps) // 2], logps[len(logps) // 2 :]

        fast_forward = lambda m, b: frozen.concatenated_top_forward(m, b, k, completion_only=True)  # noqa: E731
    else:
        plain_forward = concatenated_forward
        fast_forward = lambda m, b: concatenated_forward(m, b, completion_only=True)  # noqa: E731
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)  # lr 0: same weights
    with torch.no_grad():
        same = max((a - b).abs().max().item() for a, b in zip(plain_forward(model, batch), fast_forward(model, batch)))
    result = interleaved({
        "plain": lambda: dpo_step(model, optimizer, batch, ref_c, ref_r, 0.1, forward=plain_forward),
        "lever": lambda: dpo_step(model, optimizer, batch, ref_c, ref_r, 0.1, forward=fast_forward),
    }, reps)
    return {**result, "max_logp_difference": same}


def lever_frozen_bottom(model_name, reps, prompt_tokens, completion_tokens):
    from dpo_core import frozen
    from dpo_core.logprobs import concatenated_forward, concatenated_inputs
    from dpo_core.train import dpo_step, train_top_layers

    model, _, batch, (ref_c, ref_r) = setup(model_name, prompt_tokens, completion_tokens)
    k = n_top(model)
    train_top_layers(model, k)
    inputs = concatenated_inputs(batch)
    cached = dict(batch)
    with torch.no_grad():
        cached["bottom"] = frozen.bottom_hidden(model, inputs["input_ids"], inputs["attention_mask"], k)
        same = max((a - b).abs().max().item() for a, b in zip(concatenated_forward(model, batch),
                                                               frozen.concatenated_top_forward(model, cached, k)))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    result = interleaved({
        "plain": lambda: dpo_step(model, optimizer, batch, ref_c, ref_r, 0.1),
        "lever": lambda: dpo_step(model, optimizer, cached, ref_c, ref_r, 0.1,
                                  forward=lambda m, b: frozen.concatenated_top_forward(m, b, k)),
    }, reps)
    return {**result, "max_logp_difference": same}


def lever_reference(model_name, reps, prompt_tokens, completion_tokens):
    from dpo_core.train import dpo_step, reference_logps

    model, reference, batch, (ref_c, ref_r) = setup(model_name, prompt_tokens, completion_tokens)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    return interleaved({
        "plain": lambda: dpo_step(model, optimizer, batch, *reference_logps(reference, batch), 0.1),
        "lever": lambda: dpo_step(model, optimizer, batch, ref_c, ref_r, 0.1),
    }, reps)


def lever_threads(model_name, reps, prompt_tokens, completion_tokens):
    from dpo_core.train import dpo_step

    model, _, batch, (ref_c, ref_r) = setup(model_name, prompt_tokens, completion_tokens)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    default = torch.get_num_threads()

    def with_threads(n):
        torch.set_num_threads(n)
        try:
            dpo_step(model, optimizer, batch, ref_c, ref_r, 0.1)
        finally:
            torch.set_num_threads(default)

    return {**interleaved({"plain": lambda: with_threads(default), "lever": lambda: with_threads(1)}, reps),
            "default_threads": default}


MALLOC = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456:"
                            "glibc.malloc.top_pad=67108864"}


def lever_malloc(args):
    """Two child processes, default and tuned malloc, alternately, each timing one full-model step."""
    times = {"plain": [], "lever": []}
    for i in range(args.reps):
        for name, env in (("plain", {}), ("lever", MALLOC)):
            out = subprocess.run([sys.executable, __file__, "--model", args.model, "--one-step",
                                  "--prompt-tokens", str(args.prompt_tokens),
                                  "--completion-tokens", str(args.completion_tokens)],
                                 env={**os.environ, **env}, capture_output=True, text=True, check=True)
            times[name].append(float(out.stdout.strip().splitlines()[-1]))
    return {name: statistics.median(t) for name, t in times.items()} | {"tunables": MALLOC["GLIBC_TUNABLES"]}


def one_step(args):
    from dpo_core.train import dpo_step

    model, _, batch, (ref_c, ref_r) = setup(args.model, args.prompt_tokens, args.completion_tokens)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    for _ in range(2):
        dpo_step(model, optimizer, batch, ref_c, ref_r, 0.1)
    print(statistics.median(timed(lambda: dpo_step(model, optimizer, batch, ref_c, ref_r, 0.1)) for _ in range(3)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--completion-tokens", type=int, default=32)
    parser.add_argument("--levers", default="lm-head-scored,lm-head-scored-top,frozen-bottom,reference-cached,threads,malloc")
    parser.add_argument("--one-step", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_step:
        return one_step(args)
    shape = (args.model, args.reps, args.prompt_tokens, args.completion_tokens)
    runs = {"lm-head-scored": lambda: lever_lm_head(*shape, top=False),
            "lm-head-scored-top": lambda: lever_lm_head(*shape, top=True),
            "frozen-bottom": lambda: lever_frozen_bottom(*shape),
            "reference-cached": lambda: lever_reference(*shape),
            "threads": lambda: lever_threads(*shape),
            "malloc": lambda: lever_malloc(args)}
    results = {}
    for name in args.levers.split(","):
        results[name] = runs[name]()
        print(f"[levers] {name}: {json.dumps(results[name])}", flush=True)
    path = Path(__file__).with_name("LEVERS.json")
    record = json.loads(path.read_text()) if path.exists() else {}
    record.setdefault(f"{args.model} prompt {args.prompt_tokens} + completion {args.completion_tokens}", {}).update(results)
    path.write_text(json.dumps(record, indent=2))
    path.with_suffix(".md").write_text(render(record))
    print(f"[levers] wrote {path.with_suffix('.md')}")


def render(record):
    lines = ["# Speed levers, one at a time", "", "Written by `bench/bench_levers.py`; do not edit by hand. Each row: "
             "one DPO step (8 pairs, fp32, 2 cores), median of interleaved repetitions of the plain path and the "
             "lever in the same process; the plain path is the oracle for the log-probs.", ""]
    for shape, results in record.items():
        lines += [f"## {shape}", "", "| lever | plain s | with lever s | speed-up | max log-prob difference |",
                  "|---|---|---|---|---|"]
        for name, r in results.items():
            diff = f"{r['max_logp_difference']:.1e}" if "max_logp_difference" in r else "n/a (same computation)"
            lines.append(f"| {name} | {r['plain']:.3f} | {r['lever']:.3f} | {r['plain'] / r['lever']:.2f}x | {diff} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
