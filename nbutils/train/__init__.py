"""Stage 2 (notebook 02): LoRA fine-tuning of MusicGen on token shards, with exact resume.

``stage`` holds the settings, the run and the CLI; the ``trainer`` (one step at a time) and what
it is built from (``build``), the data (``dataset``, ``labels``), LoRA (``lora``), checkpoints,
the metrics file (``history``), GPU presets and the time estimate, samples and the Hub live beside
it. The public names of ``stage`` are re-exported here (``train.run(train.config_for(project, **SETTINGS))``;
``notebook_config`` is 0.1.0's name of ``config_for``, kept for one release).
"""

from nbutils.train import estimate, monitor, presets
from nbutils.train.stage import TrainConfig, config_for, notebook_config, read_metrics, run

__all__ = ["TrainConfig", "config_for", "estimate", "monitor", "notebook_config", "presets", "read_metrics", "run"]
