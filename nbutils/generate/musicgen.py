"""A loaded MusicGen with an optional LoRA adapter, and the work one request prepares once.

``Pipeline`` holds one base model with an optional adapter attached, so base and LoRA can be
compared with the same prompt and seed without loading twice (peft switches the adapter off
for the base pass), and another adapter can replace the attached one without loading the base
again (``use_adapter``: evaluation compares several adapters this way).

``Pipeline.prepare`` does what does not depend on the batch, the variation or the variant, once
per request: it reads and encodes the audio prompt, computes the melody's chroma and plans the
windows. ``Pipeline.generate`` then samples one batch from that. Each batch is seeded right
before sampling, so preparing once changes no random stream: the same prompts, settings and
seed give the same audio (on CPU bit for bit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from nbutils.core import audio, devices, models
from nbutils.core.errors import UserError
from nbutils.core.prompts import encode as prompts_encode
from nbutils.core.sampling import SamplingConfig
from nbutils.generate import adapters, sampling

VARIANTS = ("base", "lora")


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What a request needs before sampling, made once for all its batches, variations and variants."""

    samples: int
    """New audio samples per clip (after the audio prompt)."""
    frames: int
    """New code frames per clip (enough to cover ``samples``)."""
    prompt: Any
    """Codes ``(1, K, P)`` of the audio prompt to continue (``P = 0`` without one)."""
    chroma: Any
    """The melody's one-hot chroma ``(frames, 12)`` on the model's device, or None."""
    windows: sampling.Windows
    sampling: SamplingConfig


