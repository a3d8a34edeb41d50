"""Melodies the tests can check against: tracks of known notes, zipped, tokenized with ``tiny-melody``.

Each track is a sequence of 1 s sine notes (no C: pitch class 0 is the null melody, so a real
crop is never mistaken for a dropped one), written as float WAV so tokenization decodes exactly
these samples. ``note_at`` says which note sounds at any second of a track.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from _tokenize_helpers import encode_audio, write_zip

SR = 32_000
NOTE_SECONDS = 1.0
HZ = {"D": 293.66, "E": 329.63, "F": 349.23, "G": 392.00, "A": 440.00, "B": 493.88}
SCHEDULES = {  # track -> notes, one per second
    "lead/one.wav": "DEGABAGE",
    "lead/two.wav": "AFDEBGDA",
    "lead/three.wav": "GBDFAEGB",
}
DESCRIPTIONS = {"lead/one.wav": "calm piano melody", "lead/two.wav": "bright synth lead",
                "lead/three.wav": "slow organ"}
SEGMENT_SECONDS = 4.0  # two segments per 8 s track


def wave(notes: str) -> np.ndarray:
    """float32 sine notes, ``NOTE_SECONDS`` each."""
    t = np.arange(int(NOTE_SECONDS * SR)) / SR
    return np.concatenate([0.5 * np.sin(2 * np.pi * HZ[n] * t) for n in notes]).astype(np.float32)


def note_at(path: str, seconds: float) -> str:
    return SCHEDULES[path][int(seconds // NOTE_SECONDS)]


def write_melody_zips(folder: Path) -> Path:
    """``folder/melodies.zip`` with the tracks, and a ``metadata.jsonl`` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    write_zip(folder / "melodies.zip", [(p, encode_audio(wave(n), SR, "wavf")) for p, n in SCHEDULES.items()])
    lines = [json.dumps({"path": p, "description": d}) for p, d in DESCRIPTIONS.items()]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@functools.lru_cache(maxsize=None)
def _tokenized(model: str) -> tuple[Path, Path]:
    from nbutils import tokenize

    root = Path(tempfile.mkdtemp(prefix=f"nbutils-{model}-tokens-"))
    zips = write_melody_zips(root / "zips")
    tokenize.run(tokenize.TokenizeConfig(zips=str(zips), out=str(root / "tokens"), model=model,
                                         segment_seconds=SEGMENT_SECONDS, progress=False, describe="none"))
    return zips, root / "tokens"


def melody_tokens(tmp_path: Path, model: str = "tiny-melody") -> tuple[Path, Path]:
    """``(zips, tokens)``: a private copy of the melody tracks tokenized with ``model`` (once per session)."""
    zips, tokens = _tokenized(model)
    target = tmp_path / "tokens"
    shutil.copytree(tokens, target)
    return zips, target


def strip_chroma(tokens: Path, names: tuple[str, ...] | None = None) -> None:
    """Make shards look as if made without chroma (another model, or before melody training existed)."""
    from nbutils.core import atomic
    from nbutils.tokenize import shards

    for index in shards.list_shards(tokens):
        if names is None or index.stem in names:
            values = atomic.read_json(index)
            values.pop("chroma")
            atomic.write_json(index, values)
            shards.chroma_path(index).unlink()


def melody_config(tokens: Path, out: Path, **overrides):
    """A TrainConfig that trains tiny-melody in seconds."""
    from _train_helpers import small_config

    values = dict(model="tiny-melody", crop_seconds=1.0, val_fraction=0.34)
    values.update(overrides)
    return small_config(tokens, out, **values)
