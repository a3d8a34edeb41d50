"""The copy check of one evaluation: which segments are searched, their features, the records.

Training segments are every segment of the tracks that were not held out (``reference``), at
most ``copy_segments`` of them, evenly spread (0: all); their features come from the cache beside
the shards (``copyindex``). The held-out calibration clips are the reference segments, cut to the
generated clips' length and decoded with the same EnCodec, so both sides of the comparison took
the same path. The thresholds and the flag rule are in ``copies``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nbutils.core import clap, models
from nbutils.core.errors import UserError
from nbutils.evaluate import chroma, copies, copyindex, reference
from nbutils.generate import sampling


def decoder(model_name: str, device: str, num_codebooks: int):
    """``decode(shard, index, frames=None) -> (samples, channels)``: a segment's codes through the model's EnCodec."""
    import torch

    codec, spec = models.load_codec(model_name, device=device)

    def decode(shard, index: int, frames: int | None = None) -> np.ndarray:
        if shard.meta.get("num_codebooks") != num_codebooks:
            raise UserError(
                f"The shards hold {shard.meta.get('num_codebooks')} codebooks, the model {num_codebooks}: they were "
                f"tokenized for another model ({shard.meta.get('model')}). Pass the tokens of this model.")
        codes = np.asarray(shard.segment_codes(index)[:frames], dtype=np.int64)
        tensor = torch.from_numpy(codes.T.copy()).to(device)
        return sampling.decode_codes(codec, tensor, spec.audio_channels).T.numpy()

    return decode, spec


def training_segments(all_shards: list, held_tracks: set[str], limit: int) -> tuple[list[tuple], int]:
    """``([(shard, index)], how many there are in all)``: the searched training segments."""
    every = [(s, i) for s in all_shards for i, seg in enumerate(s.segments)
             if seg.frames > 0 and seg.track not in held_tracks]
    return reference.spread(every, limit), len(every)


def run(cfg, all_shards: list, run_dir: Path | None, scorer: clap.Clap, samples: list[dict],
        clip_features: list[tuple[np.ndarray, np.ndarray]], spec, device: str) -> tuple[list[dict], dict]:
    """Copy records for every clip in ``samples`` (flagged first) and the facts of the check.

    Args:
        cfg: The ``EvalConfig`` (``tokens``, ``model``, ``copy_segments``, ``max_reference``, ``seconds``).
        all_shards: The token shards; ``run_dir``: the adapter's training run (its split), or None.
        scorer: The loaded CLAP; ``samples``: the clips, with ``clip_features`` their
            ``(chroma.sequence, CLAP embedding)``.
        spec: The model's ``AudioSpec``; ``device``: where EnCodec decodes.
    """
    from tqdm.auto import tqdm

    held_tracks, _ = reference.held_out_tracks(all_shards, run_dir)
    searched, total = training_segments(all_shards, held_tracks, cfg.copy_segments)
    decode, _ = decoder(cfg.model, device, spec.num_codebooks)
    cache = copyindex.Cache(cfg.tokens, scorer, decode, spec.sample_rate, models.recorded_name(cfg.model))
    with tqdm(total=len(searched), desc="copy check: training segments", unit="segment", dynamic_ncols=True) as bar:
        entries = cache.entries(searched, bar=bar)
    if cache.computed:
        print(f"Copy check: described {cache.computed} training segment(s), kept in "
              f"{Path(cfg.tokens) / copyindex.FOLDER} for the next evaluation.")
    index = copies.Index([copies.Segment(s.segments[i].track, s.segments[i].start) for s, i in searched], entries)
    held, _ = reference.held_out_segments(all_shards, run_dir, cfg.max_reference)
    frames = max(1, int(round(cfg.seconds * spec.frame_rate)))
    held_waves = [decode(s, i, frames) for s, i in held]
    held_emb = clap.audio_embeddings(scorer, held_waves, spec.sample_rate)
    heldout = [(chroma.sequence(w, spec.sample_rate), e) for w, e in zip(held_waves, held_emb)]
    records, facts = copies.check(index, samples, clip_features, heldout, total)
    facts["cache"] = str(Path(cfg.tokens) / copyindex.FOLDER) if cache.unwritable is None else None
    return records, facts
