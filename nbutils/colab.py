"""The Colab layer: Drive, secrets, GPU, the project settings, and friendly errors.

This is the only module that knows about ``/content/drive``. Outside Colab everything falls
back to local equivalents: "Drive" is the local folder ``PROJECT_ROOT`` and secrets come from
environment variables. Notebooks 01-04 start with ``project = colab.connect(PROJECT_ROOT, ...)``
and later cells call ``colab.current()``, which tells the user which cell to re-run when the
runtime was restarted in between.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from nbutils import atomic
from nbutils.errors import UserError
from nbutils.paths import PROJECT_FILE, Paths

# The repository every badge and install line points at: change it here, and the notebook test
# (tests/test_notebooks.py) will tell you which notebook cells still point elsewhere.
REPO_SLUG = "musicgen-lora/musicgen-lora-colab"
REPO_REF = "main"  # badges open the notebooks of this branch
INSTALL_REF = "v0.1.0"  # notebooks pip-install this tag: a release, not whatever main is today
DRIVE_MOUNT = Path("/content/drive")
DEFAULT_PROJECT_ROOT = "/content/drive/MyDrive/musicgen-lora"
SECRET_NAMES = ("WANDB_API_KEY", "HF_TOKEN")
CONNECT_CELL = "2. Connect"

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


def mount_drive(project_root: str | os.PathLike) -> bool:
    """Mount Google Drive if ``project_root`` lives on it and it is not mounted yet.

    Returns:
        True if the project is on a mounted Drive.
    """
    root = Path(project_root)
    on_drive = DRIVE_MOUNT in root.parents or root == DRIVE_MOUNT
    if not on_drive:
        return False
    if not in_colab():
        raise UserError(
            f"PROJECT_ROOT {root} is on Google Drive, but this is not a Colab runtime. "
            "Use a local folder as PROJECT_ROOT outside Colab."
        )
    if not (DRIVE_MOUNT / "MyDrive").is_dir():
        from google.colab import drive

        drive.mount(str(DRIVE_MOUNT))
    return True


def flush_drive() -> None:
    """Write pending Drive changes through (call at the end of long jobs before closing the tab)."""
    if in_colab() and (DRIVE_MOUNT / "MyDrive").is_dir():
        from google.colab import drive

        drive.flush_and_unmount()
        print("Drive flushed and unmounted. Re-run the Connect cell to continue working.")


# ---------------------------------------------------------------------------------------------
# Secrets: read from Colab's secrets panel, else the environment; never printed or written
# ---------------------------------------------------------------------------------------------


def secret(name: str, *, prompt: bool = False) -> str | None:
    """Value of a secret: Colab ``userdata`` first, then the environment, then (optionally) a prompt."""
    if in_colab():
        try:
            from google.colab import userdata

            value = userdata.get(name)
            if value:
                return value
        except Exception:  # noqa: BLE001 - SecretNotFoundError / NotebookAccessError: fall back
            pass
    value = os.environ.get(name)
    if value:
        return value
    if prompt and sys.stdin is not None and sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"{name} (input hidden, leave empty to skip): ") or None
    return None


def use_secrets(names: tuple[str, ...] = SECRET_NAMES, *, prompt: bool = False) -> dict[str, bool]:
    """Put the secrets into this process's environment, where wandb and huggingface_hub read them.

    Nothing is written to disk (no ``wandb login`` netrc, no token file) and nothing is printed:
    the result says only which secrets were found.
    """
    found = {}
    for name in names:
        value = secret(name, prompt=prompt)
        if value:
            os.environ[name] = value
        found[name] = bool(value)
    return found


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------


def gpu_info() -> dict[str, Any] | None:
    """Name, memory (GiB), count and bf16 support of the GPU, or None on a CPU runtime."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "vram_gb": round(props.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(),
        "bf16": bool(torch.cuda.is_bf16_supported()),
    }


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

    def __repr__(self) -> str:
        return f"Project(root={self.paths.root}, model={self.model})"


def create_project(project_root: str | os.PathLike, **settings: Any) -> Project:
    """Create the folder layout and write ``project.json`` (00_setup). Existing settings are kept
    unless given again, so re-running setup never loses choices made earlier."""
    paths = Paths.at(project_root, settings.get("zip_dir") or None)
    paths.ensure()
    current = atomic.read_json(paths.project_file) if paths.project_file.exists() else {}
    current.update({k: v for k, v in settings.items() if v not in (None, "")})
    current.setdefault("model", "facebook/musicgen-small")
    current["zip_dir"] = str(paths.zips)
    atomic.write_json(paths.project_file, current)
    return Project(paths=paths, settings=current)


def connect(project_root: str | os.PathLike, *, notebook: str = "", **overrides: Any) -> Project:
    """First cell of notebooks 01-04: mount Drive if needed, read the project, show errors briefly.

    Args:
        project_root: ``PROJECT_ROOT`` from the notebook's parameters cell.
        notebook: The calling notebook's name, for messages.
        **overrides: Notebook parameters (``model``, ``zip_dir``...); empty values mean "use
            what 00_setup saved".
    """
    global _CURRENT
    show_errors_briefly()
    mount_drive(project_root)
    paths = Paths.at(project_root)
    if not paths.project_file.exists():
        raise UserError(
            f"No project at {paths.root} (no {PROJECT_FILE}). Run notebook 00_setup first "
            "(its cell 'Create the project'), or fix PROJECT_ROOT in the parameters cell."
        )
    settings = atomic.read_json(paths.project_file)
    settings.update({k: v for k, v in overrides.items() if v not in (None, "")})
    paths = Paths.at(project_root, settings.get("zip_dir") or None)
    _CURRENT = Project(paths=paths, settings=settings)
    where = "Google Drive" if DRIVE_MOUNT in paths.root.parents else "local folder"
    print(f"{notebook or 'Notebook'} connected to {paths.root} ({where}); model: {settings['model']}")
    return _CURRENT


def current() -> Project:
    """The project of the last ``connect``; a clear message if the runtime lost it."""
    show_errors_briefly()
    if _CURRENT is None:
        raise UserError(
            f"This runtime has no project yet (it was restarted or cells ran out of order). "
            f"Run the parameters cell and cell '{CONNECT_CELL}' at the top of this notebook, then this cell again."
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
