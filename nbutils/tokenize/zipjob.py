"""One ZIP batch -> one token shard and one ledger line (the work unit of the tokenize stage).

``process_zip`` copies the ZIP to local scratch, classifies its members, decodes the audio in
background threads (``prefetch``) while the encoder batches segments (``encoder``), counts
every file's outcome, writes the shard atomically, appends the ledger line last, and empties
the scratch folder whatever happened. ``Stage`` holds what all ZIPs of a run share: the codec,
the batch settings, the metadata beside the ZIPs, the overall progress bar.

One bad member fails that member; one bad ZIP fails that ZIP, with its reason in the ledger,
and the run goes on to the next. A ZIP failure is *permanent* (corrupt, truncated: not retried
while the ZIP is unchanged) or *transient* (scratch disk full or unwritable, Drive I/O: retried
on the next run, with what to check). Any other exception from one ZIP is a bug: it is recorded
as that ZIP's failure with the exception's type, and retried on the next run. Only problems the
user must fix for every ZIP stop the run: a ``UserError``, and a full or read-only ``--out``
(``nbutils.core.diskerrors`` turns the latter into a message).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import posixpath
import shutil
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbutils.core import atomic, audio, devices, faults, melody, models, paths
from nbutils.core.errors import UserError
from nbutils.tokenize import archive, chroma, describe, ledger, metadata, notes, prefetch, shards

if TYPE_CHECKING:
    from nbutils.tokenize.stage import TokenizeConfig

PREFETCH_DEPTH = 2  # segments buffered per file being decoded


@dataclasses.dataclass
class ZipPlan:
    """One ZIP found in the ZIP folder, and what the ledger says about it."""

    path: Path
    state: str
    """``todo``, ``done`` or ``failed_before``."""
    audio_files: int = 0
    """Audio members in the central directory (0 for a ZIP that cannot be read)."""
    audio_bytes: int = 0


@dataclasses.dataclass
class Counts:
    """Figures of one ZIP or of the whole run."""

    files_ok: int = 0
    files_failed: int = 0
    files_skipped: int = 0
    entries_ignored: int = 0
    segments: int = 0
    frames: int = 0
    audio_seconds: float = 0.0
    silent_segments: int = 0
    silent_seconds: float = 0.0
    tail_seconds_dropped: float = 0.0

    def add(self, other: "Counts") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def files(self) -> int:
        return self.files_ok + self.files_failed + self.files_skipped

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for k in ("audio_seconds", "silent_seconds", "tail_seconds_dropped"):
            out[k] = round(out[k], 3)
        return out


@dataclasses.dataclass
class ZipResult:
    name: str
    status: str = ledger.DONE
    reason: str = ""
    permanent: bool = False
    """A failure that will repeat while the ZIP is unchanged (corrupt, truncated)."""
    counts: Counts = dataclasses.field(default_factory=Counts)
    sources: Counter = dataclasses.field(default_factory=Counter)
    failures: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    metadata_bad: list = dataclasses.field(default_factory=list)
    """Unusable lines of the ZIP's own metadata files (``metadata.BadLines``, also in ``notes``)."""
    warnings: list = dataclasses.field(default_factory=list)
    """What the user should look at (shown under the ZIP's line, kept in the ledger's notes)."""
    seconds: float = 0.0
    """Wall time for this ZIP, copy included (model loading excluded)."""
    copy_seconds: float = 0.0
    """Time spent copying the ZIP to scratch."""
    zip_bytes: int = 0


@dataclasses.dataclass
class _Track:
    entry: archive.Entry
    report: audio.TrackReport = dataclasses.field(default_factory=audio.TrackReport)
    pieces: list = dataclasses.field(default_factory=list)
    error: str = ""
    listener: Any = None
    """An ``analysis.Listener`` when the track gets an automatic description (``describe``)."""


