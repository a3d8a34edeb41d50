"""What the table and the plot show: one ``Metric`` per column / panel, and how rows are rendered.

``METRICS`` is the one list the summary table (notebook and CLI), ``summary.csv`` and the plot
read; a new metric (a melody-adherence score, say) is one more entry here plus its aggregate in
``aggregate``. Values are printed with their 95 % interval (``0.312 [0.29, 0.33]``) and ``n``.

``PUBLISHED`` are the scores audiocraft's model card gives for the released checkpoints on
MusicCaps. They are printed beside the base row for those models, with a plain warning: our
prompt sets are not MusicCaps (and our Fréchet distance uses CLAP, not VGGish, embeddings), so
only the base-vs-LoRA difference measured here is comparable.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from nbutils.evaluate.aggregate import BASE


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    """The summary row's key (its interval is ``row["ci95"][key]``, its size ``row["n"][key]``)."""
    title: str
    """Panel title and column meaning."""
    better: str = "higher"
    """``higher`` or ``lower``: which direction means closer to the goal."""
    per_model: bool = False
    """One value per model (the same on every prompt set), e.g. the held-out likelihood."""


METRICS = (
    Metric("clap_text", "CLAP text–audio similarity"),
    Metric("style_similarity", "style similarity to held-out"),
    Metric("heldout_bits_per_second", "held-out cross-entropy (bits/s)", "lower", per_model=True),
    Metric("frechet", "Fréchet distance to held-out (CLAP)", "lower"),
    Metric("kad", "KAD to held-out (MMD² ×100)", "lower"),
)
# columns of the printed table: the metrics, then the paired changes against the base model
SHOWN_CHANGES = ("clap_text_vs_base", "style_similarity_vs_base")

# audiocraft's MUSICGEN_MODEL_CARD.md, "Evaluation results" on MusicCaps (FAD on VGGish features,
# KL on PaSST labels, CLAP text consistency)
PUBLISHED = {
    "facebook/musicgen-small": {"fad": 4.88, "kl": 1.42, "clap": 0.27},
    "facebook/musicgen-medium": {"fad": 5.14, "kl": 1.38, "clap": 0.28},
    "facebook/musicgen-large": {"fad": 5.48, "kl": 1.37, "clap": 0.28},
    "facebook/musicgen-melody": {"fad": 4.93, "kl": 1.41, "clap": 0.27},
}
PUBLISHED_SOURCE = "audiocraft's MusicGen model card (MusicCaps)"
NOT_COMPARABLE = ("Our prompt sets are not MusicCaps, and our Fréchet distance uses CLAP embeddings instead of VGGish, "
                  "so these published numbers are not comparable with the table: only the base-vs-LoRA difference "
                  "measured here is.")


def published(model: str) -> dict[str, Any] | None:
    """The model card's MusicCaps scores for ``model`` (None for other models)."""
    scores = PUBLISHED.get(str(model))
    if scores is None:
        return None
    return {"model": model, **scores, "source": PUBLISHED_SOURCE, "note": NOT_COMPARABLE}


def published_line(reference: dict[str, Any] | None) -> str:
    if not reference:
        return ""
    return (f"Published for {reference['model']} on MusicCaps ({reference['source']}): FAD {reference['fad']}, "
            f"KL {reference['kl']}, CLAP {reference['clap']}. {reference['note']}")


def number(value: float) -> str:
    """A value for people: one decimal from 100 up, three below, two significant digits when tiny."""
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:.2g}"


def cell(row: dict, key: str) -> str:
    """``value [low, high]`` (or the bare value, or empty)."""
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, float):
        return str(value)
    interval = (row.get("ci95") or {}).get(key)
    return number(value) + (f" [{number(interval[0])}, {number(interval[1])}]" if interval else "")


def columns(summary: list[dict] = ()) -> list[str]:
    """The table's columns; ``chroma_cosine`` when ``summary`` holds a melody model's melody rows."""
    melody = ["chroma_cosine"] if any(r.get("chroma_cosine") is not None for r in summary) else []
    return ["model", "prompt_set", "samples", *[m.key for m in METRICS], *SHOWN_CHANGES, *melody]


def rows_for_display(summary: list[dict], published_scores: dict | None) -> list[list[str]]:
    """The table's rows as text; the base row gets the published reference in a last column."""
    out = []
    for row in summary:
        note = ""
        if published_scores and row["model"] == BASE:
            note = f"card: FAD {published_scores['fad']}, KL {published_scores['kl']}, CLAP {published_scores['clap']}"
        out.append([cell(row, key) for key in columns(summary)] + [note])
    return out


def markdown(summary: list[dict], published_scores: dict | None = None) -> str:
    """The summary as a Markdown table, each value with its 95 % interval."""
    header = columns(summary) + (["published (MusicCaps)"] if published_scores else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cells in rows_for_display(summary, published_scores):
        lines.append("| " + " | ".join(cells[: len(header)]) + " |")
    return "\n".join(lines)


def text(summary: list[dict], published_scores: dict | None = None) -> str:
    """The summary as aligned plain text (the CLI prints it)."""
    header = columns(summary) + (["published (MusicCaps)"] if published_scores else [])
    rows = [header] + [cells[: len(header)] for cells in rows_for_display(summary, published_scores)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def flat(row: dict) -> dict:
    """A summary row for the CSV: intervals as ``<key>_ci95_low/high``, sizes as ``<key>_n``, lists as JSON."""
    out = {}
    for key, value in row.items():
        if key in ("ci95", "n"):
            continue
        out[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
    for key, interval in (row.get("ci95") or {}).items():
        out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = (interval or [None, None])
    for key, n in (row.get("n") or {}).items():
        out[f"{key}_n"] = n
    return out
