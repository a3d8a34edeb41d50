"""What generation writes: WAVs that never clip, names that never overwrite, and a JSON sidecar per clip.

WAVs are 16-bit PCM: float audio from EnCodec can exceed [-1, 1], so a clip is scaled down (only
then) until its peak fits, and the gain is recorded in the sidecar instead of silently clipping.
Names are reserved with exclusive create before anything is written. (Audio is read, for every
stage, by ``nbutils.core.audio.load``.)
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from nbutils.core import atomic, config
from nbutils.core.errors import UserError

INT16_MAX = 32767  # largest positive 16-bit sample; -32768 is never produced so the scale is symmetric
SLUG_CHARS = 40  # prompt characters kept in a file name


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


# ---------------------------------------------------------------------------------------------
# Clips and their sidecars
# ---------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    import nbutils

    return {"nbutils": nbutils.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def sidecar(clip, cfg, pipe, wav: Path, written: dict, pair: str | None,
            inputs: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON record next to a WAV: enough to know, and redo, exactly what made it.

    Args:
        clip: The ``musicgen.Clip`` written to ``wav``.
        cfg: The ``GenerateConfig`` of the request (``parameters``: feed it to ``config.from_dict``
            to ask for the same again).
        pipe: The ``musicgen.Pipeline`` that made it.
        wav: The WAV file; ``written``: what ``write_wav`` returned; ``pair``: the A/B partner's file.
    """
    return {
        "file": wav.name,
        "prompt": clip.prompt,
        "variant": clip.variant,
        "pair": pair,
        "model": pipe.model_name,
        "adapter": pipe.adapter.describe() if pipe.adapter and clip.variant == "lora" else None,
        "adapter_loaded": pipe.adapter.describe() if pipe.adapter else None,
        "seed": cfg.seed,
        "variation": clip.variation,
        "variation_seed": clip.seed,
        "batch": clip.batch,
        "seconds": round(clip.seconds - clip.prompt_seconds, 6),
        "total_seconds": round(clip.seconds, 6),
        "prompt_seconds": round(clip.prompt_seconds, 6),
        "sample_rate": clip.sample_rate,
        "channels": written["channels"],
        "samples": written["samples"],
        "gain": written["gain"],
        "peak": written["peak"],
        "windows": clip.windows,
        "generation_seconds": round(clip.generation_seconds, 4),
        "realtime_factor": round(clip.realtime_factor, 4),
        "parameters": config.to_dict(cfg),
        "inputs": input_digests(cfg) if inputs is None else inputs,
        "pipeline": pipe.describe(),
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def input_digests(cfg) -> dict[str, str]:
    """sha256 of the files a request reads (``melody``, ``audio_prompt``): the same path may hold
    another recording later, and ``--reuse`` must not play clips made from the old one."""
    import hashlib

    digests = {}
    for key in ("melody", "audio_prompt"):
        path = getattr(cfg, key, "")
        if path and Path(path).expanduser().is_file():
            digests[key] = hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
    return digests


def save(clips: list, cfg, pipe, out: str | Path) -> list[dict[str, Any]]:
    """Write each clip as ``<time>_<prompt>_s<seed>_<variant>.wav`` + ``.json`` in ``out``.

    A/B takes share the name up to the variant. Names are reserved with exclusive create, so
    nothing earlier is ever overwritten (a second run, or a prompt given twice, or two prompts
    with the same slug, get ``-2``, ``-3``...). The WAV is written before its sidecar: a sidecar
    means its WAV is complete. ``clips``, ``cfg`` and ``pipe`` are as for ``sidecar``.
    """
    out = Path(out).expanduser()
    stamp = timestamp()
    inputs = input_digests(cfg)  # read once per request, not per clip
    groups: dict[tuple, list] = {}
    for clip in clips:  # one name per prompt position: the same text twice is two takes
        groups.setdefault((clip.index, clip.variation), []).append(clip)
    records = []
    for group in groups.values():
        stem = f"{stamp}_{slug(group[0].prompt)}_s{group[0].seed}"
        name = reserve(out, stem, [f"_{c.variant}{ext}" for c in group for ext in (".wav", ".json")])
        for clip in group:
            wav = out / f"{name}_{clip.variant}.wav"
            written = write_wav(wav, clip.audio, clip.sample_rate)
            others = [f"{name}_{c.variant}.wav" for c in group if c is not clip]
            record = sidecar(clip, cfg, pipe, wav, written, others[0] if others else None, inputs)
            atomic.write_json(wav.with_suffix(".json"), record)
            records.append({**record, "path": str(wav), "sidecar": str(wav.with_suffix(".json"))})
    return records


def find_saved(cfg, out: str | Path, variants: Iterable[str], fingerprint: str = "") -> list[dict[str, Any]] | None:
    """The clips of an earlier identical request in ``out``, in the order ``save`` returns them, or None.

    A saved clip counts when its sidecar holds exactly ``cfg``'s parameters (``reuse`` aside), the
    melody and audio-prompt files have the contents they have now, the adapter's weights have the
    ``fingerprint`` they have now, and its WAV is there. Every prompt x
    variation x variant needs one, taken in the order ``save`` named them (the earliest request first;
    a prompt given twice: ``name``, then ``name-2``). None when any is missing.

    Args:
        cfg: The ``GenerateConfig`` asked for.
        variants: The models it runs (``cfg.variants``).
        fingerprint: The adapter's weights fingerprint ('' without an adapter).
    """
    wanted = {k: v for k, v in config.to_dict(cfg).items() if k != "reuse"}
    inputs = input_digests(cfg)  # the melody / audio prompt files' contents, not only their paths
    found: dict[tuple, list[dict[str, Any]]] = {}
    for path in sorted(Path(out).expanduser().glob("*.json"), key=_name_order):
        try:
            record = atomic.read_json(path)
        except (OSError, ValueError):
            continue  # not a sidecar, or damaged: never reused
        if not isinstance(record, dict) or not isinstance(record.get("parameters"), dict):
            continue
        loaded = record.get("adapter_loaded") or {}
        wav = path.with_suffix(".wav")
        if ({k: v for k, v in record["parameters"].items() if k != "reuse"} == wanted and wav.is_file()
                and (loaded.get("fingerprint") or "") == fingerprint and (record.get("inputs") or {}) == inputs):
            key = (record.get("prompt"), record.get("variation"), record.get("variant"))
            found.setdefault(key, []).append({**record, "path": str(wav), "sidecar": str(path)})
    records = []
    for variation in range(cfg.variations):
        for prompt in cfg.prompts:  # the same prompt twice is two takes: each takes its own clip
            for variant in variants:
                takes = found.get((prompt, variation, variant))
                if not takes:
                    return None
                records.append(takes.pop(0))
    return records


def _name_order(path: Path) -> str:
    """Sort key of a result's name: its time stamp, then ``stem``, ``stem-2`` ... ``stem-10`` in number order."""
    return re.sub(r"_s(\d+)(?:-(\d+))?_(\w+)\.json$", lambda m: f"_s{m[1]}-{int(m[2] or 1):05d}_{m[3]}.json", path.name)
