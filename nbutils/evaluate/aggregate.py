"""Summary rows: every aggregate of a model on a prompt set, with its 95 % interval and n.

Per (model, prompt set): the mean of each per-clip score (``CLIP_SCORES``: CLAP text-audio
similarity, style similarity), the Fréchet distance and KAD between the model's clip embeddings
and the held-out ones, and the paired change against the base model (``*_vs_base``). Each value
has ``ci95[key] = [low, high]`` (``uncertainty``: prompts and seeds redrawn) and ``n[key]`` (the
clips it was computed from). A new per-clip score only needs its key in ``CLIP_SCORES``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbutils.evaluate import metrics, uncertainty

BASE = "base"
REFERENCE = "held-out"
CLIP_SCORES = ("clap_text", "style_similarity")  # per-clip scores averaged per model and prompt set
VS_BASE = ("clap_text", "style_similarity", "kad")  # aggregates also reported as a paired change to base


def _mean(values: np.ndarray) -> float | None:
    return None if values is None or not len(values) or np.isnan(values).any() else round(float(values.mean()), 6)


def _std(values: np.ndarray) -> float | None:
    return None if _mean(values) is None else round(float(values.std()), 6)


class Group:
    """One model's clips on one prompt set, ordered like the set's ``keys`` (prompt, seed)."""

    def __init__(self, clips: list[dict], keys: list[tuple[str, int]]):
        by_key = {(c["prompt"], c["seed"]): c for c in clips}
        ordered = [by_key[k] for k in keys]
        self.scores = {name: np.asarray([np.nan if c.get(name) is None else c[name] for c in ordered], np.float64)
                       for name in CLIP_SCORES}
        self.embeddings = np.stack([c["embedding"] for c in ordered])


class Distances:
    """Fréchet distance and KAD of resampled clip sets against the fixed held-out embeddings."""

    def __init__(self, reference: np.ndarray | None):
        self.reference = reference
        self.bandwidth = metrics.median_distance(reference) if reference is not None and len(reference) >= 2 else None

    def usable(self, n: int) -> bool:
        return self.bandwidth is not None and n >= 2

    def kernels(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ref, bw = self.reference, self.bandwidth
        return metrics.rbf_kernel(emb, emb, bw), metrics.rbf_kernel(ref, ref, bw), metrics.rbf_kernel(emb, ref, bw)

    @staticmethod
    def kad(kernels, idx: np.ndarray | None = None) -> float:
        kxx, kyy, kxy = kernels
        if idx is None:
            return metrics.kad_from_kernels(kxx, kyy, kxy)
        return metrics.kad_from_kernels(kxx[np.ix_(idx, idx)], kyy, kxy[idx], same_x=idx[:, None] == idx[None, :])


def model_row(model: str, name: str, group: Group, base: Group, draws: np.ndarray, dist: Distances) -> dict:
    """The summary row of ``model`` on prompt set ``name`` (``base``: the base model's group, same keys)."""
    n = len(group.embeddings)
    row: dict[str, Any] = {"model": model, "prompt_set": name, "samples": n}
    ci: dict[str, Any] = {}
    for key in CLIP_SCORES:
        values = group.scores[key]
        row[key], row[f"{key}_std"] = _mean(values), _std(values)
        ci[key] = None if row[key] is None else uncertainty.over(draws, lambda i: values[i].mean())
    usable = dist.usable(n)
    mine = dist.kernels(group.embeddings) if usable else None
    theirs = dist.kernels(base.embeddings) if usable else None
    row["frechet"] = round(metrics.frechet_distance(group.embeddings, dist.reference), 6) if usable else None
    row["frechet_n_generated"] = n
    row["frechet_n_reference"] = 0 if dist.reference is None else len(dist.reference)
    row["kad"] = round(dist.kad(mine), 6) if usable else None
    ci["frechet"] = uncertainty.over(draws, lambda i: metrics.frechet_distance(group.embeddings[i], dist.reference)) \
        if usable else None
    ci["kad"] = uncertainty.over(draws, lambda i: dist.kad(mine, i)) if usable else None
    for key in VS_BASE:
        if key == "kad":
            delta = (lambda i: dist.kad(mine, i) - dist.kad(theirs, i)) if usable else None
            row["kad_vs_base"] = round(row["kad"] - dist.kad(theirs), 6) if usable else None
        else:
            diff = group.scores[key] - base.scores[key]
            delta = None if np.isnan(diff).any() else (lambda i, d=diff: d[i].mean())
            row[f"{key}_vs_base"] = _mean(diff)
        ci[f"{key}_vs_base"] = uncertainty.over(draws, delta) if delta is not None else None
    row["ci95"] = ci
    row["n"] = {key: n for key in ci}
    return row


def reference_row(reference: np.ndarray, style: np.ndarray, resamples: int, seed: int) -> dict:
    """The held-out row: how close the held-out segments are to their own centroid (the ceiling)."""
    own = metrics.cosine(reference, style)
    draws = uncertainty.flat(len(own), resamples, uncertainty.rng(seed, 1))
    return {"model": REFERENCE, "prompt_set": "reference", "samples": len(reference), "clap_text": None,
            "clap_text_std": None, "style_similarity": round(float(own.mean()), 6),
            "style_similarity_std": round(float(own.std()), 6), "frechet": 0.0, "frechet_n_generated": None,
            "frechet_n_reference": len(reference), "kad": 0.0,
            **{f"{key}_vs_base": None for key in VS_BASE},
            "ci95": {"style_similarity": uncertainty.over(draws, lambda i: own[i].mean())},
            "n": {"style_similarity": len(reference)}}


def summary(samples: list[dict], sets: dict[str, list[str]], reference: np.ndarray | None, *,
            resamples: int = uncertainty.RESAMPLES, seed: int = 0) -> list[dict]:
    """Every (model, prompt set) row, then the held-out row when there is a reference."""
    models = list(dict.fromkeys(s["model"] for s in samples))
    dist = Distances(reference)
    rows = []
    for set_index, (name, prompts) in enumerate(sets.items()):
        mine = [s for s in samples if s["set"] == name]
        keys = list(dict.fromkeys((s["prompt"], s["seed"]) for s in mine if s["model"] == models[0]))
        keys.sort(key=lambda k: (prompts.index(k[0]), k[1]))
        draws = uncertainty.draws_for(keys, resamples, uncertainty.rng(seed, 2, set_index))
        groups = {m: Group([s for s in mine if s["model"] == m], keys) for m in models}
        base = groups.get(BASE, groups[models[0]])
        rows += [(models.index(m), set_index, model_row(m, name, g, base, draws, dist)) for m, g in groups.items()]
    rows = [r for _, _, r in sorted(rows, key=lambda t: (t[0], t[1]))]
    if reference is not None and len(reference):
        rows.append(reference_row(reference, metrics.centroid(reference), resamples, seed))
    return rows
