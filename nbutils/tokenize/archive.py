"""Read ZIP batches safely: stage them on local disk, sort members, extract one at a time.

A ZIP from a user's Drive can contain anything: macOS ``__MACOSX/`` and ``._*`` resource
forks, ``.DS_Store``, cover images, names in cp437 or UTF-8 (NFC or macOS NFD), the same file
name in two folders, entries that try to escape the extraction folder (``../x``, ``/etc/x``),
and members that decompress to far more than they declare. This module:

* classifies every member as audio, unsupported audio (``.m4a``...: skipped with a reason), text
  (metadata / sidecars), junk or unsafe, from the central directory alone (cheap even on Drive);
* extracts one member at a time into a scratch folder, under a name made from the member's
  index in the ZIP (``000042.wav``), never from its own name: two members whose names collide
  on disk (the same name twice, ``café`` in NFC and NFD, ``./a`` and ``a``, ``a\\b`` and ``a/b``,
  ``song.wav`` and ``song.wav/inner.wav``, a name over 255 bytes) can never share or block a
  file. Each member has a size cap and a check that its data matches its declared size and CRC
  (the zip-bomb guard), so a bad member fails alone and the rest of the ZIP goes on;
* reads text members (metadata, sidecars) in chunks, within a per-member cap and a budget for
  the whole ZIP (``TextBudget``), so a ZIP of many large text files cannot exhaust memory.

A ZIP whose central directory cannot be read (corrupt, truncated, or fields ``zipfile`` cannot
handle that ``zipfix`` cannot correct) raises ``zipfile.BadZipFile`` from ``open_zip``; the
tokenize stage records the ZIP as failed with that reason, for good (it is not retried).
"""

from __future__ import annotations

import codecs
import copy
import dataclasses
import errno
import os
import re
import shutil
import stat
import struct
import unicodedata
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from nbutils.core.audio import is_audio_name, unsupported_reason
from nbutils.tokenize import zipfix

MAX_MEMBER_MB = 2048.0  # default per-member cap (MiB): a 2 GiB WAV is ~3 h of 48 kHz stereo 24-bit
TEXT_MEMBER_BYTES = 8 << 20  # metadata / sidecar members larger than 8 MiB are not read
TEXT_BUDGET_BYTES = 64 << 20  # text read per ZIP in all (90 members of 8 MiB took 1.9 GB when read at once)
TEXT_CHUNK = 1 << 20  # bytes per read of a text member
ENCRYPTED_FLAG = 0x1  # general purpose bit 0
COPY_CHUNK = 8 << 20  # bytes per read when copying a ZIP or extracting a member
UTF8_FLAG = 0x800  # general purpose bit 11: the member name is UTF-8
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
TEXT_EXTENSIONS = (".txt", ".json", ".jsonl")

AUDIO, TEXT, JUNK, UNSAFE, UNSUPPORTED = "audio", "text", "junk", "unsafe", "unsupported"
NESTED_ZIP = "nested ZIP (not opened)"
ENCRYPTED = "encrypted: extract the ZIP with its password and re-zip it without one"
# Errors of corrupt member data (bad offsets, headers, streams): the member fails, for good.
CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError, struct.error,
           OverflowError)
# The local disk refuses one member's file, but not the next one's.
MEMBER_ERRNOS = {errno.ENAMETOOLONG: "name too long for the local disk",
                 errno.EISDIR: "a folder of the same name is in the way on the local disk",
                 errno.ENOTDIR: "a file of the same name is in the way on the local disk",
                 errno.EINVAL: "corrupt in ZIP (invalid offset or size)"}


class MemberError(Exception):
    """One member cannot be extracted; the message is the reason recorded for it."""


class OverBudget(MemberError):
    """A text member not read: the ZIP's text members already used up ``TextBudget``."""


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
    index: int = 0
    """Position in the ZIP's directory (names the member's scratch file)."""

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
    if base.lower().endswith(".zip"):
        return NESTED_ZIP
    if not (is_audio_name(base) or base.lower().endswith(TEXT_EXTENSIONS)):
        return "not audio"
    return ""


