"""Generated ZIP batches for the tokenize tests: every kind of member a user's Drive may hold.

Audio is synthesized (``nbutils.synth``), deterministic per seed, so two builds of a batch are
byte-identical and shards from an interrupted and an uninterrupted run can be compared.
"""

from __future__ import annotations

import io
import json
import struct
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

from nbutils.core import synth

FORMATS = {  # extension: (soundfile format, subtype)
    "wav": ("WAV", "PCM_16"),
    "wav24": ("WAV", "PCM_24"),
    "wavf": ("WAV", "FLOAT"),
    "wav8": ("WAV", "PCM_U8"),
    "flac": ("FLAC", "PCM_24"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "opus": ("OGG", "OPUS"),  # 8/12/16/24/48 kHz only
    "aiff": ("AIFF", "PCM_16"),
}


def encode_audio(wave: np.ndarray, sr: int, kind: str = "wav") -> bytes:
    """Bytes of ``wave`` (``(n,)`` or ``(n, channels)``) in one of ``FORMATS``."""
    fmt, subtype = FORMATS[kind]
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def tone(seconds: float, sr: int = 32_000, kind: str = "wav", channels: int = 1, style: str = "chords",
         seed: int = 0) -> bytes:
    return encode_audio(synth.track(style, seconds, sr, seed, channels), sr, kind)


def write_zip(path: Path, members: list[tuple[str, bytes]], *, compression=zipfile.ZIP_DEFLATED) -> Path:
    """Write members in order with fixed timestamps (same input, same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = compression
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return path


def _central_entries(data: bytes):
    """Offsets of every central directory record, with its name bytes."""
    pos = 0
    while (pos := data.find(b"PK\x01\x02", pos)) >= 0:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        yield pos, data[pos + 46 : pos + 46 + name_len]
        pos += 46


def patch_declared_size(path: Path, name: str, declared: int) -> None:
    """Make the central directory claim ``declared`` bytes for ``name`` (a zip-bomb's lie)."""
    data = bytearray(path.read_bytes())
    for pos, raw in _central_entries(bytes(data)):
        if raw == name.encode("utf-8"):
            struct.pack_into("<I", data, pos + 24, declared)
    path.write_bytes(bytes(data))


def clear_utf8_flag(path: Path, name: str) -> None:
    """Keep the UTF-8 bytes of ``name`` but drop the UTF-8 flag, as older macOS / Linux zip do."""
    data = bytearray(path.read_bytes())
    raw_name = name.encode("utf-8")
    with zipfile.ZipFile(path) as zf:
        local = next(i.header_offset for i in zf.infolist() if i.filename == name)
    struct.pack_into("<H", data, local + 6, struct.unpack_from("<H", data, local + 6)[0] & ~0x800)
    for pos, raw in _central_entries(bytes(data)):
        if raw == raw_name:
            struct.pack_into("<H", data, pos + 8, struct.unpack_from("<H", data, pos + 8)[0] & ~0x800)
    path.write_bytes(bytes(data))


def corrupt_member_data(path: Path, name: str) -> None:
    """Flip bytes in the middle of a member's compressed data (CRC / inflate error on read)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    start = info.header_offset + 30 + len(info.filename.encode("utf-8")) + len(info.extra)
    for i in range(start + info.compress_size // 3, start + info.compress_size // 3 + 64):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# Expected outcome per audio member of the "everything" batch: ok / failed / skipped.
LONG_SECONDS = 200.0  # the several-minute track
EVERYTHING = {
    "chords_44k_stereo.wav": "ok",
    "Folder A/arpeggio_48k_24bit.flac": "ok",
    "mp3s/percussion_22k_stereo.mp3": "ok",
    "vorbis/chords_16k.ogg": "ok",
    "float/arp_96k_float.wav": "ok",
    "long/several_minutes_8k_u8.wav": "ok",
    "Björk – Jóga/日本の歌.wav": "ok",
    "nfd/Café del Mar.flac": "ok",
    "a/song.wav": "ok",
    "b/song.wav": "ok",
    "tail/thirty_two_seconds.wav": "ok",
    "broken.wav": "failed",
    "crc_bad.flac": "failed",
    "liar.wav": "failed",
    "empty.wav": "failed",
    "header_only.wav": "failed",
    "blip.wav": "skipped",
    "silence.flac": "skipped",
    "../evil.wav": "failed",
    "/tmp/abs_evil.wav": "failed",
}
JUNK = ["__MACOSX/._chords_44k_stereo.wav", "._chords_44k_stereo.wav", ".DS_Store", "cover.jpg",
        "docs/notes.pdf"]
DESCRIPTIONS = {  # expected text source per ok track
    "chords_44k_stereo.wav": "metadata.jsonl",  # beside the ZIPs
    "Folder A/arpeggio_48k_24bit.flac": "metadata.jsonl",  # inside the ZIP
    "mp3s/percussion_22k_stereo.mp3": "metadata.json",
    "a/song.wav": "txt",
    "b/song.wav": "sidecar",
}


def everything_zip(folder: Path, name: str = "batch_everything.zip", *, long_seconds: float = LONG_SECONDS) -> Path:
    """One ZIP with mixed formats / rates / channels, a long track, unicode names, junk,
    zip-slip entries, a corrupt member, a lying size, an empty file and metadata of every kind."""
    nfd = unicodedata.normalize("NFD", "nfd/Café del Mar.flac")
    members = [
        ("chords_44k_stereo.wav", tone(3.0, 44_100, "wav", 2, "chords", 1)),
        ("Folder A/arpeggio_48k_24bit.flac", tone(2.5, 48_000, "flac", 1, "arpeggio", 2)),
        ("mp3s/percussion_22k_stereo.mp3", tone(4.0, 22_050, "mp3", 2, "percussion", 3)),
        ("vorbis/chords_16k.ogg", tone(2.0, 16_000, "ogg", 1, "chords", 4)),
        ("float/arp_96k_float.wav", tone(1.5, 96_000, "wavf", 1, "arpeggio", 5)),
        ("long/several_minutes_8k_u8.wav", tone(long_seconds, 8_000, "wav8", 1, "chords", 6)),
        ("Björk – Jóga/日本の歌.wav", tone(2.0, 32_000, "wav", 1, "arpeggio", 7)),
        (nfd, tone(2.0, 32_000, "flac", 1, "percussion", 8)),
        ("a/song.wav", tone(2.0, 24_000, "wav", 1, "chords", 9)),
        ("a/song.txt", "  warm chords\nfrom folder a  "),
        ("b/song.wav", tone(2.0, 24_000, "wav", 1, "arpeggio", 10)),
        ("b/song.json", json.dumps({"description": "bright arpeggio", "genre": "electronic",
                                    "moods": ["happy", "upbeat"], "bpm": 120, "key": "C major"})),
        ("tail/thirty_two_seconds.wav", tone(32.0, 16_000, "wav", 1, "chords", 11)),
        ("broken.wav", b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 8),
        ("crc_bad.flac", tone(3.0, 32_000, "wav", 1, "percussion", 12)),
        ("liar.wav", tone(2.0, 32_000, "wav", 1, "chords", 13)),
        ("empty.wav", b""),
        ("header_only.wav", encode_audio(np.zeros(0, np.float32), 32_000, "wav")),
        ("blip.wav", tone(0.3, 32_000, "wav", 1, "percussion", 14)),
        ("silence.flac", encode_audio(np.zeros(3 * 44_100, np.float32), 44_100, "flac")),
        ("../evil.wav", tone(1.5, 32_000, "wav", 1, "chords", 15)),
        ("/tmp/abs_evil.wav", tone(1.5, 32_000, "wav", 1, "chords", 16)),
        ("metadata.jsonl", json.dumps({"path": "Folder A/arpeggio_48k_24bit.flac", "duration": 2.5,
                                       "sample_rate": 48000, "description": "arpeggio from inside the zip"})
         + "\n{not json\n"),
        ("metadata.json", json.dumps([{"audio": "mp3s/percussion_22k_stereo.mp3", "text": "mp3 drums"}])),
        *[(junk, b"junk bytes") for junk in JUNK],
    ]
    path = write_zip(folder / name, members)
    corrupt_member_data(path, "crc_bad.flac")
    liar = next(len(d) for n, d in members if n == "liar.wav")
    patch_declared_size(path, "liar.wav", liar // 4)
    clear_utf8_flag(path, "Björk – Jóga/日本の歌.wav")
    (folder / "metadata.jsonl").write_text(
        json.dumps({"path": "chords_44k_stereo.wav", "duration": 3.0, "sample_rate": 44100,
                    "description": "chords from beside the zips"}) + "\n", encoding="utf-8")
    return path


def small_zip(folder: Path, name: str, n: int = 3, seconds: float = 2.0, seed: int = 0) -> Path:
    """A quick, valid batch of ``n`` short tracks (for crash and CLI tests)."""
    styles = synth.STYLES
    members = [(f"{name[:-4]}/track_{i:02d}.wav", tone(seconds + 0.37 * i, 32_000, "wav", 1,
                                                       styles[i % 3], seed + i)) for i in range(n)]
    return write_zip(folder / name, members)


def snapshot(tokens: Path) -> dict[str, bytes]:
    """Every shard file's bytes plus the set of ZIPs the ledger records as done."""
    from nbutils.tokenize import ledger

    files = {p.name: p.read_bytes() for p in sorted((tokens / "shards").glob("*")) if not p.name.startswith(".")}
    done = sorted(name for name, r in ledger.latest(tokens).items() if r["status"] == "done")
    return {**files, "_done": json.dumps(done).encode()}


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# Hostile ZIPs: header fields that real archivers (and bit flips) get wrong
# ---------------------------------------------------------------------------------------------


def replace_name_bytes(path: Path, old: bytes, new: bytes) -> None:
    """Replace a member's name bytes (same length) in its local header and the central directory,
    keeping the flags: ``new`` may be invalid UTF-8 under the UTF-8 flag, as some Windows tools write."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old) == 2, "the name must appear once in the local header and once in the directory"
    path.write_bytes(data.replace(old, new))


def set_extract_version(path: Path, name: str, version: int) -> None:
    """Make the central directory say "version needed to extract" ``version`` (64 = 6.4) for ``name``."""
    data = bytearray(path.read_bytes())
    for pos, raw in _central_entries(bytes(data)):
        if raw == name.encode("utf-8"):
            data[pos + 6] = version
    path.write_bytes(bytes(data))


def shift_directory_offset(path: Path, delta: int) -> None:
    """Add ``delta`` to the end record's directory offset: every member's offset then points ``delta``
    bytes too early (before the file's start for the first ones: EINVAL on seek)."""
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into("<I", data, end + 16, struct.unpack_from("<I", data, end + 16)[0] + delta)
    path.write_bytes(bytes(data))


def _crc32_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return table


def zipcrypto(data: bytes, password: bytes, crc: int, seed: int = 0) -> bytes:
    """``data`` encrypted with traditional PKWARE encryption (ZipCrypto), its 12-byte header first."""
    table = _crc32_table()
    keys = [0x12345678, 0x23456789, 0x34567890]

    def update(byte: int) -> None:
        keys[0] = (keys[0] >> 8) ^ table[(keys[0] ^ byte) & 0xFF]
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = (keys[2] >> 8) ^ table[(keys[2] ^ (keys[1] >> 24)) & 0xFF]

    for byte in password:
        update(byte)
    header = bytes(np.random.default_rng(seed).integers(0, 256, 11, dtype=np.uint8)) + bytes([crc >> 24])
    out = bytearray()
    for byte in header + data:
        k = keys[2] | 2
        out.append(byte ^ (((k * (k ^ 1)) >> 8) & 0xFF))
        update(byte)
    return bytes(out)


def write_encrypted_zip(path: Path, members: list[tuple[str, bytes]], password: bytes = b"secret") -> Path:
    """A ZIP whose members are stored and ZipCrypto-encrypted, as ``zip -e`` writes them."""
    import zlib

    out = bytearray()
    central = bytearray()
    for name, data in members:
        crc, raw_name = zlib.crc32(data), name.encode()
        body = zipcrypto(data, password, crc)
        common = (0x1, 0, 0, 0x2821, crc, len(body), len(data), len(raw_name))  # flag bit 0: encrypted
        central += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, *common, 0, 0, 0, 0, 0o100644 << 16,
                               len(out)) + raw_name
        out += struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, *common, 0) + raw_name + body
    start = len(out)
    out += central
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), start, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))
    return path
