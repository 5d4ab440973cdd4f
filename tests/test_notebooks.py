"""Notebook hygiene and smoke runs: every notebook is committed clean, declares its
parameters properly, runs under papermill with the smoke parameters, and refuses an
unknown parameter."""

import ast
import json
import shutil
from pathlib import Path

import papermill as pm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PROFILES = ["smoke", "cpu", "paper"]
PARAMETER_TYPES = {"int", "float", "str", "bool", "list", "dict"}


def code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def params_files(path, profile):
    """params/<profile>/<stem>.yaml, or one file per run in params/<profile>/<stem>/ for sweeps."""
    single = ROOT / "params" / profile / f"{path.stem}.yaml"
    return [single] if single.is_file() else sorted((ROOT / "params" / profile / path.stem).glob("*.yaml"))


SMOKE_RUNS = [(path, f) for path in NOTEBOOKS for f in params_files(path, "smoke")]


def declared_parameters(path):
    """{name: type name} from the parameters cell, parsed independently of papermill."""
    tree = ast.parse(source(code_cells(path)[0]))
    return {node.target.id: node.annotation.id for node in tree.body}


@pytest.fixture(scope="module", autouse=True)
def fresh_smoke_tree():
    """The smoke runs below build on each other; start them from an empty tree."""
    shutil.rmtree(ROOT / "build" / "smoke", ignore_errors=True)


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_or_execution_counts(path):
    for cell in code_cells(path):
        assert cell.get("outputs") == [], f"{path.name}: strip outputs before committing"
        assert cell.get("execution_count") is None, f"{path.name}: strip execution counts before committing"
    assert json.loads(path.read_text())["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_first_and_only_and_holds_typed_commented_literals(path):
    cells = code_cells(path)
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged == [0], f"{path.name}: the first code cell, and only it, must be tagged 'parameters'"
    text = source(cells[0])
    tree = ast.parse(text)
    lines = text.splitlines()
    assert tree.body, "empty parameters cell"
    for node in tree.body:
        line = lines[node.lineno - 1]
        assert isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name), f"not `name: type = value`: {line}"
        assert isinstance(node.annotation, ast.Name) and node.annotation.id in PARAMETER_TYPES, f"type: {line}"
        ast.literal_eval(node.value)  # literals only: raises on anything computed
        assert "#" in line.split("=", 1)[1] and line.split("#", 1)[1].strip(), f"no comment: {line}"
        assert node.end_lineno == node.lineno, f"one parameter per line: {line}"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_params_file_exists_and_names_only_real_parameters(path, profile):
    files = params_files(path, profile)
    assert files, f"no params/{profile}/{path.stem}.yaml (or params/{profile}/{path.stem}/*.yaml)"
    declared = declared_parameters(path)
    types = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list, "dict": dict}
    for params_file in files:
        overrides = yaml.safe_load(params_file.read_text()) or {}
        unknown = set(overrides) - set(declared)
        assert not unknown, f"{params_file.relative_to(ROOT)} sets {sorted(unknown)}, not parameters of {path.name}"
        for name, value in overrides.items():
            assert isinstance(value, types[declared[name]]), f"{params_file.name}: {name} should be {declared[name]}"
        if params_file.parent.name == path.stem:  # a sweep: the file's name is its run's name
            assert overrides.get("run_name") == params_file.stem, f"{params_file}: run_name must equal the file name"
    # papermill's own reading of the cell agrees with ours
    assert set(pm.inspect_notebook(str(path))) == set(declared)


STUDY_FILES = sorted((ROOT / "params").glob("*/study/*/*.yaml"))


@pytest.mark.parametrize("params_file", STUDY_FILES, ids=lambda p: f"{p.parts[-4]}-{p.parent.name}-{p.stem}")
def test_study_params_name_only_real_parameters_of_their_notebook(params_file):
    """`make study` runs notebook <dir>.ipynb with each params/<profile>/study/<dir>/<run>.yaml."""
    path = ROOT / "notebooks" / f"{params_file.parent.name}.ipynb"
    assert path.is_file(), f"{params_file.relative_to(ROOT)}: no notebook {path.name}"
    declared = declared_parameters(path)
    types = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list, "dict": dict}
    overrides = yaml.safe_load(params_file.read_text()) or {}
    assert not set(overrides) - set(declared), f"{params_file.name} sets {sorted(set(overrides) - set(declared))}"
    for name, value in overrides.items():
        assert isinstance(value, types[declared[name]]), f"{params_file.name}: {name} should be {declared[name]}"
    assert overrides.get("run_name") == params_file.stem, f"{params_file}: run_name must equal the file name"


