"""Embedding metrics for evaluation: cosine similarity, a style centroid, Fréchet distance, KAD.

All take numpy arrays of embeddings, one row per item. Fréchet distance fits a Gaussian to each
set and compares them (as FAD does for VGGish or CLAP embeddings); it needs no scipy and stays
exact when the covariances are singular, as they are whenever a set has fewer items than
dimensions. It is biased upwards for small sets, so the kernel audio distance (KAD, an unbiased
MMD with a Gaussian kernel) stands beside it. Callers report the sample sizes next to both.
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


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to sets ``x`` and ``y`` (rows are items).

    ``|mu_x - mu_y|^2 + tr(S_x) + tr(S_y) - 2 tr((S_x^1/2 S_y S_x^1/2)^1/2)``. With centred
    sets ``X``, ``Y`` the covariances are ``X'X / (n-1)`` and ``Y'Y / (m-1)``, and the last
    trace is the sum of the singular values of ``Y X' / sqrt((n-1)(m-1))``: an ``m x n`` problem
    instead of two ``D x D`` eigendecompositions, exact, and fast enough to bootstrap.

    Raises:
        ValueError: a set has fewer than two items (no covariance).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim == 1:
        x, y = x[:, None], y[:, None]
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"Fréchet distance needs at least 2 items per set (got {len(x)} and {len(y)})")
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    scale = np.sqrt((len(x) - 1) * (len(y) - 1))
    trace_sqrt = np.linalg.svd(yc @ xc.T / scale, compute_uv=False).sum()
    value = float(np.sum((x.mean(axis=0) - y.mean(axis=0)) ** 2) + np.sum(xc**2) / (len(x) - 1)
                  + np.sum(yc**2) / (len(y) - 1) - 2 * trace_sqrt)
    return max(value, 0.0)  # rounding can leave -1e-15 for identical sets


# kadtk (the paper's toolkit) reports MMD^2 x 100, so that typical values read like FAD's
KAD_SCALE = 100.0


def median_distance(y: np.ndarray) -> float:
    """The median Euclidean distance between distinct rows of ``y``: KAD's kernel bandwidth."""
    y = np.asarray(y, dtype=np.float64)
    d2 = np.sum(y**2, 1)[:, None] + np.sum(y**2, 1)[None, :] - 2 * y @ y.T
    upper = np.sqrt(np.clip(d2[np.triu_indices(len(y), 1)], 0, None))
    return float(np.median(upper)) if upper.size else 1.0


def rbf_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian kernel ``exp(-|a_i - b_j|^2 / (2 bandwidth^2))`` between the rows of ``a`` and ``b``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d2 = np.sum(a**2, 1)[:, None] + np.sum(b**2, 1)[None, :] - 2 * a @ b.T
    return np.exp(-np.clip(d2, 0, None) / (2 * bandwidth**2 + 1e-12))


def kad_from_kernels(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, same_x=None, same_y=None) -> float:
    """Unbiased MMD^2 (times ``KAD_SCALE``) from kernel matrices.

    The within-set means leave out pairs of an item with itself: the diagonal, or, for a
    bootstrap resample, every pair whose ``same_x`` / ``same_y`` mask is True (the same
    original item drawn twice), so a resample stays as unbiased as the original set.
    """
    def within(k, same):
        same = np.eye(len(k), dtype=bool) if same is None else same
        pairs = (~same).sum()
        return float(k[~same].sum() / pairs) if pairs else float("nan")

    return KAD_SCALE * (within(kxx, same_x) + within(kyy, same_y) - 2 * float(kxy.mean()))


def kernel_audio_distance(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """KAD (Chung et al. 2025, arXiv 2502.15602): the unbiased MMD^2 between generated ``x`` and
    reference ``y`` with a Gaussian kernel whose bandwidth is the reference set's median distance.

    Unbiased for any sample size (its expectation is the population value, 0 for equal
    distributions, so it can come out slightly negative), unlike the Fréchet distance, whose
    bias grows as the sets shrink.

    Raises:
        ValueError: a set has fewer than two items.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"KAD needs at least 2 items per set (got {len(x)} and {len(y)})")
    bandwidth = bandwidth or median_distance(y)
    return kad_from_kernels(rbf_kernel(x, x, bandwidth), rbf_kernel(y, y, bandwidth), rbf_kernel(x, y, bandwidth))
