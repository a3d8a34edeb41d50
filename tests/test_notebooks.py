"""Notebook hygiene: what every committed notebook must look like (no kernel needed).

Stripped outputs, the Colab runtime each notebook asks for + private_outputs, a badge that opens the
notebook itself from the one repository slug, numbered ``#@title`` steps, short code cells that call
nbutils, a ``parameters`` cell of form fields that ends by collecting the stage's settings once
(``SETTINGS = dict(...)``, passed on as ``**SETTINGS``), the shared Connect cell, the run-order
guard line in every later cell, a flush cell where long jobs write, and install lines that all use
``colab.install_url()``. The README carries one badge per notebook.
"""

from __future__ import annotations

import ast
import json
import re

import nbformat
import pytest

from nbutils import colab
from nbutils.colab.notebooks import GPU_TYPES, NOTEBOOK_DIR, NOTEBOOKS
from nbutils.core import config

MAX_CODE_LINES = 12  # per cell but the parameters (form fields), not counting #@title and comment lines
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
# Cells call nbutils; these few standard modules are what the install / guard lines need.
ALLOWED_IMPORTS = {"importlib.util", "subprocess", "sys"}  # the install lines; everything else goes through nbutils
# Every notebook gets the suite the same way (nbutils.install): its Connect cell starts with these lines.
# A fresh runtime installs the suite's code with --no-deps (nothing else can change), pip quiet unless it
# fails; install.dependencies() adds what is missing with torch/numpy pinned.
INSTALL_LINES = f'''import importlib.util, subprocess, sys
if importlib.util.find_spec("nbutils") is None:  # a fresh runtime: the suite's own code only (--no-deps: torch/numpy stay)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "{colab.install_url()}"], capture_output=True, text=True)
    if pip.returncode: raise RuntimeError(f"Installing the suite failed (pip exit code {{pip.returncode}}): check the runtime's internet connection, then run this cell again. pip said:\\n{{pip.stdout}}{{pip.stderr}}")
    importlib.invalidate_caches()
from nbutils import colab
colab.install.dependencies()  # what the suite needs and this runtime lacks, with its torch/numpy pinned
'''  # noqa: E501 - the notebooks' own lines
CONNECT_TITLES = {"00_setup": "#@title 2. Connect: install the suite, mount Drive, create the project"}
CONNECT_TITLE = "#@title 2. Connect (re-run this after a restart or disconnect)"
CONNECT_CALLS = {
    "00_setup": "project = colab.create_project(PROJECT_ROOT, model=MODEL, zip_dir=ZIP_DIR, "
                "change_model=CHANGE_MODEL)\nprint(colab.describe_project(project))",
    "01_tokenize": 'project = colab.connect(PROJECT_ROOT, notebook="01_tokenize", model=MODEL, zip_dir=ZIP_DIR)',
    "02_train": 'project = colab.connect(PROJECT_ROOT, notebook="02_train", model=MODEL, run_name=RUN_NAME)',
    "03_generate": 'project = colab.connect(PROJECT_ROOT, notebook="03_generate", model=MODEL)',
    "04_evaluate": 'project = colab.connect(PROJECT_ROOT, notebook="04_evaluate", model=MODEL)',
}
# After a disconnect the runtime is new and has no nbutils: the first line of every later cell says
# which cells to run (the same line everywhere; tests/test_colab.py runs it).
GUARD = ('import importlib.util; assert importlib.util.find_spec("nbutils"), "A new runtime (after a disconnect): '
         "run the parameters cell and cell '2. Connect' first, then this cell.\"")
# The stage each notebook's SETTINGS configure, and the parameters the Connect cell reads instead.
STAGES = {"01_tokenize": ("tokenize", "TokenizeConfig"), "02_train": ("train", "TrainConfig"),
          "03_generate": ("generate", "GenerateConfig"), "04_evaluate": ("evaluate", "EvalConfig")}
CONNECT_PARAMETERS = {"PROJECT_ROOT", "MODEL", "ZIP_DIR", "RUN_NAME", "CHANGE_MODEL"}


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
    raw = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text(encoding="utf-8"))
    ids = [c.get("id") for c in raw["cells"]]
    assert all(ids) and len(set(ids)) == len(ids), f"{name}: every cell needs its own id (nbformat 4.5)"


def test_colab_metadata_asks_for_the_runtime_the_notebook_needs(notebook):
    """Setup needs no GPU, tokenizing and generating a T4, training an A100: not an A100 everywhere."""
    name, nb = notebook
    assert nb.metadata["colab"].get("private_outputs") is True, name
    assert nb.metadata["kernelspec"]["name"] == "python3"
    gpu = GPU_TYPES[name]
    assert nb.metadata["colab"].get("gpuType") == gpu, name
    assert nb.metadata.get("accelerator") == ("GPU" if gpu else None), name
    assert (GPU_TYPES["00_setup"], GPU_TYPES["01_tokenize"]) == (None, "T4")


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


