"""The matmul precision of a run: fp32, or bf16 autocast where this machine runs it faster.

bf16 covers the matmuls only (`torch.autocast`): master weights, optimizer state, the
log-softmax and log-prob sums, the loss, KL and rewards stay fp32 (logprobs.py casts logits to
fp32 before any reduction). Whether bf16 pays depends on the CPU: an AMD EPYC with
avx512_bf16 runs a bf16 matmul about 4x faster than fp32, while a CPU without native bf16 runs
it slower. So `precision="auto"` measures both at the model's own matmul shapes, once per
machine, and keeps fp32 unless bf16 is clearly faster (`choose`).

bf16 log-probs depend on the batch they are computed in (padded length, kernel choice): a
sequence scored alone and in a padded batch differs by about 0.1 nats on SmolLM2, against
1e-5 in fp32. So pi_ref's log-probs must come from the same path and batch layout as the
policy's (`train.reference_logps_by_batch`), or step 0 is no longer loss = ln 2.

    autocast(precision)       the context a run executes in (autocast's weight cache off)
    weights_fixed()           the weight cache on, for blocks that do not train (sampling, scoring)
    prepacked_linears(model)  bf16 weights reordered once for oneDNN, for decoding (sampling)
    choose(precision, model)  "fp32" or "bf16"; "auto" measures (cached per machine)
    matmul_seconds(...)       the measurement itself
"""

import contextlib
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from dpo_core.models import FP32_ATTENTION_MAX_POSITIONS
from dpo_core.results import atomic_write

PRECISIONS = ("auto", "fp32", "bf16")
# bf16 must beat fp32 by this much at the model's shapes: the casts and the fp32 work around
# the matmuls (log-softmax, optimizer, norms) eat part of the matmul gain.
MIN_SPEEDUP = 1.3
GIVE_UP = 3.0  # bf16 first calls past 3x an fp32 pass: slower, stop timing it (fp32 is chosen either way)


def check(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(precision, device="cpu"):
    """The context a run executes in: bf16 autocast, or nothing for fp32. Safe around a whole
    training loop: autocast's cache of bf16 weight copies is off, because it lives as long as
    the outermost autocast context and would keep serving the weights of before each optimizer
    step (a bf16 DPO run then barely learns: one Adam step raised the tiny model's margin 0.045
    instead of 0.19). Loops that do not update weights turn it on (`weights_fixed`)."""
    if check(precision) == "auto":
        raise ValueError("resolve precision='auto' with precision.choose(precision, model) first")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, cache_enabled=False)


@contextlib.contextmanager
def weights_fixed(device="cpu"):
    """Inside an autocast context: cast each weight to bf16 once for the whole block, not once per
    forward (a sampler's decode steps, an evaluation). The weights must not change inside; the
    cache is emptied on entry and exit, so no stale copy outlives the block."""
    device = torch.device(device).type
    if not torch.is_autocast_enabled(device):
        yield
        return
    torch.clear_autocast_cache()
    try:
        with torch.autocast(device_type=device, dtype=torch.get_autocast_dtype(device), cache_enabled=True):
            yield
    finally:
        torch.clear_autocast_cache()


def prepacks_bf16(model):
    """Whether `prepacked_linears` changes anything here: bf16 autocast on, the model on CPU, and a
    oneDNN build that runs bf16 on this CPU."""
    return (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and next(model.parameters()).device.type == "cpu" and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextlib.contextmanager
def prepacked_linears(model, rows):
    """Inside bf16 autocast on CPU, for blocks whose weights do not change (sampling): every plain
    nn.Linear of `model` runs oneDNN's bf16 linear on a copy of its weight cast to bf16 and reordered
    into oneDNN's blocked layout once, for matmuls of about `rows` rows. A plain bf16 matmul reorders
    the weight at every call, which at decoding's few rows costs more than the product: 103 against
    72 us for a (32, 576) x (576, 1536) product; whole SmolLM2 sampling calls ran 1.09-1.10x faster
    at 32 to 256 prompts, the packing's 0.17 s included (bench/README.md). The same product as
    autocast's: bf16 operands, fp32 accumulation, a bf16 result (bitwise the same on most shapes here,
    one bf16 ulp apart on a few). Anywhere else (fp32, no oneDNN bf16, GPU) nothing changes. The modules are restored on exit, exception or not."""
    if not prepacks_bf16(model):
        yield
        return
    patched = []
    try:
        for module in model.modules():
            if type(module) is torch.nn.Linear:
                weight = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach().to(torch.bfloat16), rows)
                bias = None if module.bias is None else module.bias.detach().to(torch.bfloat16)
                module.forward = _prepacked_forward(weight, bias)
                patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward  # the class's forward again


def _prepacked_forward(weight, bias):
    def forward(x):  # (..., in) -> (..., out), bf16
        return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), weight, bias, "none", [], "")
    return forward


