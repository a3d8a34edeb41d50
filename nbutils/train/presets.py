"""GPU presets: which batch size, accumulation and precision fit, and how long an epoch takes.

The suggestion comes from a memory model of MusicGen's decoder (weights + activations +
logits per crop, from the model's shapes) checked against the GPU's memory, so it covers
small / medium / large and melody (1.5B) / melody-large (3.3B) on A100 80 GB / 40 GB, L4, V100
and T4 and any other card by its VRAM. A melody decoder has no cross-attention, but it runs over
the chroma (235 frames) and the text prepended to the audio tokens, and computes logits there too.
The effective batch (batch x accumulation) stays at ``EFFECTIVE_BATCH`` on every GPU, so a run
started on an A100 can continue on a T4 after a disconnect (only the split changes).
Precision: bf16 where the GPU supports it (A100, H100, L4), otherwise fp16 with loss scaling
(T4, V100), fp32 on a CPU. These are estimates; ``nbutils.train.estimate`` times real steps on this machine.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nbutils.core.errors import UserError

EFFECTIVE_BATCH = 16  # crops per optimizer step on every GPU
USABLE = 0.75  # share of VRAM we plan to use: an estimate, so leave room (fragmentation, spikes)
CONTEXT_GB = 1.5  # CUDA context + allocator slack
TEXT_AND_CODEC = 0.17e9  # parameters of the T5-base text encoder + EnCodec 32 kHz
GIB = 2**30
CHROMA_FRAMES = 235  # MusicgenMelodyConfig.chroma_length: 30 s of chroma at 7.8 frames/s
TEXT_TOKENS = 64  # a long description's T5 tokens (melody models prepend them to the audio tokens)


@dataclasses.dataclass(frozen=True)
class Shape:
    """What memory depends on: the decoder's size."""

    layers: int
    hidden: int
    ffn: int
    codebooks: int = 4
    vocab: int = 2048
    cross_attention: bool = True
    """Text enters through cross-attention (MusicGen); melody checkpoints prepend it instead."""
    prefix: int = 0
    """Positions in front of the audio tokens: a melody checkpoint's chroma and text."""

    @property
    def decoder_params(self) -> float:
        # self-attn (+ cross-attn) (4 h^2 each) + feed-forward (2 h f) per layer; embeddings + heads
        per_layer = (8 if self.cross_attention else 4) * self.hidden**2 + 2 * self.hidden * self.ffn
        return self.layers * per_layer + 2 * self.codebooks * self.vocab * self.hidden


# Decoder shapes of the facebook/musicgen-* checkpoints (their config.json; the melody ones from
# transformers' convert_musicgen_melody_transformers.py: 1536 x 48 and 2048 x 48, ffn 4 x hidden).
SIZES = {
    "small": Shape(layers=24, hidden=1024, ffn=4096),
    "medium": Shape(layers=48, hidden=1536, ffn=6144),
    "large": Shape(layers=48, hidden=2048, ffn=8192),
    "melody": Shape(layers=48, hidden=1536, ffn=6144, cross_attention=False, prefix=CHROMA_FRAMES + TEXT_TOKENS),
    "melody-large": Shape(layers=48, hidden=2048, ffn=8192, cross_attention=False,
                          prefix=CHROMA_FRAMES + TEXT_TOKENS),
}


@dataclasses.dataclass(frozen=True)
class GPU:
    name: str
    vram_gb: float
    bf16: bool


# The GPUs Colab offers (and H100 for shells); memory as the driver reports it.
KNOWN_GPUS = {
    "A100 80GB": GPU("A100 80GB", 79.2, True),
    "A100 40GB": GPU("A100 40GB", 39.6, True),
    "L4": GPU("L4", 22.5, True),
    "V100": GPU("V100 16GB", 15.8, False),
    "T4": GPU("T4", 15.0, False),
}


@dataclasses.dataclass(frozen=True)
class Preset:
    """A suggestion for one model on one device."""

    device: str
    model: str
    batch_size: int
    grad_accum: int
    precision: str
    grad_checkpointing: bool
    memory_gb: float
    """Estimated peak memory of one training step (0 on a CPU)."""
    note: str = ""

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum


