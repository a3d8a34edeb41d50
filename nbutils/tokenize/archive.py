"""Read ZIP batches safely: stage them on local disk, sort members, extract one at a time.

A ZIP from a user's Drive can contain anything: macOS ``__MACOSX/`` and ``._*`` resource
forks, ``.DS_Store``, cover images, names in cp437 or UTF-8 (NFC or macOS NFD), the same file
name in two folders, entries that try to escape the extraction folder (``../x``, ``/etc/x``),
and members that decompress to far more than they declare. This module:

* classifies every member as audio, unsupported audio (``.m4a``...: skipped with a reason), text
  (metadata / sidecars), junk or unsafe, from the central directory alone (cheap even on Drive);
* extracts one member at a time under a scratch folder, refusing any path that would land
  outside it, with a per-member size cap and a check that the data matches its declared size
  and CRC (the zip-bomb guard), so a bad member fails alone and the rest of the ZIP goes on.

A ZIP whose central directory cannot be read (corrupt, truncated) raises ``zipfile.BadZipFile``
from ``open_zip``; the tokenize stage records the ZIP as failed with that reason.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import stat
import unicodedata
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from nbutils.core.audio import is_audio_name, unsupported_reason

MAX_MEMBER_MB = 2048.0  # default per-member cap (MiB): a 2 GiB WAV is ~3 h of 48 kHz stereo 24-bit
TEXT_MEMBER_BYTES = 8 << 20  # metadata / sidecar members larger than 8 MiB are not read
COPY_CHUNK = 8 << 20  # bytes per read when copying a ZIP or extracting a member
UTF8_FLAG = 0x800  # general purpose bit 11: the member name is UTF-8
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
TEXT_EXTENSIONS = (".txt", ".json", ".jsonl")

AUDIO, TEXT, JUNK, UNSAFE, UNSUPPORTED = "audio", "text", "junk", "unsafe", "unsupported"


class MemberError(Exception):
    """One member cannot be extracted; the message is the reason recorded for it."""


@dataclasses.dataclass
class Entry:
    """One member of a ZIP, classified from the central directory."""

    info: zipfile.ZipInfo
    path: str
    """Normalized POSIX path inside the ZIP: repaired and NFC-normalized name, ``/`` separators."""
    kind: str
    """``audio``, ``text``, ``junk``, ``unsafe`` or ``unsupported`` (audio in a format we cannot decode)."""
    reason: str = ""
    """Why a member is junk, unsafe or unsupported."""

    @property
    def size(self) -> int:
        """Declared uncompressed size in bytes."""
        return int(self.info.file_size)


def decoded_name(info: zipfile.ZipInfo) -> str:
    """The member name as its author wrote it.

    Without the UTF-8 flag, ``zipfile`` decodes names as cp437, yet many tools (older macOS,
    Linux ``zip``) write UTF-8 bytes without setting the flag: re-decode those as UTF-8.
    """
    name = info.filename
    if not info.flag_bits & UTF8_FLAG:
        try:
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass  # genuinely cp437 (or another legacy code page): keep zipfile's reading
    return name


def normalize(name: str) -> str:
    """NFC (macOS writes NFD), ``/`` separators, no leading ``./`` (metadata paths match this)."""
    name = unicodedata.normalize("NFC", name).replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def unsafe_reason(name: str) -> str:
    """Why extracting ``name`` could write outside the extraction folder ('' if it cannot)."""
    if "\x00" in name:
        return "refused: NUL byte in the name"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "refused: absolute path (zip-slip)"
    if ".." in PurePosixPath(name).parts:
        return "refused: '..' in the path (zip-slip)"
    return ""


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def junk_reason(path: str) -> str:
    """Why a (safe) member is not music or metadata ('' if it is worth reading)."""
    parts = path.split("/")
    base = parts[-1]
    if "__MACOSX" in parts:
        return "macOS resource fork folder"
    if base.startswith("._"):
        return "macOS resource fork"
    if base.lower() in JUNK_NAMES or base.startswith("."):
        return "hidden / system file"
    if unsupported_reason(base):
        return ""
    if not (is_audio_name(base) or base.lower().endswith(TEXT_EXTENSIONS)):
        return "not audio"
    return ""


def classify(info: zipfile.ZipInfo) -> Entry:
    """Sort one member into audio / text / junk / unsafe / unsupported."""
    raw = decoded_name(info)
    path = normalize(raw)
    reason = unsafe_reason(raw) or unsafe_reason(path)
    if reason:
        return Entry(info, path, UNSAFE, reason)
    if info.is_dir():
        return Entry(info, path, JUNK, "folder")
    if _is_symlink(info):
        return Entry(info, path, UNSAFE, "refused: symbolic link")
    reason = junk_reason(path)
    if reason:
        return Entry(info, path, JUNK, reason)
    reason = unsupported_reason(path)
    if reason:
        return Entry(info, path, UNSUPPORTED, reason)
    return Entry(info, path, AUDIO if is_audio_name(path) else TEXT)


def scan(zf: zipfile.ZipFile) -> list[Entry]:
    """Every member of an open ZIP, classified, in the ZIP's own order."""
    return [classify(info) for info in zf.infolist()]


