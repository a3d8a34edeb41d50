"""The held-out reference: audio of training tracks the adapter never saw, the style it should have learned.

Held-out segments are those of the validation tracks in the adapter's training run
(``split.json``), else a fixed sample of tracks. Their audio is read from the source ZIP the
way tokenization read it (``SourceAudio``: ``tokenize.archive`` finds the member under its
repaired, NFC-normalised name -- the name the shard index stores -- and extracts it with its
size cap and CRC check; ``core.audio.load`` decodes the segment with the same resampler and
channel rule). A segment whose source cannot be read is decoded from the shard's codes with the
model's EnCodec instead, and the reason is counted in ``Reference.why_decoded``, never dropped.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from nbutils.core import atomic, audio
from nbutils.core.errors import UserError
from nbutils.tokenize import archive, shards

NO_ZIPS = "no ZIP folder given (zips)"


@dataclasses.dataclass
class Reference:
    """Held-out training audio: the style the LoRA should have learned."""

    audio: list[np.ndarray]
    tracks: list[str]
    origins: list[str]
    """Per segment: ``source`` (read from its ZIP) or ``decoded`` (from the shard's codes)."""
    selection: str
    """How the segments were chosen (validation split of a run, or a fixed sample)."""
    why_decoded: dict[str, int] = dataclasses.field(default_factory=dict)
    """Why segments were decoded instead of read from their source, and how many each time."""
    descriptions: list[str] = dataclasses.field(default_factory=list)
    """Per segment: its track's description (the text of a melody evaluation's clip)."""


def facts(reference: Reference | None) -> dict:
    """What ``results.json`` says about the reference (``None``: there were no token shards)."""
    if reference is None:
        return {"selection": "none (no token shards): no style similarity or Fréchet distance", "segments": None,
                "decoded": 0, "from_source": 0, "why_decoded": {}}
    return {"selection": reference.selection, "segments": len(reference.origins) or None,
            "decoded": reference.origins.count("decoded"), "from_source": reference.origins.count("source"),
            "why_decoded": reference.why_decoded}


def run_folder(location: str) -> Path | None:
    """The training run folder an adapter lives in (the one with ``split.json``), if any."""
    path = Path(location)
    for folder in [path, *list(path.parents)[:3]]:
        if (folder / "split.json").is_file():
            return folder
    return None


def _track_rank(track: str) -> str:
    return hashlib.sha256(track.encode()).hexdigest()


def held_out_tracks(all_shards: list[shards.Shard], run: Path | None) -> tuple[set[str], str]:
    """The held-out tracks and how they were chosen: the validation tracks of the run's
    ``split.json`` (those in these shards), else a fixed 20 % of the tracks."""
    present = {s.track for shard in all_shards for s in shard.segments}
    if run is not None:
        val = set(atomic.read_json(run / "split.json").get("val_tracks", [])) & present
        if val:
            return val, f"validation tracks of {run / 'split.json'}"
    # no run, or its validation tracks are not in these shards: a fixed 20% of tracks
    tracks = sorted(present, key=_track_rank)
    keep = set(tracks[: max(1, len(tracks) // 5)])
    return keep, f"fixed sample of {len(keep)} of {len(tracks)} tracks (no usable split.json)"


def held_out_segments(all_shards: list[shards.Shard], run: Path | None, limit: int) -> tuple[list, str]:
    """``[(shard, segment index)]`` of held-out segments, evenly spread, and how they were chosen."""
    tracks, how = held_out_tracks(all_shards, run)
    return spread([(s, i) for s in all_shards for i in range(len(s.segments)) if s.segments[i].track in tracks],
                  limit), how


def spread(items: list, limit: int) -> list:
    """At most ``limit`` of ``items``, evenly spread (all of them when ``limit`` is 0)."""
    if limit and len(items) > limit:
        return [items[int(round(j))] for j in np.linspace(0, len(items) - 1, limit)]
    return items


class SourceAudio:
    """Segments cut from their source files inside the ZIPs in ``zips``, read as tokenization read them.

    Each ZIP is opened and scanned once; a member is extracted into a scratch folder (one at a
    time; consecutive segments of a track share it) and deleted when the next one is needed or
    the reader closes. Use as a context manager.
    """

    def __init__(self, zips: str | Path, *, max_bytes: int = int(archive.MAX_MEMBER_MB * 2**20)):
        self.zips = Path(zips).expanduser()
        self.max_bytes = max_bytes
        self.scratch = Path(tempfile.mkdtemp(prefix="nbutils-eval-"))  # local disk, like tokenize's scratch
        self._zips: dict[str, tuple[zipfile.ZipFile, dict[str, archive.Entry]] | str] = {}
        self._member: tuple[tuple[str, str], Path] | None = None

    def __enter__(self) -> SourceAudio:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for opened in self._zips.values():
            if not isinstance(opened, str):
                opened[0].close()
        self._zips.clear()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _open(self, zip_name: str) -> tuple[zipfile.ZipFile, dict[str, archive.Entry]] | str:
        """The open ZIP and its audio members by normalised path, or why it cannot be read."""
        if zip_name not in self._zips:
            found = next((c for c in (self.zips / zip_name, self.zips / f"{zip_name}.zip") if c.is_file()), None)
            if not zip_name or found is None:
                self._zips[zip_name] = f"ZIP not found in {self.zips}"
            else:
                try:
                    zf = archive.open_zip(found)
                    members: dict[str, archive.Entry] = {}
                    for entry in archive.scan(zf):
                        if entry.kind == archive.AUDIO:
                            members.setdefault(entry.path, entry)
                    self._zips[zip_name] = (zf, members)
                except (zipfile.BadZipFile, OSError) as err:
                    self._zips[zip_name] = f"ZIP unreadable ({err})"
        return self._zips[zip_name]

    def _extract(self, zip_name: str, path: str) -> Path | str:
        """The member ``path`` of ``zip_name`` extracted to scratch, or why it cannot be."""
        key = (zip_name, archive.normalize(path))
        if self._member and self._member[0] == key:
            return self._member[1]
        if self._member:
            self._member[1].unlink(missing_ok=True)
            self._member = None
        opened = self._open(zip_name)
        if isinstance(opened, str):
            return opened
        zf, members = opened
        entry = members.get(key[1])
        if entry is None:
            return "file not found in its ZIP"
        try:
            file = archive.extract(zf, entry, self.scratch, max_bytes=self.max_bytes)
        except archive.MemberError as err:
            return f"ZIP member {err}"
        self._member = (key, file)
        return file

    def segment(self, zip_name: str, segment: shards.Segment, seconds: float, sample_rate: int,
                channels: int) -> np.ndarray | str:
        """``seconds`` of ``segment`` from its source as float32 ``(samples, channels)``, or why not."""
        file = self._extract(zip_name, segment.path)
        if isinstance(file, str):
            return file
        try:
            wave = audio.load(file, sample_rate=sample_rate, channels=channels, start=segment.start, seconds=seconds)
        except audio.AudioError as err:
            return f"source audio unreadable ({err})"
        return wave.T if wave.shape[1] else "source audio shorter than the segment"


def _decoded(pipe, shard: shards.Shard, index: int, seconds: float) -> np.ndarray:
    """The segment's audio decoded from its codes with the model's EnCodec, ``(samples, channels)``."""
    import torch

    from nbutils.generate import sampling

    spec = pipe.spec
    if shard.meta.get("num_codebooks") != spec.num_codebooks:
        raise UserError(
            f"The shards hold {shard.meta.get('num_codebooks')} codebooks, the model {spec.num_codebooks}: "
            f"they were tokenized for another model ({shard.meta.get('model')}). Pass --zips with the source "
            "ZIPs, or the tokens of this model."
        )
    codes = np.asarray(shard.segment_codes(index)[: int(round(seconds * spec.frame_rate))])
    return sampling.decode(pipe.model, torch.from_numpy(codes.T.astype(np.int64)).to(pipe.device)).T.numpy()


def reference_audio(cfg, pipe, all_shards: list[shards.Shard], run: Path | None) -> Reference:
    """Audio of the held-out segments: from their source when ``cfg.zips`` has it, else decoded codes.

    Args:
        cfg: The ``EvalConfig`` (``max_reference``, ``reference_seconds``, ``zips``, ``max_member_mb``).
        pipe: The loaded ``generate.Pipeline`` (its spec, and its EnCodec to decode).
        all_shards: The token shards; ``run``: the adapter's training run folder (its split), or None.
    """
    chosen, how = held_out_segments(all_shards, run, cfg.max_reference)
    spec = pipe.spec
    reference = Reference(audio=[], tracks=[], origins=[], selection=how)
    why: collections.Counter[str] = collections.Counter()
    source = SourceAudio(cfg.zips, max_bytes=int(cfg.max_member_mb * 2**20)) if cfg.zips else None
    try:
        for shard, index in chosen:
            segment = shard.segments[index]
            seconds = min(cfg.reference_seconds, segment.frames / spec.frame_rate)
            # the shard index names its ZIP; segment tracks are "<zip>/<path inside it>"
            zip_name = shard.meta.get("zip") or segment.track.split("/", 1)[0]
            wave = (source.segment(zip_name, segment, seconds, spec.sample_rate, spec.audio_channels) if source
                    else NO_ZIPS)
            origin = "source"
            if isinstance(wave, str):
                why[wave] += 1
                wave, origin = _decoded(pipe, shard, index, seconds), "decoded"
            reference.audio.append(wave)
            reference.origins.append(origin)
            reference.tracks.append(segment.track)
            reference.descriptions.append(segment.description or "")
    finally:
        if source is not None:
            source.close()
    reference.why_decoded = dict(why)
    if source is not None and why:
        print(f"{sum(why.values())} held-out segment(s) were decoded from the shards instead of read from "
              f"{cfg.zips}: " + "; ".join(f"{reason} ({n})" for reason, n in why.items()))
    return reference
