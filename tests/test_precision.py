"""bf16 autocast against the fp32 oracle: the paper's step-0 invariants hold exactly, log-probs
and a short DPO run stay within measured tolerances, autocast's weight cache cannot freeze
training, and precision="auto" measures once per machine."""

import copy
import json
import math

import pytest
import torch
from tiny_dpo_run import TEXTS, one_run
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from dpo_core import assets, models, precision
from dpo_core.data import encode_pair
from dpo_core.evaluate import sequence_kl
from dpo_core.logprobs import concatenated_forward
from dpo_core.losses import dpo_loss
from dpo_core.models import FP32_ATTENTION_MAX_POSITIONS, attention_in_fp32, disable_dropout, fp32_attention
from dpo_core.sampling import sample
from dpo_core.tiny import byte_tokenizer, tiny_gpt2
from dpo_core.train import (
    dpo_step,
    pair_batch_maker,
    precompute_reference_logps,
    reference_logps_by_batch,
    training_batches,
)

REVIEWS = [("this movie was", " great and i loved every minute of it , the acting", " a waste of time"),
           ("i think the director", " has made a film that moves", " failed"),
           ("the plot", " was thin and the jokes fell flat", " is clever , funny and warm"),
           ("a", " gem", " long , slow and dull , a film that never finds its story")]


def test_choose_keeps_explicit_precisions_and_measures_auto_once_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path))
    model = tiny_gpt2()
    assert precision.choose("fp32", model) == "fp32" and precision.choose("bf16", model) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.choose("fp16", model)
    with pytest.raises(ValueError, match="resolve precision='auto'"):
        precision.autocast("auto")
    timings = iter([(1.0, 2.0), (4.0, 1.0)])  # (fp32 s, bf16 s): bf16 slower, then 4x faster
    current = []

    def fake(shapes, dtype, give_up_after=None):  # fp32 is timed first, then bf16
        if dtype == torch.float32:
            current[:] = next(timings)
        return current[0] if dtype == torch.float32 else current[1]

    monkeypatch.setattr(precision, "matmul_seconds", fake)
    assert precision.choose("auto", model) == "fp32"  # bf16 not faster: fp32
    assert precision.choose("auto", model) == "fp32"  # cached: not measured again (timings has one pair left)
    assert precision.choose("auto", tiny_gpt2(n_embd=64)) == "bf16"  # other shapes, measured: 4x
    stored = json.loads((tmp_path / "precision.json").read_text())
    assert sorted(round(v["speedup"], 2) for v in stored.values()) == [0.5, 4.0]


def test_matmul_timing_gives_up_on_a_dtype_already_slower_in_its_first_calls(monkeypatch):
    """Emulated bf16 (no bf16 instructions): the first calls, scaled by each shape's count, past the
    limit end the timing there; no timed passes follow."""
    calls = []
    clock = iter(range(100))
    monkeypatch.setattr(precision.time, "perf_counter", lambda: float(next(clock)))  # each call takes 1 s

    shapes = {(4, 3, 2): 5, (4, 2, 3): 1, (4, 3, 3): 1}
    real_matmul = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: calls.append(a.shape) or real_matmul(a, b))
    assert precision.matmul_seconds(shapes, torch.bfloat16, give_up_after=4.0) == 5.0  # 1 s x 5 uses > 4
    assert len(calls) == 1
    calls.clear()
    assert precision.matmul_seconds(shapes, torch.float32, reps=2, give_up_after=100.0) == 1.0  # a pass: 1 s
    assert len(calls) == 3 + 2 * 7  # the warm-up, then two passes of 7 matmuls


def test_auto_measures_this_machine_for_real(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path))
    assert precision.choose("auto", tiny_gpt2(), verbose=False) in ("fp32", "bf16")
    entry, = json.loads((tmp_path / "precision.json").read_text()).values()
    assert entry["fp32_s"] > 0 and entry["bf16_s"] > 0


