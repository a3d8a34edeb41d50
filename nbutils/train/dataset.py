"""Training data over the token shards: crops, text, CFG dropout, a split by track, a resumable order.

* **Crops.** Each segment yields ``max(1, frames // crop_frames)`` crops per epoch. Training crops
  start at a random frame; validation crops are the segment's consecutive windows. A crop shorter
  than ``crop_frames`` (a short segment) is padded and the padding is masked out of the loss; a
  batch is cut to its longest crop, so short tracks and tails do not pay for a full crop.
* **Text.** A crop is trained with its track's description.
* **Chroma** (melody checkpoints only). A crop is also given the chroma under it, with its own
  dropout on top of the CFG dropout (``nbutils.train.melody``).
* **Classifier-free guidance dropout.** With probability ``cfg_dropout`` the description is
  dropped: the text is replaced by an empty one whose attention mask is zero, so the decoder sees
  all-zero text states -- exactly the "null" condition ``generate`` uses for guidance
  (``_prepare_text_encoder_kwargs_for_generation`` pads with ``zeros_like``) and the one
  audiocraft trains with (its T5 conditioner zeroes the mask of empty descriptions). Without it,
  guidance stops working after fine-tuning.
* **Split.** Validation holds whole source tracks, so no track has crops on both sides.
* **Order.** Per epoch a permutation derived from ``(seed, epoch)`` only; crop offsets and CFG
  decisions derive from ``(seed, epoch, index)``. Nothing depends on global random state, so a
  ``Cursor`` (epoch, position) is all a checkpoint needs to continue mid-epoch, bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from nbutils.core import atomic
from nbutils.core.errors import UserError
from nbutils.core.melody import null_rows
from nbutils.core.prompts import encode as encode_prompts
from nbutils.tokenize import shards

# audiocraft trains MusicGen with classifier_free_guidance.training_dropout = 0.3
# (config/conditioner/text2music.yaml in facebookresearch/audiocraft); we keep its default.
CFG_DROPOUT = 0.3
SPLIT_FILE = "split.json"
_CROP_SALT = 0x6372  # distinct random streams for crop offsets, CFG decisions, order and split
_ORDER_SALT = 0x6F72
_SPLIT_SALT = 0x7370


@dataclasses.dataclass
class Example:
    """One crop, ready to collate."""

    codes: np.ndarray
    """``(crop_frames, K)`` codes; rows past ``length`` are padding."""
    length: int
    """Real frames in ``codes``."""
    text: str
    """The description it is trained with ("" when dropped or missing)."""
    track: str
    """Source track id."""
    chroma: np.ndarray | None = None
    """Melody checkpoints: the crop's chroma as pitch-class indices (all 0 when dropped); else None."""


@dataclasses.dataclass
class Cursor:
    """Where the data stream is: the epoch and how many of its items were consumed."""

    epoch: int = 0
    position: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "position": int(self.position)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Cursor":
        return cls(epoch=int(values["epoch"]), position=int(values["position"]))


# ---------------------------------------------------------------------------------------------
# Split by track
# ---------------------------------------------------------------------------------------------


