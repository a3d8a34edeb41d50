"""Batched, padding-aware EnCodec encoding of audio segments into MusicGen codes.

* A batch only ever holds segments of the same length, so nothing is padded: EnCodec's
  convolutions are not causal, and zero padding changes the codes of a shorter segment's
  last frames (measured: up to 5 frames differ from encoding it alone). Each segment keeps
  exactly ``ceil(samples / 640)`` frames, the codes of its own audio and nothing past its end,
  whatever it was batched with. Full 30 s segments batch together; shorter ones (tails, short
  tracks) wait in per-length buckets.
* Stereo checkpoints: the left and right channels are encoded as separate mono signals and
  their codebooks interleaved ``L0, R0, L1, R1, ...`` -- what transformers' stereo MusicGen
  does in ``_prepare_audio_encoder_kwargs_for_generation``.
* ``torch.inference_mode`` always; fp16 / bf16 autocast on a GPU (``precision="auto"``) for
  EnCodec's convolutions only. The residual vector quantizer always runs in float32 on float32
  input: it picks the nearest codebook entry from ``|x|^2 - 2 x.e + |e|^2``, a difference of
  large, nearly equal terms that bf16's 8-bit mantissa cannot resolve (measured on the tiny codec:
  only 16 % of first-codebook codes matched float32 with the whole encode under bf16 autocast).
"""

from __future__ import annotations

import contextlib
from typing import Any, Hashable, Iterator

import numpy as np

from nbutils.core import devices
from nbutils.core.audio import frames_for
from nbutils.core.errors import UserError
from nbutils.core.models import AudioSpec
from nbutils.tokenize.shards import CODE_DTYPE

GPU_BATCH = 16  # at most this many segments per batch on a GPU (fewer when memory is short, see gpu_batch)
# Peak GPU memory per 30 s mono row while encoding with the real EnCodec 32 kHz architecture
# (measured on the CPU allocator: 1.15 GiB in float32, ~0.7 GiB with fp16 convolutions; rounded up).
ROW_GIB = {"fp32": 1.2, "half": 0.8}
GPU_MEMORY_SHARE = 0.6  # of the free memory: leaves room for the allocator's fragmentation
CPU_BATCH = 1  # on a CPU, one 30 s segment at a time is ~20% faster than pairs (real-size codec, 2 cores)