class Stage:
    """What stays the same across the ZIPs of one run."""

    def __init__(self, cfg: "TokenizeConfig", settings: dict[str, Any], config_hash: str, total_files: int,
                 outside: metadata.Outside | None = None):
        """Load the codec and prepare the run.

        Args:
            cfg: The stage settings.
            settings: The code settings (stored in every shard's index).
            config_hash: Their hash (stored in shards and ledger lines).
            total_files: Audio files in the ZIPs to do (for the overall progress bar).
            outside: The metadata beside the ZIPs, if already read (else it is read here).
        """
        from nbutils.tokenize.encoder import Batcher, Encoder

        self.cfg = cfg
        self.settings = settings
        self.config_hash = config_hash
        self.tokens = Path(cfg.out)
        codec, self.spec = models.load_codec(cfg.model)
        self.chroma = chroma.settings_for(cfg.model, self.spec)  # a melody checkpoint's chroma settings, else None
        self.codec_id = models.codec_id(cfg.model)
        # CLAP before the encoder's batch size: it decides from the GPU memory that is left.
        self.describer = describe.Describer.load(cfg, self.spec.sample_rate, devices.pick_device(cfg.device or None))
        self.encoder = Encoder(codec, self.spec, device=cfg.device or None, precision=cfg.precision)
        batch = cfg.batch_size or self.encoder.default_batch(cfg.segment_seconds)
        self.full_samples = int(round(cfg.segment_seconds * self.spec.sample_rate))
        self.make_batcher = lambda: Batcher(self.encoder, full_samples=self.full_samples, batch_size=batch)
        self.outside = outside or metadata.Outside.load(cfg.zips, cfg.metadata or None)
        self.limit_left = cfg.limit or None
        self.work_root = paths.scratch_root(cfg.scratch) / f"tokenize-{os.getpid()}"
        self.overall = _bar(cfg, total=min(total_files, cfg.limit) if cfg.limit else total_files, desc="all ZIPs",
                            position=0)  # test mode stops after `limit` tracks

    def read_track(self, zf: zipfile.ZipFile, members: Path, item: tuple[int, _Track], emit) -> None:
        """Worker thread: extract one member, decode it, emit its segments, then its end.

        The member's own problems (corrupt, encrypted, undecodable, or an unexpected error while
        decoding it) fail the member; a full scratch disk or a ZIP that cannot be read is raised
        (the ZIP fails, to be retried).
        """
        index, track = item
        try:
            path = archive.extract(zf, track.entry, members, max_bytes=int(self.cfg.max_member_mb * 2**20))
            try:
                for piece in audio.iter_segments(
                    path, track.report, sample_rate=self.spec.sample_rate, channels=self.spec.audio_channels,
                    segment_seconds=self.cfg.segment_seconds, min_seconds=self.cfg.min_seconds,
                    min_tail_seconds=self.cfg.min_tail_seconds, silence_db=self.cfg.silence_db,
                ):
                    emit((index, piece, self.chroma_of(piece)))
            finally:
                path.unlink(missing_ok=True)  # scratch holds at most `workers` extracted files
        except (archive.MemberError, audio.AudioError) as err:
            track.error = str(err)
        except OSError:
            raise
        except Exception as err:  # noqa: BLE001 - one odd file must not stop its ZIP
            track.error = f"unexpected error while decoding ({type(err).__name__}: {err})"
        emit((index, None, None))

    def chroma_of(self, piece: audio.Piece):
        """A segment's chroma as pitch-class indices (melody checkpoints; computed in the decoding thread)."""
        return melody.pitch_classes(piece.audio, self.chroma) if self.chroma is not None else None


def _bar(cfg: "TokenizeConfig", **kwargs):
    from tqdm.auto import tqdm

    return tqdm(unit="file", dynamic_ncols=True, disable=not cfg.progress, **kwargs)


def remove_stale_scratch(root: Path) -> None:
    """Delete the scratch folders of tokenize runs that were killed (their process is gone)."""
    if not root.is_dir():
        return
    for folder in root.glob("tokenize-*"):
        pid = folder.name.split("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not atomic.pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _encode_tracks(stage: Stage, zf: zipfile.ZipFile, tracks: list[_Track], members: Path,
                   bar) -> dict[tuple[int, int], Any]:
    """Decode (in threads) and encode (here) every track; returns codes by (track, segment)."""
    batcher = stage.make_batcher()
    codes: dict[tuple[int, int], Any] = {}
    started, seconds = time.monotonic(), 0.0

    def work(item, emit):
        stage.read_track(zf, members, item, describe.heard(item[1].listener, emit))

    pieces = prefetch.ordered(enumerate(tracks), work, workers=stage.cfg.decode_workers, depth=PREFETCH_DEPTH)
    for index, piece, classes in pieces:
        track = tracks[index]
        if piece is not None:
            track.pieces.append((piece.start, piece.samples, classes))
            codes.update(batcher.add((index, len(track.pieces) - 1), piece.audio))
            continue
        stage.describer.finish(track.listener, failed=bool(track.error))  # tempo, key, tags: here, where CLAP runs
        seconds += track.report.seconds
        bar.update(1)
        stage.overall.update(1)
        speed = seconds / max(time.monotonic() - started, 1e-9)
        bar.set_postfix_str(f"{speed:.1f}x realtime", refresh=False)
    codes.update(batcher.flush())
    return codes