def detect(info: dict[str, Any] | None = None) -> GPU | None:
    """The current GPU (or the one ``info`` describes, as ``devices.gpu_info`` returns it); None on CPU."""
    if info is None:
        from nbutils.core import devices

        info = devices.gpu_info()
    if not info:
        return None
    name, vram = str(info["name"]), float(info["vram_gb"])
    for key, known in KNOWN_GPUS.items():
        family = key.split()[0]
        if family in name.upper() and (family != "A100" or (vram > 60) == ("80" in key)):
            return GPU(known.name, vram, bool(info.get("bf16", known.bf16)))
    return GPU(name, vram, bool(info.get("bf16", False)))


def shape_of(model_name: str) -> tuple[str, Shape]:
    """``(size label, Shape)`` of a model from its config (no weights are loaded)."""
    from nbutils.core import models

    for label in sorted(SIZES, key=len, reverse=True):  # "-melody-large" before "-large"
        shape = SIZES[label]
        if str(model_name).endswith(f"-{label}") and not models.is_tiny(model_name):
            # stereo checkpoints interleave 2 x 4 codebooks: twice the logits per step
            return label, dataclasses.replace(shape, codebooks=8) if "stereo" in str(model_name) else shape
    config = models.load_config(model_name)
    decoder, melody = config.decoder, models.is_melody(config)
    shape = Shape(decoder.num_hidden_layers, decoder.hidden_size, decoder.ffn_dim, decoder.num_codebooks,
                  decoder.vocab_size, cross_attention=not melody,
                  prefix=config.chroma_length + TEXT_TOKENS if melody else 0)
    label = next((k for k, v in SIZES.items() if (v.layers, v.hidden, v.cross_attention) ==
                  (shape.layers, shape.hidden, shape.cross_attention)),
                 "tiny" if models.is_tiny(model_name) else f"{shape.decoder_params / 1e6:.0f}M")
    return label, shape


def memory_gb(shape: Shape, batch: int, seconds: float, checkpointing: bool, frame_rate: int = 50) -> float:
    """Estimated peak GPU memory (GiB) of one training step in half precision."""
    steps = int(seconds * frame_rate) + shape.codebooks - 1 + shape.prefix  # a melody model's logits cover the prefix
    weights = (shape.decoder_params + TEXT_AND_CODEC) * 2
    lora_and_adam = 4 * 2 * 16 * shape.hidden * shape.layers * 16  # r=16 on q,k,v,out; fp32 weight+grad+2 moments
    if checkpointing:  # layer inputs kept, one layer's activations live during recompute
        per_crop = steps * shape.hidden * 2 * shape.layers + steps * (18 * shape.hidden + 4 * shape.ffn) * 2
    else:  # ~18 hidden-sized and 4 ffn-sized tensors saved per layer (attention via SDPA: no S^2 term)
        per_crop = steps * (18 * shape.hidden + 4 * shape.ffn) * 2 * shape.layers
    logits = steps * shape.codebooks * shape.vocab * 10  # half logits + float copy for the loss + its grad
    return (weights + lora_and_adam + batch * (per_crop + logits)) / GIB + CONTEXT_GB


def compare_memory(model_name: str, batch: int, seconds: float, checkpointing: bool,
                   measured_gb: float) -> dict[str, Any]:
    """The memory model's prediction for one training step next to a measured peak.

    ``measured_gb`` is what PyTorch's allocator reports (``torch.cuda.max_memory_allocated``),
    which leaves out the CUDA context; so is the prediction compared with it (``CONTEXT_GB`` off).
    The presets plan for ``USABLE`` of the GPU's memory, so an underestimate by more than
    ``1 / USABLE`` can run a preset out of memory: ``within_margin`` is False then.

    Returns:
        ``predicted_gb`` (with the context, as the presets plan), ``predicted_allocated_gb``,
        ``measured_gb``, ``error_percent`` (measured vs predicted allocation; positive: the model
        underestimates) and ``within_margin``.
    """
    _, shape = shape_of(model_name)
    predicted = memory_gb(shape, batch, seconds, checkpointing)
    allocated = predicted - CONTEXT_GB
    return {
        "predicted_gb": round(predicted, 3),
        "predicted_allocated_gb": round(allocated, 3),
        "measured_gb": round(measured_gb, 3),
        "error_percent": round(100 * (measured_gb - allocated) / allocated, 1),
        "within_margin": measured_gb <= allocated / USABLE,
    }


def _fits(shape: Shape, vram_gb: float, seconds: float, checkpointing: bool) -> int:
    """Largest power-of-two batch (<= EFFECTIVE_BATCH) that fits, or 0."""
    batch = EFFECTIVE_BATCH
    while batch >= 1 and memory_gb(shape, batch, seconds, checkpointing) > USABLE * vram_gb:
        batch //= 2
    return batch