def _stage_config(name: str) -> type:
    import importlib

    package, cls = STAGES[name]
    return getattr(importlib.import_module(f"nbutils.{package}"), cls)


def _settings(nb) -> tuple[dict[str, str], list[str]]:
    """The parameters cell's ``SETTINGS = dict(...)``: ``({setting: parameter}, [parameters spread with **])``."""
    node = ast.parse(_code(nb)[0].source).body[-1]
    assert isinstance(node, ast.Assign) and node.targets[0].id == "SETTINGS", "the last line is SETTINGS = dict(...)"
    call = node.value
    assert isinstance(call, ast.Call) and call.func.id == "dict" and not call.args, "SETTINGS = dict(name=FIELD, ...)"
    named = {kw.arg: kw.value.id for kw in call.keywords if kw.arg is not None}
    spread = [kw.value.id for kw in call.keywords if kw.arg is None]
    return named, spread


def test_parameters_cell_holds_plain_form_fields(notebook):
    name, nb = notebook
    cell = _code(nb)[0]
    assert _tags(cell) == ["parameters"], f"{name}: the first code cell must be tagged 'parameters'"
    assert sum("parameters" in _tags(c) for c in nb.cells) == 1
    values = {}
    lines = cell.source.splitlines()
    body = ast.parse(cell.source).body
    fields = body[:-1] if name in STAGES else body  # 01-04 end with SETTINGS = dict(...)
    for node in fields:
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


def test_settings_are_collected_once_and_passed_on(notebook):
    """The parameters cell builds the stage's settings once; later cells pass ``**SETTINGS`` and never
    repeat a field that SETTINGS holds. Every setting name is one the stage knows."""
    name, nb = notebook
    if name not in STAGES:
        assert "SETTINGS" not in _code(nb)[0].source  # setup hands its few fields to the Connect cell
        return
    named, spread = _settings(nb)
    fields = _parameter_names(nb)
    assert set(named.values()) | set(spread) <= fields, f"{name}: SETTINGS reads a name that is not a field"
    assert set(named) <= set(config.setting_names(_stage_config(name))), \
        f"{name}: SETTINGS names {sorted(set(named) - set(config.setting_names(_stage_config(name))))}"
    collected = set(named.values()) | set(spread)
    used = set()
    for cell in _code(nb)[1:]:
        names = {n.id for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Name)}
        assert not names & collected, f"{name}: '{cell.source.splitlines()[0]}' repeats {sorted(names & collected)}"
        used |= names
        for call in ast.walk(ast.parse(cell.source)):
            if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "config_for":
                spreads = [kw.value.id for kw in call.keywords if kw.arg is None]
                assert spreads == ["SETTINGS"], f"{name}: config_for without **SETTINGS"
    assert "SETTINGS" in used, f"{name}: no cell uses SETTINGS"
    assert fields - collected - CONNECT_PARAMETERS <= used, \
        f"{name}: fields neither in SETTINGS nor used: {sorted(fields - collected - CONNECT_PARAMETERS - used)}"


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


def test_every_notebook_connects_and_later_cells_guard_the_run_order(notebook):
    """Cell 2 installs the suite (if needed) and connects, in every notebook the same way; every later
    cell begins with the one guard line, so after a disconnect it says which cells to run."""
    name, nb = notebook
    cells = _code(nb)
    connect = cells[1].source
    expected = "\n".join([CONNECT_TITLES.get(name, CONNECT_TITLE), INSTALL_LINES.strip(), CONNECT_CALLS[name]])
    assert connect == expected, f"{name}: the Connect cell differs from the shared one:\n{connect}"
    assert connect.splitlines()[0].startswith(f"#@title {colab.CONNECT_CELL}")
    for cell in cells[2:]:
        title, first = cell.source.splitlines()[:2]
        assert first == GUARD, f"{name}: '{title}' does not start with the guard line"
        assert cell.source.count("importlib") == 2, f"{name}: '{title}' has a second guard"
        if "project" in cell.source:
            assert "project = colab.current()" in cell.source, f"{name}: '{title}' lacks colab.current()"


def test_notebooks_that_write_long_jobs_end_with_their_flush_cell(notebook):
    """The ten-minute reminder names this cell (colab.drive.FLUSH_CELLS): it must be there."""
    name, nb = notebook
    cell = colab.drive.FLUSH_CELLS.get(name)
    last = _code(nb)[-1].source
    if cell is None:
        assert "flush_drive" not in last
        return
    assert last.startswith(f"#@title {cell}\n") and last.endswith("colab.flush_drive()"), last
    assert {"01_tokenize", "02_train"} <= set(colab.drive.FLUSH_CELLS)


def _parameter_names(nb) -> set[str]:
    return {node.targets[0].id for node in ast.parse(_code(nb)[0].source).body}


def test_all_notebooks_are_there():
    missing = [n for n in NOTEBOOKS if not (NOTEBOOK_DIR / f"{n}.ipynb").exists()]
    assert missing == []
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS), "a notebook NOTEBOOKS lacks"
