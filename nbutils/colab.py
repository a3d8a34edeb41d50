"""The Colab layer: Drive, secrets, GPU, the project settings, and friendly errors.

This is the only module that knows about ``/content/drive``. Outside Colab everything falls
back to local equivalents: "Drive" is the local folder ``PROJECT_ROOT`` and secrets come from
environment variables. Notebook 00_setup creates the project (``create_project``); notebooks
01-04 start with ``project = colab.connect(PROJECT_ROOT, ...)`` and later cells call
``colab.current()``, which tells the user which cell to re-run when the runtime was restarted
in between.

Every Colab notebook runs in its own runtime, so ``connect`` repeats what each runtime needs:
it mounts Drive and loads the secrets into that runtime's environment.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from nbutils import atomic, devices
from nbutils.errors import UserError
from nbutils.paths import DEFAULT_RUN, PROJECT_FILE, Paths

# The repository every badge and install line points at: change it here, and the notebook test
# (tests/test_notebooks.py) will tell you which notebook cells still point elsewhere.
REPO_SLUG = "musicgen-lora/musicgen-lora-colab"
# One pinned release for the badges and for the install line: a badge opens the notebooks of this
# tag, and they install the package of the same tag, so they always match (main may move on).
# To release: set the next tag here, commit, tag that commit with it, push the tag.
REPO_REF = "v0.1.0"
INSTALL_REF = REPO_REF
# Where Colab mounts Drive. NBUTILS_DRIVE_MOUNT exists only so tests with a fake google.colab
# can mount into a temporary folder; on Colab it is never set.
DRIVE_MOUNT = Path(os.environ.get("NBUTILS_DRIVE_MOUNT") or "/content/drive")
DEFAULT_PROJECT_ROOT = "/content/drive/MyDrive/musicgen-lora"
SECRET_NAMES = ("WANDB_API_KEY", "HF_TOKEN")
SECRET_USES = {
    "WANDB_API_KEY": "optional: with it training logs to WandB online, without it offline into the run folder",
    "HF_TOKEN": "optional: needed only to push adapters to the Hub or to download gated models",
}
LONG_CELL_SECONDS = 10 * 60  # a cell that ran this long was a "long job": offer to flush Drive after it
CONNECT_CELL = "2. Connect"  # in notebooks 01-04
INSTALL_CELL = "2. Install the suite"  # in 00_setup
PROJECT_CELL = "3. Mount Drive and create the project"  # in 00_setup

_CURRENT: "Project | None" = None


def install_url() -> str:
    """The pip requirement the notebooks install: this repository at the pinned ``INSTALL_REF``."""
    return f"git+https://github.com/{REPO_SLUG}@{INSTALL_REF}"


def colab_url(relative_path: str) -> str:
    """Colab URL that opens ``relative_path`` of this repository from GitHub."""
    return f"https://colab.research.google.com/github/{REPO_SLUG}/blob/{REPO_REF}/{relative_path}"


def in_colab() -> bool:
    """True inside a Colab runtime (where ``google.colab`` can be imported)."""
    if "google.colab" in sys.modules:
        return True
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Drive
# ---------------------------------------------------------------------------------------------


def on_drive(path: str | os.PathLike) -> bool:
    """True if ``path`` is under the Drive mount point (``/content/drive`` on Colab)."""
    path = Path(path).expanduser().absolute()
    return path == DRIVE_MOUNT or DRIVE_MOUNT in path.parents


def drive_mounted() -> bool:
    """True when Drive is mounted (its ``MyDrive`` folder is visible)."""
    return (DRIVE_MOUNT / "MyDrive").is_dir()


def mount_drive(project_root: str | os.PathLike) -> bool:
    """Mount Google Drive if ``project_root`` lives on it and it is not mounted yet.

    Returns:
        True if the project is on a mounted Drive, False for a local folder.

    Raises:
        UserError: ``project_root`` is on Drive but this is not Colab, or the mount failed.
    """
    root = Path(project_root)
    if not on_drive(root):
        return False
    if not in_colab():
        raise UserError(
            f"PROJECT_ROOT {root} is on Google Drive, but this is not a Colab runtime. "
            "Use a local folder as PROJECT_ROOT outside Colab."
        )
    if not drive_mounted():
        from google.colab import drive

        print(f"Mounting Google Drive at {DRIVE_MOUNT} (allow access in the pop-up)...")
        try:
            drive.mount(str(DRIVE_MOUNT))
        except Exception as err:  # Colab raises MessageError/ValueError when access is declined
            raise UserError(
                f"Mounting Google Drive failed ({type(err).__name__}: {err}). Run this cell again and "
                "allow access to your Drive in the pop-up (same Google account as Colab)."
            ) from err
    if not drive_mounted():
        raise UserError(
            f"Google Drive is not mounted at {DRIVE_MOUNT}. Run this cell again and allow access "
            "to your Drive in the pop-up."
        )
    return True


def _offer_flush_after_long_cells() -> None:
    """In IPython: after a cell that ran ``LONG_CELL_SECONDS`` or more, offer ``flush_drive()``.

    The end of a long tokenize or training job is when users close the tab, and Drive may still
    be writing in the background. Unmounting is not done for them: later cells need the mount.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or getattr(shell, "_nbutils_flush_offer", False):
        return
    started: list[float] = []

    def pre_run_cell(*_: Any) -> None:
        started[:] = [time.monotonic()]

    def post_run_cell(*_: Any) -> None:
        if started and time.monotonic() - started[0] >= LONG_CELL_SECONDS and in_colab() and drive_mounted():
            print(f"That was a long job. Before you close this tab, run colab.flush_drive() (00_setup's last "
                  f"cell shows it) so that Drive finishes writing; then run '{CONNECT_CELL}' to keep working.")

    shell.events.register("pre_run_cell", pre_run_cell)
    shell.events.register("post_run_cell", post_run_cell)
    shell._nbutils_flush_offer = True


