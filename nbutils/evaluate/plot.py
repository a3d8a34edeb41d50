"""The comparison plot: one panel per ``table.METRICS`` entry with 95 % intervals, and the copy check.

Bars are grouped by prompt set (one bar per model) or, for per-model metrics such as the held-out
likelihood, one bar per model; the black whiskers are the bootstrap intervals. The last panel
places every generated clip by its nearest training segment's CLAP and chroma similarity, with
the held-out segments (what "your style, not a copy" looks like) and the flag thresholds. A
melody model's ``melody`` rows get one more panel: chroma cosine to the melodies, with the
published value as a line.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nbutils.core import atomic
from nbutils.evaluate.aggregate import REFERENCE
from nbutils.evaluate.table import METRICS, Metric

COLUMNS = 3


def _bars(ax, rows: list[dict], metric: Metric, models: list[str]) -> None:
    groups = ["all"] if metric.per_model else list(dict.fromkeys(r["prompt_set"] for r in rows))
    width = 0.8 / max(len(models), 1)
    missing = 0
    for m, model in enumerate(models):
        values, errors = [], [[], []]
        for group in groups:
            row = next((r for r in rows if r["model"] == model and (metric.per_model or r["prompt_set"] == group)), {})
            value, interval = row.get(metric.key), (row.get("ci95") or {}).get(metric.key)
            missing += value is None
            values.append(value if value is not None else 0.0)
            errors[0].append(max(0.0, value - interval[0]) if value is not None and interval else 0.0)
            errors[1].append(max(0.0, interval[1] - value) if value is not None and interval else 0.0)
        ax.bar(np.arange(len(groups)) + m * width, values, width, yerr=np.asarray(errors), capsize=3,
               error_kw={"elinewidth": 1}, label=model)
    ax.set_xticks(np.arange(len(groups)) + width * (len(models) - 1) / 2, groups)
    ax.set_title(f"{metric.title} {'↑' if metric.better == 'higher' else '↓'}", fontsize="medium")
    if missing:  # an empty bar would read as "zero"; say why there is none
        ax.text(0.5, 0.5, "n/a for some bars (no held-out reference,\nor fewer than 2 clips)",
                transform=ax.transAxes, ha="center", va="center", color="gray", fontsize="small")


def _copies(ax, copies: list[dict], check: dict | None) -> None:
    ax.set_title("copy check: nearest training segment", fontsize="medium")
    ax.set_xlabel("CLAP similarity")
    ax.set_ylabel("chroma similarity")
    if not check:
        ax.text(0.5, 0.5, "n/a: no token shards", transform=ax.transAxes, ha="center", va="center", color="gray")
        return
    held = check.get("heldout_nearest") or {}
    if held.get("clap"):
        ax.scatter(held["clap"], held["chroma"], c="lightgray", s=18, label="held-out (calibration)")
    for flagged, style in ((False, {"c": "tab:blue", "s": 14}), (True, {"c": "tab:red", "s": 40, "marker": "x"})):
        mine = [c for c in copies if bool(c["flagged"]) == flagged]
        if mine:
            ax.scatter([c["clap_similarity"] for c in mine], [c["chroma_similarity"] for c in mine],
                       label=f"{'flagged' if flagged else 'generated'} ({len(mine)})", **style)
    thresholds = check.get("thresholds") or {}
    if thresholds.get("clap") is not None:
        ax.axvline(thresholds["clap"], color="tab:red", lw=0.8, ls="--")
        ax.axhline(thresholds["chroma"], color="tab:red", lw=0.8, ls="--")
    ax.legend(fontsize="x-small")


def _melody(ax, rows: list[dict], published: float | None) -> None:
    """Chroma cosine of each model's clips to the melodies they were given, with the published value."""
    ax.bar(range(len(rows)), [r["chroma_cosine"] for r in rows], 0.6,
           yerr=[r.get("chroma_cosine_std") or 0 for r in rows], color=[f"C{i}" for i in range(len(rows))])
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows])
    if published is not None:
        ax.axhline(published, color="gray", linestyle="--", label=f"published (MusicCaps): {published}")
        ax.legend(fontsize="small")
    ax.set_ylim(0, 1)
    ax.set_title("melody: chroma cosine to the melody ↑", fontsize="medium")


def plot(summary: list[dict], path: Path, title: str, copies: list[dict] | None = None,
         check: dict | None = None, footer: str = "", *, melody_published: float | None = None) -> None:
    """Write the figure to ``path`` (PNG, atomically); ``melody_published``: the published chroma cosine."""
    # a bare Figure renders with Agg and leaves pyplot (and a notebook's inline backend) alone
    from matplotlib.figure import Figure

    tuned = [r for r in summary if r.get("chroma_cosine") is not None]
    rows = [r for r in summary if r["model"] != REFERENCE and r.get("chroma_cosine") is None]
    models = list(dict.fromkeys(r["model"] for r in rows))
    panels = len(METRICS) + 1 + bool(tuned)
    lines = math.ceil(panels / COLUMNS)
    fig = Figure(figsize=(5 * COLUMNS, 4.2 * lines))
    axes = np.atleast_1d(fig.subplots(lines, COLUMNS)).ravel()
    for ax, metric in zip(axes, METRICS):
        _bars(ax, rows, metric, models)
    _copies(axes[len(METRICS)], copies or [], check)
    if tuned:
        _melody(axes[len(METRICS) + 1], tuned, melody_published)
    for ax in axes[panels:]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    if footer:
        fig.text(0.01, 0.005, footer, fontsize="small", color="dimgray")
    fig.tight_layout(rect=(0, 0.03 if footer else 0, 1, 1))
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
