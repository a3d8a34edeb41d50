"""Chroma features that condition musicgen-melody, computed without torchaudio.

transformers' ``MusicgenMelodyFeatureExtractor`` needs torchaudio for its spectrogram, and
torchaudio has no CPU build for the torch used here. This module computes the same features
with ``torch.stft`` and transformers' own ``chroma_filter_bank``, step for step as
``feature_extraction_musicgen_melody.py`` does: a power spectrogram (Hann window of ``n_fft``
samples, hop ``hop_length``, centred, window-normalised), summed into ``num_chroma`` pitch
classes, and reduced to a one-hot of the strongest pitch class per frame (C = bin 0, A = bin 9).
The settings come from the checkpoint's feature extractor (``ChromaSettings``; the released
melody checkpoints use 16384 / 4096 / 12 at 32 kHz).

Tokenization, training, generation and evaluation all use this one function, so the chroma a
LoRA is trained with is the chroma it is given later. Because every frame is one-hot, a frame is
stored as the index of its pitch class (``pitch_classes``: one byte per frame).

Unlike audiocraft, the melody is not separated from drums and bass with Demucs first: give a
melody-only recording (humming, a lead line, a piano) for the clearest conditioning.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

SAMPLE_RATE = 32_000  # Hz: the rate the melody checkpoints' feature extractor reads
N_FFT = 16384  # samples per spectrogram window at 32 kHz (0.51 s): fine enough to separate semitones
HOP_LENGTH = 4096  # samples between chroma frames at 32 kHz: 7.8 frames per second
NUM_CHROMA = 12  # pitch classes C, C#, ..., B
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
NULL_PITCH_CLASS = 0  # transformers' "no melody": every frame one-hot on bin 0 (what generate() feeds)


@dataclasses.dataclass(frozen=True)
class ChromaSettings:
    """How a melody checkpoint turns audio into chroma (its feature extractor's settings)."""

    sample_rate: int = SAMPLE_RATE
    """Audio samples per second the chroma is computed at."""
    n_fft: int = N_FFT
    """Samples per spectrogram window."""
    hop_length: int = HOP_LENGTH
    """Samples between chroma frames."""
    num_chroma: int = NUM_CHROMA
    """Pitch classes per frame."""

    @property
    def frame_rate(self) -> float:
        """Chroma frames per second (7.8125 for the released checkpoints)."""
        return self.sample_rate / self.hop_length

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_feature_extractor(cls, values: dict[str, Any]) -> ChromaSettings:
        """The settings in a ``MusicgenMelodyFeatureExtractor`` config (its ``to_dict``).

        transformers saves no ``num_chroma`` attribute (its ``feature_size`` is the bin count), so
        either is read; missing keys take the released checkpoints' values.
        """
        bins = values.get("num_chroma", values.get("feature_size", NUM_CHROMA))
        return cls(sample_rate=int(values.get("sampling_rate", SAMPLE_RATE)), n_fft=int(values.get("n_fft", N_FFT)),
                   hop_length=int(values.get("hop_length", HOP_LENGTH)), num_chroma=int(bins))

    def frames_for(self, samples: int) -> int:
        """Chroma frames of ``samples`` of audio (audio shorter than one window is padded to one)."""
        return max(int(samples), self.n_fft) // self.hop_length + 1


@functools.lru_cache(maxsize=8)
def _filters(sample_rate: int, n_fft: int, num_chroma: int):
    """transformers' (librosa's) chroma filter bank; cached: building it takes over a second."""
    import torch
    from transformers.audio_utils import chroma_filter_bank

    bank = chroma_filter_bank(sampling_rate=sample_rate, num_frequency_bins=n_fft, tuning=0, num_chroma=num_chroma)
    return torch.from_numpy(bank).float()


@functools.lru_cache(maxsize=8)
def _window(n_fft: int):
    import torch

    return torch.hann_window(n_fft)


def chroma(
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
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
    window = _window(n_fft)
    spec = torch.stft(wave, n_fft=n_fft, hop_length=hop_length, win_length=n_fft, window=window,
                      center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    spec = spec / window.pow(2).sum().sqrt()  # torchaudio's normalized=True ("window" normalisation)
    power = spec.abs().pow(2)  # (freq, frames)
    raw = _filters(sample_rate, n_fft, num_chroma) @ power  # (chroma, frames)
    norm = torch.nn.functional.normalize(raw, p=float("inf"), dim=0, eps=1e-6).T  # (frames, chroma)
    one_hot = torch.zeros_like(norm)
    one_hot.scatter_(1, norm.argmax(dim=1, keepdim=True), 1.0)
    return one_hot


def compute(audio: np.ndarray, settings: ChromaSettings):
    """``chroma`` of ``audio`` (at ``settings.sample_rate``) with a checkpoint's settings."""
    return chroma(audio, settings.sample_rate, n_fft=settings.n_fft, hop_length=settings.hop_length,
                  num_chroma=settings.num_chroma)


def pitch_classes(audio: np.ndarray, settings: ChromaSettings) -> np.ndarray:
    """The chroma of ``audio`` as one byte per frame: the index of its pitch class (what shards store).

    ``audio`` is ``(channels, samples)`` as tokenization hands it to EnCodec (or mono ``(samples,)``).
    """
    wave = np.asarray(audio, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.T  # (samples, channels): ``chroma`` averages the channels
    return compute(wave, settings).argmax(dim=1).numpy().astype(np.uint8)


def one_hot(classes, num_chroma: int = NUM_CHROMA):
    """Pitch-class indices ``(..., frames)`` back to one-hot chroma ``(..., frames, num_chroma)`` (float32)."""
    import torch

    return torch.nn.functional.one_hot(torch.as_tensor(np.asarray(classes), dtype=torch.long), num_chroma).float()


def null_rows(frames: int) -> np.ndarray:
    """transformers' "no melody" condition as stored pitch classes: every frame on bin 0 (``one_hot``
    makes the features). It is what ``generate()`` feeds without a melody and for the unconditional
    half of guidance, what audiocraft's extractor gives for a silent waveform, and a dropped chroma."""
    return np.full(frames, NULL_PITCH_CLASS, dtype=np.uint8)


def frames_per_second(sample_rate: int = SAMPLE_RATE, hop_length: int = HOP_LENGTH) -> float:
    return sample_rate / hop_length


def window(features, start_seconds: float, seconds: float, sample_rate: int = SAMPLE_RATE,
           hop_length: int = HOP_LENGTH):
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
