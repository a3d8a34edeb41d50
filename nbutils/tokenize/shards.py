"""Token shards: one per ZIP batch, written atomically, read memory-mapped.

A shard is two files in ``tokens/shards/``:

* ``<name>.npy`` -- every segment's EnCodec codes, concatenated along time, as one int16 array
  of shape ``(frames, num_codebooks)`` (frame-major, so a training crop is one contiguous read);
* ``<name>.json`` -- the index: per segment its source path inside the ZIP, start second, frame
  count and offset into the array; per track (``tracks``) its description and where the
  description came from, stored once however many segments the track has; what the automatic
  description measured per track (``analysis``: bpm, key, tags), when it ran; plus the sample rate,
  model id, codebook count and the sha256 and byte size of the ``.npy``. Shards of format 1 store
  the description in every segment; they are read as they are.
* ``<name>.chroma.npy`` -- only for melody checkpoints: every segment's chroma, one uint8 per
  chroma frame (the index of its pitch class: the features are one-hot), concatenated like the
  codes. The index's ``chroma`` entry holds the feature extractor's settings, the frame rate,
  each segment's frame count, and the file's sha256 and size. Shards of other models have
  neither, exactly as before; ``add_chroma`` gives an existing shard its chroma without
  touching its codes.

The ``.npy`` files are written first and the ``.json`` last, each through a temporary file and
``os.replace``. The ``.json`` is the commit record: a shard without it (killed mid-write) does
not exist for readers and is simply written again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from nbutils.core import atomic, faults
from nbutils.core.errors import UserError
from nbutils.core.melody import ChromaSettings

SHARD_FORMAT = "nbutils-shard/2"  # descriptions once per track (format 1: in every segment)
READABLE_FORMATS = ("nbutils-shard/1", SHARD_FORMAT)
PER_TRACK = ("description", "source")  # Segment fields stored in the index's ``tracks`` table
SHARD_DIR = "shards"
CODE_DTYPE = np.int16  # codebook ids are < 2048; int16 halves the size of int32
CHROMA_SUFFIX = ".chroma.npy"
CHROMA_DTYPE = np.uint8  # one pitch-class index per chroma frame (one-hot features): 1 byte per 128 ms
CHROMA_ENCODING = "pitch-class"


@dataclasses.dataclass
class Segment:
    """One contiguous piece of one track, as stored in a shard index."""

    path: str
    """Path of the source file inside its ZIP (POSIX separators)."""
    start: float
    """Start of the segment in the source track, in seconds."""
    frames: int
    """Number of code frames (50 per second for MusicGen)."""
    offset: int = 0
    """First frame of this segment in the shard's code array (set by ``ShardWriter``)."""
    description: str = ""
    """The text the track is trained with."""
    source: str = "default"
    """Where the description came from (metadata.jsonl, metadata.json, sidecar, txt, default)."""
    track: str = ""
    """Stable id of the source track (``<zip>/<path>``): segments of one track share it, which
    keeps a track on one side of the train / validation split."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def shard_dir(tokens_dir: str | os.PathLike) -> Path:
    return Path(tokens_dir) / SHARD_DIR


class ShardWriter:
    """Collects the segments of one ZIP and commits them as one shard.

    Codes are small next to audio (4 int16 per 640 samples: 1/320 of float32 audio), so a
    ZIP's codes fit in memory while its audio is streamed.
    """

    def __init__(self, tokens_dir: str | os.PathLike, name: str, meta: dict[str, Any],
                 chroma: ChromaSettings | None = None):
        self.dir = shard_dir(tokens_dir)
        self.name = name
        self.meta = dict(meta)
        self.chroma = chroma
        self.segments: list[Segment] = []
        self.analysis: dict[str, dict[str, Any]] = {}
        """Per track id: what the automatic description measured (bpm, key, tags); see ``descriptions``."""
        self._codes: list[np.ndarray] = []
        self._chroma: list[np.ndarray] = []
        self._frames = 0

    def add(self, segment: Segment, codes: np.ndarray, chroma: np.ndarray | None = None) -> None:
        """Append one segment's codes, shape ``(frames, num_codebooks)`` (and, for a melody
        checkpoint, its chroma as pitch-class indices, ``melody.pitch_classes``)."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] != segment.frames:
            raise ValueError(f"codes of shape {codes.shape} do not match {segment.frames} frames")
        if codes.size and (codes.min() < 0 or codes.max() > np.iinfo(CODE_DTYPE).max):
            raise ValueError("code ids out of int16 range")
        if (chroma is None) != (self.chroma is None):
            raise ValueError("a melody shard needs every segment's chroma, another shard none")
        segment.offset = self._frames
        self._frames += segment.frames
        self.segments.append(segment)
        self._codes.append(codes.astype(CODE_DTYPE, copy=False))
        if chroma is not None:
            self._chroma.append(_checked_chroma(chroma, self.chroma))

    def commit(self) -> Path:
        """Write the chroma (melody shards), ``.npy``, then ``.json`` atomically; return the index path."""
        width = self._codes[0].shape[1] if self._codes else int(self.meta.get("num_codebooks", 0))
        codes = np.concatenate(self._codes) if self._codes else np.zeros((0, width), CODE_DTYPE)
        chroma = write_chroma(self.dir, self.name, self.chroma, self._chroma) if self.chroma else {}
        npy = self.dir / f"{self.name}.npy"
        with atomic.atomic_path(npy) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, codes)
                faults.point("mid-npy", torn=fh)  # crash tests only (see nbutils.faults)
        faults.point("after-npy")
        index = {
            "format": SHARD_FORMAT,
            **self.meta,
            "name": self.name,
            "frames": int(codes.shape[0]),
            "num_codebooks": int(width),
            "nbytes": npy.stat().st_size,
            "sha256": sha256_file(npy),
            **chroma,
            **({"analysis": self.analysis} if self.analysis else {}),
            **_per_track(self.segments),
        }
        json_path = self.dir / f"{self.name}.json"
        atomic.write_json(json_path, index)
        return json_path


