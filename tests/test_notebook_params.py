"""check_parameters on namespaces shaped like an IPython kernel's after papermill injection."""

import pytest

from dpo_core.notebook import ParameterError, check_parameters, require


def kernel_namespace(injected="", **values):
    """Declared: beta: float = 0.1, steps: int = 10, name: str = 'run', plot: bool = True."""
    declared = {"beta": 0.1, "steps": 10, "name": "run", "plot": True}
    ns = {"__annotations__": {"beta": float, "steps": int, "name": str, "plot": bool}, **declared}
    history = ["", "beta: float = 0.1  # ...\nsteps: int = 10  # ..."]
    if injected:
        history.append("# Parameters\n" + injected)
    ns["In"] = history
    ns.update(values)
    return ns


def test_declared_defaults_pass_and_are_returned():
    assert check_parameters(kernel_namespace()) == {"beta": 0.1, "steps": 10, "name": "run", "plot": True}


def test_injected_known_parameter_passes_and_int_is_promoted_to_float():
    ns = kernel_namespace("beta = 1\n", beta=1)
    params = check_parameters(ns)
    assert params["beta"] == 1.0 and isinstance(params["beta"], float) and isinstance(ns["beta"], float)


def test_unknown_injected_parameter_names_the_closest_real_one():
    with pytest.raises(ParameterError, match=r"unknown parameter 'stpes' \(did you mean 'steps'\?\)"):
        check_parameters(kernel_namespace("stpes = 5\n", stpes=5))


def test_variables_defined_by_later_cells_are_not_mistaken_for_parameters():
    ns = kernel_namespace(loss=0.3)  # e.g. a rerun of the check after the notebook ran
    ns["In"].append("loss = 0.3")
    assert "loss" not in check_parameters(ns)


@pytest.mark.parametrize(
    "name, value, match",
    [
        ("beta", "0.1", "'beta' must be float, got str"),
        ("steps", 2.5, "'steps' must be int, got float"),
        ("steps", True, "'steps' must be int, got bool"),
        ("name", 3, r"'name' must be str, got int 3 \(pass strings with papermill -r"),
        ("plot", "yes", "'plot' must be bool"),
    ],
)
def test_wrong_types_are_rejected(name, value, match):
    with pytest.raises(ParameterError, match=match):
        check_parameters(kernel_namespace(f"{name} = {value!r}\n", **{name: value}))


def test_require():
    require(True, "never raised")
    with pytest.raises(ParameterError, match="beta must be > 0"):
        require(False, "beta must be > 0")


def test_a_key_passed_as_a_parameter_is_refused_before_it_is_saved():
    from dpo_core.notebook import refuse_secrets

    refuse_secrets({"judge": "chat:gpt-4-0314", "judge_url": "https://api.openai.com/v1"})  # fine
    with pytest.raises(ParameterError, match="'judge_url' looks like an API key; put the key in \\$OPENAI_API_KEY"):
        refuse_secrets({"judge_url": "https://x/v1?key=sk-abcdefghijklmnop"})


def test_a_float_written_without_a_dot_is_read_as_a_float():
    """YAML 1.1 (papermill's parser) reads `3e-6` as a string; a float parameter accepts it."""
    from dpo_core.notebook import _check_type

    assert _check_type("learning_rate", "3e-06", float) == 3e-06
    with pytest.raises(ParameterError, match="must be float"):
        _check_type("learning_rate", "fast", float)


@pytest.mark.parametrize("kwargs, match", [({"positive": "steps beta"}, "steps must be > 0, got 0"),
                                           ({"non_negative": "beta"}, "beta must be >= 0, got -0.5"),
                                           ({"fractions": "beta"}, r"beta must be in \[0, 1\), got -0.5")])
def test_declared_ranges_are_checked_by_name(kwargs, match):
    ns = kernel_namespace("steps = 0\nbeta = -0.5\n", steps=0, beta=-0.5)
    with pytest.raises(ParameterError, match=match):
        check_parameters(ns, **kwargs)


def test_values_inside_their_ranges_pass():
    params = check_parameters(kernel_namespace("beta = 0.0\n", beta=0.0), positive="steps", non_negative="beta",
                              fractions="beta")
    assert params["beta"] == 0.0 and params["steps"] == 10


def test_a_range_for_an_undeclared_name_is_a_clear_error():
    with pytest.raises(ParameterError, match="given 'stpes', which the first cell does not declare"):
        check_parameters(kernel_namespace(), positive="stpes")
