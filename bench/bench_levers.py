"""The speed levers of issue 8, one at a time, each against the plain path in the same process,
interleaved (A, B, A, B, ...) so that a busy or throttled machine slows both alike.

    lm-head-scored      the LM head on completion positions only, with their (N, V) log-softmax
                        materialised, against logits at every position; full-model DPO step
    lm-head-scored-top  the cpu profile's path (top 4 blocks on cached bottom states): full logits
                        against the library's scored, chunked LM head
    chunked-log-softmax the library's path (`logprobs.scored_logps`): those N positions in blocks,
                        no (N, V) tensor kept for the backward, against the materialised one
    length-buckets      4 steps over 32 pairs of varied length (8-128 completion tokens), batches
                        bucketed by length (`train.length_bucketed`) against random batches
    draw                one sampling draw for 64 rows over the vocabulary: inverse CDF (`sampling.draw`)
                        against torch.multinomial on the softmax (Gumbel-max reported beside)
    frozen-bottom       top-4 training on cached bottom states against the full forward
    reference-cached    pi_ref's log-probs precomputed against a reference forward in every step
    fused-adamw         AdamW's fused CPU kernel (what transformers gives TRL) against its default loop;
                        full-model step, real updates (lr 1e-6)
    threads             torch.set_num_threads(1) against the default
    fp32-attention-bf16 in bf16 autocast: attention in fp32 (`models.attention_in_fp32`, the loaders'
                        default) against transformers' stock SDPA (bf16 flash attention on CPU); full-model
                        DPO step (an earlier run's math-attention-bf16 row tried PyTorch's math backend)
    malloc              glibc malloc tunables (no extra package) against the default: own processes

Usage: python bench/bench_levers.py --model smollm2-135m --reps 5   (writes bench/LEVERS.md)
Each lever also reports whether the two paths give the same log-probs (the plain one is the oracle),
and the peak RSS of each path measured in a process of its own (two steps of the path alone).
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
from bench_dpo import load, make_pairs, peak_rss_mb, reset_peak_rss  # noqa: E402

N_TOP = 4  # the cpu profile's train_layers (1 on the 2-block tiny model)


def n_top(model):
    from dpo_core.models import transformer_blocks

    return min(N_TOP, len(transformer_blocks(model)) - 1)


def setup(model_name, prompt_tokens, completion_tokens, pairs=8):
    from dpo_core.data import collate_pairs, make_pair
    from dpo_core.models import disable_dropout
    from dpo_core.train import reference_logps

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


def compare_steps(model, reference, reps, plain, lever):
    """`plain` and `lever`: (forward, batch). Their largest log-prob difference, and the DPO step
    of each timed interleaved; SGD with lr 0, so every repetition sees the same weights."""
    from dpo_core.models import trainable
    from dpo_core.train import dpo_step

    optimizer = torch.optim.SGD(trainable(model), lr=0.0)
    with torch.no_grad():
        same = max((a - b).abs().max().item() for a, b in zip(plain[0](model, plain[1]), lever[0](model, lever[1])))

    def step(forward, batch):
        return lambda: dpo_step(model, optimizer, batch, *reference, 0.1, forward=forward)

    return {**interleaved({"plain": step(*plain), "lever": step(*lever)}, reps), "max_logp_difference": same}


def lever_lm_head_top(model_name, reps, prompt_tokens, completion_tokens):
    """The cpu profile's path (top blocks on cached bottom states): full logits against the library's
    scored, chunked LM head."""
    from dpo_core import frozen
    from dpo_core.logprobs import concatenated_inputs, sequence_logps
    from dpo_core.models import train_top_layers

    model, _, batch, reference = setup(model_name, prompt_tokens, completion_tokens)
    k = n_top(model)
    train_top_layers(model, k)
    inputs = concatenated_inputs(batch)
    with torch.no_grad():
        batch["bottom"] = frozen.bottom_hidden(model, inputs["input_ids"], inputs["attention_mask"], k)

    def plain_forward(m, b):  # the full-logits path on the same cached states
        hidden = frozen.top_hidden(m, b["bottom"], inputs["attention_mask"], k)
        logps = sequence_logps(frozen.lm_logits(m, hidden), inputs["labels"])
        return logps[: len(logps) // 2], logps[len(logps) // 2 :]

    fast_forward = lambda m, b: frozen.concatenated_top_forward(m, b, k, completion_only=True)  # noqa: E731
    return compare_steps(model, reference, reps, (plain_forward, batch), (fast_forward, batch))


def materialised_scored_forward(model, batch):
    """The LM head on scored positions with their whole (N, V) log-softmax kept for the backward:
    what `scored_logps` did before it went by blocks (the chunked-log-softmax lever's plain side)."""
    from dpo_core.logprobs import concatenated_inputs, position_ids_from_mask

    inputs = concatenated_inputs(batch)
    hidden = model.base_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                              position_ids=position_ids_from_mask(inputs["attention_mask"])).last_hidden_state
    labels = inputs["labels"][:, 1:]
    mask = labels != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][mask]).float()  # (N, V)
    picked = logits.gather(-1, labels[mask][:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
    logps = torch.zeros(len(labels)).index_add(0, mask.nonzero(as_tuple=True)[0], picked)
    return logps[: len(logps) // 2], logps[len(logps) // 2 :]


def forwards():
    """Full-model forwards by name, for the levers and for --one-step's memory measurement."""
    from dpo_core.logprobs import concatenated_forward

    return {"full": concatenated_forward,
            "scored-materialised": materialised_scored_forward,
            "scored-chunked": lambda m, b: concatenated_forward(m, b, completion_only=True)}


def lever_forwards(model_name, reps, prompt_tokens, completion_tokens, plain, lever):
    """Two full-model forwards, timed interleaved in this process, and their peak RSS alone."""
    model, _, batch, reference = setup(model_name, prompt_tokens, completion_tokens)
    paths = forwards()
    result = compare_steps(model, reference, reps, (paths[plain], batch), (paths[lever], batch))
    memory = {f"{side}_peak_rss_mb": alone(model_name, prompt_tokens, completion_tokens, path)["peak_rss_mb"]
              for side, path in (("plain", plain), ("lever", lever))}
    return {**result, **memory}


def alone(model_name, prompt_tokens, completion_tokens, forward="full", env=None):
    """--one-step in a child process: {'seconds', 'peak_rss_mb'} of that forward's DPO step alone."""
    out = subprocess.run([sys.executable, __file__, "--model", model_name, "--one-step", "--forward", forward,
                          "--prompt-tokens", str(prompt_tokens), "--completion-tokens", str(completion_tokens)],
                         env={**os.environ, **(env or {})}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def lever_length_buckets(model_name, reps, prompt_tokens, pairs=32, steps=4, batch_size=8):
    """Same 32 pairs, same 4 steps: random batches against length-bucketed ones (full model)."""
    from dpo_core.data import collate_pairs, make_pair
    from dpo_core.models import disable_dropout
    from dpo_core.train import dpo_step, length_bucketed, pair_batches, reference_logps

    model, tok = load(model_name)
    disable_dropout(model).train()
    g = torch.Generator().manual_seed(0)
    rows = make_pairs(tok, pairs, completion_tokens=128)
    examples = []
    for p, c, r in rows:  # completions cut to lengths drawn uniformly from 8-128, as real answers vary
        n_c, n_r = torch.randint(8, 129, (2,), generator=g).tolist()
        examples.append(make_pair(p[:prompt_tokens], c[:n_c], r[:n_r], 4096))
    lengths = [max(len(e["chosen_input_ids"]), len(e["rejected_input_ids"])) for e in examples]
    plain = pair_batches(pairs, batch_size, steps, seed=0)
    bucketed = length_bucketed(plain, lengths, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def epoch(batches):
        for indices in batches:
            batch = collate_pairs([examples[i] for i in indices], tok.pad_token_id)
            dpo_step(model, optimizer, batch, *reference_logps(model, batch), 0.1)

    def padded_share(batches):
        real = sum(len(examples[i][f"{side}_input_ids"]) for b in batches for i in b for side in ("chosen", "rejected"))
        return 1 - real / sum(2 * len(b) * max(lengths[i] for i in b) for b in batches)

    return {**interleaved({"plain": lambda: epoch(plain), "lever": lambda: epoch(bucketed)}, reps),
            "padding_share_plain": padded_share(plain), "padding_share_lever": padded_share(bucketed)}


def lever_draw(model_name, reps, rows=64, calls=20):
    """`calls` draws of one token per row from (rows, V) logits, the sampler's per-token step."""
    from dpo_core.sampling import draw

    model, _ = load(model_name)
    vocab = model.get_output_embeddings().weight.shape[0]
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0)) * 3
    g = torch.Generator().manual_seed(1)

    def repeat(fn):
        return lambda: [fn() for _ in range(calls)]

    result = interleaved({
        "plain": repeat(lambda: torch.multinomial(torch.softmax(logits, -1), 1, generator=g)),
        "lever": repeat(lambda: draw(logits, 1.0, g)),
        "gumbel": repeat(lambda: (logits - torch.empty_like(logits).exponential_(generator=g).log()).argmax(-1)),
    }, reps)
    return {name: seconds / calls for name, seconds in result.items()} | {"rows": rows, "vocab": vocab}


def lever_frozen_bottom(model_name, reps, prompt_tokens, completion_tokens):
    from dpo_core import frozen
    from dpo_core.logprobs import concatenated_forward, concatenated_inputs
    from dpo_core.models import train_top_layers

    model, _, batch, reference = setup(model_name, prompt_tokens, completion_tokens)
    k = n_top(model)
    train_top_layers(model, k)
    inputs = concatenated_inputs(batch)
    cached = dict(batch)
    with torch.no_grad():
        cached["bottom"] = frozen.bottom_hidden(model, inputs["input_ids"], inputs["attention_mask"], k)
    top_forward = lambda m, b: frozen.concatenated_top_forward(m, b, k)  # noqa: E731
    return compare_steps(model, reference, reps, (concatenated_forward, batch), (top_forward, cached))


def lever_reference(model_name, reps, prompt_tokens, completion_tokens):
    from dpo_core.train import dpo_step, reference_logps

    model, reference, batch, (ref_c, ref_r) = setup(model_name, prompt_tokens, completion_tokens)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    return interleaved({
        "plain": lambda: dpo_step(model, optimizer, batch, *reference_logps(reference, batch), 0.1),
        "lever": lambda: dpo_step(model, optimizer, batch, ref_c, ref_r, 0.1),
    }, reps)


def lever_fused_adamw(model_name, reps, prompt_tokens, completion_tokens):
    from dpo_core.train import dpo_step

    model, _, batch, (ref_c, ref_r) = setup(model_name, prompt_tokens, completion_tokens)
    loop, fused = (torch.optim.AdamW(model.parameters(), lr=1e-6, fused=f) for f in (False, True))
    return interleaved({"plain": lambda: dpo_step(model, loop, batch, ref_c, ref_r, 0.1),
                        "lever": lambda: dpo_step(model, fused, batch, ref_c, ref_r, 0.1)}, reps)


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


def lever_fp32_attention(model_name, reps, prompt_tokens, completion_tokens):
    """bf16 autocast, both paths: transformers' stock SDPA attention (bf16 under autocast; the flash
    kernel on CPU, whose backward took a fifth of a bf16 step on an AMX Xeon) against attention in
    fp32 (`models.attention_in_fp32`, what dpo_core's loaders give). Also each one's distance from
    the fp32 log-probs over 32 pairs (64 sequences; mean and max, nats): an earlier version ranked
    kernels by 16 sequences, too few to tell them apart."""
    from dpo_core import precision as precisions
    from dpo_core.logprobs import concatenated_forward
    from dpo_core.models import FP32_ATTENTION

    def with_attention(name):
        def forward(m, b):
            m.set_attn_implementation(name)
            try:
                return concatenated_forward(m, b)
            finally:
                m.set_attn_implementation(FP32_ATTENTION)
        return forward

    sdpa, fp32_attention = with_attention("sdpa"), with_attention(FP32_ATTENTION)
    model, _, wide, _ = setup(model_name, prompt_tokens, completion_tokens, pairs=32)
    with torch.no_grad():
        fp32 = torch.cat(concatenated_forward(model, wide))  # the oracle (in fp32 the two attentions are one)
        with precisions.autocast("bf16"):
            off = {name: (torch.cat(forward(model, wide)) - fp32).abs()
                   for name, forward in (("sdpa", sdpa), ("fp32_attention", fp32_attention))}
    model, _, batch, _ = setup(model_name, prompt_tokens, completion_tokens)
    with precisions.autocast("bf16"):
        with torch.no_grad():
            reference = sdpa(model, batch)
        result = compare_steps(model, reference, reps, (sdpa, batch), (fp32_attention, batch))
    return {**result, **{f"{name}_vs_fp32_{stat}": getattr(d, stat)().item() for name, d in off.items()
                         for stat in ("mean", "max")}}


MALLOC = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456:"
                            "glibc.malloc.top_pad=67108864"}


def lever_malloc(args):
    """Two child processes, default and tuned malloc, alternately, each timing one full-model step."""
    times = {"plain": [], "lever": []}
    for i in range(args.reps):
        for name, env in (("plain", {}), ("lever", MALLOC)):
            times[name].append(alone(args.model, args.prompt_tokens, args.completion_tokens, env=env)["seconds"])
    return {name: statistics.median(t) for name, t in times.items()} | {"tunables": MALLOC["GLIBC_TUNABLES"]}


def one_step(args):
    """Time a full-model DPO step of one forward path; print seconds and the peak RSS of the steps."""
    from dpo_core.train import dpo_step

    model, _, batch, (ref_c, ref_r) = setup(args.model, args.prompt_tokens, args.completion_tokens)
    forward = forwards()[args.forward]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    reset_peak_rss()  # the steps' peak, not the loading's
    for _ in range(2):
        dpo_step(model, optimizer, batch, ref_c, ref_r, 0.1, forward=forward)
    seconds = statistics.median(timed(lambda: dpo_step(model, optimizer, batch, ref_c, ref_r, 0.1, forward=forward))
                                for _ in range(3))
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--completion-tokens", type=int, default=32,
                        help="at most 32 (the reviews' completions); --prompt-tokens makes sequences longer")
    parser.add_argument("--levers", default="lm-head-scored,lm-head-scored-top,chunked-log-softmax,length-buckets,"
                                            "draw,frozen-bottom,reference-cached,fused-adamw,threads,malloc")
    parser.add_argument("--out", default=str(Path(__file__).with_name("LEVERS.json")),
                        help="another file for another machine (LEVERS.md's rows must come from one machine)")
    parser.add_argument("--one-step", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--forward", default="full", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.completion_tokens > 32:
        parser.error("--completion-tokens above 32 would silently stay 32; lengthen with --prompt-tokens instead")
    if args.one_step:
        return one_step(args)
    shape = (args.model, args.reps, args.prompt_tokens, args.completion_tokens)
    runs = {"lm-head-scored": lambda: lever_forwards(*shape, plain="full", lever="scored-materialised"),
            "chunked-log-softmax": lambda: lever_forwards(*shape, plain="scored-materialised", lever="scored-chunked"),
            "length-buckets": lambda: lever_length_buckets(*shape[:3]),
            "lm-head-scored-top": lambda: lever_lm_head_top(*shape),
            "draw": lambda: lever_draw(args.model, args.reps),
            "frozen-bottom": lambda: lever_frozen_bottom(*shape),
            "reference-cached": lambda: lever_reference(*shape),
            "fused-adamw": lambda: lever_fused_adamw(*shape),
            "threads": lambda: lever_threads(*shape),
            "fp32-attention-bf16": lambda: lever_fp32_attention(*shape),
            "malloc": lambda: lever_malloc(args)}
    results = {}
    for name in args.levers.split(","):
        results[name] = runs[name]()
        print(f"[levers] {name}: {json.dumps(results[name])}", flush=True)
    path = Path(args.out)
    record = json.loads(path.read_text()) if path.exists() else {}
    record.setdefault(f"{args.model} prompt {args.prompt_tokens} + completion {args.completion_tokens}", {}).update(results)
    path.write_text(json.dumps(record, indent=2))
    path.with_suffix(".md").write_text(render(record))
    print(f"[levers] wrote {path.with_suffix('.md')}")


def render(record):
    lines = ["# Speed levers, one at a time", "", "Written by `bench/bench_levers.py`; do not edit by hand. Each row: "
             "one DPO step (8 pairs, fp32, 2 cores; length-buckets: 4 steps), median of interleaved repetitions "
             "of the plain path and the lever in the same process; the plain path is the oracle for the "
             "log-probs. Peak RSS, where given: each path alone in a process of its own, the peak during its "
             "steps (the model and a reference copy loaded before are included, their loading peak is not).", ""]
    for shape, results in record.items():
        lines += [f"## {shape}", "", "| lever | plain s | with lever s | speed-up | max log-prob difference | "
                  "peak RSS plain -> lever MB |", "|---|---|---|---|---|---|"]
        for name, r in results.items():
            diff = f"{r['max_logp_difference']:.1e}" if "max_logp_difference" in r else "n/a (same computation)"
            if "gumbel" in r:
                diff = f"n/a (same distribution); per draw of {r['rows']} x {r['vocab']}; Gumbel-max {r['gumbel']:.4f} s"
            if "flash_vs_fp32_mean" in r:  # the math-attention lever of an earlier run
                diff += (f"; from fp32: flash {r['flash_vs_fp32_mean']:.2f} mean / {r['flash_vs_fp32_max']:.2f} max, "
                         f"math {r['math_vs_fp32_mean']:.2f} / {r['math_vs_fp32_max']:.2f}")
            if "sdpa_vs_fp32_mean" in r:
                diff += (f"; from fp32 (64 sequences): bf16 SDPA {r['sdpa_vs_fp32_mean']:.2f} mean / "
                         f"{r['sdpa_vs_fp32_max']:.2f} max, fp32 attention {r['fp32_attention_vs_fp32_mean']:.2f} / "
                         f"{r['fp32_attention_vs_fp32_max']:.2f}")
            if "padding_share_plain" in r:
                diff = f"n/a; padding {r['padding_share_plain']:.0%} -> {r['padding_share_lever']:.0%} of tokens"
            memory = (f"{r['plain_peak_rss_mb']:.0f} -> {r['lever_peak_rss_mb']:.0f}" if "plain_peak_rss_mb" in r
                      else "")
            lines.append(f"| {name} | {r['plain']:.3f} | {r['lever']:.3f} | {r['plain'] / r['lever']:.2f}x | {diff} | "
                         f"{memory} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
