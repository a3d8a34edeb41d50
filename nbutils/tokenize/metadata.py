"""Find the text each track is trained with, and say where it came from.

Sources, in order of precedence (the first one with a non-empty text wins):

1. ``metadata.jsonl``: one ``{"path", "duration", "sample_rate", "description"}`` per line,
   ``path`` relative to the ZIP root. Read from ``--metadata FILE``, else from beside the ZIPs
   (where a path may also start with the ZIP's name, ``archive_batch_0001.zip/x.mp3``), else
   from inside the ZIP;
2. ``metadata.json``: a list of ``{"audio", "text"}`` (beside the ZIPs or inside one);
3. an audiocraft-style sidecar ``<track>.json`` next to the audio (``description``, with
   ``genre``, ``moods``, ``instrument``, ``bpm`` and ``key`` folded into the text);
4. a ``<track>.txt`` next to the audio;
5. ``--default-description`` (a trigger word, for example) for everything else.

``Catalog.lookup`` also counts how many tracks got their text from each source, so a user whose
``metadata.jsonl`` paths do not match the ZIP sees it in the summary instead of training on
the default text by accident.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from nbutils.core.errors import UserError
from nbutils.tokenize.archive import normalize

JSONL, JSON, SIDECAR, TXT, DEFAULT, NONE = "metadata.jsonl", "metadata.json", "sidecar", "txt", "default", "none"
TEXT_KEYS = ("description", "text", "caption", "prompt")  # the first present is the main text
FOLDED = (("genre", "Genre"), ("moods", "Moods"), ("instrument", "Instrument"), ("bpm", "{} bpm"), ("key", "Key"))


def _value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v).strip() for v in value if str(v).strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip() if value is not None else ""


def fold(record: dict[str, Any]) -> str:
    """One text from a record: its description plus genre / moods / instrument / bpm / key.

    >>> fold({"description": "lofi beat", "genre": "hip hop", "moods": ["calm", "warm"], "bpm": 85.0})
    'lofi beat. Genre: hip hop. Moods: calm, warm. 85 bpm'
    """
    main = next((_value(record[k]) for k in TEXT_KEYS if _value(record.get(k))), "")
    parts = [main.rstrip(".")] if main else []
    for key, label in FOLDED:
        value = _value(record.get(key))
        if value:
            parts.append(label.format(value) if "{}" in label else f"{label}: {value}")
    return ". ".join(parts)


WHOLE_FILE = "whole file"  # BadLines.first of a metadata.json that is not JSON: none of its entries count


@dataclasses.dataclass
class BadLines:
    """The unusable lines of one metadata file (their tracks get their text from another source)."""

    file: str
    """The metadata file (a path, or ``<zip>/<member>`` inside a ZIP)."""
    count: int
    """Unusable lines (metadata.jsonl) or items (metadata.json)."""
    first: str
    """Where the first one is: ``line 3`` (``item 3`` in a metadata.json list)."""
    reason: str
    """Why the first one is unusable."""

    def short(self) -> str:
        """``2 unusable lines skipped (first: line 3: ...)``, or that the whole file was not read."""
        if self.first.startswith(WHOLE_FILE):
            return f"not read at all ({self.first.removeprefix(WHOLE_FILE + ', ')}: {self.reason}), none of its entries used"
        unit = ("item" if self.first.startswith("item") else "line") + ("s" if self.count != 1 else "")
        return f"{self.count} unusable {unit} skipped (first: {self.first}: {self.reason})"

    def message(self) -> str:
        """The warning shown to the user: what is wrong, and what to do."""
        return (f"{self.file}: {self.short()}. The tracks they describe get another description (sidecar, "
                "default...). Fix the file before the ZIPs are done: ZIPs recorded done keep their texts.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _bad(file: str, problems: list[tuple[str, str]]) -> list[BadLines]:
    """``[BadLines]`` for a file with unusable lines, ``[]`` for a clean one."""
    return [BadLines(file, len(problems), *problems[0])] if problems else []


def _json_error(err: json.JSONDecodeError) -> str:
    hint = " (JSON needs double quotes, no trailing commas)" if "double quotes" in err.msg else ""
    return f"not JSON: {err.msg} at column {err.colno}{hint}"


def parse_jsonl(text: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``{path: text}`` from metadata.jsonl content, and the unusable lines as ``(line N, reason)``."""
    found, bad = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            bad.append((f"line {number}", _json_error(err)))
            continue
        if not isinstance(record, dict):
            bad.append((f"line {number}", f"a JSON {type(record).__name__}, not an object {{...}}"))
        elif not record.get("path"):
            bad.append((f"line {number}", 'no "path"'))
        else:
            found[normalize(str(record["path"]))] = fold(record)
    return found, bad


