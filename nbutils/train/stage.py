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
import typing
import warnings
from typing import Any, Callable

from nbutils.core import config, diskerrors, tracking
from nbutils.core.config import option
from nbutils.core.errors import UserError  # noqa: F401 - tests and users catch train.UserError
from nbutils.core.sampling import SamplingConfig
from nbutils.train import guard, history, hub, likelihood, lora
from nbutils.train.trainer import ADAPTERS_DIR, Trainer

SCHEDULERS = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CHECKPOINTING = ("auto", "on", "off")


MUST, MAY = config.MUST_MATCH, config.MAY_CHANGE


@dataclasses.dataclass
class TrainConfig:
    """Settings of one LoRA training run.

    ``resume=`` on each field says what a resumed run may change: ``must-match`` settings decide what
    the weights mean (a change is refused, with what differs and how to start fresh); ``may-change``
    ones say how long, how often, where to log and how to fit the GPU (a change is accepted and noted).
    The facts derived from them that must match too are ``trainer.DERIVED_MUST_MATCH``.
    """

    WHAT: typing.ClassVar[str] = "training"

    tokens: str = option("", "Folder of token shards written by the tokenize stage (its --out).", resume=MAY)
    out: str = option("", "Run folder: latest.pt, checkpoints/, adapters/, samples/. Re-running with the "
                          "same folder resumes.")
    model: str = option("", "MusicGen to fine-tune: hub id (melody checkpoints too), local save_pretrained folder, "
                            "or 'tiny' / 'tiny-melody'. Empty: the model the shards were tokenized with.", resume=MUST)
    crop_seconds: float = option(30.0, "Length of a training crop in seconds (MusicGen was trained on 30 s); "
                                       "formerly segment_seconds.", resume=MUST, aliases=("segment_seconds",))
    cfg_dropout: float | None = option(None, "Probability of training a crop without its conditions (text; and "
                                       "melody for melody models), so classifier-free guidance keeps working. Empty: "
                                       "audiocraft's value, 0.3 (text2music.yaml), 0.2 for melody models "
                                       "(chroma2music.yaml).", resume=MUST)
    melody_dropout: float | None = option(None, "Melody models: probability of training a crop without its chroma "
                                          "(on top of cfg_dropout). Empty: audiocraft's 0.5 (chroma2music.yaml).",
                                          resume=MUST)
    val_fraction: float = option(0.05, "Share of tracks held out for validation (whole tracks).", resume=MUST)
    val_crops: int = option(256, "At most this many validation crops per evaluation (evenly spaced).", resume=MUST)
    seed: int = option(0, "Seed of the split, data order, crops, CFG dropout and LoRA initialization.", resume=MUST)
    batch_size: int = option(0, "Crops per process per micro-batch; 0 = the GPU preset (nbutils.presets). "
                                "Set alone, the accumulation makes up the preset's effective batch of 16 "
                                "(or as near as it divides).", resume=MAY)
    grad_accum: int = option(0, "Micro-batches per optimizer step; 0 = the GPU preset (or what makes up 16 "
                                "crops with the batch_size you set).", resume=MAY)
    precision: str = option("auto", "auto (bf16 on A100/H100/L4, fp16 with loss scaling on T4/V100, fp32 on "
                                    "CPU), bf16, fp16 or fp32.", resume=MAY)
    grad_checkpointing: str = option("auto", "Recompute activations to save GPU memory: auto (GPU preset), on, off.",
                                     resume=MAY)
    lr: float = option(2e-4, "Peak learning rate of AdamW.", resume=MUST)
    weight_decay: float = option(0.01, "AdamW weight decay (on LoRA weights only).", resume=MUST)
    warmup_steps: int = option(100, "Steps of linear warmup from 0 to lr.", resume=MUST)
    scheduler: str = option("cosine", "Decay after warmup: cosine, linear (both to 0 at the last step) or constant.",
                            resume=MUST)
    max_grad_norm: float = option(1.0, "Clip the gradient norm to this (0: no clipping).", resume=MUST)
    max_steps: int = option(0, "Optimizer steps to train; 0 = use epochs.", resume=MAY)
    epochs: int = option(1, "Passes over the training crops (when max_steps is 0).", resume=MAY)
    save_every: int = option(200, "Write latest.pt and a step folder every N steps (also at the end; latest.pt "
                                  "also on stop).", resume=MAY)
    save_every_minutes: float | None = option(None, "Also write latest.pt when this many minutes passed since "
                                              "the last save (whichever of the two comes first); 0 = only by "
                                              "steps. Empty: 10 in a Colab runtime, 0 elsewhere.", resume=MAY)
    keep_checkpoints: int = option(3, "Step folders (the PEFT adapter of a step-count save) to keep in "
                                      "checkpoints/; older ones are deleted. 0 = none.", resume=MAY)
    eval_every: int = option(0, "Compute the validation loss every N steps; 0 = at every save.", resume=MAY)
    sample_every: int = option(1000, "Generate audio samples every N steps (base model at step 0); 0 = never.",
                               resume=MAY)
    sample_prompts: list[str] = option([], "Fixed prompts for samples; empty = up to 3 descriptions from the "
                                           "validation tracks.", resume=MAY)
    sample_seconds: float = option(8.0, "Length of each sample in seconds.", resume=MAY)
    sampling: SamplingConfig = config.nested(SamplingConfig, "How the samples' tokens are drawn: guidance, "
                                             "temperature, top-k, top-p (generate's defaults).", resume=MAY)
    log_every: int = option(10, "Flush metrics.jsonl (the loss curve) every N steps.", resume=MAY)
    max_skipped_steps: int = option(10, "Stop when this many steps in a row were skipped for a NaN/inf loss or "
                                        "gradient (fp16 overflows included); 0 = never stop for that.", resume=MAY)
    divergence_factor: float = option(2.0, "Stop when the loss stays above this many times its running median "
                                           "(last 200 steps) for divergence_steps steps in a row; 0 = never.",
                                      resume=MAY)
    divergence_steps: int = option(20, "How many steps in a row the loss must stay that high to stop (saves "
                                       "wait meanwhile, so the last good checkpoint is kept).", resume=MAY)
    lora_targets: str = option(lora.DEFAULT_PRESET, "LoRA targets: self-attention (q,k,v,out of the decoder), "
                                                    "attention (+ cross-attention), all-linear (+ fc1, fc2).",
                               resume=MUST)
    lora_r: int = option(16, "LoRA rank.", resume=MUST)
    lora_alpha: float = option(32.0, "LoRA alpha (scale = alpha / r).", resume=MUST)
    lora_dropout: float = option(0.05, "Dropout on the LoRA input.", resume=MUST)
    wandb: str = option("auto", "WandB mode: auto (WANDB_MODE if set, else online with WANDB_API_KEY and offline "
                                "into the run folder without it), online, offline or disabled.", resume=MAY)
    wandb_project: str = option("musicgen-lora", "WandB project.", resume=MAY)
    wandb_name: str = option("", "WandB run name; empty = the run folder's name.", resume=MAY)
    push_to_hub: str = option("", "Hub repo id (user/name) to upload the final adapter to, with a model card; "
                                  "needs HF_TOKEN.", resume=MAY)
    hub_private: bool = option(True, "Create the Hub repo as private.", resume=MAY)
    accept_new_descriptions: bool = option(False, "Continue a run although descriptions.jsonl changed since it was "
                                                  "saved (the new texts are used from here on). Without it such a "
                                                  "run stops and lists the changes.", resume=MAY)

    def __post_init__(self) -> None:
        if isinstance(self.sample_prompts, str):  # "a | b", as notebook 03's PROMPTS: not one prompt per letter
            self.sample_prompts = [p.strip() for p in self.sample_prompts.split("|") if p.strip()]
        config.require(self.WHAT, [
            (all(isinstance(p, str) for p in self.sample_prompts), "sample_prompts must be a list of texts"),
            (self.crop_seconds > 0, "crop_seconds must be positive"),
            (self.cfg_dropout is None or 0 <= self.cfg_dropout < 1, "cfg_dropout must be in [0, 1)"),
            (self.melody_dropout is None or 0 <= self.melody_dropout < 1, "melody_dropout must be in [0, 1)"),
            (0 <= self.val_fraction <= 0.5, "val_fraction must be in [0, 0.5]"),
            (self.batch_size >= 0 and self.grad_accum >= 0, "batch_size and grad_accum must be >= 0 (0 = preset)"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.grad_checkpointing in CHECKPOINTING, f"grad_checkpointing must be one of {CHECKPOINTING}"),
            (self.scheduler in SCHEDULERS, f"scheduler must be one of {SCHEDULERS}"),
            (self.lora_targets in lora.PRESETS, f"lora_targets must be one of {tuple(lora.PRESETS)}"),
            (self.lora_r >= 1, f"lora_r must be at least 1 (got {self.lora_r})"),
            (self.lora_alpha > 0, f"lora_alpha must be positive (got {self.lora_alpha})"),
            (0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1) (got {self.lora_dropout})"),
            (self.wandb in tracking.MODES, f"wandb must be one of {tracking.MODES}"),
            (self.max_steps >= 0 and self.epochs >= 1, "max_steps must be >= 0 and epochs >= 1"),
            (self.save_every >= 1, "save_every must be >= 1"),
            (self.save_every_minutes is None or self.save_every_minutes >= 0, "save_every_minutes must be >= 0"),
            (self.max_skipped_steps >= 0 and self.divergence_factor >= 0 and self.divergence_steps >= 1,
             "max_skipped_steps and divergence_factor must be >= 0, divergence_steps >= 1"),
            (self.keep_checkpoints >= 0, "keep_checkpoints must be >= 0"),
            (self.lr > 0 and self.warmup_steps >= 0, "lr must be positive and warmup_steps >= 0"),
            (self.val_crops >= 1, "val_crops must be >= 1 (to train without validation, set val_fraction 0)"),
        ])

    @staticmethod
    def project_defaults(project, given: dict[str, Any]) -> dict[str, Any]:
        """Notebook 02's folders and model: the project's tokens, its run folder (``runs/<RUN_NAME>``,
        set by the Connect cell) and its model."""
        return {"tokens": str(project.paths.tokens), "out": str(project.run_dir), "model": project.model}




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
            bar.set_postfix(_postfix(row, trainer), refresh=False)
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