def execute(path, parameters, name):
    out = ROOT / "build" / "smoke" / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    return pm.execute_notebook(
        str(path), str(out), parameters=parameters, kernel_name="python3", cwd=str(ROOT),
        progress_bar=False, execution_timeout=600,
    )


@pytest.mark.parametrize("path, params_file", SMOKE_RUNS, ids=lambda x: x.stem)
def test_runs_under_papermill_with_smoke_parameters(path, params_file):
    """In order: each IMDb step reads the runs of the step before it."""
    smoke = yaml.safe_load(params_file.read_text()) or {}
    nb = execute(path, smoke, f"{path.stem}-{params_file.stem}")
    assert not nb.metadata.papermill.exception


def test_the_smoke_chain_drew_the_frontier_from_real_runs():
    runs = ROOT / "build" / "smoke" / "results" / "smoke" / "04_imdb_dpo_and_baselines"
    assert sorted(p.name for p in runs.iterdir() if (p / "FINISHED").exists()) == sorted(
        f.stem for f in params_files(NOTEBOOKS[0].parent / "04_imdb_dpo_and_baselines.ipynb", "smoke")
    )
    for ext in ("png", "pdf"):
        assert (ROOT / "build" / "smoke" / "figures" / f"reward_kl_frontier.{ext}").stat().st_size > 1000


def test_the_smoke_study_runs_and_draws_the_data_scaling_figure():
    """`make study`'s stages on smoke, after the smoke chain (whose SFT they build on): the study's
    preference sets (sentence prompts, a disjoint held-out set), DPO on nested sizes with held-out
    accuracy, the reward models, PPO-GT on the same prompts, then notebook 13 on them."""
    study = ROOT / "params" / "smoke" / "study"
    for params_file in sorted(study.glob("*/*.yaml")):  # notebook order: 03, 04, 05, 06
        nb = execute(ROOT / "notebooks" / f"{params_file.parent.name}.ipynb", yaml.safe_load(params_file.read_text()),
                     f"study-{params_file.parent.name}-{params_file.stem}")
        assert not nb.metadata.papermill.exception
    nb = execute(ROOT / "notebooks" / "13_fig_study.ipynb", yaml.safe_load((study / "13_fig_study.yaml").read_text()),
                 "study-13")
    assert not nb.metadata.papermill.exception
    text = (ROOT / "build" / "smoke" / "figures" / "study" / "STUDY.md").read_text()
    assert "| 04_imdb_dpo_and_baselines/data_dpo-2 | sentences | 2 | 12 |" in text  # 2 prompts, 6 pairs each
    assert "| 04_imdb_dpo_and_baselines/data_dpo-6 | sentences | 6 | 36 |" in text
    assert "reward model | 18" in text  # the held-out set: 3 prompts x 6 pairs, disjoint from the training ones
    for ext in ("png", "pdf"):
        for name in ("dpo_vs_preference_data", "dpo_lr_probe"):
            assert (ROOT / "build" / "smoke" / "figures" / "study" / f"{name}.{ext}").stat().st_size > 1000


def test_progress_bars_stay_condensed_in_executed_notebooks():
    """Under papermill a progress bar is one widget output holding its last state, not a line per
    update: the executed training notebooks keep a handful of outputs, none a stream of bar frames."""
    for executed in sorted((ROOT / "build" / "smoke").glob("0[2456]_*.ipynb")):
        outputs = [o for c in json.loads(executed.read_text())["cells"] for o in c.get("outputs", [])]
        streams = "".join("".join(o.get("text", "")) for o in outputs if o["output_type"] == "stream")
        widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert widgets, f"{executed.name}: no progress widget"
        assert streams.count("\r") <= 2 and "it/s]" not in streams, f"{executed.name}: bar frames in the output"
        assert len(outputs) < 40, f"{executed.name}: {len(outputs)} outputs"


def test_a_misspelt_parameter_stops_the_run_with_a_clear_message():
    with pytest.raises(pm.PapermillExecutionError) as err:
        execute(NOTEBOOKS[0], {"beat": 0.2}, "misspelt-parameter")
    assert "unknown parameter 'beat' (did you mean 'beta'?)" in str(err.value)


def launch(*args):
    import subprocess
    import sys

    accelerate = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command = [*(accelerate if args[0] == "2" else [sys.executable]), "-m", "dpo_core.launch", *args[1:]]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("stem, params_name, run", [("02_imdb_sft", "02_imdb_sft.yaml", "main"),
                                                    ("04_imdb_dpo_and_baselines", "04_imdb_dpo_and_baselines/dpo_beta-0.1.yaml",
                                                     "dpo_beta-0.1")], ids=["02", "04"])
