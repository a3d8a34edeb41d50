"""LoRA on MusicGen's decoder with peft: target presets, wrapping, checks, adapter folders.

Module names in transformers' MusicGen (checked on the installed version):
``decoder.model.decoder.layers.N.self_attn.{q,k,v,out}_proj`` (self-attention),
``....encoder_attn.{q,k,v,out}_proj`` (cross-attention to the text) and ``....fc1`` / ``fc2``.
peft matches a list entry as a name *suffix*, so ``"self_attn.q_proj"`` hits only the decoder's
self-attention (a bare ``"q_proj"`` would also hit cross-attention); the T5 text encoder
(``SelfAttention.q``) and EnCodec have no module with these names.

Adapters are saved as plain PEFT folders (``adapter_config.json`` + ``adapter_model.safetensors``)
whose ``base_model_name_or_path`` is the model the run used, so the snippet users already copy
works unchanged::

    base = MusicgenForConditionalGeneration.from_pretrained(base_id)
    model = PeftModel.from_pretrained(base, adapter_dir)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nbutils.core import atomic, compat, models
from nbutils.core.errors import UserError

_SELF = [f"self_attn.{p}_proj" for p in ("q", "k", "v", "out")]
_CROSS = [f"encoder_attn.{p}_proj" for p in ("q", "k", "v", "out")]
PRESETS = {
    "self-attention": sorted(_SELF),
    "attention": sorted(_SELF + _CROSS),
    "all-linear": sorted(_SELF + _CROSS + ["fc1", "fc2"]),
}
DEFAULT_PRESET = "self-attention"
LORA_MARK = "lora_"  # every parameter peft adds for LoRA has this in its name
DECODER_LAYERS = "decoder.model.decoder.layers."


def targets(preset: str) -> list[str]:
    """Sorted target module suffixes of a preset (see ``PRESETS``)."""
    if preset not in PRESETS:
        raise UserError(f"Unknown LoRA target preset '{preset}'. Use one of: {', '.join(PRESETS)}.")
    return list(PRESETS[preset])


def make_config(preset: str = DEFAULT_PRESET, r: int = 16, alpha: float = 32, dropout: float = 0.05):
    """A peft ``LoraConfig`` for MusicGen's decoder (``TrainConfig`` has checked the values)."""
    from peft import LoraConfig

    return LoraConfig(r=int(r), lora_alpha=alpha, lora_dropout=float(dropout), target_modules=targets(preset),
                      bias="none")


def config_dict(config) -> dict[str, Any]:
    """JSON-able summary of a ``LoraConfig`` (what ``latest.pt`` stores; targets sorted)."""
    return {
        "peft_type": "LORA",
        "r": int(config.r),
        "lora_alpha": float(config.lora_alpha),
        "lora_dropout": float(config.lora_dropout),
        "target_modules": sorted(config.target_modules),
        "bias": str(config.bias),
        "use_rslora": bool(config.use_rslora),
        "use_dora": bool(config.use_dora),
        "base_model_name_or_path": config.base_model_name_or_path,
    }


def wrap(model, config, base_model: str | None = None):
    """Freeze every base weight (text encoder, EnCodec, decoder) and add LoRA to the decoder.

    Args:
        model: A ``MusicgenForConditionalGeneration``.
        config: From ``make_config``.
        base_model: The ``M`` the model was loaded from (recorded in saved adapters).

    Returns:
        The ``PeftModel``; only LoRA parameters require gradients (checked).
    """
    from peft import get_peft_model

    for param in model.parameters():
        param.requires_grad_(False)
    with compat.peft_wrapping():
        peft_model = get_peft_model(model, config)
    if base_model is not None:
        peft_model.peft_config["default"].base_model_name_or_path = str(base_model)
    check_only_lora_trainable(peft_model)
    return peft_model


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def check_only_lora_trainable(model) -> tuple[int, int]:
    """Raise if anything but LoRA weights inside the decoder layers would be trained.

    Returns:
        ``(trainable, total)`` parameter counts.
    """
    trainable = trainable_names(model)
    wrong = [n for n in trainable if LORA_MARK not in n or DECODER_LAYERS not in n]
    if wrong or not trainable:
        raise UserError(f"LoRA setup error: trainable parameters outside the decoder's LoRA layers: {wrong[:5]}"
                        if wrong else "LoRA setup error: no trainable parameters (no target module matched).")
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def state_dict(model) -> dict:
    """LoRA weights in peft's ``get_peft_model_state_dict`` format (no adapter name), CPU copies."""
    from peft import get_peft_model_state_dict

    # save_embedding_layers=False: we never adapt embeddings, and "auto" asks the Hub about the base model
    weights = get_peft_model_state_dict(model, save_embedding_layers=False)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}


def load_state_dict(model, weights: dict) -> None:
    """Put saved LoRA weights into ``model`` (strict: every LoRA weight must be present)."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in getattr(result, "missing_keys", []) if LORA_MARK in k]
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise UserError(f"The checkpoint's LoRA weights do not fit this model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}). Was it trained with other LoRA targets or another model?")


def save_adapter(model, folder: str | os.PathLike, base_model: str) -> Path:
    """Write a PEFT adapter folder atomically (replacing an older one only once complete)."""
    folder = Path(folder)
    config = model.peft_config["default"]
    config.base_model_name_or_path = str(base_model)
    with atomic.atomic_dir(folder) as tmp:
        write_adapter(model, tmp, base_model)
    return folder


def write_adapter(model, folder: Path, base_model: str) -> None:
    """Write adapter files into an existing (temporary) folder.

    Next to peft's files goes ``base_model.json`` (``models.base_facts``): loading refuses the
    adapter on a model with another type, codebook count, channel count or decoder width.
    """
    model.peft_config["default"].base_model_name_or_path = str(base_model)
    # save_embedding_layers=False: no embedding is adapted, and "auto" would query the Hub each save
    model.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)
    atomic.write_json(Path(folder) / models.BASE_RECORD, models.base_facts(model))
