"""Google Drive in Colab: mount, the long-job flush reminder, flush and unmount.

Only this layer knows the mount point ``/content/drive``; outside Colab "Drive" is just the local
``PROJECT_ROOT`` folder.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

from nbutils.core.errors import UserError

# Where Colab mounts Drive. NBUTILS_DRIVE_MOUNT exists only so tests with a fake google.colab
# can mount into a temporary folder; on Colab it is never set.
DRIVE_MOUNT = Path(os.environ.get("NBUTILS_DRIVE_MOUNT") or "/content/drive")
DEFAULT_PROJECT_ROOT = "/content/drive/MyDrive/musicgen-lora"
LONG_CELL_SECONDS = 10 * 60  # a cell that ran this long was a "long job": offer to flush Drive after it
CONNECT_CELL = "2. Connect"  # in every notebook: installs the suite if needed, mounts Drive, the project
# The cell at the end of a notebook that writes for a long time: flush what this runtime wrote to Drive.
FLUSH_CELLS = {"00_setup": "7. Before you close the tab: flush Drive",
               "01_tokenize": "8. Before you close the tab: flush Drive",
               "02_train": "7. Before you close the tab: flush Drive"}


def in_colab() -> bool:
    """True inside a Colab runtime (where ``google.colab`` can be imported)."""
    if "google.colab" in sys.modules:
        return True
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True



def on_drive(path: str | os.PathLike) -> bool:
    """True if ``path`` is under the Drive mount point (``/content/drive`` on Colab)."""
    path = Path(path).expanduser().absolute()
    return path == DRIVE_MOUNT or DRIVE_MOUNT in path.parents


# What a mount whose FUSE transport died answers (errno 107 "Transport endpoint is not connected", or an
# I/O error): the folder is still there, but every access raises. Only a forced remount revives it.
DEAD_MOUNT_ERRNOS = (errno.ENOTCONN, errno.EIO, errno.ECONNABORTED)


def _probe(path: Path) -> os.stat_result:
    return os.stat(path)


def drive_state() -> str:
    """``mounted``, ``absent`` (not mounted, or unmounted by a flush) or ``dead`` (the transport died)."""
    try:
        return "mounted" if stat.S_ISDIR(_probe(DRIVE_MOUNT / "MyDrive").st_mode) else "absent"
    except OSError as err:
        return "dead" if err.errno in DEAD_MOUNT_ERRNOS else "absent"


def drive_mounted() -> bool:
    """True when Drive is mounted and answers (its ``MyDrive`` folder is visible)."""
    return drive_state() == "mounted"


def mount_drive(project_root: str | os.PathLike) -> bool:
    """Mount Google Drive if ``project_root`` lives on it and it is not mounted, or remount a dead mount.

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
    state = drive_state()
    if state != "mounted":
        from google.colab import drive

        if state == "dead":
            print("Google Drive's connection died ('Transport endpoint is not connected'): remounting it. Then "
                  "re-run the cell that was working when it died: it continues from what reached Drive.")
        else:
            print(f"Mounting Google Drive at {DRIVE_MOUNT} (allow access in the pop-up)...")
        try:
            drive.mount(str(DRIVE_MOUNT), force_remount=state == "dead")
        except Exception as err:  # Colab raises MessageError/ValueError when access is declined
            raise UserError(
                f"Mounting Google Drive failed ({type(err).__name__}: {err}). Run this cell again and "
                "allow access to your Drive in the pop-up (same Google account as Colab); if it keeps "
                "failing, use Runtime > Restart session, then this cell."
            ) from err
    if not drive_mounted():
        raise UserError(
            f"Google Drive is not mounted at {DRIVE_MOUNT}. Run this cell again and allow access "
            "to your Drive in the pop-up."
        )
    return True


def offer_flush_after_long_cells(notebook: str = "") -> None:
    """In IPython: after a cell that ran ``LONG_CELL_SECONDS`` or more, offer to flush Drive.

    The end of a long tokenize or training job is when users close the tab, and Drive may still
    be writing in the background; only the runtime that wrote can flush it, so the reminder names
    the flush cell of ``notebook`` (the one the Connect cell ran in). Unmounting is not done for
    them: later cells need the mount.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    shell._nbutils_notebook = notebook  # the latest Connect cell's notebook: this runtime's
    if getattr(shell, "_nbutils_flush_offer", False):
        return
    started: list[float] = []

    def pre_run_cell(*_: Any) -> None:
        started[:] = [time.monotonic()]

    def post_run_cell(*_: Any) -> None:
        if started and time.monotonic() - started[0] >= LONG_CELL_SECONDS and in_colab() and drive_mounted():
            print(flush_reminder(shell._nbutils_notebook))

    shell.events.register("pre_run_cell", pre_run_cell)
    shell.events.register("post_run_cell", post_run_cell)
    shell._nbutils_flush_offer = True


def flush_reminder(notebook: str) -> str:
    """What to do before closing the tab after a long job in ``notebook``: its flush cell, by name."""
    cell = FLUSH_CELLS.get(notebook)
    how = f"run cell '{cell}' of this notebook" if cell else "run colab.flush_drive() in a new cell of this notebook"
    return (f"That was a long job. Before you close this tab, {how}, so that Drive finishes writing what this "
            f"runtime wrote; then run '{CONNECT_CELL}' to keep working.")


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

