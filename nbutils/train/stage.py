"""LoRA fine-tuning of MusicGen on token shards, with exact resume (``python -m nbutils train``).

Read top to bottom: ``TrainConfig`` (every setting, with help, and what may change on resume),
``run`` (resume or start, the loop, finish or stop) and the command line. The ``Trainer``
(``nbutils.train.trainer``) does each step; ``run`` only says in which order.

What makes a resumed run equal to an uninterrupted one, bit for bit on CPU:

* the data order, crop offsets and CFG decisions derive from ``(seed, epoch, index)`` only
  (``nbutils.train.dataset``); the checkpoint stores the cursor;
* the checkpoint stores the RNG states taken at the end of the last completed step (used by
  LoRA dropout) plus optimizer, scheduler and loss-scaler state (``nbutils.train.checkpoint``);
* evaluation, samples and logging never touch the training RNG streams (samples run in a
  forked RNG), so changing how often they happen does not change the weights;
* a KeyboardInterrupt (Colab's stop button) is held back during the optimizer update and
  otherwise discards the half-done step, then saves the last completed one.

Runs on one process or several (``accelerate launch -m nbutils train ...`` or ``torchrun``):
each process takes its own slice of every optimizer step's items; the main process writes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

from nbutils.core import config, diskerrors, tracking
from nbutils.core.config import option
from nbutils.core.errors import UserError
from nbutils.train import dataset as data
from nbutils.train import guard, history, hub, likelihood, lora
from nbutils.train.trainer import ADAPTERS_DIR, Trainer

SCHEDULERS = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CHECKPOINTING = ("auto", "on", "off")


@dataclasses.dataclass
class TrainConfig:
    """Settings of one LoRA training run. Fields marked in ``MEANINGFUL`` cannot change on resume."""

    tokens: str = option("", "Folder of token shards written by the tokenize stage (its --out).")
    out: str = option("", "Run folder: latest.pt, checkpoints/, adapters/, samples/. Re-running with the "
                          "same folder resumes.")
    model: str = option("", "MusicGen to fine-tune: hub id, local save_pretrained folder, or 'tiny'. "
                            "Empty: the model the shards were tokenized with.")
    segment_seconds: float = option(30.0, "Length of a training crop in seconds (MusicGen was trained on 30 s).")
    cfg_dropout: float = option(data.CFG_DROPOUT, "Probability of training a crop without its text, so "
                                "classifier-free guidance keeps working (audiocraft's default 0.3).")
    val_fraction: float = option(0.05, "Share of tracks held out for validation (whole tracks).")
    val_crops: int = option(256, "At most this many validation crops per evaluation (evenly spaced).")
    seed: int = option(0, "Seed of the split, data order, crops, CFG dropout and LoRA initialization.")
    batch_size: int = option(0, "Crops per process per micro-batch; 0 = the GPU preset (nbutils.presets). "
                                "Set alone, the accumulation makes up the preset's effective batch of 16 "
                                "(or as near as it divides).")
    grad_accum: int = option(0, "Micro-batches per optimizer step; 0 = the GPU preset (or what makes up 16 "
                                "crops with the batch_size you set).")
    precision: str = option("auto", "auto (bf16 on A100/H100/L4, fp16 with loss scaling on T4/V100, fp32 on "
                                    "CPU), bf16, fp16 or fp32.")
    grad_checkpointing: str = option("auto", "Recompute activations to save GPU memory: auto (GPU preset), on, off.")
    lr: float = option(2e-4, "Peak learning rate of AdamW.")
    weight_decay: float = option(0.01, "AdamW weight decay (on LoRA weights only).")
    warmup_steps: int = option(100, "Steps of linear warmup from 0 to lr.")
    scheduler: str = option("cosine", "Decay after warmup: cosine, linear (both to 0 at the last step) or constant.")
    max_grad_norm: float = option(1.0, "Clip the gradient norm to this (0: no clipping).")
    max_steps: int = option(0, "Optimizer steps to train; 0 = use epochs.")
    epochs: int = option(1, "Passes over the training crops (when max_steps is 0).")
    save_every: int = option(200, "Write latest.pt and a step folder every N steps (also at the end; latest.pt "
                                  "also on stop).")
    save_every_minutes: float | None = option(None, "Also write latest.pt when this many minutes passed since "
                                              "the last save (whichever of the two comes first); 0 = only by "
                                              "steps. Empty: 10 in a Colab runtime, 0 elsewhere.")
    keep_checkpoints: int = option(3, "Step folders (the PEFT adapter of a step-count save) to keep in "
                                      "checkpoints/; older ones are deleted. 0 = none.")
    eval_every: int = option(0, "Compute the validation loss every N steps; 0 = at every save.")
    sample_every: int = option(1000, "Generate audio samples every N steps (base model at step 0); 0 = never.")
    sample_prompts: list[str] = option([], "Fixed prompts for samples; empty = up to 3 descriptions from the "
                                           "validation tracks.")
    sample_seconds: float = option(8.0, "Length of each sample in seconds.")
    log_every: int = option(10, "Flush metrics.jsonl (the loss curve) every N steps.")
    max_skipped_steps: int = option(10, "Stop when this many steps in a row were skipped for a NaN/inf loss or "
                                        "gradient (fp16 overflows included); 0 = never stop for that.")
    divergence_factor: float = option(2.0, "Stop when the loss stays above this many times its running median "
                                           "(last 200 steps) for divergence_steps steps in a row; 0 = never.")
    divergence_steps: int = option(20, "How many steps in a row the loss must stay that high to stop (saves "
                                       "wait meanwhile, so the last good checkpoint is kept).")
    lora_targets: str = option(lora.DEFAULT_PRESET, "LoRA targets: self-attention (q,k,v,out of the decoder), "
                                                    "attention (+ cross-attention), all-linear (+ fc1, fc2).")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: float = option(32.0, "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = option(0.05, "Dropout on the LoRA input.")
    wandb: str = option("auto", "WandB mode: auto (WANDB_MODE if set, else online with WANDB_API_KEY and offline "
                                "into the run folder without it), online, offline or disabled.")
    wandb_project: str = option("musicgen-lora", "WandB project.")
    wandb_name: str = option("", "WandB run name; empty = the run folder's name.")
    push_to_hub: str = option("", "Hub repo id (user/name) to upload the final adapter to, with a model card; "
                                  "needs HF_TOKEN.")
    hub_private: bool = option(True, "Create the Hub repo as private.")

    def __post_init__(self) -> None:
        if isinstance(self.sample_prompts, str):  # "a | b", as notebook 03's PROMPTS: not one prompt per letter
            self.sample_prompts = [p.strip() for p in self.sample_prompts.split("|") if p.strip()]
        checks = [
            (all(isinstance(p, str) for p in self.sample_prompts), "sample_prompts must be a list of texts"),
            (self.segment_seconds > 0, "segment_seconds must be positive"),
            (0 <= self.cfg_dropout < 1, "cfg_dropout must be in [0, 1)"),
            (0 <= self.val_fraction <= 0.5, "val_fraction must be in [0, 0.5]"),
            (self.batch_size >= 0 and self.grad_accum >= 0, "batch_size and grad_accum must be >= 0 (0 = preset)"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.grad_checkpointing in CHECKPOINTING, f"grad_checkpointing must be one of {CHECKPOINTING}"),
            (self.scheduler in SCHEDULERS, f"scheduler must be one of {SCHEDULERS}"),
            (self.lora_targets in lora.PRESETS, f"lora_targets must be one of {tuple(lora.PRESETS)}"),
            (self.wandb in tracking.MODES, f"wandb must be one of {tracking.MODES}"),
            (self.max_steps >= 0 and self.epochs >= 1, "max_steps must be >= 0 and epochs >= 1"),
            (self.save_every >= 1, "save_every must be >= 1"),
            (self.save_every_minutes is None or self.save_every_minutes >= 0, "save_every_minutes must be >= 0"),
            (self.max_skipped_steps >= 0 and self.divergence_factor >= 0 and self.divergence_steps >= 1,
             "max_skipped_steps and divergence_factor must be >= 0, divergence_steps >= 1"),
            (self.keep_checkpoints >= 0, "keep_checkpoints must be >= 0"),
            (self.lr > 0 and self.warmup_steps >= 0, "lr must be positive and warmup_steps >= 0"),
            (self.val_crops >= 1, "val_crops must be >= 1 (to train without validation, set val_fraction 0)"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"Invalid training setting: {message}.")

    @staticmethod
    def resume_rule() -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(MEANINGFUL, HARMLESS)``: what must match to resume a run, and what may change (with a note)."""
        return MEANINGFUL, HARMLESS


