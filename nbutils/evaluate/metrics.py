"""Embedding metrics for evaluation: cosine similarity, a style centroid, Fréchet distance.

All take numpy arrays of embeddings, one row per item. Fréchet distance fits a Gaussian to each
set and compares them (as FAD does for VGGish or CLAP embeddings). It needs no scipy: the
matrix square root comes from symmetric eigendecompositions, which stays real and stable even
when the covariances are singular, as they are whenever a set has fewer items than dimensions.
Few items make it a rough number; callers report the sample sizes next to it.
"""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally long sets (or one row broadcast against many)."""
    return np.sum(unit(a) * unit(b), axis=-1)


def centroid(embeddings: np.ndarray) -> np.ndarray:
    """Direction of the mean of unit-length embeddings: the 'style' of a set."""
    return unit(unit(embeddings).mean(axis=0))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to sets ``x`` and ``y`` (rows are items).

    ``|mu_x - mu_y|^2 + tr(S_x) + tr(S_y) - 2 tr((S_x^1/2 S_y S_x^1/2)^1/2)``.

    Raises:
        ValueError: a set has fewer than two items (no covariance).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"Fréchet distance needs at least 2 items per set (got {len(x)} and {len(y)})")
    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    # atleast_2d: for one-dimensional embeddings np.cov returns a scalar
    s_x, s_y = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    root_x = _sqrt_psd(s_x)
    cross = np.linalg.eigvalsh((root_x @ s_y @ root_x + (root_x @ s_y @ root_x).T) / 2)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    value = float(np.sum((mu_x - mu_y) ** 2) + np.trace(s_x) + np.trace(s_y) - 2 * trace_sqrt)
    return max(value, 0.0)  # rounding can leave -1e-15 for identical sets
