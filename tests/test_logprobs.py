"""sequence_logps and concatenated_forward against a naive per-position loop and separate forwards."""

import pytest
import torch
from test_frozen import tiny_llama

from dpo_core.data import collate_pairs, encode_pair
from dpo_core.logprobs import concatenated_forward, forward_logps, sequence_logps
from dpo_core.tiny import byte_tokenizer, tiny_gpt2


def naive_logps(logits, labels, average=False):
    """One position at a time: log_softmax(logits[b, t])[labels[b, t + 1]] in float64."""
    out = []
    for b in range(labels.shape[0]):
        terms = [
            torch.log_softmax(logits[b, t].double(), -1)[labels[b, t + 1]].item()
            for t in range(labels.shape[1] - 1)
            if labels[b, t + 1] != -100
        ]
        out.append(sum(terms) / len(terms) if average else sum(terms))
    return torch.tensor(out, dtype=torch.float64)


def toy_batch(seed=0, B=3, T=7, V=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :2] = -100  # prompt of 2
    labels[1, :4] = -100  # prompt of 4
    labels[1, 6:] = -100  # padding
    labels[2, :1] = -100
    return logits, labels


@pytest.mark.parametrize("average", [False, True])
def test_matches_naive_loop(average):
    logits, labels = toy_batch()
    got = sequence_logps(logits, labels, average=average)
    torch.testing.assert_close(got.double(), naive_logps(logits, labels, average), rtol=1e-5, atol=1e-5)


def test_three_token_sequence_against_model_prefix_loop():
    model, tok = tiny_gpt2(), byte_tokenizer()
    ids = torch.tensor([tok("abc")["input_ids"]])  # 3 tokens; the first is the prompt
    labels = ids.clone()
    labels[0, 0] = -100
    with torch.no_grad():
        got = sequence_logps(model(ids).logits, labels)
        expected = sum(torch.log_softmax(model(ids[:, :t]).logits[0, -1], -1)[ids[0, t]] for t in (1, 2))
    torch.testing.assert_close(got[0], expected, rtol=1e-5, atol=1e-5)


def test_prompt_and_padding_positions_do_not_count():
    logits, labels = toy_batch()
    base = sequence_logps(logits, labels)
    noisy = logits.clone()
    noisy[1, 6:] = torch.randn_like(noisy[1, 6:]) * 100  # logits at padding and after the end
    noisy[1, :3] = torch.randn_like(noisy[1, :3]) * 100  # logits predicting prompt tokens
    torch.testing.assert_close(sequence_logps(noisy, labels), base)


def test_appending_padding_changes_nothing():
    logits, labels = toy_batch()
    padded_logits = torch.cat([logits, torch.randn(3, 5, 11)], dim=1)
    padded_labels = torch.cat([labels, torch.full((3, 5), -100)], dim=1)
    torch.testing.assert_close(sequence_logps(padded_logits, padded_labels), sequence_logps(logits, labels))


def test_model_logps_unchanged_by_extra_right_padding():
    model, tok = tiny_gpt2(), byte_tokenizer()
    batch = collate_pairs([encode_pair(tok, "Hi", " there", " you", 64)], tok.pad_token_id)
    ids, mask, labels = batch["chosen_input_ids"], batch["chosen_attention_mask"], batch["chosen_labels"]
    with torch.no_grad():
        base = forward_logps(model, ids, mask, labels)
        pad = torch.full((1, 9), tok.pad_token_id)
        padded = forward_logps(
            model,
            torch.cat([ids, pad], 1),
            torch.cat([mask, torch.zeros_like(pad)], 1),
            torch.cat([labels, torch.full_like(pad, -100)], 1),
        )
    torch.testing.assert_close(padded, base, rtol=1e-6, atol=1e-5)


