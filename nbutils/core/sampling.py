"""How MusicGen draws its tokens: one ``SamplingConfig`` for generation, evaluation and training samples.

The defaults are those of the ``facebook/musicgen-*`` generation configs (and audiocraft's):
classifier-free guidance 3.0, top-k 250, temperature 1, no nucleus sampling. They are written
here once; the stages nest this config (``GenerateConfig.sampling``, ``EvalConfig.sampling``,
``TrainConfig.sampling`` for training samples). ``own_window`` is how many frames one ``generate`` call (and
one scored held-out segment) may hold for a model, including checkpoints saved by others.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nbutils.core import config
from nbutils.core.config import option


@dataclasses.dataclass
class SamplingConfig:
    """How tokens are drawn."""

    guidance_scale: float = option(3.0, "Classifier-free guidance: higher follows the prompt (and melody) more "
                                        "closely; 1 turns it off.")
    temperature: float = option(1.0, "Sampling temperature: lower is safer and more repetitive, higher more varied.")
    top_k: int = option(250, "Sample among the k most likely codes (0 = off).")
    top_p: float = option(0.0, "Nucleus sampling: keep codes within this cumulative probability (0 = off).")

    def __post_init__(self) -> None:
        config.require("sampling", [
            (self.temperature > 0, "temperature must be positive (lower it towards 0.1 for safer output)"),
            (self.top_k >= 0 and 0 <= self.top_p <= 1, "top_k must be >= 0 and top_p within 0..1"),
            (self.guidance_scale >= 0, "guidance_scale must be >= 0 (1 turns guidance off)"),
        ])

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of transformers' ``generate()`` that sample this way."""
        return {
            "do_sample": True,
            "guidance_scale": self.guidance_scale if self.guidance_scale > 1 else None,
            "temperature": self.temperature,
            "top_k": self.top_k if self.top_k > 0 else None,
            "top_p": self.top_p if 0 < self.top_p < 1 else None,
        }


DEFAULT_WINDOW_SECONDS = 30.0  # what MusicGen was trained on: every facebook/musicgen-* window


def own_window(model, frame_rate: int) -> int:
    """Frames one ``generate`` call may hold for ``model``: its window.

    The generation config's limit (``max_new_tokens``, else ``max_length``: 1500 frames, 30 s, in
    every ``facebook/musicgen-*``), else the decoder's ``max_position_embeddings``, else 30 s. A
    checkpoint saved by others may set either limit, neither, or an unusual one.
    """
    gen = getattr(model, "generation_config", None)
    for limit in (getattr(gen, "max_new_tokens", None), getattr(gen, "max_length", None),
                  getattr(model.config.decoder, "max_position_embeddings", None)):
        if isinstance(limit, int) and limit > 0:
            return limit
    return round(DEFAULT_WINDOW_SECONDS * frame_rate)
