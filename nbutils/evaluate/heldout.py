"""The held-out likelihood of an evaluation: base and every adapter on the held-out token segments.

The first thing an evaluation measures (no generation, no CLAP): ``train.likelihood`` on the
segments of the held-out tracks (``reference.held_out_tracks``: the run's validation tracks),
at most ``heldout_segments`` of them, each with its description as the text and, for a melody
model, its own chroma as the melody (as training scores it). Each model's result is appended to
``OUT/heldout.jsonl`` under a key of its weights and the segments, so a re-run reuses it. Intervals come from
resampling the segments (the same draws for every model: the change against base is paired).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from nbutils.core import atomic
from nbutils.core.errors import UserError
from nbutils.evaluate import reference, uncertainty
from nbutils.generate import sampling
from nbutils.train import likelihood, melody

LEDGER = "heldout.jsonl"


def segments(cfg, all_shards: list, run_dir: Path | None) -> tuple[list[tuple], str]:
    """The held-out segments scored (``[(shard, index)]``) and how the tracks were chosen."""
    tracks, how = reference.held_out_tracks(all_shards, run_dir)
    return likelihood.held_out(all_shards, sorted(tracks), cfg.heldout_segments), how


def _key(label: str, fingerprint: str, chosen: list[tuple], chroma: bool = False) -> str:
    # the description is the text condition: an edited descriptions.jsonl is measured again; a result
    # scored with each segment's chroma is kept apart from one scored on text only (earlier versions)
    names = "\n".join(f"{s.index_path.stem}:{s.meta.get('sha256')}:{i}:{s.segments[i].description}" for s, i in chosen)
    return f"{label}@{fingerprint}|" + hashlib.sha256(names.encode()).hexdigest()[:16] + ("|chroma" if chroma else "")


def _condition(pipe, chosen: list[tuple]) -> tuple[tuple | None, str]:
    """How ``pipe``'s model is conditioned when scoring: ``(train.melody.scoring_inputs, in words)``."""
    opened = list({id(shard): shard for shard, _ in chosen}.values())
    inputs = melody.scoring_inputs(pipe.model.config, pipe.spec, pipe.chroma_settings, opened)
    return inputs, likelihood.condition(inputs, pipe.chroma_settings is not None)


class Store:
    """Each model's held-out likelihood, measured once per weights and segments (``OUT/heldout.jsonl``)."""

    def __init__(self, out: Path, chosen: list[tuple], batch_size: int):
        self.path = out / LEDGER
        self.chosen, self.batch_size = chosen, batch_size
        self.done = {r["key"]: r["result"] for r in atomic.read_jsonl(self.path) if "key" in r and "result" in r}
        self.models: dict[str, dict[str, Any]] = {}
        self.condition = ""
        """How the models were conditioned: "text"; for a melody model "text and chroma" (each segment's own),
        or "text only: ..." when some shards hold no chroma for it. One evaluation has one base model, so
        every model it measures shares the condition."""

    def measure(self, pipe, label: str, variant: str) -> dict[str, Any]:
        """The likelihood of ``pipe`` as ``variant`` (``base`` or ``lora``), recorded under ``label``."""
        from tqdm.auto import tqdm

        books = {s.meta.get("num_codebooks") for s, _ in self.chosen}
        if books - {pipe.spec.num_codebooks}:
            raise UserError(
                f"The shards hold {', '.join(map(str, sorted(books, key=str)))} codebooks per frame, the model "
                f"{pipe.model_name} {pipe.spec.num_codebooks}: they were tokenized for another model (mono vs stereo). "
                "Pass the tokens of this model (--tokens), or evaluate the model they were made with.")
        weights = pipe.adapter.fingerprint if variant == "lora" and pipe.adapter else ""
        chroma, self.condition = _condition(pipe, self.chosen)
        key = _key(label, weights, self.chosen, chroma is not None)
        if key not in self.done:
            start = pipe.model.config.decoder.decoder_start_token_id
            with tqdm(total=len(self.chosen), desc=f"held-out likelihood: {label}", unit="segment",
                      dynamic_ncols=True) as bar, pipe.using(variant):
                result = likelihood.measure(
                    pipe.model, pipe.processor.tokenizer, self.chosen, spec=pipe.spec, start_id=int(start),
                    device=pipe.device, batch_size=self.batch_size, bar=bar,
                    max_frames=sampling.own_window(pipe.model, pipe.spec.frame_rate), chroma=chroma).to_dict()
            self.done[key] = result
            atomic.append_line(self.path, json.dumps({"key": key, "result": result}))
        self.models[label] = self.done[key]
        print(f"Held-out likelihood of {label}: {self.done[key]['bits_per_second']:.1f} bits/s "
              f"({len(self.chosen)} segments)")
        return self.done[key]


def _rate(result: dict, idx: np.ndarray) -> float:
    bits, seconds = np.asarray(result["segment_bits"]), np.asarray(result["segment_seconds"])
    return float(bits[idx].sum() / max(seconds[idx].sum(), 1e-9))


def fields(models: dict[str, dict], base: str, resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per model: its summary-row fields (``heldout_*``) with intervals, and the change against base."""
    if not models:
        return {}
    n = len(next(iter(models.values()))["segment_bits"])
    draws = uncertainty.flat(n, resamples, uncertainty.rng(seed, 3))
    out = {}
    for label, result in models.items():
        mine = {"heldout_bits_per_second": result["bits_per_second"],
                "heldout_nll_per_codebook": result["nll_per_codebook"]}
        ci = {"heldout_bits_per_second": uncertainty.over(draws, lambda i, r=result: _rate(r, i))}
        if base in models:
            theirs = models[base]
            mine["heldout_bits_per_second_vs_base"] = round(result["bits_per_second"] - theirs["bits_per_second"], 4)
            ci["heldout_bits_per_second_vs_base"] = uncertainty.over(
                draws, lambda i, r=result, b=theirs: _rate(r, i) - _rate(b, i))
        out[label] = {"values": mine, "ci95": ci, "n": {k: n for k in ci}}
    return out


def facts(store: Store | None, how: str) -> dict[str, Any]:
    """What ``results.json`` says about the held-out likelihood (per model, without per-segment lists)."""
    if store is None:
        return {"selection": "none (no token shards): no held-out likelihood", "segments": 0, "models": {}}
    seconds = next(iter(store.models.values()))["seconds"] if store.models else 0
    trim = {label: {k: v for k, v in r.items() if not k.startswith("segment_")} for label, r in store.models.items()}
    return {"selection": how, "segments": len(store.chosen), "seconds": seconds, "condition": store.condition,
            "unit": "bits per second of audio (all codebooks); nll_per_codebook in nats per token", "models": trim}
