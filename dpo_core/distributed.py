"""Several processes training one policy, with accelerate (ARCHITECTURE.md, Scale).

`accelerate launch` starts N copies of the same program. Each takes its share of every global
batch and DDP averages the gradients, so with equal shares and a mean loss N processes step
exactly like one process on the whole batch. In one process (a notebook) everything here is
the identity. GPUs with NCCL, or CPU processes with gloo (`accelerate launch --multi_gpu` on a
machine without GPUs), run the same code.
"""

import os

import torch
from accelerate import Accelerator


def local_share(indices, accelerator):
    """This process's rows of a global batch of pair indices (all of them without an accelerator)."""
    n = 1 if accelerator is None else accelerator.num_processes
    if len(indices) % n:
        raise ValueError(f"a batch of {len(indices)} pairs does not split evenly over {n} processes; "
                         f"make batch_size a multiple of {n}")
    return indices if n == 1 else indices[accelerator.process_index :: n]


def mean_over_processes(metrics, accelerator):
    """Per-process batch means -> means over the global batch (equal shares), on every process."""
    if accelerator is None or accelerator.num_processes == 1:
        return metrics
    values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=accelerator.device)
    return dict(zip(metrics, accelerator.reduce(values, "mean").tolist()))


def to_device(batch, device):
    """A dict of tensors moved to `device` (a no-op on CPU)."""
    return {name: value.to(device) for name, value in batch.items()}


def make_accelerator():
    """The run's `Accelerator`: GPUs when there are any, else CPU processes over gloo.

    Without `cpu=True` on a machine with no GPU, accelerate 1.15 gives each launched process
    a world of its own: N copies would each train on everything and race on the same files.
    """
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise RuntimeError(f"launched {launched} processes but accelerate sees {accelerator.num_processes}; "
                           "check `accelerate config` (distributed type) or launch with --multi_gpu")
    return accelerator