def check_cache_off(device="cpu"):
    """Raise if autocast's weight cache is on: an optimizer step inside such a context would leave
    the next forwards reading the old weights."""
    if torch.is_autocast_enabled(device) and torch.is_autocast_cache_enabled():
        raise RuntimeError("autocast with its weight cache on around an optimizer step: later forwards would use the "
                           "weights of before the step. Use dpo_core.precision.autocast (cache off), or "
                           "torch.autocast(..., cache_enabled=False), or one autocast context per step")


def autocast_state():
    """What a forward's numbers depend on beyond its inputs and weights, for cache keys: "fp32",
    or the dtype autocast is on with and the longest keys attention takes in fp32 under it
    (`models.fp32_attention`)."""
    for device in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device):
            return f"autocast-{device}-{torch.get_autocast_dtype(device)}-fp32-attention-{FP32_ATTENTION_MAX_POSITIONS}"
    return "fp32"


def model_matmul_shapes(model, tokens=512):
    """The (M, K, N) matmuls of one forward over `tokens` tokens, one per distinct weight shape,
    with how often each occurs: every Linear of the model (attention, MLP, LM head)."""
    counts = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            shape = (tokens, module.in_features, module.out_features)
            counts[shape] = counts.get(shape, 0) + 1
    if not counts:  # GPT-2 uses Conv1D (weight (in, out)) and a tied head
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if type(module).__name__ == "Conv1D" and weight is not None:
                shape = (tokens, weight.shape[0], weight.shape[1])
                counts[shape] = counts.get(shape, 0) + 1
    embedding = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embedding is not None and not isinstance(embedding, torch.nn.Linear):
        shape = (tokens, embedding.weight.shape[1], embedding.weight.shape[0])
        counts[shape] = counts.get(shape, 0) + 1
    return counts


def matmul_seconds(shapes, dtype, reps=3, give_up_after=None):
    """Seconds for one pass over `shapes` ({(M, K, N): count}) in `dtype`, the best of `reps`.

    With `give_up_after` (seconds): when the warm-up calls, each shape once and scaled by its count,
    already add up to more than that, return that estimate instead of timing `reps` passes. A CPU
    without bf16 instructions emulates bf16 matmuls some 30x slower than fp32: timing them whole
    would cost minutes to learn what the first seconds show."""
    g = torch.Generator().manual_seed(0)
    operands = {s: (torch.randn(s[0], s[1], generator=g).to(dtype), torch.randn(s[1], s[2], generator=g).to(dtype))
                for s in shapes}
    estimate = 0.0
    for shape, (a, b) in operands.items():  # warm-up: first calls pick kernels and fault in pages
        start = time.perf_counter()
        a @ b
        estimate += (time.perf_counter() - start) * shapes[shape]
        if give_up_after is not None and estimate > give_up_after:
            return estimate
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        for shape, count in shapes.items():
            a, b = operands[shape]
            for _ in range(count):
                a @ b
        best = min(best, time.perf_counter() - start)
    return best


def cpuinfo_lines():
    """/proc/cpuinfo's "model name" and "flags" lines (the flags decide bf16 speed: avx512_bf16,
    amx_bf16); (None, "") where there is no such file or no model name."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None, ""
    model = next((line for line in info if line.startswith("model name")), None)
    return model, next((line for line in info if line.startswith("flags")), "") if model else ""


def machine_key(shapes):
    """What the answer depends on: the CPU, its kernels, the thread count, torch, the shapes."""
    model, flags = cpuinfo_lines()
    cpu = model + flags if model else platform.processor()
    text = json.dumps([cpu, torch.__version__, torch.get_num_threads(), torch.backends.cpu.get_cpu_capability(),
                       sorted(map(list, shapes))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_file():
    return Path(os.environ.get("DPO_CACHE_DIR", Path.home() / ".cache" / "dpo_core")) / "precision.json"


def choose(precision, model, tokens=512, verbose=True):
    """"fp32" or "bf16" for `model` on this machine. "auto" times the model's matmuls in both
    (about a second, once per machine, then read from `cache_file()`); bf16 only on CPU where
    it is at least MIN_SPEEDUP faster. On CUDA, "auto" is bf16 where the GPU supports it."""
    if check(precision) != "auto":
        return precision
    device = next(model.parameters()).device
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    shapes = model_matmul_shapes(model, tokens)
    key = machine_key(shapes)
    path = cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key not in cached or not isinstance(cached[key], dict) or "speedup" not in cached[key]:
        fp32 = matmul_seconds(shapes, torch.float32)
        bf16 = matmul_seconds(shapes, torch.bfloat16, give_up_after=GIVE_UP * fp32)  # emulated bf16: seconds, not minutes
        cached[key] = {"fp32_s": fp32, "bf16_s": bf16, "speedup": fp32 / bf16, "measured": time.strftime("%F %T")}
        atomic_write(path, json.dumps(cached, indent=1))
    speedup = cached[key]["speedup"]
    chosen = "bf16" if speedup >= MIN_SPEEDUP else "fp32"
    if verbose:
        print(f"precision auto -> {chosen}: bf16 matmuls {speedup:.2f}x fp32 at this model's shapes on this machine "
              f"(bf16 needs {MIN_SPEEDUP}x; cached in {path})")
    return chosen
