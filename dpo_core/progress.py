"""Progress bars for the loops that take more than a few seconds.

`tqdm.auto`: a widget in JupyterLab (and, in a notebook papermill executes, one widget output
holding the final state, not a line per update), a text bar in a terminal. Extra processes
of a multi-process run stay quiet (`enabled=False`).
"""

from tqdm.auto import tqdm


def bar(total, desc, initial=0, enabled=True, leave=True):
    """A bar over `total` units (steps, prompts, texts); use as a context manager."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, leave=leave, mininterval=1.0,
                dynamic_ncols=True)
