"""The two fixed prompt sets of an evaluation: style (the user's own descriptions) and generic.

**Style** prompts come from a prompt file, or else are the most frequent training descriptions
in the token shards; **generic** prompts lie outside the trained style (a file may give its own)
and show whether the adapter made the model forget how to follow other prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

from nbutils.core.errors import UserError
from nbutils.tokenize import shards

GENERIC_PROMPTS = (
    "solo classical violin playing a slow romantic melody",
    "big band swing jazz with trumpets and saxophones",
    "heavy metal with distorted electric guitars and fast double bass drums",
    "acoustic folk song with fingerpicked guitar and harmonica",
)
PROMPT_SETS = ("style", "generic")


def training_descriptions(all_shards: list[shards.Shard], limit: int) -> list[str]:
    """The most frequent distinct descriptions in the shards (ties alphabetical), at most ``limit``."""
    counts: dict[str, int] = {}
    for shard in all_shards:
        for segment in shard.segments:
            text = segment.description.strip()
            if text:
                counts[text] = counts.get(text, 0) + 1
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:limit]


def read_prompt_file(path: str) -> dict[str, list[str]]:
    """Prompt sets from a file: lines (``#`` comments) are style prompts; JSON may give both sets."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"Prompt file {file} does not exist.")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        expected = ('expected a JSON object with "style" and/or "generic" lists of prompts, e.g. '
                    '{"style": ["calm piano", "lofi beat"], "generic": ["opera aria"]}')
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(
                f"{file} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); {expected}."
            ) from err
        if not isinstance(data, dict) or not set(data) <= set(PROMPT_SETS):
            raise UserError(f"{file}: {expected}.")
        sets = {}
        for name, prompts in data.items():
            if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
                raise UserError(
                    f'{file}: "{name}" must be a list of text prompts, not {json.dumps(prompts)[:80]}; {expected}.'
                )
            sets[name] = [p.strip() for p in prompts if p.strip()]
        return sets
    lines = (line.strip() for line in text.splitlines())
    return {"style": [line for line in lines if line and not line.startswith("#")]}


def prompt_sets(all_shards: list[shards.Shard], prompt_file: str = "", num_prompts: int = 4) -> dict[str, list[str]]:
    """The fixed prompt sets: from ``prompt_file``, else the ``num_prompts`` most frequent training
    descriptions; generic prompts by default."""
    sets = read_prompt_file(prompt_file) if prompt_file else {}
    if not sets.get("style"):
        sets["style"] = training_descriptions(all_shards, num_prompts)
    sets.setdefault("generic", list(GENERIC_PROMPTS))
    sets = {name: list(dict.fromkeys(prompts)) for name, prompts in sets.items()}  # each prompt once,
    sets["generic"] = [p for p in sets["generic"] if p not in sets["style"]]  # in one set
    if not sets["style"]:
        raise UserError("No style prompts: the shards have no descriptions and no --prompts file was given.")
    return {name: sets[name] for name in PROMPT_SETS if sets.get(name)}
