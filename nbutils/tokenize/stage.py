"""Stage 1: tokenize ZIP batches of audio into EnCodec token shards, one shard per ZIP.

For each ZIP, one at a time: copy it to local scratch, classify its members (junk and unsafe
entries never reach the disk), extract and decode the audio in background threads while the
encoder works, cut long tracks into segments, encode them in batches, write the ZIP's shard
(codes + index) atomically, append a ``done`` line to the ledger, and empty the scratch.

The work on one ZIP lives in ``nbutils.zipjob``; this module holds the settings, the plan (what
is done, what is left), the summary and the command line.

Re-running continues: ZIPs the ledger records as done (same settings, same ZIP, intact shard)
are skipped without loading the model. ``--limit N`` is a dry run on N tracks that measures the
throughput and prints the ETA for everything, and leaves nothing that reads as done.

    python -m nbutils tokenize --zips DIR --out DIR [--model M] [--metadata FILE]
        [--default-description TEXT] [--segment-seconds S] [--limit N]
        [--describe none|missing|all] [--clap C|none] [--labels FILE]

Every track's description (with the automatic ones: tempo, key, CLAP tags) is in
``OUT/descriptions.jsonl``, for the user to edit (``nbutils.tokenize.descriptions``).

For a melody checkpoint each shard also holds its segments' chroma; ``--add-chroma`` adds a melody
checkpoint's chroma to shards made without it, keeping their codes (``nbutils.tokenize.chroma``).

The last stdout line is a JSON summary (``zips_done``, ``zips_skipped``, ``zips_failed``,
``files_ok``, ``files_failed``, ``files_skipped``, ``segments``, ``audio_seconds``, ``frames``...;
``metadata_bad_lines`` lists the metadata files with unusable lines, also warned about before any ZIP).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
import typing
from collections import Counter
from pathlib import Path
from typing import Any

from nbutils.core import atomic, audio, config, diskerrors, durations, models, tracking
from nbutils.core.clap import DEFAULT_CLAP
from nbutils.core.config import add_arguments, option
from nbutils.core.errors import UserError
from nbutils.tokenize import archive, chroma, describe, descriptions, ledger, lock, metadata, shards
from nbutils.tokenize import precision as encode_precision
from nbutils.tokenize.batches import make_plan
from nbutils.tokenize.zipjob import Counts, Stage, ZipPlan, ZipResult, process_zip, remove_stale_scratch, uncommit

DEFAULT_MODEL = "facebook/musicgen-small"
SETTINGS_FILE = "tokenize_config.json"
TOKENIZER_VERSION = 1  # bump when a change to this stage changes the codes it writes
MAX_LISTED_FAILURES = 100  # failures listed in the JSON summary (the ledger keeps them all)
MUST, MAY = config.MUST_MATCH, config.MAY_CHANGE
# descriptions.jsonl is rewritten at the end of a run, and after a ZIP when it is older than this: a long
# run that is cut off leaves a file at most this stale (readers merge the newer shards in anyway).
SYNC_EVERY_SECONDS = 15 * 60


@dataclasses.dataclass
class TokenizeConfig:
    """Settings of the tokenize stage (CLI options, notebook 01 parameters).

    A token folder holds codes of one setting of the ``must-match`` fields (mixing them would give
    training incompatible tokens); the ``may-change`` ones only change the texts of ZIPs done later.
    """

    WHAT: typing.ClassVar[str] = "tokenize"

    zips: str = option("", "Folder with the ZIP batches (and an optional metadata.jsonl beside them).")
    out: str = option("", "Token folder: shards/, ledger.jsonl and tokenize_config.json are written here.")
    model: str = option(DEFAULT_MODEL, "MusicGen whose EnCodec encodes the audio: Hub id, local "
                        "save_pretrained folder, or 'tiny'.", resume=MUST)
    metadata: str = option("", "A metadata.jsonl / metadata.json with the descriptions (default: the one "
                           "beside the ZIPs, if any).", resume=MAY)
    default_description: str = option("", "Text for tracks no metadata describes (e.g. a trigger word); it "
                                      "leads their automatic description.", resume=MAY)
    describe: str = option("missing", "Automatic descriptions (tempo, key, CLAP tags) for: missing (tracks no "
                           "metadata describes), all (every track; the user's text stays first) or none.",
                           resume=MAY)
    clap: str = option(DEFAULT_CLAP, "CLAP that tags genre, mood and instruments: Hub id, local folder, 'tiny' "
                       "(tests), or 'none' for tempo and key only.", resume=MAY)
    labels: str = option("", "A JSON file of your own label lists ({\"genre\": [...], \"mood\": [...], "
                         "\"instrument\": [...]}); empty: the built-in ones.", resume=MAY)
    segment_seconds: float = option(audio.SEGMENT_SECONDS, "Long tracks are cut into segments this long (s).",
                                    resume=MUST)
    min_tail_seconds: float = option(audio.MIN_TAIL_SECONDS, "A track's last partial segment is kept when "
                                     "at least this long (s).", resume=MUST)
    min_seconds: float = option(audio.MIN_SECONDS, "Files shorter than this are skipped (s).", resume=MUST)
    silence_db: float = option(audio.SILENCE_DB, "Segments whose peak is below this level are silent and "
                               "skipped (dBFS).", resume=MUST)
    limit: int = option(0, "Test mode: process only N tracks, keep nothing as done, print throughput and the "
                        "ETA for all ZIPs (0: process everything).")
    batch_size: int = option(0, "Segments per EnCodec batch (0: as many as the GPU's free memory holds, up to 16; "
                                "1 on a CPU).")
    workers: int = option(0, "Threads that extract, decode and resample the next files while the encoder works; "
                             "0 = one per CPU core beyond the first, 2 to 8 (a Colab A100 has 12 cores).")
    device: str = option("", "Device for the encoder and CLAP: cuda, cpu, ... (empty: the GPU if there is one).")
    precision: str = option("auto", "auto (bf16/fp16 autocast on a GPU, float32 on a CPU; float32 when `nbutils "
                                    "doctor` recorded that autocast changes the codes in the project's project.json), "
                                    "fp32, bf16 or fp16. Only EnCodec's convolutions: its quantizer always runs in "
                                    "float32.")
    scratch: str = option("", "Local folder for ZIP copies and extracted files, emptied after each ZIP "
                          "(empty: /content/scratch on Colab, the temp folder elsewhere).")
    copy_zip: bool = option(True, "Copy each ZIP to scratch first (fast on Drive); --no-copy-zip reads "
                            "members from the ZIP where it is.")
    max_member_mb: float = option(archive.MAX_MEMBER_MB, "Files inside a ZIP larger than this are refused "
                                  "(MiB; zip-bomb guard).")
    retry_failed: bool = option(False, "Also retry ZIPs that failed before and have not changed since.")
    add_chroma: bool = option(False, "Add the chroma of --model (a melody checkpoint) to the shards already in --out "
                                     "that lack it, so a melody model can train on them: the source ZIPs are decoded "
                                     "again with each shard's own settings, the codes are kept (nothing is encoded).")
    progress: bool = option(True, "Show progress bars (files per second and ETA, per ZIP and overall).")

    def __post_init__(self) -> None:
        # A notebook's `SEGMENT_SECONDS = 30` and the CLI's 30.0 must be the same setting (and hash).
        for name, kind in typing.get_type_hints(type(self)).items():
            if kind in (int, float) and not isinstance(getattr(self, name), bool):
                setattr(self, name, kind(getattr(self, name)))
        segment = self.segment_seconds
        config.require(self.WHAT, [(segment > 0, f"segment_seconds must be positive (got {segment})")])
        # The defaults suit 30 s segments. Shorter segments scale them down (the tail in proportion)
        # rather than refusing values the user never set.
        if self.min_tail_seconds == audio.MIN_TAIL_SECONDS and segment < audio.MIN_TAIL_SECONDS:
            self.min_tail_seconds = round(segment * audio.MIN_TAIL_SECONDS / audio.SEGMENT_SECONDS, 3)
        if self.min_seconds == audio.MIN_SECONDS and segment < audio.MIN_SECONDS:
            self.min_seconds = segment
        config.require(self.WHAT, [
            (0 <= self.min_seconds <= segment,
             f"min_seconds ({self.min_seconds}) must be between 0 and segment_seconds ({segment})"),
            (0 <= self.min_tail_seconds <= segment,
             f"min_tail_seconds ({self.min_tail_seconds}) must be between 0 and segment_seconds ({segment})"),
            (self.describe in describe.MODES,
             f"describe must be one of {', '.join(describe.MODES)} (got {self.describe!r})"),
            (self.limit >= 0 and self.batch_size >= 0 and self.workers >= 0,
             "limit, batch_size and workers must be >= 0 (0 = automatic)"),
            (self.max_member_mb > 0, "max_member_mb must be positive"),
        ])

    @staticmethod
    def project_defaults(project, given: dict[str, Any]) -> dict[str, Any]:
        """Notebook 01's folders and model: the project's ZIPs, tokens, scratch, and its model."""
        paths = project.paths
        return {"zips": str(paths.zips), "out": str(paths.tokens), "model": project.model,
                "scratch": str(paths.scratch)}

    @property
    def decode_workers(self) -> int:
        """``workers``, or the automatic count: the encoder keeps one core, decoding gets the rest."""
        return self.workers or min(8, max(2, (os.cpu_count() or 2) - 1))


# ---------------------------------------------------------------------------------------------
# The token folder's settings: never mix codes made with different settings
# ---------------------------------------------------------------------------------------------


# Settings that change the codes: the token folder's hash covers exactly these (as in every earlier release).
CODE_KEYS = (*config.resume_keys(TokenizeConfig, MUST), "tokenizer_version")
# Settings that change only the texts: a change is allowed, with a warning.
TEXT_KEYS = config.resume_keys(TokenizeConfig, MAY)


def code_settings(cfg: TokenizeConfig) -> dict[str, Any]:
    """The settings that decide the codes (what a token folder must agree on)."""
    values = {k: getattr(cfg, k) for k in CODE_KEYS if k != "tokenizer_version"}
    return {**values, "tokenizer_version": TOKENIZER_VERSION}


def _refuse(folder: Path, refused: list[str], cfg: TokenizeConfig | None = None) -> UserError:
    melody = ""
    if cfg is not None and any(line.startswith("model:") for line in refused) and _is_melody(cfg.model):
        melody = (f" To train {cfg.model} on the shards already there, add its chroma to them instead (the codes "
                  f"are kept): {chroma.command(folder, cfg.model, cfg.zips)}.")
    return config.resume_refusal(
        folder, refused, kind="token folder", holds="codes",
        why="Mixing them would give training incompatible tokens." + melody,
        fresh="pass a new --out folder (notebook: another PROJECT_ROOT) to keep both")


def _is_melody(model: str) -> bool:
    try:
        return models.is_melody(model)
    except UserError:  # the model cannot be read: the mismatch message is what matters here
        return False


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
    extra = ("tokenizer_version",)
    if path.exists():
        saved = atomic.read_json(path)
        resume = config.resume_differences(TokenizeConfig, {**saved.get("text", {}), **saved.get("code", {})},
                                           {**text, **code}, must_match=extra)
        if resume.refused:
            raise _refuse(folder, resume.refused, cfg)
        if resume.accepted:
            warnings.append(f"Description settings changed ({'; '.join(resume.accepted)}): ZIPs tokenized before "
                            "keep their texts, new ZIPs get the new ones.")
    else:
        for index in shards.list_shards(folder):  # settings file deleted, shards kept
            meta = shards.read_index(index)
            if meta.get("config_hash") != config.config_hash(code):
                old = {k: meta.get(k) for k in CODE_KEYS}
                refused = config.resume_differences(TokenizeConfig, old, code, must_match=extra).refused
                raise _refuse(folder, refused, cfg)
    if write:  # the ZIP folder too: a melody run refusing chroma-less shards names it in its command
        atomic.write_json(path, {"code": code, "text": text, "config_hash": config.config_hash(code),
                                 "zips": str(Path(cfg.zips).expanduser().absolute())})
    return warnings


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
    line = (f"{result.name}: {c.files_ok} ok, {c.files_failed} failed, {c.files_skipped} skipped, "
            f"{c.segments} segments, {c.audio_seconds / 60:.1f} min of audio in {result.seconds:.1f} s "
            f"({speed:.1f}x realtime)")
    return "\n".join([line] + [f"  Warning: {warning}" for warning in result.warnings])


@diskerrors.guard("out")
def run(cfg: TokenizeConfig) -> dict[str, Any]:
    """Tokenize every ZIP in ``cfg.zips`` that is not done yet into ``cfg.out``.

    The token folder is locked for the run (``lock``), settings check included; test mode
    (``limit``) writes nothing there and takes no lock.

    Returns:
        The summary: counts of ZIPs / files / segments, audio seconds, frames, description
        sources, throughput and ETA, and the failures with their reasons.

    Raises:
        UserError: missing folders, a token folder made with other settings or in use by
            another run, a model that cannot be loaded, a read-only or full token folder.
    """
    if not cfg.zips or not cfg.out:
        raise UserError("Both --zips (the folder with the ZIP batches) and --out (the token folder) are needed.")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise UserError(f"The token folder {cfg.out} is a file. Pass a folder for --out (notebook: the project's "
                        "tokens folder), new or existing.")
    if cfg.add_chroma:
        if cfg.limit:
            raise UserError("add_chroma has no test mode: leave limit at 0.")
        return chroma.run(cfg)
    if cfg.limit > 0:
        return _run(cfg, None)
    with lock.hold(cfg.out, say=_say) as held:
        return _run(cfg, held)


def _run(cfg: TokenizeConfig, held: lock.Lock | None) -> dict[str, Any]:
    testing = held is None
    chosen, why = encode_precision.resolve(cfg.precision, cfg.out)  # `auto` may be fp32 (the doctor's finding)
    if why:
        _say(why)
        cfg = dataclasses.replace(cfg, precision=chosen)
    code = code_settings(cfg)
    config_hash = config.config_hash(code)
    warnings = check_folder(cfg, write=not testing)
    outside = metadata.Outside.load(cfg.zips, cfg.metadata or None)
    warnings += [bad.message() for bad in outside.bad]  # before any ZIP is done with the wrong texts
    for warning in warnings:
        _say(f"Warning: {warning}")
    atomic.remove_stale_temps(shards.shard_dir(cfg.out))
    if not testing:
        atomic.remove_stale_temps(cfg.out)  # a descriptions.jsonl whose writer was killed
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
        results = _run_zips(cfg, config_hash, todo, total_files, outside, held)
        for result in results:
            totals.add(result.counts)
            sources.update(result.sources)
    bad_metadata = outside.bad + [bad for r in results for bad in r.metadata_bad]
    table = None if testing else descriptions.sync(cfg.out)  # the shards' rows and the user's edits
    return _summary(cfg, plans, results, totals, sources, time.monotonic() - started, warnings, bad_metadata, table)


def _run_zips(cfg: TokenizeConfig, config_hash: str, todo: list[ZipPlan], total_files: int,
              outside: metadata.Outside, held: lock.Lock | None) -> list[ZipResult]:
    stage = Stage(cfg, code_settings(cfg), config_hash, total_files, outside)
    remove_stale_scratch(stage.work_root.parent)
    results, synced = [], time.monotonic()
    try:
        for number, plan in enumerate(todo):
            if stage.limit_left == 0:
                break
            if held is not None:
                held.check()  # another run took the folder over while this one stalled: stop
            index = ledger.shard_index(cfg.out, plan.path)
            if stage.limit_left is None and index.exists():
                descriptions.protect(cfg.out, index)  # the user's edits of this ZIP outlive its old shard
                uncommit(index)
            result = process_zip(stage, plan, number)
            results.append(result)
            stage.overall.write(_zip_line(result), file=sys.stdout)
            tracking.log({f"tokenize/{k}": v for k, v in result.counts.to_dict().items()}
                         | {"tokenize/zips_processed": len(results),
                            "tokenize/realtime_factor": result.counts.audio_seconds / max(result.seconds, 1e-9)})
            if held is not None and time.monotonic() - synced > SYNC_EVERY_SECONDS:
                descriptions.sync(cfg.out)
                synced = time.monotonic()
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


def _summary(cfg, plans, results, totals: Counts, sources: Counter, elapsed: float, warnings,
             bad_metadata: list[metadata.BadLines], table: dict[str, Any] | None = None) -> dict[str, Any]:
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
        "metadata_bad_lines": [bad.to_dict() for bad in bad_metadata],
        "descriptions": table,
        "seconds": round(elapsed, 2),
        **_throughput(cfg, plans, results),
        "limit": cfg.limit,
        "out": str(cfg.out),
        "failures": failures[:MAX_LISTED_FAILURES],
        "warnings": warnings + [f"{r.name}: {w}" for r in results for w in r.warnings]
        + ([table["warning"]] if table and table["warning"] else []),
    }
    _print_summary(summary, cfg)
    return summary


def _print_summary(s: dict[str, Any], cfg: TokenizeConfig) -> None:
    if cfg.limit and not s["files_remaining"] and not s["files_ok"] + s["files_failed"] + s["files_skipped"]:
        _say(f"Test mode: nothing left to tokenize ({s['zips_skipped']} ZIPs already done). "
             "Go on with the summary, or add new ZIPs to the folder.")
    elif cfg.limit:
        _say(f"Test mode ({s['files_ok'] + s['files_failed'] + s['files_skipped']} tracks): "
             f"{s['audio_seconds_per_s']:.1f} audio-seconds/s, {s['files_per_s']:.2f} files/s. "
             f"ETA for all {s['files_remaining']} audio files still to do: {durations.human(s['eta_seconds'])}. "
             "Nothing was kept: the full run starts these ZIPs from the beginning.")
    else:
        _say(f"Done {s['zips_done']} ZIPs ({s['zips_skipped']} skipped, {s['zips_failed']} failed): "
             f"{s['files_ok']} files ok, {s['files_failed']} failed, {s['files_skipped']} skipped; "
             f"{s['segments']} segments, {s['audio_seconds'] / 3600:.2f} h of audio, "
             f"{s['audio_seconds_per_s']:.1f} audio-seconds/s.")
    if s["description_sources"]:
        _say("Descriptions from: " + ", ".join(f"{k} {v}" for k, v in sorted(s["description_sources"].items())))
    for bad in s["metadata_bad_lines"]:
        _say(f"Warning: {metadata.BadLines(**bad).message()}")
    table = s["descriptions"]
    if table and table["warning"]:
        _say(f"Warning: {table['warning']}")
    elif table:
        _say(f"Descriptions: {table['tracks']} tracks in {table['file']} ({table['auto']} automatic, {table['edited']} "
             "edited). Edit them there (or in notebook 01): training reads them; nothing is re-encoded.")


# ---------------------------------------------------------------------------------------------
# Notebook helpers
# ---------------------------------------------------------------------------------------------


def config_for(project, **settings: Any) -> TokenizeConfig:
    """The config notebook 01 runs with: the project's folders and model, plus ``settings`` (``**SETTINGS``)."""
    return config.build(TokenizeConfig, settings, project=project)


def table(tokens_dir: str | os.PathLike, *, max_failures: int = 50) -> str:
    """A text table of every ZIP in the ledger, then the failed and skipped files and the notes (unusable
    metadata lines, unreadable text files) with their reasons."""
    latest = ledger.latest(tokens_dir)
    if not latest:
        return f"No ZIP tokenized yet in {tokens_dir}."
    header = (f"{'ZIP':<32} {'status':<7} {'ok':>6} {'failed':>6} {'skipped':>7} {'segments':>8} {'audio h':>8} "
              f"{'time s':>7}")
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
        problems += [f"{'/'.join(filter(None, (name, f['path'])))}: note: {f['reason']}" for f in r.get("notes", [])]
    if problems:
        lines += ["", f"Failed, skipped or noted ({len(problems)}):"] + problems[:max_failures]
        if len(problems) > max_failures:
            lines.append(f"... and {len(problems) - max_failures} more (see {ledger.path_of(tokens_dir)})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_cli(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, TokenizeConfig)


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    return run(config.build(TokenizeConfig, args=args))
