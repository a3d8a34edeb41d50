"""Batched, padding-aware EnCodec encoding of audio segments into MusicGen codes.

* Segments are grouped into batches and zero-padded to the longest one; each keeps exactly
  ``ceil(samples / 640)`` frames, so codes past a segment's true end never reach a shard.
  Full-length segments and shorter ones (tails, short tracks) are batched apart, so the
  common 30 s segments are never padded.
* Stereo checkpoints: the left and right channels are encoded as separate mono signals and
  their codebooks interleaved ``L0, R0, L1, R1, ...`` -- what transformers' stereo MusicGen
  does in ``_prepare_audio_encoder_kwargs_for_generation``.
* ``torch.inference_mode`` always; fp16 / bf16 autocast on a GPU (``precision="auto"``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Hashable

import numpy as np

from nbutils.audio import frames_for
from nbutils.errors import UserError
from nbutils.models import AudioSpec
from nbutils.shards import CODE_DTYPE

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
GPU_BATCH = 16  # 16 x 30 s segments: ~2 GB of activations on a GPU
CPU_BATCH = 2  # on a CPU the convolutions are memory-bound: big batches do not pay


def autocast_dtype(device: str, precision: str):
    """The autocast dtype for ``precision`` on ``device`` (``None``: full float32)."""
    import torch

    if precision not in PRECISIONS:
        raise UserError(f"Unknown precision '{precision}'. Use one of: {', '.join(PRECISIONS)}.")
    if precision == "fp32" or (precision == "auto" and not device.startswith("cuda")):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Encoder:
    """Encode lists of ``(channels, samples)`` float32 segments into ``(frames, codebooks)`` codes."""

    def __init__(self, codec: Any, spec: AudioSpec, *, device: str | None = None, precision: str = "auto"):
        self.device = device or default_device()
        self.codec = codec.to(self.device).eval()
        self.spec = spec
        self.dtype = autocast_dtype(self.device, precision)

    def _autocast(self):
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=self.dtype)

    def encode(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """One batch: returns int16 codes ``(ceil(samples / hop), num_codebooks)`` per segment."""
        import torch

        channels = self.spec.audio_channels
        longest = max(a.shape[-1] for a in audios)
        batch = torch.zeros(len(audios), channels, longest)
        for i, wav in enumerate(audios):
            if wav.shape[0] != channels:
                raise ValueError(f"segment has {wav.shape[0]} channels, the model expects {channels}")
            batch[i, :, : wav.shape[-1]] = torch.from_numpy(wav)
        # Each channel is its own mono signal for EnCodec (left, right for stereo checkpoints).
        # The padding is zeros already, which is exactly what a padding_mask would make it.
        mono = batch.reshape(len(audios) * channels, 1, longest).to(self.device)
        try:
            with torch.inference_mode(), self._autocast():
                codes = self.codec.encode(mono).audio_codes[0]  # (B * channels, K, frames)
        except torch.cuda.OutOfMemoryError as err:
            raise UserError(f"The GPU ran out of memory encoding {len(audios)} segments at once. "
                            "Re-run with a smaller --batch-size (BATCH_SIZE); finished ZIPs are kept.") from err
        per_channel, frames = codes.shape[1], codes.shape[2]
        # (B, channels, K, F) -> (B, K, channels, F) -> (B, K * channels, F): L0, R0, L1, R1, ...
        codes = codes.reshape(len(audios), channels, per_channel, frames).transpose(1, 2)
        codes = codes.reshape(len(audios), per_channel * channels, frames).cpu().numpy()
        if codes.shape[1] != self.spec.num_codebooks:
            raise UserError(f"The codec gives {codes.shape[1]} codebooks but the model expects "
                            f"{self.spec.num_codebooks}: the codec does not belong to this model.")
        return [
            np.ascontiguousarray(codes[i, :, : frames_for(a.shape[-1], self.spec.hop_length)].T).astype(CODE_DTYPE)
            for i, a in enumerate(audios)
        ]


class Batcher:
    """Collects keyed segments and encodes them a batch at a time.

    Full-length segments and shorter ones wait in separate queues, so padding is only ever
    added to the (few) short segments. The order of ``add`` calls fully decides the batches,
    so the same input gives the same codes on every run.
    """

    def __init__(self, encoder: Encoder, *, full_samples: int, batch_size: int):
        self.encoder = encoder
        self.full_samples = full_samples
        self.batch_size = max(1, batch_size)
        self._full: list[tuple[Hashable, np.ndarray]] = []
        self._short: list[tuple[Hashable, np.ndarray]] = []

    def add(self, key: Hashable, audio: np.ndarray) -> list[tuple[Hashable, np.ndarray]]:
        """Queue one segment; returns ``(key, codes)`` of any batch this completed."""
        waiting = self._full if audio.shape[-1] == self.full_samples else self._short
        waiting.append((key, audio))
        return self._run(waiting) if len(waiting) >= self.batch_size else []

    def flush(self) -> list[tuple[Hashable, np.ndarray]]:
        """Encode whatever is still waiting."""
        return self._run(self._full) + self._run(self._short)

    def _run(self, waiting: list) -> list[tuple[Hashable, np.ndarray]]:
        if not waiting:
            return []
        keys = [k for k, _ in waiting]
        codes = self.encoder.encode([a for _, a in waiting])
        waiting.clear()
        return list(zip(keys, codes))
