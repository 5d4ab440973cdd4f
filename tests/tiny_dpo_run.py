"""A whole small DPO run on the tiny model (training log and frontier evaluations), shared by the
determinism and resume tests. As a script it runs once with a checkpoint and prints its result:

    python tests/tiny_dpo_run.py RUN_DIR [--pause SECONDS]
"""

import copy
import json
import sys
import time
from pathlib import Path

import torch

from dpo_core.checkpoint import Checkpoint
from dpo_core.data import collate_pairs, make_pair
from dpo_core.evaluate import evaluate_policy
from dpo_core.models import disable_dropout
from dpo_core.tiny import byte_tokenizer, tiny_gpt2
from dpo_core.train import (LoopOptions, dpo_step, evaluation_steps, reference_logps, train_loop, training_batches,
                             warmup_lr)

TEXTS = [("The film", " was a delight", " was a chore"), ("Acting", " superb", " wooden"),
         ("I", " loved it", " left early"), ("Plot", " gripping and clever", " thin"),
         ("Music", " soaring", " grating"), ("Ending", " earned", " rushed")]
N_STEPS = 8


def one_run(seed, run_dir=None, checkpoint_every=2, pause=0.0, lr=1e-3):
    """(train_log, eval_rows, eval_samples); with `run_dir`, checkpointed to run_dir/checkpoint.pt."""
    tok = byte_tokenizer()
    policy = disable_dropout(tiny_gpt2(seed=0))
    reference = copy.deepcopy(policy).requires_grad_(False)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    examples = [make_pair(ids(p), ids(c), ids(r), 64) for p, c, r in TEXTS]
    optimizer = torch.optim.RMSprop(policy.parameters(), lr=lr)
    schedule = warmup_lr(optimizer, 2)

    def step(indices):
        time.sleep(pause)  # lets a test kill the run mid-training
        batch = collate_pairs([examples[i] for i in indices], tok.pad_token_id)
        ref_chosen, ref_rejected = reference_logps(reference, batch)
        metrics = dpo_step(policy, optimizer, batch, ref_chosen, ref_rejected, beta=0.1)
        schedule.step()
        return metrics

    def reward(texts):  # a deterministic stand-in judge: share of vowels
        return torch.tensor([sum(ch in "aeiou" for ch in t) / max(1, len(t)) for t in texts])

    prompts = [ids(p) for p, _, _ in TEXTS[:4]]
    eval_samples = []

    def evaluate(n):
        metrics, samples = evaluate_policy(policy, reference, prompts, reward, tok, 6, seed=1234)
        eval_samples.extend({"step": n, **s} for s in samples)
        return metrics

    checkpoint = None
    if run_dir is not None:
        checkpoint = Checkpoint(Path(run_dir) / "checkpoint.pt", policy, optimizer, schedule,
                                params={"seed": seed, "lr": lr}, every=checkpoint_every,
                                logs={"eval_samples": eval_samples})
    train_log, eval_rows = train_loop(step, training_batches(len(examples), 3, N_STEPS, seed),
                                      LoopOptions(evaluate=evaluate, eval_at=evaluation_steps(N_STEPS, 3), log_every=1,
                                                  checkpoint=checkpoint))
    return train_log, eval_rows, eval_samples


if __name__ == "__main__":
    pause = float(sys.argv[sys.argv.index("--pause") + 1]) if "--pause" in sys.argv else 0.0
    result = one_run(seed=0, run_dir=sys.argv[1], pause=pause)
    (Path(sys.argv[1]) / "result.json").write_text(json.dumps(result))
    print("done", flush=True)
