"""Run a notebook's code as a plain Python program, with papermill-style parameters, so that
`accelerate launch` can start it in several processes:

    accelerate launch -m dpo_core.launch notebooks/04_imdb_dpo_and_baselines.ipynb \
        -f params/paper/04_imdb_dpo_and_baselines/dpo_beta-0.1.yaml [-p name value ...]

The code cells run in order in one namespace; the parameters go in right after the
`parameters` cell, as papermill injects them, so the notebook's own checks (unknown names,
types, ranges) apply unchanged. Nothing is written back into the notebook.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch.distributed
import yaml


def code_cells(path):
    cells = json.loads(Path(path).read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def parameters_cell(values):
    """What papermill injects: `# Parameters` then one assignment per value."""
    return "# Parameters\n" + "".join(f"{name} = {value!r}\n" for name, value in values.items())


def run(path, values):
    """Execute the notebook at `path` with parameter overrides `values`; returns its namespace."""
    cells = code_cells(path)
    sources = [cells[0], parameters_cell(values), *cells[1:]]
    namespace = {"__name__": "__main__", "In": []}
    for index, source in enumerate(sources):
        namespace["In"].append(source)
        exec(compile(source, f"{path}[cell {index}]", "exec"), namespace)
    return namespace


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dpo_core.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook")
    parser.add_argument("-f", "--parameters_file", action="append", default=[], help="YAML file of parameters")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="one parameter; the value is read as YAML, as papermill -p does")
    args = parser.parse_args(argv)
    values = {}
    for file in args.parameters_file:
        values.update(yaml.safe_load(Path(file).read_text()) or {})
    values.update({name: yaml.safe_load(value) for name, value in args.parameter})
    run(args.notebook, values)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        # gloo's threads can still abort the interpreter's exit ("terminate called without an active
        # exception"); every file is written by now, so leave without the C++ teardown
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
