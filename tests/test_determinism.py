"""The same seed and parameters give identical metrics on two runs on this machine (CPU):
a whole small DPO run, training log and frontier evaluations, compared exactly."""

import copy

import torch

from dpo_core.data import collate_pairs, make_pair
from dpo_core.evaluate import evaluate_policy
from dpo_core.tiny import byte_tokenizer, tiny_gpt2
from dpo_core.train import disable_dropout, dpo_step, reference_logps, train_on_pairs, warmup_lr

TEXTS = [("The film", " was a delight", " was a chore"), ("Acting", " superb", " wooden"),
         ("I", " loved it", " left early"), ("Plot", " gripping and clever", " thin"),
         ("Music", " soaring", " grating"), ("Ending", " earned", " rushed")]


def one_run(seed):
    tok = byte_tokenizer()
    policy = disable_dropout(tiny_gpt2(seed=0))
    reference = copy.deepcopy(policy).requires_grad_(False)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    examples = [make_pair(ids(p), ids(c), ids(r), 64) for p, c, r in TEXTS]
    optimizer = torch.optim.RMSprop(policy.parameters(), lr=1e-3)
    schedule = warmup_lr(optimizer, 2)

    def step(indices):
        batch = collate_pairs([examples[i] for i in indices], tok.pad_token_id)
        ref_chosen, ref_rejected = reference_logps(reference, batch)
        metrics = dpo_step(policy, optimizer, batch, ref_chosen, ref_rejected, beta=0.1)
        schedule.step()
        return metrics

    def reward(texts):  # a deterministic stand-in judge: share of vowels
        return torch.tensor([sum(ch in "aeiou" for ch in t) / max(1, len(t)) for t in texts])

    prompts = [ids(p) for p, _, _ in TEXTS[:4]]
    evaluate = lambda n: evaluate_policy(policy, reference, prompts, reward, tok, 6, seed=1234)[0]  # noqa: E731
    return train_on_pairs(step, len(examples), n_steps=6, batch_size=3, seed=seed, evaluate=evaluate, eval_every=3)


def test_same_seed_same_metrics_exactly():
    first, second = one_run(seed=0), one_run(seed=0)
    assert first == second  # every float of every step and evaluation, bit for bit
    train_log, eval_rows = first
    assert len(train_log) == 6 and len(eval_rows) == 3 and eval_rows[-1]["kl"] > 0


def test_another_seed_changes_the_run():
    assert one_run(seed=0)[0] != one_run(seed=1)[0]  # the check above could fail: the seed matters