def plan(label: str, shape: Shape, gpu: GPU | None, seconds: float = 30.0) -> Preset:
    """Batch x accumulation, precision and checkpointing for one model on one device."""
    from nbutils.core import devices

    if gpu is None:
        return Preset("CPU", label, 2, 1, devices.pick_precision("auto", "cpu"), False, 0.0,
                      "CPU: fine for the tiny test model; real models need a GPU.")
    precision = devices.pick_precision("auto", "cuda", bf16=gpu.bf16)
    batch, checkpointing = _fits(shape, gpu.vram_gb, seconds, False), False
    if batch < 2:  # recomputing activations (~30% slower) beats a batch of one
        batch_gc = _fits(shape, gpu.vram_gb, seconds, True)
        if batch_gc > batch:
            batch, checkpointing = batch_gc, True
    note = ""
    if batch == 0:
        batch, checkpointing = 1, True
        note = (f"Does not fit in {gpu.vram_gb:g} GB at {seconds:g} s crops: shorten crop_seconds "
                "(notebook 02: CROP_SECONDS) or use a bigger GPU.")
    return Preset(gpu.name, label, batch, EFFECTIVE_BATCH // batch, precision, checkpointing,
                  round(memory_gb(shape, batch, seconds, checkpointing), 1), note)


def suggest(model_name: str, gpu: GPU | dict | None | str = "detect", crop_seconds: float = 30.0) -> Preset:
    """The preset for ``model_name`` on this machine's GPU (or the given one)."""
    if isinstance(gpu, str):
        gpu = detect()
    elif isinstance(gpu, dict):
        gpu = detect(gpu)
    label, shape = shape_of(model_name)
    return plan(label, shape, gpu, crop_seconds)


def settings_for(cfg: Any, model_name: str) -> dict[str, Any]:
    """Batch size, accumulation, precision and checkpointing of a training config, else the preset.

    Args:
        cfg: A ``TrainConfig`` (``0`` / ``"auto"`` fields take the preset's value).
        model_name: The model trained (its size picks the preset).
    """
    preset = suggest(model_name, crop_seconds=cfg.crop_seconds)
    precision = preset.precision if cfg.precision == "auto" else cfg.precision
    checkpointing = preset.grad_checkpointing if cfg.grad_checkpointing == "auto" else cfg.grad_checkpointing == "on"
    batch_size, grad_accum = cfg.batch_size or preset.batch_size, cfg.grad_accum or preset.grad_accum
    # One of the two set: the other completes EFFECTIVE_BATCH, as the preset would, so the
    # effective batch (part of what a run means) does not depend on which GPU Colab assigned.
    if cfg.batch_size and not cfg.grad_accum:
        grad_accum = max(1, EFFECTIVE_BATCH // cfg.batch_size)
    elif cfg.grad_accum and not cfg.batch_size:
        batch_size = max(1, EFFECTIVE_BATCH // cfg.grad_accum)
    return {
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "precision": precision,
        "grad_checkpointing": bool(checkpointing),
        "preset": preset,
    }


def out_of_memory_error(batch_size: int, grad_accum: int) -> UserError:
    """What to lower after a step ran out of GPU memory (training, or the preset time estimate)."""
    return UserError(
        f"Out of GPU memory with batch_size {batch_size}. Halve it and double grad_accum (batch_size "
        f"{max(1, batch_size // 2)}, grad_accum {grad_accum * 2}) to keep the same effective batch, turn on "
        "grad_checkpointing, or shorten crop_seconds (notebook 02: CROP_SECONDS). Re-running resumes from the "
        "last checkpoint."
    )


def table(crop_seconds: float = 30.0) -> list[Preset]:
    """Presets for small / medium / large / melody / melody-large on every known GPU."""
    return [plan(label, shape, gpu, crop_seconds) for gpu in KNOWN_GPUS.values() for label, shape in SIZES.items()]


def format_table(rows: list[Preset]) -> str:
    lines = [f"{'GPU':<11} {'model':<12} {'batch x accum':>13} {'precision':>9} {'checkpointing':>13} {'est. GB':>8}"]
    for p in rows:
        lines.append(f"{p.device:<11} {p.model:<12} {f'{p.batch_size} x {p.grad_accum}':>13} {p.precision:>9} "
                     f"{'on' if p.grad_checkpointing else 'off':>13} {p.memory_gb:>8.1f}"
                     + (f"  {p.note}" if p.note else ""))
    return "\n".join(lines)