def _postfix(row: dict[str, Any], trainer: Trainer) -> dict[str, str | int]:
    """The progress bar's figures: loss and lr, the validation loss once measured, skipped steps if any."""
    shown: dict[str, str | int] = {"loss": f"{row['train/loss']:.3f}"}
    if trainer.last_val is not None:  # none before the first validation: "nan" there read as a diverged run
        shown["val"] = f"{trainer.last_val:.3f}"
    shown["lr"] = f"{row['train/lr']:.1e}"
    if trainer.guard.skipped:
        shown["skipped"] = trainer.guard.skipped
    return shown


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


def config_for(project, **settings: Any) -> TrainConfig:
    """Notebook 02's settings: the project's tokens, run folder and model, plus ``settings`` (``**SETTINGS``).

    Args:
        project: From ``colab.connect`` / ``colab.current``; its run folder is ``runs/<RUN_NAME>``.
        **settings: Any ``TrainConfig`` field (unknown names are refused with a suggestion).
    """
    return config.build(TrainConfig, settings, project=project)


def notebook_config(project, run_name: str = "", **settings: Any) -> TrainConfig:
    """0.1.0's name of ``config_for`` (kept for one release): ``run_name`` picks ``runs/<run_name>``."""
    warnings.warn("train.notebook_config is now train.config_for (RUN_NAME goes to the Connect cell); the old "
                  "name works until the next release.", FutureWarning, stacklevel=2)
    if run_name:
        settings = {"out": str(project.paths.run(run_name)), **settings}
    return config_for(project, **settings)


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
        summary = run(config.build(TrainConfig, args=args))
    finally:
        # Under accelerate launch / torchrun, leave the process group before exiting: otherwise
        # gloo's threads can still be talking to a peer that already exited, and the process
        # aborts ("terminate called without an active exception") after training went well.
        PartialState().destroy_process_group()
    if not PartialState().is_main_process:
        return None  # one JSON line per launch, from the main process
    return summary
