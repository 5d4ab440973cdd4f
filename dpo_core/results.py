"""Run directories and the files in them, written atomically.

Each notebook run writes only into results/<profile>/<notebook>/<run-name>/ (a root that
smoke runs move to build/): params.json, metrics.csv (one row per evaluation),
train_log.csv, samples.jsonl, and a FINISHED marker written last. Figure notebooks read
only finished runs, so a run that died halfway never shows up as a result.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_core.models import attention_in_fp32


def repo_root():
    """The repository root: the nearest parent of the working directory holding this
    project's pyproject.toml, else the parent of the installed package (editable install).
    JupyterLab, nbval (notebook dir) and papermill (--cwd) then agree on every path."""
    for folder in [Path.cwd(), *Path.cwd().parents]:
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and 'name = "dpo_core"' in pyproject.read_text():
            return folder
    return Path(__file__).resolve().parents[1]



def run_dir(results_root, profile, notebook, run_name):
    """The run's directory (created), relative paths resolved from the repository root."""
    root = Path(results_root)
    path = (root if root.is_absolute() else repo_root() / root) / profile / notebook / run_name
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(results_root, profile):
    """results_root/profile/cache: content-addressed tensors shared by the runs of a profile
    (frozen-bottom hidden states); safe to delete."""
    return run_dir(results_root, profile, "cache", ".").resolve()


