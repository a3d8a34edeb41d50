"""Workarounds for the transformers versions the suite supports (Colab pins 5.15; CI also runs 5.2x).

**musicgen-melody ignores its text and melody in ``generate()`` on transformers up to 5.2x**
(huggingface/transformers#45647, fixed by PR #48679). ``generate()`` now creates the cache before
the first step, and ``MusicgenMelodyForConditionalGeneration.prepare_inputs_for_generation`` drops
``encoder_hidden_states`` -- the chroma and text prepended to the audio tokens -- as soon as a cache
exists, meaning "after the first step". With the cache there from the start the conditioning never
reaches the decoder: every prompt and every melody gives the same audio. Where the installed class
still has that guard (no ``is_first_iteration`` argument, the fixed versions' marker), the loaded
model's method keeps the conditioning while the cache is empty, as the fixed versions do.

**peft asks the model ``is_gradient_checkpointing``**, which transformers 5.2x renamed with a
FutureWarning on every access: not the user's to fix. ``peft_wrapping()`` silences that warning,
and only it, around the calls that wrap a model (training's and generation's alike).
"""

from __future__ import annotations

import contextlib
import inspect
import warnings

MELODY_TYPE = "musicgen_melody"


@contextlib.contextmanager
def peft_wrapping():
    """Around ``peft.get_peft_model``: no ``is_gradient_checkpointing`` FutureWarning (see above)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def drops_melody_conditioning(cls) -> bool:
    """Whether ``cls`` (a melody model class) has the guard that drops the conditioning at the first step."""
    return "is_first_iteration" not in inspect.signature(cls.prepare_inputs_for_generation).parameters


def keep_melody_conditioning(model) -> bool:
    """Give a loaded melody model's ``generate()`` its text and chroma on the first step; True if patched.

    A no-op (False) for other models and for transformers versions without the bug.
    """
    if model.config.model_type != MELODY_TYPE or not drops_melody_conditioning(type(model)):
        return False
    original = model.prepare_inputs_for_generation

    def prepare_inputs_for_generation(decoder_input_ids, *args, **kwargs):
        inputs = original(decoder_input_ids, *args, **kwargs)
        cache = kwargs.get("past_key_values")
        if cache is not None and cache.get_seq_length() == 0:  # the first step: the cache is still empty
            inputs["encoder_hidden_states"] = kwargs.get("encoder_hidden_states")
        return inputs

    model.prepare_inputs_for_generation = prepare_inputs_for_generation
    return True
