"""Fault injection for the crash tests: ``NBUTILS_KILL_AT=<point>[:<n>]`` SIGKILLs this process.

The tests must prove that a run killed at any moment leaves nothing that reads as done. Some
moments are too short to hit from outside (between writing a shard's ``.npy`` and its
``.json``), so the code names them: when the environment variable names a point, the process
kills itself the ``n``-th time (default: first) it reaches that point. Unset, every call is a
dictionary lookup and nothing else.

Points: ``mid-npy`` (half the shard's codes written to the temporary file), ``after-npy``
(codes renamed into place, index not yet written), ``before-ledger`` (shard committed, ledger
line not written), ``mid-ledger`` (half a ledger line written). Kills at arbitrary moments
need no hook: the tests send SIGKILL from outside.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from typing import BinaryIO

ENV = "NBUTILS_KILL_AT"
_hits: Counter = Counter()


def armed(point: str) -> bool:
    """True when this call of ``point`` is the one ``NBUTILS_KILL_AT`` asks to die at."""
    spec = os.environ.get(ENV)
    if not spec:
        return False
    name, _, nth = spec.partition(":")
    if name != point:
        return False
    _hits[point] += 1
    return _hits[point] == int(nth or 1)


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


def point(name: str, torn: BinaryIO | None = None) -> None:
    """Die here if ``NBUTILS_KILL_AT`` names this point (see the module docstring)."""
    if armed(name):
        kill(torn)
