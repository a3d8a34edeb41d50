"""Chroma for melody checkpoints: the settings tokenization stores, and adding it to shards made without it.

Tokenizing with a melody checkpoint stores each segment's chroma beside its codes (``shards``).
Shards made with another model -- or by an older release -- have none, and a melody model cannot
train on them. ``tokenize --add-chroma --model MELODY`` gives them their chroma without encoding
anything: it reads each shard's source ZIP again, decodes every tokenized track exactly as
tokenization did (the shard's own sample rate, channels and segment settings), computes each
segment's chroma with the melody checkpoint's feature-extractor settings, checks that the
segments are the shard's (path, start, frame count), and adds the chroma to the shard
(``shards.add_chroma``: the codes file is not touched). Shards that already have this chroma are
skipped, so re-running continues; a shard whose ZIP changed or is missing fails with the reason,
and the others go on.

    python -m nbutils tokenize --zips DIR --out TOKENS --model facebook/musicgen-melody --add-chroma
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from nbutils.core import audio, melody, models, paths
from nbutils.core.errors import UserError
from nbutils.tokenize import archive, descriptions, lock, prefetch, shards

SETTINGS_KEYS = ("segment_seconds", "min_seconds", "min_tail_seconds", "silence_db")  # recorded in every shard


def settings_for(model: str, spec: models.AudioSpec) -> melody.ChromaSettings | None:
    """The chroma settings tokenization stores for ``model`` (None: not a melody checkpoint).

    Raises:
        UserError: the feature extractor reads another sample rate than the codec (the chroma
            must come from the audio that is encoded).
    """
    settings = models.chroma_settings(model)
    if settings is not None and settings.sample_rate != spec.sample_rate:
        raise UserError(f"The melody feature extractor of '{model}' reads {settings.sample_rate} Hz audio but its "
                        f"codec {spec.sample_rate} Hz; chroma and codes must come from the same audio. Fix "
                        "sampling_rate in its processor config.")
    return settings


def missing(all_shards: list[shards.Shard], settings: melody.ChromaSettings) -> list[shards.Shard]:
    """The shards without chroma made with ``settings`` (none at all, or other settings)."""
    return [s for s in all_shards if s.chroma_settings != settings]


def command(tokens: str | Path, model: str, zips: str | Path | None = None) -> str:
    """The command that adds ``model``'s chroma to the shards in ``tokens`` (the ZIP folder if known)."""
    return (f"python -m nbutils tokenize --zips {zips or 'ZIP_DIR'} --out {tokens} --model {model} --add-chroma")


def _codec_mismatch(shard: shards.Shard, model: str, spec: models.AudioSpec) -> str:
    """Why ``shard``'s codes cannot be reused for ``model`` (another codec or layout), or ''."""
    meta = shard.meta
    if meta.get("num_codebooks") != spec.num_codebooks or meta.get("sample_rate") != spec.sample_rate:
        return (f"its codes have {meta.get('num_codebooks')} codebooks at {meta.get('sample_rate')} Hz, "
                f"{model} uses {spec.num_codebooks} at {spec.sample_rate} Hz")
    if meta.get("model") != model and meta.get("codec") != models.codec_id(model):
        return f"its codes were made with the codec of {meta.get('model')} ({meta.get('codec')}), not {model}'s"
    return ""


def _decode_zip(zip_path: Path, shard: shards.Shard, settings: melody.ChromaSettings, work: Path, cfg
                ) -> dict[tuple[str, float], tuple[int, Any]]:
    """``{(path, start seconds): (samples, pitch classes)}`` for every kept segment of the shard's tracks."""
    meta = shard.meta
    rate = int(meta["sample_rate"])
    wanted = {s.path for s in shard.segments}
    local = archive.stage(zip_path, work, copy_zip=True)
    found: dict[tuple[str, float], tuple[int, Any]] = {}
    with archive.open_zip(local) as zf:
        entries = [e for e in archive.scan(zf) if e.kind == archive.AUDIO and e.path in wanted]

        def decode(entry: archive.Entry, emit) -> None:
            file = archive.extract(zf, entry, work / "members", max_bytes=int(cfg.max_member_mb * 2**20))
            try:
                for piece in audio.iter_segments(file, audio.TrackReport(), sample_rate=rate,
                                                 channels=int(meta.get("audio_channels", 1)),
                                                 **{k: float(meta[k]) for k in SETTINGS_KEYS}):
                    emit((entry.path, piece.start, piece.samples, melody.pitch_classes(piece.audio, settings)))
            finally:
                file.unlink(missing_ok=True)

        for path, start, samples, classes in prefetch.ordered(entries, decode, workers=cfg.decode_workers):
            found[(path, round(start / rate, 6))] = (samples, classes)
    return found


