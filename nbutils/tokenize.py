"""Stage 1: tokenize ZIP batches of audio into EnCodec token shards, one shard per ZIP.

For each ZIP, one at a time: copy it to local scratch, classify its members (junk and unsafe
entries never reach the disk), extract and decode the audio in background threads while the
encoder works, cut long tracks into segments, encode them in batches, write the ZIP's shard
(codes + index) atomically, append a ``done`` line to the ledger, and empty the scratch.

Re-running continues: ZIPs the ledger records as done (same settings, same ZIP, intact shard)
are skipped without loading the model. ``--limit N`` is a dry run on N tracks that measures the
throughput and prints the ETA for everything, and leaves nothing that reads as done.

    python -m nbutils tokenize --zips DIR --out DIR [--model M] [--metadata FILE]
        [--default-description TEXT] [--segment-seconds S] [--limit N]

The last stdout line is a JSON summary (``zips_done``, ``zips_skipped``, ``zips_failed``,
``files_ok``, ``files_failed``, ``files_skipped``, ``segments``, ``audio_seconds``, ``frames``...).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
import typing
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from nbutils import archive, atomic, audio, faults, ledger, metadata, models, prefetch, shards, tracking
from nbutils.config import add_arguments, differences, from_args, option
from nbutils.errors import UserError

DEFAULT_MODEL = "facebook/musicgen-small"
SETTINGS_FILE = "tokenize_config.json"
TOKENIZER_VERSION = 1  # bump when a change to this stage changes the codes it writes
# Settings that change the codes: a folder tokenized with other values must not be mixed.
CODE_KEYS = ("model", "segment_seconds", "min_seconds", "min_tail_seconds", "silence_db", "tokenizer_version")
# Settings that change only the text: a change is allowed, with a warning.
TEXT_KEYS = ("default_description", "metadata")
PREFETCH_DEPTH = 2  # segments buffered per file being decoded
MAX_LISTED_FAILURES = 100  # failures listed in the JSON summary (the ledger keeps them all)


@dataclasses.dataclass
class TokenizeConfig:
    """Settings of the tokenize stage (CLI options, notebook 01 parameters)."""

    zips: str = option("", "Folder with the ZIP batches (and an optional metadata.jsonl beside them).")
    out: str = option("", "Token folder: shards/, ledger.jsonl and tokenize_config.json are written here.")
    model: str = option(DEFAULT_MODEL, "MusicGen whose EnCodec encodes the audio: Hub id, local "
                        "save_pretrained folder, or 'tiny'.")
    metadata: str = option("", "A metadata.jsonl / metadata.json with the descriptions (default: the one "
                           "beside the ZIPs, if any).")
    default_description: str = option("", "Text for tracks no metadata describes (e.g. a trigger word).")
    segment_seconds: float = option(audio.SEGMENT_SECONDS, "Long tracks are cut into segments this long (s).")
    min_tail_seconds: float = option(audio.MIN_TAIL_SECONDS, "A track's last partial segment is kept when "
                                     "at least this long (s).")
    min_seconds: float = option(audio.MIN_SECONDS, "Files shorter than this are skipped (s).")
    silence_db: float = option(audio.SILENCE_DB, "Segments whose peak is below this level are silent and "
                               "skipped (dBFS).")
    limit: int = option(0, "Test mode: process only N tracks, keep nothing as done, print throughput and the "
                        "ETA for all ZIPs (0: process everything).")
    batch_size: int = option(0, "Segments per EnCodec batch (0: 16 on a GPU, 2 on a CPU).")
    workers: int = option(2, "Threads that extract, decode and resample the next files while the encoder works.")
    device: str = option("", "Device for the encoder: cuda, cpu, ... (empty: the GPU if there is one).")
    precision: str = option("auto", "auto (bf16/fp16 autocast on a GPU, float32 on a CPU), fp32, bf16 or fp16.")
    scratch: str = option("", "Local folder for ZIP copies and extracted files, emptied after each ZIP "
                          "(empty: /content/scratch on Colab, the temp folder elsewhere).")
    copy_zip: bool = option(True, "Copy each ZIP to scratch first (fast on Drive); --no-copy-zip reads "
                            "members from the ZIP where it is.")
    max_member_mb: float = option(archive.MAX_MEMBER_MB, "Files inside a ZIP larger than this are refused "
                                  "(MiB; zip-bomb guard).")
    retry_failed: bool = option(False, "Also retry ZIPs that failed before and have not changed since.")
    progress: bool = option(True, "Show progress bars (files per second and ETA, per ZIP and overall).")

    def __post_init__(self) -> None:
        # A notebook's `SEGMENT_SECONDS = 30` and the CLI's 30.0 must be the same setting (and hash).
        for name, kind in typing.get_type_hints(type(self)).items():
            if kind in (int, float) and not isinstance(getattr(self, name), bool):
                setattr(self, name, kind(getattr(self, name)))
        if self.segment_seconds <= 0:
            raise UserError(f"segment_seconds must be positive (got {self.segment_seconds}).")
        if not 0 <= self.min_seconds <= self.segment_seconds:
            raise UserError(f"min_seconds ({self.min_seconds}) must be between 0 and segment_seconds "
                            f"({self.segment_seconds}).")
        if not 0 <= self.min_tail_seconds <= self.segment_seconds:
            raise UserError(f"min_tail_seconds ({self.min_tail_seconds}) must be between 0 and "
                            f"segment_seconds ({self.segment_seconds}).")
        if self.limit < 0 or self.batch_size < 0 or self.workers < 1:
            raise UserError("limit and batch_size must be >= 0 and workers >= 1.")


# ---------------------------------------------------------------------------------------------
# The token folder's settings: never mix codes made with different settings
# ---------------------------------------------------------------------------------------------


def code_settings(cfg: TokenizeConfig) -> dict[str, Any]:
    """The settings that decide the codes (what a token folder must agree on)."""
    values = {k: getattr(cfg, k) for k in CODE_KEYS if k != "tokenizer_version"}
    return {**values, "tokenizer_version": TOKENIZER_VERSION}


def settings_hash(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _mismatch(folder: Path, diffs: list[str]) -> UserError:
    return UserError(
        f"The token folder {folder} was made with other settings that change the codes "
        f"({'; '.join(diffs)}). Mixing them would give training incompatible tokens. To keep both, "
        f"pass a new --out folder (notebook: another PROJECT_ROOT); to start over with the new "
        f"settings, delete {folder}; or run again with the folder's settings."
    )


def check_folder(cfg: TokenizeConfig, *, write: bool) -> list[str]:
    """Refuse a token folder made with other code settings; warn about changed text settings.

    Returns:
        Warnings to show (text settings that changed).

    Raises:
        UserError: the folder holds codes made with other model / segment settings.
    """
    folder = Path(cfg.out)
    path = folder / SETTINGS_FILE
    code = code_settings(cfg)
    text = {k: getattr(cfg, k) for k in TEXT_KEYS}
    warnings: list[str] = []
    if path.exists():
        saved = atomic.read_json(path)
        diffs = differences(saved.get("code", {}), code, CODE_KEYS)
        if diffs:
            raise _mismatch(folder, diffs)
        changed = differences(saved.get("text", {}), text, TEXT_KEYS)
        if changed:
            warnings.append(f"Description settings changed ({'; '.join(changed)}): ZIPs tokenized before keep "
                            "their texts, new ZIPs get the new ones.")
    else:
        for index in shards.list_shards(folder):  # settings file deleted, shards kept
            meta = shards.read_index(index)
            if meta.get("config_hash") != settings_hash(code):
                old = {k: meta.get(k) for k in CODE_KEYS}
                raise _mismatch(folder, differences(old, code, CODE_KEYS))
    if write:
        atomic.write_json(path, {"code": code, "text": text, "config_hash": settings_hash(code)})
    return warnings


# ---------------------------------------------------------------------------------------------
# Planning: what is done, what is left, how many audio files
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ZipPlan:
    path: Path
    state: str
    """``todo``, ``done`` or ``failed_before``."""
    audio_files: int = 0
    """Audio members in the central directory (0 for a ZIP that cannot be read)."""
    audio_bytes: int = 0


def find_zips(zips_dir: Path) -> list[Path]:
    """The ZIPs in ``zips_dir``, sorted by name; ``UserError`` if there is none."""
    if not zips_dir.is_dir():
        raise UserError(f"ZIP folder {zips_dir} does not exist. Check --zips (notebook: ZIP_DIR), or put the "
                        "ZIP batches in the project's zips/ folder.")
    found = sorted(p for p in zips_dir.iterdir() if p.suffix.lower() == ".zip" and not p.name.startswith("."))
    if not found:
        raise UserError(f"No .zip files in {zips_dir}. Put the ZIP batches there (archive_batch_0001.zip, ...).")
    return found


def make_plan(cfg: TokenizeConfig, config_hash: str) -> list[ZipPlan]:
    latest = ledger.latest(cfg.out)
    plans = []
    for path in find_zips(Path(cfg.zips)):
        record = latest.get(path.name)
        if ledger.is_done(record, cfg.out, path, config_hash):
            plans.append(ZipPlan(path, "done"))
        elif not cfg.retry_failed and record and record.get("permanent") and \
                ledger.failed_before(record, path, config_hash):
            plans.append(ZipPlan(path, "failed_before"))
        else:
            plans.append(ZipPlan(path, "todo", *archive.count_audio(path)))
    return plans


# ---------------------------------------------------------------------------------------------
# One ZIP
# ---------------------------------------------------------------------------------------------


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


class _Stage:
    """What stays the same across the ZIPs of one run."""

    def __init__(self, cfg: TokenizeConfig, config_hash: str, total_files: int):
        from nbutils.encoder import CPU_BATCH, GPU_BATCH, Batcher, Encoder

        self.cfg = cfg
        self.config_hash = config_hash
        self.tokens = Path(cfg.out)
        codec, self.spec = models.load_codec(cfg.model)
        self.codec_id = models.HUB_CODEC if cfg.model.startswith("facebook/musicgen") else cfg.model
        self.encoder = Encoder(codec, self.spec, device=cfg.device or None, precision=cfg.precision)
        batch = cfg.batch_size or (GPU_BATCH if self.encoder.device.startswith("cuda") else CPU_BATCH)
        self.full_samples = int(round(cfg.segment_seconds * self.spec.sample_rate))
        self.make_batcher = lambda: Batcher(self.encoder, full_samples=self.full_samples, batch_size=batch)
        self.outside = metadata.Outside.load(cfg.zips, cfg.metadata or None)
        self.limit_left = cfg.limit or None
        self.work_root = _scratch_root(cfg) / f"tokenize-{os.getpid()}"
        self.overall = _bar(cfg, total=total_files, desc="all ZIPs", position=0)

    def read_track(self, zf: zipfile.ZipFile, members: Path, item: tuple[int, _Track], emit) -> None:
        """Worker thread: extract one member, decode it, emit its segments, then its end."""
        index, track = item
        try:
            path = archive.extract(zf, track.entry, members, max_bytes=int(self.cfg.max_member_mb * 2**20))
            try:
                for piece in audio.iter_segments(
                    path, track.report, sample_rate=self.spec.sample_rate, channels=self.spec.audio_channels,
                    segment_seconds=self.cfg.segment_seconds, min_seconds=self.cfg.min_seconds,
                    min_tail_seconds=self.cfg.min_tail_seconds, silence_db=self.cfg.silence_db,
                ):
                    emit((index, piece))
            finally:
                path.unlink(missing_ok=True)  # scratch holds at most `workers` extracted files
        except (archive.MemberError, audio.AudioError) as err:
            track.error = str(err)
        emit((index, None))


def _scratch_root(cfg: TokenizeConfig) -> Path:
    from nbutils.paths import default_scratch

    return Path(cfg.scratch).expanduser().absolute() if cfg.scratch else default_scratch()


def _bar(cfg: TokenizeConfig, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(unit="file", dynamic_ncols=True, disable=not cfg.progress, **kwargs)


def remove_stale_scratch(root: Path) -> None:
    """Delete the scratch folders of tokenize runs that were killed (their process is gone)."""
    if not root.is_dir():
        return
    for folder in root.glob("tokenize-*"):
        pid = folder.name.split("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _encode_tracks(stage: _Stage, zf: zipfile.ZipFile, tracks: list[_Track], members: Path,
                   bar) -> dict[tuple[int, int], Any]:
    """Decode (in threads) and encode (here) every track; returns codes by (track, segment)."""
    batcher = stage.make_batcher()
    codes: dict[tuple[int, int], Any] = {}
    started, seconds = time.monotonic(), 0.0

    def work(item, emit):
        stage.read_track(zf, members, item, emit)

    for index, piece in prefetch.ordered(enumerate(tracks), work, workers=stage.cfg.workers, depth=PREFETCH_DEPTH):
        track = tracks[index]
        if piece is not None:
            track.pieces.append((piece.start, piece.samples))
            codes.update(batcher.add((index, len(track.pieces) - 1), piece.audio))
            continue
        seconds += track.report.seconds
        bar.update(1)
        stage.overall.update(1)
        speed = seconds / max(time.monotonic() - started, 1e-9)
        bar.set_postfix_str(f"{speed:.1f}x realtime", refresh=False)
    codes.update(batcher.flush())
    return codes


def _collect(stage: _Stage, result: ZipResult, tracks: list[_Track], catalog: metadata.Catalog,
             codes: dict, writer: shards.ShardWriter | None) -> None:
    """Count every track's outcome and add the kept segments to the shard, in ZIP order."""
    c, sr = result.counts, stage.spec.sample_rate
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
        text, source = catalog.lookup(path)
        c.files_ok += 1
        c.audio_seconds += report.kept_seconds
        for number, (start, samples) in enumerate(track.pieces):
            frames = audio.frames_for(samples, stage.spec.hop_length)
            c.segments += 1
            c.frames += frames
            if writer is not None:
                segment = shards.Segment(path=path, start=round(start / sr, 6), frames=frames, description=text,
                                         source=source, track=f"{result.name}/{path}")
                writer.add(segment, codes[(index, number)])
    result.sources = catalog.counts


