"""Automatic descriptions: which tracks get one, what is measured, and how it is worded.

``--describe missing`` (the default) describes the tracks no metadata describes; ``all``
describes every track and keeps the user's own text in front of the automatic one; ``none``
measures nothing. A track that gets a description is heard while it is decoded for encoding
(``analysis.Listener``, in the decoding thread); at its end its tempo and key are computed and,
unless ``--clap none``, CLAP tags it from a few windows spread across it (``tags.Tagger``).

The wording follows MusicGen's training captions: ``"<genre>, <mood>, <instruments>, <bpm> bpm,
<key>"``, after the trigger word or default description when one is set (``"mytrigger, jazz,
relaxing, piano, double bass, 92 bpm, Bb major"``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

from nbutils.core import clap as core_clap
from nbutils.core.errors import UserError
from nbutils.tokenize import analysis, metadata, shards, tags

if TYPE_CHECKING:
    from nbutils.tokenize.stage import TokenizeConfig

MODES = ("none", "missing", "all")
NO_CLAP = "none"
AUTO = "auto"  # the description source of a track whose text is (or starts as) an automatic caption
MAX_WINDOWS = 3  # CLAP windows per track: one per started minute, up to this many
WINDOW_EVERY_SECONDS = 60.0
SECOND_INSTRUMENT = 0.5  # a second instrument is named when its score is at least this share of the first's
EMPTY_TAGS = {c: [] for c in tags.CATEGORIES}


def caption(result: dict[str, Any]) -> str:
    """``"jazz, relaxing, piano, double bass, 92 bpm, Bb major"`` from an analysis result (parts may be missing)."""
    found = result.get("tags") or {}
    parts = [found[c][0][0] for c in ("genre", "mood") if found.get(c)]
    instruments = found.get("instrument") or []
    if instruments:
        best = instruments[0][1]
        parts += [label for label, score in instruments[:2] if score >= SECOND_INSTRUMENT * best]
    if result.get("bpm"):
        parts.append(f"{int(round(result['bpm']))} bpm")
    if result.get("key"):
        parts.append(result["key"])
    return ", ".join(parts)


def compose(text: str, source: str, result: dict[str, Any] | None) -> tuple[str, str]:
    """The text a track trains with: its own (or the default) text, then the automatic caption.

    Returns ``(text, source)``; the source becomes ``auto`` for a track no metadata described.
    """
    words = caption(result) if result else ""
    if not words:
        return text, source
    joined = ", ".join(filter(None, [text.strip().rstrip(".,;").strip(), words]))
    return str(metadata.bound(joined)), AUTO if source in (metadata.DEFAULT, metadata.NONE) else source


class Describer:
    """The analysis settings of one run, with CLAP loaded and the labels embedded (unless ``none``)."""

    def __init__(self, mode: str, sample_rate: int, tagger: tags.Tagger | None = None):
        if mode not in MODES:
            raise UserError(f"describe must be one of {', '.join(MODES)} (got {mode!r}).")
        self.mode, self.sample_rate, self.tagger = mode, int(sample_rate), tagger

    @classmethod
    def load(cls, cfg: "TokenizeConfig", sample_rate: int, device: str) -> "Describer":
        """Read the labels and load CLAP now: a wrong --labels or --clap stops the run before any ZIP.

        Raises:
            UserError: the label file or the CLAP model cannot be loaded.
        """
        if cfg.describe == "none":
            return cls("none", sample_rate)
        analysis.warm_up()  # librosa's first use compiles: here, not in the first ZIP's timing
        if cfg.clap == NO_CLAP:
            return cls(cfg.describe, sample_rate)
        labels = tags.load_labels(cfg.labels or None)
        return cls(cfg.describe, sample_rate, tags.Tagger(core_clap.load(cfg.clap, device=device), labels))

    def wants(self, source: str) -> bool:
        """Does a track whose text comes from ``source`` get an automatic description?"""
        if self.mode == "all":
            return True
        return self.mode == "missing" and source in (metadata.DEFAULT, metadata.NONE)

    def listener(self) -> analysis.Listener:
        windows = None
        if self.tagger is not None:
            size = self.tagger.window_samples * self.sample_rate // self.tagger.clap.sample_rate
            windows = analysis.Windows(size, MAX_WINDOWS, int(core_clap.MIN_WINDOW_SECONDS * self.sample_rate))
        return analysis.Listener(self.sample_rate, windows)

    def attach(self, tracks: list, catalog: metadata.Catalog) -> None:
        """Give every track that will get an automatic description a listener (``track.listener``)."""
        for track in tracks:
            if self.wants(catalog.find(track.entry.path)[1]):
                track.listener = self.listener()

    def finish(self, listener: analysis.Listener | None, failed: bool = False) -> None:
        """At a track's end: tempo, key and tags into ``listener.result``; its audio windows are let go.

        Nothing is measured for a track that ``failed`` to decode (it is not encoded either).
        """
        if listener is None:
            return
        if failed or listener.error:
            listener.windows = None
            return
        try:
            bpm, key = listener.tempo_and_key()
            found = dict(EMPTY_TAGS)
            if self.tagger is not None and listener.windows is not None:
                count = min(MAX_WINDOWS, max(1, math.ceil(listener.seconds / WINDOW_EVERY_SECONDS)))
                found = self.tagger.tags(listener.windows.picked(count), self.sample_rate)
            listener.result = {"bpm": bpm, "key": key, "tags": found}
        except Exception as err:  # noqa: BLE001 - the track is still encoded, without an automatic caption
            listener.error = f"{type(err).__name__}: {err}"
        listener.windows = None


# ---------------------------------------------------------------------------------------------
# The tokenize stage's hooks (one call each in ``zipjob``)
# ---------------------------------------------------------------------------------------------


def heard(listener: analysis.Listener | None, emit: Callable[[Any], None]) -> Callable[[Any], None]:
    """``emit`` of a decoding thread, with each decoded piece first heard by the track's listener."""
    if listener is None:
        return emit

    def hear(value):
        if value[1] is not None:  # (index, piece); None marks the track's end
            listener.add(value[1].audio)
        emit(value)
    return hear


def text_of(catalog: metadata.Catalog, path: str, listener: analysis.Listener | None,
            writer: shards.ShardWriter | None, track: str, notes: list) -> tuple[str, str]:
    """``(text, source)`` of a track: its metadata or default text, then its automatic caption if it got one.

    The per-source counts of ``catalog`` follow (a default text with a caption counts as ``auto``);
    what was measured goes into the shard (``writer.analysis``); a failed analysis is a note.
    """
    text, source = catalog.lookup(path)
    if listener is None or listener.result is None:
        if listener is not None and listener.error:
            notes.append({"path": path, "reason": f"no automatic description ({listener.error})"})
        return text, source
    if writer is not None:
        writer.analysis[track] = listener.result
    described, kind = compose(text, source, listener.result)
    if kind != source:
        catalog.counts[kind] += 1
        catalog.counts[source] -= 1
        if catalog.counts[source] <= 0:
            del catalog.counts[source]
    return described, kind
