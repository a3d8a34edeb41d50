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

Every stage config is made the same way, by ``build``: from notebook parameters (``**SETTINGS``),
from the command line, and from the project (``project.json``'s model and the project's folders),
an unknown name refused with a did-you-mean, and every check in the config's ``__post_init__``
(``require``), so a bad value stops before any model loads.

What may change when a stage continues earlier work is written once, on each field
(``option(..., resume=...)``): ``must-match`` refuses to continue, ``may-change`` is accepted and
reported, ``ignored`` is not compared (where the output goes, how progress shows).
``resume_differences`` compares a saved record with the current settings by these rules and
``resume_refusal`` says what differs and how to start fresh; tokenize, train and evaluate use both.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import os
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

from nbutils.core.errors import UserError

T = TypeVar("T")


MUST_MATCH = "must-match"  # a different value refuses to continue the earlier work
MAY_CHANGE = "may-change"  # a different value is accepted, and reported
IGNORED = "ignored"  # not compared: where the output goes, how progress shows
RESUME_RULES = (MUST_MATCH, MAY_CHANGE, IGNORED)


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a default and a help text (shown by ``--help`` and in docs).

    Args:
        default: The default value; lists are copied per instance.
        help: One sentence a user can act on, with units.
        **kwargs: Extra metadata: ``cli=False`` hides the field from the command line,
            ``flag="--name"`` overrides the option name, ``aliases=("old_name",)`` are names the
            field had before (accepted for one release, with a FutureWarning), ``resume=`` one of
            ``RESUME_RULES``: what a different value means when a stage continues earlier work.
    """
    if kwargs.get("resume", IGNORED) not in RESUME_RULES:
        raise ValueError(f"resume must be one of {RESUME_RULES}, not {kwargs['resume']!r}")
    metadata = {"help": help, **kwargs}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def nested(cls: type, help: str, *, resume: str = IGNORED) -> Any:
    """A field holding another config dataclass ``cls`` (its defaults by default).

    Its fields are set by their own flat names (``--guidance-scale``, ``guidance_scale=``), or as
    a whole (``sampling=SamplingConfig(...)`` or a dict). ``resume`` applies to each of them.
    """
    if resume not in RESUME_RULES:
        raise ValueError(f"resume must be one of {RESUME_RULES}, not {resume!r}")
    return dataclasses.field(default_factory=cls, metadata={"help": help, "nested": cls, "resume": resume})


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


def _renamed(cls: type, values: Mapping[str, Any], *, warn: bool = True) -> dict[str, Any]:
    """``values`` with old field names (``aliases``) replaced by the new ones; a user's old name gets a
    FutureWarning (``warn``), a saved record's does not (it was right when it was written)."""
    values = dict(values)
    for f in dataclasses.fields(cls):
        for old in f.metadata.get("aliases", ()):
            if old in values:
                if warn:
                    warnings.warn(f"The setting '{old}' is now called '{f.name}'; the old name is accepted until "
                                  "the next release.", FutureWarning, stacklevel=4)
                value = values.pop(old)
                values.setdefault(f.name, value)
    return values


def _what(cls: type, what: str | None) -> str:
    """The word for ``cls``'s settings in messages: ``what``, the class's ``WHAT``, or its name."""
    return what or getattr(cls, "WHAT", cls.__name__)


