"""Stage 3 (notebook 03): music from text with the base MusicGen and a LoRA adapter.

``stage`` holds the settings, the run and the CLI (public names re-exported here); ``musicgen``
the loaded model (base + adapter) and what a request prepares once; ``sampling`` works on EnCodec
codes (windows, continuation, exact joins; chroma comes from ``nbutils.core.melody``); ``adapters`` loads an
adapter from wherever it was saved; ``output`` writes WAVs and sidecars; ``form`` is the
ipywidgets form.
"""

from nbutils.generate import form
from nbutils.generate.musicgen import Pipeline
from nbutils.generate.stage import GenerateConfig, config_for, pipeline, players, release, run

__all__ = ["GenerateConfig", "form", "Pipeline", "config_for", "pipeline", "players", "release", "run"]