def _collect(stage: Stage, result: ZipResult, tracks: list[_Track], catalog: metadata.Catalog,
             codes: dict, writer: shards.ShardWriter | None) -> None:
    """Count every track's outcome and add the kept segments to the shard, in ZIP order."""
    c, sr = result.counts, stage.spec.sample_rate
    constant = []
    for index, track in enumerate(tracks):
        path, report = track.entry.path, track.report
        if track.error:
            c.files_failed += 1
            result.failures.append({"path": path, "reason": track.error})
            continue
        c.silent_segments += report.silent_segments
        c.silent_seconds += report.silent_seconds
        c.tail_seconds_dropped += report.tail_dropped_seconds
        if report.skipped:
            c.files_skipped += 1
            result.skipped.append({"path": path, "reason": report.skipped})
            continue
        text, source = describe.text_of(catalog, path, track.listener, writer, f"{result.name}/{path}", result.notes)
        c.files_ok += 1
        c.audio_seconds += report.kept_seconds
        for number, (start, samples, classes) in enumerate(track.pieces):
            frames = audio.frames_for(samples, stage.spec.hop_length)
            c.segments += 1
            c.frames += frames
            if writer is not None:
                segment = shards.Segment(path=path, start=round(start / sr, 6), frames=frames, description=text,
                                         source=source, track=f"{result.name}/{path}")
                writer.add(segment, codes[(index, number)], classes)
        note = notes.constant_note(notes.constant_share([codes[(index, n)] for n in range(len(track.pieces))]))
        if note:
            result.notes.append({"path": path, "reason": note})
            constant.append(path)
    result.sources = catalog.counts
    result.notes += catalog.notes
    if constant:
        _warn(result, f"{len(constant)} track(s) encode to nearly constant codes (first: {constant[0]}); "
                      "see the notes (tokenize.table), and listen to them.")


def _read_texts(zf: zipfile.ZipFile, entries: list[archive.Entry], result: ZipResult,
                catalog: metadata.Catalog) -> None:
    """Give the catalog the text members that can describe a track, one at a time.

    Those are the metadata files (first) and the ``<track>.json`` / ``<track>.txt`` beside an
    audio member; other text is never read. All of them together may read at most
    ``archive.TEXT_BUDGET_BYTES``: the rest are named in one warning.
    """
    stems = {posixpath.splitext(e.path)[0] for e in entries if e.kind == archive.AUDIO}
    wanted = [e for e in entries if e.kind == archive.TEXT
              and (metadata.is_metadata_name(e.path) or posixpath.splitext(e.path)[0] in stems)]
    wanted.sort(key=lambda e: not metadata.is_metadata_name(e.path))  # stable: ZIP order otherwise
    budget, over = archive.TextBudget(), []
    for entry in wanted:
        try:
            catalog.add(entry.path, archive.read_text(zf, entry, budget=budget))
        except archive.OverBudget:
            over.append(entry.path)
        except archive.MemberError as err:
            result.notes.append({"path": entry.path, "reason": str(err)})
    if over:
        _warn(result, f"{len(over)} text file(s) not read (first: {over[0]}): this ZIP's metadata and sidecars "
                      f"passed the {budget.total >> 20} MiB budget. Their tracks get another description; "
                      "put the descriptions in one metadata.jsonl beside the ZIPs instead.")


def _shard_meta(stage: Stage, plan: ZipPlan, zip_bytes: int) -> dict[str, Any]:
    return {
        "model": stage.cfg.model,
        "codec": stage.codec_id,
        **stage.spec.to_dict(),
        "zip": plan.path.name,
        "zip_bytes": zip_bytes,
        "config_hash": stage.config_hash,
        **stage.settings,
    }


def _warn(result: ZipResult, text: str) -> None:
    """A warning about the whole ZIP: under its line now, in the ledger's notes (and ``tokenize.table``) later."""
    result.warnings.append(text)
    result.notes.append({"path": "", "reason": f"warning: {text}"})


