"""When training saves, and what a save costs on Google Drive.

A save is due every ``save_every`` steps and, with ``save_every_minutes``, once that many minutes
passed since the last save, whichever comes first. A step-count save writes ``latest.pt`` and a
step folder (after a validation when due); a time-based save writes ``latest.pt`` only: it is there
so a disconnect loses minutes, not hours (a medium or large model on a T4 takes 45-90 minutes per
200 steps). Neither touches the random state, so saving more often never changes the weights.
A stop (Colab's stop button) saves the last completed step unless it is saved already, or the
loss is running away (``guard``): then the last good checkpoint stays.

Drive counts every byte written against the quota, and a file that is replaced or deleted
through the mount goes to Drive's Trash, where it keeps counting until the Trash is emptied.
So training prints the free space at the start and the bytes each save writes.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

COLAB_MINUTES = 10.0  # save_every_minutes in a Colab runtime when the setting is left empty
# Variables every Colab runtime sets: asking them needs no import of Colab's module (only
# nbutils.colab may import it), and a shell on Colab (`!python -m nbutils train`) has them too.
COLAB_ENV = ("COLAB_RELEASE_TAG", "COLAB_GPU", "COLAB_JUPYTER_IP")
LOW_SPACE_SAVES = 5  # warn when the free space holds fewer saves than this

now = time.monotonic  # the clock of time-based saves (the tests replace it)


def in_colab_runtime() -> bool:
    """True in a Colab runtime, where one of Colab's environment variables is set (possibly empty:
    ``COLAB_GPU`` is on CPU runtimes). Kaggle's notebooks, built on Colab's image, count too."""
    return any(name in os.environ for name in COLAB_ENV)


def minutes(setting: float | None) -> float:
    """``save_every_minutes`` as used: an empty setting (None) is 10 in a Colab runtime and 0 (off)
    elsewhere, where a shell session does not get disconnected."""
    if setting is None:
        return COLAB_MINUTES if in_colab_runtime() else 0.0
    return float(setting)


class SaveSchedule:
    """Which kind of save, if any, is due after a step.

    Args:
        every_steps: ``save_every``.
        every_minutes: Minutes between time-based saves (0: none).
    """

    def __init__(self, every_steps: int, every_minutes: float):
        self.every_steps, self.every_minutes = every_steps, every_minutes
        self.last = now()
        self.waiting: str | None = None  # a due save put off (the loss was running away)

    def restart(self) -> None:
        """A save happened (or training starts): count the minutes from now, nothing waits."""
        self.last, self.waiting = now(), None

    def wait(self, kind: str) -> None:
        """Put off a due save until the next step that may save."""
        self.waiting = kind

    def due(self, step: int) -> str | None:
        """``"steps"`` (a step-count save, or one put off), ``"time"`` or None after step ``step``."""
        if step % self.every_steps == 0 or self.waiting == "steps":
            return "steps"
        if self.waiting or (self.every_minutes > 0 and now() - self.last >= 60 * self.every_minutes):
            return "time"
        return None


def on_stop(trainer, latest: Path) -> str:
    """After a stop: save ``trainer``'s last completed step (latest.pt only) unless it is saved
    already or its loss is running away (``guard.StepGuard.unsaved``); returns what to tell the user."""
    from nbutils.train import guard

    if trainer.guard.troubled:
        return trainer.guard.unsaved(trainer.step, trainer.saved_at, latest)
    try:
        if trainer.saved_at != trainer.step:
            trainer.save(folder=False)
    except guard.Diverged as refused:
        return f"Stopped at step {trainer.step}, not saved. {refused}"
    return f"Stopped. Saved step {trainer.step} to {latest}; run the same command (or cell) again to continue."


def size_of(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a folder (0 if it does not exist)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free bytes of the filesystem holding ``folder`` (its nearest existing parent); on Colab's
    Drive mount, what is left of the Drive quota. None if the system cannot tell."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def human_bytes(n: float | None) -> str:
    """``36.2 MB``, ``1.4 GB`` (binary units, as Drive and ``du -h`` count)."""
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def start_note(folder: str | os.PathLike) -> str:
    """The line training prints at the start: the free space where the run is saved."""
    free = free_bytes(folder)
    return (f"Free space for the run folder: {human_bytes(free)} (on Colab's Drive: what is left of your Drive "
            "quota). Files a save replaces or deletes go to Drive's Trash and count until it is emptied "
            "(README: Troubleshooting, 'Drive is full').")


def save_note(step: int, written: dict[str, int], removed: int, folder: str | os.PathLike) -> str:
    """The line printed after a save: bytes written (per file), replaced or deleted, and the free space."""
    total = sum(written.values())
    parts = " + ".join(f"{name} {human_bytes(n)}" for name, n in written.items())
    free = free_bytes(folder)
    note = (f"Saved step {step}: {human_bytes(total)} written ({parts}), {human_bytes(removed)} replaced or "
            f"deleted; {human_bytes(free)} free.")
    if free is not None and total and free < LOW_SPACE_SAVES * total:
        note += (f" Warning: room for fewer than {LOW_SPACE_SAVES} more saves. Empty Drive's Trash "
                 "(drive.google.com -> Trash -> Empty trash) or free space, or training will stop when it is full.")
    return note
