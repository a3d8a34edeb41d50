"""Fuzz: random byte mutations of a small valid ZIP never stop the run.

Each mutated copy is one ZIP batch in one folder, with a good batch sorted after them. One
tokenize run over the folder must exit 0, write a ledger line for every ZIP (done with its
members' reasons, or failed with the ZIP's), and tokenize the good batch. The seed is fixed, so
a failure here reproduces exactly.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

import _tokenize_helpers as h
from conftest import last_json
from nbutils import cli
from nbutils.tokenize import ledger

SEED = 20261116


def small_valid_zip(folder) -> bytes:
    """Two short 8 kHz tracks (one stored, one deflated), a metadata.jsonl, a sidecar and a .txt."""
    import zipfile

    path = h.write_zip(folder / "seed.zip", [
        ("music/a.wav", h.tone(1.1, 8_000, "wav8", 1, "chords", 1)),
        ("music/a.json", json.dumps({"description": "warm chords", "bpm": 90})),
        ("music/b.txt", "bright arpeggio"),
        ("metadata.jsonl", json.dumps({"path": "music/b.wav", "description": "from metadata"}) + "\n"),
    ])
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(zipfile.ZipInfo("music/b.wav", date_time=(2024, 1, 1, 0, 0, 0)),
                    h.tone(1.1, 8_000, "wav8", 1, "arpeggio", 2))
    data = path.read_bytes()
    path.unlink()
    return data


def mutations(data: bytes, count: int, seed: int = SEED):
    """``count`` mutated copies of ``data``: byte flips anywhere, flips in the headers (the central
    directory and its end record, where one byte decides how the whole ZIP reads), truncations and
    inserted bytes."""
    rng = np.random.default_rng(seed)
    directory = data.find(b"PK\x01\x02")
    for i in range(count):
        buf = bytearray(data)
        kind = i % 4
        if kind == 0:  # anywhere
            for pos in rng.integers(0, len(buf), rng.integers(1, 9)):
                buf[pos] = int(rng.integers(0, 256))
        elif kind == 1:  # the central directory and end record
            for pos in rng.integers(directory, len(buf), rng.integers(1, 5)):
                buf[pos] = int(rng.integers(0, 256))
        elif kind == 2:  # local headers: the first 64 bytes after each signature
            starts = [j for j in range(len(data)) if data.startswith(b"PK\x03\x04", j)]
            start = starts[int(rng.integers(0, len(starts)))]
            for pos in rng.integers(start, start + 64, rng.integers(1, 4)):
                buf[pos] = int(rng.integers(0, 256))
        elif rng.random() < 0.5:  # truncated
            del buf[int(rng.integers(0, len(buf))):]
        else:  # bytes inserted
            pos = int(rng.integers(0, len(buf)))
            buf[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
        yield bytes(buf)


def _fuzz(tmp_path, count: int):
    zips = tmp_path / "zips"
    zips.mkdir()
    seed = small_valid_zip(tmp_path)
    for i, mutated in enumerate(mutations(seed, count)):
        (zips / f"m{i:04d}.zip").write_bytes(mutated)
    h.small_zip(zips, "zz_good.zip", n=2, seconds=1.2)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["tokenize", "--zips", str(zips), "--out", str(tmp_path / "tokens"), "--model", "tiny",
                         "--scratch", str(tmp_path / "scratch"), "--segment-seconds", "1", "--no-progress",
                         "--describe", "none"])
    assert code == 0, stderr.getvalue()[-3000:]
    summary = last_json(stdout.getvalue())
    records = ledger.latest(tmp_path / "tokens")
    assert set(records) == {p.name for p in zips.glob("*.zip")}  # a ledger line per ZIP
    assert records["zz_good.zip"]["status"] == "done" and records["zz_good.zip"]["files_ok"] == 2
    assert summary["zips_done"] + summary["zips_failed"] == count + 1
    assert not list((tmp_path / "scratch").rglob("*.wav"))  # scratch emptied whatever happened
    unexpected = [r["reason"] for r in records.values() if r["reason"].startswith("unexpected error")]
    assert not unexpected, unexpected  # every failure is one we understand, not a caught bug
    return records


def test_200_mutations_of_a_valid_zip_never_stop_the_run(tmp_path):
    records = _fuzz(tmp_path, 200)
    statuses = {r["status"] for r in records.values()}
    assert statuses == {"done", "failed"}  # the mutations reach both outcomes


@pytest.mark.slow
@pytest.mark.longer  # the 200-mutation run above is its short form
def test_2000_mutations_of_a_valid_zip_never_stop_the_run(tmp_path):
    _fuzz(tmp_path, 2000)
