"""Look at a training run from a notebook: the loss curve and the latest audio samples.

Reads only what the trainer wrote to the run folder (``metrics.jsonl``, ``samples/``), so it
works during training (from a second notebook), after it, and after a runtime restart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nbutils.core import atomic
from nbutils.core.errors import UserError
from nbutils.train import history

LOSS_PLOT = "loss.png"


def curves(out: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """``{"train": [(step, loss)], "val": [...]}`` from metrics.jsonl (last line per step wins)."""
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    for row in history.read(out):
        if row.get("train/loss") is not None:  # null: a skipped step (non-finite loss)
            train[row["step"]] = row["train/loss"]
        if row.get("val/loss") is not None:
            val[row["step"]] = row["val/loss"]
    return {"train": sorted(train.items()), "val": sorted(val.items())}


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    smoothed, last = [], None
    for v in values:
        last = v if last is None else weight * last + (1 - weight) * v
        smoothed.append(last)
    return smoothed


def plot_losses(out: str | os.PathLike, *, show: bool = True) -> Path:
    """Plot train (raw and smoothed) and validation loss; save ``OUT/loss.png`` and return its path.

    With ``show``, the PNG is displayed in the notebook (whatever matplotlib's backend is).
    """
    import matplotlib.pyplot as plt

    data = curves(out)
    if not data["train"]:
        raise UserError(f"No training steps logged in {out} yet. Run the training cell first.")
    fig, ax = plt.subplots(figsize=(8, 4))
    steps, losses = zip(*data["train"])
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, label="train")
    ax.plot(steps, _smooth(list(losses)), color="tab:blue", label="train (smoothed)")
    if data["val"]:
        vsteps, vlosses = zip(*data["val"])
        ax.plot(vsteps, vlosses, "o-", color="tab:orange", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (mean over codebooks)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(out) / LOSS_PLOT
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    if show:
        from IPython.display import Image, display

        display(Image(filename=str(path)))
    return path


def latest_samples(out: str | os.PathLike) -> dict[str, Any] | None:
    """The newest ``samples/step-*`` folder with LoRA samples, plus the base samples to compare."""
    folder = Path(out) / "samples"
    if not folder.is_dir():
        return None
    found = {"lora": None, "base": None}
    for entry in sorted(folder.glob("step-*")):
        info_path = entry / "samples.json"
        if info_path.exists():
            info = atomic.read_json(info_path)
            found[info["kind"]] = {**info, "folder": entry}
    return found if any(found.values()) else None


def play_samples(out: str | os.PathLike) -> list[Path]:
    """Show audio players for the latest LoRA samples next to the base model's (same prompt, seed)."""
    from IPython.display import Audio, Markdown, display

    found = latest_samples(out)
    if not found:
        print(f"No samples in {out} yet (they are written every sample_every steps).")
        return []
    shown = []
    for kind in ("lora", "base"):
        info = found[kind]
        if info is None:
            continue
        display(Markdown(f"**{'LoRA' if kind == 'lora' else 'Base model'}**, step {info['step']}"))
        for name, prompt, seed in zip(info["files"], info["prompts"], info["seeds"]):
            path = info["folder"] / name
            display(Markdown(f"*{prompt}* (seed {seed})"))
            display(Audio(filename=str(path)))
            shown.append(path)
    return shown
