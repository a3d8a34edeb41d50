"""Notebook hygiene: what every committed notebook must look like (no kernel needed).

Stripped outputs, Colab GPU + private_outputs metadata, a badge that opens the notebook itself
from the one repository slug, numbered ``#@title`` steps, short code cells that call nbutils, a
``parameters`` cell, the shared Connect cell, the run-order guard in every later cell, and install
lines that all use ``colab.install_url()``. The README carries one badge per notebook.
"""

from __future__ import annotations

import ast
import re

import nbformat
import pytest

from nbutils import colab
from nbutils.colab.notebooks import NOTEBOOK_DIR, NOTEBOOKS

MAX_CODE_LINES = 15  # per cell but the parameters (form fields), not counting #@title and comment lines
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
# Cells call nbutils; these few standard modules are what the install / guard lines need.
ALLOWED_IMPORTS = {"importlib.util", "subprocess", "sys"}  # the install lines; everything else goes through nbutils
# Every notebook gets the suite the same way (nbutils.install): 00_setup's install cell and the Connect
# cell of 01-04 are these lines, then their own. A fresh runtime installs the suite's code with --no-deps
# (nothing else can change); install.dependencies() adds what is missing with torch/numpy pinned.
INSTALL_LINES = f'''import importlib.util, subprocess, sys
if importlib.util.find_spec("nbutils") is None:  # a fresh runtime: the suite's own code only (--no-deps: torch/numpy stay)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "{colab.install_url()}"], check=True)
    importlib.invalidate_caches()
from nbutils import colab
colab.install.dependencies()  # what the suite needs and this runtime lacks, with its torch/numpy pinned
'''  # noqa: E501 - the notebooks' own lines
INSTALL_TEMPLATE = "#@title 2. Install the suite (quick when it is already installed)\n" + INSTALL_LINES
CONNECT_TEMPLATE = ("#@title 2. Connect (re-run this after a restart or disconnect)\n" + INSTALL_LINES
                    + 'project = colab.connect(PROJECT_ROOT, notebook="{name}"')
SETUP_GUARD = 'if not importlib.util.find_spec("nbutils"): raise ModuleNotFoundError('


def _load(name: str):
    return nbformat.read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)


def _code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


@pytest.fixture(params=NOTEBOOKS)
def notebook(request):
    return request.param, _load(request.param)


def test_no_outputs_execution_counts_or_widget_state(notebook):
    name, nb = notebook
    for cell in _code(nb):
        title = cell.source.splitlines()[0]
        assert cell.outputs == [], f"{name}: committed outputs in '{title}' (strip them)"
        assert cell.execution_count is None, f"{name}: execution count in '{title}'"
        assert "execution" not in cell.metadata
    assert "widgets" not in nb.metadata


def test_colab_metadata_asks_for_a_gpu_and_private_outputs(notebook):
    name, nb = notebook
    assert nb.metadata.get("accelerator") == "GPU", name
    assert nb.metadata["colab"].get("private_outputs") is True, name
    assert nb.metadata["colab"].get("gpuType"), name
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_the_badge_opens_this_notebook_from_the_one_repository(notebook):
    name, nb = notebook
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("[![Open In Colab]")
    badges = re.findall(r"\[!\[Open In Colab\]\(([^)]*)\)\]\(([^)]*)\)", first.source)
    assert badges == [(BADGE_IMAGE, colab.colab_url(f"notebooks/{name}.ipynb"))]
    text = "\n".join(c.source for c in nb.cells)
    for slug in re.findall(r"colab\.research\.google\.com/github/([^/\s]+/[^/\s]+)/", text):
        assert slug == colab.REPO_SLUG, f"{name} links to another repository: {slug}"
    for slug in re.findall(r"github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?[@/\"]", text):
        assert slug == colab.REPO_SLUG, f"{name} links to another repository: {slug}"


def test_code_cells_are_numbered_titled_short_steps_that_call_nbutils(notebook):
    name, nb = notebook
    for number, cell in enumerate(_code(nb), start=1):
        lines = cell.source.splitlines()
        assert re.fullmatch(rf"#@title {number}\. \S.*", lines[0]), f"{name}: cell {number} starts {lines[0]!r}"
        code = [line for line in lines[1:] if line.strip() and not line.lstrip().startswith("#")]
        assert len(code) <= MAX_CODE_LINES or "parameters" in _tags(cell), \
            f"{name}: '{lines[0]}' has {len(code)} lines; move logic to nbutils"
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
                f"{name}: '{lines[0]}' defines code; it belongs in nbutils (tested)"
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module]
            else:
                continue
            for module in modules:
                assert module == "nbutils" or module.startswith("nbutils.") or module in ALLOWED_IMPORTS, \
                    f"{name}: '{lines[0]}' imports {module}; call nbutils instead"