def gpu_batch(segment_seconds: float, audio_channels: int, half: bool, free_bytes: int) -> int:
    """Segments per batch that fit in ``free_bytes`` of GPU memory (1 to ``GPU_BATCH``).

    Stereo checkpoints encode each channel as its own row, so a stereo segment costs two rows.
    """
    per_row = ROW_GIB["half" if half else "fp32"] * 2**30 * max(segment_seconds, 1.0) / 30.0
    rows = int(free_bytes * GPU_MEMORY_SHARE // per_row)
    return max(1, min(GPU_BATCH, rows // max(1, audio_channels)))


class Encoder:
    """Encode lists of ``(channels, samples)`` float32 segments into ``(frames, codebooks)`` codes."""

    def __init__(self, codec: Any, spec: AudioSpec, *, device: str | None = None, precision: str = "auto"):
        self.device = devices.pick_device(device)
        self.codec = codec.to(self.device).eval()
        self.spec = spec
        resolved = devices.pick_precision(precision, self.device)
        self.dtype = None if resolved == "fp32" else devices.torch_dtype(resolved)  # None: no autocast

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        """Autocast for the encoder's convolutions, float32 for the quantizer (see the module doc)."""
        import torch

        if self.dtype is None:
            yield
            return
        with torch.autocast(self.device.split(":")[0], dtype=self.dtype), \
                devices.without_autocast(self.codec.quantizer, "encode"):
            yield

    def default_batch(self, segment_seconds: float) -> int:
        """``CPU_BATCH`` on a CPU; on a GPU, as many segments as its free memory holds (``gpu_batch``)."""
        import torch

        if not self.device.startswith("cuda"):
            return CPU_BATCH
        torch.cuda.empty_cache()  # what an earlier run (the test-mode cell) left cached is free for this one
        free, _ = torch.cuda.mem_get_info(torch.device(self.device))
        return gpu_batch(segment_seconds, self.spec.audio_channels, self.dtype is not None, free)

    def encode(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """One batch of equal-length segments ``(channels, samples)``.

        Returns:
            int16 codes ``(ceil(samples / hop), num_codebooks)`` per segment.

        Raises:
            ValueError: segments of different lengths (padding would change their codes) or
                with the wrong channel count.
        """
        import torch

        channels, length = self.spec.audio_channels, audios[0].shape[-1]
        for wav in audios:
            if wav.shape[0] != channels:
                raise ValueError(f"segment has {wav.shape[0]} channels, the model expects {channels}")
            if wav.shape[-1] != length:
                raise ValueError("segments of one batch must have the same length: zero padding would "
                                 "change the codes of the shorter ones near their end")
        batch = torch.from_numpy(np.stack(audios))
        # Each channel is its own mono signal for EnCodec (left, right for stereo checkpoints).
        mono = batch.reshape(len(audios) * channels, 1, length).to(self.device)
        def encode_batch():
            with torch.inference_mode(), self._precision():
                return self.codec.encode(mono).audio_codes[0]  # (B * channels, K, frames)

        codes, out_of_memory = devices.unless_out_of_memory(encode_batch)
        if out_of_memory:
            raise UserError(f"The GPU ran out of memory encoding {len(audios)} segments at once. Re-run with a "
                            f"smaller batch: BATCH_SIZE = {max(1, len(audios) // 2)} in notebook 01 (--batch-size "
                            "on the command line); finished ZIPs are kept.")
        per_channel, width = codes.shape[1], codes.shape[2]
        # (B, channels, K, F) -> (B, K, channels, F) -> (B, K * channels, F): L0, R0, L1, R1, ...
        codes = codes.reshape(len(audios), channels, per_channel, width).transpose(1, 2)
        codes = codes.reshape(len(audios), per_channel * channels, width).cpu().numpy()
        if codes.shape[1] != self.spec.num_codebooks:
            raise UserError(f"The codec gives {codes.shape[1]} codebooks but the model expects "
                            f"{self.spec.num_codebooks}: the codec does not belong to this model.")
        frames = frames_for(length, self.spec.hop_length)  # what EnCodec gives; never more is kept
        return [np.ascontiguousarray(codes[i, :, :frames].T).astype(CODE_DTYPE) for i in range(len(audios))]


class Batcher:
    """Collects keyed segments and encodes them a batch of equal lengths at a time.

    Full-length segments fill batches of ``batch_size``. Shorter ones wait in buckets by exact
    length; when ``batch_size`` short ones are waiting, every bucket is encoded as it is, so
    memory stays at two batches. The order of ``add`` calls fully decides the batches, and a
    segment's codes do not depend on its batch-mates anyway.
    """

    def __init__(self, encoder: Encoder, *, full_samples: int, batch_size: int):
        self.encoder = encoder
        self.full_samples = full_samples
        self.batch_size = max(1, batch_size)
        self._full: list[tuple[Hashable, np.ndarray]] = []
        self._short: dict[int, list[tuple[Hashable, np.ndarray]]] = {}

    def add(self, key: Hashable, audio: np.ndarray) -> list[tuple[Hashable, np.ndarray]]:
        """Queue one segment; returns ``(key, codes)`` of any batch this completed."""
        length = audio.shape[-1]
        if length == self.full_samples:
            self._full.append((key, audio))
            return self._run(self._full) if len(self._full) >= self.batch_size else []
        bucket = self._short.setdefault(length, [])
        bucket.append((key, audio))
        if len(bucket) >= self.batch_size:
            return self._run(self._short.pop(length))
        if sum(len(b) for b in self._short.values()) >= self.batch_size:
            return self._flush_short()
        return []

    def flush(self) -> list[tuple[Hashable, np.ndarray]]:
        """Encode whatever is still waiting."""
        return self._run(self._full) + self._flush_short()

    def _flush_short(self) -> list[tuple[Hashable, np.ndarray]]:
        done = [pair for bucket in self._short.values() for pair in self._run(bucket)]
        self._short.clear()
        return done

    def _run(self, waiting: list) -> list[tuple[Hashable, np.ndarray]]:
        if not waiting:
            return []
        keys = [k for k, _ in waiting]
        codes = self.encoder.encode([a for _, a in waiting])
        waiting.clear()
        return list(zip(keys, codes))