@dataclasses.dataclass
class Clip:
    """One generated piece of audio, before it is saved."""

    prompt: str
    variant: str
    variation: int
    seed: int
    audio: np.ndarray
    """float32 ``(samples, channels)``."""
    sample_rate: int
    batch: list[str]
    generation_seconds: float
    """Wall time of the whole batch (all its prompts) for this model."""
    windows: int
    prompt_seconds: float = 0.0
    """Seconds of continued audio prompt at the start of ``audio``."""
    index: int = 0
    """Position of the prompt in the request: tells apart the same prompt given twice."""

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / self.sample_rate

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio made per second of compute (the whole batch's audio over its time)."""
        made = (self.seconds - self.prompt_seconds) * len(self.batch)
        return made / self.generation_seconds if self.generation_seconds > 0 else float("inf")


def read_input(path: str, sample_rate: int, channels: int) -> np.ndarray:
    """An audio file the user gave (melody, audio prompt) as float32 ``(samples, channels)``.

    Read as tokenization reads training audio (``nbutils.core.audio.load``), so a 5.1 prompt is
    downmixed by the same rule the model was trained on.

    Raises:
        UserError: the file is missing, not decodable, or holds no samples (names the file).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"Audio file {file} does not exist. "
                        "Check the path (on Colab: under /content/drive/MyDrive/...).")
    try:
        wave = audio.load(file, sample_rate=sample_rate, channels=channels)
    except audio.AudioError as err:
        raise UserError(f"Could not read {file} as audio ({err}). Use a WAV, FLAC, OGG or MP3 file.") from err
    if wave.shape[1] == 0:
        raise UserError(f"{file} contains no audio samples.")
    return wave.T


class Pipeline:
    """A loaded MusicGen with an optional LoRA adapter; generates clips as base and/or LoRA."""

    def __init__(self, model: str, adapter: str = "", *, device: str = "auto", precision: str = "auto",
                 merge: bool = False):
        if not model:
            raise UserError("No model given. Pass --model (e.g. facebook/musicgen-small, a local folder, or tiny).")
        self.model_name = str(model)
        self.device = devices.pick_device(device)
        self.precision = devices.pick_precision(precision, self.device)
        self.dtype = devices.torch_dtype(self.precision)
        self.model, self.processor = models.load_musicgen(self.model_name, device=self.device, dtype=self.dtype)
        self.spec = models.spec_of(self.model)
        self.chroma_settings = models.chroma_settings(self.model_name)  # None unless a melody model
        self.adapter: adapters.Adapter | None = None
        self._peft = None
        self.merged = False
        if adapter:
            self.use_adapter(str(adapter))
            if merge:
                self._peft.merge_and_unload()  # LoRA folded into the weights; the model object stays
                self._peft, self.merged = None, True

    @property
    def key(self) -> tuple:
        """What the loaded weights are: reused only for the same key (see ``stage.pipeline_key``)."""
        adapter = (self.adapter.source, self.adapter.fingerprint) if self.adapter else ("", "")
        return (self.model_name, *adapter, self.device, str(self.dtype), self.merged)

    @property
    def is_melody(self) -> bool:
        return self.chroma_settings is not None

    @property
    def window_seconds(self) -> float:
        """The model's own window (30 s for every ``facebook/musicgen-*``; see ``sampling.own_window``)."""
        return sampling.own_window(self.model, self.spec.frame_rate) / self.spec.frame_rate

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_name, "adapter": self.adapter.describe() if self.adapter else None,
            "merged": self.merged, "device": self.device, "precision": self.precision,
            "dtype": str(self.dtype).replace("torch.", ""), "melody_model": self.is_melody, **self.spec.to_dict(),
        }

    def release(self) -> None:
        """Unload the model (and free its GPU memory), e.g. before another one loads.

        A notebook may still hold this pipeline in a variable; it must not keep a second model on
        the GPU next to the new one (two musicgen-large do not fit a T4).
        """
        self.model = self._peft = None
        devices.free_memory()

    def _check_loaded(self) -> None:
        if self.model is None:
            raise UserError("This pipeline's model was unloaded to make room for another one: run the cell that "
                            "loads the model (generate.pipeline) again.")

    def use_adapter(self, spec: str) -> adapters.Adapter | None:
        """Attach the adapter ``spec`` names in place of the current one ('' = none), keeping the base loaded.

        An adapter with the current one's LoRA layout only has its weights loaded into the existing
        layers (``adapters.reload_weights``); any other is attached after peft's ``unload`` took
        the LoRA layers out (the base weights are never touched). Either way the model is then
        exactly a freshly loaded base with this adapter attached.
        """
        self._check_loaded()
        if self.merged:
            raise UserError("The adapter was merged into the weights, so another one cannot replace it; load the "
                            "model without merge.")
        adapter = adapters.resolve(spec) if spec else None
        if adapter is not None and self._peft is not None and adapters.reload_weights(self._peft, adapter,
                                                                                      self.model_name):
            self.adapter = adapter
            return adapter
        if self._peft is not None:
            self._peft.unload()  # restores the base modules in self.model
            self._peft = self.adapter = None
        if adapter is not None:
            self._peft = adapters.attach(self.model, adapter, self.model_name)
            self.adapter = adapter
        return self.adapter

    @contextlib.contextmanager
    def using(self, variant: str) -> Iterator[None]:
        """Generate as ``base`` (adapter switched off) or ``lora`` within the block."""
        if variant == "lora":
            if self.adapter is None:
                raise UserError("No LoRA adapter is loaded; generate with the base model or pass an adapter.")
            yield
        elif self._peft is not None:
            with self._peft.disable_adapter():
                yield
        elif self.merged:
            raise UserError("The adapter was merged into the weights, so there is no base model to compare; "
                            "load without merge.")
        else:
            yield

    # -- what a request prepares once ---------------------------------------------------------

    def text_inputs(self, prompts: list[str]) -> dict:
        inputs = prompts_encode(self.processor, prompts)  # truncated to the text encoder's limit
        return {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}

    def prompt_codes(self, path: str):
        """Codes ``(1, K, P)`` of an audio file to continue (``P = 0`` when ``path`` is empty)."""
        import torch

        if not path:
            return torch.zeros((1, self.spec.num_codebooks, 0), dtype=torch.long, device=self.device)
        wave = read_input(path, self.spec.sample_rate, self.spec.audio_channels)
        return sampling.encode(self.model, wave).to(self.device).long()[None]

    def chroma(self, path: str):
        """The melody's chroma ``(frames, 12)`` on the model's device, or None when ``path`` is empty.

        Computed with the checkpoint's own feature-extractor settings (``models.chroma_settings``).
        """
        from nbutils.core import melody

        if not path:
            return None
        if not self.is_melody:
            raise UserError(
                f"'{self.model_name}' is not a melody model, so it cannot follow a melody. Use "
                "facebook/musicgen-melody (or -melody-large, stereo-melody), or leave the melody empty."
            )
        wave = read_input(path, self.chroma_settings.sample_rate, 1)[:, 0]
        return melody.compute(wave, self.chroma_settings).to(self.device, self.model.dtype)

    def windows(self, window_seconds: float = 0.0, context_seconds: float = 10.0) -> sampling.Windows:
        """The window plan: ``window_seconds`` (0: the model's own) with ``context_seconds`` of context.

        A model whose own window is shorter than the context (a checkpoint saved with a short
        generation limit) continues the last third of each window instead, with a note.
        """
        own = self.window_seconds
        window = window_seconds or own
        if window > own + 1e-9:
            raise UserError(f"window_seconds {window} exceeds the model's window of {own:g} s; use {own:g} or less.")
        if context_seconds >= window and not window_seconds:
            shorter = math.floor(window * self.spec.frame_rate / 3) / self.spec.frame_rate
            print(f"Note: {self.model_name} generates windows of {own:g} s (its generation config), shorter than "
                  f"context_seconds {context_seconds:g}: each window continues the last {shorter:g} s instead.")
            context_seconds = shorter
        if context_seconds >= window:
            raise UserError(f"context_seconds ({context_seconds}) must be shorter than the window ({window:g} s).")
        rate = self.spec.frame_rate
        frames, context = int(round(window * rate)), int(round(context_seconds * rate))
        if frames < 1:
            raise UserError(
                f"window_seconds {window:g} is less than one code frame: "
                f"use at least {1 / rate:g} s (or 0 for {own:g} s)."
            )
        if context >= frames:  # both round to whole code frames (1/rate s): a window must add at least one
            raise UserError(
                f"context_seconds ({context_seconds}) and window_seconds ({window:g}) round to {context} and {frames} "
                f"code frames of 1/{rate} s: the context must be at least one frame shorter (e.g. context_seconds "
                f"{(frames - 1) / rate:g}), or the window longer."
            )
        return sampling.Windows(window=frames, context=context)

    def prepare(self, cfg) -> Prepared:
        """Read and encode the audio prompt, compute the chroma and plan the windows of ``cfg``
        (a ``GenerateConfig``), once for every batch, variation and variant of the request."""
        self._check_loaded()
        samples, frames = sampling.frames_for(cfg.seconds, self.spec)
        return Prepared(samples=samples, frames=frames, prompt=self.prompt_codes(cfg.audio_prompt),
                        chroma=self.chroma(cfg.melody), windows=self.windows(cfg.window_seconds, cfg.context_seconds),
                        sampling=cfg.sampling)

    # -- sampling -----------------------------------------------------------------------------

    def _features_at(self, chroma, batch: int):
        """``(start, seconds) -> input_features``: the melody under each window, for ``batch`` prompts."""
        from nbutils.core import melody

        if chroma is None:
            return None
        rate, hop = self.chroma_settings.sample_rate, self.chroma_settings.hop_length
        return lambda start, seconds: melody.window(chroma, start, seconds, rate, hop)[None].repeat(batch, 1, 1)

    def generate(self, prompts: list[str], request, *, variant: str, seed: int,
                 bar=None) -> tuple[list[np.ndarray], float, int, float]:
        """Sample one batch as ``variant``; returns ``(audio per prompt, seconds taken, windows, prompt seconds)``.

        ``request`` is a ``Prepared`` (or a ``GenerateConfig``, prepared for this call alone).
        Every returned clip has exactly ``round(seconds * sample_rate)`` new samples (after the
        re-coded audio prompt, if any).
        """
        import torch

        self._check_loaded()
        prepared = request if isinstance(request, Prepared) else self.prepare(request)
        inputs = self.text_inputs(prompts)
        prompt = prepared.prompt.repeat(len(prompts), 1, 1)
        started = time.monotonic()
        with self.using(variant):
            torch.manual_seed(seed)  # also seeds CUDA
            codes, n_windows = sampling.sample_long(
                self.model, inputs, prompt, prepared.frames, prepared.windows, prepared.sampling,
                features_at=self._features_at(prepared.chroma, len(prompts)), bar=bar, frame_rate=self.spec.frame_rate,
            )
        keep = prompt.shape[-1] * self.spec.hop_length + prepared.samples
        audio = [sampling.decode(self.model, c)[:, :keep].T.numpy() for c in codes]
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.monotonic() - started
        return audio, elapsed, n_windows, prompt.shape[-1] * self.spec.hop_length / self.spec.sample_rate


def sample_batch(pipe: Pipeline, prepared: Prepared, batch: list[str], *, variant: str, variation: int, seed: int,
                 bar=None, start: int = 0) -> list[Clip]:
    """One batch of prompts, one model, one variation, seeded with ``seed``, as ``Clip``s.

    ``start`` is the position of the batch's first prompt in the whole request (``Clip.index``).
    """
    result, out_of_memory = devices.unless_out_of_memory(
        lambda: pipe.generate(batch, prepared, variant=variant, seed=seed, bar=bar))
    if out_of_memory:
        raise UserError(
            f"Out of GPU memory generating {len(batch)} prompt(s) at once with {pipe.model_name}. Lower batch_size "
            f"(e.g. {max(1, len(batch) // 2)}), generate shorter windows (window_seconds), or use precision fp16 / "
            "a smaller model. Clips already saved are kept."
        )
    audio, took, windows, prompt_s = result
    return [
        Clip(prompt=p, variant=variant, variation=variation, seed=seed, audio=a, sample_rate=pipe.spec.sample_rate,
             batch=batch, generation_seconds=took, windows=windows, prompt_seconds=prompt_s, index=start + i)
        for i, (p, a) in enumerate(zip(batch, audio))
    ]
