"""JSON that survives hostile text: writing any Python string, reading with bounds.

Writing. ``json.dumps(..., ensure_ascii=False)`` keeps non-ASCII text readable, but a Python
string may hold lone surrogates (the valid JSON escape ``"\\ud800"`` in a user's metadata, or a
command-line argument that was not UTF-8, which Python decodes with ``surrogateescape``), and a
strict UTF-8 encode of those fails. ``encode`` writes them as the JSON escape ``\\udXXX``
instead; reading the file gives back the same string.

Reading. A metadata line is text from a stranger: ``loads`` refuses integers with more than
``MAX_DIGITS`` digits (Python's own limit raises a bare ``ValueError`` at 4,300) and nesting
deeper than ``MAX_DEPTH`` (a 100,000-deep list raises ``RecursionError``), as ``LimitError``,
a ``ValueError`` whose message says what was wrong.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DIGITS = 100  # no real metadata number (duration, bpm, sample rate) needs more digits
MAX_DEPTH = 64  # metadata records are 1-3 levels deep
_SURROGATE = re.compile("[\ud800-\udfff]")
_STRING = r'"(?:[^"\\]|\\.)*"'  # matched first, so brackets and digits inside strings are skipped
_BRACKETS = re.compile(_STRING + r"|[\[\]{}]", re.S)
_LONG_INT = re.compile(_STRING + r"|-?\d{%d,}" % (MAX_DIGITS + 1), re.S)


class LimitError(ValueError):
    """Valid JSON this package refuses to read: a huge integer, or nesting too deep.

    ``pos`` is the offset in the text where the problem starts (as ``JSONDecodeError.pos``).
    """

    def __init__(self, message: str, pos: int = 0):
        super().__init__(message)
        self.pos = pos


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` with readable non-ASCII text; anything unknown is written as ``str()``."""
    return json.dumps(obj, ensure_ascii=False, default=str, **kwargs)


def encode(text: str) -> bytes:
    """UTF-8 bytes of JSON text; lone surrogates become the JSON escape ``\\udXXX``.

    Outside strings JSON text is ASCII, so a surrogate can only sit inside a string, where
    Python's ``backslashreplace`` spelling (``\\ud800``) is exactly JSON's escape of it.
    """
    return text.encode("utf-8", errors="backslashreplace")


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (for text a tokenizer will see)."""
    return _SURROGATE.sub("\ufffd", text)


def too_deep(text: str, limit: int = MAX_DEPTH) -> int | None:
    """Where JSON text first nests deeper than ``limit`` (an offset), or None.

    Brackets inside strings do not count.
    """
    level = 0
    for match in _BRACKETS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            level += 1
            if level > limit:
                return match.start()
        elif token in ("]", "}"):
            level -= 1
    return None


def _int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_DIGITS:
        raise LimitError(f"an integer with {len(digits.lstrip('-'))} digits (more than {MAX_DIGITS})")
    return int(digits)


def _long_int_at(text: str) -> int:
    return next((m.start() for m in _LONG_INT.finditer(text) if not m.group().startswith('"')), 0)


def loads(text: str) -> Any:
    """``json.loads`` with bounds on integer size and nesting depth.

    Raises:
        json.JSONDecodeError: not JSON.
        LimitError: an integer longer than ``MAX_DIGITS`` digits, or nesting deeper than ``MAX_DEPTH``.
    """
    # The exact depth costs a regex pass: only text with that many brackets can be too deep.
    deep = too_deep(text) if text.count("[") + text.count("{") > MAX_DEPTH else None
    if deep is not None:
        raise LimitError(f"nested deeper than {MAX_DEPTH} levels", deep)
    try:
        return json.loads(text, parse_int=_int)
    except LimitError as err:
        raise LimitError(str(err), _long_int_at(text)) from None
    except RecursionError:  # brackets after an unterminated string escape the count, yet may recurse first
        raise LimitError(f"nested deeper than {MAX_DEPTH} levels") from None
