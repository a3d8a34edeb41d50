"""Durable writes: write to a temporary name in the same folder, fsync, then ``os.replace``.

A Colab runtime can die between any two bytes. Every file this package writes on Drive (shard,
ledger, checkpoint, adapter, config) goes through here, so a reader sees either the old complete
file or the new complete file, never a torn one. Temporary names start with ``.`` and contain
``.tmp-``; ``remove_stale_temps`` clears what a killed process left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from nbutils.core import jsonsafe

TMP_MARK = ".tmp-"


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (the rename) to disk where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (Drive's FUSE, Windows) do not support fsync on directories
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path`` atomically, on error it is removed.

    Example:
        >>> with atomic_path(out / "codes.npy") as tmp:
        ...     np.save(tmp, codes)  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON; any string survives (lone surrogates are escaped)."""
    write_bytes(path, jsonsafe.encode(jsonsafe.dumps(obj, indent=2) + "\n"))


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and fsync. A torn last line (killed mid-write) is skipped by readers.

    Lone surrogates in ``line`` are written as JSON escapes (``jsonsafe.encode``): lines are JSON.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:  # appends go to the end whatever the read position
        end = fh.seek(0, os.SEEK_END)
        torn = False
        if end:
            fh.seek(end - 1)
            torn = fh.read(1) != b"\n"
        # After a torn last line (no newline), start a fresh line: glued to the torn one, this
        # record would be unreadable and skipped with it.
        fh.write(jsonsafe.encode(("\n" if torn else "") + line.rstrip("\n") + "\n"))
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read JSON lines, skipping a torn or corrupt line instead of failing the whole file."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = jsonsafe.loads(raw)
        except ValueError:  # JSONDecodeError, or a line too deep / with a huge number
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` (a directory) when the block succeeds.

    The old directory is renamed aside first and deleted only after the new one is in place, so
    at every moment either ``path`` or ``path`` + ``.old`` holds a complete copy (see
    ``recover_dir``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb+") as fh:
                    os.fsync(fh.fileno())
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def recover_dir(path: str | os.PathLike) -> Path:
    """If a kill hit ``atomic_dir`` between its two renames, bring the old copy back."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        os.replace(old, path)
    return path


def pid_alive(pid: int) -> bool:
    """True if a process with this id runs (another rank, another cell's process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer_alive(name: str) -> bool:
    try:
        pid = int(name.rsplit(TMP_MARK, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    return pid != os.getpid() and pid_alive(pid)


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete temporary files and folders left by killed writers in ``folder`` (not recursive).

    Temporaries of a process that is still running (another rank, another cell) are kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        if entry.name.startswith(".") and TMP_MARK in entry.name and not _writer_alive(entry.name):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed
