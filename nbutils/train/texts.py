"""The texts a run trains with: ``tokens/descriptions.jsonl``, and what changed since the run started.

Training reads every track's description from ``descriptions.jsonl`` (the user's edits included,
``nbutils.tokenize.descriptions``): editing a description never needs the audio encoded again.
A checkpoint records one digest per ZIP of those texts, and the run folder keeps the texts
themselves (``descriptions.json``, written when the run starts and when a change is accepted).

A run resumed after descriptions changed would silently train the rest of its steps on other
texts. So it stops and lists the changes (track by track, ``old -> new``), unless the user
starts a new run (another ``--out`` / ``RUN_NAME``) or confirms with
``accept_new_descriptions`` (``--accept-new-descriptions``; notebook 02: ``MORE_SETTINGS =
{"accept_new_descriptions": True}``): the run then continues with the new texts.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Callable

from nbutils.core import atomic
from nbutils.core.errors import UserError
from nbutils.tokenize import descriptions, shards

SNAPSHOT = "descriptions.json"
SHOWN = 10  # changed tracks listed in the message


def load(tokens_dir: str | Path, opened: list[shards.Shard]) -> dict[str, str]:
    """Give every segment its description from descriptions.jsonl; ``{<zip>/<path>: text}``."""
    return descriptions.apply(tokens_dir, opened)


def digests(texts: dict[str, str]) -> dict[str, str]:
    """``{zip: sha256 prefix}`` of the texts of each ZIP's tracks (what a checkpoint records)."""
    by_zip: dict[str, list[str]] = defaultdict(list)
    for key in sorted(texts):
        by_zip[key.split("/", 1)[0]].append(f"{key}\t{texts[key]}")
    return {z: hashlib.sha256("\n".join(lines).encode("utf-8", "backslashreplace")).hexdigest()[:16]
            for z, lines in sorted(by_zip.items())}


def write_snapshot(out: str | Path, texts: dict[str, str]) -> None:
    """Keep the run's texts beside its checkpoints, to list what changes later."""
    atomic.write_json(Path(out) / SNAPSHOT, {"digests": digests(texts), "texts": texts})


def _listed(old: dict[str, str], new: dict[str, str]) -> list[str]:
    lines = [f"  {key}: {old[key]!r} -> {new[key]!r}" for key in sorted(old.keys() & new.keys())
             if old[key] != new[key]]
    lines += [f"  {key}: new track {new[key]!r}" for key in sorted(new.keys() - old.keys())]
    lines += [f"  {key}: no longer there (was {old[key]!r})" for key in sorted(old.keys() - new.keys())]
    return lines


def changes(out: str | Path, saved: dict[str, str], texts: dict[str, str]) -> list[str]:
    """Human lines: each track whose text differs from the run's (or each ZIP, without a snapshot)."""
    current = digests(texts)
    snapshot = Path(out) / SNAPSHOT
    kept = atomic.read_json(snapshot) if snapshot.exists() else {}
    if kept.get("digests") == saved:
        return _listed(kept.get("texts", {}), texts)
    zips = sorted(z for z in saved.keys() | current.keys() if saved.get(z) != current.get(z))
    return [f"  {z}: descriptions changed (the run folder has no copy of the old ones to compare)" for z in zips]


def check(saved: dict[str, str] | None, texts: dict[str, str], out: str | Path, *, accept: bool,
          log: Callable[[str], None], writer: bool = True) -> list[str]:
    """Compare the checkpoint's digests with the texts now; refuse a change unless ``accept``.

    Args:
        saved: The digests in the checkpoint (None for checkpoints made before this was recorded).
        texts: The texts now (``load``).
        out: The run folder.
        accept: The user confirmed (``accept_new_descriptions``): continue with the new texts.
        log: Where the list of accepted changes goes.
        writer: This process writes files (the main process).

    Returns:
        The change lines (empty when nothing changed).

    Raises:
        UserError: descriptions changed and ``accept`` is False; the message lists them.
    """
    if saved is None or saved == digests(texts):
        return []
    lines = changes(out, saved, texts)
    shown = lines[:SHOWN] + ([f"  ... and {len(lines) - SHOWN} more"] if len(lines) > SHOWN else [])
    if not accept:
        raise UserError(
            f"The descriptions this run trains with changed since it was saved ({len(lines)} change(s) in "
            f"{descriptions.FILE}):\n" + "\n".join(shown) + "\nTo continue this run with the new descriptions, "
            "confirm with accept_new_descriptions=True (command line: --accept-new-descriptions; notebook 02: "
            "MORE_SETTINGS = {\"accept_new_descriptions\": True}). To train on them from the start, use a new run "
            f"folder (--out, or RUN_NAME in the notebook). To keep training as before, undo the edits in the "
            f"token folder's {descriptions.FILE}."
        )
    log(f"Continuing with {len(lines)} changed description(s) (accept_new_descriptions):")
    for line in shown:
        log(line)
    if writer:
        write_snapshot(out, texts)
    return lines