def _os_reason(err: OSError, scratch: Path) -> str:
    """Why a ZIP could not be staged: the scratch folder (a bad --scratch, a full disk) or the ZIP itself."""
    detail = f"{type(err).__name__}: {err}"
    in_scratch = bool(err.filename) and Path(os.path.abspath(err.filename)).is_relative_to(scratch)
    if in_scratch or err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):  # only scratch is written here
        return (f"could not write to the scratch folder {scratch} ({detail}): check --scratch (notebook: the "
                "project's scratch folder) and the free space there")
    return (f"could not read the ZIP ({detail}): check that it opens (on Drive: fully uploaded and synced); it is "
            "tried again on the next run")


def uncommit(index: Path) -> None:
    """Remove an old shard of a ZIP about to be encoded again (index first: it is the commit record)."""
    index.unlink(missing_ok=True)
    index.with_suffix(".npy").unlink(missing_ok=True)
    shards.chroma_path(index).unlink(missing_ok=True)


def _read_zip(stage: Stage, plan: ZipPlan, work: Path, result: ZipResult):
    """Stage, scan and encode one ZIP; returns ``(tracks, catalog, codes)``.

    Raises:
        zipfile.BadZipFile: the ZIP is corrupt or truncated.
        OSError: it could not be read or copied.
    """
    started = time.monotonic()
    local = archive.stage(plan.path, work, copy_zip=stage.cfg.copy_zip)
    result.copy_seconds = time.monotonic() - started
    with archive.open_zip(local) as zf:
        entries = archive.scan(zf)
        _look(result, entries, getattr(zf, "repairs", []))
        catalog = metadata.Catalog(plan.path.name, stage.outside, default=stage.cfg.default_description)
        _read_texts(zf, entries, result, catalog)
        for bad in catalog.bad:
            result.metadata_bad.append(dataclasses.replace(bad, file=f"{plan.path.name}/{bad.file}"))
            result.notes.append({"path": bad.file, "reason": f"metadata: {bad.short()}"})
            result.warnings.append(result.metadata_bad[-1].message())
        tracks = [_Track(e) for e in entries if e.kind == archive.AUDIO]
        if stage.limit_left is not None:  # test mode: only the first N tracks of the run
            tracks = tracks[: stage.limit_left]
            stage.limit_left -= len(tracks)
        stage.describer.attach(tracks, catalog)
        with _bar(stage.cfg, total=len(tracks), desc=plan.path.name[:28], position=1, leave=False) as bar:
            codes = _encode_tracks(stage, zf, tracks, work / "members", bar)
    return tracks, catalog, codes


def _look(result: ZipResult, entries: list[archive.Entry], repairs: list[str]) -> None:
    """Count and report what the directory alone shows: unsafe and unsupported members, nested
    ZIPs, colliding names, fields ``zipfix`` corrected."""
    result.counts.entries_ignored = sum(e.kind == archive.JUNK and not e.info.is_dir() for e in entries)
    for entry in (e for e in entries if e.kind == archive.UNSAFE):
        result.counts.files_failed += 1
        result.failures.append({"path": entry.path, "reason": entry.reason})
    unsupported = [e for e in entries if e.kind == archive.UNSUPPORTED]
    for entry in unsupported:  # recognisably audio, but libsndfile cannot decode it: say so, by name
        result.counts.files_skipped += 1
        result.skipped.append({"path": entry.path, "reason": entry.reason})
    if unsupported:
        formats = ", ".join(sorted({os.path.splitext(e.path)[1].lower() for e in unsupported}))
        _warn(result, f"{len(unsupported)} audio files in unsupported formats ({formats}) skipped: convert "
                      "them to wav/flac/mp3/ogg and replace the ZIP.")
    for warning in filter(None, [notes.nested_zips(entries), *notes.duplicates(entries)]):
        _warn(result, warning)
    result.notes += [{"path": "", "reason": f"read despite: {repair}"} for repair in repairs]
    if repairs:
        result.warnings.append(f"{len(repairs)} damaged directory field(s) corrected in memory (first: {repairs[0]}); "
                               "the other members were read normally. Re-create the ZIP to be safe.")


