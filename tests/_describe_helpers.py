"""Synthetic music whose tempo and key are known: click tracks, drum patterns and chord cadences.

Made here, by the tests, at 32 kHz (the rate tokenize hands the analysis), deterministic per seed.
"""

from __future__ import annotations

import numpy as np

SR = 32_000
TONICS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


def _put(out: np.ndarray, start: int, sound: np.ndarray) -> None:
    end = min(len(out), start + len(sound))
    if start < end:
        out[start:end] += sound[: end - start]


def _decay(seconds: float, rate: float, sr: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(int(seconds * sr)) / sr
    return t, np.exp(-t * rate)


def click_track(bpm: float, seconds: float, sr: int = SR) -> np.ndarray:
    """A metronome: a 1.5 kHz click on every beat, accented on the first of four."""
    out = np.zeros(int(seconds * sr), np.float32)
    t, env = _decay(0.02, 200, sr)
    click = (np.sin(2 * np.pi * 1500 * t) * env).astype(np.float32)
    for k in range(int(seconds * bpm / 60) + 1):
        _put(out, int(round(k * 60 / bpm * sr)), click * (1.0 if k % 4 == 0 else 0.6))
    return out


def drum_pattern(bpm: float, seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A rock beat: kick on 1 and 3, snare on 2 and 4, closed hi-hat on every eighth note."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * sr), np.float32)
    t, env = _decay(0.15, 20, sr)
    kick = (np.sin(2 * np.pi * (50 + 100 * np.exp(-t * 30)) * t) * env).astype(np.float32)
    _, env = _decay(0.12, 30, sr)
    snare = (rng.standard_normal(len(env)) * env * 0.5).astype(np.float32)
    _, env = _decay(0.04, 100, sr)
    hat = (rng.standard_normal(len(env)) * env * 0.2).astype(np.float32)
    for k in range(int(seconds * bpm / 30) + 1):  # eighth notes
        start = int(round(k * 30 / bpm * sr))
        _put(out, start, hat)
        if k % 4 == 0:
            _put(out, start, kick)
        elif k % 4 == 2:
            _put(out, start, snare)
    return out


def _note(midi: float, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    freq = 440.0 * 2 ** ((midi - 69) / 12)
    wave = sum(np.sin(2 * np.pi * freq * k * t) / k for k in (1, 2, 3, 4))
    return (wave * np.minimum(1, t / 0.01) * np.exp(-t * 1.5)).astype(np.float32)


def cadence(key: str, seconds: float, sr: int = SR, bpm: float = 90) -> np.ndarray:
    """``"Eb major"``: I-IV-V-I (minor: i-iv-V-i, with the leading tone) repeated, each chord two beats, with a bass."""
    tonic, mode = key.split()
    root = 48 + TONICS.index(tonic)  # the tonic in the octave of C3
    third, sixth = (3, 8) if mode == "minor" else (4, 9)
    chords = [(0, third, 7), (5, sixth, 12), (7, 11, 14), (0, third, 7)]
    out = np.zeros(int(seconds * sr), np.float32)
    length = int(sr * 60 / bpm * 2)
    for i, start in enumerate(range(0, len(out), length)):
        chord = chords[i % len(chords)]
        n = min(length, len(out) - start)
        for interval in chord:
            out[start : start + n] += _note(root + interval, n, sr)
        out[start : start + n] += 0.7 * _note(root + chord[0] - 12, n, sr)
    return (0.8 * out / np.abs(out).max()).astype(np.float32)


def pieces(wave: np.ndarray, seconds: float = 30.0, sr: int = SR) -> list[np.ndarray]:
    """``wave`` as tokenize hands it over: segments of ``seconds``, shape ``(1, samples)`` each."""
    size = int(seconds * sr)
    return [wave[None, i : i + size] for i in range(0, len(wave), size)]