# What a checkpoint's weights mean: changing any of these refuses to resume (see check_resume).
MEANINGFUL = ("model", "data", "crop_frames", "effective_batch", "lora_targets", "lora_r", "lora_alpha",
              "lora_dropout", "seed", "cfg_dropout", "val_fraction", "val_crops", "lr", "weight_decay",
              "warmup_steps", "scheduler", "max_grad_norm")
# Accepted on resume (with a note): how long, how often, where to log, how to fit the GPU.
HARMLESS = ("max_steps", "epochs", "save_every", "save_every_minutes", "keep_checkpoints", "eval_every",
            "sample_every", "sample_prompts", "sample_seconds", "log_every", "max_skipped_steps", "divergence_factor",
            "divergence_steps", "wandb", "wandb_project", "wandb_name", "batch_size", "grad_accum", "precision",
            "grad_checkpointing", "push_to_hub", "hub_private", "tokens")


def read_metrics(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The run's metrics lines (train and validation), one dict per line, in order."""
    return history.read(out)


@diskerrors.guard("out")  # a read-only or full --out is a message, not a traceback
def run(cfg: TrainConfig, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train (or continue training) and return the summary (step, train_loss, val_loss, ...).

    Re-running with the same ``out`` resumes from ``OUT/latest.pt``. A KeyboardInterrupt saves
    the last completed step before it propagates. A run that diverges stops with a
    ``guard.Diverged`` (a ``UserError``) and saves nothing of the diverging steps.
    """
    import torch

    started = time.time()
    if cfg.push_to_hub:
        hub.check_token()  # before hours of training, not after
    tracking.check(cfg.wandb)  # before the model loads
    trainer = Trainer(cfg, log=log)
    trainer.begin()  # resume from OUT/latest.pt, or start fresh
    if trainer.complete():
        trainer.log(f"Training is already at step {trainer.step} of {trainer.total_steps}: nothing to do. "
                    "Raise max_steps (or epochs) to train longer.")
        return _summary(trainer, started)
    trainer.start()  # WandB, the base model's samples at step 0, the training RNG streams
    bar = trainer.progress_bar()
    try:
        while trainer.step < trainer.total_steps:
            row = trainer.train_step()  # a step with a NaN/inf loss or gradient is skipped, not applied
            bar.update(1)
            skipped = {"skipped": trainer.guard.skipped} if trainer.guard.skipped else {}
            bar.set_postfix(loss=f"{row['train/loss']:.3f}", val=f"{trainer.last_val or float('nan'):.3f}",
                            lr=f"{row['train/lr']:.1e}", **skipped, refresh=False)
            trainer.after_step(row)  # evaluation, checkpoint, samples, metrics when due; stops a divergence
        bar.close()
        trainer.finish()  # final evaluation and checkpoint, adapters/{best,final}, Hub push
    except KeyboardInterrupt:
        failure, error = "stopped", None
    except torch.cuda.OutOfMemoryError:
        failure, error = "out of memory", None
    except guard.Diverged as diverged:
        failure, error = "diverged", diverged.with_traceback(None)  # not its frames: they hold the model
    else:
        failure = error = None
    # Handled here, not in the except blocks: the caught error's frames (the model's forward and its
    # activations) are gone once they end, and IPython keeps only the fresh error raised below.
    if failure is not None:
        bar.close()
        raise trainer.stop(failure, error)  # saves the last completed step on a stop; lets go of the model
    tracking.finish()
    trainer.accelerator.wait_for_everyone()
    return _summary(trainer, started)


def _summary(trainer: Trainer, started: float) -> dict[str, Any]:
    """The figures ``python -m nbutils train`` prints as its last JSON line."""
    return {
        "step": trainer.step,
        "train_loss": trainer.last_train,
        "val_loss": trainer.last_val,
        "best_val_loss": trainer.best_val,
        "best_step": trainer.best_step,
        "epoch": trainer.cursor.epoch,
        "total_steps": trainer.total_steps,
        "resumed_from": trainer.resumed_from,
        "out": str(trainer.out),
        "adapter_final": str(trainer.out / ADAPTERS_DIR / "final"),
        "adapter_best": str(trainer.out / ADAPTERS_DIR / "best"),
        "wandb_run_id": trainer.wandb_run_id,
        "seconds": round(time.time() - started, 1),
        # base vs final adapter on the validation tracks, measured at the end (OUT/heldout.json)
        **likelihood.summary_keys(likelihood.read(trainer.out, trainer.step)),
    }


def notebook_config(project, run_name: str = "", **settings: Any) -> TrainConfig:
    """Notebook 02's settings: the project's tokens, ``runs/<run_name>`` and model, plus ``settings``.

    Args:
        project: From ``colab.connect`` / ``colab.current``.
        run_name: Folder under ``runs/``; a new name starts a new run, the same name resumes.
            Empty: the project's run (``project.run_dir``), which notebooks 03 and 04 read.
        **settings: Any ``TrainConfig`` field (unknown names are refused with a suggestion).
    """
    out = project.paths.run(run_name) if run_name else project.run_dir
    base = {"tokens": str(project.paths.tokens), "out": str(out), "model": project.model}
    return config.from_dict(TrainConfig, {**base, **settings}, what="training")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_cli(parser) -> None:
    """Options of ``python -m nbutils train`` (one per TrainConfig field)."""
    config.add_arguments(parser, TrainConfig)


def run_cli(args) -> dict[str, Any]:
    """Entry point of ``python -m nbutils train``; returns the summary printed as the last JSON line."""
    from accelerate.state import PartialState

    try:
        summary = run(config.from_args(TrainConfig, args))
    finally:
        # Under accelerate launch / torchrun, leave the process group before exiting: otherwise
        # gloo's threads can still be talking to a peer that already exited, and the process
        # aborts ("terminate called without an active exception") after training went well.
        PartialState().destroy_process_group()
    if not PartialState().is_main_process:
        return None  # one JSON line per launch, from the main process
    return summary
