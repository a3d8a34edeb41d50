"""95 % bootstrap intervals over prompts and seeds, the same resamples for every model.

An aggregate of a model (a mean CLAP score, a Fréchet distance, a KAD) depends on which prompts
and seeds happened to be drawn. The bootstrap redraws them: ``RESAMPLES`` times, draw the set's
prompts with replacement, and for each drawn prompt its seeds with replacement (a two-level,
"hierarchical" bootstrap: clips of one prompt are not independent, prompts are), recompute the
aggregate, and report the 2.5th and 97.5th percentiles as ``ci95``. Every model of a prompt set
uses the same draws, so differences to the base model (``*_vs_base``) are paired: their interval
says whether the adapter's change is larger than the luck of the draw.

The draws come from a generator seeded with the evaluation's seed: the same clips give the same
intervals.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
_SALT = 0xB007


def rng(seed: int, *stream: int) -> np.random.Generator:
    """The generator of one set of draws (``stream`` tells apart prompt sets, segments, ...)."""
    return np.random.default_rng([int(seed), _SALT, *stream])


def hierarchical(grid: np.ndarray, resamples: int, generator: np.random.Generator) -> np.ndarray:
    """Resampled item indices ``(resamples, P * S)`` from ``grid`` ``(P prompts, S seeds)`` of item indices:
    prompts drawn with replacement, then each drawn prompt's seeds with replacement."""
    grid = np.asarray(grid)
    prompts, seeds = grid.shape
    picked = generator.integers(0, prompts, size=(resamples, prompts))
    within = generator.integers(0, seeds, size=(resamples, prompts, seeds))
    return grid[picked[:, :, None], within].reshape(resamples, prompts * seeds)


def flat(n: int, resamples: int, generator: np.random.Generator) -> np.ndarray:
    """Resampled indices ``(resamples, n)`` of ``n`` exchangeable items (held-out segments)."""
    return generator.integers(0, n, size=(resamples, n))


def interval(values: Sequence[float], level: float = LEVEL) -> list[float] | None:
    """The central ``level`` percentile interval of the finite ``values`` (None if there are none)."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not len(values):
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [round(float(low), 6), round(float(high), 6)]


def over(draws: np.ndarray, statistic: Callable[[np.ndarray], float]) -> list[float] | None:
    """``interval`` of ``statistic(indices)`` over every row of ``draws``."""
    return interval([statistic(row) for row in draws])


def grid_of(keys: Sequence[tuple[str, int]]) -> np.ndarray | None:
    """``(prompts, seeds)`` item indices for items keyed ``(prompt, seed)``, in first-seen order;
    None when prompts have different numbers of seeds (then resample the items flat)."""
    prompts: dict[str, list[int]] = {}
    for index, (prompt, _seed) in enumerate(keys):
        prompts.setdefault(prompt, []).append(index)
    sizes = {len(v) for v in prompts.values()}
    return np.asarray(list(prompts.values())) if len(sizes) == 1 else None


def draws_for(keys: Sequence[tuple[str, int]], resamples: int, generator: np.random.Generator) -> np.ndarray:
    """Hierarchical draws over ``keys`` (prompt, seed) when they form a grid, else flat draws."""
    grid = grid_of(keys)
    if grid is None:
        return flat(len(keys), resamples, generator)
    return hierarchical(grid, resamples, generator)
