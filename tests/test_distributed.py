"""Two CPU processes (gloo, through `accelerate launch`) train like one process on the same
global batch (issue 7, item 1): each takes half of every batch, DDP averages the gradients."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dpo_core.tiny import tiny_gpt2

SCRIPT = Path(__file__).with_name("ddp_dpo_run.py")
ACCELERATE = Path(sys.executable).with_name("accelerate")


def run(command, out, *flags):
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, str(SCRIPT), str(out), *flags], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), load_file(str(out))


@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher is not installed beside this python")
@pytest.mark.parametrize("flags", [(), ("--completion-only",)], ids=["full-logits", "completion-only-scorer"])
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, flags):
    single_info, single = run([sys.executable], tmp_path / "single.safetensors", *flags)
    multi_info, multi = run([str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                             "--mixed_precision", "no", "--dynamo_backend", "no"], tmp_path / "multi.safetensors", *flags)
    assert (single_info["processes"], multi_info["processes"]) == (1, 2)
    initial = dict(tiny_gpt2(seed=0).named_parameters())
    moved = max((single[n] - initial[n]).abs().max().item() for n in single)
    differ = max((single[n] - multi[n]).abs().max().item() for n in single)
    assert moved > 1e-3 and differ < 1e-6, f"parameters moved by {moved}, differ by {differ}"
    for one, two in zip(single_info["log"], multi_info["log"]):  # the logged means agree too
        assert one.keys() == two.keys()
        assert all(abs(one[k] - two[k]) < 1e-5 for k in one), (one, two)
    assert abs(single_info["log"][0]["loss"] - 0.693147) < 1e-5  # pi = pi_ref at step 1
