"""Stage configurations: dataclasses with a help text per field, strict loading, hashing.

Every stage (tokenize, train, generate, evaluate) describes its settings as one dataclass whose
fields carry ``metadata={"help": ...}``. This module turns such a class into CLI options,
builds it from a dict while refusing unknown keys (a typo must not be silently ignored), and
hashes the fields that change what a stage produces, so a re-run can tell whether it may
continue the earlier work.

A field may hold another config (``nested``: generation's ``sampling`` is a ``SamplingConfig``).
Its fields keep flat names everywhere a user types them -- ``--guidance-scale`` on the command
line, ``guidance_scale=`` in a notebook, a flat key in a saved record -- while the code reads
``cfg.sampling.guidance_scale``. A renamed field lists its old names (``aliases``): they are
accepted, with a FutureWarning, for one release.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import types
import typing
import warnings
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
            ``flag="--name"`` overrides the option name, ``aliases=("old_name",)`` are names the
            field had before (accepted for one release, with a FutureWarning).
    """
    metadata = {"help": help, **kwargs}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def nested(cls: type, help: str) -> Any:
    """A field holding another config dataclass ``cls`` (its defaults by default).

    Its fields are set by their own flat names (``--guidance-scale``, ``guidance_scale=``), or as
    a whole (``sampling=SamplingConfig(...)`` or a dict).
    """
    return dataclasses.field(default_factory=cls, metadata={"help": help, "nested": cls})


def require(what: str, checks: Iterable[tuple[bool, str]]) -> None:
    """Raise ``UserError("Invalid <what> setting: <message>.")`` for the first check that is False.

    Every stage config calls this from ``__post_init__``, so a bad value stops before any model loads.
    """
    for ok, message in checks:
        if not ok:
            raise UserError(f"Invalid {what} setting: {message}.")


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def nested_fields(cls: type) -> dict[str, type]:
    """``{field name: config class}`` of the fields made with ``nested``."""
    return {f.name: f.metadata["nested"] for f in dataclasses.fields(cls) if "nested" in f.metadata}


def setting_names(cls: type) -> list[str]:
    """Every name a user may set: the fields, with each nested config's fields in place of its own name."""
    names = []
    for f in dataclasses.fields(cls):
        inner = f.metadata.get("nested")
        names += setting_names(inner) if inner else [f.name]
    if len(set(names)) != len(names):
        raise TypeError(f"{cls.__name__}: a nested config's field has the name of another field")
    return names


def _renamed(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with old field names (``aliases``) replaced by the new ones, each with a FutureWarning."""
    values = dict(values)
    for f in dataclasses.fields(cls):
        for old in f.metadata.get("aliases", ()):
            if old in values:
                warnings.warn(f"The setting '{old}' is now called '{f.name}'; the old name is accepted until the "
                              "next release.", FutureWarning, stacklevel=4)
                value = values.pop(old)
                values.setdefault(f.name, value)
    return values


def _check_known(cls: type, values: dict[str, Any], what: str | None) -> None:
    known = setting_names(cls) + [name for name in nested_fields(cls)]
    for key in values:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
            raise UserError(
                f"Unknown {what or cls.__name__} setting '{key}'.{did_you_mean} "
                f"Valid settings: {', '.join(known)}."
            )


def from_dict(cls: type[T], values: dict[str, Any], *, what: str | None = None) -> T:
    """Build ``cls`` from ``values``; an unknown key is a ``UserError`` naming it and a close match.

    A nested config may be given whole (an instance or a dict) and/or by its fields' flat names;
    flat names win over the whole.
    """
    values = _renamed(cls, values)
    _check_known(cls, values, what)
    for name, inner in nested_fields(cls).items():
        flat = {k: values.pop(k) for k in setting_names(inner) if k in values}
        whole = values.get(name)
        if isinstance(whole, inner):
            whole = {k: getattr(whole, k) for k in field_names(inner)}
        if whole is not None and not isinstance(whole, dict):
            raise UserError(f"The {what or cls.__name__} setting '{name}' must be a {inner.__name__} or a dict of "
                            f"{', '.join(setting_names(inner))}, not {whole!r}.")
        if whole is not None or flat:
            values[name] = from_dict(inner, {**(whole or {}), **flat}, what=what)
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-JSON dict of a config dataclass (Paths become strings; a nested config is a dict)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def flatten(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """A ``to_dict`` record with each nested config's fields lifted to the top level, under the
    names users type (a record written before the field was nested reads the same)."""
    flat = dict(values)
    for name in nested_fields(cls):
        inner = flat.pop(name, None)
        if isinstance(inner, dict):
            flat.update(inner)
    return flat


def config_hash(config: Any, keys: Iterable[str] | None = None) -> str:
    """Short sha256 over the chosen settings (all by default; nested ones by their flat names),
    stable across runs and machines.

    Args:
        config: A config dataclass, or a plain dict of settings (tokenize's code settings).
        keys: The fields that count; None: all of them.
    """
    if isinstance(config, dict):
        values = json.loads(json.dumps(config, default=str))
    else:
        values = flatten(type(config), to_dict(config))
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
    and the dataclass stays the single source of defaults. A nested config's fields become options
    of their own (``--guidance-scale``); a field's old names (``aliases``) are further option strings.
    """
    hints = typing.get_type_hints(cls)
    skip = set(skip)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        if "nested" in f.metadata:
            add_arguments(parser, f.metadata["nested"], skip=skip)
            continue
        flags = [f.metadata.get("flag", "--" + f.name.replace("_", "-"))]
        flags += ["--" + old.replace("_", "-") for old in f.metadata.get("aliases", ())]
        tp, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {_shown(default)})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if tp is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            parser.add_argument(*flags, type=item, action="append", **kwargs)
        elif tp in (int, float, str, Path):
            parser.add_argument(*flags, type=tp, **kwargs)
        else:
            parser.add_argument(*flags, type=str, **kwargs)


def from_args(cls: type[T], namespace: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from the options the user gave (plus ``overrides``)."""
    names = set(setting_names(cls))
    values = {k: v for k, v in vars(namespace).items() if k in names}
    values.update(overrides)
    return from_dict(cls, values)