def _read_texts(zf: zipfile.ZipFile, entries: list[archive.Entry], result: ZipResult) -> dict[str, str]:
    texts = {}
    for entry in entries:
        if entry.kind == archive.TEXT:
            try:
                texts[entry.path] = archive.read_text(zf, entry)
            except archive.MemberError as err:
                result.notes.append({"path": entry.path, "reason": str(err)})
    return texts


def _shard_meta(stage: _Stage, plan: ZipPlan) -> dict[str, Any]:
    return {
        "model": stage.cfg.model,
        "codec": stage.codec_id,
        **stage.spec.to_dict(),
        "zip": plan.path.name,
        "zip_bytes": plan.path.stat().st_size,
        "config_hash": stage.config_hash,
        "segment_seconds": stage.cfg.segment_seconds,
        "min_seconds": stage.cfg.min_seconds,
        "min_tail_seconds": stage.cfg.min_tail_seconds,
        "silence_db": stage.cfg.silence_db,
        "tokenizer_version": TOKENIZER_VERSION,
    }


def _uncommit(index: Path) -> None:
    """Remove an old shard of a ZIP about to be encoded again (index first: it is the commit record)."""
    index.unlink(missing_ok=True)
    index.with_suffix(".npy").unlink(missing_ok=True)


def process_zip(stage: _Stage, plan: ZipPlan, number: int) -> ZipResult:
    """Tokenize one ZIP into its shard and ledger line (or only measure, in test mode)."""
    result = ZipResult(name=plan.path.name, zip_bytes=plan.path.stat().st_size)
    work = stage.work_root / f"zip-{number:04d}"  # plain ASCII, whatever the ZIP is called
    started = time.monotonic()
    testing = stage.limit_left is not None
    try:
        local = archive.stage(plan.path, work, copy_zip=stage.cfg.copy_zip)
        result.copy_seconds = time.monotonic() - started
        with archive.open_zip(local) as zf:
            entries = archive.scan(zf)
            result.counts.entries_ignored = sum(e.kind == archive.JUNK and not e.info.is_dir() for e in entries)
            for entry in (e for e in entries if e.kind == archive.UNSAFE):
                result.counts.files_failed += 1
                result.failures.append({"path": entry.path, "reason": entry.reason})
            catalog = metadata.Catalog(plan.path.name, stage.outside, _read_texts(zf, entries, result),
                                       stage.cfg.default_description)
            tracks = [_Track(e) for e in entries if e.kind == archive.AUDIO]
            if testing:
                tracks = tracks[: stage.limit_left]
                stage.limit_left -= len(tracks)
            with _bar(stage.cfg, total=len(tracks), desc=plan.path.name[:28], position=1, leave=False) as bar:
                codes = _encode_tracks(stage, zf, tracks, work / "members", bar)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        result.status, result.reason, result.permanent = ledger.FAILED, f"corrupt or truncated ZIP ({err})", True
    except OSError as err:  # reading from Drive or copying to scratch: may work next time
        result.status, result.reason = ledger.FAILED, f"could not read the ZIP ({type(err).__name__}: {err})"
    finally:
        if work.exists():  # emptied after every ZIP, failed or not
            shutil.rmtree(work)
    result.seconds = time.monotonic() - started
    if result.status == ledger.DONE:
        writer = None if testing else shards.ShardWriter(stage.tokens, plan.path.stem, _shard_meta(stage, plan))
        _collect(stage, result, tracks, catalog, codes, writer)
        if writer is not None:
            writer.meta["description_sources"] = dict(result.sources)
            index = writer.commit()
            faults.point("before-ledger")
            ledger.append(stage.tokens, _record(stage, plan, result, shards.read_index(index)))
    elif not testing:
        ledger.append(stage.tokens, _record(stage, plan, result, None))
    return result


