"""Durations for people: ``1 h 05 min``, ``4 min 07 s`` (ETAs and time estimates)."""

from __future__ import annotations


def human(seconds: float | None) -> str:
    """``seconds`` as ``H h MM min`` (an hour or more) or ``M min SS s``, to the nearest second.

    None (nothing measured yet) is ``unknown``.
    """
    if seconds is None:
        return "unknown"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"
