"""The models an evaluation compares, and their generated clips on disk.

Every model (the base, each adapter, optionally every training checkpoint) generates the same
prompts with the same seeds. Clips are saved under ``samples/<model label>/`` and recorded in
``samples/index.jsonl`` one batch at a time, so a re-run reuses every batch already there (a
LoRA's only while its weights file is unchanged).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from nbutils.core import atomic
from nbutils.core.errors import UserError
from nbutils.evaluate import reference
from nbutils.generate import adapters, output
from nbutils.generate import stage as generate
from nbutils.generate.musicgen import Pipeline, Prepared, sample_batch

LEDGER = "index.jsonl"


def adapter_label(location: str, kind: str, step: int | None) -> str:
    """Short, readable model names for tables: lora-best, lora-final, step-000500, latest-step-7."""
    path = Path(location)
    if kind == "training-state":
        return f"latest-step-{step}" if step is not None else path.stem
    if path.parent.name == "adapters":
        return f"lora-{path.name}"
    if path.name.startswith("step-"):
        return path.name
    return "lora" if not path.name else path.name


def unique_label(label: str, taken: list[str]) -> str:
    """``label``, or ``label-2``, ``label-3``... if an earlier model already has it."""
    n, candidate = 1, label
    while candidate in taken:
        n += 1
        candidate = f"{label}-{n}"
    return candidate


def adapter_specs(cfg) -> list[str]:
    """The adapters ``cfg`` (an ``EvalConfig``) evaluates, in order; with ``checkpoints``, every
    step checkpoint of the run too."""
    specs = list(cfg.adapters)
    if not specs:
        raise UserError("No adapter to evaluate. Pass --adapter (a run's adapters/best, latest.pt, a PEFT folder "
                        "or Hub id).")
    if cfg.checkpoints:
        run = reference.run_folder(adapters.resolve(specs[0]).location)
        steps = sorted((run / "checkpoints").glob("step-*")) if run else []
        if not steps:
            raise UserError(f"--checkpoints: no checkpoints/step-XXXXXX folders next to {specs[0]}.")
        specs += [str(s) for s in steps if str(s) not in specs]
    for spec in specs:  # a missing adapter is reported now, not after the models before it have run
        adapters.locate(spec)
    return specs


def _unit_key(label: str, variation: int, batch: list[str], fingerprint: str = "") -> str:
    """The ledger key of one batch of clips; a LoRA's carries its weights' fingerprint, so clips of
    an adapter retrained into the same folder are generated again (the base clips stay valid)."""
    model = f"{label}@{fingerprint}" if fingerprint else label
    return f"{model}|{variation}|" + hashlib.sha256("\n".join(batch).encode()).hexdigest()[:12]


def read_wav(path: str) -> np.ndarray:
    """A generated clip as float32 ``(samples, channels)`` (written at the model's rate by ``generate.output``)."""
    import soundfile as sf

    return sf.read(path, dtype="float32", always_2d=True)[0]


class Samples:
    """Generated clips on disk, with a ledger so a re-run reuses what is already there."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.done = {r["unit"]: r["clips"] for r in atomic.read_jsonl(folder / LEDGER)
                     if all(Path(c["path"]).exists() for c in r.get("clips", []))}

    def ensure(self, pipe: Pipeline, gen, prepared: Prepared, label: str, variant: str, bar) -> list[dict]:
        """Every clip of ``gen`` (a ``GenerateConfig``) for one model, generated only where the ledger has none.

        ``prepared`` is ``pipe.prepare(gen)``, made once for every model of the evaluation.
        """
        records = []
        weights = pipe.adapter.fingerprint if variant == "lora" and pipe.adapter else ""
        for variation in range(gen.variations):
            for batch in generate.batches(list(gen.prompts), gen.batch_size):
                key = _unit_key(label, variation, batch, weights)
                if key not in self.done:
                    clips = sample_batch(pipe, prepared, batch, variant=variant, variation=variation,
                                         seed=gen.seed + variation, bar=bar)
                    saved = output.save(clips, gen, pipe, self.folder / label)
                    self.done[key] = [{"prompt": r["prompt"], "path": r["path"], "seed": r["variation_seed"]}
                                      for r in saved]
                    atomic.append_line(self.folder / LEDGER, json.dumps({"unit": key, "clips": self.done[key]}))
                elif bar is not None:
                    bar.update(gen.seconds * len(batch))
                records += [{**c, "model": label} for c in self.done[key]]
        return records
