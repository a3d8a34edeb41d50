"""How fast a folder takes the suite's writes: one large file written and read back, small files created.

Drive on Colab is fast with few large files and slow with many small ones; the suite writes one
shard per ZIP for that reason. ``measure`` writes what the suite writes, the way it writes it
(``nbutils.core.atomic``: temporary name, fsync, rename): one ``big_bytes`` file (a shard or a
``latest.pt``) and ``small_files`` small JSON files (ledger, index and config files), in a
temporary folder inside ``folder`` that is removed afterwards.

The large file is read back right after it was written. Its pages are dropped from the kernel's
cache first (``posix_fadvise``), so a local disk is really read; Drive's own client may still serve
it from its local cache, so on Drive the read figure is the best case.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from nbutils.core import atomic

BIG_BYTES = 64 << 20  # one file the size of a ZIP's shard or a musicgen-large latest.pt's LoRA part
SMALL_FILES = 20
SMALL_BYTES = 2 << 10  # a ledger line's JSON file, a shard index
CHUNK = 8 << 20  # read size


def _drop_cache(path: Path) -> None:
    """Ask the kernel to forget ``path``'s cached pages (where it can), so the next read reads the disk."""
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass  # some filesystems (FUSE) do not support it: the read may then come from the cache
    finally:
        os.close(fd)


def _read(path: Path) -> tuple[float, str]:
    """Seconds to read ``path`` whole, and its sha256."""
    digest = hashlib.sha256()
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return time.perf_counter() - started, digest.hexdigest()


def measure(folder: str | os.PathLike, *, big_bytes: int = BIG_BYTES, small_files: int = SMALL_FILES) -> dict[str, Any]:
    """Write and read one ``big_bytes`` file and create ``small_files`` small ones in ``folder``.

    Returns:
        ``write_mb_s`` and ``read_mb_s`` of the large file (MiB per second, fsync included in
        the write), ``small_file_ms`` (median milliseconds to create one small file durably),
        ``small_file_ms_max``, ``big_mb``, ``small_files`` and ``verified`` (the file read back
        equals the one written).

    Raises:
        OSError: the folder cannot be written (read-only, full, no permission).
    """
    work = Path(folder) / f".nbutils-disk-check-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = os.urandom(big_bytes)  # incompressible, so no layer below can shrink it
        big = work / "big.bin"
        started = time.perf_counter()
        atomic.write_bytes(big, data)
        write_seconds = time.perf_counter() - started
        _drop_cache(big)
        read_seconds, digest = _read(big)
        small = []
        for i in range(small_files):
            started = time.perf_counter()
            atomic.write_bytes(work / f"small-{i:02d}.json", b"{}" + b" " * (SMALL_BYTES - 2))
            small.append(time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mb = big_bytes / 2**20
    return {
        "big_mb": mb,
        "write_mb_s": mb / max(write_seconds, 1e-9),
        "read_mb_s": mb / max(read_seconds, 1e-9),
        "small_files": small_files,
        "small_file_ms": 1000 * statistics.median(small) if small else None,
        "small_file_ms_max": 1000 * max(small) if small else None,
        "verified": digest == hashlib.sha256(data).hexdigest(),
    }
