"""The profiles beside smoke's: `quick` (the class lab) leaves stages out but runs the same
Makefile graph, and every one of its parameter files passes its notebook's own checks."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from dpo_core.notebook import ParameterError

ROOT = Path(__file__).resolve().parents[1]
QUICK = sorted((ROOT / "params" / "quick").rglob("*.yaml"))


def notebook_of(params_file):
    stem = params_file.stem if params_file.parent.name == "quick" else params_file.parent.name
    return ROOT / "notebooks" / f"{stem}.ipynb"


def run_checks(notebook, overrides):
    """The notebook's parameters cell, papermill's injected cell and its check cell (the second
    code cell), executed in one namespace as the kernel would; returns that namespace."""
    cells = ["".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    injected = "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in overrides.items())
    namespace = {"In": ["", cells[0], injected]}
    for source in (cells[0], injected, cells[1]):
        exec(compile(source, str(notebook), "exec"), namespace)
    return namespace


def test_quick_has_the_stages_the_lab_needs():
    stems = {notebook_of(f).stem for f in QUICK}
    assert {"02_imdb_sft", "03_imdb_preferences", "04_imdb_dpo_and_baselines", "06_imdb_ppo",
            "08_fig_reward_kl_frontier"} <= stems
    runs = {f.stem for f in QUICK if f.parent.name == "04_imdb_dpo_and_baselines"}
    assert "dpo_beta-0.1" in runs and "preferred_ft_seed-0" in runs


@pytest.mark.parametrize("params_file", QUICK, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_quick_params_pass_their_notebooks_checks(params_file):
    notebook = notebook_of(params_file)
    assert notebook.is_file(), f"{params_file}: no notebook {notebook.name}"
    overrides = yaml.safe_load(params_file.read_text()) or {}
    namespace = run_checks(notebook, overrides)
    for name, value in overrides.items():
        assert namespace[name] == value
    if params_file.parent.name != "quick":  # a sweep: the file's name is its run's name
        assert overrides["run_name"] == params_file.stem


def test_the_check_harness_can_fail():
    """A quick file with a value out of range must stop the checks, or the test above proves nothing."""
    notebook = ROOT / "notebooks" / "04_imdb_dpo_and_baselines.ipynb"
    overrides = yaml.safe_load((ROOT / "params/quick/04_imdb_dpo_and_baselines/dpo_beta-0.1.yaml").read_text())
    with pytest.raises(ParameterError, match="n_steps"):
        run_checks(notebook, {**overrides, "n_steps": 0})
    with pytest.raises(ParameterError, match="unknown parameter"):
        run_checks(notebook, {**overrides, "n_stepz": 3})


def test_quick_figures_go_to_their_own_folder():
    frontier = yaml.safe_load((ROOT / "params/quick/08_fig_reward_kl_frontier.yaml").read_text())
    assert Path(frontier["fig_dir"]) != Path("figures") and frontier["fig_dir"].startswith("figures/")


def test_every_quick_run_samples_completions_of_one_length():
    """KL and reward are per sequence: points are comparable only at one completion length."""
    lengths = {(yaml.safe_load(f.read_text()) or {}).get("max_new_tokens") for f in QUICK}
    assert lengths - {None} == {16}
    assert all((yaml.safe_load(f.read_text()) or {}).get("max_new_tokens") for f in QUICK
               if notebook_of(f).stem in ("03_imdb_preferences", "04_imdb_dpo_and_baselines", "06_imdb_ppo"))


def planned_stages(profile):
    """(notebook, run) of every papermill execution `make -n figures` plans for `profile` on an empty
    results tree (the Makefile's own graph: a profile drops a stage only by having no params for it)."""
    out = subprocess.run(["make", "-n", "-B", "figures", f"PROFILE={profile}", "R=build/make-dry-run/none"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    stages = set()
    for line in out.splitlines():
        if "papermill" in line and " notebooks/" in line:
            stem = line.split(" notebooks/")[1].split(".ipynb")[0]
            run = line.split(".ipynb ")[1].split("/")[-2]
            stages.add((stem, run))
    return stages


def test_quick_runs_the_same_graph_with_fewer_stages():
    quick, cpu = planned_stages("quick"), planned_stages("cpu")
    assert quick == {("01_dpo_loss_walkthrough", "main"), ("02_imdb_sft", "main"), ("03_imdb_preferences", "main"),
                     ("04_imdb_dpo_and_baselines", "dpo_beta-0.1"), ("04_imdb_dpo_and_baselines", "preferred_ft_seed-0"),
                     ("06_imdb_ppo", "ppo_gt_target-6"), ("08_fig_reward_kl_frontier", "main")}
    stems = {stem for stem, _ in cpu}
    assert {"05_imdb_reward_model", "07_imdb_best_of_n", "09_imdb_win_rates", "10_fig_win_rates"} <= stems
    assert {stem for stem, _ in quick} < stems
