"""Tempo and key of a track, heard piece by piece while it is decoded for encoding (with librosa).

The tokenize stage decodes every track once; a ``Listener`` is handed each piece (segment) as
it is decoded, in the decoding thread, and keeps only small summaries: librosa's onset strength
envelope and the chroma summed over time, plus a few audio windows for CLAP (``Windows``). At
the track's end:

* **tempo**: librosa's beat tracker on the whole onset envelope, then the mean of the
  inter-beat intervals near their median (finer than the tempo estimator's lag grid: a 512-sample
  hop at 22.05 kHz is 23 ms, 2.5 % of a beat at 150 bpm). The tracker finds "beats" in anything;
  a tempo is claimed only when the onset strength at those beats is at least ``MIN_PULSE`` times
  its mean (clicks, drums, plucked chords: 5-35; noise, a drone, a held chord: 1-3). Like every
  tempo estimator it may hear half or double the tempo of very slow or very fast music
  (librosa's prior is centred on 120 bpm).
* **key**: the Krumhansl-Schmuckler method: the summed chroma correlated with Krumhansl and
  Kessler's major and minor key profiles rotated to each of the 12 tonics; the best of the 24
  wins. No key is claimed below a correlation of ``KEY_MIN_CORRELATION`` (drums, noise: 0.3-0.45)
  or when the runner-up is within ``KEY_MIN_MARGIN`` (one note or chord, held or arpeggiated, fits
  several keys almost equally: margins of 0.01-0.04; a cadence leads its runner-up by 0.15).

librosa compiles parts of itself with numba the first time it is imported in a fresh
environment (about 25 s; later imports read numba's cache), so it is imported only when tracks
will be analysed, and ``warm_up`` pays that cost before the first ZIP (where it would distort the
test mode's throughput and ETA).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from nbutils.core import audio as core_audio

ANALYSIS_RATE = 22_050  # Hz: librosa's default rate, where its onset and chroma defaults are tuned
HOP_LENGTH = 512  # samples per onset / chroma frame (23 ms at 22.05 kHz)
CHROMA_FFT = 4096  # 186 ms: 5.4 Hz bins tell neighbouring semitones apart down to about 90 Hz
MIN_TEMPO_SECONDS = 6.0  # shorter tracks get no tempo: too few beats to tell
MIN_BEATS = 6
NEAR_MEDIAN = 0.25  # inter-beat intervals further than this share from their median are dropped
KEY_MIN_CORRELATION = 0.5  # tonal music correlates 0.6-0.95 with its key profile; drums 0.3-0.45
KEY_MIN_MARGIN = 0.05
MIN_PULSE = 4.0
TONICS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
MAJOR_PROFILE = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
MINOR_PROFILE = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)
# A silent or noisy first piece has no peaks to estimate the tuning from: librosa says so and uses A440.
warnings.filterwarnings("ignore", message="Trying to estimate tuning from empty frequency set", category=UserWarning)
KEYS = tuple(f"{tonic} {mode}" for mode in ("major", "minor") for tonic in TONICS)  # every key a track may get


def key_of(chroma: np.ndarray) -> tuple[str | None, float]:
    """``("Eb major", correlation)`` for a 12-bin chroma (C first), or ``(None, best)`` below the threshold."""
    chroma = np.asarray(chroma, dtype=np.float64)
    if chroma.shape != (12,) or not np.isfinite(chroma).all() or np.ptp(chroma) <= 0:
        return None, 0.0
    scores = sorted(((float(np.corrcoef(chroma, np.roll(profile, tonic))[0, 1]), f"{TONICS[tonic]} {mode}")
                     for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE))
                     for tonic in range(12)), reverse=True)
    (best, name), (second, _) = scores[0], scores[1]
    clear = best >= KEY_MIN_CORRELATION and best - second >= KEY_MIN_MARGIN
    return (name if clear else None), best


def tempo_of(envelope: np.ndarray, sample_rate: int = ANALYSIS_RATE, hop_length: int = HOP_LENGTH) -> float | None:
    """Beats per minute from an onset strength envelope (librosa's beat tracker), or None."""
    import librosa

    envelope = np.asarray(envelope, dtype=np.float32)
    if len(envelope) * hop_length / sample_rate < MIN_TEMPO_SECONDS or not envelope.any():
        return None
    estimate, beats = librosa.beat.beat_track(onset_envelope=envelope, sr=sample_rate, hop_length=hop_length)
    if len(beats) < MIN_BEATS or envelope[beats].mean() < MIN_PULSE * envelope.mean():
        return None  # no pulse: the tracker's beats are not where the onsets are
    intervals = np.diff(beats).astype(np.float64)
    median = float(np.median(intervals))
    near = intervals[np.abs(intervals - median) <= NEAR_MEDIAN * median]
    if len(near) < MIN_BEATS - 1:
        estimate = float(np.atleast_1d(estimate)[0])
        return estimate if estimate > 0 else None
    return 60.0 * sample_rate / (hop_length * float(near.mean()))


class Windows:
    """A few windows of ``size`` samples spread evenly over a track that arrives in pieces.

    The stream is cut into consecutive blocks of ``size`` samples. Every ``stride``-th block is
    kept; when more than ``SLOTS * most`` are kept, every other one is dropped and the stride
    doubles. Memory stays bounded (``SLOTS * most + 1`` blocks) however long the track, and the
    kept blocks stay evenly spread from its start to its end. ``picked(n)`` takes the kept blocks
    nearest the middles of ``n`` equal parts of the track (not its intro and fade-out).
    """

    SLOTS = 4

    def __init__(self, size: int, most: int, min_size: int):
        self.size, self.most, self.min_size = int(size), int(most), int(min_size)
        self.kept: list[tuple[int, np.ndarray]] = []  # (block number, audio)
        self.stride, self.block, self.filled = 1, 0, 0
        self._filling: list[np.ndarray] = []

    def add(self, mono: np.ndarray) -> None:
        """Take the next piece of the track (mono)."""
        pos = 0
        while pos < len(mono):
            take = min(self.size - self.filled, len(mono) - pos)
            if self.block % self.stride == 0:
                self._filling.append(mono[pos : pos + take])
            self.filled += take
            pos += take
            if self.filled == self.size:
                self._close()

    def _close(self) -> None:
        if self._filling:
            self.kept.append((self.block, np.concatenate(self._filling)))
            if len(self.kept) > self.SLOTS * self.most:
                self.kept, self.stride = self.kept[::2], self.stride * 2
        self.block, self.filled, self._filling = self.block + 1, 0, []

    def picked(self, count: int) -> list[np.ndarray]:
        """Up to ``count`` windows, nearest the middles of ``count`` equal parts of the track."""
        blocks = list(self.kept)
        if self._filling and (self.filled >= self.min_size or not blocks):
            blocks.append((self.block, np.concatenate(self._filling)))  # a tail long enough to count
        if not blocks:
            return []
        total = self.block + (1 if self.filled else 0)
        chosen: dict[int, np.ndarray] = {}
        for part in range(min(count, len(blocks))):
            middle = (part + 0.5) * total / count - 0.5
            number, audio = min(blocks, key=lambda b: (abs(b[0] - middle), b[0]))
            chosen.setdefault(number, audio)
        return [chosen[n] for n in sorted(chosen)]


class Listener:
    """What one track's analysis keeps while the track is decoded (fed one piece at a time).

    ``add`` runs in the decoding thread; it never raises: a failure is kept in ``error`` and the
    track is encoded as usual, without an automatic description.
    """

    def __init__(self, sample_rate: int, windows: Windows | None = None):
        self.sample_rate = int(sample_rate)
        self.windows = windows
        self.envelopes: list[np.ndarray] = []
        self.chroma = np.zeros(12)
        self.seconds = 0.0
        self.error = ""
        self.tuning: float | None = None  # in fractions of a semitone, estimated once from the first piece
        self.result: dict[str, Any] | None = None
        """Filled in at the track's end (``nbutils.tokenize.describe``): bpm, key, tags."""

    def add(self, piece: np.ndarray) -> None:
        """Hear one decoded piece, ``(channels, samples)`` at ``sample_rate``."""
        if self.error:
            return
        try:
            mono = piece.mean(axis=0, dtype=np.float32) if piece.ndim == 2 else np.asarray(piece, np.float32)
            self.seconds += len(mono) / self.sample_rate
            if self.windows is not None:
                self.windows.add(mono)
            self._features(mono)
        except Exception as err:  # noqa: BLE001 - analysis is a bonus: the track is still encoded
            self.error = f"{type(err).__name__}: {err}"

    def _features(self, mono: np.ndarray) -> None:
        import librosa

        y = core_audio.resample(mono, self.sample_rate, ANALYSIS_RATE)
        if len(y) < CHROMA_FFT:
            return
        self.envelopes.append(librosa.onset.onset_strength(y=y, sr=ANALYSIS_RATE, hop_length=HOP_LENGTH))
        if self.tuning is None:  # per piece it would double the chroma's cost; a track keeps its tuning
            self.tuning = float(librosa.estimate_tuning(y=y, sr=ANALYSIS_RATE, n_fft=CHROMA_FFT))
        chroma = librosa.feature.chroma_stft(y=y, sr=ANALYSIS_RATE, n_fft=CHROMA_FFT, hop_length=HOP_LENGTH,
                                             tuning=self.tuning)
        self.chroma += np.nan_to_num(chroma).sum(axis=1)

    def tempo_and_key(self) -> tuple[float | None, str | None]:
        """The track's tempo (bpm, 0.1 precision) and key, each None when it cannot be told."""
        if self.error or not self.envelopes:
            return None, None
        bpm = tempo_of(np.concatenate(self.envelopes))
        key, _ = key_of(self.chroma)
        return (round(bpm, 1) if bpm and math.isfinite(bpm) else None), key


def warm_up() -> None:
    """Import librosa and run the analysis once on a second of clicks (numba compiles on first use)."""
    t = np.arange(2 * ANALYSIS_RATE) / ANALYSIS_RATE
    clicks = (np.sin(2 * np.pi * 440 * t) * (np.mod(t, 0.25) < 0.02)).astype(np.float32)
    listener = Listener(ANALYSIS_RATE)
    listener.add(clicks[None])
    listener.envelopes *= 4  # long enough for the beat tracker to run
    listener.tempo_and_key()