def layout_check(model, tok, texts, batch_size):
    """Step 0 in bf16 with pi_ref's log-probs from each step's own layout: (max |loss - ln 2|,
    max |reward|) over the steps, and the same for pi_ref's log-probs taken per pair instead.
    The policy's side is the step's forward, with autograd on (the backward is left out)."""
    policy = disable_dropout(model)
    reference = copy.deepcopy(policy).requires_grad_(False)
    examples = [encode_pair(tok, *t, max_length=64) for t in texts]
    make_batch = pair_batch_maker(examples, tok.pad_token_id)
    batches = training_batches(len(examples), batch_size, 3, seed=0)
    by_layout, per_pair = [], []
    with precision.autocast("bf16"):
        by_batch = reference_logps_by_batch(reference, batches, make_batch)
        alone = precompute_reference_logps(reference, examples, tok.pad_token_id, batch_size=1)
        for b in batches:
            policy_logps = concatenated_forward(policy, make_batch(b))
            for ref, out in ((by_batch[tuple(b)], by_layout), ((alone[0][b], alone[1][b]), per_pair)):
                losses, chosen, rejected = dpo_loss(*policy_logps, *ref, beta=0.1)
                out.append((abs(losses.mean().item() - math.log(2)), torch.cat([chosen, rejected]).abs().max().item()))
    return [max(v) for v in zip(*by_layout)], [max(v) for v in zip(*per_pair)]


@pytest.mark.parametrize("model_name", ["tiny", "smollm2-135m"])
def test_bf16_step_zero_is_exactly_ln2_when_the_reference_shares_the_step_layout(model_name):
    if model_name == "tiny":
        model, tok, texts = tiny_gpt2(seed=0), byte_tokenizer(), TEXTS
    else:
        (model, tok), texts = assets.load_policy(model_name), REVIEWS
    (loss_gap, reward), (pair_loss_gap, pair_reward) = layout_check(model, tok, texts, batch_size=2)
    # the same computation on both sides: identical bits, so zero rewards and ln 2 up to its fp32 rounding
    assert reward == 0.0 and loss_gap < 1e-7
    # pi_ref scored one pair at a time instead (another padded length) is what breaks it: measured
    # here 1e-5 on the tiny model and 1e-3 on SmolLM2 (0.1 nats per sequence); not asserted, since
    # a CPU whose bf16 kernels ignore the batch shape would give 0
    print(f"{model_name}: per-pair reference in bf16: |loss - ln 2| {pair_loss_gap:.2e}, |reward| {pair_reward:.2e}")


@pytest.mark.parametrize("attention", ["sdpa", "fp32"])
def test_kl_of_a_model_with_its_copy_is_exactly_zero_in_bf16(attention):
    tok = byte_tokenizer()
    model = tiny_gpt2(seed=4)
    if attention == "fp32":
        attention_in_fp32(model)
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in ("The film", "I", "Honestly, the acting was")]
    with precision.autocast("bf16"):
        completions = sample(model, prompts, 8, generator=torch.Generator().manual_seed(0), pad_token_id=256)
        sampled, exact = sequence_kl(model, copy.deepcopy(model), prompts, completions, pad_token_id=256)
    assert torch.all(sampled == 0) and torch.all(exact == 0)


@pytest.mark.parametrize("model_name", ["tiny", "smollm2-135m"])
def test_bf16_log_probs_are_within_two_percent_of_fp32(model_name):
    if model_name == "tiny":
        model, tok, texts = tiny_gpt2(seed=0), byte_tokenizer(), TEXTS
    else:
        (model, tok), texts = assets.load_policy(model_name), REVIEWS
    examples = [encode_pair(tok, *t, max_length=64) for t in texts]
    batch = pair_batch_maker(examples, tok.pad_token_id)(range(len(examples)))
    with torch.no_grad():
        fp32 = torch.cat(concatenated_forward(model, batch))
        with precision.autocast("bf16"):
            bf16 = torch.cat(concatenated_forward(model, batch))
    # measured: at most 0.005% of |log p| on the tiny model, 0.50% on SmolLM2 (0.25 nats; attention in fp32, as
    # loaded; 0.88% with bf16 SDPA attention, on an AMX Xeon)
    assert ((bf16 - fp32).abs() <= 0.02 * fp32.abs()).all(), (fp32, bf16)
    assert not torch.equal(bf16, fp32)  # bf16 really ran


def test_a_short_bf16_dpo_run_tracks_the_fp32_run():
    fp32_log, fp32_evals, _ = one_run(seed=0)
    with precision.autocast("bf16"):
        bf16_log, bf16_evals, _ = one_run(seed=0)
    assert bf16_log[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)  # step 0, reference in the step's layout
    assert bf16_evals[0]["kl"] == 0
    # measured: the 8 training losses at most 0.008 apart (lr 1e-3 RMSprop on the tiny model)
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(fp32_log, bf16_log)) < 0.05
    assert [a["rewards/accuracies"] for a in fp32_log] == [b["rewards/accuracies"] for b in bf16_log]


