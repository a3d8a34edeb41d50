"""Chroma sequences and a similarity between them that tolerates small time shifts (the copy check).

A chroma frame says how much energy each of the 12 pitch classes has; a sequence of them follows
the melody and harmony over time and ignores timbre. Two renditions of the same music have
nearly equal sequences, music in the same key and style does not (the notes differ over time).

* ``sequence``: frames every ``HOP_SECONDS`` from a power spectrogram summed into pitch classes
  (transformers' ``chroma_filter_bank``, as the melody features use), smoothed over
  ``SMOOTH_FRAMES`` (half a second: a note played a little early still lands in the same
  frames), each frame scaled to unit length (silence stays zero).
* ``Bank.match``: slide a clip's sequence along a longer one (a training segment) and take the
  lag with the highest mean cosine between aligned frames: the clip may sit anywhere inside the
  segment, and is found up to a frame (0.1 s) off. The lag gives where in the segment it matches.
"""

from __future__ import annotations

import functools

import numpy as np

HOP_SECONDS = 0.1  # 10 chroma frames per second
N_FFT_SECONDS = 0.256  # analysis window: 8192 samples at 32 kHz, fine enough to tell semitones apart above ~100 Hz
SMOOTH_FRAMES = 5  # half a second of moving average
MIN_OVERLAP = 0.5  # a lag must align at least half of the shorter sequence


@functools.lru_cache(maxsize=4)
def _bank(sample_rate: int, n_fft: int) -> np.ndarray:
    from transformers.audio_utils import chroma_filter_bank

    return chroma_filter_bank(num_frequency_bins=n_fft, num_chroma=12, sampling_rate=sample_rate, tuning=0)


def sequence(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Unit-length, smoothed chroma frames ``(frames, 12)`` of mono or ``(samples, channels)`` audio."""
    wave = np.asarray(audio, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    hop = int(round(HOP_SECONDS * sample_rate))
    n_fft = 1 << int(round(np.log2(N_FFT_SECONDS * sample_rate)))
    padded = np.pad(wave, (n_fft // 2, n_fft // 2))
    count = max(1, 1 + (len(padded) - n_fft) // hop)
    if len(padded) < n_fft:
        padded = np.pad(padded, (0, n_fft - len(padded)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:count]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2
    raw = power @ _bank(sample_rate, n_fft).T  # (frames, 12)
    kernel = np.ones(SMOOTH_FRAMES) / SMOOTH_FRAMES
    smooth = np.stack([np.convolve(raw[:, c], kernel, mode="same") for c in range(12)], axis=1)
    norms = np.linalg.norm(smooth, axis=1, keepdims=True)
    loud = norms[:, 0] > 1e-6 * max(float(norms.max()), 1e-12)
    return np.where(loud[:, None], smooth / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


class Bank:
    """Many chroma sequences (training segments), matched against a query all at once.

    For every sequence, ``match`` finds the lag with the highest mean cosine between aligned
    frames: ``sum_i q[i] . t[i + lag] / min(len(q), len(t))`` over the lags where at least
    ``MIN_OVERLAP`` of the shorter sequence overlaps (negative lags: the query starts before the
    sequence). The sums for every lag come from one FFT cross-correlation per sequence.
    """

    def __init__(self, sequences: list[np.ndarray], chunk: int = 512):
        self.lengths = np.asarray([len(s) for s in sequences], dtype=np.int64)
        longest = int(self.lengths.max()) if len(sequences) else 0
        self.padded = np.zeros((len(sequences), longest, 12), np.float32)
        for i, s in enumerate(sequences):
            self.padded[i, : len(s)] = s
        self.chunk = chunk
        self._spectra: dict[int, list[np.ndarray]] = {}

    def _spectrum(self, size: int) -> list[np.ndarray]:
        if size not in self._spectra:  # one FFT size per query length: every clip of a run shares it
            self._spectra = {size: [np.fft.rfft(self.padded[i : i + self.chunk], n=size, axis=1).astype(np.complex64)
                                    for i in range(0, len(self.padded), self.chunk)]}
        return self._spectra[size]

    def match(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(similarity, lag)`` per sequence, each ``(N,)``; lag in frames."""
        q = len(query)
        if not q or not len(self.padded):
            return np.zeros(len(self.padded)), np.zeros(len(self.padded), np.int64)
        size = 1 << int(np.ceil(np.log2(self.padded.shape[1] + q)))
        spectrum_q = np.conj(np.fft.rfft(query, n=size, axis=0))  # (bins, 12)
        sums = np.concatenate([np.fft.irfft((part * spectrum_q[None]).sum(axis=2), n=size, axis=1)
                               for part in self._spectrum(size)])  # (N, size): circular lags
        lags = np.arange(-(q - 1), self.padded.shape[1])
        values = sums[:, lags % size]  # (N, lags)
        t = self.lengths[:, None]
        overlap = np.minimum(lags[None] + q, t) - np.maximum(lags[None], 0)
        shorter = np.minimum(q, t)
        ok = overlap >= np.maximum(1, np.ceil(MIN_OVERLAP * shorter))
        scores = np.where(ok, values / np.maximum(shorter, 1), -np.inf)
        best = scores.argmax(axis=1)
        found = scores[np.arange(len(scores)), best]
        return np.where(np.isfinite(found), found, 0.0), lags[best]
