"""The interactive generation form of notebook 03: ipywidgets controls, a Generate button, players.

The form only collects values; generation is ``nbutils.generate.run`` with a ``GenerateConfig``
built from them, exactly as the plain cell and the command line do. ``Form.generate()`` is the
button's callback, so a headless test (or a cell) can press the button programmatically with
``form.button.click()``.
"""

from __future__ import annotations

import dataclasses
import traceback
from typing import Any

from nbutils import config, generate
from nbutils.errors import UserError

MAX_SECONDS = 300.0  # the form's duration limit; the CLI and plain cell have none


class Form:
    """Prompt, duration, guidance, temperature, top-k, seed and base/LoRA/both, plus a button."""

    def __init__(self, defaults: generate.GenerateConfig):
        import ipywidgets as w

        self.defaults = defaults
        has_adapter = bool(defaults.adapter)
        self.prompt = w.Textarea(value="\n".join(defaults.prompts) or "lofi hip hop with warm piano",
                                 description="Prompt(s)", placeholder="one prompt per line",
                                 layout=w.Layout(width="95%", height="5em"))
        self.seconds = w.BoundedFloatText(value=defaults.seconds, min=0.5, max=MAX_SECONDS, step=0.5, description="Seconds")
        self.guidance = w.FloatSlider(value=defaults.guidance_scale, min=1.0, max=10.0, step=0.5, description="Guidance")
        self.temperature = w.FloatSlider(value=defaults.temperature, min=0.1, max=2.0, step=0.05, description="Temperature")
        self.top_k = w.IntSlider(value=defaults.top_k, min=0, max=1000, step=10, description="Top-k")
        self.seed = w.IntText(value=defaults.seed, description="Seed")
        choices = ["base", "lora", "both"] if has_adapter else ["base"]
        wanted = defaults.variants(has_adapter)
        self.compare = w.ToggleButtons(options=choices, value="both" if len(wanted) == 2 else wanted[0],
                                       description="Model", tooltips=["base MusicGen", "with your LoRA", "A/B: same prompt and seed"][: len(choices)])
        self.button = w.Button(description="Generate", button_style="primary", icon="music")
        self.output = w.Output()
        self.records: list[dict[str, Any]] = []
        self.button.on_click(self.generate)
        controls = [self.prompt, w.HBox([self.seconds, self.seed]), self.guidance, self.temperature,
                    self.top_k, self.compare, self.button]
        self.widget = w.VBox([*controls, self.output])

    def config(self) -> generate.GenerateConfig:
        """The ``GenerateConfig`` the current widget values describe."""
        return dataclasses.replace(
            self.defaults,
            prompts=generate.split_prompts(self.prompt.value),
            seconds=float(self.seconds.value),
            guidance_scale=float(self.guidance.value),
            temperature=float(self.temperature.value),
            top_k=int(self.top_k.value),
            seed=int(self.seed.value),
            compare=self.compare.value,
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
