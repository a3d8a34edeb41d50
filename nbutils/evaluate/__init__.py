"""Stage 4 (notebook 04): base vs LoRA, scored with CLAP, in tables and a plot.

``stage`` holds the settings, the run and the CLI (public names re-exported here); ``prompts``
the fixed prompt sets; ``clips`` the models compared and their generated clips; ``reference``
the held-out training audio; ``metrics`` compares CLAP embeddings (``nbutils.core.clap``, shared
with tokenize's tags), ``report`` scores and writes the tables, plot and results.json.
"""

from nbutils.evaluate.report import show
from nbutils.evaluate.stage import EvalConfig, config_for, run

__all__ = ["EvalConfig", "config_for", "run", "show"]
