"""What a trainer is built from: the accelerator, the frozen base model, LoRA, the LR schedule.

``nbutils.train.trainer.Trainer`` calls these in order while it sets up a run; each is a plain
function of the settings so the choices (precision, dtype, checkpointing, schedule) read in one place.
"""

from __future__ import annotations

import math
import os
from typing import Any

from nbutils.core import models
from nbutils.core.errors import UserError
from nbutils.train import lora


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


def accelerator(precision: str):
    """accelerate's ``Accelerator`` for ``precision`` (fp32, bf16, fp16) on the GPU, else the CPU."""
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


def load_base(model_name: str, precision: str):
    """The base MusicGen and its processor; frozen weights in half precision on a GPU (LoRA weights
    stay float32 in peft)."""
    import torch

    on_gpu = torch.cuda.is_available()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision) if on_gpu else None
    return models.load_musicgen(model_name, dtype=dtype)


def wrap_lora(base, cfg: Any, model_name: str, checkpointing: bool):
    """``base`` with LoRA adapters (``cfg.lora_*``), gradient checkpointing on the decoder if asked.

    Returns:
        ``(peft_model, lora_config)``.
    """
    lora_config = lora.make_config(cfg.lora_targets, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    peft = lora.wrap(base, lora_config, model_name)
    if checkpointing:
        decoder = base.decoder
        if hasattr(decoder, "activation_checkpointing_enable"):  # transformers >= 5.x name
            decoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            decoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return peft, lora_config


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps: linear warmup, then decay to 0."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress


def warmup_note(warmup: int, total: int) -> str | None:
    """A note when the warmup is longer than the run (the learning rate never reaches lr)."""
    if warmup <= total:
        return None
    return (f"Note: warmup_steps ({warmup}) is more than the run's {total} steps, so the learning rate never "
            "reaches lr; lower warmup_steps for a short run.")


def optimizer_and_scheduler(peft, cfg: Any, total_steps: int):
    """AdamW over the trainable (LoRA) weights and the ``lr_factor`` schedule over ``total_steps``."""
    import torch

    optimizer = torch.optim.AdamW(
        [p for p in peft.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.warmup_steps, cfg.scheduler)
    )
    return optimizer, scheduler


def follow_current_schedule(optimizer, scheduler) -> None:
    """After loading a scheduler's state: take the next step's learning rate from the current schedule.

    The schedule's length may have changed (max_steps/epochs raised), so the rate saved with the
    checkpoint is not the one to use (it is identical when nothing changed).
    """
    for group, base, lr_lambda in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * lr_lambda(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
