"""Held-out likelihood: how well a model predicts the token segments of tracks it never trained on.

The cheapest and most direct check that an adapter learned a style: the cross-entropy of the
validation tracks' EnCodec tokens (straight from the shards, no generation, no CLAP) under the
base model and under the adapter. An adapter that learned the style gives those tracks a lower
cross-entropy than the base model does; one that only memorised its training crops does not.

Each held-out segment is scored whole (up to the model's 30 s window) in one teacher-forced
forward pass with its description as the text (and, for a melody model, its own chroma as the
melody, as training conditions it), batched, with the delay-pattern labels that training uses
(``labels``), so the numbers are the validation loss on whole segments. Reported:

* ``nll_per_codebook``: mean cross-entropy per token of each codebook, in nats (the unit of the
  training loss);
* ``bits_per_second``: all codebooks' cross-entropy in bits per second of audio
  (``sum_k nll_k / ln 2 * frame_rate``): the code length of the audio under the model, which
  does not depend on how many codebooks or frames per second a checkpoint has.

The training run measures it once at the end (``at_finish``: base and final adapter, into
``OUT/heldout.json``, the summary and WandB); ``nbutils.evaluate`` measures it for the base and
every adapter it compares.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nbutils.core import atomic, tracking
from nbutils.core.sampling import own_window
from nbutils.train import dataset as data

RESULT_FILE = "heldout.json"
MAX_SEGMENTS = 256  # segments scored by default (evenly spread): a few minutes of forward passes at most
LN2 = math.log(2.0)


@dataclasses.dataclass
class Likelihood:
    """One model's cross-entropy on the held-out segments."""

    nll_per_codebook: list[float]
    """Mean cross-entropy per token of each codebook (nats)."""
    bits_per_second: float
    """Cross-entropy of all codebooks in bits per second of audio."""
    segment_bits: list[float]
    """Per segment: its total cross-entropy in bits (for bootstrap intervals and paired differences)."""
    segment_seconds: list[float]
    """Per segment: seconds of audio scored."""

    @property
    def segments(self) -> int:
        return len(self.segment_bits)

    def to_dict(self) -> dict[str, Any]:
        return {"bits_per_second": self.bits_per_second, "nll_per_codebook": self.nll_per_codebook,
                "segments": self.segments, "seconds": round(float(sum(self.segment_seconds)), 3),
                "segment_bits": self.segment_bits, "segment_seconds": self.segment_seconds}


def held_out(opened: Sequence, tracks: Sequence[str], limit: int = MAX_SEGMENTS) -> list[tuple[Any, int]]:
    """``[(shard, segment index)]`` of the segments of ``tracks``, at most ``limit`` (evenly spread)."""
    wanted = set(tracks)
    chosen = [(shard, i) for shard in opened for i, seg in enumerate(shard.segments)
              if seg.frames > 0 and data.track_of(seg, shard) in wanted]
    if len(chosen) > limit:
        chosen = [chosen[int(j)] for j in np.linspace(0, len(chosen) - 1, limit).round()]
    return chosen


def _examples(segments, max_frames: int, crops=None) -> list[data.Example]:
    examples = []
    for shard, index in segments:
        codes = np.asarray(shard.segment_codes(index)[:max_frames], dtype=np.int64)
        seg = shard.segments[index]
        chroma = crops.rows(shard, index, 0, len(codes)) if crops is not None else None
        examples.append(data.Example(codes=codes, length=len(codes), text=seg.description or "", track=seg.track,
                                     chroma=chroma))
    return examples


def condition(chroma: tuple | None, melody_model: bool) -> str:
    """How the segments are conditioned, in words (``heldout.json``, ``results.json``)."""
    if chroma is not None:
        return "text and chroma"
    return "text only: some of the shards hold no chroma for this model" if melody_model else "text"