def test_sum_vs_mean():
    logits, labels = toy_batch()
    counts = (labels[:, 1:] != -100).sum(-1)
    torch.testing.assert_close(sequence_logps(logits, labels, average=True), sequence_logps(logits, labels) / counts)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_are_reduced_in_fp32(dtype):
    logits, labels = toy_batch()
    low = logits.to(dtype)
    got = sequence_logps(low, labels)
    assert got.dtype == torch.float32
    # the fp32 reduction of the rounded logits, not a reduction in `dtype`
    torch.testing.assert_close(got.double(), naive_logps(low.float(), labels), rtol=1e-5, atol=1e-4)
    in_low_precision = torch.log_softmax(low, -1)  # what a careless implementation would sum
    assert in_low_precision.dtype == dtype


def test_sequence_logps_gradient_is_the_log_softmax_gradient():
    """The backward is written out (onehot - softmax); autograd through a plain log_softmax + gather
    in float64 is the reference, masked positions included (their gradient is zero)."""
    logits, labels = toy_batch()
    weights = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)  # a different upstream gradient per sequence
    x = logits.double().requires_grad_()
    (sequence_logps(x, labels) * weights).sum().backward()
    y = logits.double().requires_grad_()
    shifted = labels[:, 1:]
    mask = shifted != -100
    naive = torch.log_softmax(y[:, :-1], -1).gather(-1, shifted.clamp(min=0)[..., None]).squeeze(-1) * mask
    (naive.sum(-1) * weights).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=1e-12)
    assert x.grad[:, -1].abs().max() == 0 and x.grad[1, :3].abs().max() == 0  # no label scored there
    assert torch.autograd.gradcheck(lambda z: sequence_logps(z, labels, average=True), (logits.double().requires_grad_(),))


def test_low_precision_logits_get_a_gradient_of_their_own_dtype():
    logits, labels = toy_batch()
    low = logits.bfloat16().requires_grad_()
    sequence_logps(low, labels).sum().backward()
    reference = low.detach().double().requires_grad_()  # the same rounded logits, float64 all through
    sequence_logps(reference, labels).sum().backward()
    assert low.grad.dtype == torch.bfloat16
    torch.testing.assert_close(low.grad.double(), reference.grad, rtol=1e-2, atol=1e-2)  # bf16 keeps 8 bits


def test_empty_completion_is_a_clear_error():
    logits, labels = toy_batch()
    labels[2, :] = -100
    with pytest.raises(ValueError, match=r"sequences \[2\] have no completion tokens"):
        sequence_logps(logits, labels)