def one_step_gain(context, sample_first=False):
    tok = byte_tokenizer()
    policy = disable_dropout(tiny_gpt2(seed=0))
    reference = copy.deepcopy(policy).requires_grad_(False)
    examples = [encode_pair(tok, *t, max_length=64) for t in TEXTS]
    batch = pair_batch_maker(examples, tok.pad_token_id)(range(len(examples)))
    with context:
        if sample_first:  # a sampler's cached bf16 weights must not outlive it
            sample(policy, [[65, 66]], 4, generator=torch.Generator().manual_seed(0))
        ref = concatenated_forward(reference, batch)
        dpo_step(policy, torch.optim.Adam(policy.parameters(), lr=1e-3), batch, *ref, beta=0.1)
        with torch.no_grad():
            chosen, rejected = concatenated_forward(policy, batch)
    return (0.1 * ((chosen - ref[0]) - (rejected - ref[1]))).mean().item()


def test_autocast_weight_cache_cannot_freeze_training():
    fp32 = one_step_gain(precision.autocast("fp32"))
    # precision.autocast keeps autocast's weight cache off: the step is seen by the next forward
    assert one_step_gain(precision.autocast("bf16")) == pytest.approx(fp32, rel=0.02)
    assert one_step_gain(precision.autocast("bf16"), sample_first=True) == pytest.approx(fp32, rel=0.02)
    # with the cache on, the forward after the step would read the old bf16 copies (the gain fell
    # from 0.19 to 0.045): refused before the step
    with pytest.raises(RuntimeError, match="weight cache"):
        one_step_gain(torch.autocast("cpu", dtype=torch.bfloat16))


def naive_causal_attention(q, k, v, scale):
    """softmax(q k^T * scale + causal mask) v in float64, one head at a time. (B, H, T, D) -> (B, T, H, D)."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) * scale  # (B, H, T, T)
    t = scores.shape[-1]
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def test_fp32_attention_computes_attention_in_fp32_under_bf16_autocast():
    module = tiny_gpt2(seed=0).transformer.h[0].attn  # causal, no grouped heads
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 16, generator=g).bfloat16() for _ in range(3))  # (B, H, T, D), as a bf16 linear gives
    expected = naive_causal_attention(q, k, v, scale=0.25)
    with precision.autocast("bf16"):
        out, _ = fp32_attention(module, q, k, v, None, scaling=0.25)
        plain, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.25)
    assert out.dtype == torch.float32 and plain.dtype == torch.bfloat16  # plain SDPA stays in bf16 under autocast
    # fp32 against float64: about 1e-7 here; bf16 attention is off by about 1e-2
    assert (out.double() - expected).abs().max() < 1e-5
    assert (plain.double() - expected).abs().max() > 1e-4


def test_fp32_attention_hands_keys_longer_than_its_limit_to_stock_sdpa(monkeypatch):
    module = tiny_gpt2(seed=0).transformer.h[0].attn
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, FP32_ATTENTION_MAX_POSITIONS, 16, generator=g).bfloat16() for _ in range(3))
    with precision.autocast("bf16"):  # at the limit: SDPA's own kernel on fp32 inputs, autocast off
        out, _ = fp32_attention(module, q, k, v, None, scaling=0.25)
    with torch.autocast("cpu", enabled=False):
        expected, _ = sdpa_attention_forward(module, q.float(), k.float(), v.float(), None, scaling=0.25)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    # the routing on either side of the limit, seen by a stand-in for transformers' SDPA: stock bf16
    # SDPA at 97 keys is not run here, because under ATEN_CPU_CAPABILITY=avx2 on an AMX CPU PyTorch's
    # bf16 flash attention fails ("pack_vnni2 is only supported when avx512 is supported")
    seen = []

    def stand_in(module, query, key, value, attention_mask, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype, torch.is_autocast_enabled("cpu")))
        return query, None

    monkeypatch.setattr(models, "sdpa_attention_forward", stand_in)
    for t in (FP32_ATTENTION_MAX_POSITIONS, FP32_ATTENTION_MAX_POSITIONS + 1):
        q, k, v = (torch.randn(1, 4, t, 16, generator=g).bfloat16() for _ in range(3))
        with precision.autocast("bf16"):
            fp32_attention(module, q, k, v, None, scaling=0.25)
    assert seen == [(torch.float32,) * 3 + (False,), (torch.bfloat16,) * 3 + (True,)]


def test_fp32_attention_changes_nothing_in_fp32_and_is_what_loaders_give():
    tok = byte_tokenizer()
    plain, loaded, switched = tiny_gpt2(seed=0), assets.load_policy("tiny")[0], attention_in_fp32(tiny_gpt2(seed=0))
    assert loaded.config._attn_implementation == "dpo_core_sdpa_fp32"
    assert plain.config._attn_implementation == "sdpa"
    examples = [encode_pair(tok, *t, max_length=64) for t in TEXTS]
    batch = pair_batch_maker(examples, tok.pad_token_id)(range(len(examples)))  # padded: masks in play
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(concatenated_forward(plain, batch),
                                                     concatenated_forward(switched, batch)))
        with precision.autocast("bf16"):
            bf16_plain = torch.cat(concatenated_forward(plain, batch))
            bf16_fp32_attention = torch.cat(concatenated_forward(switched, batch))
    assert not torch.equal(bf16_plain, bf16_fp32_attention)  # under bf16 the switch is live


def _bf16_product_bound_holds(y, x, linear):
    """|y - exact| within a bf16 rounding of the exact product of the bf16-rounded operands, plus the
    fp32 accumulation's share: the product autocast promises, computed in fp64 independently."""
    xd, wd = x.bfloat16().double(), linear.weight.detach().bfloat16().double()
    exact = xd @ wd.T + (0 if linear.bias is None else linear.bias.detach().bfloat16().double())
    scale = xd.abs() @ wd.abs().T
    return bool(((y.double() - exact).abs() <= 2**-8 * exact.abs() + 1e-4 * scale).all())


