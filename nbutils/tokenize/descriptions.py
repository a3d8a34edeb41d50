"""``tokens/descriptions.jsonl``: every track's description, one line per track, for the user to edit.

Each line is one JSON object::

    {"zip": "archive_batch_0001.zip", "path": "album/track.mp3", "description": "mytrigger, jazz, relaxing,
     piano, 92 bpm, Bb major", "source": "auto", "bpm": 92.3, "key": "Bb major",
     "tags": {"genre": [["jazz", 0.41], ...], "mood": [...], "instrument": [...]}, "edited": false}

``source`` is where the text came from: ``metadata.jsonl``, ``metadata.json``, ``sidecar``, ``txt``,
``auto``, ``default`` (the default description alone) or ``none`` (no text at all).

**Where the truth lives.** What tokenization made for a ZIP is stored in that ZIP's shard index
(its ``tracks`` table and ``analysis``), written atomically with the shard: a kill mid-ZIP leaves
the previous index or none, never half of one. ``descriptions.jsonl`` is those rows merged with the
user's edits, rewritten atomically (``sync``) at the end of every tokenize run (and every 15
minutes during a long one: rewriting it after every ZIP would write the whole table again per
ZIP), and read the same way (``rows``) by training, the notebook's editor and evaluation, so a
run killed before its sync loses nothing: its ZIPs' rows are in their shards.

**Edits are kept.** A line whose description, bpm, key or tags differ from what tokenization made
is an edit (``edited`` is set when the file is next written), whoever made it: a text editor, the
notebook's table, a script. An edit always wins over the generated row, survives every later
tokenize run, and needs no re-encoding: training reads the texts from here. When a ZIP is
encoded again (it changed), its edited lines are marked first (``protect``) and kept; its other
lines are replaced by the new ones. To go back to the automatic text, delete the line.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from nbutils.core import atomic, faults, jsonsafe
from nbutils.core.errors import UserError
from nbutils.tokenize import metadata, shards
from nbutils.tokenize.tags import CATEGORIES

FILE = "descriptions.jsonl"
FIELDS = ("zip", "path", "description", "source", "bpm", "key", "tags", "edited")
USER_FIELDS = ("description", "bpm", "key", "tags")  # a line differing from the generated one here is an edit
MAX_LISTED = 5


def path_of(tokens_dir: str | os.PathLike) -> Path:
    return Path(tokens_dir) / FILE


def key_of(row: dict[str, Any]) -> str:
    """A row's name: ``<zip>/<path>`` (the track id tokenize gives the track's segments)."""
    return f"{row['zip']}/{row['path']}"


def _empty_tags() -> dict[str, list]:
    return {c: [] for c in CATEGORIES}


def _row(zip_name: str, segment: shards.Segment, measured: dict[str, Any]) -> dict[str, Any]:
    return {"zip": zip_name, "path": segment.path, "description": segment.description, "source": segment.source,
            "bpm": measured.get("bpm"), "key": measured.get("key"), "tags": measured.get("tags") or _empty_tags(),
            "edited": False}


def zip_of(meta: dict[str, Any], stem: str) -> str:
    """The ZIP a shard was made from (shards written outside tokenize may not say: ``<stem>.zip``)."""
    return str(meta.get("zip") or f"{stem}.zip")


def shard_rows(meta: dict[str, Any], segments: Iterable[shards.Segment], stem: str) -> list[dict[str, Any]]:
    """One generated row per track of a shard, in ZIP order."""
    zip_name = zip_of(meta, stem)
    measured = meta.get("analysis", {})
    rows: dict[str, dict[str, Any]] = {}
    for segment in segments:
        key = f"{zip_name}/{segment.path}"
        if key not in rows:
            rows[key] = _row(zip_name, segment, measured.get(key, {}))
    return list(rows.values())


def generated(opened: Iterable[shards.Shard]) -> list[dict[str, Any]]:
    """The rows tokenization made, from opened shards."""
    return [row for shard in opened for row in shard_rows(shard.meta, shard.segments, shard.index_path.stem)]


def _committed(tokens_dir: str | os.PathLike) -> list[shards.Shard]:
    opened = []
    for index in shards.list_shards(tokens_dir):
        try:
            opened.append(shards.open_shard(index))
        except (UserError, OSError, ValueError):
            continue  # incomplete: its ZIP is not done, it has no rows yet
    return opened


# ---------------------------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Table:
    """The lines of descriptions.jsonl: usable rows by track id, and the unusable lines."""

    rows: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    bad: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    """``(line number, why)`` of lines that are not a usable row."""
    text: str = ""


def _problem(record: Any) -> str:
    """Why a parsed line is not a usable row ('' when it is)."""
    if not isinstance(record, dict):
        return "not a JSON object {...}"
    for name in ("zip", "path", "description"):
        if not isinstance(record.get(name), str):
            return f'"{name}" is missing or not text'
    bpm = record.get("bpm")
    if bpm is not None and (isinstance(bpm, bool) or not isinstance(bpm, (int, float))):
        return '"bpm" is not a number or null'
    if record.get("key") is not None and not isinstance(record["key"], str):
        return '"key" is not text or null'
    if not isinstance(record.get("tags", {}), dict) or not isinstance(record.get("edited", False), bool):
        return '"tags" must be an object and "edited" true or false'
    return ""


def read(tokens_dir: str | os.PathLike) -> Table:
    """Parse descriptions.jsonl (an absent file is an empty table)."""
    path = path_of(tokens_dir)
    table = Table()
    if not path.exists():
        return table
    table.text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(table.text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = jsonsafe.loads(line)
        except ValueError as err:
            table.bad.append((number, f"not JSON ({err})"))
            continue
        problem = _problem(record)
        if problem:
            table.bad.append((number, problem))
        else:
            table.rows[key_of(record)] = record
    return table


def bad_lines_message(tokens_dir: str | os.PathLike, bad: list[tuple[int, str]]) -> str:
    where = "; ".join(f"line {n}: {why}" for n, why in bad[:MAX_LISTED])
    more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
    return (f"{path_of(tokens_dir)} has {len(bad)} unusable line(s): {where}{more}. Fix them (each line is one JSON "
            "object with zip, path and description) or delete them: a deleted line's track gets its automatic "
            "description back.")


def _write(tokens_dir: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    text = "".join(jsonsafe.dumps(_ordered(row)) + "\n" for row in rows)
    with atomic.atomic_path(path_of(tokens_dir)) as tmp, open(tmp, "wb") as fh:
        fh.write(jsonsafe.encode(text))
        faults.point("mid-descriptions", torn=fh)  # crash tests only: die with half the file in the temp file


def _ordered(row: dict[str, Any]) -> dict[str, Any]:
    return {**{k: row.get(k) for k in FIELDS}, **{k: v for k, v in row.items() if k not in FIELDS}}


# ---------------------------------------------------------------------------------------------
# Generated rows + the user's edits
# ---------------------------------------------------------------------------------------------


def _is_edit(line: dict[str, Any], made: dict[str, Any]) -> bool:
    return bool(line.get("edited")) or any(line.get(f, made.get(f)) != made.get(f) for f in USER_FIELDS)


def merge(made: list[dict[str, Any]], table: Table) -> list[dict[str, Any]]:
    """Generated rows with the user's edits in place, then edited lines whose track is not tokenized (now)."""
    out, seen = [], set()
    for row in made:
        key = key_of(row)
        seen.add(key)
        line = table.rows.get(key)
        out.append({**line, "edited": True} if line is not None and _is_edit(line, row) else row)
    out += [line for key, line in table.rows.items() if key not in seen and line.get("edited")]
    return out


