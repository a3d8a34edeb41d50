"""Zero-shot tags with CLAP: genre, mood and instruments from label lists.

Each label becomes a sentence (``"This is jazz music."``, from the label file's ``prompts``) and
is embedded once per run with CLAP's text encoder. A track's audio embedding is the mean of a
few 10 s windows spread across it (``analysis.Windows``); its score for a label is CLAP's own
zero-shot probability: the softmax, within one category, of the learned scale times the cosine
similarity (what ``ClapModel`` returns as ``logits_per_audio``).

The labels live in ``labels.json`` beside this module (about 40 genres, 20 moods, 40
instruments); ``--labels FILE`` replaces them with the user's own file of the same shape.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from nbutils.core import clap as core_clap
from nbutils.core.errors import UserError

CATEGORIES = ("genre", "mood", "instrument")
PROMPTS = {"genre": "This is {} music.", "mood": "This music is {}.", "instrument": "This music features {}."}
LABELS_FILE = "labels.json"
KEEP = 5  # labels with their scores kept per category in descriptions.jsonl
MAX_LABELS = 500  # per category: a longer list is a mistake (and slow to embed)


@dataclasses.dataclass
class Labels:
    """Label lists per category, and the sentence each label is embedded as."""

    lists: dict[str, list[str]]
    prompts: dict[str, str]
    source: str


def _problem(source: str, what: str) -> UserError:
    return UserError(f"The label file {source} {what}. It must be a JSON object like "
                     '{"genre": ["jazz", ...], "mood": [...], "instrument": [...], "prompts": '
                     '{"genre": "This is {} music."}} (any of the three lists; prompts optional).')


def parse_labels(data: Any, source: str) -> Labels:
    """Check a label file's content; ``UserError`` names what is wrong."""
    if not isinstance(data, dict):
        raise _problem(source, "is not a JSON object")
    unknown = sorted(set(data) - set(CATEGORIES) - {"prompts"})
    if unknown:
        raise _problem(source, f"has unknown keys ({', '.join(unknown)})")
    lists = {}
    for category in CATEGORIES:
        values = data.get(category, [])
        if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
            raise _problem(source, f'has a "{category}" that is not a list of texts')
        values = list(dict.fromkeys(v.strip() for v in values))
        if len(values) == 1 or len(values) > MAX_LABELS:
            raise _problem(source, f'has {len(values)} "{category}" labels (2 to {MAX_LABELS}, or none)')
        lists[category] = values
    prompts = dict(PROMPTS)
    given = data.get("prompts", {})
    if not isinstance(given, dict) or not all(k in CATEGORIES and isinstance(v, str) and "{}" in v
                                              for k, v in given.items()):
        raise _problem(source, 'has "prompts" that are not texts with {} per category')
    prompts.update(given)
    if not any(lists.values()):
        raise _problem(source, "has no labels")
    return Labels(lists=lists, prompts=prompts, source=source)


def load_labels(path: str | None = None) -> Labels:
    """The user's label file, or the package's ``labels.json``."""
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise UserError(f"Label file {file} does not exist. Fix --labels (or leave it empty for the built-in "
                            "lists).")
        try:
            data = json.loads(file.read_text(encoding="utf-8-sig"))
        except (ValueError, UnicodeDecodeError) as err:
            raise _problem(str(file), f"is not JSON ({err})") from err
        return parse_labels(data, str(file))
    text = resources.files("nbutils.tokenize").joinpath(LABELS_FILE).read_text(encoding="utf-8")
    return parse_labels(json.loads(text), f"nbutils/tokenize/{LABELS_FILE}")


class Tagger:
    """A loaded CLAP with every label embedded; ``tags`` scores one track's windows."""

    def __init__(self, clap: core_clap.Clap, labels: Labels):
        self.clap, self.labels = clap, labels
        self.scale = core_clap.logit_scale(clap)
        self.text = {c: core_clap.text_embeddings(clap, [labels.prompts[c].format(v) for v in values])
                     for c, values in labels.lists.items() if values}

    @property
    def window_samples(self) -> int:
        return self.clap.window_samples

    def tags(self, windows: list[np.ndarray], sample_rate: int) -> dict[str, list[list]]:
        """``{"genre": [[label, score], ...], ...}``: the ``KEEP`` best labels per category, best first."""
        out: dict[str, list[list]] = {c: [] for c in CATEGORIES}
        if not windows:
            return out
        pieces = [core_clap.to_clap_rate(w, sample_rate, self.clap.sample_rate) for w in windows]
        mean = core_clap.embed_windows(self.clap, pieces).mean(axis=0)
        mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
        for category, text in self.text.items():
            logits = self.scale * (text @ mean)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            best = np.argsort(-probs, kind="stable")[:KEEP]
            out[category] = [[self.labels.lists[category][i], round(float(probs[i]), 3)] for i in best]
        return out
