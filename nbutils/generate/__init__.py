"""Stage 3 (notebook 03): music from text with the base MusicGen and a LoRA adapter.

``adapters`` loads an adapter from wherever it was saved, ``sampling`` works on EnCodec codes
(windows, continuation, exact joins), ``melody`` makes chroma, ``stage`` is the pipeline, the
settings, saving and the CLI (public names re-exported here), ``form`` the ipywidgets form.
"""

from nbutils.generate import form
from nbutils.generate.stage import GenerateConfig, Pipeline, config_for, pipeline, players, release, run

__all__ = ["GenerateConfig", "form", "Pipeline", "config_for", "pipeline", "players", "release", "run"]
