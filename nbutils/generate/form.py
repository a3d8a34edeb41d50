"""The interactive generation form of notebook 03: ipywidgets controls, a Generate button, players.

The form only collects values; generation is ``nbutils.generate.run`` with a ``GenerateConfig``
built from them, exactly as the plain cell and the command line do. ``Form.generate()`` is the
button's callback, so a headless test (or a cell) can press the button programmatically with
``form.button.click()``.

Settings outside a control's range (say 600 s from the parameters cell, beyond the form's 300 s)
are clamped into it, and each change is listed in ``Form.issues`` and shown above the controls:
ipywidgets would clamp them silently, and the form would then generate something else than asked.
"""

from __future__ import annotations

import dataclasses
import html
import traceback
from typing import Any

from nbutils.core import config
from nbutils.core.errors import UserError
from nbutils.generate import stage as generate

MAX_SECONDS = 300.0  # the form's duration limit; the CLI and plain cell have none
# control ranges: (label, min, max)
SECONDS_RANGE = ("Seconds", 0.5, MAX_SECONDS)
GUIDANCE_RANGE = ("Guidance", 1.0, 10.0)  # MusicGen's guidance is off at 1 and below
TEMPERATURE_RANGE = ("Temperature", 0.1, 2.0)
TOP_K_RANGE = ("Top-k", 0, 1000)


def clamp(value, limits: tuple[str, float, float], issues: list[str]):
    """``value`` moved into ``(label, lo, hi)``; a moved value adds a line to ``issues``."""
    label, lo, hi = limits
    bounded = min(max(value, lo), hi)
    if bounded != value:
        issues.append(f"{label} {value:g} is outside the form's range {lo:g} to {hi:g}: the form uses {bounded:g}.")
    return type(value)(bounded)


def takes_melody(model: str) -> bool:
    """Whether ``model`` is a melody checkpoint (the form then has a melody field); False if it cannot be read."""
    from nbutils.core import models

    try:
        return bool(model) and models.is_melody(model)
    except UserError:  # loading will say what is wrong with it
        return False


class Form:
    """Prompt, duration, guidance, temperature, top-k, seed, melody (melody models) and base/LoRA/both,
    plus a button."""

    def __init__(self, defaults: generate.GenerateConfig):
        import ipywidgets as w

        self.defaults = defaults
        self.issues: list[str] = []
        has_adapter = bool(defaults.adapter)
        self.prompt = w.Textarea(value="\n".join(defaults.prompts) or "lofi hip hop with warm piano",
                                 description="Prompt(s)", placeholder="one prompt per line",
                                 layout=w.Layout(width="95%", height="5em"))
        self.seconds = self._bounded(w.BoundedFloatText, float(defaults.seconds), SECONDS_RANGE, step=0.5)
        sampling = defaults.sampling
        self.guidance = self._bounded(w.FloatSlider, float(sampling.guidance_scale), GUIDANCE_RANGE, step=0.5)
        self.temperature = self._bounded(w.FloatSlider, float(sampling.temperature), TEMPERATURE_RANGE, step=0.05)
        self.top_k = self._bounded(w.IntSlider, int(sampling.top_k), TOP_K_RANGE, step=10)
        self.seed = w.IntText(value=defaults.seed, description="Seed")
        # a melody file for melody checkpoints, used by base, LoRA and A/B alike
        self.melody = w.Text(value=defaults.melody, description="Melody", placeholder="audio file (wav, mp3...) whose "
                             "melody to follow; empty: text only", layout=w.Layout(width="95%")) \
            if takes_melody(defaults.model) else None
        choices = ["base", "lora", "both"] if has_adapter else ["base"]
        self.compare = w.ToggleButtons(options=choices, value=self._start_model(defaults, has_adapter),
                                       description="Model",
                                       tooltips=["base MusicGen", "with your LoRA",
                                                 "A/B: same prompt and seed"][: len(choices)])
        self.button = w.Button(description="Generate", button_style="primary", icon="music")
        self.output = w.Output()
        self.records: list[dict[str, Any]] = []
        self.button.on_click(self.generate)
        controls = [self.prompt, w.HBox([self.seconds, self.seed]), *([self.melody] if self.melody else []),
                    self.guidance, self.temperature, self.top_k, self.compare, self.button]
        notes = [w.HTML("<br>".join(f"\u26a0\ufe0f {html.escape(i)}" for i in self.issues))] if self.issues else []
        self.widget = w.VBox([*notes, *controls, self.output])

    def _bounded(self, widget_class, value, limits, *, step):
        label, lo, hi = limits
        return widget_class(value=clamp(value, limits, self.issues), min=lo, max=hi, step=step, description=label)

    def _start_model(self, defaults: generate.GenerateConfig, has_adapter: bool) -> str:
        """The Model button to start on; without an adapter only base exists (noted, not an error)."""
        if not has_adapter and defaults.compare in ("lora", "both"):
            self.issues.append(f"compare={defaults.compare} needs a LoRA adapter and none is loaded: "
                               "the form uses base.")
            return "base"
        wanted = defaults.variants(has_adapter)
        return "both" if len(wanted) == 2 else wanted[0]

    def config(self) -> generate.GenerateConfig:
        """The ``GenerateConfig`` the current widget values describe."""
        sampling = dataclasses.replace(self.defaults.sampling, guidance_scale=float(self.guidance.value),
                                       temperature=float(self.temperature.value), top_k=int(self.top_k.value))
        return dataclasses.replace(
            self.defaults,
            prompts=generate.split_prompts(self.prompt.value),
            seconds=float(self.seconds.value),
            sampling=sampling,
            seed=int(self.seed.value),
            compare=self.compare.value,
            melody=self.melody.value.strip() if self.melody is not None else self.defaults.melody,
        )

    def generate(self, _button=None) -> list[dict[str, Any]]:
        """The button's callback: generate, save, and show players (errors shown in the form)."""
        self.button.disabled = True
        try:
            with self.output:
                self.output.clear_output()
                try:
                    self.records = generate.run(self.config())
                    generate.players(self.records)
                except UserError as err:
                    print(f"\u274c {err}")
                except Exception:  # noqa: BLE001 - a callback's traceback would otherwise vanish
                    traceback.print_exc()
                    raise
        finally:
            self.button.disabled = False
        return self.records

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def form(defaults: generate.GenerateConfig | None = None, **values: Any) -> Form:
    """Build the form; ``defaults`` (or ``values`` for a ``GenerateConfig``) fill its fields."""
    defaults = defaults or config.from_dict(generate.GenerateConfig, values)
    return Form(defaults)