def test_parameters_cell_holds_plain_form_fields(notebook):
    name, nb = notebook
    cell = _code(nb)[0]
    assert _tags(cell) == ["parameters"], f"{name}: the first code cell must be tagged 'parameters'"
    assert sum("parameters" in _tags(c) for c in nb.cells) == 1
    values = {}
    lines = cell.source.splitlines()
    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, \
            f"{name}: parameters must be plain assignments (papermill-style injection)"
        target = node.targets[0].id
        values[target] = ast.literal_eval(node.value)  # a literal, so injected values can replace it
        if isinstance(values[target], (str, int, float, bool)):  # what a Colab form field can hold
            assert "#@param" in lines[node.lineno - 1], f"{name}: {target} is not a form field (#@param)"
    assert values["PROJECT_ROOT"] == colab.DEFAULT_PROJECT_ROOT
    assert "MODEL" in values
    if name == "00_setup":
        assert values["MODEL"] == "facebook/musicgen-small"
    else:
        assert values["MODEL"] == "", f"{name}: MODEL defaults to '' (the model chosen in 00_setup)"
    if name == "01_tokenize":
        assert "ZIP_DIR" in values


def test_every_install_line_uses_the_pinned_install_url(notebook):
    name, nb = notebook
    # badge and install name the same ref: an opened notebook gets the package it was written for
    assert colab.install_url().endswith(f"@{colab.REPO_REF}") and f"/blob/{colab.REPO_REF}/" in nb.cells[0].source
    for cell in _code(nb):
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("git+"):
                assert node.value == colab.install_url(), f"{name}: installs {node.value}"
        if re.search(r"\bpip\b.*\binstall\b|\"install\"", cell.source):
            assert colab.install_url() in cell.source, f"{name}: an install that is not install_url()"


def test_cells_after_setup_guard_the_run_order(notebook):
    """After a restart (or a new runtime), every later cell says which cell to run first."""
    name, nb = notebook
    cells = _code(nb)
    if name == "00_setup":
        assert cells[1].source == INSTALL_TEMPLATE.strip(), \
            f"{name}: the install cell differs from the shared install lines:\n{cells[1].source}"
        assert colab.INSTALL_CELL in cells[1].source.splitlines()[0]
        assert cells[2].source.startswith(f"#@title {colab.PROJECT_CELL}")
        for cell in cells[2:]:
            assert SETUP_GUARD in cell.source and f"'{colab.INSTALL_CELL}'" in cell.source, cell.source
            if "project" in cell.source and "create_project" not in cell.source:
                assert "colab.current(cell=colab.PROJECT_CELL)" in cell.source, cell.source
        return
    connect = cells[1].source
    expected = CONNECT_TEMPLATE.format(name=name)
    assert connect.startswith(expected), f"{name}: the Connect cell differs from the shared one:\n{connect}"
    assert connect.count("\n") == expected.count("\n"), f"{name}: Connect has extra lines"
    for cell in cells[2:]:
        assert "colab.current()" in cell.source, f"{name}: '{cell.source.splitlines()[0]}' lacks colab.current()"


def _parameter_names(nb) -> set[str]:
    return {node.targets[0].id for node in ast.parse(_code(nb)[0].source).body}


def _calls(cell) -> set[str]:
    return {node.func.attr for node in ast.walk(ast.parse(cell.source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}


def test_cells_read_the_parameters_as_they_are_when_run(notebook):
    """Change a parameter, re-run one cell: that cell must use the new value. Settings saved by an
    earlier cell would silently be the old ones."""
    name, nb = notebook
    if name != "03_generate":
        return
    wanted = _parameter_names(nb) - {"PROJECT_ROOT", "MODEL"}  # those two are read by Connect
    generating = [c for c in _code(nb)[2:] if _calls(c) & {"run", "form"}]
    assert len(generating) == 2, "cell 4 (plain) and cell 5 (form) generate"
    for cell in generating:
        used = {n.id for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Name)}
        assert "config_for" in _calls(cell) and wanted <= used, \
            f"{name}: '{cell.source.splitlines()[0]}' does not build its settings from {sorted(wanted - used)}"


def test_all_notebooks_are_there():
    missing = [n for n in NOTEBOOKS if not (NOTEBOOK_DIR / f"{n}.ipynb").exists()]
    assert missing == []
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS), "a notebook NOTEBOOKS lacks"
