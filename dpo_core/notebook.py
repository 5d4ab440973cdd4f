"""Helpers for the notebooks' second cell: check the parameters papermill injected.

papermill only warns when it is given a parameter the notebook does not declare, so a
misspelt key in a params file would silently run with the defaults. Here a notebook
declares its parameters in its first cell as annotated literals (`beta: float = 0.1`),
which puts their names and types in `__annotations__`; papermill injects overrides as a
cell that starts with `# Parameters`, which IPython keeps in its input history `In`.
`check_parameters` compares the two and stops the notebook with a clear message.
"""

import ast
import difflib
import re

from dpo_core import methods
from dpo_core.precision import PRECISIONS
from dpo_core.results import repo_root  # noqa: F401  (notebooks import it from here)


class ParameterError(ValueError):
    """A notebook parameter is unknown, of the wrong type, or out of range."""


def injected_names(namespace):
    """Names assigned by papermill's injected-parameters cells in this kernel's history."""
    names = set()
    for source in namespace.get("In", []):
        if source.lstrip().startswith("# Parameters"):
            for node in ast.parse(source).body:
                targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _check_type(name, value, expected):
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # papermill parses `-p beta 1` as an int
    if expected is float and isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
        return float(value)  # YAML 1.1 reads `-p learning_rate 3e-6` (no dot) as a string
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if not ok:
        raise ParameterError(
            f"parameter {name!r} must be {expected.__name__}, got {type(value).__name__} {value!r}"
            + (" (pass strings with papermill -r, not -p)" if expected is str else "")
        )
    return value


def check_parameters(namespace, positive="", non_negative="", fractions=""):
    """Validate the notebook's parameters; return them as a dict (for params.json).

    Args:
        namespace: the notebook's `globals()`.
        positive, non_negative: space-separated names whose values must be > 0, >= 0.
        fractions: space-separated names whose values must lie in [0, 1).
    Raises:
        ParameterError for an injected name the first cell does not declare, a value whose
        type differs from its annotation, or a value out of its range. `precision` and
        `temperatures`, where declared, are checked here for every notebook.
    """
    declared = namespace.get("__annotations__", {})
    unknown = sorted(injected_names(namespace) - set(declared))
    if unknown:
        hints = [
            f"{name!r}" + "".join(f" (did you mean {m!r}?)" for m in difflib.get_close_matches(name, declared, n=1))
            for name in unknown
        ]
        raise ParameterError(
            f"unknown parameter {', '.join(hints)}; this notebook's parameters are {sorted(declared)}. "
            "Fix the name in the params file or the papermill -p flag."
        )
    params = {}
    for name, expected in declared.items():
        params[name] = namespace[name] = _check_type(name, namespace[name], expected)
    if "precision" in params:  # every training and sampling notebook's, checked before anything is written
        require(params["precision"] in PRECISIONS, f"precision must be one of {PRECISIONS}, got {params['precision']!r}")
    if "temperatures" in params:  # every win-rate notebook's
        temperatures = params["temperatures"]
        require(len(temperatures) > 0 and all(isinstance(t, (int, float)) and t >= 0 for t in temperatures),
                f"temperatures must be a non-empty list of numbers >= 0, got {temperatures}")
    for names, holds, bound in ((positive, lambda v: v > 0, "> 0"), (non_negative, lambda v: v >= 0, ">= 0"),
                                (fractions, lambda v: 0 <= v < 1, "in [0, 1)")):
        for name in names.split():
            require(name in params, f"check_parameters was given {name!r}, which the first cell does not declare")
            require(holds(params[name]), f"{name} must be {bound}, got {params[name]}")
    return params


def offline_objective(method, setting, options):
    """Notebook 04's method, setting and method options as a checked `methods.objective`; a
    ParameterError says what the registry entry allows."""
    try:
        return methods.objective(method, setting, **options)
    except ValueError as err:
        raise ParameterError(str(err)) from None


def require(condition, message):
    """Stop the notebook with `message` unless `condition` holds (range checks)."""
    if not condition:
        raise ParameterError(message)


def refuse_secrets(params):
    """Stop if a parameter value looks like an API key: keys belong in the environment
    ($OPENAI_API_KEY), never in parameters, which are saved to params.json and the notebook."""
    for name, value in params.items():
        if isinstance(value, str) and re.search(r"\b(sk-[A-Za-z0-9_-]{8,}|Bearer\s+\S+)", value):
            raise ParameterError(f"parameter {name!r} looks like an API key; put the key in $OPENAI_API_KEY "
                                 "(read from the environment only) and remove it from the parameters")
