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

Metadata is text from strangers. JSON is read with bounds (``jsonsafe.loads``: no 5,000-digit
integers, no 100,000-deep nesting); a description that is not text (an object, ``true``,
``NaN``) is refused with its line number instead of becoming a Python repr; lone surrogates
become U+FFFD; and a description longer than ``MAX_DESCRIPTION_CHARS`` is trimmed, with a note.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import posixpath
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from nbutils.core import jsonsafe
from nbutils.core.errors import UserError
from nbutils.tokenize.archive import normalize

JSONL, JSON, SIDECAR, TXT, DEFAULT, NONE = "metadata.jsonl", "metadata.json", "sidecar", "txt", "default", "none"
TEXT_KEYS = ("description", "text", "caption", "prompt")  # the first present is the main text
FOLDED = (("genre", "Genre"), ("moods", "Moods"), ("instrument", "Instrument"), ("bpm", "{} bpm"), ("key", "Key"))
LISTS = ("genre", "moods", "instrument")  # fields that may be a list of texts
MAX_DESCRIPTION_CHARS = 1000  # MusicGen reads at most 512 T5 tokens (~2,000 characters of English)


class Trimmed(str):
    """A description cut to ``MAX_DESCRIPTION_CHARS``; ``original`` is how long it was."""

    original: int = 0


def bound(text: str) -> str:
    """``text`` without lone surrogates, cut at a word boundary to ``MAX_DESCRIPTION_CHARS`` if longer.

    Returns:
        ``text`` itself, or a ``Trimmed`` string that remembers the original length (for the note).
    """
    text = jsonsafe.clean_text(text)
    if len(text) <= MAX_DESCRIPTION_CHARS:
        return text
    cut = text[:MAX_DESCRIPTION_CHARS]
    space = cut.rfind(" ", MAX_DESCRIPTION_CHARS - 100)
    trimmed = Trimmed(cut[:space] if space > 0 else cut)
    trimmed.original = len(text)
    return trimmed


class NotText(ValueError):
    """A description field holding something that is not text (an object, ``true``, ``NaN``)."""