def classify(info: zipfile.ZipInfo, index: int = 0) -> Entry:
    """Sort one member (the ``index``-th of its ZIP) into audio / text / junk / unsafe / unsupported."""
    raw = decoded_name(info)
    path = normalize(raw)
    reason = unsafe_reason(raw) or unsafe_reason(path)
    if reason:
        return Entry(info, path, UNSAFE, reason, index)
    if info.is_dir():
        return Entry(info, path, JUNK, "folder", index)
    if _is_symlink(info):
        return Entry(info, path, UNSAFE, "refused: symbolic link", index)
    reason = junk_reason(path)
    if reason:
        return Entry(info, path, JUNK, reason, index)
    reason = unsupported_reason(path)
    if reason:
        return Entry(info, path, UNSUPPORTED, reason, index)
    return Entry(info, path, AUDIO if is_audio_name(path) else TEXT, "", index)


def scan(zf: zipfile.ZipFile) -> list[Entry]:
    """Every member of an open ZIP, classified, in the ZIP's own order."""
    return [classify(info, index) for index, info in enumerate(zf.infolist())]


def open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    """Open a ZIP for reading.

    A directory ``zipfile`` refuses as a whole for one member's sake (a name flagged UTF-8 that
    is not, a "version needed" above 6.3) is read through ``zipfix``; the result's ``repairs``
    (a ``getattr`` default of ``[]``) says what was corrected.

    Raises:
        zipfile.BadZipFile: the ZIP is corrupt or truncated (the reason says how).
        OSError: it could not be read (Drive I/O): worth another try.
    """
    try:
        return zipfile.ZipFile(path)
    except (UnicodeDecodeError, NotImplementedError) as err:
        repaired = zipfix.open_repaired(path)
        if repaired is not None:
            return repaired
        raise zipfile.BadZipFile(f"unreadable directory ({type(err).__name__}: {err})") from err
    except zipfile.BadZipFile:
        raise
    except (ValueError, EOFError, struct.error, OverflowError, KeyError, IndexError) as err:
        raise zipfile.BadZipFile(f"unreadable directory ({type(err).__name__}: {err})") from err
    except OSError as err:
        if err.errno == errno.EINVAL:  # an offset in the directory points before the file's start
            raise zipfile.BadZipFile(f"corrupt offsets in the directory ({err})") from err
        raise


def count_audio(path: str | os.PathLike) -> tuple[int, int]:
    """``(audio members, their declared bytes)`` from the central directory; ``(0, 0)`` if unreadable.

    Reads only the end of the file, so planning over 139 ZIPs on Drive takes seconds. Only the
    progress bar and the ETA use these counts: whatever goes wrong here is left to the ZIP's
    own processing, which records it.
    """
    try:
        with open_zip(path) as zf:
            entries = [e for e in scan(zf) if e.kind == AUDIO]
    except Exception:  # noqa: BLE001 - see above
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


def scratch_name(entry: Entry) -> str:
    """The member's file name in scratch: its index and (ASCII) extension, ``000042.flac``.

    Never its own name, so members whose names collide on disk get separate files; the
    extension stays for decoders that look at it.
    """
    ext = os.path.splitext(entry.path)[1].lower()
    return f"{entry.index:06d}" + (ext if re.fullmatch(r"\.[a-z0-9]{1,8}", ext) else "")


def _refusal(entry: Entry, max_bytes: int) -> str:
    """Why ``entry`` is not extracted at all ('' if it may be)."""
    reason = unsafe_reason(entry.path)
    if reason or entry.kind == UNSAFE:
        return reason or entry.reason
    if entry.info.flag_bits & ENCRYPTED_FLAG:
        return ENCRYPTED
    if entry.size > max_bytes:
        size, cap = _mib(entry.size), _mib(max_bytes)
        if size == cap:  # 2.001 MiB over a 2 MiB cap: the bytes show the difference
            size, cap = f"{entry.size} bytes", f"{max_bytes} bytes"
        return (f"refused: declares {size}, over the {cap} per-file cap (zip-bomb guard; raise --max-member-mb "
                "if it is real)")
    return ""


