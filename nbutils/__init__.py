"""nbutils: the tested logic behind the MusicGen LoRA Colab notebooks.

One subpackage per notebook, and a core they share (imports point one way: colab -> stages -> core)::

    colab/     00_setup and every Connect cell: Drive, secrets, GPU check, project, install, demo
    tokenize/  01_tokenize: ZIP batches -> EnCodec token shards
    train/     02_train: LoRA fine-tuning with exact resume
    generate/  03_generate: music from text, base and LoRA
    evaluate/  04_evaluate: base vs LoRA with CLAP
    core/      errors, atomic writes, configs, paths, devices, model loading, audio input

``python -m nbutils <command>`` runs any stage from a shell (``nbutils.cli``). Importing the
package is cheap: torch and transformers load only when a stage needs them.
"""

import importlib
import warnings

__version__ = "0.1.0"

from nbutils.core.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]

# Release 0.1.0 had one flat package (``nbutils.presets``, ``nbutils.models``...). Those names keep
# working for one release, with a DeprecationWarning naming the new place; the stage names
# (``from nbutils import colab, tokenize, train, generate, evaluate``) are the packages themselves.
MOVED = {
    "adapters": "nbutils.generate.adapters",
    "archive": "nbutils.tokenize.archive",
    "atomic": "nbutils.core.atomic",
    "audio": "nbutils.core.audio",
    "audio_io": "nbutils.generate.output",
    "checkpoint": "nbutils.train.checkpoint",
    "clap": "nbutils.core.clap",
    "config": "nbutils.core.config",
    "dataset": "nbutils.train.dataset",
    "demo": "nbutils.colab.demo",
    "devices": "nbutils.core.devices",
    "encoder": "nbutils.tokenize.encoder",
    "errors": "nbutils.core.errors",
    "faults": "nbutils.core.faults",
    "generate_form": "nbutils.generate.form",
    "hub": "nbutils.train.hub",
    "install": "nbutils.colab.install",
    "labels": "nbutils.train.labels",
    "ledger": "nbutils.tokenize.ledger",
    "lora": "nbutils.train.lora",
    "melody": "nbutils.core.melody",
    "metadata": "nbutils.tokenize.metadata",
    "metrics": "nbutils.evaluate.metrics",
    "models": "nbutils.core.models",
    "monitor": "nbutils.train.monitor",
    "notebooks": "nbutils.colab.notebooks",
    "paths": "nbutils.core.paths",
    "prefetch": "nbutils.tokenize.prefetch",
    "presets": "nbutils.train.presets",
    "samples": "nbutils.train.samples",
    "sampling": "nbutils.generate.sampling",
    "shards": "nbutils.tokenize.shards",
    "synth": "nbutils.core.synth",
    "tracking": "nbutils.core.tracking",
    "zipjob": "nbutils.tokenize.zipjob",
}


def __getattr__(name: str):
    if name not in MOVED:
        raise AttributeError(f"module 'nbutils' has no attribute '{name}'")
    warnings.warn(f"nbutils.{name} moved to {MOVED[name]}; the old name goes in the next release.",
                  DeprecationWarning, stacklevel=2)
    return importlib.import_module(MOVED[name])
