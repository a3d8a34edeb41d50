"""Training a melody checkpoint: the chroma beside the codes, aligned to each crop, dropped out as audiocraft does.

musicgen-melody is conditioned on the chroma of a melody as well as on text: transformers'
``MusicgenMelodyForConditionalGeneration`` projects ``input_features`` (``(batch, frames, 12)``,
one-hot) and prepends them, tiled to ``config.chroma_length`` frames (235 = 30 s), to the text
states in front of the audio tokens. audiocraft trains it with the chroma of the target audio
itself (``self_wav``), and so does this suite:

* **Chroma.** Tokenization stored each segment's chroma (``tokenize.shards``). A crop of code frames
  ``[s, s + n)`` is given the chroma frames that cover the same audio: from
  ``floor(s * 640 / hop)`` for ``ceil(n * 640 / hop)`` frames -- the frames generation feeds for a
  window at that time (``core.melody.window``). Each crop's frames are tiled to ``chroma_length`` as
  the model tiles a short melody, so batching changes nothing.
* **Dropout**, from audiocraft's ``config/conditioner/chroma2music.yaml`` (the melody model's
  conditioner): ``classifier_free_guidance.training_dropout: 0.2`` drops every condition together
  (text *and* chroma); ``attribute_dropout.wav.self_wav: 0.5`` drops the chroma alone;
  ``attribute_dropout.text`` is empty (no text-only dropout). A dropped text is the null text of
  ``nbutils.train.dataset``; a dropped chroma is transformers' null melody (every frame on pitch
  class 0), what ``generate()`` feeds without a melody and for the unconditional half of guidance.
* **Refusal.** Shards without this chroma are refused before the model loads, with the command
  that adds it without encoding again (``tokenize --add-chroma``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nbutils.core import atomic, melody, models
from nbutils.core.errors import UserError
from nbutils.tokenize import chroma as tokenize_chroma
from nbutils.tokenize import shards

# audiocraft config/conditioner/chroma2music.yaml (commit bf70522): the melody model's training dropout
MELODY_CFG_DROPOUT = 0.2  # classifier_free_guidance.training_dropout: text and chroma dropped together
CHROMA_DROPOUT = 0.5  # attribute_dropout.wav.self_wav: the chroma dropped alone


@dataclasses.dataclass(frozen=True)
class Dropouts:
    """The dropout a run trains with, defaults resolved for its model."""

    cfg: float
    """Probability of dropping every condition of a crop (its text, and its chroma for melody models)."""
    chroma: float | None
    """Probability of dropping the chroma alone; None for models without a melody input."""


def dropouts(cfg_dropout: float | None, melody_dropout: float | None, is_melody: bool, text_default: float) -> Dropouts:
    """The run's dropout: the values set, else audiocraft's for the model (``text_default`` for text-only ones)."""
    if not is_melody:
        if melody_dropout is not None:
            raise UserError("melody_dropout is for melody models (facebook/musicgen-melody...): this model has no "
                            "melody input. Leave it empty.")
        return Dropouts(cfg=text_default if cfg_dropout is None else float(cfg_dropout), chroma=None)
    return Dropouts(cfg=MELODY_CFG_DROPOUT if cfg_dropout is None else float(cfg_dropout),
                    chroma=CHROMA_DROPOUT if melody_dropout is None else float(melody_dropout))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run does about melody, settled before its model loads (``plan``)."""

    settings: melody.ChromaSettings | None
    """The model's chroma settings; None for a model without a melody input."""
    dropouts: Dropouts
    crops: CropChroma | None
    """How crops get their chroma (``CropDataset(chroma=...)``); None without a melody input."""
    collate: dict[str, int]
    """``Collator`` arguments: the model's ``chroma_length`` and ``num_chroma`` (empty without)."""
    frame_rate: int
    """Code frames per second (to cut sample melodies)."""

    def identity(self) -> dict[str, float | None]:
        """The dropout as resolved, for the resume check (a text-only run's ``melody_dropout`` is None)."""
        return {"cfg_dropout": self.dropouts.cfg, "melody_dropout": self.dropouts.chroma}

    def samples(self, val_set, count: int, seconds: float) -> list[dict[str, Any]]:
        """Melodies for the training samples (``sample_melodies``); none without a melody input."""
        return sample_melodies(val_set, count, seconds, self.frame_rate) if self.settings else []


def plan(cfg, model_name: str, text_default: float) -> Plan:
    """Check the shards' chroma and the crop length (melody models), and resolve the dropout.

    Args:
        cfg: The ``TrainConfig``.
        model_name: The model trained.
        text_default: The CFG dropout of text-only models (``dataset.CFG_DROPOUT``).
    """
    settings = require_chroma(cfg.tokens, model_name)
    config = models.load_config(model_name)
    spec = models.spec_of(config)
    drops = dropouts(cfg.cfg_dropout, cfg.melody_dropout, settings is not None, text_default)
    if settings is None:
        return Plan(None, drops, None, {}, spec.frame_rate)
    check_crop(cfg.crop_seconds, settings, config)
    crops, collate = chroma_inputs(config, spec, settings, dropout=float(drops.chroma))
    return Plan(settings, drops, crops, collate, spec.frame_rate)


def chroma_inputs(config, spec, settings: melody.ChromaSettings, dropout: float = 0.0) -> tuple[CropChroma, dict]:
    """How a melody model's crops get their chroma (``CropChroma``), and the ``Collator`` arguments for it."""
    crops = CropChroma(code_hop=spec.hop_length, chroma_hop=settings.hop_length, dropout=dropout)
    return crops, {"chroma_length": int(config.chroma_length), "num_chroma": int(config.num_chroma)}