def rows(tokens_dir: str | os.PathLike, opened: Iterable[shards.Shard] | None = None) -> list[dict[str, Any]]:
    """Every track's row as training will read it: generated rows with the user's edits.

    Raises:
        UserError: descriptions.jsonl has lines that cannot be read (they may be edits).
    """
    table = read(tokens_dir)
    if table.bad:
        raise UserError(bad_lines_message(tokens_dir, table.bad))
    return merge(generated(_committed(tokens_dir) if opened is None else opened), table)


def sync(tokens_dir: str | os.PathLike) -> dict[str, Any]:
    """Rewrite descriptions.jsonl (atomically, only when it changes) from the shards and the edits.

    A file with unusable lines is left as it is (they may be the user's edits), with a warning.

    Returns:
        ``{"file", "tracks", "auto", "edited", "warning"}``.
    """
    table = read(tokens_dir)
    path = path_of(tokens_dir)
    if table.bad:
        return {"file": str(path), "tracks": len(table.rows), "auto": 0, "edited": 0,
                "warning": bad_lines_message(tokens_dir, table.bad) + " It was left unchanged."}
    merged = merge(generated(_committed(tokens_dir)), table)
    text = "".join(jsonsafe.dumps(_ordered(row)) + "\n" for row in merged)
    if text != table.text:
        _write(tokens_dir, merged)
    return {"file": str(path), "tracks": len(merged), "auto": sum(r.get("source") == "auto" for r in merged),
            "edited": sum(bool(r.get("edited")) for r in merged), "warning": ""}