def _record(stage: _Stage, plan: ZipPlan, result: ZipResult, index: dict | None) -> dict[str, Any]:
    return {
        "zip": result.name,
        "status": result.status,
        "reason": result.reason,
        "permanent": result.permanent,
        "zip_bytes": plan.path.stat().st_size,
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


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, flush=True)


def _zip_line(result: ZipResult) -> str:
    c = result.counts
    if result.status != ledger.DONE:
        return f"{result.name}: FAILED - {result.reason}"
    speed = c.audio_seconds / max(result.seconds, 1e-9)
    return (f"{result.name}: {c.files_ok} ok, {c.files_failed} failed, {c.files_skipped} skipped, "
            f"{c.segments} segments, {c.audio_seconds / 60:.1f} min of audio in {result.seconds:.1f} s "
            f"({speed:.1f}x realtime)")


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def run(cfg: TokenizeConfig) -> dict[str, Any]:
    """Tokenize every ZIP in ``cfg.zips`` that is not done yet into ``cfg.out``.

    Returns:
        The summary: counts of ZIPs / files / segments, audio seconds, frames, description
        sources, throughput and ETA, and the failures with their reasons.

    Raises:
        UserError: missing folders, a token folder made with other settings, a model that
            cannot be loaded.
    """
    if not cfg.zips or not cfg.out:
        raise UserError("Both --zips (the folder with the ZIP batches) and --out (the token folder) are needed.")
    testing = cfg.limit > 0
    code = code_settings(cfg)
    config_hash = settings_hash(code)
    warnings = check_folder(cfg, write=not testing)
    for warning in warnings:
        _say(f"Warning: {warning}")
    atomic.remove_stale_temps(shards.shard_dir(cfg.out))
    plans = make_plan(cfg, config_hash)
    todo = [p for p in plans if p.state == "todo"]
    total_files = sum(p.audio_files for p in todo)
    done_before = sum(p.state == "done" for p in plans)
    failed_before = [p for p in plans if p.state == "failed_before"]
    _say(f"{len(plans)} ZIPs in {cfg.zips}: {done_before} done before, {len(failed_before)} failed before "
         f"(unchanged; --retry-failed retries them), {len(todo)} to do with {total_files} audio files "
         f"({sum(p.audio_bytes for p in todo) / 2**30:.2f} GiB).")
    totals, sources, results = Counts(), Counter(), []
    started = time.monotonic()
    if todo:
        results = _run_zips(cfg, config_hash, todo, total_files)
        for result in results:
            totals.add(result.counts)
            sources.update(result.sources)
    return _summary(cfg, plans, results, totals, sources, time.monotonic() - started, warnings)