def open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    """Open a ZIP for reading; raises ``zipfile.BadZipFile`` if it is corrupt or truncated."""
    return zipfile.ZipFile(path)


def count_audio(path: str | os.PathLike) -> tuple[int, int]:
    """``(audio members, their declared bytes)`` from the central directory; ``(0, 0)`` if unreadable.

    Reads only the end of the file, so planning over 139 ZIPs on Drive takes seconds.
    """
    try:
        with open_zip(path) as zf:
            entries = [e for e in scan(zf) if e.kind == AUDIO]
    except (zipfile.BadZipFile, OSError, ValueError):
        return 0, 0
    return len(entries), sum(e.size for e in entries)


def stage(src: str | os.PathLike, work_dir: str | os.PathLike, *, copy_zip: bool = True) -> Path:
    """Put the ZIP where it can be read fast: a copy under ``work_dir`` (local disk).

    Drive serves one large sequential read well and many small random reads badly, so the ZIP
    is copied in big chunks first. Without ``copy_zip``, or when the local disk has no room for
    it, members are streamed from ``src`` directly.
    """
    src, work_dir = Path(src), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if not copy_zip or shutil.disk_usage(work_dir).free < src.stat().st_size * 1.1:
        return src
    dest = work_dir / src.name
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout, COPY_CHUNK)
    return dest


def safe_destination(root: Path, path: str) -> Path:
    """Where ``path`` is extracted under ``root``; ``MemberError`` if it would land outside."""
    reason = unsafe_reason(path)
    dest = (root / path).resolve()
    if reason or not dest.is_relative_to(root.resolve()):
        raise MemberError(reason or "refused: path leaves the extraction folder (zip-slip)")
    return dest


def _copy_checked(src, fout, declared: int) -> tuple[int, int]:
    """Copy a member stream, stopping as soon as it exceeds its declared size.

    Returns:
        ``(bytes written, CRC-32 of them)``.
    """
    written, crc = 0, 0
    while block := src.read(COPY_CHUNK):
        written += len(block)
        if written > declared:
            raise MemberError(
                f"refused: holds more data than its declared {declared} bytes (zip-bomb guard)"
            )
        crc = zlib.crc32(block, crc)
        fout.write(block)
    return written, crc


def _mib(size: int) -> str:
    """``3 MiB``, ``1.5 MiB``; sizes under 1 MiB in bytes (a small cap must not read as ``0 MiB``)."""
    if size < 1 << 20:
        return f"{size} bytes"
    return f"{size / (1 << 20):.2f}".rstrip("0").rstrip(".") + " MiB"


def extract(zf: zipfile.ZipFile, entry: Entry, root: str | os.PathLike, *, max_bytes: int) -> Path:
    """Extract one member to ``root/<its path>``, checking size, CRC and destination.

    Returns:
        The extracted file (the caller deletes it when done).

    Raises:
        MemberError: unsafe path, over the cap, more (or less) data than declared, bad CRC,
            unsupported compression or encryption; the partial file is removed.
    """
    root = Path(root)
    dest = safe_destination(root, entry.path)
    if entry.size > max_bytes:
        size, cap = _mib(entry.size), _mib(max_bytes)
        if size == cap:  # 2.001 MiB over a 2 MiB cap: the bytes show the difference
            size, cap = f"{entry.size} bytes", f"{max_bytes} bytes"
        raise MemberError(
            f"refused: declares {size}, over the {cap} per-file cap (zip-bomb guard; raise --max-member-mb "
            "if it is real)"
        )
    # zipfile stops at the declared size (and then fails the CRC check). Let it go further, so a
    # member holding more than it declares is named as such: _copy_checked stops it one chunk
    # past the declared size, whatever it would expand to.
    probe = copy.copy(entry.info)
    probe.file_size = max(entry.size, max_bytes) + 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zf.open(probe) as src, open(dest, "wb") as fout:
            written, crc = _copy_checked(src, fout, entry.size)
        if written != entry.size:
            raise MemberError(f"corrupt in ZIP: {written} bytes instead of the declared {entry.size}")
        if crc != entry.info.CRC:
            raise MemberError("corrupt in ZIP: CRC-32 mismatch")
    except BaseException as err:
        dest.unlink(missing_ok=True)  # never leave a partial file in scratch
        if isinstance(err, (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)):
            raise MemberError(f"corrupt in ZIP ({type(err).__name__}: {err})") from err
        # MemberError as is; an OSError (disk full, Drive I/O) is not the member's fault: it
        # fails the ZIP, which is retried on the next run, instead of failing every file.
        raise
    return dest


def read_text(zf: zipfile.ZipFile, entry: Entry, *, limit: int = TEXT_MEMBER_BYTES) -> str:
    """A small text member (metadata, sidecar) decoded as UTF-8; ``MemberError`` if unusable."""
    if entry.size > limit:
        raise MemberError(f"text file larger than {limit >> 20} MiB, not read")
    try:
        data = zf.read(entry.info)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
        raise MemberError(f"corrupt in ZIP ({err})") from err
    return data.decode("utf-8-sig", errors="replace")