def parse_json_list(text: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``{path: text}`` from a metadata.json list of ``{"audio", "text"}``, and the unusable items
    as ``(item N, reason)`` (``(line N, reason)`` when the file is not JSON at all)."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        return {}, [(f"{WHOLE_FILE}, line {err.lineno}", _json_error(err))]
    if isinstance(items, dict):  # {"data": [...]} / {"items": [...]} wrappers are common
        items = next((v for v in items.values() if isinstance(v, list)), [])
    found, bad = {}, []
    for number, item in enumerate(items if isinstance(items, list) else [], 1):
        path = (item.get("audio") or item.get("path")) if isinstance(item, dict) else None
        if not path:
            bad.append((f"item {number}", 'no "audio" or "path"'))
            continue
        found[normalize(str(path))] = fold(item)
    return found, bad


def parse_sidecar(text: str) -> str:
    """The folded text of an audiocraft-style sidecar ``.json`` ('' if unusable)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return ""
    return fold(record) if isinstance(record, dict) else ""


class Outside:
    """The metadata files beside the ZIPs (or given with ``--metadata``), read once per run."""

    def __init__(self, jsonl: dict[str, str] | None = None, json_list: dict[str, str] | None = None,
                 files: Iterable[str] = (), bad: Iterable[BadLines] = ()):
        self.jsonl = jsonl or {}
        self.json_list = json_list or {}
        self.files = list(files)
        self.bad = list(bad)
        """The files with unusable lines (one ``BadLines`` each), to report before any ZIP is done."""

    @property
    def bad_lines(self) -> int:
        return sum(b.count for b in self.bad)

    @classmethod
    def load(cls, zips_dir: str | os.PathLike, metadata_file: str | os.PathLike | None = None) -> "Outside":
        """Read ``metadata_file`` if given (``UserError`` if missing), else the files beside the ZIPs."""
        if metadata_file:
            path = Path(metadata_file)
            if not path.is_file():
                raise UserError(f"Metadata file {path} does not exist. Fix --metadata (or leave it empty to "
                                "use metadata.jsonl beside the ZIPs).")
            candidates = [path]
        else:
            candidates = [Path(zips_dir) / JSONL, Path(zips_dir) / JSON]
        outside = cls()
        for path in candidates:
            if not path.is_file():
                continue
            text = path.read_text(encoding="utf-8-sig", errors="replace")
            is_list = path.suffix == ".json" or text.lstrip().startswith("[")
            found, bad = parse_json_list(text) if is_list else parse_jsonl(text)
            (outside.json_list if is_list else outside.jsonl).update(found)
            outside.files.append(str(path))
            outside.bad += _bad(str(path), bad)
        return outside

    def __len__(self) -> int:
        return len(self.jsonl) + len(self.json_list)


def _strip_zip_prefix(table: dict[str, str], zip_name: str) -> dict[str, str]:
    """Entries for this ZIP: paths as given, overridden by ``<zip name or stem>/path`` entries."""
    stem = zip_name[:-4] if zip_name.lower().endswith(".zip") else zip_name
    own = dict(table)
    for prefix in (f"{stem}/", f"{zip_name}/"):
        own.update({k[len(prefix):]: v for k, v in table.items() if k.startswith(prefix)})
    return own


class Catalog:
    """Descriptions for the tracks of one ZIP, from every source, with per-source counts."""

    def __init__(self, zip_name: str, outside: Outside, texts: dict[str, str], default: str = ""):
        """Args:
            zip_name: File name of the ZIP (``archive_batch_0001.zip``).
            outside: Metadata beside the ZIPs / from ``--metadata``.
            texts: ``{normalized path: content}`` of the ZIP's text members.
            default: The text for tracks no source describes.
        """
        self.default = default.strip()
        self.counts: Counter = Counter()
        self.bad: list[BadLines] = []
        """The ZIP's metadata files with unusable lines (``file`` is the path inside the ZIP)."""
        inner_jsonl: dict[str, str] = {}
        inner_json: dict[str, str] = {}
        for path, content in texts.items():
            base, folder = posixpath.basename(path), posixpath.dirname(path)
            if base.lower() not in (JSONL, JSON):
                continue
            found, bad = (parse_jsonl if base.lower() == JSONL else parse_json_list)(content)
            self.bad += _bad(path, bad)
            target = inner_jsonl if base.lower() == JSONL else inner_json
            # Paths are relative to the ZIP root; a metadata file in a subfolder may also use
            # paths relative to its own folder.
            for key, text in found.items():
                target.setdefault(key, text)
                if folder:
                    target.setdefault(f"{folder}/{key}", text)
        self.tables = [
            (JSONL, _strip_zip_prefix(outside.jsonl, zip_name)),
            (JSONL, inner_jsonl),
            (JSON, _strip_zip_prefix(outside.json_list, zip_name)),
            (JSON, inner_json),
        ]
        self.texts = texts

    @property
    def bad_lines(self) -> int:
        return sum(b.count for b in self.bad)

    def _sidecar(self, path: str, suffix: str) -> str:
        stem = posixpath.splitext(path)[0]
        content = self.texts.get(stem + suffix)
        if content is None:
            return ""
        return parse_sidecar(content) if suffix == ".json" else " ".join(content.split())

    def find(self, path: str) -> tuple[str, str]:
        """``(text, source)`` for the audio member at ``path`` (normalized), without counting."""
        for source, table in self.tables:
            text = table.get(path, "").strip()
            if text:
                return text, source
        for source, suffix in ((SIDECAR, ".json"), (TXT, ".txt")):
            text = self._sidecar(path, suffix)
            if text:
                return text, source
        return (self.default, DEFAULT) if self.default else ("", NONE)

    def lookup(self, path: str) -> tuple[str, str]:
        """``find`` and count the source (call once per track)."""
        text, source = self.find(path)
        self.counts[source] += 1
        return text, source

