"""A few DPO steps on the tiny model under accelerate, for the multi-process test:

    python tests/ddp_dpo_run.py OUT.safetensors [--completion-only]               (one process)
    accelerate launch --multi_gpu --num_processes 2 tests/ddp_dpo_run.py OUT.safetensors [--completion-only]

With --completion-only the LM head runs on completion positions only, through a
`logprobs.SequenceScorer` that DDP wraps instead of the model.

Every process builds the same model and pairs and takes its share of each global batch of 4
pairs; the main process writes the trained parameters and the logged metrics.
"""

import copy
import json
import os
import sys

import torch
from safetensors.torch import save_file
from tiny_dpo_run import TEXTS

from dpo_core.data import collate_pairs, make_pair
from dpo_core.distributed import local_share, make_accelerator, mean_over_processes, to_device
from dpo_core.logprobs import SequenceScorer, concatenated_forward, concatenated_scores
from dpo_core.models import disable_dropout
from dpo_core.tiny import byte_tokenizer, tiny_gpt2
from dpo_core.train import dpo_step, pair_batches, reference_logps

if __name__ == "__main__":
    accelerator = make_accelerator()
    tok = byte_tokenizer()
    policy = disable_dropout(tiny_gpt2(seed=0))
    reference = copy.deepcopy(policy).requires_grad_(False)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    examples = [make_pair(ids(p), ids(c), ids(r), 64) for p, c, r in TEXTS]
    # SGD: its step is the averaged gradient itself; RMSprop's sqrt normalisation would turn
    # float-rounding differences in near-zero gradients into full-size steps
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    trained = policy
    if "--completion-only" in sys.argv:
        policy, forward = SequenceScorer(policy, completion_only=True), concatenated_scores
    else:
        forward = concatenated_forward
    policy, optimizer = accelerator.prepare(policy, optimizer)
    log = []
    for indices in pair_batches(len(examples), batch_size=4, n_steps=4, seed=0):
        mine = local_share(indices, accelerator)
        batch = to_device(collate_pairs([examples[i] for i in mine], tok.pad_token_id), accelerator.device)
        ref_chosen, ref_rejected = reference_logps(reference, batch)
        log.append(mean_over_processes(dpo_step(policy, optimizer, batch, ref_chosen, ref_rejected, beta=0.1,
                                                forward=forward),
                                       accelerator))
    if accelerator.is_main_process:
        save_file({n: p.detach().contiguous() for n, p in trained.named_parameters()}, sys.argv[1])
        print(json.dumps({"processes": accelerator.num_processes, "log": log}))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    # gloo's threads can still abort the interpreter's exit ("terminate called without an active
    # exception", seen in 2 of about 10 runs here); everything is written, so leave without the teardown
    sys.stdout.flush()
    os._exit(0)