def _run_zips(cfg: TokenizeConfig, config_hash: str, todo: list[ZipPlan], total_files: int) -> list[ZipResult]:
    stage = _Stage(cfg, config_hash, total_files)
    remove_stale_scratch(stage.work_root.parent)
    results = []
    try:
        for number, plan in enumerate(todo):
            if stage.limit_left == 0:
                break
            index = ledger.shard_index(cfg.out, plan.path)
            if stage.limit_left is None and index.exists():
                _uncommit(index)
            result = process_zip(stage, plan, number)
            results.append(result)
            stage.overall.write(_zip_line(result), file=sys.stdout)
            tracking.log({f"tokenize/{k}": v for k, v in result.counts.to_dict().items()}
                         | {"tokenize/zips_processed": len(results),
                            "tokenize/realtime_factor": result.counts.audio_seconds / max(result.seconds, 1e-9)})
    finally:
        stage.overall.close()
        shutil.rmtree(stage.work_root, ignore_errors=True)
    return results


def _throughput(cfg: TokenizeConfig, plans: list[ZipPlan], results: list[ZipResult]) -> dict[str, Any]:
    """Measured rates and the ETA for the audio files (and ZIP bytes) still to do.

    Copying a ZIP and processing its files are timed apart, so a test run on a few tracks of a
    large ZIP does not charge the whole copy to those few files.
    """
    work = sum(r.seconds for r in results)
    copy = sum(r.copy_seconds for r in results)
    files = sum(r.counts.files for r in results)
    copied = sum(r.zip_bytes for r in results if r.copy_seconds > 0)
    finished = {r.name for r in results if r.status == ledger.DONE} if not cfg.limit else set()
    left = [p for p in plans if p.state == "todo" and p.path.name not in finished]
    remaining_files = sum(p.audio_files for p in left)
    file_rate = files / (work - copy) if work > copy and files else 0.0
    copy_rate = copied / copy if copy > 0 else float("inf")
    if not remaining_files:
        eta = 0.0
    elif file_rate:
        eta = remaining_files / file_rate + sum(p.path.stat().st_size for p in left) / copy_rate
    else:
        eta = None
    return {
        "audio_seconds_per_s": round(sum(r.counts.audio_seconds for r in results) / work, 3) if work else 0.0,
        "files_per_s": round(files / work, 3) if work else 0.0,
        "files_remaining": remaining_files,
        "eta_seconds": round(eta, 1) if eta is not None else None,
    }


