import numpy as np
import pytest

from nbutils.core.errors import UserError
from nbutils.tokenize import shards


def _write(tmp_path, name="batch_0001", segments=((0, 75), (0, 30))):
    writer = shards.ShardWriter(tmp_path, name, {"model": "tiny", "sample_rate": 32000, "num_codebooks": 4})
    rng = np.random.default_rng(0)
    expected = []
    for i, (start, frames) in enumerate(segments):
        codes = rng.integers(0, 2048, size=(frames, 4))
        writer.add(shards.Segment(path=f"t{i}.wav", start=start, frames=frames, track=f"{name}/t{i}.wav"), codes)
        expected.append(codes)
    return writer.commit(), expected


def test_roundtrip_is_memory_mapped_and_exact(tmp_path):
    index_path, expected = _write(tmp_path)
    shard = shards.open_shard(index_path, verify=True)
    assert isinstance(shard.codes, np.memmap) and shard.codes.dtype == np.int16
    for i, codes in enumerate(expected):
        assert np.array_equal(shard.segment_codes(i), codes)
    assert shard.meta["frames"] == 105 and shard.segments[1].offset == 75


def test_shard_without_index_does_not_exist(tmp_path):
    index_path, _ = _write(tmp_path)
    index_path.unlink()  # killed between the .npy and the .json
    assert shards.list_shards(tmp_path) == []
    with pytest.raises(UserError, match="No token shards"):
        shards.open_all(tmp_path)


def test_truncated_codes_are_detected(tmp_path):
    index_path, _ = _write(tmp_path)
    npy = index_path.with_suffix(".npy")
    npy.write_bytes(npy.read_bytes()[:-10])
    assert not shards.is_complete(index_path)
    with pytest.raises(UserError, match="incomplete or corrupt"):
        shards.open_shard(index_path)


def test_flipped_byte_is_caught_by_checksum(tmp_path):
    index_path, _ = _write(tmp_path)
    npy = index_path.with_suffix(".npy")
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF
    npy.write_bytes(bytes(data))
    assert shards.is_complete(index_path) and not shards.is_complete(index_path, full=True)


def test_mixed_models_are_refused(tmp_path):
    a, _ = _write(tmp_path, "a")
    writer = shards.ShardWriter(tmp_path, "b", {"model": "other", "sample_rate": 32000, "num_codebooks": 4})
    writer.add(shards.Segment(path="x.wav", start=0, frames=2), np.zeros((2, 4)))
    writer.commit()
    with pytest.raises(UserError, match="disagree on model"):
        shards.check_compatible(shards.open_all(tmp_path))


def test_shards_of_two_tokenize_settings_in_one_folder_are_refused_for_training(tmp_path):
    from nbutils.train import dataset

    for name, config_hash in (("a", "1111"), ("b", "2222")):  # what two unlocked runs left behind
        writer = shards.ShardWriter(tmp_path, name, {"model": "tiny", "sample_rate": 32000, "num_codebooks": 4,
                                                     "config_hash": config_hash})
        writer.add(shards.Segment(path="x.wav", start=0, frames=2), np.zeros((2, 4)))
        writer.commit()
    with pytest.raises(UserError, match=r"a.json and b.json were tokenized with different settings .*config hash "
                                        r"1111 vs 2222"):
        dataset.open_shards(tmp_path, num_codebooks=4, sample_rate=32000)


def _as_format_1(index_path):
    """Rewrite an index as versions before format 2 wrote it: the description in every segment."""
    import dataclasses
    import json

    shard = shards.open_shard(index_path)
    index = json.loads(index_path.read_text(encoding="utf-8"))
    index.pop("tracks")
    index["format"] = "nbutils-shard/1"
    index["segments"] = [dataclasses.asdict(s) for s in shard.segments]
    index_path.write_text(json.dumps(index), encoding="utf-8")
    return shard


def test_descriptions_are_stored_once_per_track_and_format_1_shards_still_read(tmp_path):
    import json

    writer = shards.ShardWriter(tmp_path, "b", {"model": "tiny", "num_codebooks": 4})
    long_text = "warm piano " * 90
    rows = [("a.wav", "b/a.wav", long_text, "sidecar")] * 3 + [
        ("c.wav", "b/c.wav", "other", "txt"), ("x.wav", "", "one", "default"), ("x.wav", "", "two", "default")]
    for i, (path, track, text, source) in enumerate(rows):
        writer.add(shards.Segment(path=path, start=float(i), frames=2, description=text, source=source, track=track),
                   np.full((2, 4), i))
    index_path = writer.commit()
    index = json.loads(index_path.read_text())
    assert index["format"] == "nbutils-shard/2"
    assert index["tracks"] == {"b/a.wav": {"description": long_text, "source": "sidecar"},
                               "b/c.wav": {"description": "other", "source": "txt"},
                               "x.wav": {"description": "one", "source": "default"}}
    assert index_path.read_text().count("warm piano") == 90  # once, not once per segment
    assert "description" not in index["segments"][0]
    assert index["segments"][5]["description"] == "two"  # no track id, other text: kept with the segment
    segments = shards.open_shard(index_path).segments
    assert [(s.description, s.source) for s in segments] == [(t, s) for _, _, t, s in rows]
    old = _as_format_1(index_path)
    assert shards.is_complete(index_path, full=True)
    assert shards.open_shard(index_path).segments == old.segments
