"""The sampler against model.generate and the softmax it samples from; the KL estimators on
a toy categorical; preference pairs and ties."""

import math

import pytest
import torch

from dpo_core import precision, sampling
from dpo_core.data import preference_pairs
from dpo_core.evaluate import completion_batch, kl_from_logits, sequence_kl, token_kl
from dpo_core.logprobs import position_ids_from_mask, sequence_logps
from dpo_core.sampling import decode_batch_size, draw, sample
from dpo_core.tiny import byte_tokenizer, tiny_gpt2

PROMPTS = ["The film", "I", "Honestly, the acting was"]


def encoded(tok):
    return [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


def test_greedy_sampling_equals_generate_and_does_not_depend_on_the_batch():
    model, tok = tiny_gpt2(seed=2), byte_tokenizer()
    prompts = encoded(tok)
    batched = sample(model, prompts, max_new_tokens=12, temperature=0, pad_token_id=tok.pad_token_id)
    for prompt, completion in zip(prompts, batched):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=256,
                               eos_token_id=None)
        assert completion == alone[0, len(prompt):].tolist()


@pytest.mark.parametrize("matmuls", ["fp32", "bf16"])
def test_the_preallocated_kv_cache_samples_what_the_concatenating_cache_samples(matmuls, monkeypatch):
    from transformers import DynamicCache

    model, tok = tiny_gpt2(seed=2), byte_tokenizer()
    prompts = encoded(tok) * 3  # ragged: left padding in play

    def run():
        with precision.autocast(matmuls):
            return sample(model, prompts, 10, pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0),
                          batch_size=4)

    preallocated = run()
    monkeypatch.setattr(sampling, "preallocated_cache", lambda m, capacity: DynamicCache(config=m.config))
    assert run() == preallocated


def test_decode_batches_fill_a_position_budget():
    assert decode_batch_size([[1] * 8] * 500, 48) == 256  # IMDb: the row cap
    assert decode_batch_size([[1] * 8, [1] * 512], 128) == 16_384 // 640  # the longest prompt decides
    assert decode_batch_size([[1] * 40_000], 10) == 1


def test_draw_follows_the_softmax():
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(draw(logits, 1.0, g), minlength=4).double()
    probs = torch.softmax(logits[0].double(), -1)
    stderr = torch.sqrt(probs * (1 - probs) / 20000)
    assert ((counts / 20000 - probs).abs() < 4 * stderr).all()
    hot = torch.bincount(draw(logits, 0.5, g), minlength=4).double() / 20000
    assert (hot - torch.softmax(logits[0].double() / 0.5, -1)).abs().max() < 0.02


