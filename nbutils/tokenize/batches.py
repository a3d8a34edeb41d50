"""Which ZIP batches a tokenize run works on: found in the ZIP folder, checked for names that would
write the same shard, and planned against the ledger (done, failed before, or to do)."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

from nbutils.core.errors import UserError
from nbutils.tokenize import archive, ledger, shards
from nbutils.tokenize.zipjob import ZipPlan

if TYPE_CHECKING:
    from nbutils.tokenize.stage import TokenizeConfig


def find_zips(zips_dir: Path) -> list[Path]:
    """The ZIPs in ``zips_dir``, sorted by name; ``UserError`` if there is none."""
    if not zips_dir.is_dir():
        raise UserError(f"ZIP folder {zips_dir} does not exist. Check --zips (notebook: ZIP_DIR), or put the "
                        "ZIP batches in the project's zips/ folder.")
    found = sorted(p for p in zips_dir.iterdir() if p.suffix.lower() == ".zip" and not p.name.startswith("."))
    if not found:
        raise UserError(f"No .zip files in {zips_dir}. Put the ZIP batches there (archive_batch_0001.zip, ...).")
    check_shard_names(found)
    return found


def check_shard_names(zips: list[Path]) -> None:
    """Refuse two ZIPs that would write the same shard (``shards/<stem>``).

    The shard is named after the ZIP's stem, and Drive and macOS compare names without case (and
    macOS without Unicode normalization form):
    ``a.zip``, ``a.ZIP`` and ``A.zip`` would overwrite each other's shard, one batch's audio
    lost while both read as done.

    Raises:
        UserError: names both ZIPs and says to rename one.
    """
    seen: dict[str, Path] = {}
    for path in zips:
        if path.stem.casefold().endswith(shards.CHROMA_SUFFIX.removesuffix(".npy").casefold()):
            raise UserError(f"{path.name} in {path.parent}: its shard's codes file would be named like the chroma file "
                            f"of {path.stem[:-len('.chroma')]}.zip's shard ({path.stem}.npy). Rename it (e.g. without "
                            "'.chroma') and run again.")
        key = unicodedata.normalize("NFC", path.stem).casefold()
        if key in seen:
            raise UserError(f"{seen[key].name} and {path.name} in {path.parent} would write the same token shard "
                            f"({shards.SHARD_DIR}/{path.stem}; names are compared without case, as on Drive "
                            "and macOS), so one batch's audio would be lost. Rename one of them and run again.")
        seen[key] = path


def make_plan(cfg: TokenizeConfig, config_hash: str) -> list[ZipPlan]:
    """One ``ZipPlan`` per ZIP in ``cfg.zips``: done (same settings, shard intact), failed before
    (a permanent failure of the same file, unless ``retry_failed``), or to do with its audio count."""
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
