"""Synthetic music for tests and the offline demo: chords, arpeggios, percussive noise bursts.

Deterministic for a given seed, so tests can build the same ZIP twice and compare shards.
"""

from __future__ import annotations

import numpy as np

NOTE_A4 = 440.0
STYLES = ("chords", "arpeggio", "percussion")
_MINOR = (0, 3, 7)
_MAJOR = (0, 4, 7)


def _freq(semitones_from_a4: float) -> float:
    return NOTE_A4 * 2.0 ** (semitones_from_a4 / 12.0)


def _envelope(n: int, sr: int, attack: float = 0.01, release: float = 0.05) -> np.ndarray:
    env = np.ones(n, dtype=np.float32)
    # clamp to n: the last note of a track can be shorter than the attack or release
    a, r = min(n, max(1, int(attack * sr))), min(n, max(1, int(release * sr)))
    env[:a] = np.linspace(0, 1, a, dtype=np.float32)
    env[-r:] *= np.linspace(1, 0, r, dtype=np.float32)
    return env


def _tone(freq: float, n: int, sr: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float32) / sr
    # a few harmonics so it sounds like an instrument and EnCodec has something to encode
    wave = sum(np.sin(2 * np.pi * freq * k * t) / k for k in (1, 2, 3))
    return (wave * _envelope(n, sr)).astype(np.float32)


def chords(seconds: float, sr: int, rng: np.random.Generator, bpm: float = 90) -> np.ndarray:
    n, beat = int(seconds * sr), int(sr * 60 / bpm)
    out = np.zeros(n, dtype=np.float32)
    for start in range(0, n, beat * 2):
        root = rng.integers(-12, 4)
        shape = _MINOR if rng.random() < 0.5 else _MAJOR
        length = min(beat * 2, n - start)
        for interval in shape:
            out[start : start + length] += _tone(_freq(root + interval), length, sr) / 3
    return out


def arpeggio(seconds: float, sr: int, rng: np.random.Generator, bpm: float = 120) -> np.ndarray:
    n, step = int(seconds * sr), int(sr * 60 / bpm / 2)
    out = np.zeros(n, dtype=np.float32)
    root = rng.integers(-5, 5)
    pattern = [0, 4, 7, 12, 7, 4]
    for i, start in enumerate(range(0, n, step)):
        length = min(step, n - start)
        out[start : start + length] += _tone(_freq(root + pattern[i % len(pattern)]), length, sr)
    return out


def percussion(seconds: float, sr: int, rng: np.random.Generator, bpm: float = 100) -> np.ndarray:
    n, beat = int(seconds * sr), int(sr * 60 / bpm)
    out = np.zeros(n, dtype=np.float32)
    hit = min(beat, int(0.12 * sr))
    decay = np.exp(-np.linspace(0, 8, hit)).astype(np.float32)
    for i, start in enumerate(range(0, n, beat)):
        length = min(hit, n - start)
        burst = rng.standard_normal(length).astype(np.float32) * decay[:length]
        out[start : start + length] += burst * (1.0 if i % 2 == 0 else 0.5)
    return out


def track(style: str, seconds: float, sr: int = 32_000, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A synthetic track, float32 in [-0.9, 0.9], shape ``(samples,)`` or ``(samples, channels)``."""
    rng = np.random.default_rng(seed)
    wave = {"chords": chords, "arpeggio": arpeggio, "percussion": percussion}[style](seconds, sr, rng)
    peak = float(np.abs(wave).max()) or 1.0
    wave = (0.9 * wave / peak).astype(np.float32)
    if channels == 1:
        return wave
    # a slightly different right channel so stereo code paths see two real channels
    pan = np.linspace(0.6, 1.0, channels, dtype=np.float32)
    return np.stack([wave * p for p in pan], axis=1)


def describe(style: str) -> str:
    return {
        "chords": "calm piano chords, slow, minor and major",
        "arpeggio": "bright synth arpeggio melody, upbeat",
        "percussion": "dark percussion noise bursts, energetic beat",
    }[style]
