"""Training's part of ``python -m nbutils doctor``: real steps at the preset, a save and a restore.

``timed_steps`` trains a throwaway run through the ``Trainer``'s public steps (as ``estimate``
and ``stage.run`` do): one warm-up step, then ``timed`` steps whose time and peak GPU memory
count. ``save_then_steps`` saves its ``latest.pt`` and takes ``after`` more steps, whose losses are
the uninterrupted run's. ``resumed_run`` then builds a new ``Trainer`` on the same folder, which resumes from that
``latest.pt``, and takes the same ``after`` steps. Their losses must equal the uninterrupted ones:
bit for bit on a CPU; within ``GPU_RELATIVE_TOLERANCE`` on a GPU, whose kernels need not
reproduce the last bits of a sum (the restored weights themselves are exact copies).

Each step is one micro-batch of the preset's batch size (accumulation 1): accumulation repeats
the same micro-batch work without raising the peak memory, so the time of a whole optimizer step
at the preset is the micro-batch time x the preset's accumulation (``seconds_per_step``).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

from nbutils.core import devices
from nbutils.core.errors import UserError
from nbutils.train import checkpoint, presets
from nbutils.train.stage import TrainConfig
from nbutils.train.trainer import Trainer

# Relative difference allowed between resumed and uninterrupted losses on a GPU. A restore that
# is wrong (another step's weights, optimizer state or data position) moves the loss by far more.
GPU_RELATIVE_TOLERANCE = 1e-3


def trial_config(tokens: str | Path, out: str | Path, model: str, crop_seconds: float) -> TrainConfig:
    """A throwaway run at ``model``'s preset on this machine: the preset's batch size and precision,
    ``crop_seconds`` crops, one micro-batch per step, nothing but ``latest.pt`` saved. No warmup:
    the full learning rate from the first step, so every step moves the weights (and a wrong restore
    shows in the losses)."""
    preset = presets.suggest(model, segment_seconds=crop_seconds)
    return TrainConfig(tokens=str(tokens), out=str(out), model=model, segment_seconds=crop_seconds,
                       batch_size=preset.batch_size, grad_accum=1, val_fraction=0.0, max_steps=1000,
                       warmup_steps=0, save_every=10**6, keep_checkpoints=0, sample_every=0, wandb="disabled")


def _steps(trainer: Trainer, count: int) -> list[dict[str, Any]]:
    """``count`` training steps; an out-of-memory error becomes the preset's message."""
    rows, out_of_memory = devices.unless_out_of_memory(lambda: [trainer.train_step() for _ in range(count)])
    if out_of_memory:
        error = presets.out_of_memory_error(trainer.batch_size, trainer.grad_accum)
        trainer.release()
        raise error
    return rows


def timed_steps(cfg: TrainConfig, *, timed: int = 3, log: Callable[[str], None] = lambda message: None
                ) -> tuple[Trainer, dict[str, Any]]:
    """Start a fresh run in ``cfg.out``: a warm-up step, ``timed`` timed steps, then its adapter.

    Returns:
        The trainer (still holding its model: ``save_then_steps`` continues it, or call its
        ``release``) and ``batch_size``, ``precision``, ``grad_checkpointing``, ``crop_seconds``,
        ``preset_grad_accum``, ``seconds_per_micro_batch``, ``seconds_per_step`` (x the preset's
        accumulation), ``peak_gpu_gb`` (None on a CPU), ``losses``, ``adapter`` (a PEFT folder
        written after the timed steps) and ``device``.
    """
    trainer = Trainer(cfg, log=log, quiet=True)
    try:
        trainer.begin()
        trainer.start()
        _steps(trainer, 1)  # allocations, kernel selection: not counted
        rows = _steps(trainer, timed)
        adapter = trainer.save_adapter("final")
    except BaseException:
        trainer.release()
        raise
    preset = trainer.settings["preset"]
    per_micro = statistics.mean(row["train/step_time"] for row in rows)
    peaks = [row["train/gpu_mem_gb"] for row in rows if "train/gpu_mem_gb" in row]
    return trainer, {
        "batch_size": trainer.batch_size, "precision": trainer.settings["precision"],
        "grad_checkpointing": trainer.settings["grad_checkpointing"], "crop_seconds": cfg.segment_seconds,
        "preset_grad_accum": preset.grad_accum, "seconds_per_micro_batch": per_micro,
        "seconds_per_step": per_micro * preset.grad_accum, "peak_gpu_gb": max(peaks) if peaks else None,
        "losses": [row["train/loss"] for row in rows], "adapter": str(adapter), "device": str(trainer.device),
    }


def save_then_steps(trainer: Trainer, *, after: int = 2) -> dict[str, Any]:
    """Save ``latest.pt`` (the real save), take ``after`` more steps, and let go of the trainer.

    Returns:
        ``saved_step``, ``save_seconds``, ``latest_mb`` and ``uninterrupted`` (the losses after
        the save: what a resumed run must reproduce).
    """
    try:
        started = time.perf_counter()
        trainer.save()
        save_seconds = time.perf_counter() - started
        saved_step = trainer.step
        latest_mb = (trainer.out / checkpoint.LATEST).stat().st_size / 2**20
        uninterrupted = [row["train/loss"] for row in _steps(trainer, after)]
    finally:
        trainer.release()
    return {"saved_step": saved_step, "save_seconds": save_seconds, "latest_mb": latest_mb,
            "uninterrupted": uninterrupted}


def resumed_run(cfg: TrainConfig, *, after: int = 2, log: Callable[[str], None] = lambda message: None
                ) -> dict[str, Any]:
    """A new ``Trainer`` on ``cfg.out`` resumes from its ``latest.pt`` and takes ``after`` steps.

    Returns:
        ``resumed_from`` (the step restored), ``restore_seconds`` (building the trainer and
        loading the checkpoint) and ``resumed`` (the losses of the steps after it).

    Raises:
        UserError: no readable ``latest.pt`` to resume from.
    """
    started = time.perf_counter()
    trainer = Trainer(cfg, log=log, quiet=True)
    try:
        trainer.begin()
        restore_seconds = time.perf_counter() - started
        if trainer.resumed_from is None:
            raise UserError(f"Nothing to resume from: no {checkpoint.LATEST} in {trainer.out} after the save.")
        trainer.start()
        resumed = [row["train/loss"] for row in _steps(trainer, after)]
    finally:
        trainer.release()
    return {"resumed_from": trainer.resumed_from, "restore_seconds": restore_seconds, "resumed": resumed}


def compare_losses(uninterrupted: list[float], resumed: list[float], device: str) -> dict[str, Any]:
    """Do the resumed losses equal the uninterrupted ones (exactly on a CPU, within the GPU tolerance)?

    Returns:
        ``equal``, ``max_abs_difference``, ``max_relative_difference`` and ``tolerance`` (relative;
        0 means bit for bit).
    """
    tolerance = 0.0 if str(device).startswith("cpu") else GPU_RELATIVE_TOLERANCE
    pairs = list(zip(uninterrupted, resumed))
    diffs = [abs(a - b) for a, b in pairs]
    relative = [abs(a - b) / max(abs(a), 1e-12) for a, b in pairs]
    equal = len(uninterrupted) == len(resumed) and all(
        (a == b) if tolerance == 0 else (r <= tolerance) for (a, b), r in zip(pairs, relative))
    return {"equal": equal, "max_abs_difference": max(diffs, default=0.0),
            "max_relative_difference": max(relative, default=0.0), "tolerance": tolerance}