@pytest.mark.parametrize("vocab", [257, 1024, 49152])
def test_draw_is_the_inverse_cdf_of_the_full_cumulative_sum(vocab):
    """The two-level search against the one-level one in float64 on the same uniforms (1,000 rows:
    the float64 oracle of 49,152 columns takes 1.2 GB): every drawn token's CDF interval holds the
    uniform, up to fp32 rounding of the sums (1e-5 of the total), and has positive probability;
    flat, peaked and zero-tailed rows."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(1000, vocab, generator=g) * torch.tensor([0.5, 3.0, 12.0]).repeat(334)[:1000, None]
    logits[::5, vocab // 3:] = -1e4  # rows with zero-weight tails (exp underflows to 0): never drawn
    tokens = draw(logits, 1.0, torch.Generator().manual_seed(1))
    assert (tokens < vocab).all() and (tokens[::5] < vocab // 3).all()
    probs = torch.softmax(logits.double(), -1)
    cdf = probs.cumsum(-1)  # (N, V)
    u = torch.rand(1000, 1, generator=torch.Generator().manual_seed(1)).double()[:, 0] * cdf[:, -1]
    upper = cdf.gather(1, tokens[:, None])[:, 0]
    lower = upper - probs.gather(1, tokens[:, None])[:, 0]
    assert (probs.gather(1, tokens[:, None]) > 0).all()
    assert ((lower - 1e-5 <= u) & (u <= upper + 1e-5)).all()
    oracle = torch.searchsorted(cdf, u[:, None]).squeeze(-1)
    assert (tokens != oracle).float().mean() < 0.01  # rounding moves a handful (0 or 1 of 1,000 when written)


def test_a_zero_uniform_draws_the_first_token_of_positive_weight(monkeypatch):
    logits = torch.full((2, 600), -1e4)
    logits[0, 3], logits[0, 400], logits[1, 300] = 0.0, 1.0, 0.0  # zero weight before them
    monkeypatch.setattr(torch, "rand", lambda *shape, generator=None: torch.zeros(*shape))
    assert draw(logits, 1.0).tolist() == [3, 300]


def test_sampling_is_reproducible_with_a_generator_and_stops_at_eos():
    model, tok = tiny_gpt2(seed=2), byte_tokenizer()
    a = sample(model, encoded(tok), 20, generator=torch.Generator().manual_seed(1), pad_token_id=256)
    b = sample(model, encoded(tok), 20, generator=torch.Generator().manual_seed(1), pad_token_id=256)
    assert a == b and all(len(c) == 20 for c in a)
    # declare the 3rd token of the first row to be EOS: each row stops at its first EOS, keeping it
    eos = a[0][2]
    stopped = sample(model, encoded(tok), 20, eos_token_id=eos, generator=torch.Generator().manual_seed(1),
                     pad_token_id=256)
    for full, cut in zip(a, stopped):
        assert cut == (full[: full.index(eos) + 1] if eos in full else full)
    assert len(stopped[0]) <= 3


def test_empty_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match="empty prompt"):
        sample(tiny_gpt2(), [[]], 4)


def toy_logits(B, T, V, seed):
    """Position-independent logits: every step is the same categorical (a toy LM)."""
    g = torch.Generator().manual_seed(seed)
    row = torch.randn(V, generator=g, dtype=torch.float64) * 1.5
    return row.expand(B, T, V).clone()


def test_exact_kl_equals_the_monte_carlo_mean_on_a_toy_categorical():
    B, T, V, prompt = 4000, 5, 6, 2
    policy, reference = toy_logits(B, T, V, 0), toy_logits(B, T, V, 1)
    g = torch.Generator().manual_seed(2)
    labels = torch.multinomial(torch.softmax(policy[0, 0], -1), B * T, replacement=True, generator=g).view(B, T)
    labels[:, :prompt] = -100
    sampled, exact = kl_from_logits(policy, reference, labels)
    p, q = torch.softmax(policy[0, 0], -1), torch.softmax(reference[0, 0], -1)
    closed_form = (T - prompt) * (p * (p / q).log()).sum().item()  # completion tokens only
    torch.testing.assert_close(exact, torch.full((B,), closed_form, dtype=torch.float32), rtol=1e-5, atol=1e-5)
    stderr = sampled.std().item() / math.sqrt(B)
    assert abs(sampled.mean().item() - closed_form) < 4 * stderr


def test_kl_of_a_model_with_itself_is_zero_and_prompt_tokens_do_not_count():
    model, tok = tiny_gpt2(seed=4), byte_tokenizer()
    prompts = encoded(tok)
    completions = sample(model, prompts, 8, generator=torch.Generator().manual_seed(0), pad_token_id=256)
    sampled, exact = sequence_kl(model, model, prompts, completions, pad_token_id=256)
    assert torch.all(sampled == 0) and torch.all(exact == 0)
    # a reference that differs from the policy only while reading the prompt changes nothing
    input_ids, _, labels = completion_batch(prompts, completions, 256)
    policy_logits = toy_logits(3, input_ids.shape[1], 257, 0)
    reference_logits = policy_logits.clone()
    for i, p in enumerate(prompts):
        reference_logits[i, : len(p) - 1] += torch.randn(len(p) - 1, 257).double()  # predicts prompt tokens
    assert torch.all(kl_from_logits(policy_logits, reference_logits, labels)[1] == 0)
    s2, e2 = sequence_kl(model, tiny_gpt2(seed=5), prompts, completions, pad_token_id=256)
    assert (e2 > 0).all()


def test_token_kl_equals_the_log_softmax_definitions_in_float64():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(7, 50, generator=g) * 4, torch.randn(7, 50, generator=g) * 4
    labels = torch.randint(0, 50, (7,), generator=g)
    lp, lq = torch.log_softmax(x.double(), -1), torch.log_softmax(y.double(), -1)
    sampled, exact, reference, entropy = token_kl(x, y, labels)
    torch.testing.assert_close(exact.double(), (lp.exp() * (lp - lq)).sum(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sampled.double(), (lp - lq)[range(7), labels], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reference.double(), lq[range(7), labels], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(entropy.double(), -(lp.exp() * lp).sum(-1), rtol=1e-5, atol=1e-6)
    # entropy + KL = the expected pi_ref NLL of the policy's next token (cross-entropy), computed apart
    torch.testing.assert_close((entropy + exact).double(), -(lp.exp() * lq).sum(-1), rtol=1e-5, atol=1e-5)
    assert torch.all(token_kl(x, x.clone(), labels)[1] == 0)


def test_token_entropy_hand_computed():
    """Uniform over 4 tokens: ln 4; one token certain (others at -inf-like logits): 0."""
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -1e4, -1e4, -1e4]])
    entropy = token_kl(logits, logits.clone(), torch.tensor([0, 0]))[3]
    torch.testing.assert_close(entropy, torch.tensor([math.log(4), 0.0]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk_rows", [1, 5, 64])
def test_sequence_kl_equals_the_full_logits_oracle(chunk_rows):
    """The completion-only, chunked path against `kl_from_logits` and `sequence_logps` on the
    models' full (B, T, V) logits, in fp32, with padding (uneven completions) in the batch."""
    tok = byte_tokenizer()
    policy, reference = tiny_gpt2(seed=4), tiny_gpt2(seed=5)
    prompts = encoded(tok)
    completions = [c[: 3 + 2 * i] for i, c in enumerate(
        sample(policy, prompts, 9, generator=torch.Generator().manual_seed(0), pad_token_id=256))]
    sampled, exact, reference_logps, entropy = sequence_kl(policy, reference, prompts, completions, 256,
                                                           batch_size=2, with_diagnostics=True,
                                                           chunk_rows=chunk_rows)
    input_ids, mask, labels = completion_batch(prompts, completions, 256)
    inputs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids_from_mask(mask)}
    with torch.no_grad():
        policy_logits, reference_logits = policy(**inputs).logits, reference(**inputs).logits
    oracle_sampled, oracle_exact = kl_from_logits(policy_logits, reference_logits, labels)
    torch.testing.assert_close(exact, oracle_exact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sampled, oracle_sampled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reference_logps, sequence_logps(reference_logits, labels), rtol=1e-5, atol=1e-5)
    # the policy's entropy summed over completion positions, from the full logits in float64
    log_p = torch.log_softmax(policy_logits[:, :-1].double(), -1)
    mask = labels[:, 1:] != -100
    oracle_entropy = (-(log_p.exp() * log_p).sum(-1) * mask).sum(-1)
    torch.testing.assert_close(entropy.double(), oracle_entropy, rtol=1e-5, atol=1e-4)
    assert (exact > 0).all()


