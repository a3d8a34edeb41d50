"""Stage configurations: dataclasses with a help text per field, strict loading, hashing.

Every stage (tokenize, train, generate, evaluate) describes its settings as one dataclass whose
fields carry ``metadata={"help": ...}``. This module turns such a class into CLI options,
builds it from a dict while refusing unknown keys (a typo must not be silently ignored), and
hashes the fields that change what a stage produces, so a re-run can tell whether it may
continue the earlier work.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

from nbutils.core.errors import UserError

T = TypeVar("T")


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a default and a help text (shown by ``--help`` and in docs).

    Args:
        default: The default value; lists are copied per instance.
        help: One sentence a user can act on, with units.
        **kwargs: Extra metadata: ``cli=False`` hides the field from the command line,
            ``flag="--name"`` overrides the option name.
    """
    metadata = {"help": help, **kwargs}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def from_dict(cls: type[T], values: dict[str, Any], *, what: str | None = None) -> T:
    """Build ``cls`` from ``values``; an unknown key is a ``UserError`` naming it and a close match."""
    known = field_names(cls)
    for key in values:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
            raise UserError(
                f"Unknown {what or cls.__name__} setting '{key}'.{did_you_mean} "
                f"Valid settings: {', '.join(known)}."
            )
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-JSON dict of a config dataclass (Paths become strings)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def config_hash(config: Any, keys: Iterable[str] | None = None) -> str:
    """Short sha256 over the chosen fields (all by default), stable across runs and machines.

    Args:
        config: A config dataclass, or a plain dict of settings (tokenize's code settings).
        keys: The fields that count; None: all of them.
    """
    values = json.loads(json.dumps(config, default=str)) if isinstance(config, dict) else to_dict(config)
    if keys is not None:
        values = {k: values[k] for k in keys}
    blob = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def differences(old: dict[str, Any], new: dict[str, Any], keys: Iterable[str]) -> list[str]:
    """Human lines ``key: old -> new`` for the keys whose values differ."""
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)
    ]


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _shown(default: Any) -> str:
    """A default as a user would type it: ``demo_out``, not ``PosixPath('demo_out')``."""
    return repr(str(default)) if isinstance(default, Path) else repr(default)


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: Iterable[str] = ()) -> None:
    """Add one ``--kebab-case`` option per field of ``cls`` (defaults stay in the dataclass).

    Options default to ``argparse.SUPPRESS`` so that ``from_args`` only sees what the user typed
    and the dataclass stays the single source of defaults.
    """
    hints = typing.get_type_hints(cls)
    skip = set(skip)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        tp, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {_shown(default)})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            parser.add_argument(flag, type=item, action="append", **kwargs)
        elif tp in (int, float, str):
            parser.add_argument(flag, type=tp, **kwargs)
        elif tp is Path:
            parser.add_argument(flag, type=Path, **kwargs)
        else:
            parser.add_argument(flag, type=str, **kwargs)


def from_args(cls: type[T], namespace: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from the options the user gave (plus ``overrides``)."""
    names = set(field_names(cls))
    values = {k: v for k, v in vars(namespace).items() if k in names}
    values.update(overrides)
    return from_dict(cls, values)