def _fail(result: ZipResult, err: Exception, scratch: Path) -> None:
    """Record why a ZIP failed as a whole: permanent (corrupt), transient (disk, I/O) or a bug."""
    result.status = ledger.FAILED
    if isinstance(err, (zipfile.BadZipFile, zipfile.LargeZipFile)):
        result.reason, result.permanent = f"corrupt or truncated ZIP ({err})", True
    elif isinstance(err, OSError):  # reading from Drive or copying to scratch: may work next time
        result.reason = _os_reason(err, scratch)
    else:
        result.reason = (f"unexpected error ({type(err).__name__}: {err}); this is a bug in nbutils, please report "
                         "it. The other ZIPs go on, and this one is tried again on the next run.")


def _run_zip(stage: Stage, plan: ZipPlan, work: Path, result: ZipResult):
    """``_read_zip``, with every failure of the ZIP recorded in ``result`` (then None is returned)."""
    try:
        return _read_zip(stage, plan, work, result)
    except UserError:
        raise  # a setting that fails every ZIP (the model's codebooks...): the user must fix it
    except Exception as err:  # noqa: BLE001 - one ZIP's failure, recorded, never the run's
        _fail(result, err, stage.work_root.parent)
        return None
    finally:
        if work.exists():  # emptied after every ZIP, failed or not
            shutil.rmtree(work, ignore_errors=True)


def process_zip(stage: Stage, plan: ZipPlan, number: int) -> ZipResult:
    """Tokenize one ZIP into its shard and ledger line (in test mode: only count and time it).

    A ZIP that fails as a whole is returned (and recorded) as failed with the reason; the
    scratch folder is emptied in every case.

    Raises:
        UserError: a problem of the settings, not of this ZIP.
        OSError: the token folder (``--out``) cannot be written.
    """
    result = ZipResult(name=plan.path.name)
    testing = stage.limit_left is not None
    started = time.monotonic()
    try:
        result.zip_bytes = plan.path.stat().st_size
    except OSError as err:  # deleted or unreadable since the plan was made
        _fail(result, err, stage.work_root.parent)
        read = None
    else:
        read = _run_zip(stage, plan, stage.work_root / f"zip-{number:04d}", result)  # ASCII, whatever the ZIP's name
    result.seconds = time.monotonic() - started
    if read is None:
        if not testing:
            ledger.append(stage.tokens, _record(stage, plan, result, None))
        return result
    try:
        _finish(stage, plan, result, read, testing)
    except (OSError, UserError):
        raise  # the token folder is full or read-only: the same for every ZIP
    except Exception as err:  # noqa: BLE001 - a bug while writing this ZIP's shard: record it, go on
        result.counts, result.failures, result.skipped = Counts(), [], []
        _fail(result, err, stage.work_root.parent)
        ledger.append(stage.tokens, _record(stage, plan, result, None))
    return result


def _finish(stage: Stage, plan: ZipPlan, result: ZipResult, read, testing: bool) -> None:
    """Count the outcomes, write the shard, and append the ledger line (last: it says "done")."""
    tracks, catalog, codes = read
    meta = None if testing else _shard_meta(stage, plan, result.zip_bytes)
    writer = None if testing else shards.ShardWriter(stage.tokens, plan.path.stem, meta, chroma=stage.chroma)
    _collect(stage, result, tracks, catalog, codes, writer)
    if not testing and not result.counts.files_ok:
        c = result.counts
        what = (f"{c.files_failed} failed, {c.files_skipped} skipped: see their reasons" if c.files
                else f"it holds no {', '.join(audio.AUDIO_EXTENSIONS)} files")
        _warn(result, f"no audio kept from this ZIP ({what}); it is recorded done with an empty shard. "
                      "Replace the ZIP with readable audio to tokenize it.")
    if writer is not None:
        writer.meta["description_sources"] = dict(result.sources)
        index = writer.commit()
        faults.point("before-ledger")
        ledger.append(stage.tokens, _record(stage, plan, result, shards.read_index(index)))  # last: "done"


def _record(stage: Stage, plan: ZipPlan, result: ZipResult, index: dict | None) -> dict[str, Any]:
    return {
        "zip": result.name,
        "status": result.status,
        "reason": result.reason,
        "permanent": result.permanent,
        "zip_bytes": result.zip_bytes,
        "config_hash": stage.config_hash,
        **result.counts.to_dict(),
        "description_sources": dict(result.sources),
        "seconds": round(result.seconds, 2),
        "shard": f"{shards.SHARD_DIR}/{plan.path.stem}.json" if index else None,
        "sha256": index["sha256"] if index else None,
        "failures": result.failures,
        "skipped": result.skipped,
        "notes": result.notes,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