def measure(model, tokenizer, segments, *, spec, start_id: int, device, batch_size: int = 8,
            max_frames: int = 1500, autocast: Callable[[], Any] = contextlib.nullcontext, bar=None,
            chroma: tuple | None = None) -> Likelihood:
    """Cross-entropy of ``segments`` (``[(shard, index)]``) under ``model``, one forward pass each, batched.

    Args:
        model: A MusicGen (with or without an active LoRA), any precision; put in eval mode here.
        tokenizer: Its text tokenizer (descriptions are the text, as in training).
        spec: The model's ``AudioSpec``; ``start_id``: the decoder start token.
        max_frames: Segments longer than this (the model's window) are scored on their first part.
        autocast: Context for the forward pass (the trainer's precision); nothing by default.
        bar: Optional progress bar, advanced by one per segment.
        chroma: Melody models: ``(CropChroma, Collator arguments)`` (``train.melody.scoring_inputs``), so
            each segment is scored with its own chroma as the melody, as training conditions it. None:
            text only.
    """
    import torch

    from nbutils.train import labels as L

    crops, collate_args = chroma if chroma is not None else (None, {})
    examples = _examples(segments, max_frames, crops)
    order = sorted(range(len(examples)), key=lambda i: -examples[i].length)  # similar lengths share a batch
    collate = data.Collator(tokenizer, spec.pad_token_id, start_id, spec.audio_channels, **collate_args)
    rows = np.zeros((len(examples), spec.num_codebooks))
    counts = np.zeros_like(rows)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for first in range(0, len(order), batch_size):
                picked = order[first : first + batch_size]
                batch = collate([examples[i] for i in picked]).to(device)
                with autocast():
                    logits = model(**batch.model_inputs()).logits
                sums, valid = L.codebook_ce_rows(logits, batch.labels, spec.pad_token_id)
                rows[picked], counts[picked] = sums.double().cpu().numpy(), valid.double().cpu().numpy()
                if bar is not None:
                    bar.update(len(picked))
    finally:
        model.train(was_training)
    return summarize(rows, counts, spec.frame_rate)


def summarize(rows: np.ndarray, counts: np.ndarray, frame_rate: float) -> Likelihood:
    """A ``Likelihood`` from per-segment, per-codebook summed cross-entropy (nats) and token counts."""
    nll = rows.sum(axis=0) / np.maximum(counts.sum(axis=0), 1)
    seconds = counts.max(axis=1) / frame_rate  # every codebook scores each real frame once
    bits = rows.sum(axis=1) / LN2
    return Likelihood(nll_per_codebook=[round(float(v), 6) for v in nll],
                      bits_per_second=round(float(bits.sum() / max(seconds.sum(), 1e-9)), 4),
                      segment_bits=[round(float(b), 4) for b in bits],
                      segment_seconds=[round(float(s), 4) for s in seconds])


# ---------------------------------------------------------------------------------------------
# At the end of training
# ---------------------------------------------------------------------------------------------


def at_finish(trainer) -> dict[str, Any] | None:
    """Base vs final adapter on the run's validation tracks: ``OUT/heldout.json``, WandB, the log.

    Called once by ``Trainer.finish`` on the main process. None (and nothing written) when the
    run has no validation tracks.
    """
    segments = held_out(trainer.shards, trainer.split["val_tracks"])
    if not segments:
        return None
    model = trainer.unwrapped()
    chroma = (trainer.melody.crops, trainer.melody.collate) if trainer.melody.crops else None
    kwargs = dict(spec=trainer.spec, start_id=trainer.start_id, device=trainer.device,
                  batch_size=max(1, trainer.batch_size), autocast=trainer.autocast,
                  max_frames=own_window(trainer.base, trainer.spec.frame_rate), chroma=chroma)
    with model.disable_adapter():
        base = measure(model, trainer.processor.tokenizer, segments, **kwargs)
    lora = measure(model, trainer.processor.tokenizer, segments, **kwargs)
    trainer._in_train_mode = False
    result = {"step": trainer.step, "segments": len(segments), "base": base.to_dict(), "lora": lora.to_dict(),
              "condition": condition(chroma, trainer.melody.settings is not None)}
    atomic.write_json(Path(trainer.out) / RESULT_FILE, result)
    facts = summary_keys(result)
    tracking.summary({f"heldout/{k}": v for k, v in facts.items()})
    tracking.log({"heldout/bits_per_second": lora.bits_per_second,
                  "heldout/base_bits_per_second": base.bits_per_second}, step=trainer.step)
    trainer.log(f"Held-out likelihood ({len(segments)} validation segments): {base.bits_per_second:.1f} bits/s "
                f"with the base model, {lora.bits_per_second:.1f} with the adapter (lower: it predicts your "
                "unseen tracks better).")
    return result


def summary_keys(result: dict[str, Any] | None) -> dict[str, Any]:
    """The training summary's held-out figures (None without validation tracks)."""
    result = result or {}
    base, lora = result.get("base") or {}, result.get("lora") or {}
    return {"heldout_bits_per_second": lora.get("bits_per_second"),
            "heldout_nll_per_codebook": lora.get("nll_per_codebook"),
            "heldout_bits_per_second_base": base.get("bits_per_second"),
            "heldout_nll_per_codebook_base": base.get("nll_per_codebook"),
            "heldout_segments": result.get("segments")}


def read(out: str | Path, step: int | None = None) -> dict[str, Any] | None:
    """``OUT/heldout.json`` of a finished run (measured at ``step``, when given), or None."""
    path = Path(out) / RESULT_FILE
    result = atomic.read_json(path) if path.is_file() else None
    return result if result and (step is None or result.get("step") == step) else None