# ---------------------------------------------------------------------------------------------
# Chroma (melody checkpoints)
# ---------------------------------------------------------------------------------------------


def _checked_chroma(chroma: np.ndarray, settings: ChromaSettings) -> np.ndarray:
    chroma = np.asarray(chroma)
    if chroma.ndim != 1 or (chroma.size and (chroma.min() < 0 or chroma.max() >= settings.num_chroma)):
        raise ValueError(f"chroma must be pitch-class indices below {settings.num_chroma}, one per frame")
    return chroma.astype(CHROMA_DTYPE, copy=False)


def chroma_path(index_path: str | os.PathLike) -> Path:
    """The chroma file of a shard, beside its codes: ``<name>.chroma.npy``."""
    index_path = Path(index_path)
    return index_path.with_name(index_path.stem + CHROMA_SUFFIX)


def write_chroma(folder: Path, name: str, settings: ChromaSettings, rows: list[np.ndarray]) -> dict[str, Any]:
    """Write a shard's chroma file atomically; return its index entry (``{"chroma": ...}``)."""
    array = np.concatenate(rows) if rows else np.zeros(0, CHROMA_DTYPE)
    path = folder / f"{name}{CHROMA_SUFFIX}"
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array.astype(CHROMA_DTYPE, copy=False))
    return {"chroma": {
        **settings.to_dict(), "frame_rate": settings.frame_rate, "encoding": CHROMA_ENCODING,
        "dtype": np.dtype(CHROMA_DTYPE).name, "frames": int(array.shape[0]),
        "segment_frames": [int(r.shape[0]) for r in rows], "nbytes": path.stat().st_size, "sha256": sha256_file(path),
    }}


def chroma_settings_of(meta: dict[str, Any]) -> ChromaSettings | None:
    """The chroma settings a shard index records, or None for a shard without chroma."""
    block = meta.get("chroma")
    if not block:
        return None
    names = ("sample_rate", "n_fft", "hop_length", "num_chroma")
    return ChromaSettings(**{k: int(block[k]) for k in names})


def add_chroma(index_path: str | os.PathLike, settings: ChromaSettings, rows: list[np.ndarray]) -> None:
    """Give a committed shard its chroma (one pitch-class array per segment, in index order).

    The codes are not touched: the chroma file is written, then the index (the commit record)
    is rewritten with its entry, each atomically. A kill in between leaves the old index, which
    reads as a shard without chroma.
    """
    index_path = Path(index_path)
    index = read_index(index_path)
    if len(rows) != len(index["segments"]):
        raise ValueError(f"{len(rows)} chroma arrays for {len(index['segments'])} segments")
    index.update(write_chroma(index_path.parent, index_path.stem, settings,
                              [_checked_chroma(r, settings) for r in rows]))
    faults.point("after-chroma")
    atomic.write_json(index_path, index)


def _per_track(segments: list[Segment]) -> dict[str, Any]:
    """``segments`` without their descriptions, and ``tracks``: each track's description, once.

    A segment whose text differs from its track's first segment (only possible when segments
    were written without a track id) keeps its own.
    """
    tracks: dict[str, dict[str, str]] = {}
    rows = []
    for segment in segments:
        row = dataclasses.asdict(segment)
        shared = {k: row.pop(k) for k in PER_TRACK}
        if tracks.setdefault(segment.track or segment.path, shared) != shared:
            row.update(shared)
        rows.append(row)
    return {"tracks": tracks, "segments": rows}


def _segments(index: dict[str, Any]) -> list[Segment]:
    """The ``Segment``s of an index of either format (descriptions filled in from ``tracks``)."""
    tracks = index.pop("tracks", {})
    out = []
    for row in index.pop("segments"):
        shared = {} if "description" in row else tracks.get(row.get("track") or row["path"], {})
        out.append(Segment(**{**shared, **row}))
    return out


