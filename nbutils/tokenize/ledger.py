"""The tokenize ledger: one JSON line per ZIP attempt in ``tokens/ledger.jsonl``.

A ZIP is done only when all of these hold: its latest ledger record says ``done``, with this
run's config hash and the ZIP's current size, and its shard is committed (index present, codes
of the recorded size). The ledger line is written last, after the shard is safe, and lines are
appended with fsync; a line torn by a kill is skipped by readers. So a run killed at any
moment (mid-codes, between the shard's files, mid-line) leaves nothing that reads as done, and
the next run simply encodes that ZIP again.

Failed ZIPs (corrupt, truncated) are recorded too, with the reason; an identical re-run skips
them while the ZIP file is unchanged, since it would fail the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nbutils.core import atomic, faults, jsonsafe
from nbutils.tokenize import shards

LEDGER_FILE = "ledger.jsonl"
DONE, FAILED = "done", "failed"


def path_of(tokens_dir: str | os.PathLike) -> Path:
    return Path(tokens_dir) / LEDGER_FILE


def append(tokens_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record (fsynced); any text in it survives (lone surrogates are escaped)."""
    line = jsonsafe.dumps(record)
    if faults.armed("mid-ledger"):  # crash tests: die with half of this line on disk
        path = path_of(tokens_dir)
        with open(path, "ab") as fh:
            start = fh.tell()
            fh.write(jsonsafe.encode(line))
            faults.kill(torn=fh, since=start)
    atomic.append_line(path_of(tokens_dir), line)


def records(tokens_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every readable record, oldest first (torn or corrupt lines are skipped)."""
    return [r for r in atomic.read_jsonl(path_of(tokens_dir)) if isinstance(r.get("zip"), str)]


def latest(tokens_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The latest record of each ZIP, by ZIP file name."""
    out: dict[str, dict[str, Any]] = {}
    for record in records(tokens_dir):
        out[record["zip"]] = record
    return out


def shard_index(tokens_dir: str | os.PathLike, zip_path: str | os.PathLike) -> Path:
    """Where the shard of a ZIP is committed (``shards/<zip stem>.json``)."""
    return shards.shard_dir(tokens_dir) / f"{Path(zip_path).stem}.json"


def is_done(record: dict[str, Any] | None, tokens_dir: str | os.PathLike, zip_path: str | os.PathLike,
            config_hash: str) -> bool:
    """True if ``zip_path`` needs no work: recorded done, same settings, same ZIP, shard intact."""
    if not record or record.get("status") != DONE or record.get("config_hash") != config_hash:
        return False
    if record.get("zip_bytes") != Path(zip_path).stat().st_size:
        return False
    return shards.is_complete(shard_index(tokens_dir, zip_path))


def failed_before(record: dict[str, Any] | None, zip_path: str | os.PathLike, config_hash: str) -> bool:
    """True if the ZIP failed as a whole last time and has not changed since."""
    return bool(
        record
        and record.get("status") == FAILED
        and record.get("config_hash") == config_hash
        and record.get("zip_bytes") == Path(zip_path).stat().st_size
    )