def test_a_training_notebook_under_accelerate_with_two_processes_trains_like_one(stem, params_name, run):
    """The README's multi-process command on the smoke chain: 2 CPU processes (gloo), each half
    of every batch, against the single-process papermill run of the same parameters."""
    import pandas as pd

    params_file = ROOT / "params" / "smoke" / params_name
    smoke_runs = ROOT / "build" / "smoke" / "results" / "smoke"
    upstream = [("02_imdb_sft", "02_imdb_sft.yaml", "main"), ("03_imdb_preferences", "03_imdb_preferences.yaml", "main")]
    for needed_stem, needed_params, needed_run in [*upstream[: 0 if stem == "02_imdb_sft" else 2], (stem, params_name, run)]:
        # selected alone (-k), the single-process runs the papermill tests write earlier are missing: make them
        if not (smoke_runs / needed_stem / needed_run / "FINISHED").exists():
            made = launch("1", f"notebooks/{needed_stem}.ipynb", "-f", str(ROOT / "params" / "smoke" / needed_params))
            assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    done = launch("2", f"notebooks/{stem}.ipynb", "-f", str(params_file), "-p", "run_name", "two-processes")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = smoke_runs / stem
    one, two = (pd.read_csv(runs / name / "train_log.csv") for name in (run, "two-processes"))
    assert (two.columns == one.columns).all() and len(two) == len(one)
    # rewards/ties counts exact zeros: the frozen-bottom path of one process and DDP's full forward
    # of two agree to 1e-6, not bit for bit, so a tie can turn into a tiny margin
    compared = [c for c in one.columns if c != "rewards/ties"]
    assert ((one[compared] - two[compared]).abs().max().max()) < 1e-4, (one, two)
    assert (runs / "two-processes" / "FINISHED").exists()


def test_the_launcher_applies_the_notebooks_own_parameter_checks():
    done = launch("1", "notebooks/01_dpo_loss_walkthrough.ipynb", "-p", "beat", "0.2")
    assert done.returncode != 0 and "unknown parameter 'beat' (did you mean 'beta'?)" in done.stderr


RESUMABLE = [  # (notebook, smoke params file, overrides making the run long enough to interrupt)
    ("02_imdb_sft", "02_imdb_sft.yaml", {"n_steps": 12, "checkpoint_every": 3}),
    ("04_imdb_dpo_and_baselines", "04_imdb_dpo_and_baselines/dpo_beta-0.1.yaml",
     {"n_steps": 12, "checkpoint_every": 3, "eval_every": 6}),
    ("06_imdb_ppo", "06_imdb_ppo/ppo_target-6.yaml", {"n_steps": 6, "checkpoint_every": 2, "eval_every": 3}),
]


@pytest.mark.parametrize("stem, params_name, overrides", RESUMABLE, ids=[r[0] for r in RESUMABLE])
def test_a_training_notebook_killed_mid_run_resumes_to_the_uninterrupted_result(stem, params_name, overrides):
    """SIGKILL right after the first checkpoint, run the same command again: the training log
    and evaluations equal those of an uninterrupted run with the same parameters, exactly."""
    import signal
    import subprocess
    import sys

    import pandas as pd

    def command(run_name):
        args = ["-f", str(ROOT / "params" / "smoke" / params_name), "-p", "run_name", run_name]
        for name, value in overrides.items():
            args += ["-p", name, str(value)]
        return [sys.executable, "-u", "-m", "dpo_core.launch", f"notebooks/{stem}.ipynb", *args]

    assert launch("1", f"notebooks/{stem}.ipynb", *command("uninterrupted")[5:]).returncode == 0
    first = overrides["checkpoint_every"]
    run = subprocess.Popen(command("interrupted"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in run.stdout:
        if line.startswith(f"[checkpoint] step {first} saved"):
            run.send_signal(signal.SIGKILL)
            break
    assert run.wait(timeout=60) == -signal.SIGKILL
    runs = ROOT / "build" / "smoke" / "results" / "smoke" / stem
    assert not (runs / "interrupted" / "FINISHED").exists()

    again = subprocess.run(command("interrupted"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from step {first}" in again.stdout
    for name in ("train_log.csv", "metrics.csv"):
        one, two = (pd.read_csv(runs / run / name) for run in ("uninterrupted", "interrupted"))
        timing = [c for c in one.columns if "seconds" in c]
        pd.testing.assert_frame_equal(one.drop(columns=timing), two.drop(columns=timing), check_exact=True)
    assert (runs / "interrupted" / "FINISHED").exists()

