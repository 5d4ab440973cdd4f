"""Interrupted runs continue exactly where they stopped (issue 7, item 2).

The oracle is the same run left uninterrupted: a run killed with SIGKILL and started again
must end with the same training log, evaluations and samples, bit for bit."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_dpo_run import N_STEPS, one_run

import dpo_core.checkpoint as checkpoint_module
from dpo_core.checkpoint import Checkpoint
from dpo_core.train import LoopOptions, train_loop, training_batches

SCRIPT = Path(__file__).with_name("tiny_dpo_run.py")


def as_json(result):
    return json.loads(json.dumps(result))


@pytest.fixture(scope="module")
def uninterrupted():
    return as_json(one_run(seed=0))


def start(run_dir, *args):
    return subprocess.Popen([sys.executable, "-u", str(SCRIPT), str(run_dir), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_run_killed_mid_training_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    run = start(tmp_path, "--pause", "0.3")
    for line in run.stdout:  # kill right after the checkpoint of step 4, while step 5 is under way
        if "[checkpoint] step 4 saved" in line:
            os.kill(run.pid, signal.SIGKILL)
            break
    run.wait(timeout=60)
    assert run.returncode == -signal.SIGKILL
    assert (tmp_path / "checkpoint.pt").is_file() and not (tmp_path / "result.json").exists()

    rerun = start(tmp_path)
    output = rerun.communicate(timeout=120)[0]
    assert rerun.returncode == 0, output
    assert "resuming from step 4" in output and "step 1:" not in output  # steps 1-4 were not redone
    assert json.loads((tmp_path / "result.json").read_text()) == uninterrupted


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, monkeypatch, uninterrupted):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = Checkpoint(tmp_path / "checkpoint.pt", model, optimizer, params={"a": 1})
    checkpoint.save(2, [{"step": 1}, {"step": 2}], [{"step": 0}])

    def dies_halfway(obj, path):
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process is stopped in the middle of the write

    monkeypatch.setattr(checkpoint_module.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(4, [], [])
    monkeypatch.undo()
    assert checkpoint.restore()[0] == 2


def test_a_finished_run_is_recognised_and_not_trained_again(tmp_path, capsys, uninterrupted):
    assert as_json(one_run(seed=0, run_dir=tmp_path)) == uninterrupted  # checkpointing changes nothing
    capsys.readouterr()
    assert as_json(one_run(seed=0, run_dir=tmp_path)) == uninterrupted
    output = capsys.readouterr().out
    assert f"resuming from step {N_STEPS}" in output and "step 1:" not in output
    # the final checkpoint drops the optimizer state: nothing follows the last step
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["optimizer"] is None


def test_a_checkpoint_of_other_parameters_is_not_resumed(tmp_path, capsys, uninterrupted):
    one_run(seed=0, run_dir=tmp_path, lr=3e-3)
    capsys.readouterr()
    assert as_json(one_run(seed=0, run_dir=tmp_path)) == uninterrupted
    assert "written with other parameters; starting from step 0" in capsys.readouterr().out


def test_a_corrupt_checkpoint_is_reported_and_the_run_starts_over(tmp_path, capsys, uninterrupted):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert as_json(one_run(seed=0, run_dir=tmp_path)) == uninterrupted
    assert "cannot read" in capsys.readouterr().out


def test_a_nan_loss_stops_with_the_step_and_the_last_good_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = Checkpoint(tmp_path / "checkpoint.pt", model, optimizer, every=2)
    calls = []

    def step(indices):
        calls.append(indices)
        if len(calls) == 5:
            raise FloatingPointError("DPO loss is nan; weights left unchanged (lower the learning rate?)")
        return {"loss": 0.5}

    with pytest.raises(FloatingPointError) as err:
        train_loop(step, training_batches(4, 2, 8, seed=0), LoopOptions(checkpoint=checkpoint))
    assert "step 5: DPO loss is nan" in str(err.value) and "holds step 4" in str(err.value)
    assert checkpoint.restore()[0] == 4  # and that checkpoint is there to resume from
