"""Audio in and out for generation and evaluation: read any file at the model's rate, write WAVs
that never clip and never overwrite an earlier result.

Reading uses soundfile (wav, flac, ogg, mp3) and soxr for resampling, since torchaudio has no
CPU build here and librosa costs ~25 s of numba compilation on first use. Writing is 16-bit PCM:
float audio from EnCodec can exceed [-1, 1], so a clip is scaled down (only then) until its peak
fits, and the gain is recorded in the sidecar instead of silently clipping.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from nbutils.core import atomic
from nbutils.core.errors import UserError

INT16_MAX = 32767  # largest positive 16-bit sample; -32768 is never produced so the scale is symmetric
SLUG_CHARS = 40  # prompt characters kept in a file name


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample ``(samples,)`` or ``(samples, channels)`` float audio with soxr (high quality)."""
    import soxr

    if from_rate == to_rate:
        return np.asarray(audio, dtype=np.float32)
    return soxr.resample(np.asarray(audio, dtype=np.float32), from_rate, to_rate, quality="HQ").astype(np.float32)


def to_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """``(samples, c)`` float audio -> ``(samples, channels)``: mono is averaged, mono to stereo is duplicated."""
    audio = audio[:, None] if audio.ndim == 1 else audio
    if audio.shape[1] == channels:
        return audio
    mono = audio.mean(axis=1, keepdims=True)
    return np.repeat(mono, channels, axis=1)


def read_audio(path: str | os.PathLike, sample_rate: int, channels: int = 1) -> np.ndarray:
    """Read an audio file as float32 ``(samples, channels)`` at ``sample_rate``.

    Raises:
        UserError: the file is missing or not decodable (names the file and the formats we read).
    """
    import soundfile as sf

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"Audio file {path} does not exist. Check the path (on Colab: under /content/drive/MyDrive/...).")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # noqa: BLE001 - libsndfile raises several types for a bad file
        raise UserError(f"Could not read {path} as audio ({err}). Use a WAV, FLAC, OGG or MP3 file.") from err
    if audio.shape[0] == 0:
        raise UserError(f"{path} contains no audio samples.")
    return to_channels(resample(audio, rate, sample_rate), channels)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def peak_safe_int16(audio: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Convert float audio to int16 without clipping.

    Audio whose peak is at most 1.0 keeps its level (gain 1.0); louder audio is scaled by
    ``1 / peak`` first. Samples are rounded (not truncated) to the nearest 16-bit level.

    Returns:
        ``(int16 audio, gain applied, peak before the gain)``.
    """
    audio = np.nan_to_num(np.asarray(audio, dtype=np.float64))
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    gain = 1.0 if peak <= 1.0 else 1.0 / peak
    scaled = np.clip(np.rint(audio * gain * INT16_MAX), -INT16_MAX, INT16_MAX)
    return scaled.astype(np.int16), gain, peak


def slug(text: str, limit: int = SLUG_CHARS) -> str:
    """File-name-safe lowercase words of ``text`` (``"Calm piano, 90 BPM!"`` -> ``calm-piano-90-bpm``)."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return words[:limit].rstrip("-") or "untitled"


def timestamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def output_folder(path: str | os.PathLike) -> Path:
    """``path`` (``~`` expanded) as a folder for results, checked before any work is done.

    The folder may not exist yet (it is created when the first result is saved), but it must not
    be a file, nor lie under one.

    Raises:
        UserError: ``path``, or one of the folders above it, is an existing file.
    """
    folder = Path(path).expanduser()
    for part in (folder, *folder.parents):
        if part.exists():  # the nearest existing part decides whether the folder can be created
            if not part.is_dir():
                where = "is a file" if part == folder else f"lies under {part}, which is a file"
                raise UserError(f"The output folder {folder} {where}. Pass a folder path (new or existing) "
                                "for --out / the output folder, e.g. next to that file.")
            break
    return folder


def reserve(folder: str | os.PathLike, stem: str, suffixes: Iterable[str]) -> str:
    """Claim a free name ``stem`` (or ``stem-2``, ``stem-3``...) for every suffix at once.

    Each ``folder/<name><suffix>`` is created empty with exclusive create (``O_EXCL``), so two
    processes, or two clicks of a button, can never pick the same name and nothing earlier is
    overwritten. The files are then filled atomically (``atomic.atomic_path`` replaces them).

    Returns:
        The reserved name (without suffix).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    suffixes = list(suffixes)
    if len(set(suffixes)) != len(suffixes):  # the second copy could never be created: every name would fail
        raise ValueError(f"reserve() got the same suffix twice: {suffixes}; each file of a name needs its own suffix.")
    for n in range(1, 10_000):
        name = stem if n == 1 else f"{stem}-{n}"
        created: list[Path] = []
        try:
            for suffix in suffixes:
                path = folder / f"{name}{suffix}"
                with open(path, "xb"):
                    pass
                created.append(path)
        except FileExistsError:
            for path in created:  # give back the part of this name we took
                path.unlink()
            continue
        return name
    raise UserError(f"{folder} holds 10000 results named {stem}*; choose another output folder.")


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> dict[str, Any]:
    """Write float ``(samples, channels)`` audio as 16-bit PCM WAV, atomically and peak-safe.

    Returns:
        What the sidecar records about the conversion: ``gain``, ``peak``, ``samples``, ``channels``.
    """
    import soundfile as sf

    audio = np.asarray(audio)
    audio = audio[:, None] if audio.ndim == 1 else audio
    pcm, gain, peak = peak_safe_int16(audio)
    with atomic.atomic_path(path) as tmp:
        sf.write(str(tmp), pcm, sample_rate, subtype="PCM_16", format="WAV")
    return {"gain": gain, "peak": round(peak, 6), "samples": int(audio.shape[0]), "channels": int(audio.shape[1])}
