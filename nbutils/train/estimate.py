"""How long training will take here: time a few real steps and estimate an epoch (02_train's preset cell)."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any

from nbutils.core import devices, durations
from nbutils.train import presets
from nbutils.train.trainer import Trainer


def measure(cfg, steps: int = 3) -> dict[str, Any]:
    """Time a few real training steps of ``cfg`` (in a throwaway folder) and estimate an epoch.

    The first step (allocations, kernel selection) is not counted.

    Returns:
        ``seconds_per_step``, ``steps_per_epoch``, ``epoch_seconds``, ``run_seconds`` (to
        ``max_steps`` or ``epochs``), and the batch settings used.
    """
    with tempfile.TemporaryDirectory(prefix="nbutils-measure-") as scratch:
        trial = dataclasses.replace(cfg, out=scratch, wandb="disabled", sample_every=0, push_to_hub="")
        trainer = Trainer(trial, log=lambda message: None, quiet=True)

        def seconds_per_step() -> float:
            trainer.train_step()
            started = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            return (time.perf_counter() - started) / steps

        per_step, out_of_memory = devices.unless_out_of_memory(seconds_per_step)
        if out_of_memory:
            error = presets.out_of_memory_error(trainer.batch_size, trainer.grad_accum)
            trainer.release()
            raise error
        result = {
            "seconds_per_step": per_step,
            "steps_per_epoch": trainer.sampler.steps_per_epoch,
            "epoch_seconds": per_step * trainer.sampler.steps_per_epoch,
            "run_seconds": per_step * trainer.total_steps,
            "batch_size": trainer.batch_size,
            "grad_accum": trainer.grad_accum,
            "precision": trainer.settings["precision"],
        }
        trainer.release()  # the training cell that follows needs the GPU memory
    return result


def show(cfg, steps: int = 3) -> dict[str, Any]:
    """Notebook cell: print the GPU, the suggestion for this model, the table, and a measured estimate."""
    gpu = presets.detect()
    preset = presets.suggest(cfg.model, gpu, cfg.crop_seconds)
    print(f"Device: {gpu.name + f' ({gpu.vram_gb:g} GB)' if gpu else 'CPU (no GPU)'}")
    print(f"Suggested for {cfg.model}: batch {preset.batch_size} x accumulation {preset.grad_accum}, "
          f"{preset.precision}, gradient checkpointing {'on' if preset.grad_checkpointing else 'off'}"
          + (f" (~{preset.memory_gb:g} GB)" if preset.memory_gb else "") + (f". {preset.note}" if preset.note else ""))
    print("\nEstimates for the Colab GPUs at", f"{cfg.crop_seconds:g} s crops:")
    print(presets.format_table(presets.table(cfg.crop_seconds)))
    timing = measure(cfg, steps)
    print(f"\nMeasured here: {timing['seconds_per_step']:.2f} s per step (batch {timing['batch_size']} x "
          f"{timing['grad_accum']}, {timing['precision']}) -> about {durations.human(timing['epoch_seconds'])} "
          f"per epoch ({timing['steps_per_epoch']} steps), {durations.human(timing['run_seconds'])} for this run.")
    return {"preset": dataclasses.asdict(preset), **timing}