def scoring_inputs(config, spec, settings: melody.ChromaSettings | None, opened: Sequence) -> tuple | None:
    """``chroma_inputs`` to score ``opened`` shards' segments with their own chroma, or None.

    None for a model without a melody input, and when any of the shards holds no chroma made with
    ``settings`` (tokenized for another model): then every segment is scored with its text only, so one
    figure never mixes two conditions.
    """
    if settings is None or any(s.chroma_settings != settings for s in opened):
        return None
    return chroma_inputs(config, spec, settings)


def _zips_of(tokens: str | Path) -> str | None:
    """The ZIP folder the token folder was made from (tokenize records it), if known."""
    record = Path(tokens) / "tokenize_config.json"
    try:
        return atomic.read_json(record).get("zips") if record.is_file() else None
    except (OSError, ValueError):
        return None


def require_chroma(tokens: str | Path, model_name: str) -> melody.ChromaSettings | None:
    """For a melody model, check that every shard holds its chroma; cheap (indices and configs only).

    Returns:
        The model's chroma settings, or None for a model without a melody input.

    Raises:
        UserError: shards without this chroma, with the command that adds it (codes kept).
    """
    settings = models.chroma_settings(model_name)
    paths = shards.list_shards(tokens)
    if settings is None or not paths:
        return settings  # no shards: the data check says "run tokenization first"
    lacking = [p for p in paths if shards.chroma_settings_of(shards.read_index(p)) != settings]
    if lacking:
        command = tokenize_chroma.command(tokens, model_name, _zips_of(tokens))
        raise UserError(
            f"{len(lacking)} of {len(paths)} token shards in {tokens} hold no chroma for {model_name} (first: "
            f"{lacking[0].name}), and a melody model trains on the chroma of its own audio. Add it to them "
            f"without encoding again (the codes are kept; the source ZIPs are read once more):\n  {command}\n"
            f"or in notebook 01: tokenize.run(tokenize.config_for(project, model=\"{model_name}\", add_chroma=True))"
        )
    return settings


def check_crop(crop_seconds: float, settings: melody.ChromaSettings, config) -> None:
    """Refuse crops longer than the chroma the model reads (``chroma_length`` frames: 30 s)."""
    seconds = config.chroma_length / settings.frame_rate
    if crop_seconds > seconds + 1e-9:
        raise UserError(f"crop_seconds {crop_seconds:g} is longer than the {seconds:.2f} s of melody this model "
                        f"reads ({config.chroma_length} chroma frames); use {int(seconds)} or less.")


def crop_rows(segment_rows: int, start: int, length: int, code_hop: int, chroma_hop: int) -> np.ndarray:
    """Chroma frame indices under code frames ``[start, start + length)`` of a segment.

    The first frame is the one at the crop's first sample, ``floor(start * code_hop / chroma_hop)``,
    and ``ceil(length * code_hop / chroma_hop)`` frames follow (what ``core.melody.window`` gives
    generation for the same stretch). Near a segment's end the last frame repeats (at most one).
    """
    first = start * code_hop // chroma_hop
    count = max(1, -(-length * code_hop // chroma_hop))
    return np.minimum(np.arange(first, first + count), segment_rows - 1)


@dataclasses.dataclass(frozen=True)
class CropChroma:
    """What ``CropDataset`` needs to give each crop its chroma, and drop it."""

    code_hop: int
    """Audio samples per code frame (640)."""
    chroma_hop: int
    """Audio samples per chroma frame (the feature extractor's hop, 4096)."""
    dropout: float
    """Probability of dropping the chroma alone (training crops only)."""

    def rows(self, shard: shards.Shard, index: int, start: int, length: int) -> np.ndarray:
        """The pitch classes of segment ``index``'s chroma under the crop (uint8, one per chroma frame)."""
        own = np.asarray(shard.segment_chroma(index))
        return own[crop_rows(len(own), start, length, self.code_hop, self.chroma_hop)]


def features(pitch_classes: Sequence[np.ndarray], chroma_length: int, num_chroma: int):
    """``input_features`` for a batch: each crop's chroma tiled to ``chroma_length`` frames, one-hot.

    The model tiles a short melody the same way (``repeat`` then cut), so a crop's features do not
    depend on what it is batched with.
    """
    tiled = np.stack([np.resize(np.asarray(p), chroma_length) for p in pitch_classes])
    return melody.one_hot(tiled, num_chroma)


def sample_melodies(val_set, count: int, seconds: float, frame_rate: int) -> list[dict[str, Any]]:
    """Melodies for training samples: the chroma of ``count`` validation crops (evenly spread), ``seconds`` long.

    Each is ``{"pitch_classes", "codes", "track", "start"}``: the codes let the sample folder hold
    the melody's own audio (decoded), to listen to next to what the model made of it.
    """
    if val_set.chroma is None or len(val_set) == 0:
        return []
    picks = np.linspace(0, len(val_set) - 1, min(count, len(val_set))).round().astype(int)
    out = []
    for index in dict.fromkeys(int(i) for i in picks):
        si, gi, _ = (int(v) for v in val_set.rows[index])
        shard = val_set.shards[si]
        segment = shard.segments[gi]
        frames = min(segment.frames, max(1, round(seconds * frame_rate)))
        rows = val_set.chroma.rows(shard, gi, 0, frames)
        out.append({"pitch_classes": rows, "codes": np.asarray(shard.segment_codes(gi)[:frames]),
                    "track": segment.track, "start": segment.start})
    return out
