"""Chroma features that condition musicgen-melody, computed without torchaudio.

transformers' ``MusicgenMelodyFeatureExtractor`` needs torchaudio for its spectrogram, and
torchaudio has no CPU build for the torch used here. This module computes the same features
with ``torch.stft`` and transformers' own ``chroma_filter_bank``, step for step as
``feature_extraction_musicgen_melody.py`` does: a power spectrogram (Hann window of 16384
samples, hop 4096, centred, window-normalised), summed into 12 pitch classes, and reduced to a
one-hot of the strongest pitch class per frame (C = bin 0, A = bin 9).

Unlike audiocraft, the melody is not separated from drums and bass with Demucs first: give a
melody-only recording (humming, a lead line, a piano) for the clearest conditioning.
"""

from __future__ import annotations

import math

import numpy as np

N_FFT = 16384  # samples per spectrogram window at 32 kHz (0.51 s): fine enough to separate semitones
HOP_LENGTH = 4096  # samples between chroma frames at 32 kHz: 7.8 frames per second
NUM_CHROMA = 12  # pitch classes C, C#, ..., B
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _filters(sample_rate: int, n_fft: int, num_chroma: int):
    import torch
    from transformers.audio_utils import chroma_filter_bank

    bank = chroma_filter_bank(sampling_rate=sample_rate, num_frequency_bins=n_fft, tuning=0, num_chroma=num_chroma)
    return torch.from_numpy(bank).float()


def chroma(
    audio: np.ndarray,
    sample_rate: int = 32_000,
    *,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    num_chroma: int = NUM_CHROMA,
):
    """One-hot chroma of ``audio`` (mono ``(samples,)`` or ``(samples, channels)``, float).

    Returns:
        float32 tensor ``(frames, num_chroma)`` with one 1 per frame, frames = samples // hop + 1.
    """
    import torch

    wave = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    if wave.ndim == 2:
        wave = wave.mean(dim=1)  # the melody model's extractor averages stereo too
    if wave.shape[0] < n_fft:  # as transformers: centre short audio in zeros, one window long
        pad = n_fft - wave.shape[0]
        wave = torch.nn.functional.pad(wave, (pad // 2, pad - pad // 2))
    window = torch.hann_window(n_fft)
    spec = torch.stft(wave, n_fft=n_fft, hop_length=hop_length, win_length=n_fft, window=window,
                      center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    spec = spec / window.pow(2).sum().sqrt()  # torchaudio's normalized=True ("window" normalisation)
    power = spec.abs().pow(2)  # (freq, frames)
    raw = _filters(sample_rate, n_fft, num_chroma) @ power  # (chroma, frames)
    norm = torch.nn.functional.normalize(raw, p=float("inf"), dim=0, eps=1e-6).T  # (frames, chroma)
    one_hot = torch.zeros_like(norm)
    one_hot.scatter_(1, norm.argmax(dim=1, keepdim=True), 1.0)
    return one_hot


def frames_per_second(sample_rate: int = 32_000, hop_length: int = HOP_LENGTH) -> float:
    return sample_rate / hop_length


def window(features, start_seconds: float, seconds: float, sample_rate: int = 32_000, hop_length: int = HOP_LENGTH):
    """The chroma frames for ``[start, start + seconds)`` of the melody, looping a short melody.

    Long-form generation asks for the melody under each window in turn; a melody shorter than
    the request repeats (the model itself also tiles short chroma up to its 30 s length).
    """
    import torch

    rate = frames_per_second(sample_rate, hop_length)
    first = int(math.floor(start_seconds * rate))
    count = max(1, int(math.ceil(seconds * rate)))
    index = torch.arange(first, first + count) % features.shape[0]
    return features[index]


def dominant_pitch(features) -> str:
    """Name of the most frequent pitch class in one-hot chroma (for messages and tests)."""
    return PITCH_CLASSES[int(features.sum(dim=0).argmax())]