def test_concatenated_forward_equals_two_separate_forwards():
    model, tok = tiny_gpt2(seed=1), byte_tokenizer()
    examples = [
        encode_pair(tok, "The film", " was a delight.", " bored me to tears, honestly.", 128),
        encode_pair(tok, "Acting:", " superb throughout", " wooden", 128),
        encode_pair(tok, "I", " cried", " left early and asked for a refund", 128),
    ]
    batch = collate_pairs(examples, tok.pad_token_id)
    with torch.no_grad():
        chosen, rejected = concatenated_forward(model, batch)
        sep_chosen = forward_logps(
            model, batch["chosen_input_ids"], batch["chosen_attention_mask"], batch["chosen_labels"]
        )
        sep_rejected = forward_logps(
            model, batch["rejected_input_ids"], batch["rejected_attention_mask"], batch["rejected_labels"]
        )
        # and each pair alone, unpadded, with no attention mask at all
        alone = [
            sequence_logps(model(torch.tensor([e["chosen_input_ids"]])).logits, torch.tensor([e["chosen_labels"]]))
            for e in examples
        ]
    torch.testing.assert_close(chosen, sep_chosen, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rejected, sep_rejected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chosen, torch.cat(alone), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("average", [False, True])
def test_lm_head_on_scored_positions_only_matches_the_naive_loop(average):
    from dpo_core.logprobs import scored_logps

    g = torch.Generator().manual_seed(3)
    hidden, head = torch.randn(3, 7, 5, generator=g), torch.nn.Linear(5, 11)
    _, labels = toy_batch()
    expected = naive_logps(head(hidden).detach(), labels, average)
    torch.testing.assert_close(scored_logps(hidden, head, labels, average=average).double(), expected,
                               rtol=1e-5, atol=1e-5)
    labels[2, :] = -100
    with pytest.raises(ValueError, match=r"sequences \[2\] have no completion tokens"):
        scored_logps(hidden, head, labels)


@pytest.mark.parametrize("make_model", [lambda: tiny_gpt2(seed=1), lambda: tiny_llama(seed=1)],
                         ids=["gpt2", "llama"])
def test_completion_only_forward_equals_the_full_forward_with_gradients(make_model):
    model, tok = make_model(), byte_tokenizer()
    examples = [encode_pair(tok, "The film", " was a delight.", " bored me.", 128),
                encode_pair(tok, "Acting, music and the long", " superb", " wooden and slow, honestly", 128)]
    batch = collate_pairs(examples, tok.pad_token_id)
    grads = []
    for completion_only in (False, True):
        model.zero_grad()
        chosen, rejected = concatenated_forward(model, batch, completion_only=completion_only)
        (chosen - 0.5 * rejected).sum().backward()
        grads.append(({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, chosen, rejected))
    (full, c0, r0), (fast, c1, r1) = grads
    torch.testing.assert_close(c1, c0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r1, r0, rtol=1e-5, atol=1e-5)
    assert full.keys() == fast.keys()
    for name in full:
        torch.testing.assert_close(fast[name], full[name], rtol=1e-4, atol=1e-6)


def plain_label_logps(hidden, head, labels):
    """The oracle: the whole (N, V) log-softmax, in float64."""
    return torch.log_softmax(head(hidden).double(), dim=-1).gather(-1, labels[:, None]).squeeze(-1)


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 100])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("head_frozen", [False, True], ids=["head-trained", "head-frozen"])
def test_chunked_label_logps_match_the_full_log_softmax_with_gradients(chunk_rows, bias, head_frozen):
    from dpo_core.logprobs import label_logps

    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(10, 6, generator=g, requires_grad=True)  # (N, H)
    head = torch.nn.Linear(6, 50, bias=bias).requires_grad_(not head_frozen)
    labels = torch.randint(0, 50, (10,), generator=g)
    upstream = torch.randn(10, generator=g)  # a different weight per row, as DPO's loss gives
    results = []
    for fn in (plain_label_logps, lambda h, m, y: label_logps(h, m, y, chunk_rows)):
        hidden.grad = None
        head.zero_grad()
        logps = fn(hidden, head, labels)
        (logps * upstream).sum().backward()
        results.append([logps.double(), hidden.grad.clone()] + ([] if head_frozen else (
            [head.weight.grad.clone()] + ([head.bias.grad.clone()] if bias else []))))
    for expected, got in zip(*results):
        torch.testing.assert_close(got.double(), expected.double(), rtol=1e-5, atol=1e-6)


def test_chunked_label_logps_pass_gradcheck_in_float64():
    from dpo_core.logprobs import _ChunkedLabelLogps

    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 9, (5,), generator=g)
    fn = lambda h, w, b: _ChunkedLabelLogps.apply(h, w, b, labels, 2, False)  # noqa: E731  (float64 in and out)
    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))
    frozen = lambda h: _ChunkedLabelLogps.apply(h, weight.detach(), bias.detach(), labels, 2, True)  # noqa: E731
    assert torch.autograd.gradcheck(frozen, (hidden,))


def test_chunked_label_logps_never_save_an_n_by_v_tensor():
    """The point of the fused path: what autograd keeps for the backward is O(N H + V H), not O(N V)."""
    from dpo_core.logprobs import label_logps

    n, hidden_size, vocab = 64, 8, 1000
    hidden = torch.randn(n, hidden_size, requires_grad=True)
    head = torch.nn.Linear(hidden_size, vocab, bias=False)
    labels = torch.randint(0, vocab, (n,))

    def largest_saved(fn):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            fn(hidden, head, labels).sum().backward()
        return max(sizes)

    assert largest_saved(plain_label_logps) >= n * vocab  # the plain path keeps the (N, V) logits
    assert largest_saved(lambda h, m, y: label_logps(h, m, y, chunk_rows=16)) == vocab * hidden_size  # the weight
    head.requires_grad_(False)  # a frozen head: only d logp / d hidden, (N, H), is kept
    assert largest_saved(lambda h, m, y: label_logps(h, m, y, chunk_rows=16)) == n * hidden_size
