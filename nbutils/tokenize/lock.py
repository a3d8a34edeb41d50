"""One tokenize run per token folder: an exclusive lock file with its holder and a heartbeat.

Two runs on one ``--out`` would both encode every ZIP, and with different settings both could
pass the settings check and leave shards of two settings under one ``tokenize_config.json``.
So a run creates ``tokenize.lock`` in the token folder with exclusive create (``O_EXCL``)
before it reads or writes the settings, holding its host, pid, start time and a heartbeat that
a background thread renews every ``HEARTBEAT_SECONDS``. A second run reads who holds it and
stops with a ``UserError`` that says so.

A lock whose holder is gone is taken over, with a message: on the same host when its pid no
longer runs; on any host (Drive is shared across Colab runtimes, and a disconnected runtime
never cleans up) when its heartbeat is older than ``STALE_SECONDS``. Between ZIPs the run
checks that the lock is still its own (``check``): a run whose lock was taken over while it
stalled stops instead of writing beside the new holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from nbutils.core import atomic
from nbutils.core.errors import UserError

LOCK_FILE = "tokenize.lock"
HEARTBEAT_SECONDS = 30.0  # how often the holder renews its heartbeat
STALE_SECONDS = 600.0  # 10 min without a heartbeat: the holder's runtime is gone (Drive syncs far faster)


def _now() -> float:
    return time.time()


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def describe(holder: dict[str, Any]) -> str:
    """``host H, pid P, started 2026-11-02 10:00:00, last heartbeat 12 s ago``."""
    beat = _now() - float(holder.get("heartbeat", 0) or 0)
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started "
            f"{_stamp(float(holder.get('started', 0) or 0))}, last heartbeat {beat:.0f} s ago")


def _read(path: Path) -> dict[str, Any] | None:
    """The holder recorded in ``path``; None if it is missing; ``{}`` if unreadable (torn)."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def stale_reason(holder: dict[str, Any], path: Path, stale_seconds: float = STALE_SECONDS) -> str:
    """Why the lock ``holder`` can be taken over ('' while its holder may still be running)."""
    if not holder:  # torn: its writer died between creating and filling it
        age = _now() - path.stat().st_mtime if path.exists() else stale_seconds
        return f"unreadable lock file, {age:.0f} s old" if age >= stale_seconds else ""
    if holder.get("host") == socket.gethostname():
        pid = int(holder.get("pid", 0) or 0)
        if pid == os.getpid():
            return "left by an earlier run in this same process"
        if not atomic.pid_alive(pid):
            return f"its process {pid} on this host is gone"
    silent = _now() - float(holder.get("heartbeat", 0) or 0)
    if silent >= stale_seconds:
        return f"no heartbeat for {silent / 60:.0f} min (its runtime was disconnected or stopped)"
    return ""


class Lock:
    """The token folder's lock, held by this process between ``acquire`` and ``release``."""

    def __init__(self, folder: str | os.PathLike, *, say: Callable[[str], None] = print,
                 stale_seconds: float = STALE_SECONDS, heartbeat_seconds: float = HEARTBEAT_SECONDS):
        self.path = Path(folder) / LOCK_FILE
        self.say = say
        self.stale_seconds = stale_seconds
        self.heartbeat_seconds = heartbeat_seconds
        started = _now()
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": started, "heartbeat": started,
                       "id": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = ""
        """Why the lock is no longer ours ('' while it is)."""

    def _create(self) -> bool:
        """Create the lock file exclusively with our record; False if it exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(self.record))
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _held_by(self, holder: dict[str, Any]) -> UserError:
        return UserError(
            f"The token folder {self.path.parent} is in use by another tokenize run ({describe(holder)}). Wait for "
            "it to finish: two runs on one folder would encode every ZIP twice and could mix settings. If that run "
            f"is gone (its runtime was disconnected), its lock is taken over automatically once it has had no "
            f"heartbeat for {self.stale_seconds / 60:.0f} min; if you are sure nothing else runs, delete {self.path}.")

    def _take_over(self, holder: dict[str, Any], why: str) -> bool:
        """Move a stale lock aside and create ours; False if another run got there first."""
        aside = self.path.with_name(f".{LOCK_FILE}.stale-{self.record['id']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return self._create()  # someone removed it: race for a fresh one
        moved = _read(aside) or {}
        if moved.get("id") != holder.get("id"):  # a new holder's lock, created after we read the stale one
            if not self.path.exists():
                os.rename(aside, self.path)
            raise self._held_by(moved)
        aside.unlink(missing_ok=True)
        if not self._create():
            return False
        who = describe(holder) if holder else "unknown"
        self.say(f"Took over the token folder's lock from a run that is gone ({who}): {why}.")
        return True

    def acquire(self) -> None:
        """Hold the lock, or raise ``UserError`` naming its holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a lock released (or taken over) between our two looks: look again
            if self._create():
                break
            holder = _read(self.path)
            if holder is None:
                continue
            why = stale_reason(holder, self.path, self.stale_seconds)
            if not why:
                raise self._held_by(holder)
            if self._take_over(holder, why):
                break
        else:
            raise self._held_by(_read(self.path) or {})
        self._thread = threading.Thread(target=self._beat, name="tokenize-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            holder = _read(self.path)
            if holder == {}:  # being written this very moment (or torn): look again at the next beat
                continue
            if holder is None or holder.get("id") != self.record["id"]:
                self.lost = f"the lock is now held by {describe(holder) if holder else 'nobody'}"
                return
            self.record["heartbeat"] = _now()
            with contextlib.suppress(OSError):  # Drive hiccup: the next beat tries again
                atomic.write_json(self.path, self.record)

    def check(self) -> None:
        """``UserError`` if another run took the lock over (this one stalled past the timeout)."""
        if self.lost:
            raise UserError(f"This run lost the token folder's lock ({self.lost}): it stopped so that two runs "
                            "do not write one folder. Nothing finished is lost; run again when the other one is done.")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file, if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = _read(self.path)
        if holder and holder.get("id") == self.record["id"]:
            self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def hold(folder: str | os.PathLike, **kwargs: Any) -> Iterator[Lock]:
    """Hold the token folder's lock for the block (see ``Lock``)."""
    lock = Lock(folder, **kwargs)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
