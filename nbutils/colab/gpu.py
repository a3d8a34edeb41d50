"""The GPU check of 00_setup: what this runtime's GPU is and the training presets for Colab's GPUs."""

from __future__ import annotations

from typing import Any

from nbutils.core import devices


def gpu_report(model: str, info: dict[str, Any] | None = None) -> str:
    """What this runtime's GPU is and the training preset suggested for ``model`` on it.

    Args:
        model: The project's MusicGen (``M``); the preset depends on its size.
        info: A ``gpu_info()`` result (default: this runtime's).
    """
    from nbutils.core import models
    from nbutils.train import presets

    models.quiet_transformers()  # reading the model's config must not bury the report in warnings
    info = devices.gpu_info() if info is None else info
    if info is None:
        head = ("No GPU in this runtime (00_setup needs none). 01_tokenize and 02_train ask Colab for one "
                "(a T4, an A100); if Colab gives them none, choose Runtime > Change runtime type > GPU there (A100 "
                "if available, else L4 or T4). A CPU is practical only for `tiny`.")
    else:
        count = f" x {info['count']}" if info.get("count", 1) > 1 else ""
        head = f"GPU: {info['name']}{count}, {info['vram_gb']} GiB, bf16 {'yes' if info['bf16'] else 'no'}"
    p = presets.suggest(model, info)
    lines = [head, (
        f"Suggested training preset for {model} ({p.model}) on {p.device}: batch {p.batch_size} x accumulation "
        f"{p.grad_accum}, {p.precision}, gradient checkpointing {'on' if p.grad_checkpointing else 'off'}"
        + (f", about {p.memory_gb:g} GB" if p.memory_gb else "") + (f". {p.note}" if p.note else "."))]
    others = [row for row in presets.table() if row.model == p.model]
    if others:  # the same model on each Colab GPU, to choose the runtime type
        lines += [f"{p.model} on Colab's GPUs (30 s crops):", presets.format_table(others)]
    lines.append("02_train's preset cell measures real steps on its runtime and estimates the time per epoch.")
    return "\n".join(lines)

