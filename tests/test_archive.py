import unicodedata
import zipfile
import zlib

import pytest

from _tokenize_helpers import (
    clear_utf8_flag,
    corrupt_member_data,
    files_under,
    patch_declared_size,
    tone,
    truncate,
    write_zip,
)
from nbutils.tokenize import archive


def _kinds(path):
    with archive.open_zip(path) as zf:
        return {e.path: (e.kind, e.reason) for e in archive.scan(zf)}


def test_members_are_sorted_into_audio_text_junk_and_unsafe(tmp_path):
    path = write_zip(tmp_path / "b.zip", [
        ("a/x.wav", b"1"), ("b/x.wav", b"2"), ("x.MP3", b"3"), ("c/y.Flac", b"4"), ("d/z.ogg", b"5"),
        ("a/x.txt", b"t"), ("a/x.json", b"{}"), ("metadata.jsonl", b""),
        ("__MACOSX/a/._x.wav", b"j"), ("a/._x.wav", b"j"), (".DS_Store", b"j"), ("Thumbs.db", b"j"),
        ("cover.jpg", b"j"), ("a/.hidden.wav", b"j"),
        ("../up.wav", b"u"), ("/abs.wav", b"u"), ("a/../../up2.wav", b"u"), ("C:/win.wav", b"u"),
    ])
    kinds = _kinds(path)
    assert {p for p, (k, _) in kinds.items() if k == "audio"} == {"a/x.wav", "b/x.wav", "x.MP3", "c/y.Flac", "d/z.ogg"}
    assert {p for p, (k, _) in kinds.items() if k == "text"} == {"a/x.txt", "a/x.json", "metadata.jsonl"}
    assert kinds["__MACOSX/a/._x.wav"] == ("junk", "macOS resource fork folder")
    assert kinds["a/._x.wav"] == ("junk", "macOS resource fork")
    assert kinds["cover.jpg"] == ("junk", "not audio")
    assert kinds[".DS_Store"][0] == kinds["Thumbs.db"][0] == kinds["a/.hidden.wav"][0] == "junk"
    assert all(kinds[p][0] == "unsafe" and "zip-slip" in kinds[p][1]
               for p in ("../up.wav", "/abs.wav", "a/../../up2.wav", "C:/win.wav"))
    assert archive.count_audio(path) == (5, 5)


def test_audio_in_formats_we_cannot_decode_is_unsupported_not_junk(tmp_path):
    path = write_zip(tmp_path / "u.zip", [("memo.m4a", b"1"), ("x/song.AAC", b"2"), ("old.wma", b"3"),
                                          ("voice.opus", b"4"), ("a.aiff", b"5"), ("._memo.m4a", b"j")])
    kinds = _kinds(path)
    assert kinds["memo.m4a"] == ("unsupported", "unsupported audio format .m4a: convert to wav/flac/mp3/ogg")
    assert kinds["x/song.AAC"] == ("unsupported", "unsupported audio format .aac: convert to wav/flac/mp3/ogg")
    assert kinds["old.wma"][0] == "unsupported"
    assert kinds["voice.opus"][0] == kinds["a.aiff"][0] == "audio"  # libsndfile reads these
    assert kinds["._memo.m4a"] == ("junk", "macOS resource fork")
    assert archive.count_audio(path) == (2, 2)


def test_utf8_names_without_the_flag_and_nfd_names_are_repaired(tmp_path):
    name = "Björk – Jóga/日本の歌.wav"
    nfd = unicodedata.normalize("NFD", "Café/été.wav")
    path = write_zip(tmp_path / "u.zip", [(name, b"1"), (nfd, b"2"), ("plain.wav", b"3")])
    clear_utf8_flag(path, name)
    with zipfile.ZipFile(path) as zf:
        assert name not in zf.namelist()  # zipfile alone reads the bytes as cp437 mojibake
    assert set(_kinds(path)) == {name, "Café/été.wav", "plain.wav"}


def test_extraction_stays_under_root_and_keeps_same_basenames_apart(tmp_path):
    path = write_zip(tmp_path / "s.zip", [("a/song.wav", b"first"), ("b/song.wav", b"second")])
    root = tmp_path / "scratch"
    with archive.open_zip(path) as zf:
        entries = archive.scan(zf)
        out = [archive.extract(zf, e, root, max_bytes=1 << 20) for e in entries]
    assert [p.read_bytes() for p in out] == [b"first", b"second"]
    assert files_under(tmp_path) == ["s.zip", "scratch/000000.wav", "scratch/000001.wav"]  # named by index


@pytest.mark.parametrize("name", ["../evil.wav", "/tmp/nbutils-abs-evil.wav", "a/../../evil.wav"])
def test_zip_slip_entries_are_refused_even_when_extracted_directly(tmp_path, name):
    path = write_zip(tmp_path / "z.zip", [(name, b"payload")])
    root = tmp_path / "deep" / "scratch"
    with archive.open_zip(path) as zf:
        (entry,) = archive.scan(zf)
        assert entry.kind == "unsafe"
        with pytest.raises(archive.MemberError, match="refused"):
            archive.extract(zf, entry, root, max_bytes=1 << 20)
    assert files_under(tmp_path) == ["z.zip"]


