"""Fake ``google.colab.drive``: mounting links ``<mountpoint>/MyDrive`` to ``FAKE_DRIVE_STORAGE``."""

import os
from pathlib import Path

from google.colab import _record

_MOUNTED: list[Path] = []


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    _record("drive.mount", mountpoint=str(mountpoint), force_remount=force_remount)
    if os.environ.get("FAKE_DRIVE_DECLINE"):  # the user closed the permission pop-up
        raise ValueError("mount failed")
    my_drive = Path(mountpoint) / "MyDrive"
    if my_drive.exists() and not force_remount:
        print(f"Drive already mounted at {mountpoint}; to attempt to forcibly remount, "
              f'call drive.mount("{mountpoint}", force_remount=True).')
        return
    storage = Path(os.environ["FAKE_DRIVE_STORAGE"])
    storage.mkdir(parents=True, exist_ok=True)
    my_drive.parent.mkdir(parents=True, exist_ok=True)
    if my_drive.is_symlink():
        my_drive.unlink()
    my_drive.symlink_to(storage, target_is_directory=True)
    _MOUNTED.append(Path(mountpoint))
    print(f"Mounted at {mountpoint}")


def flush_and_unmount(timeout_ms=24 * 60 * 60 * 1000):
    _record("drive.flush_and_unmount")
    if not _MOUNTED:
        raise ValueError("Drive not mounted, so nothing to flush and unmount.")
    (_MOUNTED.pop() / "MyDrive").unlink()
    print("All changes made in this colab session should now be visible in Drive.")
