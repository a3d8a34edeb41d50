"""MusicGen sampling at the level of EnCodec codes: windows, continuation, exact joins.

transformers' ``generate()`` samples codes and then always decodes them to audio. Long-form
generation needs the codes instead: each window is prompted with the last ``context`` frames
of *codes* generated so far (passed as ``decoder_input_ids``, which transformers continues after
re-applying the delay pattern), and all codes are decoded once at the end. Decoding once makes
the joins exact -- there is no crossfade and no re-encoding of audio -- and lets a request of
any length return exactly that many samples.

Frames and samples: one code frame is ``hop_length`` (640) samples at 32 kHz (50 frames per
second). With K codebooks per channel, ``generate(max_new_tokens=F + K - 1)`` yields F frames,
because of the delay pattern (codebook k lags k steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Iterator

from nbutils.core.codec import decode, decode_codes, encode  # noqa: F401 - the codes <-> audio of one item, used from here
from nbutils.core.models import AudioSpec
from nbutils.core.sampling import DEFAULT_WINDOW_SECONDS, SamplingConfig, own_window  # noqa: F401 - used from here


@dataclasses.dataclass(frozen=True)
class Windows:
    """Window layout of a long request, in code frames."""

    window: int
    """Frames one ``generate`` call may hold (context + new): the model's 30 s, or less."""
    context: int
    """Frames of earlier codes that prompt each following window."""

    def __post_init__(self):
        # every window then adds at least one frame, so ``plan`` always ends
        if not 0 <= self.context < self.window:
            raise ValueError(f"Windows of {self.window} frames cannot hold {self.context} frames "
                             "of context and new ones.")

    def plan(self, existing: int, total_new: int) -> list[tuple[int, int]]:
        """``(context frames, new frames)`` per window, to add ``total_new`` frames after ``existing``."""
        windows, have, done = [], existing, 0
        while done < total_new:
            ctx = min(have, self.context)
            new = min(total_new - done, self.window - ctx)
            windows.append((ctx, new))
            have, done = have + new, done + new
        return windows


def frames_for(seconds: float, spec: AudioSpec) -> tuple[int, int]:
    """``(samples, frames)`` for a duration: samples rounded, frames enough to cover them."""
    samples = int(round(seconds * spec.sample_rate))
    return samples, int(math.ceil(samples / spec.hop_length))


# ---------------------------------------------------------------------------------------------
# Codes in, codes out
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def codes_only(model) -> Iterator[list]:
    """Within the block, ``model.generate`` returns no audio; the codes it made are collected.

    ``generate()`` ends by calling ``model.audio_encoder.decode(codes)`` (twice for stereo: left
    then right codebooks). Wrapping that one call on this instance keeps the codes and skips a
    decode whose audio long-form would throw away. The original method is always restored.

    Yields:
        A list that receives the codes of each ``generate`` call, shape ``(B, K, frames)``.
    """
    import torch
    from transformers.models.encodec.modeling_encodec import EncodecDecoderOutput

    codec = model.audio_encoder
    collected: list = []
    pending: list = []
    stereo = model.config.decoder.audio_channels == 2

    def keep(audio_codes, *args, **kwargs):
        pending.append(audio_codes[0])
        if not stereo or len(pending) == 2:
            if stereo:  # transformers splits interleaved left/right codebooks: put them back
                left, right = pending
                both = left.new_empty((left.shape[0], left.shape[1] * 2, left.shape[2]))
                both[:, ::2], both[:, 1::2] = left, right
                collected.append(both)
            else:
                collected.append(pending[0])
            pending.clear()
        return EncodecDecoderOutput(audio_values=torch.zeros(audio_codes.shape[1], 1, 0))

    codec.decode = keep
    try:
        yield collected
    finally:
        del codec.decode  # the instance attribute goes; the class method is back


class Progress:
    """A stopping criterion that never stops: it advances a progress bar once per decoding step.

    ``generate()`` calls its stopping criteria after every step, for MusicGen and MusicGen-melody
    alike, which makes it the one per-step hook both have (MusicGen ignores ``streamer``).
    """

    def __init__(self, bar, step_size: float = 0.0):
        self.bar = bar
        self.step_size = step_size

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if self.bar is not None and self.step_size:
            room = self.bar.total - self.bar.n if self.bar.total else self.step_size  # float sums may overshoot
            self.bar.update(max(0.0, min(self.step_size, room)))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def delay_steps(model) -> int:
    """Extra decoding steps the delay pattern costs: codebooks per channel - 1 (stereo
    interleaves left/right codebooks that share each delay)."""
    decoder = model.config.decoder
    return decoder.num_codebooks // decoder.audio_channels - 1


def frames_to_sample(model, context: int, new_frames: int) -> int:
    """Frames one ``generate`` call must make to return ``new_frames`` after ``context`` frames.

    transformers applies the delay pattern only when a call holds at least ``delay_steps`` frames
    (context + new; shorter calls come back without it, in the wrong shape), so a very short
    request samples that many and the surplus is cut off. Later frames never change earlier ones.
    """
    return max(new_frames, delay_steps(model) - context)


def sample_window(model, inputs: dict, context, new_frames: int, sampling: SamplingConfig, *,
                  features=None, progress: Progress | None = None):
    """Sample ``new_frames`` frames after ``context`` codes ``(B, K, C)`` (C may be 0).

    Returns:
        The new codes only, ``(B, K, new_frames)``.
    """
    import torch
    from transformers import StoppingCriteriaList

    batch, num_codebooks, ctx = context.shape
    frames = frames_to_sample(model, ctx, new_frames)
    kwargs = dict(inputs, max_new_tokens=frames + delay_steps(model), **sampling.generate_kwargs())
    if ctx:
        kwargs["decoder_input_ids"] = context.reshape(batch * num_codebooks, ctx)
    if features is not None:
        kwargs["input_features"] = features
    if progress is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([progress])
    with codes_only(model) as collected, torch.inference_mode():
        model.generate(**kwargs)
    codes = collected[-1]
    if codes.shape != (batch, num_codebooks, ctx + frames):
        raise RuntimeError(f"generate() returned codes {tuple(codes.shape)}, "
                           f"expected {(batch, num_codebooks, ctx + frames)}")
    return codes[:, :, ctx : ctx + new_frames]


def sample_long(model, inputs: dict, prompt, total_new: int, windows: Windows, sampling: SamplingConfig, *,
                features_at: Callable[[float, float], Any] | None = None, bar=None, frame_rate: int = 50):
    """Window after window until ``total_new`` frames follow ``prompt`` codes ``(B, K, P)``.

    Args:
        features_at: ``(start_seconds, seconds) -> input_features`` for melody models (the
            chroma under each window), or None.
        bar: A tqdm bar counting seconds of audio (all items), advanced per decoding step.

    Returns:
        ``(codes (B, K, P + total_new), number of windows)``.
    """
    import torch

    history = prompt
    plan = windows.plan(prompt.shape[-1], total_new)
    batch = prompt.shape[0]
    for ctx, new in plan:
        start = history.shape[-1] - ctx
        features = features_at(start / frame_rate, windows.window / frame_rate) if features_at else None
        steps = frames_to_sample(model, ctx, new) + delay_steps(model)
        step = batch * new / frame_rate / steps  # audio seconds per decoding step
        codes = sample_window(model, inputs, history[:, :, start:], new, sampling,
                              features=features, progress=Progress(bar, step))
        history = torch.cat([history, codes], dim=-1)
    return history, len(plan)
