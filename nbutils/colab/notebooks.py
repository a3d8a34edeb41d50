"""Build, check and execute the suite's notebooks headlessly.

``execute`` runs a notebook with nbclient the way papermill does: the values you pass are
injected as a new cell (tagged ``injected-parameters``) right after the cell tagged
``parameters``, so the notebook's own defaults stay readable and any of them can be overridden.
A parameters cell ends by deriving its stage settings from its fields (``SETTINGS = dict(...)``):
the injected cell derives them again from the injected values (papermill itself does not, so
with papermill pass the fields you change and ``SETTINGS`` too, or use ``execute``).
``new_notebook`` writes a notebook with the suite's conventions (Colab badge, the runtime it asks
for, ``private_outputs``, ``#@title`` steps, no outputs), so every notebook starts out clean.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

from nbutils.core.errors import UserError

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = ("00_setup", "01_tokenize", "02_train", "03_generate", "04_evaluate")
# The runtime each notebook asks Colab for: setup needs no GPU, EnCodec and generation run well on a
# T4 (the free tier's GPU), training is where an A100 pays off (the presets fit every GPU).
GPU_TYPES: dict[str, str | None] = {"00_setup": None, "01_tokenize": "T4", "02_train": "A100",
                                    "03_generate": "T4", "04_evaluate": "T4"}


def colab_metadata(gpu: str | None) -> dict[str, Any]:
    """Notebook metadata for Colab: private outputs, and the GPU type to ask for (None: no GPU)."""
    colab: dict[str, Any] = {"provenance": [], "private_outputs": True, "toc_visible": True}
    metadata: dict[str, Any] = {"colab": colab}
    if gpu:
        colab["gpuType"] = gpu
        metadata["accelerator"] = "GPU"
    return {**metadata, "kernelspec": {"name": "python3", "display_name": "Python 3"},
            "language_info": {"name": "python"}}


# Only the headless runner (the demo, the tests) needs these; Colab has its own. pyproject's "demo" extra.
RUNNER_PACKAGES = ("nbformat", "nbclient", "ipykernel")
DEMO_EXTRA = "musicgen-lora-colab[demo]"


def require_runner() -> None:
    """Raise a ``UserError`` saying what to install if the headless notebook runner is missing."""
    import importlib.util
    import sys

    def present(name: str) -> bool:  # without importing it (ipykernel is slow to import)
        if name in sys.modules:
            return sys.modules[name] is not None  # None: import blocked
        return importlib.util.find_spec(name) is not None

    absent = [name for name in RUNNER_PACKAGES if not present(name)]
    if absent:
        raise UserError(
            f"Running the notebooks headlessly needs {', '.join(absent)}, which the suite installs only on "
            f"request. Install them with: pip install \"{DEMO_EXTRA}\" (from a clone: pip install -r "
            "requirements.txt, or pip install -e \".[demo]\"), then run this again."
        )


def notebook_path(name: str) -> Path:
    """Path of a suite notebook by short name (``01_tokenize``) or file name."""
    stem = Path(name).stem
    path = NOTEBOOK_DIR / f"{stem}.ipynb"
    if not path.exists():
        raise UserError(f"No notebook {stem}.ipynb in {NOTEBOOK_DIR}. Known: {', '.join(NOTEBOOKS)}.")
    return path


def badge_markdown(relative_path: str) -> str:
    """The "Open in Colab" badge for a file of this repository (slug from ``nbutils.colab``)."""
    from nbutils.colab.release import colab_url

    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(relative_path)})"


def new_notebook(path: str | os.PathLike, title: str, intro: str, cells: Iterable[tuple],
                 gpu: str | None = None) -> Path:
    """Write a clean notebook following the suite's conventions.

    Args:
        path: Where to write, e.g. ``notebooks/01_tokenize.ipynb``.
        title: The H1 heading.
        intro: Markdown under the heading (what the notebook does, what re-running means).
        cells: ``("md", text)`` or ``("code", source)`` or ``("code", source, ["parameters"])``
            (tags). Code sources should start with ``#@title N. ...``.
        gpu: The Colab GPU type it asks for (``"T4"``), None for none (``GPU_TYPES``).
    """
    import nbformat

    path = Path(path)
    relative = f"notebooks/{path.name}"
    nb = nbformat.v4.new_notebook(metadata=colab_metadata(gpu))
    nb.cells.append(nbformat.v4.new_markdown_cell(f"{badge_markdown(relative)}\n\n# {title}\n\n{intro.strip()}"))
    for cell in cells:
        kind, source, *rest = cell
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(source.strip()))
        else:
            new = nbformat.v4.new_code_cell(source.strip())
            if rest:
                new.metadata["tags"] = list(rest[0])
            nb.cells.append(new)
    strip(nb)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def strip(nb) -> Any:
    """Remove outputs, execution counts and widget state (what the repository must not hold)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("collapsed", None)
    nb.metadata.pop("widgets", None)
    return nb


