"""The project: its folders and ``project.json`` settings, and the cells that set them up.

Notebook 00_setup creates the project (``create_project``); notebooks 01-04 start with
``project = colab.connect(PROJECT_ROOT, ...)`` and later cells call ``colab.current()``, which
tells the user which cell to re-run when the runtime was restarted in between.

Every Colab notebook runs in its own runtime, so ``connect`` repeats what each runtime needs:
it mounts Drive and loads the secrets into that runtime's environment.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from nbutils.colab import drive
from nbutils.colab.drive import CONNECT_CELL
from nbutils.colab.release import colab_url
from nbutils.colab.secrets import use_secrets
from nbutils.core import atomic
from nbutils.core.errors import UserError
from nbutils.core.paths import DEFAULT_RUN, PROJECT_FILE, Paths

INSTALL_CELL = "2. Install the suite"  # in 00_setup
PROJECT_CELL = "3. Mount Drive and create the project"  # in 00_setup

_CURRENT: "Project | None" = None


@dataclasses.dataclass
class Project:
    """What every notebook needs: the folders and the settings chosen in 00_setup."""

    paths: Paths
    settings: dict[str, Any]

    @property
    def model(self) -> str:
        return self.settings["model"]

    @property
    def run_name(self) -> str:
        return self.settings.get("run_name") or DEFAULT_RUN

    @property
    def run_dir(self) -> Path:
        """The training run folder (``runs/<run_name>``) that notebooks 02-04 share."""
        return self.paths.run(self.run_name)

    def __repr__(self) -> str:
        return f"Project(root={self.paths.root}, model={self.model})"


def create_project(project_root: str | os.PathLike, *, change_model: bool = False, **settings: Any) -> Project:
    """Create the folder layout and write ``project.json`` (00_setup); mount Drive if needed.

    Existing settings are kept unless given again (empty values mean "keep"), so re-running
    setup never loses choices made earlier. The model is the exception: tokens and runs belong to
    the model they were made with, so an existing project keeps its saved model unless
    ``change_model`` says so (a note explains). The project becomes ``current()``.

    Args:
        project_root: ``PROJECT_ROOT`` (on Drive in Colab, any local folder elsewhere).
        change_model: Replace an existing project's saved model with ``settings["model"]``.
        **settings: ``model``, ``zip_dir`` (empty = ``PROJECT_ROOT/zips``), ``run_name`` (the
            training run folder under ``runs/``, default ``lora``); other keys are stored as given.
    """
    global _CURRENT
    show_errors_briefly()
    drive.offer_flush_after_long_cells()
    if not drive.mount_drive(project_root) and drive.in_colab():
        print(f"Warning: PROJECT_ROOT {project_root} is on this runtime's own disk, which is deleted with the "
              f"runtime. To keep your work, use a folder under {drive.DRIVE_MOUNT / 'MyDrive'} "
              f"(e.g. {drive.DEFAULT_PROJECT_ROOT}).")
    paths = Paths.at(project_root)
    current = atomic.read_json(paths.project_file) if paths.project_file.exists() else {}
    given = {k: v for k, v in settings.items() if v not in (None, "")}
    if not change_model and current.get("model") and given.get("model", current["model"]) != current["model"]:
        print(_kept_model_note(current["model"], given.pop("model")))
    current.update(given)
    current.setdefault("model", "facebook/musicgen-small")
    current.setdefault("run_name", DEFAULT_RUN)
    paths = Paths.at(project_root, current.get("zip_dir") or None)
    paths.ensure()
    current["zip_dir"] = str(paths.zips)
    atomic.write_json(paths.project_file, current)
    _CURRENT = Project(paths=paths, settings=current)
    return _CURRENT


def record_settings(project_root: str | os.PathLike, **values: Any) -> Path:
    """Add ``values`` to the project's ``project.json`` (atomically), keeping every other setting.

    Used for what a later notebook learns about the project (the doctor's tokenization precision).
    A missing ``project.json`` is created with these values alone; ``current()`` sees them at once.

    Returns:
        The path of ``project.json``.

    Raises:
        OSError: the project folder cannot be written.
    """
    paths = Paths.at(project_root)
    settings = atomic.read_json(paths.project_file) if paths.project_file.exists() else {}
    settings.update(values)
    atomic.write_json(paths.project_file, settings)
    if _CURRENT is not None and _CURRENT.paths.root == paths.root:
        _CURRENT.settings.update(values)
    return paths.project_file


def _kept_model_note(saved: str, asked: str) -> str:
    return (f"Note: this project was set up for {saved} (in project.json), so MODEL = {asked} was not applied: "
            f"its tokens and training runs belong to {saved}. To start with {asked}, use a new PROJECT_ROOT; to "
            f"switch this project on purpose, set CHANGE_MODEL = True and run this cell again (then tokenize "
            f"again: 01 refuses tokens made with another model).")


def describe_project(project: Project) -> str:
    """The project's folders and what goes where, for the setup notebook and the README."""
    p = project.paths
    where = "Google Drive" if drive.on_drive(p.root) else "a local folder"
    rows = [
        (p.project_file, "settings that notebooks 01-04 read (model, ZIP folder, run name)"),
        (p.zips, "your ZIP batches (archive_batch_0001.zip, ...) and an optional metadata.jsonl"),
        (p.tokens, "01_tokenize: one token shard per ZIP (shards/), ledger.jsonl"),
        (project.run_dir, "02_train: latest.pt, checkpoints/step-XXXXXX/, adapters/{best,final}/, samples/"),
        (p.generated, "03_generate: WAV files with a JSON sidecar each"),
        (p.eval, "04_evaluate: tables (CSV, JSON) and plots (PNG)"),
    ]
    width = max(len(str(path)) for path, _ in rows)
    lines = [f"Project on {where}: {p.root} (model: {project.model})"]
    lines += [f"  {str(path):<{width}}  {what}" for path, what in rows]
    lines.append(f"  scratch (local disk, never Drive): {p.scratch}")
    return "\n".join(lines)


def next_steps() -> str:
    """Where to go after setup: the Colab links of notebooks 01-04, in order."""
    from nbutils.colab.notebooks import NOTEBOOKS

    lines = ["Next, open each notebook, set the same PROJECT_ROOT and run its cells top to bottom:"]
    lines += [f"  {name}: {colab_url(f'notebooks/{name}.ipynb')}" for name in NOTEBOOKS[1:]]
    return "\n".join(lines)


def connect(project_root: str | os.PathLike, *, notebook: str = "", **overrides: Any) -> Project:
    """First cell of notebooks 01-04: mount Drive, read the project, load secrets, show errors briefly.

    Args:
        project_root: ``PROJECT_ROOT`` from the notebook's parameters cell.
        notebook: The calling notebook's name, for messages.
        **overrides: Notebook parameters (``model``, ``zip_dir``...); empty values mean "use
            what 00_setup saved". They apply to this runtime only; project.json is unchanged.
    """
    global _CURRENT
    show_errors_briefly()
    drive.offer_flush_after_long_cells()
    drive.mount_drive(project_root)
    paths = Paths.at(project_root)
    if not paths.project_file.exists():
        raise UserError(
            f"No project at {paths.root} (no {PROJECT_FILE}). Run notebook 00_setup first "
            f"(its cell '{PROJECT_CELL}'), or fix PROJECT_ROOT in the parameters cell."
        )
    settings = atomic.read_json(paths.project_file)
    settings.update({k: v for k, v in overrides.items() if v not in (None, "")})
    paths = Paths.at(project_root, settings.get("zip_dir") or None)
    _CURRENT = Project(paths=paths, settings=settings)
    where = "Google Drive" if drive.on_drive(paths.root) else "local folder"
    print(f"{notebook or 'Notebook'} connected to {paths.root} ({where}); model: {settings['model']}")
    found = use_secrets(report=False)  # each Colab notebook runs in its own runtime
    print("Secrets: " + ", ".join(f"{n} {'set' if s else 'not set'}" for n, s in found.items()))
    return _CURRENT


def current(cell: str = CONNECT_CELL) -> Project:
    """The project of the last ``connect`` / ``create_project``; a clear message if the runtime lost it.

    Args:
        cell: The cell that sets the project up in the calling notebook (the Connect cell in
            01-04, ``PROJECT_CELL`` in 00_setup), named in the message.
    """
    show_errors_briefly()
    if _CURRENT is None:
        raise UserError(
            f"This runtime has no project yet (it was restarted or cells ran out of order). "
            f"Run the parameters cell and cell '{cell}' at the top of this notebook, then this cell again."
        )
    if drive.on_drive(_CURRENT.paths.root) and not drive.drive_mounted():
        raise UserError(
            f"Google Drive is not mounted any more (flushed, or the connection dropped), so {_CURRENT.paths.root} "
            f"is out of reach. Run cell '{cell}' again to remount it, then this cell."
        )
    return _CURRENT


def show_errors_briefly() -> None:
    """In IPython, show a ``UserError`` as one readable message instead of a library traceback."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or getattr(shell, "_nbutils_errors", False):
        return

    def handler(shell, etype, value, tb, tb_offset=None):
        sys.stderr.write(f"\u274c {value}\n")
        return None


    shell.set_custom_exc((UserError,), handler)
    shell._nbutils_errors = True
