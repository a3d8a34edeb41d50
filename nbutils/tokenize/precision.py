"""Which precision tokenization encodes in: autocast vs float32 agreement, and the project's default.

Under autocast EnCodec's convolutions run in bf16 / fp16 (its quantizer stays float32, see
``nbutils.tokenize.encoder``). Whether that changes the codes depends on the codec's weights and
the GPU, so ``python -m nbutils doctor`` measures it on the user's runtime (``agreement``): when
fewer than ``MIN_AGREEMENT`` of the codes match float32, it records ``tokenize_precision: fp32``
in the project's ``project.json``, and from then on ``precision = auto`` encodes in float32
(``project_default``; a precision set explicitly still wins).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nbutils.core import atomic, devices, synth
from nbutils.core.models import AudioSpec
from nbutils.core.paths import PROJECT_FILE

MIN_AGREEMENT = 0.99  # share of codes that must match float32 for autocast to stay the default
PROJECT_KEY = "tokenize_precision"  # in project.json: the precision ``auto`` means for tokenization
NOTE_KEY = "tokenize_precision_note"  # why it was set (measurement, date)


def sample_audio(spec: AudioSpec, seconds: float) -> np.ndarray:
    """``seconds`` of synthetic music at the codec's rate and channels, ``(channels, samples)``."""
    styles = [synth.track(style, seconds, spec.sample_rate, seed=i) for i, style in enumerate(synth.STYLES)]
    mix = np.sum(styles, axis=0) / len(styles)  # chords, arpeggio and percussion at once: every band busy
    return np.repeat(mix[None], spec.audio_channels, axis=0).astype(np.float32)


def agreement(codec, spec: AudioSpec, wave: np.ndarray, *, device: str, precision: str) -> dict[str, Any]:
    """Encode ``wave`` under ``precision``'s autocast and in float32 (twice); compare the codes.

    Args:
        codec: The EnCodec model (moved to ``device``).
        spec: Its ``AudioSpec``.
        wave: ``(channels, samples)`` float32.
        device: Where to encode.
        precision: ``bf16`` or ``fp16``: the autocast to compare with float32.

    Returns:
        ``agree`` (share of all codes equal, 0..1), ``agree_per_codebook``, ``fp32_repeat_agree``
        (float32 encoded twice: how repeatable the baseline itself is) and ``frames``.
    """
    from nbutils.tokenize.encoder import Encoder

    def codes(precision: str) -> np.ndarray:
        return Encoder(codec, spec, device=device, precision=precision).encode([wave])[0]  # (frames, K)

    full, again, half = codes("fp32"), codes("fp32"), codes(precision)
    return {
        "agree": float(np.mean(half == full)),
        "agree_per_codebook": [float(v) for v in np.mean(half == full, axis=0)],
        "fp32_repeat_agree": float(np.mean(again == full)),
        "frames": int(full.shape[0]),
    }


def autocast_precision(device: str) -> str:
    """The autocast tokenization uses on ``device`` by default; on a CPU (float32 by default) bf16,
    the one autocast a CPU runs."""
    resolved = devices.pick_precision("auto", device)
    return "bf16" if resolved == "fp32" else resolved


def project_file(tokens_dir: str | os.PathLike) -> Path:
    """The ``project.json`` of the project whose token folder is ``tokens_dir`` (``PROJECT_ROOT/tokens``)."""
    return Path(tokens_dir).expanduser().absolute().parent / PROJECT_FILE


def project_default(tokens_dir: str | os.PathLike) -> tuple[str, str] | None:
    """``(precision, why)`` recorded for the project of ``tokens_dir``, or None (nothing recorded,
    no project, or an unreadable project.json: tokenization is not the place to complain about it)."""
    path = project_file(tokens_dir)
    try:
        settings = atomic.read_json(path) if path.is_file() else {}
    except (OSError, ValueError):
        return None
    value = settings.get(PROJECT_KEY) if isinstance(settings, dict) else None
    if value not in devices.PRECISIONS or value == "auto":
        return None
    return value, str(settings.get(NOTE_KEY) or f"{PROJECT_KEY} in {path}")


def resolve(precision: str, tokens_dir: str | os.PathLike) -> tuple[str, str | None]:
    """The precision to encode with: ``precision``, or for ``auto`` the project's recorded default.

    Returns:
        ``(precision, note)``: the note says why the project's default applies (None otherwise).
    """
    if devices.precision_name(precision) != "auto":
        return precision, None
    recorded = project_default(tokens_dir)
    if recorded is None:
        return precision, None
    value, why = recorded
    return value, (f"Encoding in {value}: {why}. Set the precision explicitly (PRECISION / --precision) to "
                   "override it.")