def derived_assignments(source: str) -> list[str]:
    """The statements of a parameters cell whose value is not a literal (``SETTINGS = dict(...)``):
    they derive settings from the fields above them."""
    import ast

    derived = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign):
            continue
        try:
            ast.literal_eval(node.value)
        except ValueError:  # not a literal: it reads the fields above
            derived.append(ast.get_source_segment(source, node))
    return derived


def _parameters_cell(parameters: dict[str, Any], derived: list[str]):
    import nbformat

    lines = ["# Parameters injected by nbutils.notebooks.execute"]
    lines += [f"{name} = {value!r}" for name, value in parameters.items()]
    if derived:
        lines += ["# derived again from the injected values, as the parameters cell derives them", *derived]
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["injected-parameters"]
    return cell


def inject_parameters(nb, parameters: dict[str, Any]):
    """Insert the parameters after the cell tagged ``parameters`` (papermill's convention), followed
    by that cell's derived assignments (``SETTINGS = dict(...)``), so they see the injected values."""
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for i, cell in enumerate(nb.cells):
        if "parameters" in cell.metadata.get("tags", []):
            nb.cells.insert(i + 1, _parameters_cell(parameters, derived_assignments(cell.source)))
            return nb
    raise UserError("The notebook has no cell tagged 'parameters'; cannot inject values.")


def _failure_message(nb, err: Exception) -> str:
    for cell in nb.cells:
        title = cell.source.splitlines()[0] if cell.source else "a cell"
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"cell '{title}' raised {output.get('ename')}: {output.get('evalue')}"
            if output.get("output_type") == "stream" and "\u274c" in output.get("text", ""):
                return f"cell '{title}': {output['text'].strip()}"  # a UserError, shown briefly
    return f"{type(err).__name__}: {err}"


SHELL_POLL_SECONDS = 0.5


def _poll_shell_in_slices(client) -> None:
    """Make the kernel client notice each cell's reply within half a second.

    jupyter_client's async ``get_msg(timeout)`` can miss the wake-up for a reply that arrives
    during heavy iopub traffic (widget comms, audio players) and then return only when the
    whole timeout has passed (jupyter/nbclient#312): a cell that ran in one second appeared
    to take the full per-cell timeout. Polling in short slices re-checks the socket instead.
    """
    from queue import Empty

    channel = client.kc.shell_channel
    original = channel.get_msg

    async def get_msg(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SHELL_POLL_SECONDS if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await original(timeout=min(SHELL_POLL_SECONDS, left))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    channel.get_msg = get_msg


def execute(
    path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    parameters: dict[str, Any] | None = None,
    *,
    cwd: str | os.PathLike | None = None,
    timeout: int = 1800,
    hooks: dict[str, Any] | None = None,
) -> Path:
    """Execute a notebook headlessly and save the executed copy (also when a cell fails).

    Args:
        path: The notebook to run.
        output: Where to save the executed notebook (default: next to ``path`` with ``.executed``).
        parameters: Values to inject after the ``parameters`` cell (``{"MODEL": "tiny"}``).
        cwd: Working directory of the kernel.
        timeout: Per-cell timeout in seconds.
        hooks: nbclient cell hooks for live progress, e.g. ``{"on_cell_start": f,
            "on_cell_executed": g}`` (called with ``cell=`` and ``cell_index=``).

    Raises:
        UserError: naming the cell that failed and the executed notebook to open, or saying
            what to install when nbclient is missing.
    """
    require_runner()
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path)
    output = Path(output) if output else path.with_suffix(".executed.ipynb")
    nb = nbformat.read(str(path), as_version=4)
    if parameters:
        inject_parameters(nb, parameters)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(cwd or path.parent)}},
        # the local kernel's "unencrypted TCP" warning would otherwise open every notebook's output
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    client.on_notebook_start = lambda **_: _poll_shell_in_slices(client)
    started = time.monotonic()
    for name, hook in (hooks or {}).items():  # nbclient traits such as on_cell_start
        setattr(client, name, hook)
    try:
        client.execute()
    except CellExecutionError as err:
        output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(output))
        raise UserError(f"{path.name}: {_failure_message(nb, err).rstrip('.')}. Executed notebook: {output}") from err
    finally:
        nb.metadata.setdefault("nbutils", {})["seconds"] = round(time.monotonic() - started, 1)
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(output))
    return output


def outputs_text(nb) -> str:
    """All stream and text outputs of an executed notebook, joined (for tests and checks)."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output.get("text", ""))
            elif "data" in output and "text/plain" in output["data"]:
                parts.append(output["data"]["text/plain"])
    return "".join(parts)