def test_sequence_kl_refuses_an_empty_prompt_and_a_model_with_transformed_logits():
    model, tok = tiny_gpt2(seed=4), byte_tokenizer()
    with pytest.raises(ValueError, match="empty prompt"):
        sequence_kl(model, model, [[]], [[5, 6]], pad_token_id=256)
    capped = tiny_gpt2(seed=4)
    capped.config.final_logit_softcapping = 30.0  # Gemma 2's: logits = 30 tanh(head / 30)
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        sequence_kl(capped, model, encoded(tok), [[5, 6]] * 3, pad_token_id=256)


def test_preference_pairs_all_six_with_ties_counted_and_dropped():
    pairs, ties = preference_pairs([0.9, 0.1, 0.5, 0.3])
    assert ties == 0 and len(pairs) == 6
    assert set(pairs) == {(0, 1), (0, 2), (0, 3), (2, 1), (3, 1), (2, 3)}
    pairs, ties = preference_pairs([0.7, 0.7, 0.2, 0.7])
    assert ties == 3 and set(pairs) == {(0, 2), (1, 2), (3, 2)}


def test_best_of_n_kl_bound_hand_computed():
    from dpo_core.evaluate import best_of_n_kl_bound

    assert best_of_n_kl_bound(1) == 0.0
    assert best_of_n_kl_bound(4) == pytest.approx(math.log(4) - 0.75)  # 0.636
    assert best_of_n_kl_bound(16) == pytest.approx(2.7726 - 0.9375, abs=1e-4)  # 1.835
