"""The module map of ARCHITECTURE.md holds: each dpo_core module imports only the modules its row
allows, there is no import cycle, and no dpo_core import hides inside a function."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT / "dpo_core").glob("*.py") if p.stem != "__init__")


def allowed():
    """{module: set of allowed dpo_core imports} from ARCHITECTURE.md's module table."""
    rules = {}
    for line in (ROOT / "ARCHITECTURE.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            for module in re.findall(r"`(\w+)`", cells[0]):
                rules[module] = set(re.findall(r"`(\w+)`", cells[2]))
    return rules


def imports(module):
    """(top-level dpo_core imports, dpo_core imports inside functions) of a module."""
    tree = ast.parse((ROOT / "dpo_core" / f"{module}.py").read_text())
    top, nested = set(), set()
    for node in ast.walk(tree):
        names = set()
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dpo_core"):
            names = {node.module.split(".")[1]} if "." in node.module else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names = {a.name.split(".")[1] for a in node.names if a.name.startswith("dpo_core.")}
        (top if node in tree.body else nested).update(names)
    return top, nested


def test_every_module_is_in_the_map_and_imports_only_what_its_row_allows():
    rules = allowed()
    assert sorted(rules) == MODULES, "ARCHITECTURE.md's module table and dpo_core/ list different modules"
    for module in MODULES:
        top, nested = imports(module)
        assert not nested, f"{module} imports {sorted(nested)} inside a function; import at module top"
        assert top <= rules[module], f"{module} imports {sorted(top - rules[module])}, which its row does not allow"


def test_no_import_cycle():
    graph = {m: imports(m)[0] for m in MODULES}
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "active", f"import cycle: {' -> '.join(path + [m])}"
        state[m] = "active"
        for n in graph[m]:
            visit(n, path + [m])
        state[m] = "done"

    for m in MODULES:
        visit(m, [])