def split_tracks(tracks: Iterable[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Assign whole tracks to train or validation, deterministically for ``seed``.

    At least one track goes to validation when ``val_fraction > 0`` and there are two or more
    tracks; at least one always stays in training.
    """
    tracks = sorted(set(tracks))
    count = 0
    if val_fraction > 0 and len(tracks) >= 2:
        count = min(len(tracks) - 1, max(1, round(len(tracks) * val_fraction)))
    order = np.random.default_rng([seed, _SPLIT_SALT]).permutation(len(tracks))
    val = {tracks[i] for i in order[:count]}
    return {"train_tracks": [t for t in tracks if t not in val], "val_tracks": sorted(val)}


def write_split(out: Path, split: dict[str, list[str]]) -> None:
    atomic.write_json(Path(out) / SPLIT_FILE, split)


def track_of(segment: shards.Segment, shard: shards.Shard) -> str:
    """The segment's track id; older indices without one fall back to ``<shard>/<path>``."""
    return segment.track or f"{shard.index_path.stem}/{segment.path}"


def model_of_shards(tokens_dir: str | Path) -> str:
    """The model the shards in ``tokens_dir`` were tokenized with (what ``--model`` defaults to)."""
    paths = shards.list_shards(tokens_dir)
    if not paths:
        shards.open_all(tokens_dir)  # raises the "run tokenization first" message
    name = shards.read_index(paths[0]).get("model")
    if not name:
        raise UserError("The shards do not record their model; pass --model M.")
    return str(name)


def other_model_note(opened: Sequence[shards.Shard], model_name: str) -> str | None:
    """A note when the shards were tokenized with another model than the one trained."""
    recorded = {str(s.meta.get("model")) for s in opened if s.meta.get("model")}
    if not recorded or model_name in recorded:
        return None
    return (f"Note: the shards were tokenized with {', '.join(sorted(recorded))}; training {model_name}. "
            "That is fine when both use the same codec (all facebook/musicgen-* mono models do).")


def unlabelled_note(opened: Sequence[shards.Shard]) -> str | None:
    """A note counting the segments without a description (they teach the model to ignore text)."""
    segments = [s for shard in opened for s in shard.segments]
    empty = [s for s in segments if not (s.description or "").strip()]
    if not empty:
        return None
    return (f"Note: {len(empty)} of {len(segments)} segments ({len(empty) / len(segments):.0%}) have no "
            "description, so they train the model to ignore the prompt (like CFG dropout). To label them, "
            "write their descriptions in the token folder's descriptions.jsonl (notebook 01's descriptions step; "
            "no re-encoding), or tokenize with --describe missing for automatic ones.")


def short_segments_note(opened: Sequence[shards.Shard], crop_frames: int, frame_rate: int) -> str | None:
    """A note when every segment is shorter than a crop (each crop is then a whole segment)."""
    longest = max((s.frames for shard in opened for s in shard.segments), default=0)
    if longest >= crop_frames:
        return None
    return (f"Note: the token segments are at most {longest / frame_rate:g} s long, shorter than crop_seconds "
            f"({crop_frames / frame_rate:g} s): each crop is a whole segment.")


def sample_prompts(opened: Sequence[shards.Shard], split: dict[str, list[str]]) -> list[str]:
    """Up to 3 descriptions for training samples: the validation tracks', else the training tracks'."""
    found: list[str] = []
    for side in ("val_tracks", "train_tracks"):
        wanted = set(split[side])
        for shard in opened:
            for segment in shard.segments:
                text = segment.description
                if text and text not in found and track_of(segment, shard) in wanted:
                    found.append(text)
        if found:
            break
    return sorted(found)[:3] or ["music"]


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------


def open_shards(tokens_dir: str | Path, num_codebooks: int, sample_rate: int) -> list[shards.Shard]:
    """Open every committed shard (memory-mapped) and check it fits the model."""
    opened = shards.open_all(tokens_dir)
    shared = shards.check_compatible(opened, keys=("sample_rate", "num_codebooks", "config_hash"))
    if shared["num_codebooks"] != num_codebooks or shared["sample_rate"] not in (None, sample_rate):
        raise UserError(
            f"The shards in {tokens_dir} hold {shared['num_codebooks']} codebooks at "
            f"{shared['sample_rate']} Hz, but the model expects {num_codebooks} at {sample_rate} Hz. "
            "Tokenize with the same model family you train (mono vs stereo), or pick the matching --model."
        )
    return opened


def fingerprint(opened: Sequence[shards.Shard], *, chroma: bool = False) -> dict[str, str]:
    """``{shard name: codes sha256 + texts sha256}``: what "the same data" means when resuming.

    The texts count too: a shard whose descriptions were fixed trains a different model; so does
    the chroma for a melody model (``chroma=True``).
    """
    def texts(shard: shards.Shard) -> str:
        joined = "\n".join(f"{seg.track}\t{seg.start}\t{seg.description}" for seg in shard.segments)
        return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:16]

    def own(shard: shards.Shard) -> str:
        melody = f":{str(shard.meta['chroma']['sha256'])[:16]}" if chroma and shard.meta.get("chroma") else ""
        return f"{str(shard.meta.get('sha256'))[:16]}:{texts(shard)}{melody}"

    return {s.index_path.stem: own(s) for s in opened}


# ---------------------------------------------------------------------------------------------
# Crops
# ---------------------------------------------------------------------------------------------


class CropDataset:
    """The crops of one side of the split (train or validation).

    Args:
        opened: Shards from ``open_shards``.
        tracks: Track ids on this side.
        crop_frames: Frames per crop (``crop_seconds * frame_rate``).
        train: Random crops with CFG dropout (True) or fixed windows with full text (False).
        cfg_dropout: Probability of dropping the description (training only).
        seed: Base seed of every random decision.
        max_items: Keep at most this many crops, evenly spaced (used for validation).
        chroma: For a melody checkpoint, how crops get their chroma and drop it (``melody.CropChroma``).
    """

    def __init__(self, opened: Sequence[shards.Shard], tracks: Iterable[str], crop_frames: int, *,
                 train: bool, cfg_dropout: float = CFG_DROPOUT, seed: int = 0, max_items: int | None = None,
                 chroma=None):
        if crop_frames < 1:
            raise UserError("crop_seconds is too short: a crop needs at least one frame (1/50 s).")
        self.shards = list(opened)
        self.crop_frames = int(crop_frames)
        self.train = train
        self.cfg_dropout = float(cfg_dropout) if train else 0.0
        self.chroma = chroma
        self.seed = int(seed)
        wanted = set(tracks)
        rows = []  # (shard, segment, window) per crop
        for si, shard in enumerate(self.shards):
            for gi, segment in enumerate(shard.segments):
                if segment.frames < 1 or track_of(segment, shard) not in wanted:
                    continue
                for window in range(max(1, segment.frames // self.crop_frames)):
                    rows.append((si, gi, window))
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        if max_items is not None and len(self.rows) > max_items:
            keep = np.linspace(0, len(self.rows) - 1, max_items).round().astype(np.int64)
            self.rows = self.rows[keep]

    def __len__(self) -> int:
        return len(self.rows)

    def track(self, index: int) -> str:
        """The source track of crop ``index``."""
        si, gi, _ = (int(v) for v in self.rows[index])
        return track_of(self.shards[si].segments[gi], self.shards[si])

    def example(self, index: int, epoch: int = 0) -> Example:
        """Crop ``index`` of epoch ``epoch``; the same arguments always give the same crop."""
        si, gi, window = (int(v) for v in self.rows[index])
        shard = self.shards[si]
        segment = shard.segments[gi]
        spare = max(0, segment.frames - self.crop_frames)
        text = segment.description or ""
        rng, dropped = None, False
        if self.train:
            rng = np.random.default_rng([self.seed, _CROP_SALT, epoch, index])
            start = int(rng.integers(0, spare + 1))
            dropped = rng.random() < self.cfg_dropout  # every condition of the crop (its text, its chroma)
            if dropped:
                text = ""
        else:
            start = min(window * self.crop_frames, spare)
        codes = np.asarray(shard.segment_codes(gi)[start : start + self.crop_frames], dtype=np.int64)
        length = codes.shape[0]
        if length < self.crop_frames:
            codes = np.concatenate([codes, np.zeros((self.crop_frames - length, codes.shape[1]), np.int64)])
        chroma = None
        if self.chroma is not None:  # drawn after the text's decision: text-only runs keep their streams
            chroma = self.chroma.rows(shard, gi, start, length)
            if rng is not None and (rng.random() < self.chroma.dropout or dropped):
                chroma = null_rows(len(chroma))  # transformers' "no melody"
        return Example(codes=codes, length=length, text=text, track=track_of(segment, shard), chroma=chroma)


def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the items in ``epoch``: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, _ORDER_SALT, epoch]).permutation(size)


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Batch:
    """Model inputs for one micro-batch (tensors on CPU until ``to``)."""

    input_ids: Any
    attention_mask: Any
    decoder_input_ids: Any
    decoder_attention_mask: Any
    labels: Any
    tokens: int
    """Real (frame, codebook) targets in the batch, for tokens/s."""
    input_features: Any = None
    """Melody checkpoints: the crops' one-hot chroma ``(B, chroma_length, num_chroma)``; else None."""

    def to(self, device) -> "Batch":
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return Batch(**{k: v.to(device) if hasattr(v, "to") else v for k, v in fields.items()})

    def model_inputs(self) -> dict[str, Any]:
        inputs = {
            "input_ids": self.input_ids, "attention_mask": self.attention_mask,
            "decoder_input_ids": self.decoder_input_ids, "decoder_attention_mask": self.decoder_attention_mask,
        }
        if self.input_features is not None:
            inputs["input_features"] = self.input_features
        return inputs


class Collator:
    """Turns examples into a ``Batch``: tokenized text (null rows masked) and delay-pattern labels."""

    def __init__(self, tokenizer, pad_id: int, start_id: int, audio_channels: int = 1, *, chroma_length: int = 0,
                 num_chroma: int = 0):
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.start_id = start_id
        self.audio_channels = audio_channels
        self.chroma_length, self.num_chroma = chroma_length, num_chroma  # melody checkpoints (else 0)

    def __call__(self, examples: Sequence[Example]) -> Batch:
        import torch

        from nbutils.train import labels as L

        texts = [e.text for e in examples]
        enc = encode_prompts(self.tokenizer, texts)  # truncated to the text encoder's limit
        mask = enc["attention_mask"].clone()
        for row, text in enumerate(texts):
            if not text:
                mask[row] = 0  # the null condition: zero text states, as generate() uses for guidance
        lengths = torch.tensor([e.length for e in examples])
        # Crop padding only costs compute: cut the batch to its longest crop (short tracks and tails
        # would otherwise run at full crop length). The labels there were -100 anyway.
        longest = int(lengths.max())
        codes = torch.from_numpy(np.stack([e.codes[:longest] for e in examples]))
        labels = L.delay_labels(codes, lengths, self.pad_id, self.audio_channels)
        max_delay = L.delays(codes.shape[2], self.audio_channels)[-1]
        features = None
        if self.chroma_length:
            from nbutils.train import melody

            features = melody.features([e.chroma for e in examples], self.chroma_length, self.num_chroma)
        return Batch(
            input_ids=enc["input_ids"], attention_mask=mask,
            decoder_input_ids=L.decoder_inputs(labels, self.pad_id, self.start_id),
            decoder_attention_mask=L.decoder_attention_mask(lengths, labels.shape[1], max_delay),
            labels=labels, tokens=int(lengths.sum()) * codes.shape[2], input_features=features,
        )


class StepSampler:
    """Which items each process trains on at each optimizer step.

    One optimizer step consumes ``batch_size * grad_accum * world_size`` items (the effective
    batch) of the epoch order; micro-batch ``m`` of rank ``r`` takes the slice starting at
    ``(m * world_size + r) * batch_size``. An epoch has ``len(dataset) // effective`` steps (at
    least one; a dataset smaller than one effective batch is cycled); the remainder of an epoch
    is skipped, as with ``drop_last``.
    """

    def __init__(self, dataset: CropDataset, batch_size: int, grad_accum: int, world_size: int = 1,
                 rank: int = 0, seed: int = 0):
        if len(dataset) == 0:
            raise UserError("No training crops: every track went to validation or the shards are empty. "
                            "Tokenize more music or lower val_fraction.")
        self.dataset, self.seed = dataset, seed
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.world_size, self.rank = world_size, rank
        self.effective = batch_size * grad_accum * world_size
        self.steps_per_epoch = max(1, len(dataset) // self.effective)
        self._order_epoch, self._order = -1, np.empty(0, np.int64)

    def _order_of(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order, self._order_epoch = epoch_order(len(self.dataset), self.seed, epoch), epoch
        return self._order

    def indices(self, cursor: Cursor) -> list[list[int]]:
        """Dataset indices of this rank's micro-batches for the step starting at ``cursor``."""
        order = self._order_of(cursor.epoch)
        batches = []
        for micro in range(self.grad_accum):
            first = cursor.position + (micro * self.world_size + self.rank) * self.batch_size
            batches.append([int(order[(first + b) % len(order)]) for b in range(self.batch_size)])
        return batches

    def micro_batches(self, cursor: Cursor) -> list[list[Example]]:
        """The examples of this rank's micro-batches for the step starting at ``cursor``."""
        return [[self.dataset.example(i, cursor.epoch) for i in batch] for batch in self.indices(cursor)]

    def tracks(self, cursor: Cursor) -> list[str]:
        """Source tracks of the step starting at ``cursor``, every process's items (sorted, unique)."""
        order = self._order_of(cursor.epoch)
        return sorted({self.dataset.track(int(order[(cursor.position + i) % len(order)]))
                       for i in range(self.effective)})

    def advance(self, cursor: Cursor) -> Cursor:
        """The cursor after one optimizer step."""
        position = cursor.position + self.effective
        if position // self.effective >= self.steps_per_epoch:
            return Cursor(epoch=cursor.epoch + 1, position=0)
        return Cursor(epoch=cursor.epoch, position=position)
