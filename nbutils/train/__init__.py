"""Stage 2 (notebook 02): LoRA fine-tuning of MusicGen on token shards, with exact resume.

``stage`` holds the settings, the run and the CLI; the ``trainer`` (one step at a time) and what
it is built from (``build``), the data (``dataset``, ``labels``), LoRA (``lora``), checkpoints,
the metrics file (``history``), GPU presets and the time estimate, samples and the Hub live beside
it. The public names of ``stage`` are re-exported here (``train.run(train.notebook_config(project, ...))``).
"""

from nbutils.train import estimate, monitor, presets
from nbutils.train.stage import TrainConfig, notebook_config, read_metrics, run

__all__ = ["TrainConfig", "estimate", "monitor", "notebook_config", "presets", "read_metrics", "run"]