def _kind(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"the number {value}"
    names = {dict: "a JSON object", list: "a JSON list", bool: f"{str(value).lower()}", int: "a number",
             float: "a number"}
    return names.get(type(value), type(value).__name__)


def _value(key: str, value: Any) -> str:
    """The text of one field; ``NotText`` for a value that only a Python repr could turn into text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if key in LISTS and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(v.strip() for v in value if v.strip())
    if key == "bpm" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(int(value)) if float(value).is_integer() else str(value)
    raise NotText(f'"{key}" is {_kind(value)}, not text')


def fold(record: dict[str, Any]) -> str:
    """One text from a record: its description plus genre / moods / instrument / bpm / key.

    >>> fold({"description": "lofi beat", "genre": "hip hop", "moods": ["calm", "warm"], "bpm": 85.0})
    'lofi beat. Genre: hip hop. Moods: calm, warm. 85 bpm'

    Raises:
        NotText: a description (or genre, bpm...) that is not text, e.g. ``{"description": true}``.
    """
    texts = [_value(k, record.get(k)) for k in TEXT_KEYS]
    main = next((t for t in texts if t), "")
    parts = [main.rstrip(".")] if main else []
    for key, label in FOLDED:
        value = _value(key, record.get(key))
        if value:
            parts.append(label.format(value) if "{}" in label else f"{label}: {value}")
    return bound(". ".join(parts))


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
            where = self.first.removeprefix(WHOLE_FILE + ", ")
            return f"not read at all ({where}: {self.reason}), none of its entries used"
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


def _json_error(err: ValueError) -> str:
    if not isinstance(err, json.JSONDecodeError):  # jsonsafe.LimitError: valid JSON, refused
        return f"refused: {err}"
    hint = " (JSON needs double quotes, no trailing commas)" if "double quotes" in err.msg else ""
    return f"not JSON: {err.msg} at column {err.colno}{hint}"


def _path_and_text(record: Any, keys: tuple[str, ...]) -> tuple[str, str]:
    """``(normalized path, folded text)`` of one record; ``ValueError`` says why it is unusable."""
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object {{...}}")
    path = next((record[k] for k in keys if record.get(k)), None)
    if not path:
        raise ValueError("no " + " or ".join(f'"{k}"' for k in keys))
    if not isinstance(path, str):
        raise NotText(f'"{keys[0]}" is {_kind(path)}, not text')
    return normalize(jsonsafe.clean_text(path)), fold(record)


def parse_jsonl(text: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``{path: text}`` from metadata.jsonl content, and the unusable lines as ``(line N, reason)``."""
    found, bad = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = jsonsafe.loads(line)
        except ValueError as err:  # not JSON, or refused (huge integer, too deep)
            bad.append((f"line {number}", _json_error(err)))
            continue
        try:
            path, folded = _path_and_text(record, ("path",))
        except ValueError as err:
            bad.append((f"line {number}", str(err)))
            continue
        found[path] = folded
    return found, bad


def _whole_file(text: str, err: ValueError) -> tuple[str, str]:
    """``(whole file, line N, reason)`` for a file that could not be read as JSON at all."""
    line = err.lineno if isinstance(err, json.JSONDecodeError) else text.count("\n", 0, getattr(err, "pos", 0)) + 1
    return f"{WHOLE_FILE}, line {line}", _json_error(err)


def parse_json_list(text: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``{path: text}`` from a metadata.json list of ``{"audio", "text"}``, and the unusable items
    as ``(item N, reason)`` (``(line N, reason)`` when the file is not JSON at all)."""
    try:
        items = jsonsafe.loads(text)
    except ValueError as err:
        return {}, [_whole_file(text, err)]
    if isinstance(items, dict):  # {"data": [...]} / {"items": [...]} wrappers are common
        items = next((v for v in items.values() if isinstance(v, list)), [])
    found, bad = {}, []
    for number, item in enumerate(items if isinstance(items, list) else [], 1):
        try:
            path, folded = _path_and_text(item, ("audio", "path"))
        except ValueError as err:
            bad.append((f"item {number}", str(err)))
            continue
        found[path] = folded
    return found, bad


def parse_sidecar(text: str) -> tuple[str, str]:
    """``(folded text, '')`` of an audiocraft-style sidecar ``.json``, or ``('', why it is unusable)``."""
    try:
        record = jsonsafe.loads(text)
    except ValueError as err:
        where, reason = _whole_file(text, err)
        return "", f"{where.removeprefix(WHOLE_FILE + ', ')}: {reason}"
    if not isinstance(record, dict):
        return "", f"a JSON {type(record).__name__}, not an object {{...}}"
    try:
        return fold(record), ""
    except NotText as err:
        return "", str(err)


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


def is_metadata_name(path: str) -> bool:
    """True for ``metadata.jsonl`` / ``metadata.json`` (any folder, any case)."""
    return posixpath.basename(path).lower() in (JSONL, JSON)


class Catalog:
    """Descriptions for the tracks of one ZIP, from every source, with per-source counts.

    The ZIP's text members are given one at a time (``add``) and parsed at once: only the
    descriptions stay in memory, never the files' contents.
    """

    def __init__(self, zip_name: str, outside: Outside, texts: dict[str, str] | None = None, default: str = ""):
        """Args:
            zip_name: File name of the ZIP (``archive_batch_0001.zip``).
            outside: Metadata beside the ZIPs / from ``--metadata``.
            texts: ``{normalized path: content}`` of text members to ``add`` now.
            default: The text for tracks no source describes.
        """
        self.default = bound(default.strip())
        self.counts: Counter = Counter()
        self.bad: list[BadLines] = []
        """The ZIP's metadata files with unusable lines (``file`` is the path inside the ZIP)."""
        self.notes: list[dict[str, str]] = []
        """Per-file notes for the ledger: unusable sidecars, trimmed descriptions."""
        self._inner = {JSONL: {}, JSON: {}}
        self._sidecars: dict[str, tuple[str, str]] = {}  # stem -> (text, source); .json wins over .txt
        self.tables = [
            (JSONL, _strip_zip_prefix(outside.jsonl, zip_name)),
            (JSONL, self._inner[JSONL]),
            (JSON, _strip_zip_prefix(outside.json_list, zip_name)),
            (JSON, self._inner[JSON]),
        ]
        for path, content in (texts or {}).items():
            self.add(path, content)

    def add(self, path: str, content: str) -> None:
        """Parse one text member: a metadata file, a ``<track>.json`` sidecar or a ``<track>.txt``."""
        base, folder = posixpath.basename(path), posixpath.dirname(path)
        stem, suffix = posixpath.splitext(path)
        if is_metadata_name(path):
            kind = JSONL if base.lower() == JSONL else JSON
            found, bad = (parse_jsonl if kind == JSONL else parse_json_list)(content)
            self.bad += _bad(path, bad)
            # Paths are relative to the ZIP root; a metadata file in a subfolder may also use
            # paths relative to its own folder.
            for key, text in found.items():
                self._inner[kind].setdefault(key, text)
                if folder:
                    self._inner[kind].setdefault(f"{folder}/{key}", text)
        elif suffix.lower() == ".json":
            text, problem = parse_sidecar(content)
            if problem:
                self.notes.append({"path": path, "reason": f"sidecar not used: {problem}"})
            elif text:
                self._sidecars[stem] = (text, SIDECAR)
        elif suffix.lower() == ".txt" and self._sidecars.get(stem, ("", TXT))[1] == TXT:
            text = bound(" ".join(content.split()))
            if text:
                self._sidecars[stem] = (text, TXT)

    @property
    def bad_lines(self) -> int:
        return sum(b.count for b in self.bad)

    def find(self, path: str) -> tuple[str, str]:
        """``(text, source)`` for the audio member at ``path`` (normalized), without counting."""
        for source, table in self.tables:
            text = table.get(path, "")
            if text.strip():
                return text, source
        found = self._sidecars.get(posixpath.splitext(path)[0])
        if found:
            return found
        return (self.default, DEFAULT) if self.default else ("", NONE)

    def lookup(self, path: str) -> tuple[str, str]:
        """``find`` and count the source (call once per track); a trimmed description gets a note."""
        text, source = self.find(path)
        self.counts[source] += 1
        if isinstance(text, Trimmed):
            self.notes.append({"path": path, "reason": f"description trimmed from {text.original:,} to "
                                                       f"{len(text):,} characters (limit {MAX_DESCRIPTION_CHARS:,})"})
        return str(text), source
