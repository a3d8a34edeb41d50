"""Stage 4 (notebook 04): did the adapter learn the style without copying it? Base vs LoRA.

``stage`` holds the settings, the run and the CLI (public names re-exported here); ``heldout``
the held-out likelihood (``train.likelihood``); ``prompts`` the fixed prompt sets; ``clips`` the
models compared and their generated clips; ``reference`` the held-out training audio;
``metrics`` compares CLAP embeddings (``nbutils.core.clap``, shared with tokenize's tags: Fréchet,
KAD), ``aggregate`` and ``uncertainty`` make the summary rows with bootstrap intervals;
``copycheck`` / ``copies`` / ``copyindex`` / ``chroma`` find near-copies of training segments;
``melody`` scores a melody model's clips against held-out melodies; ``report``, ``table`` and
``plot`` write the tables, plot and results.json; ``listen`` the blind A/B page.
"""

from nbutils.evaluate.report import show, show_listening
from nbutils.evaluate.stage import EvalConfig, config_for, run, saved_results

__all__ = ["EvalConfig", "config_for", "run", "saved_results", "show", "show_listening"]