def _check_known(cls: type, values: dict[str, Any], what: str | None) -> None:
    known = setting_names(cls) + [name for name in nested_fields(cls)]
    for key in values:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
            raise UserError(
                f"Unknown {_what(cls, what)} setting '{key}'.{did_you_mean} "
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
            raise UserError(f"The {_what(cls, what)} setting '{name}' must be a {inner.__name__} or a dict of "
                            f"{', '.join(setting_names(inner))}, not {whole!r}.")
        if whole is not None or flat:
            values[name] = from_dict(inner, {**(whole or {}), **flat}, what=what)
    return cls(**values)


def build(cls: type[T], values: Mapping[str, Any] | None = None, *, args: argparse.Namespace | None = None,
          project: Any = None, what: str | None = None) -> T:
    """Make a stage's config: the one way settings reach a stage, from a notebook or the command line.

    The sources, each over the one before:

    1. the field defaults of ``cls``;
    2. the project (notebooks): ``cls.project_defaults(project, given)`` gives its folders and model
       (``given``: the values of 3 and 4 that are set, by their current names);
    3. ``args``: the options typed on the command line (``add_arguments``);
    4. ``values``: notebook parameters (``**SETTINGS``), where None or an empty text means "the
       default" (the project's, else the field's), as an empty ``MODEL`` does in every notebook.

    Every name is checked first (an unknown one is a ``UserError`` with a did-you-mean; an old one
    is accepted with a FutureWarning), and the config's ``__post_init__`` checks every value.
    """
    given = _renamed(cls, _typed(cls, args)) if args is not None else {}
    raw = _renamed(cls, values or {})
    _check_known(cls, raw, what)
    given.update({k: v for k, v in raw.items() if v is not None and not (isinstance(v, str) and v == "")})
    defaults = cls.project_defaults(project, given) if project is not None else {}
    return from_dict(cls, {**defaults, **given}, what=what)


def _typed(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``cls`` typed on the command line (``add_arguments`` suppresses the rest),
    under the names they were typed with (an old name is renamed, with its warning, by ``_renamed``)."""
    names = set(setting_names(cls)) | {old for f in dataclasses.fields(cls) for old in f.metadata.get("aliases", ())}
    return {k: v for k, v in vars(args).items() if k in names}


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


def change(key: str, old: Any, new: Any, shown: int = 5) -> str:
    """``key: old -> new``; for mappings (a data fingerprint per shard) which entries were added,
    changed, removed, ``shown`` names of each."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return f"{key}: {old!r} -> {new!r}"

    def names(keys: list[str]) -> str:
        more = f", ... ({len(keys) - shown} more)" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    groups = (("added", sorted(new.keys() - old.keys())),
              ("changed", sorted(k for k in old.keys() & new.keys() if old[k] != new[k])),
              ("removed", sorted(old.keys() - new.keys())))
    return f"{key}: " + "; ".join(f"{len(keys)} {what} ({names(keys)})" for what, keys in groups if keys)


# ---------------------------------------------------------------------------------------------
# Continuing earlier work: what must match, what may change
# ---------------------------------------------------------------------------------------------


def resume_keys(cls: type, rule: str) -> tuple[str, ...]:
    """The setting names (flat) whose field has resume rule ``rule``; a nested config's fields take
    the rule of the field that holds them."""
    names: list[str] = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("resume", IGNORED) != rule:
            continue
        inner = f.metadata.get("nested")
        names += setting_names(inner) if inner else [f.name]
    return tuple(names)


@dataclasses.dataclass
class Resume:
    """How a saved record and the current settings differ: ``refused`` (must match) and ``accepted``
    (may change) lines, each ``key: old -> new``."""

    refused: list[str]
    accepted: list[str]


def resume_differences(cls: type, old: Mapping[str, Any], new: Mapping[str, Any], *,
                       must_match: Iterable[str] = ()) -> Resume:
    """Compare the settings earlier work was made with (``old``) and the current ones (``new``).

    Both are records of ``cls`` (``to_dict``, flat or nested, from any release: old names are read
    as the new ones). A ``may-change`` setting that ``old`` does not hold was not recorded then and
    counts as unchanged; a ``must-match`` one counts as ``None``.

    Args:
        cls: The config class whose fields' ``resume`` rules apply.
        must_match: Further keys that must match: facts derived from the settings (a data
            fingerprint, the effective batch), present in both records.
    """
    old, new = (flatten(cls, _renamed(cls, record, warn=False)) for record in (old, new))
    refused = [change(k, old.get(k), new.get(k)) for k in (*resume_keys(cls, MUST_MATCH), *must_match)
               if old.get(k) != new.get(k)]
    accepted = [change(k, old[k], new.get(k)) for k in resume_keys(cls, MAY_CHANGE)
                if k in old and old[k] != new.get(k)]
    return Resume(refused, accepted)


def resume_refusal(folder: str | os.PathLike, refused: list[str], *, kind: str, holds: str, fresh: str,
                   why: str = "") -> UserError:
    """The message when the earlier work in ``folder`` was made with settings that must match.

    Args:
        folder: What holds the earlier work.
        refused: ``resume_differences(...).refused``.
        kind: What ``folder`` is (``"run folder"``); ``holds``: what it holds (``"a training run"``).
        fresh: How to start fresh besides deleting ``folder`` (``"use another --out"``).
        why: Why these settings must match (one sentence), if it is not obvious.
    """
    lines = "\n".join(f"  {line}" for line in refused)
    return UserError(
        f"The {kind} {folder} holds {holds} made with other settings, so it cannot be continued:\n{lines}\n"
        + (f"{why}\n" if why else "")
        + f"To continue it, change these back. To start fresh, {fresh}, or delete {folder}."
    )


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

    Options default to ``argparse.SUPPRESS`` so that ``build`` only sees what the user typed and
    the dataclass stays the single source of defaults. A nested config's fields become options of
    their own (``--guidance-scale``); a field's old names (``aliases``) are hidden options whose
    value ``build`` takes, with a FutureWarning.
    """
    hints = typing.get_type_hints(cls)
    skip = set(skip)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        if "nested" in f.metadata:
            add_arguments(parser, f.metadata["nested"], skip=skip)
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {_shown(default)})"
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        _add_option(parser, flag, f.name, hints[f.name], help_text)
        for old in f.metadata.get("aliases", ()):  # its own dest: build() renames it with a warning
            _add_option(parser, "--" + old.replace("_", "-"), old, hints[f.name], argparse.SUPPRESS)


def _add_option(parser: argparse.ArgumentParser, flag: str, dest: str, hint: Any, help_text: str) -> None:
    tp, _ = _unwrap_optional(hint)
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
    if tp is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
    elif typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        parser.add_argument(flag, type=item, action="append", **kwargs)
    elif tp in (int, float, str, Path):
        parser.add_argument(flag, type=tp, **kwargs)
    else:
        parser.add_argument(flag, type=str, **kwargs)