def member_error(err: BaseException) -> MemberError | None:
    """The member's own failure for ``err``, or None when the ZIP or the disk is at fault.

    Corrupt data, offsets or headers fail the member for good; so does a name the local disk
    refuses. Anything else (a full or unwritable scratch disk, Drive I/O) is not the member's
    fault: it fails the ZIP, which is retried on the next run, instead of failing every file.
    """
    if isinstance(err, MemberError):
        return err
    if isinstance(err, OSError):
        reason = MEMBER_ERRNOS.get(err.errno or 0)
        return MemberError(f"{reason} ({err.strerror or err})") if reason else None
    if isinstance(err, CORRUPT):
        return MemberError(f"corrupt in ZIP ({type(err).__name__}: {err})")
    return None


def extract(zf: zipfile.ZipFile, entry: Entry, root: str | os.PathLike, *, max_bytes: int) -> Path:
    """Extract one member to ``root/<scratch_name>``, checking size, CRC and safety.

    Returns:
        The extracted file (the caller deletes it when done).

    Raises:
        MemberError: unsafe path, encrypted, over the cap, more (or less) data than declared, bad
            CRC, corrupt headers or offsets, unsupported compression; the partial file is removed.
        OSError: the scratch disk is full or unwritable, or the ZIP cannot be read (not the
            member's fault).
    """
    reason = _refusal(entry, max_bytes)
    if reason:
        raise MemberError(reason)
    root = Path(root)
    dest = root / scratch_name(entry)
    # zipfile stops at the declared size (and then fails the CRC check). Let it go further, so a
    # member holding more than it declares is named as such: _copy_checked stops it one chunk
    # past the declared size, whatever it would expand to.
    probe = copy.copy(entry.info)
    probe.file_size = max(entry.size, max_bytes) + 1
    try:
        root.mkdir(parents=True, exist_ok=True)
        with zf.open(probe) as src, open(dest, "wb") as fout:
            written, crc = _copy_checked(src, fout, entry.size)
        if written != entry.size:
            raise MemberError(f"corrupt in ZIP: {written} bytes instead of the declared {entry.size}")
        if crc != entry.info.CRC:
            raise MemberError("corrupt in ZIP: CRC-32 mismatch")
    except BaseException as err:
        dest.unlink(missing_ok=True)  # never leave a partial file in scratch
        own = member_error(err)
        if own is None or own is err:
            raise
        raise own from err
    return dest


@dataclasses.dataclass
class TextBudget:
    """Bytes of text members one ZIP may still read (``TEXT_BUDGET_BYTES`` in all)."""

    total: int = dataclasses.field(default_factory=lambda: TEXT_BUDGET_BYTES)
    used: int = 0

    @property
    def left(self) -> int:
        return self.total - self.used


def read_text(zf: zipfile.ZipFile, entry: Entry, *, limit: int = TEXT_MEMBER_BYTES,
              budget: TextBudget | None = None) -> str:
    """A small text member (metadata, sidecar) decoded as UTF-8, read in chunks.

    Raises:
        MemberError: larger than ``limit``, more than ``budget`` has left, encrypted or corrupt.
    """
    budget = budget or TextBudget()
    if entry.size > limit:
        raise MemberError(f"text file larger than {_mib(limit)}, not read")
    if entry.size > budget.left:
        raise OverBudget(f"not read: the text files of this ZIP passed the {_mib(budget.total)} budget")
    if entry.info.flag_bits & ENCRYPTED_FLAG:
        raise MemberError(ENCRYPTED)
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
    parts, read = [], 0
    try:
        with zf.open(entry.info) as src:
            while block := src.read(TEXT_CHUNK):
                read += len(block)  # zipfile stops at the declared size, which was checked above
                parts.append(decoder.decode(block))
    except Exception as err:  # noqa: BLE001 - sorted by member_error, the rest re-raised
        own = member_error(err)
        if own is None or own is err:
            raise
        raise own from err
    finally:
        budget.used += read
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts)
