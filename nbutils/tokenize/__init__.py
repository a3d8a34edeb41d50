"""Stage 1 (notebook 01): ZIP batches of audio -> one EnCodec token shard per ZIP.

``archive`` reads ZIPs safely (``zipfix`` corrects directory fields ``zipfile`` refuses),
``metadata`` finds each track's description, ``encoder`` batches EnCodec, ``shards`` and ``ledger``
are the durable output, ``lock`` keeps one run per token folder, ``zipjob`` is the work on one
ZIP (``notes``: what its contents deserve a warning about) and ``stage`` the whole run (config,
run, CLI), whose public names are re-exported here. ``precision`` decides whether ``auto`` encodes
under autocast or in float32 (the doctor's measurement), ``speed`` times the batched pipeline
against one file at a time (``bench_tokenize`` and the doctor). ``describe`` (with ``analysis``:
tempo and key, ``tags``: CLAP) writes automatic descriptions; ``descriptions`` is the table the user
edits (``descriptions.jsonl``) and ``editor`` notebook 01's view of it.
"""

from nbutils.tokenize.editor import edit as edit_descriptions
from nbutils.tokenize.editor import plot as plot_descriptions
from nbutils.tokenize.editor import preview as descriptions_preview
from nbutils.tokenize.stage import TokenizeConfig, config_for, run, table

__all__ = ["TokenizeConfig", "config_for", "descriptions_preview", "edit_descriptions", "plot_descriptions", "run",
           "table"]
