"""EnCodec codes <-> audio for one item, mono or stereo (left / right codebooks interleaved).

Generation encodes audio prompts and decodes what it sampled; evaluation decodes held-out codes;
training decodes a validation melody for its samples. Stereo models code left and right as
separate mono signals and interleave the codebooks ``L0, R0, L1, R1, ...``, as transformers does.
"""

from __future__ import annotations

from typing import Any


def encode(model, audio) -> Any:
    """EnCodec codes ``(K, frames)`` of float audio ``(samples, channels)`` at the model's rate.

    Stereo models code left and right separately and interleave the codebooks, as transformers does.
    """
    import torch

    codec = model.audio_encoder
    wave = torch.as_tensor(audio, dtype=next(codec.parameters()).dtype, device=codec.device).T[None]  # (1, C, S)
    with torch.inference_mode():
        if model.config.decoder.audio_channels == 1:
            return codec.encode(wave[:, :1]).audio_codes[0, 0]
        left = codec.encode(wave[:, :1]).audio_codes[0, 0]
        right = codec.encode(wave[:, 1:2]).audio_codes[0, 0]
    both = left.new_empty((left.shape[0] * 2, left.shape[1]))
    both[::2], both[1::2] = left, right
    return both


def decode(model, codes) -> Any:
    """Audio ``(channels, samples)`` float32 (CPU) of one item's codes ``(K, frames)``."""
    return decode_codes(model.audio_encoder, codes, model.config.decoder.audio_channels)


def decode_codes(codec, codes, audio_channels: int = 1) -> Any:
    """``decode`` with an EnCodec alone (``models.load_codec``): stereo codebooks are interleaved left / right."""
    import torch

    with torch.inference_mode():
        if audio_channels == 1:
            return codec.decode(codes[None, None], audio_scales=[None]).audio_values[0].float().cpu()
        left = codec.decode(codes[None, None, ::2], audio_scales=[None]).audio_values[0]
        right = codec.decode(codes[None, None, 1::2], audio_scales=[None]).audio_values[0]
        return torch.cat([left, right], dim=0).float().cpu()