def _rows_for(shard: shards.Shard, found: dict) -> list[Any]:
    """The chroma of each of the shard's segments, in order; ``UserError``-free: ``ValueError`` says what differs."""
    hop = int(shard.meta.get("hop_length", audio.HOP_LENGTH))
    rows = []
    for segment in shard.segments:
        hit = found.get((segment.path, round(segment.start, 6)))
        if hit is None or audio.frames_for(hit[0], hop) != segment.frames:
            raise ValueError(f"the ZIP's audio no longer matches the shard ({segment.path} at {segment.start:g} s "
                             f"{'is not there' if hit is None else 'has another length'})")
        rows.append(hit[1])
    return rows


def _add_one(shard: shards.Shard, cfg, settings: melody.ChromaSettings, scratch: Path) -> int:
    """Give one shard its chroma; returns its chroma frames. ``ValueError``/``OSError`` say why it could not."""
    zip_name = descriptions.zip_of(shard.meta, shard.index_path.stem)
    zip_path = Path(cfg.zips) / zip_name
    if not zip_path.is_file():
        raise ValueError(f"its ZIP {zip_name} is not in {cfg.zips}")
    if zip_path.stat().st_size != shard.meta.get("zip_bytes", zip_path.stat().st_size):
        raise ValueError(f"{zip_name} changed since it was tokenized (another size): tokenize it again into a "
                         "new folder with the melody model")
    work = scratch / shard.index_path.stem
    try:
        rows = _rows_for(shard, _decode_zip(zip_path, shard, settings, work, cfg))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    shards.add_chroma(shard.index_path, settings, rows)
    return sum(len(r) for r in rows)


def _check_model(cfg) -> tuple[melody.ChromaSettings, models.AudioSpec]:
    spec = models.spec_of(models.load_config(cfg.model))
    settings = settings_for(cfg.model, spec)
    if settings is None:
        raise UserError(f"--add-chroma adds a melody model's chroma, and '{cfg.model}' is not a melody model. Pass "
                        "--model facebook/musicgen-melody (or -melody-large, stereo-melody, a melody folder).")
    if not cfg.zips or not Path(cfg.zips).is_dir():
        raise UserError(f"--add-chroma reads the source ZIPs again: pass --zips, the folder they were tokenized from "
                        f"({cfg.zips or 'not given'}).")
    return settings, spec


def run(cfg) -> dict[str, Any]:
    """Add ``cfg.model``'s chroma to every shard of ``cfg.out`` that lacks it (``cfg``: a ``TokenizeConfig``).

    Returns:
        The summary (the tokenize keys, ``zips_*`` counting shards, plus ``chroma_frames`` and failures).
    """
    settings, spec = _check_model(cfg)
    started = time.monotonic()
    with lock.hold(cfg.out, say=lambda m: print(m, flush=True)):
        opened = shards.open_all(cfg.out)
        todo = missing(opened, settings)
        refused = [(s, why) for s in todo if (why := _codec_mismatch(s, cfg.model, spec))]
        if refused:
            shard, why = refused[0]
            raise UserError(f"The codes of {len(refused)} shard(s) cannot be reused for {cfg.model} "
                            f"({shard.index_path.name}: {why}). Tokenize into a new folder with --model {cfg.model} "
                            "instead.")
        print(f"{len(opened)} shards in {cfg.out}: {len(opened) - len(todo)} have {cfg.model}'s chroma, "
              f"{len(todo)} to do (codes kept; the source ZIPs are decoded again).", flush=True)
        done, failures, frames = _add_all(todo, cfg, settings)
    summary = {"mode": "add_chroma", "zips_found": len(opened), "zips_done": len(done),
               "zips_skipped": len(opened) - len(todo), "zips_failed": len(failures), "segments": sum(
                   len(s.segments) for s in done), "chroma_frames": frames,
               "seconds": round(time.monotonic() - started, 2), "out": str(cfg.out), "failures": failures}
    print(f"Chroma added to {len(done)} shard(s) ({frames} frames), {len(failures)} failed.", flush=True)
    return summary


def _add_all(todo: list[shards.Shard], cfg, settings: melody.ChromaSettings):
    """Each shard of ``todo`` in turn; one that fails is reported and the others go on."""
    from tqdm.auto import tqdm

    done, failures, frames = [], [], 0
    root = paths.scratch_root(cfg.scratch)
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="nbutils-chroma-", dir=root))
    try:
        for shard in tqdm(todo, desc="add chroma", unit="shard", disable=not cfg.progress):
            try:
                frames += _add_one(shard, cfg, settings, scratch)
                done.append(shard)
            except (ValueError, OSError, zipfile.BadZipFile, archive.MemberError, audio.AudioError) as err:
                failures.append({"zip": shard.meta.get("zip"), "shard": shard.index_path.name, "reason": str(err)})
                print(f"{shard.index_path.name}: FAILED - {err}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return done, failures, frames