def _summary(cfg, plans, results, totals: Counts, sources: Counter, elapsed: float, warnings) -> dict[str, Any]:
    failures = [{"zip": r.name, "path": "", "reason": r.reason} for r in results if r.status != ledger.DONE]
    failures += [{"zip": r.name, **f} for r in results for f in r.failures]
    summary = {
        "zips_found": len(plans),
        "zips_done": sum(r.status == ledger.DONE for r in results) if not cfg.limit else 0,
        "zips_skipped": sum(p.state != "todo" for p in plans),
        "zips_failed": sum(r.status != ledger.DONE for r in results),
        "zips_failed_before": sum(p.state == "failed_before" for p in plans),
        **totals.to_dict(),
        "description_sources": dict(sources),
        "seconds": round(elapsed, 2),
        **_throughput(cfg, plans, results),
        "limit": cfg.limit,
        "out": str(cfg.out),
        "failures": failures[:MAX_LISTED_FAILURES],
        "warnings": warnings,
    }
    _print_summary(summary, cfg)
    return summary


def _print_summary(s: dict[str, Any], cfg: TokenizeConfig) -> None:
    if cfg.limit:
        _say(f"Test mode ({s['files_ok'] + s['files_failed'] + s['files_skipped']} tracks): "
             f"{s['audio_seconds_per_s']:.1f} audio-seconds/s, {s['files_per_s']:.2f} files/s. "
             f"ETA for all {s['files_remaining']} audio files still to do: {_eta(s['eta_seconds'])}. "
             "Nothing was kept: the full run starts these ZIPs from the beginning.")
    else:
        _say(f"Done {s['zips_done']} ZIPs ({s['zips_skipped']} skipped, {s['zips_failed']} failed): "
             f"{s['files_ok']} files ok, {s['files_failed']} failed, {s['files_skipped']} skipped; "
             f"{s['segments']} segments, {s['audio_seconds'] / 3600:.2f} h of audio, "
             f"{s['audio_seconds_per_s']:.1f} audio-seconds/s.")
    if s["description_sources"]:
        _say("Descriptions from: " + ", ".join(f"{k} {v}" for k, v in sorted(s["description_sources"].items())))