def flush_drive() -> bool:
    """Write pending Drive changes through and unmount (call at the end of long jobs).

    Colab writes to Drive in the background; closing the tab right after a long job can lose
    the last files. ``drive.flush_and_unmount()`` waits until everything is on Drive.

    Returns:
        True if Drive was flushed, False when there was nothing to flush (no Drive mounted).
    """
    if not (in_colab() and drive_mounted()):
        print("No Google Drive mounted in this runtime: nothing to flush (local files are already on disk).")
        return False
    from google.colab import drive

    print("Writing pending changes to Google Drive (this can take a few minutes after a long job)...")
    drive.flush_and_unmount()
    print("Drive flushed and unmounted: everything is saved. Re-run the Connect cell to continue working.")
    return True


# ---------------------------------------------------------------------------------------------
# Secrets: read from Colab's secrets panel, else the environment, else a prompt; never printed
# or written anywhere
# ---------------------------------------------------------------------------------------------


def _from_colab(name: str) -> tuple[str | None, str | None]:
    """(value, problem) from Colab's secrets panel; ``problem`` explains a missing value."""
    from google.colab import userdata

    denied = getattr(userdata, "NotebookAccessError", ())
    not_found = getattr(userdata, "SecretNotFoundError", ())
    try:
        return userdata.get(name) or None, None
    except denied:
        return None, "in Colab's Secrets panel but this notebook has no access (turn on 'Notebook access')"
    except not_found:
        return None, None
    except Exception as err:  # noqa: BLE001 - e.g. a TimeoutException: fall back, but say why
        return None, f"Colab's Secrets panel did not answer ({type(err).__name__})"


def _can_prompt() -> bool:
    """True if someone can answer a hidden prompt: a Jupyter frontend or a terminal."""
    try:
        from IPython import get_ipython
    except ImportError:
        get_ipython = lambda: None  # noqa: E731
    shell = get_ipython()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        return bool(getattr(shell.kernel, "_allow_stdin", True))
    return sys.stdin is not None and sys.stdin.isatty()


def _prompt(name: str) -> str | None:
    import getpass

    if not _can_prompt():
        return None
    value = getpass.getpass(f"{name} (input hidden; press Enter to skip): ")
    return value.strip() or None


def lookup_secret(name: str, *, prompt: bool = False) -> tuple[str | None, str]:
    """Find a secret: Colab ``userdata`` first, then the environment, then (optionally) a prompt.

    Returns:
        ``(value, source)``; source is ``"Colab secrets"``, ``"environment"`` or ``"prompt"``, or
        a short reason when the value is None.
    """
    problem = None
    if in_colab():
        value, problem = _from_colab(name)
        if value:
            return value, "Colab secrets"
    value = os.environ.get(name)
    if value:
        return value, "environment"
    if prompt:
        value = _prompt(name)
        if value:
            return value, "prompt"
    return None, problem or "not set"


def secret(name: str, *, prompt: bool = False) -> str | None:
    """Value of a secret (see ``lookup_secret``), or None. Never print what this returns."""
    return lookup_secret(name, prompt=prompt)[0]


def use_secrets(
    names: tuple[str, ...] = SECRET_NAMES, *, prompt: bool = False, report: bool = False
) -> dict[str, str | None]:
    """Put the secrets into this process's environment, where wandb and huggingface_hub read them.

    Nothing is written to disk (no ``wandb login`` netrc, no token file) and no value is ever
    printed: the report says only where each secret was found.

    Args:
        names: Environment variable names to fill.
        prompt: Ask with a hidden prompt for a secret found nowhere else (when someone can answer).
        report: Print one line per secret: where it came from or what it is needed for
            (00_setup does; the Connect cell prints one short line itself).

    Returns:
        ``{name: source}`` with source None for secrets that were not found.
    """
    found: dict[str, str | None] = {}
    for name in names:
        value, source = lookup_secret(name, prompt=prompt)
        if value:
            os.environ[name] = value
        found[name] = source if value else None
        if report:
            print(_secret_line(name, source if value else None, source))
    return found


