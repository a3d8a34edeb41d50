"""LoRA fine-tuning of MusicGen on token shards, with exact resume (``python -m nbutils train``).

Read top to bottom: ``TrainConfig`` (every setting, with help), ``Trainer`` (setup, one
optimizer step, evaluation, samples, checkpoints) and ``run`` (resume or start, loop, finish).

What makes a resumed run equal to an uninterrupted one, bit for bit on CPU:

* the data order, crop offsets and CFG decisions derive from ``(seed, epoch, index)`` only
  (``nbutils.dataset``); the checkpoint stores the cursor;
* the checkpoint stores the RNG states taken at the end of the last completed step (used by
  LoRA dropout) plus optimizer, scheduler and loss-scaler state;
* evaluation, samples and logging never touch the training RNG streams (samples run in a
  forked RNG), so changing how often they happen does not change the weights;
* a KeyboardInterrupt (Colab's stop button) is held back during the optimizer update and
  otherwise discards the half-done step, then saves the last completed one.

Runs on one process or several (``accelerate launch -m nbutils train ...`` or ``torchrun``):
each process takes its own slice of every optimizer step's items; the main process writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from nbutils.core import atomic, config, faults, models, tracking
from nbutils.core import diskerrors
from nbutils.train import checkpoint, lora
from nbutils.train import dataset as data
from nbutils.core.config import option
from nbutils.core.errors import UserError

METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
ADAPTERS_DIR = "adapters"
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
                                "Set alone, the accumulation makes up the preset's effective batch of 16 (or as near as it divides).")
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
    save_every: int = option(200, "Write latest.pt and a step folder every N steps (also at the end and on stop).")
    keep_checkpoints: int = option(3, "Step folders to keep in checkpoints/ (older ones are deleted).")
    eval_every: int = option(0, "Compute the validation loss every N steps; 0 = at every save.")
    sample_every: int = option(1000, "Generate audio samples every N steps (base model at step 0); 0 = never.")
    sample_prompts: list[str] = option([], "Fixed prompts for samples; empty = up to 3 descriptions from the "
                                           "validation tracks.")
    sample_seconds: float = option(8.0, "Length of each sample in seconds.")
    log_every: int = option(10, "Flush metrics.jsonl (the loss curve) every N steps.")
    lora_targets: str = option(lora.DEFAULT_PRESET, "LoRA targets: self-attention (q,k,v,out of the decoder), "
                                                    "attention (+ cross-attention), all-linear (+ fc1, fc2).")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: float = option(32.0, "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = option(0.05, "Dropout on the LoRA input.")
    wandb: str = option("auto", "WandB mode: auto (online if WANDB_API_KEY is set, else disabled), online, "
                                "offline or disabled.")
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
            (self.keep_checkpoints >= 0, "keep_checkpoints must be >= 0"),
            (self.lr > 0 and self.warmup_steps >= 0, "lr must be positive and warmup_steps >= 0"),
            (self.val_crops >= 1, "val_crops must be >= 1 (to train without validation, set val_fraction 0)"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"Invalid training setting: {message}.")


# What a checkpoint's weights mean: changing any of these refuses to resume (see check_resume).
MEANINGFUL = ("model", "data", "crop_frames", "effective_batch", "lora_targets", "lora_r", "lora_alpha",
              "lora_dropout", "seed", "cfg_dropout", "val_fraction", "val_crops", "lr", "weight_decay",
              "warmup_steps", "scheduler", "max_grad_norm")
# Accepted on resume (with a note): how long, how often, where to log, how to fit the GPU.
HARMLESS = ("max_steps", "epochs", "save_every", "keep_checkpoints", "eval_every", "sample_every",
            "sample_prompts", "sample_seconds", "log_every", "wandb", "wandb_project", "wandb_name",
            "batch_size", "grad_accum", "precision", "grad_checkpointing", "push_to_hub", "hub_private", "tokens")


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps: linear warmup, then decay to 0."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress


@contextlib.contextmanager
def hold_interrupts():
    """Delay Ctrl-C / Colab's stop button until the block is done (an optimizer update is atomic)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def read_metrics(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The run's metrics lines (train and validation), one dict per line, in order."""
    return atomic.read_jsonl(Path(out) / METRICS_FILE)


def _pick_device_settings(cfg: TrainConfig, model_name: str) -> dict[str, Any]:
    """Batch size, accumulation, precision and checkpointing: the config, else the GPU preset."""
    from nbutils.train import presets

    preset = presets.suggest(model_name, segment_seconds=cfg.segment_seconds)
    precision = preset.precision if cfg.precision == "auto" else cfg.precision
    checkpointing = preset.grad_checkpointing if cfg.grad_checkpointing == "auto" else cfg.grad_checkpointing == "on"
    batch_size, grad_accum = cfg.batch_size or preset.batch_size, cfg.grad_accum or preset.grad_accum
    # One of the two set: the other completes presets.EFFECTIVE_BATCH, as the preset would, so the
    # effective batch (part of what a run means) does not depend on which GPU Colab assigned.
    if cfg.batch_size and not cfg.grad_accum:
        grad_accum = max(1, presets.EFFECTIVE_BATCH // cfg.batch_size)
    elif cfg.grad_accum and not cfg.batch_size:
        batch_size = max(1, presets.EFFECTIVE_BATCH // cfg.grad_accum)
    return {
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "precision": precision,
        "grad_checkpointing": bool(checkpointing),
        "preset": preset,
    }


def refuse_melody(model_name: str) -> None:
    """Raise a ``UserError`` for a musicgen-melody checkpoint (reads its config only: cheap).

    Melody models are conditioned on a melody's chroma as well as the text. This trainer feeds
    text only, so an adapter would learn a model that never saw its melody input: refuse rather
    than silently train something that generates worse with a melody.
    """
    if models.load_config(model_name).model_type == "musicgen_melody":
        raise UserError(
            f"'{model_name}' is a MusicGen melody checkpoint: it needs chroma (melody) conditioning, which this "
            "suite does not train yet. Fine-tune facebook/musicgen-small, -medium or -large (or a stereo one, "
            "e.g. facebook/musicgen-stereo-small) instead: set MODEL in the notebook, or pass --model."
        )


def _accelerator(precision: str):
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    on_gpu = torch.cuda.is_available()
    if precision == "fp16" and not on_gpu:
        raise UserError("precision fp16 needs a GPU (loss scaling is a CUDA feature). Use fp32 or bf16 on a CPU.")
    if "WORLD_SIZE" not in os.environ and "LOCAL_RANK" not in os.environ:
        AcceleratorState._reset_state(True)  # a notebook may re-run training with other settings
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    return Accelerator(mixed_precision=mixed, cpu=not on_gpu)


class Trainer:
    """One training run: model, data, optimizer, and the state a checkpoint holds.

    Args:
        cfg: The settings.
        log: Where human messages go (``print`` on the main process).
        quiet: No progress bar (used by the preset time estimate).
    """

    def __init__(self, cfg: TrainConfig, *, log: Callable[[str], None] | None = None, quiet: bool = False):
        import torch

        if not cfg.tokens:
            raise UserError("Say where the token shards are: --tokens DIR (the tokenize stage's --out).")
        if not cfg.out:
            raise UserError("Say where to write the run: --out DIR (re-using a folder resumes that run).")
        self.cfg = cfg
        self.out = Path(cfg.out).expanduser().absolute()
        self.model_name = models.recorded_name(cfg.model or self._model_of_shards())
        refuse_melody(self.model_name)
        self.settings = _pick_device_settings(cfg, self.model_name)
        self.accelerator = _accelerator(self.settings["precision"])
        self.main = self.accelerator.is_main_process
        self.log = log or (print if self.main else (lambda message: None))
        self.quiet = quiet
        self.device = self.accelerator.device

        self._load_model()
        self._load_data()
        # LoRA initialization draws from the torch RNG: seed first, so a fresh start is reproducible.
        from accelerate.utils import set_seed

        set_seed(cfg.seed)
        self._wrap_lora()
        self.optimizer = torch.optim.AdamW(
            [p for p in self.peft.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.total_steps = cfg.max_steps or cfg.epochs * self.sampler.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, cfg.warmup_steps, cfg.scheduler)
        )
        self.model, self.optimizer = self.accelerator.prepare(self.peft, self.optimizer)

        self.step = 0
        self.cursor = data.Cursor()
        self.best_val: float | None = None
        self.best_step: int | None = None
        self.last_val: float | None = None
        self.last_train: float | None = None
        self.wandb_run_id: str | None = None
        self.resumed_from: int | None = None
        self.rng_after_step: dict[str, Any] = {}
        self.evaluated_at: int | None = None
        self.saved_at: int | None = None
        self._pending_metrics: list[dict[str, Any]] = []
        self._in_train_mode = False

    # -- setup -----------------------------------------------------------------------------

    def _model_of_shards(self) -> str:
        from nbutils.tokenize import shards

        paths = shards.list_shards(self.cfg.tokens)
        if not paths:
            shards.open_all(self.cfg.tokens)  # raises the "run tokenization first" message
        name = shards.read_index(paths[0]).get("model")
        if not name:
            raise UserError("The shards do not record their model; pass --model M.")
        return str(name)

    def _load_model(self) -> None:
        import torch

        on_gpu = torch.cuda.is_available()
        precision = self.settings["precision"]
        # Frozen base weights in half precision on a GPU (LoRA weights stay float32 in peft).
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision) if on_gpu else None
        self.base, self.processor = models.load_musicgen(self.model_name, dtype=dtype)
        self.spec = models.spec_of(self.base)
        self.pad_id = self.spec.pad_token_id
        self.start_id = int(self.base.config.decoder.decoder_start_token_id)

    def _load_data(self) -> None:
        cfg = self.cfg
        opened = data.open_shards(cfg.tokens, self.spec.num_codebooks, self.spec.sample_rate)
        self.fingerprint = data.fingerprint(opened)
        self._warn_other_model(opened)
        self._warn_unlabelled(opened)
        tracks = sorted({data.track_of(s, shard) for shard in opened for s in shard.segments})
        self.split = data.split_tracks(tracks, cfg.val_fraction, cfg.seed)
        self.crop_frames = max(1, round(cfg.segment_seconds * self.spec.frame_rate))
        self.train_set = data.CropDataset(opened, self.split["train_tracks"], self.crop_frames, train=True,
                                          cfg_dropout=cfg.cfg_dropout, seed=cfg.seed)
        self.val_set = data.CropDataset(opened, self.split["val_tracks"], self.crop_frames, train=False,
                                        seed=cfg.seed, max_items=cfg.val_crops)
        acc = self.accelerator
        self.batch_size, self.grad_accum = self.settings["batch_size"], self.settings["grad_accum"]
        self.sampler = data.StepSampler(self.train_set, self.batch_size, self.grad_accum, acc.num_processes,
                                        acc.process_index, cfg.seed)
        self.collate = data.Collator(self.processor.tokenizer, self.pad_id, self.start_id, self.spec.audio_channels)
        self.shards = opened
        self.prompts = self._sample_prompts(opened)
        train = set(self.split["train_tracks"])
        frames = sum(s.frames for shard in opened for s in shard.segments if data.track_of(s, shard) in train)
        self.train_hours = frames / self.spec.frame_rate / 3600

    def _warn_other_model(self, opened) -> None:
        recorded = {str(s.meta.get("model")) for s in opened if s.meta.get("model")}
        if recorded and self.model_name not in recorded and self.main:
            print(f"Note: the shards were tokenized with {', '.join(sorted(recorded))}; training {self.model_name}. "
                  "That is fine when both use the same codec (all facebook/musicgen-* mono models do).")

    def _warn_unlabelled(self, opened) -> None:
        segments = [s for shard in opened for s in shard.segments]
        empty = [s for s in segments if not (s.description or "").strip()]
        if empty:
            self.log(f"Note: {len(empty)} of {len(segments)} segments ({len(empty) / len(segments):.0%}) have no "
                  "description, so they train the model to ignore the prompt (like CFG dropout). To label them, "
                  "re-tokenize into a new folder with metadata, sidecar .txt/.json files or --default-description.")

    def _sample_prompts(self, opened) -> list[str]:
        if self.cfg.sample_prompts:
            return list(self.cfg.sample_prompts)
        found: list[str] = []
        for side in ("val_tracks", "train_tracks"):
            wanted = set(self.split[side])
            for shard in opened:
                for segment in shard.segments:
                    text = segment.description
                    if text and text not in found and data.track_of(segment, shard) in wanted:
                        found.append(text)
            if found:
                break
        return sorted(found)[:3] or ["music"]

    def _wrap_lora(self) -> None:
        cfg = self.cfg
        lora_config = lora.make_config(cfg.lora_targets, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
        self.peft = lora.wrap(self.base, lora_config, self.model_name)
        if self.settings["grad_checkpointing"]:
            decoder = self.base.decoder
            if hasattr(decoder, "activation_checkpointing_enable"):  # transformers >= 5.x name
                decoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                decoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.trainable, self.total_params = lora.check_only_lora_trainable(self.peft)
        self.lora_config = lora.config_dict(lora_config)

    @property
    def effective_batch(self) -> int:
        return self.sampler.effective

    def identity(self) -> dict[str, Any]:
        """The settings that define what the weights mean, plus the harmless ones (for notes)."""
        values = config.to_dict(self.cfg)
        values.update(model=self.model_name, data=self.fingerprint, crop_frames=self.crop_frames,
                      effective_batch=self.effective_batch)
        return values

    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def _train_mode(self) -> None:
        if self._in_train_mode:
            return  # switching walks every module: skip it when evaluation / samples did not run
        self.model.train()
        # The frozen encoders stay in eval mode (no dropout), as audiocraft runs its T5.
        self.base.text_encoder.eval()
        self.base.audio_encoder.eval()
        self._in_train_mode = True

    # -- checkpoint state ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything ``latest.pt`` holds (loads with ``torch.load(..., weights_only=True)``)."""
        import peft
        import torch
        import transformers

        scaler = self.accelerator.scaler
        return {
            "format": checkpoint.FORMAT,
            "step": int(self.step),
            "epoch": int(self.cursor.epoch),
            "cursor": self.cursor.to_dict(),
            "lora": lora.state_dict(self.unwrapped()),
            "lora_config": self.lora_config,
            "base_model": self.model_name,
            "base_facts": models.base_facts(self.base),
            "config": config.to_dict(self.cfg),
            "identity": json.loads(json.dumps(self.identity())),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": self.rng_after_step,
            "wandb_run_id": self.wandb_run_id,
            "train_loss": self.last_train,
            "val_loss": self.last_val,
            "best_val_loss": self.best_val,
            "best_step": self.best_step,
            "total_steps": int(self.total_steps),
            "world_size": int(self.accelerator.num_processes),
            "spec": self.spec.to_dict(),
            "versions": {"torch": str(torch.__version__), "transformers": str(transformers.__version__),
                         "peft": str(peft.__version__)},
        }

    def restore(self, state: dict[str, Any]) -> list[str]:
        """Continue from a checkpoint: weights, optimizer, scheduler, scaler, cursor, RNG.

        Returns:
            Notes about accepted setting changes.

        Raises:
            UserError: when a meaningful setting differs (see ``MEANINGFUL``).
        """
        saved = {**state["config"], **state.get("identity", {})}
        notes = checkpoint.check_resume(saved, self.identity(), MEANINGFUL, HARMLESS, self.out)
        lora.load_state_dict(self.unwrapped(), state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The schedule's length may have changed (max_steps/epochs raised): the next step's learning
        # rate comes from the current schedule, not the one saved (identical when nothing changed).
        for group, base, lr_lambda in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                          self.scheduler.lr_lambdas):
            group["lr"] = base * lr_lambda(self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        scaler = self.accelerator.scaler
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        self.step = self.resumed_from = self.saved_at = int(state["step"])
        self.cursor = data.Cursor.from_dict(state["cursor"])
        self.best_val, self.best_step = state.get("best_val_loss"), state.get("best_step")
        self.last_val, self.last_train = state.get("val_loss"), state.get("train_loss")
        self.wandb_run_id = state.get("wandb_run_id")
        self.rng_after_step = state["rng"]  # applied by run() right before the first step
        return notes

    @contextlib.contextmanager
    def autocast(self):
        """The training precision's autocast, with T5 and EnCodec's decoder kept in float32."""
        from nbutils.core import devices

        with self.accelerator.autocast(), devices.without_autocast(self.base.text_encoder), \
                devices.without_autocast(self.base.audio_encoder, "decode"):
            yield

    def release(self) -> None:
        """Let go of the model, optimizer and scheduler, and of their GPU memory.

        Called when training stops on an interrupt or an error: IPython keeps the last exception
        and its frames (which hold this trainer), and the re-run that resumes must not find the
        old model still filling the GPU next to the new one.
        """
        from nbutils.core import devices

        self.accelerator.free_memory()
        self.model = self.optimizer = self.scheduler = self.peft = self.base = None
        devices.free_memory()

    def save(self) -> None:
        """Write latest.pt + a step folder (main process), after flushing the metrics."""
        if not self.main:
            return
        self.flush_metrics()
        model = self.unwrapped()
        checkpoint.save(self.out, self.state(), lambda folder: lora.write_adapter(model, folder, self.model_name),
                        self.cfg.keep_checkpoints)
        self.saved_at = self.step

    # -- metrics ---------------------------------------------------------------------------

    def record(self, row: dict[str, Any]) -> None:
        """Queue a metrics line for metrics.jsonl and send it to WandB."""
        if not self.main:
            return
        self._pending_metrics.append(row)
        tracking.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def flush_metrics(self) -> None:
        if self.main and self._pending_metrics:
            lines = "\n".join(json.dumps(r) for r in self._pending_metrics)
            atomic.append_line(self.out / METRICS_FILE, lines)
            self._pending_metrics = []

    def trim_metrics(self) -> None:
        """Drop metrics lines after the resumed step (they are computed again, identically)."""
        path = self.out / METRICS_FILE
        if self.main and path.exists():
            keep = [r for r in atomic.read_jsonl(path) if r.get("step", 0) <= self.step]
            atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in keep))

    # -- training --------------------------------------------------------------------------

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches; returns its metrics."""
        import torch

        from nbutils.train import labels as L

        started = time.perf_counter()
        acc = self.accelerator
        self._train_mode()
        micro = self.sampler.micro_batches(self.cursor)
        per_codebook = torch.zeros(self.spec.num_codebooks, device=self.device)
        tokens = 0
        for i, examples in enumerate(micro):
            batch = self.collate(examples).to(self.device)
            tokens += batch.tokens
            sync = contextlib.nullcontext() if i == len(micro) - 1 else acc.no_sync(self.model)
            with sync:
                with self.autocast():
                    logits = self.model(**batch.model_inputs()).logits
                loss, codebooks = L.mean_loss(*L.codebook_ce(logits, batch.labels, self.pad_id))
                acc.backward(loss / len(micro))
            per_codebook += codebooks.detach() / len(micro)
            faults.point("micro", step=self.step + 1)
            faults.point("interrupt", step=self.step + 1)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.cfg.max_grad_norm > 0:
            grad_norm = acc.clip_grad_norm_(params, self.cfg.max_grad_norm)
        else:
            acc.unscale_gradients()
            grad_norm = torch.norm(torch.stack([p.grad.detach().float().norm() for p in params if p.grad is not None]))
        lr = self.scheduler.get_last_lr()[0]
        interrupted = False
        try:
            with hold_interrupts():
                self.optimizer.step()
                if not acc.optimizer_step_was_skipped:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.cursor = self.sampler.advance(self.cursor)
                self.step += 1
                self.rng_after_step = checkpoint.rng_state()
        except KeyboardInterrupt:
            interrupted = True  # the step is done: its metrics are recorded before the stop goes on
        per_codebook = acc.reduce(per_codebook, reduction="mean")
        tokens_all = int(acc.reduce(torch.tensor(tokens, device=self.device), reduction="sum"))
        seconds = time.perf_counter() - started
        row = {
            "step": self.step,
            "epoch": round(self.cursor.epoch + self.cursor.position / max(1, len(self.train_set)), 4),
            "train/loss": float(per_codebook.mean()),
            **{f"train/loss_cb{k}": float(v) for k, v in enumerate(per_codebook.tolist())},
            "train/lr": float(lr),
            "train/grad_norm": float(grad_norm),
            "train/tokens_per_s": tokens_all / seconds,
            "train/step_time": seconds,
        }
        if torch.cuda.is_available():
            row["train/gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30  # peak of this step
            torch.cuda.reset_peak_memory_stats()
        self.last_train = row["train/loss"]
        if interrupted:
            self.record(row)
            raise KeyboardInterrupt
        faults.point("step", step=self.step)
        return row

    def evaluate(self) -> dict[str, Any] | None:
        """Validation loss over the held-out tracks (token-weighted per codebook); None without them."""
        import torch

        from nbutils.train import labels as L

        if len(self.val_set) == 0:
            return None
        acc = self.accelerator
        model = self.unwrapped()
        model.eval()
        self._in_train_mode = False
        sums = torch.zeros(self.spec.num_codebooks, device=self.device)
        counts = torch.zeros_like(sums)
        mine = list(range(acc.process_index, len(self.val_set), acc.num_processes))
        size = max(1, self.batch_size)
        with torch.no_grad():
            for first in range(0, len(mine), size):
                batch = self.collate([self.val_set.example(i) for i in mine[first : first + size]]).to(self.device)
                with self.autocast():
                    logits = model(**batch.model_inputs()).logits
                s, c = L.codebook_ce(logits, batch.labels, self.pad_id)
                sums += s
                counts += c
        sums, counts = acc.reduce(sums, reduction="sum"), acc.reduce(counts, reduction="sum")
        loss, per_codebook = L.mean_loss(sums, counts)
        self.last_val = float(loss)
        return {"step": self.step, "val/loss": self.last_val,
                **{f"val/loss_cb{k}": float(v) for k, v in enumerate(per_codebook.tolist())}}

    def update_best(self) -> bool:
        """Save adapters/best when the last validation loss is the lowest so far."""
        if self.last_val is None or (self.best_val is not None and self.last_val >= self.best_val):
            return False
        self.best_val, self.best_step = self.last_val, self.step
        if self.main:
            self.save_adapter("best")
        return True

    def save_adapter(self, name: str) -> Path:
        """Write ``OUT/adapters/<name>`` as a PEFT folder (plus a model card and training facts)."""
        from nbutils.train import hub

        folder = self.out / ADAPTERS_DIR / name
        model = self.unwrapped()
        with atomic.atomic_dir(folder) as tmp:
            lora.write_adapter(model, tmp, self.model_name)
            facts = hub.facts(self, name)
            atomic.write_json(tmp / "training.json", facts)
            atomic.write_text(tmp / "README.md", hub.model_card(facts))
        return folder

    # -- samples ---------------------------------------------------------------------------

    def write_samples(self, kind: str) -> Path | None:
        """Samples of the fixed prompts and seeds into ``samples/step-XXXXXX`` (main process only).

        ``kind`` is ``base`` (adapter disabled; at step 0) or ``lora``; see ``nbutils.samples``.
        """
        from nbutils.train import samples

        if not self.main:
            return None
        model = self.unwrapped()
        model.eval()
        self._in_train_mode = False
        return samples.write(
            model, self.processor, self.spec, self.out / SAMPLES_DIR / checkpoint.step_name(self.step), kind=kind,
            step=self.step, prompts=self.prompts, seeds=[self.cfg.seed + i for i in range(len(self.prompts))],
            seconds=self.cfg.sample_seconds, autocast=self.autocast, info={"model": self.model_name},
        )


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _start_tracking(trainer: Trainer) -> None:
    cfg = trainer.cfg
    if not trainer.main:
        return
    facts = {**config.to_dict(cfg), "model": trainer.model_name, "effective_batch": trainer.effective_batch,
             "crop_frames": trainer.crop_frames, "train_crops": len(trainer.train_set),
             "val_crops_used": len(trainer.val_set), "trainable_params": trainer.trainable,
             "lora_config": trainer.lora_config, "world_size": trainer.accelerator.num_processes}
    trainer.wandb_run_id = tracking.start(
        mode=cfg.wandb, project=cfg.wandb_project, directory=trainer.out, config=facts,
        run_id=trainer.wandb_run_id, name=cfg.wandb_name or trainer.out.name,
    )


def _summary(trainer: Trainer, started: float) -> dict[str, Any]:
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
    }


def _begin(trainer: Trainer) -> None:
    """Resume from OUT (saying from which step) or start fresh (writing split.json)."""
    if trainer.main:
        checkpoint.clean(trainer.out)  # one process settles what a killed writer left
    trainer.accelerator.wait_for_everyone()
    found = checkpoint.load(trainer.out, log=trainer.log, settle=False)
    if found is None:
        if trainer.main:
            trainer.out.mkdir(parents=True, exist_ok=True)
            data.write_split(trainer.out, trainer.split)
            (trainer.out / METRICS_FILE).unlink(missing_ok=True)  # lines of a run that never saved
        trainer.log(f"Starting a new run in {trainer.out}: {trainer.model_name}, {len(trainer.train_set)} training "
                    f"crops of {trainer.cfg.segment_seconds:g} s, {len(trainer.val_set)} validation crops, "
                    f"{trainer.total_steps} steps of {trainer.effective_batch} crops, "
                    f"{trainer.trainable:,} trainable of {trainer.total_params:,} parameters.")
        longest = max((s.frames for shard in trainer.shards for s in shard.segments), default=0)
        if longest < trainer.crop_frames:
            trainer.log(f"Note: the token segments are at most {longest / trainer.spec.frame_rate:g} s long, shorter "
                        f"than segment_seconds ({trainer.cfg.segment_seconds:g} s): each crop is a whole segment.")
        if trainer.cfg.warmup_steps > trainer.total_steps:
            trainer.log(f"Note: warmup_steps ({trainer.cfg.warmup_steps}) is more than the run's {trainer.total_steps} "
                        "steps, so the learning rate never reaches lr; lower warmup_steps for a short run.")
    else:
        state, path = found
        notes = trainer.restore(state)
        trainer.trim_metrics()
        where = path.relative_to(trainer.out) if path.is_relative_to(trainer.out) else path
        trainer.log(f"Resuming from step {trainer.step} ({where}, epoch {trainer.cursor.epoch}) "
                    f"of {trainer.total_steps}.")
        for note in notes:
            trainer.log(f"  changed setting {note}")
    s = trainer.settings
    trainer.log(f"Batch {trainer.batch_size} x accumulation {trainer.grad_accum} x {trainer.accelerator.num_processes} "
                f"process(es), {s['precision']}, gradient checkpointing {'on' if s['grad_checkpointing'] else 'off'}, "
                f"on {trainer.device}.")


def _progress(trainer: Trainer):
    from tqdm.auto import tqdm

    return tqdm(total=trainer.total_steps, initial=trainer.step, desc="train", unit="step", dynamic_ncols=True,
                disable=trainer.quiet or not trainer.main, smoothing=0.1)


def _evaluate(trainer: Trainer) -> None:
    result = trainer.evaluate()
    trainer.evaluated_at = trainer.step
    if result is not None:
        trainer.record(result)
        trainer.update_best()


def _periodic(trainer: Trainer, row: dict[str, Any]) -> None:
    """Evaluation, checkpoint, samples and metric flushes due after this step."""
    cfg, step = trainer.cfg, trainer.step
    trainer.record(row)
    if step % (cfg.eval_every or cfg.save_every) == 0:
        _evaluate(trainer)
    if step % cfg.save_every == 0:
        trainer.save()
    if cfg.sample_every and step % cfg.sample_every == 0:
        trainer.write_samples("lora")
    if step % max(1, cfg.log_every) == 0:
        trainer.flush_metrics()


def _finish(trainer: Trainer) -> None:
    """Final evaluation, checkpoint, adapters (best, final), samples, artifacts, optional Hub push."""
    cfg = trainer.cfg
    fresh_eval = trainer.evaluated_at != trainer.step
    if fresh_eval:
        _evaluate(trainer)
    if fresh_eval or trainer.saved_at != trainer.step:  # the checkpoint must hold the final best/val
        trainer.save()
    if not trainer.main:
        return
    faults.point("interrupt-finish", step=trainer.step)
    final = trainer.save_adapter("final")
    best = trainer.out / ADAPTERS_DIR / "best"
    if trainer.best_step is None:
        trainer.log("No validation tracks: adapters/best is the final adapter.")
        trainer.save_adapter("best")
    if cfg.sample_every and not (trainer.out / SAMPLES_DIR / checkpoint.step_name(trainer.step)).exists():
        trainer.write_samples("lora")
    trainer.flush_metrics()
    tracking.log_artifact(final, f"{trainer.out.name}-final", aliases=["final", f"step-{trainer.step}"])
    tracking.log_artifact(best, f"{trainer.out.name}-best", aliases=["best"])
    tracking.summary({"best_val_loss": trainer.best_val, "best_step": trainer.best_step})
    if cfg.push_to_hub:
        from nbutils.train import hub

        url = hub.push(final, cfg.push_to_hub, private=cfg.hub_private)
        trainer.log(f"Adapter uploaded to {url}")


def _final_written(trainer: Trainer) -> bool:
    """Did a previous session finish this step completely (it may have died while writing adapters)?"""
    facts = trainer.out / ADAPTERS_DIR / "final" / "training.json"
    return facts.exists() and atomic.read_json(facts).get("step") == trainer.step


def out_of_memory_error(trainer: Trainer) -> UserError:
    size, accum = trainer.batch_size, trainer.grad_accum
    return UserError(
        f"Out of GPU memory with batch_size {size}. Halve it and double grad_accum (batch_size "
        f"{max(1, size // 2)}, grad_accum {accum * 2}) to keep the same effective batch, turn on "
        "grad_checkpointing, or shorten segment_seconds. Re-running resumes from the last checkpoint."
    )


@diskerrors.guard("out")  # a read-only or full --out is a message, not a traceback
def run(cfg: TrainConfig, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train (or continue training) and return the summary (step, train_loss, val_loss, ...).

    Re-running with the same ``out`` resumes from ``OUT/latest.pt``. A KeyboardInterrupt saves
    the last completed step before it propagates.
    """
    import torch

    from nbutils.train import hub

    started = time.time()
    if cfg.push_to_hub:
        hub.check_token()  # before hours of training, not after
    tracking.check(cfg.wandb)  # before the model loads
    trainer = Trainer(cfg, log=log)
    _begin(trainer)
    if trainer.step >= trainer.total_steps and _final_written(trainer):
        trainer.log(f"Training is already at step {trainer.step} of {trainer.total_steps}: nothing to do. "
                    "Raise max_steps (or epochs) to train longer.")
        return _summary(trainer, started)
    _start_tracking(trainer)
    if trainer.step == 0 and cfg.sample_every:
        trainer.write_samples("base")  # what the untouched model makes of the prompts, to compare against
    # The training RNG streams start here: restored from the checkpoint, or taken now for a fresh
    # run (so a stop before the first step resumes identically). Nothing above may matter.
    if trainer.resumed_from is not None:
        checkpoint.set_rng_state(trainer.rng_after_step)
    else:
        trainer.rng_after_step = checkpoint.rng_state()
    bar = _progress(trainer)
    try:
        while trainer.step < trainer.total_steps:
            row = trainer.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{row['train/loss']:.3f}", val=f"{trainer.last_val or float('nan'):.3f}",
                            lr=f"{row['train/lr']:.1e}", refresh=False)
            _periodic(trainer, row)
        bar.close()
        _finish(trainer)
    except KeyboardInterrupt:
        failure = "stopped"
    except torch.cuda.OutOfMemoryError:
        failure = "out of memory"
    else:
        failure = None
    # Handled here, not in the except blocks: the caught error's frames (the model's forward and its
    # activations) are gone once they end, and IPython keeps only the fresh error raised below.
    if failure == "stopped":
        bar.close()
        trainer.optimizer.zero_grad(set_to_none=True)  # a half-accumulated step is discarded
        trainer.save()
        trainer.log(f"Stopped. Saved step {trainer.step} to {trainer.out / checkpoint.LATEST}; "
                    "run the same command (or cell) again to continue from there.")
        tracking.finish()
        trainer.release()
        raise KeyboardInterrupt
    if failure == "out of memory":
        bar.close()
        error = out_of_memory_error(trainer)
        tracking.finish()
        trainer.release()
        raise error
    tracking.finish()
    trainer.accelerator.wait_for_everyone()
    return _summary(trainer, started)


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