@contextlib.contextmanager
def atomic(path, folder=False):
    """Write-then-rename, the one way every file and folder of a run, a cache or an asset is
    written: yields a temporary sibling of `path` on the same filesystem (a file name inside a
    fresh `.<name>.partial-*` folder, or that folder itself with folder=True), and renames it over
    `path` only when the block completes. An error or a kill leaves `path` as it was: a reader
    never sees half a file, and a run dying mid-write never leaves something that loads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    target = tmp if folder else tmp / path.name
    try:
        yield target
        for written in [target, *target.rglob("*")] if folder else [target]:
            written.chmod((0o777 if written.is_dir() else 0o666) & ~_umask())  # mkdtemp's 0700: shared like any file
        if folder and path.is_dir():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path, text):
    with atomic(path) as tmp:
        tmp.write_text(text)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def save_rows(path, rows):
    """A list of dicts as CSV (columns from the union of keys, in first-seen order)."""
    atomic_write(path, pd.DataFrame(rows).to_csv(index=False))


def save_jsonl(path, rows):
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows))


def start_run(path, params, write=True):
    """Record the parameters and clear a previous FINISHED marker before a run starts; return
    the run directory. write=False (a process other than the main one) only returns it."""
    if write:
        (Path(path) / "FINISHED").unlink(missing_ok=True)
        save_json(Path(path) / "params.json", params)
    return Path(path)


def finish_run(path, files=None):
    """Write a run's outputs, then mark it finished (only a finished run is read downstream).

    Args:
        files: {file name: what to write}, by suffix: .csv a list of row dicts, .jsonl a list
            of dicts, .json any JSON value, .safetensors a module's trained parameters.
    """
    writers = {".csv": save_rows, ".jsonl": save_jsonl, ".json": save_json,
               ".safetensors": lambda path, module: save_trained_parameters(module, path)}
    files = files or {}
    unknown = [name for name in files if Path(name).suffix not in writers]
    if unknown:  # before anything is written
        raise ValueError(f"finish_run cannot write {unknown[0]!r}: use one of {sorted(writers)}")
    for name, value in files.items():
        writers[Path(name).suffix](Path(path) / name, value)
    atomic_write(Path(path) / "FINISHED", "")


def load_metrics(results_root, profile, notebooks):
    """metrics.csv of every finished run of the given notebooks as one DataFrame, with the
    run's `notebook` and `run` and its params.json values added as columns. Unfinished runs
    are left out, printed, and listed in `frame.attrs["unfinished"]` so figures can say so."""
    frames, unfinished = [], []
    for notebook in notebooks:
        base = run_dir(results_root, profile, notebook, ".").resolve()
        for path in sorted(p for p in base.iterdir() if p.is_dir()):
            if not (path / "FINISHED").exists():
                unfinished.append(str(path))
                continue
            frame = pd.read_csv(path / "metrics.csv")
            params = json.loads((path / "params.json").read_text())
            frame = frame.assign(notebook=notebook, run=path.name,
                                 **{k: v for k, v in params.items() if k not in frame.columns and not isinstance(v, (list, dict))})
            frames.append(frame)
    if unfinished:
        print(f"[results] skipping {len(unfinished)} unfinished run(s): {unfinished}")
    if not frames:
        raise FileNotFoundError(f"no finished runs of {notebooks} under {results_root}/{profile}; run them first")
    frame = pd.concat(frames, ignore_index=True)
    frame.attrs["unfinished"] = [f"{Path(p).parent.name}/{Path(p).name}" for p in unfinished]  # for the figure's README
    return frame


def save_model(model, tokenizer, path):
    """save_pretrained into a temporary sibling folder, renamed into place when complete."""
    with atomic(path, folder=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def load_model(path):
    """(model, tokenizer) saved by `save_model`, fp32, eval mode."""
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"no finished model in {path}; run the notebook that writes it first")
    model = attention_in_fp32(AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval())
    return model, AutoTokenizer.from_pretrained(path)


def read_params(path):
    return json.loads((Path(path) / "params.json").read_text())


def require_finished(path):
    """The run directory of an upstream step, which must have finished."""
    if not (Path(path) / "FINISHED").exists():
        raise FileNotFoundError(f"{path} has not finished; run its notebook (or `make figures`) first")
    return Path(path)


def upstream(results_root, profile, notebook, run):
    """(directory, params) of the finished run `run` of an earlier notebook; a clear error if it
    has not finished."""
    path = require_finished(run_dir(results_root, profile, notebook, run))
    return path, read_params(path)


def cached_json(path, compute, name):
    """The JSON value stored at `path` (a content-addressed cache file), or `compute()` saved
    there first. An unreadable file is reported with `name` and computed again."""
    path = Path(path)
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (ValueError, OSError) as error:
            print(f"[{name}] {path} is unreadable ({error}); recomputing it")
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(value))
    return value


def save_tensors(path, tensors):
    """A dict of tensors as safetensors, written atomically (parallel runs never share a temporary)."""
    with atomic(path) as tmp:
        save_file(tensors, str(tmp))


def fingerprint(*parts):
    """sha256 hex digest of `parts`, for content-addressed cache files: strings, numbers, tensors
    (dtype, shape and bytes), modules (every named parameter's name and bytes), callables (their
    name and bound arguments, no memory addresses) and lists or tuples of these, nested."""
    digest = hashlib.sha256()

    def add(part):
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(part, torch.nn.Module):
            digest.update(type(part).__name__.encode())
            for name, p in part.named_parameters():
                digest.update(name.encode())
                add(p)
        elif isinstance(part, (list, tuple)) and part and all(isinstance(x, int) for x in part):
            add(torch.tensor(part, dtype=torch.int64))  # token ids: hashed as one block
        elif isinstance(part, (list, tuple)):
            digest.update(b"[")
            for item in part:
                add(item)
            digest.update(b"]")
        elif callable(part):
            digest.update(re.sub(r" at 0x[0-9a-f]+", "", repr(part)).encode())
        else:
            digest.update(f"{type(part).__name__}:{part}|".encode())

    for part in parts:
        add(part)
    return digest.hexdigest()


def cached_tensors(path, compute, name, valid=lambda tensors: True):
    """The dict of tensors stored at `path` (a content-addressed cache file), or `compute()`
    saved there first (`save_tensors`). A file that cannot be read, or that `valid` rejects,
    is reported with `name` and computed again."""
    path = Path(path)
    if path.is_file():
        try:
            stored = load_file(str(path))
            if valid(stored):
                return stored
            print(f"[{name}] {path} does not hold what its name says; recomputing it")
        except (SafetensorError, KeyError, RuntimeError, OSError) as error:
            print(f"[{name}] {path} is unreadable ({error}); recomputing it")
    tensors = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, tensors)
    return tensors


def save_trained_parameters(module, path):
    """The parameters that require grad (the trained top layers, heads), as safetensors:
    a few tens of MB instead of the whole model."""
    save_tensors(path, {name: p.detach().contiguous() for name, p in module.named_parameters() if p.requires_grad})


def load_trained_parameters(module, path):
    """Load what `save_trained_parameters` wrote into a module of the same architecture."""
    tensors = load_file(str(path))
    unknown = set(tensors) - dict(module.named_parameters()).keys()
    if unknown:
        raise ValueError(f"{path} holds parameters this module does not have: {sorted(unknown)[:5]}")
    module.load_state_dict(tensors, strict=False)
    return module


def stage_durations(results_root, profile):
    """Wall time of every executed run under results_root/profile, from the duration papermill
    records in each run's executed.ipynb: a list of (notebook, run, seconds)."""
    base = run_dir(results_root, profile, ".", ".").resolve()
    rows = []
    for path in sorted(base.glob("*/*/executed.ipynb")):
        duration = json.loads(path.read_text())["metadata"].get("papermill", {}).get("duration")
        if duration is not None:
            rows.append((path.parent.parent.name, path.parent.name, float(duration)))
    return rows


def markdown_table(rows, columns):
    """A list of dicts as a GitHub markdown table of the given columns (floats to 3 decimals)."""
    def cell(value):
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def git_commit():
    """The repository's HEAD commit (short), marked '+changes' when tracked files differ from it
    (the regenerated figures/ themselves excepted: writing them must not mark their own run dirty)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=repo_root(), capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!figures") else "")
