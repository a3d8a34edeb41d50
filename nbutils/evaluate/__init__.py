"""Stage 4 (notebook 04): base vs LoRA, scored with CLAP, in tables and a plot.

``clap`` embeds text and audio, ``metrics`` compares embeddings, ``stage`` runs the evaluation
(settings, run, CLI; public names re-exported here).
"""

from nbutils.evaluate.stage import EvalConfig, config_for, run, show

__all__ = ["EvalConfig", "config_for", "run", "show"]
