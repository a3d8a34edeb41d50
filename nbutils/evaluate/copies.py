"""The copy check: is a generated clip a near-copy of a training segment?

For every generated clip, the nearest training segment is found twice: by CLAP audio embedding
(cosine with the segment's 10 s windows: how it *sounds*) and by chroma sequence (``chroma``:
the same notes at the same times, found wherever in the segment they sit). The training segments'
features are cached beside the shards (``copyindex``).

**Threshold.** Held-out segments are music in your style that training never saw, so none of
them is a copy. Their nearest-training-segment similarities (computed the same way, on clips of
the same length) show how close "same style, not a copy" comes. For each measure, let ``m`` be
the highest of them: a clip is flagged when its similarity passes ``m + (1 - m) / 2``, halfway
from the closest held-out segment to an exact copy (similarity 1), on either measure. The
``copy_score`` ``(s - m) / (1 - m)`` says where a clip sits on that scale (0: as close as the
closest held-out segment, 1: identical; flagged above 0.5). The top match reported is the
segment that gives the higher copy score, with both similarities to it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from nbutils.evaluate import chroma, copyindex

FLAG_AT = 0.5  # copy score above which a clip is flagged: halfway from the closest held-out segment to a copy
MEASURES = ("clap", "chroma")


@dataclasses.dataclass
class Segment:
    """A searched training segment: where it comes from."""

    path: str
    """Track id ``<zip>/<path inside it>``."""
    start: float
    """Its start in the track, seconds."""


class Index:
    """The searched training segments' features, ready to match clips against."""

    def __init__(self, segments: list[Segment], entries: list[copyindex.Entry]):
        self.segments = segments
        self.bank = chroma.Bank([e.chroma for e in entries])
        dims = [e.clap.shape[1] for e in entries if e.clap.size]
        self.clap = np.concatenate([e.clap for e in entries]) if dims else np.zeros((0, 1), np.float32)
        self.owner = (np.concatenate([np.full(len(e.clap), i) for i, e in enumerate(entries)]) if dims
                      else np.zeros(0, int))
        self.window_start = np.concatenate([e.starts for e in entries]) if dims else np.zeros(0)

    def __len__(self) -> int:
        return len(self.segments)

    def nearest(self, chroma_seq: np.ndarray, clap_emb: np.ndarray) -> dict[str, Any]:
        """Per segment and per measure, the best similarity (and where in the segment it is)."""
        chroma_sim, lags = self.bank.match(chroma_seq)
        per_window = self.clap @ np.asarray(clap_emb, np.float32) if len(self.clap) else np.zeros(0)
        clap_sim = np.full(len(self.segments), -1.0)
        np.maximum.at(clap_sim, self.owner, per_window)
        best_window = {}
        for w in np.argsort(per_window):  # ascending: the best window of each segment is written last
            best_window[int(self.owner[w])] = float(self.window_start[w])
        return {"clap": clap_sim, "chroma": chroma_sim, "clap_offset": best_window,
                "chroma_offset": lags * chroma.HOP_SECONDS}


def thresholds(heldout: dict[str, list[float]]) -> dict[str, float | None]:
    """Per measure, the similarity above which a clip is flagged (None without held-out segments)."""
    return {m: (max(heldout[m]) + 1) / 2 if heldout.get(m) else None for m in MEASURES}


def copy_score(similarity: float, threshold: float | None) -> float | None:
    """``(s - m) / (1 - m)`` with ``m`` the closest held-out similarity (``threshold = (m + 1) / 2``)."""
    if threshold is None:
        return None
    closest = 2 * threshold - 1
    return (similarity - closest) / max(1 - closest, 1e-12)


def record(index: Index, near: dict[str, Any], limits: dict[str, float | None]) -> dict[str, Any]:
    """The copy-check facts of one clip: the top match, both similarities to it, and the flag."""
    best = {m: int(np.argmax(near[m])) for m in MEASURES}
    scores = {m: copy_score(float(near[m][best[m]]), limits[m]) for m in MEASURES}
    by = max(MEASURES, key=lambda m: -np.inf if scores[m] is None else scores[m])
    top = best[by]
    offset = near["clap_offset"].get(top, 0.0) if by == "clap" else float(near["chroma_offset"][top])
    segment = index.segments[top]
    score = scores[by]
    return {"nearest_path": segment.path, "nearest_start": round(segment.start + max(offset, 0.0), 2),
            "clap_similarity": round(float(near["clap"][top]), 6),
            "chroma_similarity": round(float(near["chroma"][top]), 6),
            "flagged": bool(score is not None and score > FLAG_AT), "nearest_by": by,
            "copy_score": None if score is None else round(score, 4)}


def calibrate(index: Index, queries: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, list[float]]:
    """Each held-out query's nearest similarity per measure: the distribution the thresholds come from."""
    found: dict[str, list[float]] = {m: [] for m in MEASURES}
    for seq, emb in queries:
        near = index.nearest(seq, emb)
        for m in MEASURES:
            found[m].append(float(near[m].max()) if len(index) else 0.0)
    return found


def check(index: Index, clips: list[dict], clip_features: list[tuple[np.ndarray, np.ndarray]],
          heldout: list[tuple[np.ndarray, np.ndarray]], searched_of: int) -> tuple[list[dict], dict]:
    """Copy records for ``clips`` (flagged first) and the facts of the check.

    Args:
        index: The searched training segments.
        clips: The generated clips (``path``, ``model``, ``prompt``, ``seed``).
        clip_features: ``(chroma sequence, CLAP embedding)`` of each clip.
        heldout: The same for the held-out calibration clips.
        searched_of: How many training segments there are in all (``len(index)`` were searched).
    """
    nearest = calibrate(index, heldout)
    limits = thresholds(nearest)
    records = []
    for clip, (seq, emb) in zip(clips, clip_features):
        records.append({"clip": clip["path"], "model": clip["model"], "prompt": clip["prompt"], "seed": clip["seed"],
                        **record(index, index.nearest(seq, emb), limits)})
    records.sort(key=lambda r: (not r["flagged"], -(r["copy_score"] or 0.0)))
    facts = {"thresholds": {m: None if t is None else round(t, 6) for m, t in limits.items()},
             "flag_at_copy_score": FLAG_AT,
             "heldout_nearest": {m: [round(v, 6) for v in vs] for m, vs in nearest.items()},
             "heldout_segments": len(heldout), "training_segments_searched": len(index),
             "training_segments": searched_of, "flagged": sum(r["flagged"] for r in records),
             "rule": "flagged when CLAP or chroma similarity to a training segment passes (m + 1) / 2, m being the "
                     "highest such similarity of any held-out segment"}
    return records, facts
