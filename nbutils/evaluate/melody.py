"""How closely a melody model follows a melody: audiocraft's chroma cosine similarity, base vs LoRA.

For a melody checkpoint, held-out segments (taken evenly from the style reference, ``reference``)
serve as melodies. Each is written to ``OUT/melody/melody-XX.wav`` and every model generates, from
the segment's own description and conditioned on that file, one clip of ``seconds`` (same seed
for every model; clips are kept and reused on a re-run like the others). The score is audiocraft's
``ChromaCosineSimilarityMetric`` as configured in ``config/solver/musicgen/default.yaml``
(``chroma_base``: 12 bins, ``radix2_exp`` 14 so 16384-sample windows with a 4096 hop, argmax):
per chroma frame, the cosine between the melody's and the clip's chroma -- with one-hot chroma,
1 where their strongest pitch classes agree and 0 elsewhere -- averaged over every frame of every
clip. audiocraft's model card reports 0.44 for facebook/musicgen-melody on MusicCaps (melody from a
Demucs stem, not this data): a point of reference, not a target. A LoRA that kept the melody
conditioning scores about as high as its base on the same melodies.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from nbutils.core import atomic, melody
from nbutils.evaluate import clips

MELODIES = 8  # held-out segments used as melodies, evenly spread over the reference
FOLDER = "melody"
PROMPT_SET = "melody"
PUBLISHED = {"facebook/musicgen-melody": 0.44}  # audiocraft's model card, chroma cosine similarity on MusicCaps
METRIC = melody.ChromaSettings()  # the metric's own chroma (32 kHz, 2**14 window, 2**12 hop, 12 bins), any model


@dataclasses.dataclass
class Melodies:
    """The held-out segments an evaluation uses as melodies, written as WAV files."""

    files: list[Path]
    prompts: list[str]
    """Each segment's own description (its text condition, as audiocraft evaluates)."""
    tracks: list[str]


def choose(ref, out: Path, sample_rate: int) -> Melodies | None:
    """Up to ``MELODIES`` segments of the reference, written to ``out/melody/`` (None without a reference)."""
    if ref is None or not ref.audio:
        return None
    picks = list(dict.fromkeys(np.linspace(0, len(ref.audio) - 1, min(MELODIES, len(ref.audio))).round().astype(int)))
    chosen = Melodies(files=[], prompts=[], tracks=[])
    for j, index in enumerate(int(i) for i in picks):
        path = out / FOLDER / f"melody-{j:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(path) as tmp:
            import soundfile as sf

            sf.write(tmp, np.clip(ref.audio[index], -1, 1), sample_rate, subtype="FLOAT", format="WAV")
        chosen.files.append(path)
        chosen.prompts.append(ref.descriptions[index] if index < len(ref.descriptions) else "")
        chosen.tracks.append(ref.tracks[index])
    return chosen


def generate(pipe, gen, melodies: Melodies | None, label: str, variant: str, bar) -> list[dict[str, Any]]:
    """One clip per melody for one model (reused from ``out/melody/mXX-<melody sha256>`` when already there).

    Args:
        pipe: The loaded ``Pipeline``, with the adapter of ``label`` attached (or none for the base).
        gen: The evaluation's ``GenerateConfig`` (seconds, seed, sampling); melody and prompt are set here.
    """
    if melodies is None:
        return []
    records = []
    if bar is not None and bar.total is not None:
        bar.total += gen.seconds * len(melodies.files)
        bar.refresh()
    for j, (file, prompt) in enumerate(zip(melodies.files, melodies.prompts)):
        one = dataclasses.replace(gen, prompts=[prompt], melody=str(file), variations=1, out=str(file.parent))
        # keyed by the melody's content: a re-run whose held-out reference changed (more tokens, another
        # split) never reuses clips made for another melody under the same number
        store = clips.Samples(file.parent / f"m{j:02d}-{_digest(file)}")
        for record in store.ensure(pipe, one, pipe.prepare(one), label, variant, bar):
            records.append({**record, "melody": j})
    return records


def _digest(path: Path) -> str:
    """The melody's samples (not the file's bytes: a float WAV's PEAK chunk holds the time it was written)."""
    wave = clips.read_wav(str(path))
    return hashlib.sha256(np.ascontiguousarray(wave, dtype=np.float32).tobytes()).hexdigest()[:12]


def similarity(reference: np.ndarray, generated: np.ndarray, sample_rate: int) -> tuple[float, int]:
    """``(sum of per-frame chroma cosines, frames)`` between a melody and a clip (their common length)."""
    import torch

    if sample_rate != METRIC.sample_rate:
        from nbutils.core import audio

        reference, generated = (audio.resample(x, sample_rate, METRIC.sample_rate) for x in (reference, generated))
    a, b = melody.compute(reference, METRIC), melody.compute(generated, METRIC)
    frames = min(len(a), len(b))
    cosine = torch.nn.functional.cosine_similarity(a[:frames], b[:frames], dim=1, eps=1e-8)
    return float(cosine.sum()), frames


def rows(records: list[dict[str, Any]], melodies: Melodies | None, sample_rate: int) -> list[dict[str, Any]]:
    """One summary row per model: ``chroma_cosine`` (pooled over every frame, as audiocraft), its spread over clips."""
    if melodies is None or not records:
        return []
    tunes = [clips.read_wav(str(f)) for f in melodies.files]
    out = []
    for model in dict.fromkeys(r["model"] for r in records):
        mine = [r for r in records if r["model"] == model]
        scored = [similarity(tunes[r["melody"]], clips.read_wav(r["path"]), sample_rate) for r in mine]
        total, frames = sum(s for s, _ in scored), sum(n for _, n in scored)
        per_clip = np.asarray([s / max(n, 1) for s, n in scored])
        out.append({"model": model, "prompt_set": PROMPT_SET, "samples": len(mine),
                    "chroma_cosine": round(total / max(frames, 1), 6),
                    "chroma_cosine_std": round(float(per_clip.std()), 6), "chroma_frames": frames})
    return out


def facts(cfg, melodies: Melodies | None, summary_rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What ``results.json`` says about the melody evaluation (None for a model without a melody input)."""
    if melodies is None:
        return None
    published = PUBLISHED.get(str(cfg.model))
    scores = {r["model"]: r["chroma_cosine"] for r in summary_rows}
    print("Melody (chroma cosine similarity, audiocraft's metric): " + ", ".join(f"{m} {v:.3f}" for m, v in
          scores.items()) + (f"; published for {cfg.model}: {published}" if published else ""))
    return {"metric": "chroma cosine similarity (audiocraft ChromaCosineSimilarityMetric, chroma_base: 12 bins, "
                      "radix2_exp 14, argmax)", "melodies": [str(f) for f in melodies.files],
            "tracks": melodies.tracks, "prompts": melodies.prompts, "published_reference": published,
            "published_source": "audiocraft model_cards/MUSICGEN_MODEL_CARD.md (MusicCaps)" if published else None,
            "chroma_cosine": scores}
