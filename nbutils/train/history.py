"""A run's ``metrics.jsonl``: one JSON line per training step and per evaluation (the loss curves).

Lines are queued and appended in batches (every ``log_every`` steps and before every checkpoint),
each append atomic; WandB gets every line as it is recorded. A skipped step (``guard``) has
``train/skipped``, ``train/skip_reason`` and ``train/skip_tracks``; its non-finite loss is ``null``.
On resume, the lines after the resumed step are dropped: the resumed run computes them again,
identically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from nbutils.core import atomic, tracking

METRICS_FILE = "metrics.jsonl"


def read(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The run's metrics lines (train and validation), one dict per line, in order."""
    return atomic.read_jsonl(Path(out) / METRICS_FILE)


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def step_row(trainer, per_codebook, tokens: int, grad_norm: float, lr: float, seconds: float) -> dict[str, Any]:
    """The metrics line of the step ``trainer`` just took (``per_codebook``: averaged over the processes)."""
    import torch

    acc = trainer.accelerator
    tokens_all = int(acc.reduce(torch.tensor(tokens, device=trainer.device), reduction="sum"))
    row = {
        "step": trainer.step,
        "epoch": round(trainer.cursor.epoch + trainer.cursor.position / max(1, len(trainer.train_set)), 4),
        "train/loss": float(per_codebook.mean()),
        **{f"train/loss_cb{k}": float(v) for k, v in enumerate(per_codebook.tolist())},
        "train/lr": float(lr),
        "train/grad_norm": grad_norm,
        "train/tokens_per_s": tokens_all / seconds,
        "train/step_time": seconds,
    }
    if torch.cuda.is_available():
        row["train/gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30  # peak of this step
        torch.cuda.reset_peak_memory_stats()
    return row


class MetricsLog:
    """The metrics file of the run folder ``out``; ``writer`` False (not the main process): no-ops."""

    def __init__(self, out: Path, writer: bool):
        self.path = Path(out) / METRICS_FILE
        self.writer = writer
        self._pending: list[dict[str, Any]] = []

    def record(self, row: dict[str, Any]) -> None:
        """Queue a metrics line for metrics.jsonl and send it to WandB."""
        if not self.writer:
            return
        self._pending.append(row)
        tracking.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def flush(self) -> None:
        """Append the queued lines (a NaN or inf, as in a skipped step's loss, is written as null: JSON)."""
        if self.writer and self._pending:
            atomic.append_line(self.path, "\n".join(json.dumps(_finite(r)) for r in self._pending))
            self._pending = []

    def trim(self, step: int) -> None:
        """Drop the lines after ``step`` (a resumed run computes them again, identically)."""
        if self.writer and self.path.exists():
            keep = [r for r in atomic.read_jsonl(self.path) if r.get("step", 0) <= step]
            atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def discard(self) -> None:
        """Delete the file (lines of an earlier start that never saved a checkpoint)."""
        self.path.unlink(missing_ok=True)
