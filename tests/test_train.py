"""The DPO step on the tiny model with a frozen copy as reference: the paper's step-0
invariants and one step of learning."""

import copy
import math

import pytest
import torch
from learned import PAIRS, dpo_one_step_gain

from dpo_core.data import collate_pairs, encode_pair
from dpo_core.models import disable_dropout
from dpo_core import train
from dpo_core.tiny import byte_tokenizer, tiny_gpt2
from dpo_core.train import dpo_step, reference_logps


@pytest.fixture
def setup():
    tok = byte_tokenizer()
    policy = disable_dropout(tiny_gpt2(seed=0))
    reference = copy.deepcopy(policy).requires_grad_(False)
    batch = collate_pairs([encode_pair(tok, *p, max_length=64) for p in PAIRS], tok.pad_token_id)
    return policy, reference, batch


def test_step_zero_loss_is_ln2_with_zero_rewards(setup):
    policy, reference, batch = setup
    ref_chosen, ref_rejected = reference_logps(reference, batch)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    metrics = dpo_step(policy, optimizer, batch, ref_chosen, ref_rejected, beta=0.1)
    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["rewards/rejected"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_one_step_raises_the_chosen_minus_rejected_margin(setup):
    # 0.19-0.22 over 20 seeds x 3 CPU kernel sets (tests/MARGINS.md); the threshold was 1e-3
    assert dpo_one_step_gain(seed=0) > 0.1
    policy, reference, batch = setup  # the reference really is frozen: a step leaves its log-probs alone
    ref_chosen, ref_rejected = reference_logps(reference, batch)
    assert not ref_chosen.requires_grad  # no graph is built for pi_ref
    dpo_step(policy, torch.optim.Adam(policy.parameters(), lr=1e-3), batch, ref_chosen, ref_rejected, beta=0.1)
    torch.testing.assert_close(reference_logps(reference, batch)[0], ref_chosen, rtol=0, atol=0)


def test_a_step_updates_the_weights_and_leaves_no_gradients_behind(setup):
    # gradients kept after the step would live through the next step's forward (peak memory)
    policy, reference, batch = setup
    ref_chosen, ref_rejected = reference_logps(reference, batch)
    before = [p.detach().clone() for p in policy.parameters()]
    dpo_step(policy, torch.optim.SGD(policy.parameters(), lr=0.1), batch, ref_chosen, ref_rejected, beta=0.1)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))  # the gradients were used
    assert all(p.grad is None for p in policy.parameters())


def test_nan_loss_stops_before_the_weights_change(setup):
    policy, _, batch = setup
    before = [p.detach().clone() for p in policy.parameters()]
    nan = torch.full((len(PAIRS),), float("nan"))
    with pytest.raises(FloatingPointError, match="weights left unchanged"):
        dpo_step(policy, torch.optim.SGD(policy.parameters(), lr=1.0), batch, nan, nan, beta=0.1)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_length_buckets_keep_every_pair_and_cut_padding():
    from dpo_core.train import length_bucketed, pair_batches

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 200, (100,), generator=g).tolist()
    batches = pair_batches(100, 8, 40, seed=3)
    bucketed = length_bucketed(batches, lengths, seed=3, window=10)
    assert bucketed == length_bucketed(batches, lengths, seed=3, window=10)  # a pure function of the seed
    assert [len(b) for b in bucketed] == [len(b) for b in batches]
    for start in range(0, 40, 10):  # the same pairs within each window of steps, so the data order barely moves
        assert sorted(sum(bucketed[start:start + 10], [])) == sorted(sum(batches[start:start + 10], []))

    def padded(bs):  # tokens a step pays for: batch size x its longest pair
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    real = sum(lengths[i] for b in batches for i in b)
    assert real <= padded(bucketed) < real + 0.25 * (padded(batches) - real)  # lengths 10-200: most padding goes