def _secret_line(name: str, source: str | None, reason: str) -> str:
    if source:
        return f"  {name}: found ({source}); set for this runtime only"
    use = SECRET_USES.get(name, "optional")
    return (f"  {name}: {reason} -- {use}. Add it with the key icon (Secrets) in Colab's left bar, "
            "or as an environment variable, then re-run this cell.")


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------


def gpu_info() -> dict[str, Any] | None:
    """Name, memory (GiB), count and native bf16 support of the GPU, or None on a CPU runtime."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "vram_gb": round(props.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(),
        "bf16": devices.bf16_native(0),  # native only: T4 / V100 merely emulate it, slowly
    }


def gpu_report(model: str, info: dict[str, Any] | None = None) -> str:
    """What this runtime's GPU is and the training preset suggested for ``model`` on it.

    Args:
        model: The project's MusicGen (``M``); the preset depends on its size.
        info: A ``gpu_info()`` result (default: this runtime's).
    """
    from nbutils import models, presets

    models.quiet_transformers()  # reading the model's config must not bury the report in warnings
    info = gpu_info() if info is None else info
    if info is None:
        head = ("No GPU in this runtime. On Colab choose Runtime > Change runtime type > GPU (A100 if "
                "available, else L4 or T4), then run this notebook again; a CPU is practical only for `tiny`.")
    else:
        count = f" x {info['count']}" if info.get("count", 1) > 1 else ""
        head = f"GPU: {info['name']}{count}, {info['vram_gb']} GiB, bf16 {'yes' if info['bf16'] else 'no'}"
    p = presets.suggest(model, info)
    lines = [head, (
        f"Suggested training preset for {model} ({p.model}) on {p.device}: batch {p.batch_size} x accumulation "
        f"{p.grad_accum}, {p.precision}, gradient checkpointing {'on' if p.grad_checkpointing else 'off'}"
        + (f", about {p.memory_gb:g} GB" if p.memory_gb else "") + (f". {p.note}" if p.note else "."))]
    others = [row for row in presets.table() if row.model == p.model]
    if others:  # the same model on each Colab GPU, to choose the runtime type
        lines += [f"{p.model} on Colab's GPUs (30 s crops):", presets.format_table(others)]
    lines.append("02_train's preset cell measures real steps on its runtime and estimates the time per epoch.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The project: folders + settings in PROJECT_ROOT/project.json
# ---------------------------------------------------------------------------------------------


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


def create_project(project_root: str | os.PathLike, **settings: Any) -> Project:
    """Create the folder layout and write ``project.json`` (00_setup); mount Drive if needed.

    Existing settings are kept unless given again (empty values mean "keep"), so re-running
    setup never loses choices made earlier. The project becomes ``current()``.

    Args:
        project_root: ``PROJECT_ROOT`` (on Drive in Colab, any local folder elsewhere).
        **settings: ``model``, ``zip_dir`` (empty = ``PROJECT_ROOT/zips``), ``run_name`` (the
            training run folder under ``runs/``, default ``lora``); other keys are stored as given.
    """
    global _CURRENT
    show_errors_briefly()
    _offer_flush_after_long_cells()
    if not mount_drive(project_root) and in_colab():
        print(f"Warning: PROJECT_ROOT {project_root} is on this runtime's own disk, which is deleted with the "
              f"runtime. To keep your work, use a folder under {DRIVE_MOUNT / 'MyDrive'} (e.g. {DEFAULT_PROJECT_ROOT}).")
    paths = Paths.at(project_root)
    current = atomic.read_json(paths.project_file) if paths.project_file.exists() else {}
    current.update({k: v for k, v in settings.items() if v not in (None, "")})
    current.setdefault("model", "facebook/musicgen-small")
    current.setdefault("run_name", DEFAULT_RUN)
    paths = Paths.at(project_root, current.get("zip_dir") or None)
    paths.ensure()
    current["zip_dir"] = str(paths.zips)
    atomic.write_json(paths.project_file, current)
    _CURRENT = Project(paths=paths, settings=current)
    return _CURRENT


def describe_project(project: Project) -> str:
    """The project's folders and what goes where, for the setup notebook and the README."""
    p = project.paths
    where = "Google Drive" if on_drive(p.root) else "a local folder"
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
    from nbutils.notebooks import NOTEBOOKS

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
    _offer_flush_after_long_cells()
    mount_drive(project_root)
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
    where = "Google Drive" if on_drive(paths.root) else "local folder"
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
    if on_drive(_CURRENT.paths.root) and not drive_mounted():
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
