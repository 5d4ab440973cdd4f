"""Checkpoints that let an interrupted training run continue exactly where it stopped.

One file per run, `checkpoint.pt`, holds what the next step depends on: the trained
parameters, the optimizer and scheduler states (and any other object with a state_dict, such
as PPO's KL controller), the RNG states, the step reached (the data
position: batches are a pure function of the seed and the step), the logs so far, and the
run's parameters. It is written to a temporary sibling and renamed into place, so a kill
during a write leaves the previous checkpoint whole. It is read with
`torch.load(weights_only=True)`: tensors, numbers and strings only, no pickled code.

A checkpoint from other parameters is ignored (the run starts over and says so); one that
cannot be read is reported and ignored, never half-applied.
"""

import json
import random
from pathlib import Path

import torch

from dpo_core.results import atomic

NOT_STATE = ("log_every", "checkpoint_every")  # parameters that never change what a run computes


def _trained_state(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


class Checkpoint:
    """Save and restore a training loop's state in `path` every `every` steps.

    Args:
        path: the checkpoint file (e.g. run_dir / "checkpoint.pt").
        model, optimizer, scheduler: restored in place; only parameters that require grad are saved.
        params: the run's parameters; a checkpoint written under different ones is not resumed.
            Those that cannot change the training state are left out of the comparison: `NOT_STATE`
            (logging and checkpoint cadence) and the names in `ignore` (e.g. what happens after training).
        every: steps between saves (0: only at the end of training).
        logs: extra lists the caller appends to (e.g. evaluation samples), saved and restored in place.
        write: False on all but the main process of a multi-process run: every process restores,
            one writes.
        generator: a torch.Generator the loop draws from (e.g. PPO's rollout sampling).
        stateful: {name: object with state_dict / load_state_dict} to save beside the model.
    """

    def __init__(self, path, model, optimizer, scheduler=None, params=None, every=0, logs=None, write=True,
                 generator=None, stateful=None, ignore=()):
        self.path, self.model, self.optimizer, self.scheduler = Path(path), model, optimizer, scheduler
        state_params = {k: v for k, v in (params or {}).items() if k not in NOT_STATE and k not in ignore}
        self.params = json.dumps(state_params, sort_keys=True, default=str)
        self.every, self.logs, self.write = every, logs or {}, write
        self.generator, self.stateful = generator, stateful or {}

    def due(self, step, last_step):
        return step == last_step or (self.every > 0 and step % self.every == 0)

    def save(self, step, train_log, eval_rows, final=False):
        """Write the state after `step` optimizer steps. `final` drops the optimizer state
        (nothing follows the last step; a finished run only needs its logs and weights)."""
        if not self.write:
            return
        state = {
            "step": step,
            "params": self.params,
            "logs": json.dumps({"train_log": train_log, "eval_rows": eval_rows, **self.logs}),
            "model": _trained_state(self.model),
            "optimizer": None if final else self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": json.dumps(random.getstate()),
            "generator": None if self.generator is None else self.generator.get_state(),
            "stateful": json.dumps({name: obj.state_dict() for name, obj in self.stateful.items()}),
        }
        with atomic(self.path) as tmp:
            torch.save(state, tmp)
        print(f"[checkpoint] step {step} saved")

    def restore(self):
        """(step, train_log, eval_rows) from the checkpoint, with model, optimizer, scheduler,
        RNGs and `logs` restored in place; None when there is nothing to resume."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, weights_only=True)
        except Exception as err:  # truncated or corrupt: report, start over, keep the file for inspection
            print(f"[checkpoint] cannot read {self.path} ({type(err).__name__}: {err}); starting from step 0")
            return None
        if state["params"] != self.params:
            print(f"[checkpoint] {self.path} was written with other parameters; starting from step 0")
            return None
        self.model.load_state_dict(state["model"], strict=False)
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if self.generator is not None:
            self.generator.set_state(state["generator"])
        for name, saved in json.loads(state["stateful"]).items():
            self.stateful[name].load_state_dict(saved)
        version, internal, gauss = json.loads(state["python_rng"])
        random.setstate((version, tuple(internal), gauss))
        logs = json.loads(state["logs"])
        for name, items in self.logs.items():
            items[:] = logs[name]
        print(f"[checkpoint] resuming from step {state['step']} ({self.path})")
        return state["step"], logs["train_log"], logs["eval_rows"]
