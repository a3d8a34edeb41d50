"""Notebook 01's descriptions step: the table as text, an editor to change and save it, a picture.

``preview`` prints the first rows (it shows in any output, the executed notebooks of the demo
included). ``Editor`` is an ipywidgets table (works with Colab's ipywidgets 7.7.1): one text box
per description, pages of ``rows`` tracks, and a Save button that writes every changed text to
``descriptions.jsonl`` (``descriptions.save_edits``; the file can also be edited in any text
editor). ``Editor.save()`` is the button's callback, so a headless test or a cell can press it
with ``editor.button.click()``. ``plot`` draws the tempo histogram, the keys and the most
frequent tags.
"""

from __future__ import annotations

import html
import os
from collections import Counter
from pathlib import Path
from typing import Any

from nbutils.core import pictures
from nbutils.core.errors import UserError
from nbutils.tokenize import analysis, descriptions

PICTURE = "descriptions.png"


def _facts(row: dict[str, Any]) -> str:
    bits = [row.get("source") or ""]
    if row.get("bpm"):
        bits.append(f"{row['bpm']:g} bpm")
    if row.get("key"):
        bits.append(row["key"])
    if row.get("edited"):
        bits.append("edited")
    return ", ".join(b for b in bits if b)


def preview(tokens_dir: str | os.PathLike, rows: int = 10) -> str:
    """The first ``rows`` tracks as text: where, source / bpm / key, description; then the counts."""
    found = descriptions.rows(tokens_dir)
    if not found:
        return f"No descriptions yet in {tokens_dir}: tokenize first."
    counts = descriptions.summary(found)
    sources = ", ".join(f"{k} {v}" for k, v in sorted(counts["sources"].items()))
    lines = [f"{counts['tracks']} tracks in {descriptions.path_of(tokens_dir)} ({sources}; {counts['edited']} edited)"]
    for row in found[:rows]:
        lines.append(f"- {descriptions.key_of(row)} [{_facts(row)}]: {row['description'] or '(no description)'}")
    if len(found) > rows:
        lines.append(f"... and {len(found) - rows} more: page through them in the editor below, or open the file.")
    return "\n".join(lines)


class Editor:
    """Pages of text boxes, one per track, and a Save button (see the module docstring)."""

    def __init__(self, tokens_dir: str | os.PathLike, rows: int = 20):
        import ipywidgets as w

        self.tokens_dir, self.rows = tokens_dir, max(1, int(rows))
        self.all = descriptions.rows(tokens_dir)
        self.pending: dict[str, str] = {}
        self.start = 0
        self.boxes: list[tuple[str, Any]] = []
        self.table = w.VBox()
        self.status = w.HTML()
        self.button = w.Button(description="Save", button_style="primary", icon="save")
        self.previous = w.Button(description="Previous", icon="arrow-left")
        self.next = w.Button(description="Next", icon="arrow-right")
        self.button.on_click(lambda _: self.save())
        self.previous.on_click(lambda _: self.page(self.start - self.rows))
        self.next.on_click(lambda _: self.page(self.start + self.rows))
        self.widget = w.VBox([self.table, w.HBox([self.previous, self.next, self.button]), self.status])
        self.page(0)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _collect(self) -> None:
        """Remember what was typed on the page shown (kept across pages until saved)."""
        for key, box in self.boxes:
            self.pending[key] = box.value

    def page(self, start: int) -> None:
        """Show the rows from ``start`` (clamped to the table)."""
        import ipywidgets as w

        self._collect()
        self.start = max(0, min(int(start), max(0, len(self.all) - 1) // self.rows * self.rows))
        shown = self.all[self.start : self.start + self.rows]
        self.boxes, children = [], []
        for row in shown:
            key = descriptions.key_of(row)
            box = w.Text(value=self.pending.get(key, row["description"]), layout=w.Layout(width="60%"))
            label = w.HTML(f"<code>{html.escape(key)}</code> <small>{html.escape(_facts(row))}</small>",
                           layout=w.Layout(width="40%"))
            self.boxes.append((key, box))
            children.append(w.HBox([label, box]))
        self.table.children = children
        end = self.start + len(shown)
        self.status.value = f"Tracks {self.start + 1 if shown else 0}-{end} of {len(self.all)}."
        self.previous.disabled, self.next.disabled = self.start == 0, end >= len(self.all)

    def save(self) -> int:
        """Write every changed description (all pages) to descriptions.jsonl; returns how many changed."""
        self._collect()
        original = {descriptions.key_of(r): r["description"] for r in self.all}
        edits = {k: v for k, v in self.pending.items() if v != original.get(k)}
        try:
            changed = descriptions.save_edits(self.tokens_dir, edits) if edits else 0
        except (UserError, OSError) as err:  # shown under the table; the edits stay in the boxes
            self.status.value = f"<b>Not saved:</b> {html.escape(str(err))}"
            return 0
        self.all = descriptions.rows(self.tokens_dir)
        self.pending.clear()
        self.status.value = (f"Saved {changed} changed description(s) to "
                             f"{html.escape(str(descriptions.path_of(self.tokens_dir)))}. Training reads them "
                             "from there; nothing is re-encoded.")
        return changed


def edit(tokens_dir: str | os.PathLike, rows: int = 20) -> Editor:
    """The editor for notebook 01 (a cell showing it displays the table, its buttons and the status)."""
    return Editor(tokens_dir, rows)


def plot(tokens_dir: str | os.PathLike, *, top: int = 15, show: bool = True) -> Path:
    """Tempo histogram, keys, and the most frequent tags (the genre, mood and instrument captions name).

    Written to ``tokens/descriptions.png``; with ``show``, displayed in the notebook (whatever
    matplotlib's backend is). Returns the PNG's path.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    found = descriptions.rows(tokens_dir)
    fig, (tempo, keys, tags) = plt.subplots(1, 3, figsize=(16, 4.2), gridspec_kw={"width_ratios": [1, 1.6, 1.2]})
    bpms = [r["bpm"] for r in found if isinstance(r.get("bpm"), (int, float))]
    tempo.hist(bpms, bins=range(40, 221, 5), color="tab:blue")
    tempo.set(title=f"Tempo ({len(bpms)} of {len(found)} tracks)", xlabel="bpm", ylabel="tracks")
    counted = Counter(r.get("key") for r in found if r.get("key"))
    keys.bar(range(len(analysis.KEYS)), [counted.get(k, 0) for k in analysis.KEYS], color="tab:green")
    keys.set_xticks(range(len(analysis.KEYS)), [k.replace(" major", "").replace(" minor", "m") for k in analysis.KEYS],
                    fontsize=8, rotation=90)
    keys.set(title=f"Key ({sum(counted.values())} tracks; 'm' = minor)", ylabel="tracks")
    named = Counter(label for r in found for label in _named_tags(r))
    common = named.most_common(top)[::-1]
    tags.barh([label for label, _ in common], [n for _, n in common], color="tab:orange")
    tags.set(title=f"Most frequent tags (top {len(common)})", xlabel="tracks")
    for axis in (tempo.yaxis, keys.yaxis, tags.xaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return pictures.save_png(fig, Path(tokens_dir) / PICTURE, show=show)


def _named_tags(row: dict[str, Any]) -> list[str]:
    """The tags a row's caption names: the best genre and mood, the best instrument."""
    found = row.get("tags") or {}
    return [found[c][0][0] for c in ("genre", "mood", "instrument") if found.get(c)]