# ---------------------------------------------------------------------------------------------
# Notebook helpers
# ---------------------------------------------------------------------------------------------


def config_for(project, **overrides: Any) -> TokenizeConfig:
    """The config notebook 01 runs with: the project's folders and model, plus ``overrides``."""
    values = {"zips": str(project.paths.zips), "out": str(project.paths.tokens), "model": project.model,
              "scratch": str(project.paths.scratch)}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TokenizeConfig(**values)


def table(tokens_dir: str | os.PathLike, *, max_failures: int = 50) -> str:
    """A text table of every ZIP in the ledger, then the failed files with their reasons."""
    latest = ledger.latest(tokens_dir)
    if not latest:
        return f"No ZIP tokenized yet in {tokens_dir}."
    header = f"{'ZIP':<32} {'status':<7} {'ok':>6} {'failed':>6} {'skipped':>7} {'segments':>8} {'audio h':>8} {'time s':>7}"
    lines = [header, "-" * len(header)]
    problems = []
    for name, r in sorted(latest.items()):
        lines.append(f"{name[:32]:<32} {r['status']:<7} {r.get('files_ok', 0):>6} {r.get('files_failed', 0):>6} "
                     f"{r.get('files_skipped', 0):>7} {r.get('segments', 0):>8} "
                     f"{r.get('audio_seconds', 0) / 3600:>8.2f} {r.get('seconds', 0):>7.0f}")
        if r["status"] != ledger.DONE:
            problems.append(f"{name}: ZIP failed: {r.get('reason')}")
        problems += [f"{name}/{f['path']}: failed: {f['reason']}" for f in r.get("failures", [])]
        problems += [f"{name}/{f['path']}: skipped: {f['reason']}" for f in r.get("skipped", [])]
    if problems:
        lines += ["", f"Failed or skipped ({len(problems)}):"] + problems[:max_failures]
        if len(problems) > max_failures:
            lines.append(f"... and {len(problems) - max_failures} more (see {ledger.path_of(tokens_dir)})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_cli(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, TokenizeConfig)


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    return run(from_args(TokenizeConfig, args))