@dataclasses.dataclass
class Shard:
    """A committed shard: its index, its codes and its chroma (if any), memory-mapped (nothing read until sliced)."""

    index_path: Path
    meta: dict[str, Any]
    segments: list[Segment]
    codes: np.ndarray
    chroma: np.ndarray | None = None
    """Pitch-class index per chroma frame, all segments concatenated (melody shards), else None."""

    def segment_codes(self, i: int) -> np.ndarray:
        s = self.segments[i]
        return self.codes[s.offset : s.offset + s.frames]

    @property
    def chroma_settings(self) -> ChromaSettings | None:
        return chroma_settings_of(self.meta)

    def segment_chroma(self, i: int) -> np.ndarray:
        """Segment ``i``'s chroma frames (pitch-class indices); ``ValueError`` for a shard without chroma."""
        if self.chroma is None:
            raise ValueError(f"shard {self.index_path.stem} has no chroma")
        start, end = self._chroma_bounds[i], self._chroma_bounds[i + 1]
        return self.chroma[start:end]

    @functools.cached_property
    def _chroma_bounds(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.meta["chroma"]["segment_frames"], dtype=np.int64)])


def read_index(index_path: str | os.PathLike) -> dict[str, Any]:
    index = atomic.read_json(index_path)
    if index.get("format") not in READABLE_FORMATS:
        raise UserError(f"{index_path} is not an nbutils shard index (format {index.get('format')!r}).")
    return index


def read_segments(index_path: str | os.PathLike) -> tuple[dict[str, Any], list[Segment]]:
    """A committed index's metadata and segments, whether or not its codes are intact."""
    index = read_index(index_path)
    return index, _segments(index)


def is_complete(index_path: str | os.PathLike, *, full: bool = False) -> bool:
    """True if the shard's index exists and its ``.npy`` has the recorded size (and hash if ``full``)."""
    index_path = Path(index_path)
    try:
        index = read_index(index_path)
    except (OSError, ValueError, UserError):
        return False
    npy = index_path.with_suffix(".npy")
    if not npy.exists() or npy.stat().st_size != index["nbytes"]:
        return False
    chroma = index.get("chroma")
    if chroma and (not chroma_path(index_path).exists() or chroma_path(index_path).stat().st_size != chroma["nbytes"]):
        return False
    if chroma and full and sha256_file(chroma_path(index_path)) != chroma["sha256"]:
        return False
    return not full or sha256_file(npy) == index["sha256"]


def open_shard(index_path: str | os.PathLike, *, verify: bool = False) -> Shard:
    """Open a shard memory-mapped. ``verify=True`` also checks the sha256 (reads the whole file)."""
    index_path = Path(index_path)
    if not is_complete(index_path, full=verify):
        raise UserError(
            f"Shard {index_path.stem} is incomplete or corrupt. Re-run tokenization on the same "
            "folder: it re-encodes only this ZIP."
        )
    index = read_index(index_path)
    codes = np.load(index_path.with_suffix(".npy"), mmap_mode="r")
    chroma = np.load(chroma_path(index_path), mmap_mode="r") if index.get("chroma") else None
    segments = _segments(index)
    return Shard(index_path=index_path, meta=index, segments=segments, codes=codes, chroma=chroma)


def list_shards(tokens_dir: str | os.PathLike) -> list[Path]:
    """Index paths of the committed shards in ``tokens_dir``, sorted by name."""
    folder = shard_dir(tokens_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))


def open_all(tokens_dir: str | os.PathLike, *, verify: bool = False) -> list[Shard]:
    """Open every committed shard; ``UserError`` if there is none."""
    paths = list_shards(tokens_dir)
    if not paths:
        raise UserError(
            f"No token shards in {tokens_dir}. Run tokenization first "
            "(notebook 01, or `python -m nbutils tokenize --zips DIR --out DIR`)."
        )
    return [open_shard(p, verify=verify) for p in paths]


COMPATIBLE = ("model", "sample_rate", "num_codebooks", "config_hash")


def check_compatible(shards: Iterable[Shard], keys: Iterable[str] = COMPATIBLE) -> dict:
    """All shards must come from the same model setup and tokenize settings; return the shared values.

    ``config_hash`` is the hash of the settings that change the codes (segment length, silence
    threshold...): a folder whose shards disagree on it mixes two tokenize runs' settings.
    """
    shards = list(shards)
    first = {k: shards[0].meta.get(k) for k in keys}
    for shard in shards[1:]:
        for k in keys:
            if shard.meta.get(k) == first[k]:
                continue
            a, b = shards[0].index_path.name, shard.index_path.name
            if k == "config_hash":
                raise UserError(f"Shards {a} and {b} were tokenized with different settings (segment length, "
                                f"silence threshold...: config hash {first[k]} vs {shard.meta.get(k)}), so the "
                                "folder mixes two runs' codes. Tokenize into a new folder with one setting.")
            raise UserError(f"Shards disagree on {k}: {a} has {first[k]!r}, {b} has {shard.meta.get(k)!r}. "
                            "Keep one model's tokens per folder.")
    return first