def protect(tokens_dir: str | os.PathLike, index_path: str | os.PathLike) -> None:
    """Before a committed shard is replaced: mark its ZIP's edited lines, drop its other lines.

    After this, any line of that ZIP which differs from the new shard's rows is an edit, so the
    new automatic rows replace the old ones and every edit stays.
    """
    table = read(tokens_dir)
    if not table.rows or table.bad:
        return  # nothing to protect, or lines that sync will not rewrite anyway
    try:
        meta, segments = shards.read_segments(index_path)
    except (OSError, ValueError, UserError):
        return
    made = {key_of(r): r for r in shard_rows(meta, segments, Path(index_path).stem)}
    changed = False
    for key, line in list(table.rows.items()):
        if key not in made:
            continue
        if _is_edit(line, made[key]):
            changed |= not line.get("edited")
            line["edited"] = True
        else:
            del table.rows[key]
            changed = True
    if changed:
        _write(tokens_dir, list(table.rows.values()))


def save_edits(tokens_dir: str | os.PathLike, edits: dict[str, str]) -> int:
    """Set the descriptions of some tracks (``{track id: text}``) and write the file; returns how many changed.

    Raises:
        UserError: a track id that is not in the table, or unusable lines in the file.
    """
    current = rows(tokens_dir)
    by_key = {key_of(r): r for r in current}
    unknown = [k for k in edits if k not in by_key]
    if unknown:
        raise UserError(f"No track {unknown[0]!r} in {path_of(tokens_dir)}; tracks are named <zip>/<path>.")
    changed = 0
    for key, text in edits.items():
        row = by_key[key]
        text = str(metadata.bound(" ".join(str(text).split())))
        if text != row["description"]:
            row.update(description=text, edited=True)
            changed += 1
    if changed:
        _write(tokens_dir, current)
    return changed


def texts(tokens_dir: str | os.PathLike, opened: list[shards.Shard]) -> dict[str, str]:
    """``{track id: description}`` for training, from the merged rows (edits included)."""
    return {key_of(r): str(metadata.bound(r["description"])) for r in rows(tokens_dir, opened)}


def apply(tokens_dir: str | os.PathLike, opened: list[shards.Shard]) -> dict[str, str]:
    """Give every segment of ``opened`` its track's description from descriptions.jsonl; returns the texts."""
    found = texts(tokens_dir, opened)
    for shard in opened:
        zip_name = zip_of(shard.meta, shard.index_path.stem)
        for segment in shard.segments:
            segment.description = found.get(f"{zip_name}/{segment.path}", segment.description)
    return found


def summary(all_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts for people: tracks, sources, edited lines."""
    return {"tracks": len(all_rows), "sources": dict(Counter(r.get("source") for r in all_rows)),
            "edited": sum(bool(r.get("edited")) for r in all_rows)}
