import numpy as np

from nbutils.core import atomic
from nbutils.tokenize import ledger, shards


def _done(tokens, zip_path, config_hash="h1", **extra):
    writer = shards.ShardWriter(tokens, zip_path.stem, {"model": "tiny", "config_hash": config_hash})
    writer.add(shards.Segment(path="a.wav", start=0.0, frames=3), np.zeros((3, 4)))
    writer.commit()
    record = {"zip": zip_path.name, "status": "done", "config_hash": config_hash,
              "zip_bytes": zip_path.stat().st_size, **extra}
    ledger.append(tokens, record)
    return record


def test_done_needs_record_settings_same_zip_and_intact_shard(tmp_path):
    zip_path = tmp_path / "b.zip"
    zip_path.write_bytes(b"zip bytes")
    tokens = tmp_path / "tokens"
    assert not ledger.is_done(None, tokens, zip_path, "h1")
    record = _done(tokens, zip_path)
    assert ledger.latest(tokens)["b.zip"] == record
    assert ledger.is_done(record, tokens, zip_path, "h1")
    assert not ledger.is_done(record, tokens, zip_path, "other-settings")
    zip_path.write_bytes(b"a different zip")  # replaced on Drive
    assert not ledger.is_done(record, tokens, zip_path, "h1")
    zip_path.write_bytes(b"zip bytes")
    npy = shards.shard_dir(tokens) / "b.npy"
    npy.write_bytes(npy.read_bytes()[:-5])  # codes torn after the record was written
    assert not ledger.is_done(record, tokens, zip_path, "h1")


def test_latest_record_wins_and_failed_before_needs_an_unchanged_zip(tmp_path):
    zip_path = tmp_path / "b.zip"
    zip_path.write_bytes(b"x" * 10)
    tokens = tmp_path / "tokens"
    _done(tokens, zip_path)
    ledger.append(tokens, {"zip": "b.zip", "status": "failed", "config_hash": "h1", "zip_bytes": 10})
    record = ledger.latest(tokens)["b.zip"]
    assert not ledger.is_done(record, tokens, zip_path, "h1")
    assert ledger.failed_before(record, zip_path, "h1")
    zip_path.write_bytes(b"fixed zip, other size")
    assert not ledger.failed_before(record, zip_path, "h1")


def test_a_torn_line_is_skipped_and_the_next_record_survives(tmp_path):
    tokens = tmp_path / "tokens"
    ledger.append(tokens, {"zip": "a.zip", "status": "done"})
    with open(ledger.path_of(tokens), "ab") as fh:
        fh.write(b'{"zip": "b.zip", "sta')  # a kill in the middle of a line
    assert set(ledger.latest(tokens)) == {"a.zip"}
    ledger.append(tokens, {"zip": "c.zip", "status": "done"})
    assert set(ledger.latest(tokens)) == {"a.zip", "c.zip"}
    lines = ledger.path_of(tokens).read_text().splitlines()
    assert lines[1] == '{"zip": "b.zip", "sta' and len(lines) == 3


def test_append_line_after_torn_line_generic(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": ')
    atomic.append_line(path, '{"c": 3}')
    assert atomic.read_jsonl(path) == [{"a": 1}, {"c": 3}]
