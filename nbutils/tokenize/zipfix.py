"""Open ZIPs that ``unzip`` reads but Python's ``zipfile`` refuses as a whole.

Two header fields make ``zipfile.ZipFile()`` raise for the whole archive, although only one
member (or none) is affected:

* a member name flagged UTF-8 (general purpose bit 11) whose bytes are not UTF-8 (some Windows
  archivers write these): ``UnicodeDecodeError``;
* a "version needed to extract" above 6.3 in the central directory (a bit flip is enough):
  ``NotImplementedError``. The field is advisory; ``unzip -l`` lists such a ZIP fine.

``open_repaired`` reads the ZIP through a view in which those fields are corrected in memory
(the flag cleared, so the name reads as cp437; the version set to 2.0): the file on disk is
never changed. What was corrected is listed in ``ZipFile.repairs`` (one line per member), and a
member that still cannot be read (an encryption or compression method we lack) fails alone.
"""

from __future__ import annotations

import bisect
import io
import os
import struct
import zipfile

CENTRAL = struct.Struct(zipfile.structCentralDir)  # "<4s4B4HL2L5H2L", 46 bytes
CENTRAL_SIGNATURE = b"PK\x01\x02"
LOCAL_SIGNATURE = b"PK\x03\x04"
VERSION_AT, FLAGS_AT = 6, 8  # offsets in a central directory record
LOCAL_FLAGS_AT = 6  # offset in a local file header
UTF8_FLAG = 0x800
READABLE_VERSION = 20  # 2.0: deflate, the version every reader supports


class PatchedFile(io.RawIOBase):
    """A read-only file whose bytes at some offsets read as other bytes."""

    def __init__(self, path: str | os.PathLike):
        self._file = open(path, "rb")
        self.name = os.fspath(path)
        self.patches: dict[int, int] = {}
        self._offsets: list[int] = []

    def patch(self, offset: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            self.patches[offset + i] = byte
        self._offsets = sorted(self.patches)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer) -> int:
        start = self._file.tell()
        count = self._file.readinto(buffer)
        if count:
            view = memoryview(buffer).cast("B")
            for offset in self._offsets[bisect.bisect_left(self._offsets, start):]:
                if offset >= start + count:
                    break
                view[offset - start] = self.patches[offset]
        return count

    def close(self) -> None:
        self._file.close()
        super().close()


class RepairedZip(zipfile.ZipFile):
    """A ``ZipFile`` over a ``PatchedFile``, which it closes with itself; ``repairs`` lists the fixes."""

    repairs: list[str] = []

    def close(self) -> None:
        view = self.fp
        super().close()
        if isinstance(view, PatchedFile):
            view.close()


def _central_records(fh) -> list[tuple[int, tuple, bytes]]:
    """``(offset, fields, name bytes)`` of every central directory record ([] if unreadable)."""
    end = zipfile._EndRecData(fh)  # the end-of-central-directory record (zip64 aware)
    if not end:
        return []
    size, offset = end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET]
    start = end[zipfile._ECD_LOCATION] - size  # where the directory really is (data may be prepended)
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    if start < 0 or offset < 0:
        return []
    fh.seek(start)
    data = fh.read(size)
    records, pos = [], 0
    while pos + CENTRAL.size <= len(data) and data[pos:pos + 4] == CENTRAL_SIGNATURE:
        fields = CENTRAL.unpack_from(data, pos)
        name_len, extra_len, comment_len = fields[12:15]
        records.append((start + pos, fields, data[pos + CENTRAL.size : pos + CENTRAL.size + name_len]))
        pos += CENTRAL.size + name_len + extra_len + comment_len
    return records


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _plan(view: PatchedFile) -> tuple[list[str], list[int]]:
    """Patch the central directory in ``view``; returns the repairs and the members whose local
    header flag must be cleared too (by their index in the directory)."""
    repairs, renamed = [], []
    for index, (offset, fields, raw) in enumerate(_central_records(view)):
        version, flags = fields[3], fields[5]
        shown = raw.decode("cp437")
        if version > zipfile.MAX_EXTRACT_VERSION:
            view.patch(offset + VERSION_AT, bytes([READABLE_VERSION]))
            repairs.append(f"{shown}: 'version needed to extract' {version / 10:.1f} in the ZIP's directory "
                           "(not a real version; read as 2.0)")
        if flags & UTF8_FLAG and not _is_utf8(raw):
            view.patch(offset + FLAGS_AT, struct.pack("<H", flags & ~UTF8_FLAG))
            repairs.append(f"{shown}: name flagged UTF-8 but not UTF-8 (read as cp437)")
            renamed.append(index)
    return repairs, renamed


def open_repaired(path: str | os.PathLike) -> RepairedZip | None:
    """The ZIP read through a corrected view, with ``.repairs``; None if there was nothing to correct
    (the ZIP is broken in another way) or it still cannot be opened."""
    view = PatchedFile(path)
    try:
        repairs, renamed = _plan(view)
        if not repairs:
            view.close()
            return None
        zf = RepairedZip(view)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, struct.error, NotImplementedError):
        view.close()
        return None
    for index in renamed:  # the local header repeats the flag; zipfile checks both names agree
        local = zf.filelist[index].header_offset
        view.seek(local)
        header = view.read(LOCAL_FLAGS_AT + 2)
        if header[:4] == LOCAL_SIGNATURE:
            flags = struct.unpack_from("<H", header, LOCAL_FLAGS_AT)[0]
            view.patch(local + LOCAL_FLAGS_AT, struct.pack("<H", flags & ~UTF8_FLAG))
    zf.repairs = repairs
    return zf
