"""A notebook run's plumbing in one object, made in one line from the notebook's parameters.

    Run.start(notebook, params)   the run directory (params.json written, FINISHED cleared), the
                                  profile's cache, the accelerator and the main-process flag
    run.upstream(notebook, name)  (directory, params) of a finished run this one reads
    run.checkpoint(...)           a resumable `Checkpoint` in the run directory, under the run's parameters
    run.loop(desc, ...)           `train_loop`'s options; the progress bar on the main process only
    run.live_curves()             the live training figure (main process only)
    run.prepare / run.unwrap      DDP wrapping across processes: the identity in one process
    run.finish(files)             the outputs written once (main process), then every process waits

In a notebook there is one process; under `accelerate launch -m dpo_core.launch` there are N,
each with its share of every batch (`distributed`). Either way the notebook's code is the same:
only this object knows how many processes there are. Tests make one with `Run(out, cache)`:
one process, no accelerator.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from dpo_core import distributed, plotting, results
from dpo_core.checkpoint import Checkpoint
from dpo_core.train import LoopOptions


@dataclass
class Run:
    out: Optional[Path]  # the run directory: results/<profile>/<notebook>/<run_name>
    cache: Path  # results/<profile>/cache: content-addressed tensors shared by the profile's runs
    params: dict = field(default_factory=dict)  # the notebook's checked parameters (params.json)
    accelerator: Any = None  # accelerate's Accelerator; None: one process, on the CPU
    name: str = "run"  # "<notebook>/<run_name>": figure titles

    @classmethod
    def start(cls, notebook, params):
        """The run of `notebook` named by params["run_name"] in results_root/profile."""
        accelerator = distributed.make_accelerator()
        root, profile = params["results_root"], params["profile"]
        out = results.start_run(results.run_dir(root, profile, notebook, params["run_name"]), params,
                                write=accelerator.is_main_process)
        return cls(out, results.cache_dir(root, profile), params, accelerator, f"{notebook}/{params['run_name']}")

    @property
    def main_process(self):
        return self.accelerator is None or self.accelerator.is_main_process

    @property
    def n_processes(self):
        return 1 if self.accelerator is None else self.accelerator.num_processes

    @property
    def device(self):
        return torch.device("cpu") if self.accelerator is None else self.accelerator.device

    def upstream(self, notebook, run):
        """(directory, params) of the finished run `run` of an earlier notebook in this profile."""
        return results.upstream(self.params["results_root"], self.params["profile"], notebook, run)

    def prepare(self, *objects):
        """Models and optimizers wrapped for DDP (several processes) and moved to the device."""
        if self.accelerator is None:
            return objects if len(objects) > 1 else objects[0]
        return self.accelerator.prepare(*objects)

    def unwrap(self, model):
        """The model inside a DDP wrapper (itself in one process)."""
        return model if self.accelerator is None else self.accelerator.unwrap_model(model)

    def checkpoint(self, model, optimizer, scheduler=None, name="checkpoint", **options):
        """A `Checkpoint` at out/<name>.pt, saved every params["checkpoint_every"] steps, written by
        the main process and restored by all; `options`: Checkpoint's logs, generator, stateful, ignore."""
        return Checkpoint(self.out / f"{name}.pt", self.unwrap(model), optimizer, scheduler, self.params,
                          self.params.get("checkpoint_every", 0), write=self.main_process, **options)

    def loop(self, desc, **options):
        """`train.LoopOptions` for this run: `desc` labels the progress bar, shown on the main process."""
        return LoopOptions(desc=desc, show_progress=self.main_process, **options)

    def live_curves(self, title=""):
        """The live training curves' `update` (train_loop's on_evaluate), on the main process only."""
        return plotting.LiveCurves(f"{self.name}{title}").update if self.main_process else None

    def finish(self, files=None):
        """Write the outputs and the FINISHED marker (main process), then every process waits for it."""
        if self.main_process:
            results.finish_run(self.out, files)
        self.wait()

    def wait(self):
        """Every process waits here for the others (nothing in one process)."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
