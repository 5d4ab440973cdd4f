"""The run context (`dpo_core.run.Run`) and the method registry's options: what a notebook gets from
`Run.start`, and a worked example of adding a variant with an extra hyperparameter, which touches
only the loss and its registry entry (here both live in the test)."""

import copy
import dataclasses
import json
import math

import pytest
import torch

from dpo_core import losses, methods, models, train
from dpo_core.notebook import ParameterError, offline_objective
from dpo_core.run import Run
from dpo_core.tiny import byte_tokenizer, tiny_gpt2
from test_orchestration import pair_examples

PARAMS = {"results_root": "", "profile": "smoke", "run_name": "r1", "checkpoint_every": 3, "seed": 0}


def start(tmp_path, **params):
    return Run.start("04_imdb_dpo_and_baselines", {**PARAMS, "results_root": str(tmp_path), **params})


def test_run_start_makes_the_run_directory_and_cache_and_writes_params(tmp_path):
    run = start(tmp_path)
    assert run.out == tmp_path / "smoke" / "04_imdb_dpo_and_baselines" / "r1"
    assert json.loads((run.out / "params.json").read_text())["run_name"] == "r1"
    assert run.cache == (tmp_path / "smoke" / "cache").resolve() and run.cache.is_dir()
    assert run.main_process and run.n_processes == 1 and run.device == torch.device("cpu")
    assert run.loop("SFT").show_progress and run.loop("SFT").desc == "SFT"


def test_run_checkpoint_lives_in_the_run_directory_with_the_runs_cadence(tmp_path):
    run = start(tmp_path)
    model = torch.nn.Linear(2, 2)
    checkpoint = run.checkpoint(model, torch.optim.SGD(model.parameters(), lr=0.1), name="dpo_checkpoint")
    assert checkpoint.path == run.out / "dpo_checkpoint.pt" and checkpoint.every == 3


def test_run_finish_marks_the_run_finished_and_a_rerun_clears_the_mark(tmp_path):
    run = start(tmp_path)
    with pytest.raises(FileNotFoundError, match="has not finished"):
        run.upstream("04_imdb_dpo_and_baselines", "r1")
    run.finish({"metrics.csv": [{"step": 0, "kl": 0.0}]})
    path, params = run.upstream("04_imdb_dpo_and_baselines", "r1")
    assert (path / "FINISHED").exists() and (path / "metrics.csv").read_text().startswith("step,kl")
    assert params["checkpoint_every"] == 3
    start(tmp_path)  # the same run started again: no longer finished until it finishes again
    assert not (path / "FINISHED").exists()


def _dpo_with_offset(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta, offset=0.0):
    """A variant for the worked example: Eq. 7 with a margin the implicit rewards must clear,
    -log sigma(beta * h - offset) (as ODPO's or SimPO's margin)."""
    h = losses.preference_logits(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    return -torch.nn.functional.logsigmoid(beta * h - offset)


def test_a_variant_with_its_own_hyperparameter_is_one_loss_and_one_registry_entry(monkeypatch, tmp_path):
    entry = dataclasses.replace(methods.METHODS["dpo"], name="dpo_offset", loss=_dpo_with_offset,
                                options={"offset": (0.0, lambda v: v >= 0, ">= 0")},
                                loss_at_reference=lambda beta: math.log(2))
    monkeypatch.setitem(methods.METHODS, "dpo_offset", entry)
    monkeypatch.setattr(methods, "OFFLINE", methods.OFFLINE + ["dpo_offset"])

    objective = offline_objective("dpo_offset", 0.1, {"offset": 1.0})  # notebook 04's check, unchanged
    assert objective.options == {"offset": 1.0}
    with pytest.raises(ParameterError, match=">= 0"):
        offline_objective("dpo_offset", 0.1, {"offset": -1.0})
    with pytest.raises(ParameterError, match="dpo takes no option 'offset'"):
        offline_objective("dpo", 0.1, {"offset": 1.0})

    # the option reaches the loss through fit_offline: at pi = pi_ref (h = 0) the first step's loss
    # is -log sigma(-offset) = log(1 + e^offset), by hand 1.3133 for offset 1
    tok = byte_tokenizer()
    examples = pair_examples(tok)
    policy = models.disable_dropout(tiny_gpt2(seed=0))
    reference = copy.deepcopy(policy).requires_grad_(False)
    optimizer, schedule = train.rmsprop_with_warmup(policy.parameters(), 1e-3, 2)
    pairs = train.PairData(examples, train.training_batches(len(examples), 3, 2, seed=0),
                           train.pair_batch_maker(examples, tok.pad_token_id))
    log, _ = train.fit_offline(Run(tmp_path, tmp_path), policy, reference, objective, optimizer, schedule, pairs)
    assert log[0]["loss"] == pytest.approx(math.log(1 + math.e), abs=1e-6)
    assert log[0]["rewards/margins"] == 0
