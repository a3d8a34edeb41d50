"""WandB, optional everywhere: stages log when a run is active and stay silent otherwise.

``log`` and ``active`` are safe to call from any stage without caring whether wandb is
installed, logged in, offline or disabled. Secrets never pass through here: wandb reads
``WANDB_API_KEY`` from the environment (``nbutils.colab.use_secrets`` puts it there).
"""

from __future__ import annotations

from typing import Any


def _run():
    try:
        import wandb
    except ImportError:
        return None
    return wandb.run


def active() -> bool:
    """True when a wandb run is active in this process."""
    return _run() is not None


def log(metrics: dict[str, Any], step: int | None = None) -> None:
    """Log to the active wandb run; no-op without one."""
    run = _run()
    if run is not None:
        run.log(metrics, step=step)
