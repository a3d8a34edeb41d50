"""Messages instead of tracebacks when an output folder is read-only, full or not ours to write.

Every stage writes its results under one folder (``--out``). A Drive that is full, a folder
mounted read-only, or one without write permission raises a bare ``OSError`` deep inside a
library; nothing is lost (every write is atomic), but the user sees a stack of frames and no
advice. ``guard`` turns those errors into a ``UserError`` that names the folder and says what to
do. Some writers hide the errno behind a ``RuntimeError`` (libsndfile's "System error.",
torch.save's "PytorchStreamWriter failed writing file"): for those, ``guard`` probes the folder
with a small write of its own, and explains that write's error. A stage's ``run`` needs one line:

    @diskerrors.guard("out")
    def run(cfg): ...
"""

from __future__ import annotations

import errno
import functools
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

from nbutils.core.errors import UserError

FULL = {errno.ENOSPC, errno.EDQUOT}
READ_ONLY = {errno.EROFS}
DENIED = {errno.EACCES, errno.EPERM}
RESUME = "Nothing written so far is lost: run the same command (or cell) again afterwards and it continues."
PROBE_BYTES = 64 << 10  # a write this small fails only on a disk that is (nearly) full or read-only

F = TypeVar("F", bound=Callable[..., Any])


def _inside(path: str | os.PathLike | None, folder: Path) -> bool:
    if not path:
        return False
    try:
        return Path(os.path.abspath(path)).is_relative_to(Path(os.path.abspath(folder)))
    except (TypeError, ValueError):
        return False


def explain(err: OSError, folder: str | os.PathLike, option: str = "--out") -> UserError | None:
    """The message for a write that failed because of the disk, or None for any other error.

    A full or read-only disk fails only writes, so those are explained wherever they happened
    (the path is named when the error carries one). A permission error is explained only
    inside ``folder``: elsewhere it may be an input the user must fix differently.
    """
    where = err.filename or folder
    detail = f"{errno.errorcode.get(err.errno or 0, type(err).__name__)}: {err.strerror or err}"
    if err.errno in FULL:
        return UserError(f"The disk holding {where} is full ({detail}). Free space there (on Google Drive: "
                         f"delete files and empty the trash) or choose another {option}. {RESUME}")
    if err.errno in READ_ONLY:
        return UserError(f"{where} is on a read-only file system ({detail}). Choose a writable {option} (on "
                         "Colab: a folder under /content/drive/MyDrive, with Drive mounted for writing). " + RESUME)
    if err.errno in DENIED and (_inside(err.filename, Path(folder)) or not err.filename):
        return UserError(f"No permission to write {where} ({detail}). Choose a folder you can write for "
                         f"{option}, or fix its permissions. {RESUME}")
    return None


def probe(folder: str | os.PathLike) -> OSError | None:
    """The error a small write in ``folder`` fails with (None if it works, or the folder is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    path = folder / f".nbutils-write-probe-{os.getpid()}"
    try:
        with open(path, "wb") as fh:
            fh.write(b"\0" * PROBE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        return err
    finally:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder never held it
    return None


def guard(field: str = "out", option: str = "--out") -> Callable[[F], F]:
    """Decorate a stage's ``run(cfg, ...)``: disk errors while it runs become a ``UserError``.

    Args:
        field: The attribute of ``cfg`` (the first argument) that holds the output folder.
        option: How the user names that folder (CLI option), for the message.
    """
    def wrap(run: F) -> F:
        @functools.wraps(run)
        def guarded(cfg, *args, **kwargs):
            folder = getattr(cfg, field, "") or "."
            try:
                return run(cfg, *args, **kwargs)
            except OSError as err:
                message = explain(err, folder, option)
                if message is None:
                    raise
                raise message from None
            except RuntimeError:  # maybe a write whose errno the library hid: ask the disk
                failed = probe(folder)
                message = explain(failed, folder, option) if failed is not None else None
                if message is None:
                    raise
                raise message from None
        return guarded  # type: ignore[return-value]
    return wrap