def test_prepacked_linears_give_autocasts_bf16_product_and_restore_the_modules():
    g = torch.Generator().manual_seed(0)
    layers = torch.nn.Sequential(torch.nn.Linear(576, 1536), torch.nn.Linear(1536, 576, bias=False))  # SmolLM2's MLP
    x = torch.randn(32, 576, generator=g)
    with torch.no_grad():
        with precision.prepacked_linears(layers, rows=32):  # fp32: nothing changes
            assert not any("forward" in vars(m) for m in layers)
        with precision.autocast("bf16"):
            if not precision.prepacks_bf16(layers):
                pytest.skip("no oneDNN bf16 on this CPU: prepacked_linears changes nothing here")
            plain = layers[0](x)
            with precision.prepacked_linears(layers, rows=32):
                assert all("forward" in vars(m) for m in layers)
                packed = layers[0](x)
                packed_second = layers[1](packed)
            with pytest.raises(RuntimeError, match="inside"), precision.prepacked_linears(layers, rows=32):
                raise RuntimeError("inside")
            plain_second = layers[1](packed)
    assert not any("forward" in vars(m) for m in layers)  # the class's forward again, after an exception too
    assert packed.dtype == plain.dtype == torch.bfloat16
    assert _bf16_product_bound_holds(plain, x, layers[0]) and _bf16_product_bound_holds(packed, x, layers[0])
    assert _bf16_product_bound_holds(packed_second, packed.float(), layers[1])
    assert _bf16_product_bound_holds(plain_second, packed.float(), layers[1])


def test_the_bf16_sampler_runs_every_linear_prepacked(monkeypatch):
    model, tok = assets.load_policy("smollm2-135m")
    prompts = [tok("The film was", add_special_tokens=False)["input_ids"], tok("I", add_special_tokens=False)["input_ids"]]
    packed, make = [], precision._prepacked_forward
    monkeypatch.setattr(precision, "_prepacked_forward", lambda w, b: packed.append(w) or make(w, b))
    with precision.autocast("bf16"):
        if not precision.prepacks_bf16(model):
            pytest.skip("no oneDNN bf16 on this CPU: prepacked_linears changes nothing here")
        completions = sample(model, prompts, 3, generator=torch.Generator().manual_seed(0),
                             pad_token_id=tok.pad_token_id)
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert len(packed) == len(linears) == 30 * 7 + 1  # every block's 7 projections and the LM head
    assert not any("forward" in vars(m) for m in linears)
    assert [len(c) for c in completions] == [3, 3]
