"""Figures as PNG files: written atomically, closed, and shown in a notebook whatever matplotlib's backend is."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nbutils.core import atomic


def save_png(fig: Any, path: str | os.PathLike, *, show: bool = False, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (temp file + rename), close it, and display the PNG when ``show``.

    Displaying the file rather than the figure works under any backend (Agg in the tests and the
    demo's kernels), and shows exactly what was saved.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    if show:
        from IPython.display import Image, display

        display(Image(filename=str(path)))
    return path
