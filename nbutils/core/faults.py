"""Fault injection for the crash tests: ``NBUTILS_KILL_AT=<point>[:<n>]`` stops this process.

The tests must prove that a run killed at any moment leaves nothing that reads as done. Some
moments are too short to hit from outside (between writing a shard's ``.npy`` and its
``.json``), so the code names them: when the environment variable names a point, the process
kills itself the ``n``-th time (default: first) it reaches that point. Unset, every call is a
dictionary lookup and nothing else.

Tokenization points (``n`` = the n-th time the point is reached): ``mid-npy`` (half the
shard's codes written to the temporary file), ``after-npy`` (codes renamed into place, index not
yet written), ``before-ledger`` (shard committed, ledger line not written), ``mid-ledger`` (half
a ledger line written).

Training points (``n`` = the optimizer step): ``micro`` (inside a step, between micro-batches),
``step`` (after a step, before its checkpoint), ``latest-written`` (the new latest.pt written
under its temporary name), ``latest-kept`` (the old latest.pt renamed to previous.pt, the new one
not yet in place), ``checkpoint-dir`` (step folder half written). Points whose name starts with
``interrupt`` raise ``KeyboardInterrupt`` instead (Colab's stop button) so the tests can check
the save-on-stop path. Kills at arbitrary moments need no hook: the tests send SIGKILL from
outside.

Data faults, for the divergence tests (the caller asks ``armed`` / ``armed_from`` and does the
damage): ``nan-loss:n`` makes step n's loss NaN (a poisoned batch); ``high-loss:n`` multiplies the
loss by ``HIGH_LOSS`` from step n on (a run whose loss runs away). Several faults may be armed at
once, separated by commas (``high-loss:25,interrupt:28``).
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from typing import BinaryIO

ENV = "NBUTILS_KILL_AT"
HIGH_LOSS = 100.0  # factor of the ``high-loss`` fault
_hits: Counter = Counter()


def _armed_points() -> list[tuple[str, str]]:
    """``(name, n)`` of every fault ``NBUTILS_KILL_AT`` names."""
    spec = os.environ.get(ENV) or ""
    return [tuple(part.strip().partition(":")[::2]) for part in spec.split(",") if part.strip()]


def armed(point: str, step: int | None = None) -> bool:
    """True when this call of ``point`` is the one ``NBUTILS_KILL_AT`` asks to stop at.

    Args:
        point: The point's name.
        step: For points counted by training step: this call's step (matched against ``n``).
            Without it, ``n`` counts the calls of ``point`` in this process.
    """
    for name, nth in _armed_points():
        if name != point:
            continue
        if step is not None:
            return int(nth or 0) == step
        _hits[point] += 1
        return _hits[point] == int(nth or 1)
    return False


def armed_from(point: str, step: int) -> bool:
    """True when ``NBUTILS_KILL_AT`` names ``point`` with an ``n`` at or before ``step``."""
    return any(name == point and step >= int(nth or 0) for name, nth in _armed_points())


def kill(torn: BinaryIO | None = None, since: int = 0) -> None:
    """SIGKILL this process (no cleanup, no ``finally``), optionally tearing a write first.

    Args:
        torn: An open binary file being written: what was written after offset ``since`` is
            cut in half and flushed to disk, as if the process died in the middle of the write.
        since: Where the interrupted write started in ``torn``.
    """
    if torn is not None:
        torn.flush()
        end = torn.tell()
        torn.truncate(since + (end - since) // 2)
        torn.flush()
        os.fsync(torn.fileno())
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def point(name: str, torn: BinaryIO | None = None, *, step: int | None = None) -> None:
    """Stop here if ``NBUTILS_KILL_AT`` names this point (see the module docstring)."""
    if armed(name, step):
        if name.startswith("interrupt"):
            raise KeyboardInterrupt
        kill(torn)