def test_member_that_holds_more_than_it_declares_is_refused(tmp_path):
    data = tone(2.0, 32_000, "wav")
    path = write_zip(tmp_path / "bomb.zip", [("liar.wav", data), ("ok.wav", data)])
    patch_declared_size(path, "liar.wav", 1000)
    with archive.open_zip(path) as zf:
        liar, ok = archive.scan(zf)
        with pytest.raises(archive.MemberError, match="more data than its declared 1000 bytes"):
            archive.extract(zf, liar, tmp_path / "x", max_bytes=1 << 30)
        assert archive.extract(zf, ok, tmp_path / "x", max_bytes=1 << 30).read_bytes() == data
    assert files_under(tmp_path / "x") == ["000001.wav"]  # the partial file (000000.wav) was removed


def test_member_over_the_cap_is_refused_before_reading(tmp_path):
    path = write_zip(tmp_path / "big.zip", [("big.wav", bytes(3 << 20))])
    with archive.open_zip(path) as zf:
        (entry,) = archive.scan(zf)
        with pytest.raises(archive.MemberError, match="over the 2 MiB per-file cap"):
            archive.extract(zf, entry, tmp_path / "x", max_bytes=2 << 20)
    assert not (tmp_path / "x" / "big.wav").exists()


@pytest.mark.parametrize("size, cap, message", [
    (3000, 1000, "declares 3000 bytes, over the 1000 bytes per-file cap"),  # a tiny --max-member-mb
    ((2 << 20) + 10, 2 << 20, f"declares {(2 << 20) + 10} bytes, over the {2 << 20} bytes per-file cap"),
    (3 << 19, 1 << 20, "declares 1.5 MiB, over the 1 MiB per-file cap"),
])
def test_the_cap_message_never_rounds_both_sizes_to_the_same_number(tmp_path, size, cap, message):
    path = write_zip(tmp_path / "big.zip", [("big.wav", bytes(size))])
    with archive.open_zip(path) as zf:
        (entry,) = archive.scan(zf)
        with pytest.raises(archive.MemberError, match=message):
            archive.extract(zf, entry, tmp_path / "x", max_bytes=cap)


def test_corrupt_member_fails_alone(tmp_path):
    path = write_zip(tmp_path / "c.zip", [("bad.wav", tone(3.0)), ("good.wav", tone(1.0))])
    corrupt_member_data(path, "bad.wav")
    with archive.open_zip(path) as zf:
        bad, good = archive.scan(zf)
        with pytest.raises(archive.MemberError, match="corrupt in ZIP"):
            archive.extract(zf, bad, tmp_path / "x", max_bytes=1 << 30)
        assert archive.extract(zf, good, tmp_path / "x", max_bytes=1 << 30).stat().st_size == good.size


def test_stored_members_are_checked_too(tmp_path):
    path = write_zip(tmp_path / "s.zip", [("a.wav", tone(1.0)), ("b.wav", tone(1.0))],
                     compression=zipfile.ZIP_STORED)
    corrupt_member_data(path, "a.wav")
    with archive.open_zip(path) as zf:
        a, b = archive.scan(zf)
        with pytest.raises(archive.MemberError, match="CRC"):
            archive.extract(zf, a, tmp_path / "x", max_bytes=1 << 30)
        archive.extract(zf, b, tmp_path / "x", max_bytes=1 << 30)


def test_truncated_zip_cannot_be_opened_and_counts_zero(tmp_path):
    path = truncate(write_zip(tmp_path / "t.zip", [("a.wav", tone(2.0)), ("b.wav", tone(2.0))]))
    with pytest.raises(zipfile.BadZipFile):
        archive.open_zip(path)
    assert archive.count_audio(path) == (0, 0)


def test_stage_copies_to_scratch_or_streams_from_source(tmp_path):
    path = write_zip(tmp_path / "src" / "a.zip", [("a.wav", b"x")])
    copied = archive.stage(path, tmp_path / "work")
    assert copied == tmp_path / "work" / "a.zip" and copied.read_bytes() == path.read_bytes()
    assert archive.stage(path, tmp_path / "work2", copy_zip=False) == path


def test_text_members_are_read_with_a_size_limit(tmp_path):
    path = write_zip(tmp_path / "t.zip", [("a.txt", "\ufeffhello".encode()), ("big.json", b"x" * 2000)])
    with archive.open_zip(path) as zf:
        small, big = archive.scan(zf)
        assert archive.read_text(zf, small) == "hello"
        with pytest.raises(archive.MemberError, match="larger than"):
            archive.read_text(zf, big, limit=1000)


