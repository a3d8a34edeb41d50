"""The package's shape: imports point one way (colab -> stages -> core), with no cycles.

Read from the source with ``ast`` (no module is imported), so a cycle hidden inside a function
body, which Python tolerates at run time, is still found. Imports under ``if TYPE_CHECKING:``
never run and are left out.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nbutils"
# Layers from the edge inwards: a module may import its own layer's modules and any layer after it.
LAYERS = ("colab", "stages", "core")
STAGES = ("tokenize", "train", "generate", "evaluate")
# Stages may use earlier stages' outputs (train reads tokenize's shards, evaluate scores what generate
# makes and reuses train's labels), never a later one.
STAGE_ORDER = {"tokenize": 0, "train": 1, "generate": 1, "evaluate": 2}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(sub) for sub in ast.walk(node))
    return skipped


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from nbutils.x import y`` counts ``nbutils.x.y`` when
    that is a module, else ``nbutils.x``)."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
    return {name for name in found if name in modules}


@functools.lru_cache(maxsize=1)
def graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    edges = {}
    for name, path in files.items():
        # a package re-exporting its own submodules is not a dependency of design
        edges[name] = {d for d in imports_of(path, modules) if d != name and not d.startswith(name + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> str:
    part = module.split(".")[1] if "." in module else ""
    if part == "colab" or part in ("cli", "__main__"):
        return "colab"
    return "stages" if part in STAGES else "core" if part == "core" else "top"


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_point_from_colab_to_stages_to_core():
    wrong = []
    for module, deps in graph().items():
        mine = layer(module)
        if mine == "top":
            continue
        for dep in deps:
            theirs = layer(dep)
            if theirs != "top" and LAYERS.index(theirs) < LAYERS.index(mine):
                wrong.append(f"{module} ({mine}) imports {dep} ({theirs})")
    assert wrong == []


def test_a_stage_imports_no_later_stage():
    wrong = []
    for module, deps in graph().items():
        if layer(module) != "stages":
            continue
        stage = module.split(".")[1]
        for dep in deps:
            if layer(dep) == "stages":
                other = dep.split(".")[1]
                if other != stage and STAGE_ORDER[other] >= STAGE_ORDER[stage]:
                    wrong.append(f"{module} imports {dep}")
    assert wrong == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: _module_name(p))
def test_google_colab_only_in_the_colab_layer(path):
    module = _module_name(path)
    text = path.read_text()
    if layer(module) != "colab":
        assert "google.colab" not in text.replace("``google.colab``", ""), module
        assert not any(d.startswith("nbutils.colab") for d in graph()[module]), module


def test_user_imports_and_the_old_names_still_work():
    import warnings

    from nbutils import colab, evaluate, generate, tokenize, train  # noqa: F401 - the line users copy

    assert callable(tokenize.run) and callable(train.run) and callable(generate.run) and callable(evaluate.run)
    assert callable(colab.connect) and callable(train.estimate.show) and callable(generate.form.form)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from nbutils import presets  # moved to nbutils.train.presets: one release of grace
    assert presets.__name__ == "nbutils.train.presets"
    assert any("nbutils.train.presets" in str(w.message) for w in caught)


def test_the_module_map_in_the_readme_lists_every_module_and_no_other():
    """The README's module map (``#### `train/` ...`` then ``| `trainer.py` | ...``, in its Development
    section) names every module of the package; a module added, moved or deleted without its line fails."""
    import re

    listed, section = set(), ""
    readme = (PACKAGE.parent / "README.md").read_text()
    for line in readme[readme.index("### Module map"):].splitlines():
        heading = re.match(r"#### `(\w+)/`", line)
        if heading:
            section = heading.group(1) + "/"
        elif line.startswith("#### "):
            section = ""
        row = re.match(r"\| `([\w/]+\.py)` \|", line)
        if row:
            name = row.group(1)
            listed.add(name.removeprefix("nbutils/") if name.startswith("nbutils/") else section + name)
    present = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py") or p.parent == PACKAGE and p.name == "__init__.py"}
    assert sorted(present - listed) == [], "modules missing from the README's module map"
    assert sorted(listed - present) == [], "the README's module map lists modules that do not exist"