def test_reference_log_probs_are_cached_by_content(tmp_path, capsys):
    from dpo_core.train import cached_reference_logps, pair_batch_maker, precompute_reference_logps

    tok = byte_tokenizer()
    examples = [encode_pair(tok, "The film", " was a delight.", " bored me.", 64),
                encode_pair(tok, "Acting", " superb", " wooden and slow", 64)]
    model = disable_dropout(tiny_gpt2(seed=2))
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    expected = precompute_reference_logps(model, examples, tok.pad_token_id)
    make_batch, batches = pair_batch_maker(examples, tok.pad_token_id), [[1, 0], [0], [1, 0]]

    def cached(examples, batches):
        return cached_reference_logps(tmp_path, model, examples, batches, make_batch)

    first = cached(examples, batches)
    assert sorted(first) == [(0,), (1, 0)]  # one entry per distinct batch, in its own layout
    n_calls = len(calls)
    again = cached(examples, batches)
    assert len(calls) == n_calls  # loaded, the model not run
    for key in first:
        assert all(torch.equal(a, b) for a, b in zip(first[key], again[key]))
    torch.testing.assert_close(first[(1, 0)][0], expected[0].flip(0))  # the same values, batch order kept
    # other batches, other pairs, other weights, another precision: other files, computed afresh
    cached(examples, [[0, 1]])
    cached(examples[:1], [[0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cached(examples, batches)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.bias.add_(0.1)
    changed = cached(examples, batches)
    assert not torch.equal(changed[(0,)][0], first[(0,)][0])
    assert len(list(tmp_path.glob("reference-*.safetensors"))) == 5
    # a corrupt file is reported and recomputed
    for path in tmp_path.glob("reference-*.safetensors"):
        path.write_bytes(b"not a safetensors file")
    recomputed = cached(examples, batches)
    assert torch.equal(recomputed[(0,)][0], changed[(0,)][0]) and "unreadable" in capsys.readouterr().out


def test_held_out_accuracy_is_indifferent_at_pi_ref_then_tracks_training(tmp_path):
    """Eq. 7 and Eq. 5 on held-out pairs: with policy = pi_ref the loss is ln 2 and no pair is ranked
    (ties count as wrong); pi_ref's log-probs come from the cache on a second evaluator; after DPO
    steps on the same pairs their margin and accuracy rise."""
    from dpo_core.train import held_out_accuracy

    tok = byte_tokenizer()
    examples = [encode_pair(tok, *p, max_length=64) for p in PAIRS]
    policy = disable_dropout(tiny_gpt2(seed=3))
    reference = copy.deepcopy(policy).requires_grad_(False)
    at_start = held_out_accuracy(policy, reference, examples, 0.1, tok.pad_token_id, tmp_path, batch_size=2)(0)
    assert abs(at_start["eval_loss"] - math.log(2)) < 1e-6
    assert at_start["eval_accuracy"] == 0 and abs(at_start["eval_margin"]) < 1e-6
    assert len(list(tmp_path.glob("reference-*.safetensors"))) == 1
    calls = []
    reference.register_forward_hook(lambda *args: calls.append(1))
    evaluate = held_out_accuracy(policy, reference, examples, 0.1, tok.pad_token_id, tmp_path, batch_size=2)
    assert calls == []  # loaded from the cache
    batch = collate_pairs(examples, tok.pad_token_id)
    ref_c, ref_r = reference_logps(reference, batch)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for _ in range(5):
        dpo_step(policy, optimizer, batch, ref_c, ref_r, 0.1)
    trained = evaluate(5)
    assert trained["eval_margin"] > 0.05 and trained["eval_accuracy"] > 0.5 and trained["eval_loss"] < math.log(2)


def test_offline_optimizers_first_step_against_hand_computed_values():
    """RMSprop (the paper's, no bias correction) moves a weight by lr * g / sqrt(0.01 g^2) = 10 lr at
    its first step; Adam (bias-corrected) by lr. The warm-up scales both (step 1 of 4: a quarter)."""
    for name, first_step in (("rmsprop", 10.0), ("adam", 1.0)):
        weight = torch.nn.Parameter(torch.tensor([0.0]))
        optimizer, schedule = train.offline_optimizer(name, [weight], 1e-3, warmup_steps=4)
        (weight * 3.0).sum().backward()  # gradient 3
        optimizer.step()
        schedule.step()
        assert weight.item() == pytest.approx(-first_step * 1e-3 / 4, rel=1e-4), name
    with pytest.raises(ValueError, match="optimizer must be one of"):
        train.offline_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], 1e-3, 1)