def test_stage_streams_from_source_when_local_disk_is_too_small(tmp_path, monkeypatch):
    import collections

    path = write_zip(tmp_path / "src" / "a.zip", [("a.wav", bytes(4096))])
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(archive.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 100, 100))
    assert archive.stage(path, tmp_path / "work") == path
    assert not (tmp_path / "work" / "a.zip").exists()


def test_directory_fields_zipfile_refuses_are_corrected_in_memory(tmp_path):
    from _tokenize_helpers import replace_name_bytes, set_extract_version

    path = write_zip(tmp_path / "r.zip", [("ok.wav", b"first"), ("bad_é.wav", b"second"), ("v.wav", b"third")])
    replace_name_bytes(path, "bad_é.wav".encode(), b"bad_\xff\xfe.wav")
    set_extract_version(path, "v.wav", 64)
    before = path.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        zipfile.ZipFile(path)  # what crashed the whole run
    with archive.open_zip(path) as zf:
        entries = archive.scan(zf)
        assert [e.path for e in entries] == ["ok.wav", "bad_\xff\xfe.wav".encode("latin-1").decode("cp437"), "v.wav"]
        out = [archive.extract(zf, e, tmp_path / "x", max_bytes=1 << 20).read_bytes() for e in entries]
        assert zf.repairs == ["bad_\u00a0\u25a0.wav: name flagged UTF-8 but not UTF-8 (read as cp437)",
                              "v.wav: 'version needed to extract' 6.4 in the ZIP's directory (not a real version; "
                              "read as 2.0)"]
    assert out == [b"first", b"second", b"third"]
    assert path.read_bytes() == before  # the file itself is never changed


@pytest.mark.parametrize("damage", ["truncate", "garbage", "bad_offset", "empty"])
def test_a_zip_that_cannot_be_read_is_a_bad_zip_never_another_error(tmp_path, damage):

    path = write_zip(tmp_path / "d.zip", [("a.wav", b"x" * 1000)])
    if damage == "truncate":
        truncate(path, 0.5)
    elif damage == "garbage":
        path.write_bytes(b"PK\x05\x06" + bytes(range(256)) * 4)
    elif damage == "bad_offset":
        data = bytearray(path.read_bytes())
        end = data.rfind(b"PK\x05\x06")
        data[end + 12 : end + 16] = (2**31).to_bytes(4, "little")  # directory size beyond the file
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"")
    with pytest.raises(zipfile.BadZipFile):
        archive.open_zip(path).close()
    assert archive.count_audio(path) == (0, 0)


def test_encrypted_members_are_named_as_such(tmp_path):
    from _tokenize_helpers import write_encrypted_zip

    path = write_encrypted_zip(tmp_path / "e.zip", [("a.wav", b"RIFF..."), ("a.txt", b"calm")])
    with archive.open_zip(path) as zf:
        audio, text = archive.scan(zf)
        with pytest.raises(archive.MemberError, match="^encrypted: extract the ZIP with its password and re-zip it "
                                                      "without one$"):
            archive.extract(zf, audio, tmp_path / "x", max_bytes=1 << 20)
        with pytest.raises(archive.MemberError, match="^encrypted"):
            archive.read_text(zf, text)


def test_member_errors_are_the_members_fault_only_when_they_are(tmp_path):
    try:
        open(tmp_path / ("n" * 300), "wb")  # a real ENAMETOOLONG from the local file system
    except OSError as err:
        too_long = err
    assert str(archive.member_error(too_long)).startswith("name too long for the local disk")
    try:
        with open("/dev/full", "wb") as fh:  # a real ENOSPC: the disk's fault, the ZIP is retried
            fh.write(b"x")
            fh.flush()
    except OSError as err:
        full = err
    assert archive.member_error(full) is None
    assert str(archive.member_error(zlib.error("invalid stored block lengths"))) == \
        "corrupt in ZIP (error: invalid stored block lengths)"


def test_text_members_share_one_budget_per_zip(tmp_path):
    path = write_zip(tmp_path / "t.zip", [(f"{i}/metadata.jsonl", b"x" * 4000) for i in range(4)])
    budget = archive.TextBudget(total=10_000)
    with archive.open_zip(path) as zf:
        entries = archive.scan(zf)
        assert [len(archive.read_text(zf, e, budget=budget)) for e in entries[:2]] == [4000, 4000]
        with pytest.raises(archive.OverBudget, match="passed the 10000 bytes budget"):
            archive.read_text(zf, entries[2], budget=budget)
    assert budget.used == 8000


def test_scratch_names_come_from_the_index_never_the_name(tmp_path):
    path = write_zip(tmp_path / "n.zip", [("a.wav", b"1"), ("../b.FLAC", b"2"), ("x" * 200 + ".wav", b"3"),
                                          ("noext", b"4"), ("c.a b", b"5")])
    with archive.open_zip(path) as zf:
        assert [archive.scratch_name(e) for e in archive.scan(zf)] == ["000000.wav", "000001.flac", "000002.wav",
                                                                       "000003", "000004"]
