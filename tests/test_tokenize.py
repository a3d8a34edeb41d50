"""The tokenize stage end to end: real ZIPs, real decoding, the tiny model's real EnCodec."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import _tokenize_helpers as h
from conftest import REPO, last_json, run_cli
from nbutils import cli
from nbutils.core import audio, config, models
from nbutils.core.errors import UserError
from nbutils.tokenize import ledger, shards
from nbutils.tokenize import stage as tokenize

KEPT_SECONDS = {  # seconds of each ok track of the "everything" batch that end up in the shard
    "chords_44k_stereo.wav": 3.0, "Folder A/arpeggio_48k_24bit.flac": 2.5, "mp3s/percussion_22k_stereo.mp3": 4.0,
    "vorbis/chords_16k.ogg": 2.0, "float/arp_96k_float.wav": 1.5, "long/several_minutes_8k_u8.wav": h.LONG_SECONDS,
    "Björk – Jóga/日本の歌.wav": 2.0, "nfd/Café del Mar.flac": 2.0, "a/song.wav": 2.0, "b/song.wav": 2.0,
    "tail/thirty_two_seconds.wav": 30.0,  # its 2 s tail is below min_tail_seconds
}
CONTRACT_KEYS = {"zips_done", "zips_skipped", "zips_failed", "files_ok", "files_failed", "files_skipped",
                 "segments", "audio_seconds", "frames"}


def _run(zips, out, scratch, **kwargs):
    kwargs.setdefault("describe", "none")  # automatic descriptions: tests/test_describe.py
    cfg = tokenize.TokenizeConfig(zips=str(zips), out=str(out), model=kwargs.pop("model", "tiny"),
                                  scratch=str(scratch), progress=False, **kwargs)
    return tokenize.run(cfg)


# ---------------------------------------------------------------------------------------------
# The batch with everything in it (tokenized once for this module)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def everything(tmp_path_factory):
    root = tmp_path_factory.mktemp("everything")
    zips = root / "zips"
    zips.mkdir()
    h.everything_zip(zips)
    h.truncate(h.small_zip(zips, "batch_truncated.zip"))
    summary = _run(zips, root / "tokens", root / "scratch", default_description="trigger word")
    return root, summary


def test_counts_and_reasons(everything):
    root, s = everything
    expected = h.EVERYTHING
    assert s["files_ok"] == sum(v == "ok" for v in expected.values()) == 11
    assert s["files_failed"] == sum(v == "failed" for v in expected.values()) == 7
    assert s["files_skipped"] == sum(v == "skipped" for v in expected.values()) == 2
    assert s["entries_ignored"] == len(h.JUNK)
    assert (s["zips_found"], s["zips_done"], s["zips_failed"], s["zips_skipped"]) == (2, 1, 1, 0)
    reasons = {(f["zip"], f["path"]): f["reason"] for f in s["failures"]}
    assert reasons[("batch_truncated.zip", "")].startswith("corrupt or truncated ZIP")
    zip_reasons = {path: r for (z, path), r in reasons.items() if z == "batch_everything.zip"}
    assert zip_reasons == {
        "../evil.wav": "refused: '..' in the path (zip-slip)",
        "/tmp/abs_evil.wav": "refused: absolute path (zip-slip)",
        "broken.wav": "unreadable audio (Error in WAV file. No 'data' chunk marker.)",
        "crc_bad.flac": "corrupt in ZIP (BadZipFile: Bad CRC-32 for file 'crc_bad.flac')",
        "liar.wav": zip_reasons["liar.wav"],
        "empty.wav": "empty file (0 bytes)",
        "header_only.wav": "no audio frames (the file holds only a header)",
    }
    assert "more data than its declared" in zip_reasons["liar.wav"] and "zip-bomb" in zip_reasons["liar.wav"]
    record = ledger.latest(root / "tokens")["batch_everything.zip"]
    assert {f["path"]: f["reason"] for f in record["skipped"]} == {
        "blip.wav": "too short (0.30 s < 1 s)", "silence.flac": "silent (peak below -60 dBFS)"}
    # dropped audio is reported, not silent: the 32 s track's 2 s tail, the silent file
    assert s["tail_seconds_dropped"] == pytest.approx(2.0, abs=0.01)
    assert s["silent_segments"] == 1 and s["silent_seconds"] == pytest.approx(3.0, abs=0.01)
    assert ledger.latest(root / "tokens")["batch_truncated.zip"]["status"] == "failed"


def test_shard_index_codes_and_descriptions(everything):
    root, s = everything
    shard = shards.open_shard(root / "tokens" / "shards" / "batch_everything.json", verify=True)
    assert isinstance(shard.codes, np.memmap) and shard.codes.shape == (s["frames"], 4)
    meta = shard.meta
    assert (meta["model"], meta["codec"], meta["sample_rate"], meta["frame_rate"]) == ("tiny", "tiny", 32000, 50)
    assert (meta["num_codebooks"], meta["audio_channels"], meta["zip"]) == (4, 1, "batch_everything.zip")
    assert meta["segment_seconds"] == 30.0 and meta["config_hash"]
    ok = [p for p, v in h.EVERYTHING.items() if v == "ok"]
    assert sorted({seg.path for seg in shard.segments}) == sorted(ok)  # unicode names repaired, NFC
    by_track = {}
    for seg in shard.segments:
        assert seg.track == f"batch_everything.zip/{seg.path}"
        by_track.setdefault(seg.path, []).append(seg)
    long = by_track["long/several_minutes_8k_u8.wav"]
    assert [seg.start for seg in long] == [0, 30, 60, 90, 120, 150, 180]
    assert [seg.frames for seg in long] == [1500] * 6 + [1000]
    assert [seg.frames for seg in by_track["tail/thirty_two_seconds.wav"]] == [1500]  # 2 s tail dropped
    for path, seconds in KEPT_SECONDS.items():  # frames ~ duration x 50, within a frame per segment
        segs = by_track[path]
        assert abs(sum(seg.frames for seg in segs) - seconds * 50) <= len(segs), path
    assert by_track["chords_44k_stereo.wav"][0].frames == 150  # 3 s
    assert by_track["Folder A/arpeggio_48k_24bit.flac"][0].frames == 125  # 2.5 s
    sources = {p: segs[0].source for p, segs in by_track.items()}
    assert {p: sources[p] for p in h.DESCRIPTIONS} == h.DESCRIPTIONS
    assert {sources[p] for p in ok if p not in h.DESCRIPTIONS} == {"default"}
    assert by_track["vorbis/chords_16k.ogg"][0].description == "trigger word"
    assert s["description_sources"] == {"metadata.jsonl": 2, "metadata.json": 1, "sidecar": 1, "txt": 1,
                                        "default": 6}
    # every segment holds what the codec gives for that segment (batch size 1, the CPU default)
    from nbutils.tokenize import archive
    from nbutils.tokenize.encoder import Encoder

    encoder = Encoder(*models.load_codec("tiny"), device="cpu")
    with archive.open_zip(root / "zips" / "batch_everything.zip") as zf:
        members = {e.path: e.info for e in archive.scan(zf)}
        for path in (p for p in KEPT_SECONDS if not p.startswith("long/")):
            (root / "check").write_bytes(zf.read(members[path]))
            pieces = list(audio.iter_segments(root / "check", audio.TrackReport()))
            stored = [i for i, seg in enumerate(shard.segments) if seg.path == path]
            assert len(pieces) == len(stored), path
            for piece, i in zip(pieces, stored):
                np.testing.assert_array_equal(shard.segment_codes(i), encoder.encode([piece.audio])[0], err_msg=path)
    (root / "check").unlink()


def test_nothing_outside_scratch_and_scratch_is_empty(everything):
    root, _ = everything
    assert list((root / "scratch").iterdir()) == []
    written = h.files_under(root)
    allowed = {"zips/", "tokens/shards/batch_everything.", "tokens/ledger.jsonl", "tokens/tokenize_config.json",
               "tokens/descriptions.jsonl"}
    assert all(any(f.startswith(a) for a in allowed) for f in written), written
    assert not Path("/tmp/abs_evil.wav").exists() and not (root / "evil.wav").exists()


def test_second_run_does_nothing_and_does_not_load_the_model(everything, monkeypatch):
    root, _ = everything
    before = h.snapshot(root / "tokens")
    monkeypatch.setattr(models, "load_codec", lambda *a, **k: pytest.fail("the model was loaded"))
    s = _run(root / "zips", root / "tokens", root / "scratch", default_description="trigger word")
    assert (s["zips_done"], s["zips_skipped"], s["zips_failed"], s["zips_failed_before"]) == (0, 2, 0, 1)
    assert s["files_ok"] == s["files_failed"] == s["segments"] == 0
    assert h.snapshot(root / "tokens") == before


def test_summary_table_lists_zips_and_reasons(everything):
    root, _ = everything
    text = tokenize.table(root / "tokens")
    assert "batch_everything.zip" in text and "batch_truncated.zip" in text
    assert "batch_truncated.zip: ZIP failed: corrupt or truncated ZIP" in text
    assert "batch_everything.zip/empty.wav: failed: empty file (0 bytes)" in text
    assert "batch_everything.zip/blip.wav: skipped: too short" in text
    assert tokenize.table(root / "nothing-here").startswith("No ZIP tokenized yet")


# ---------------------------------------------------------------------------------------------
# Small batches: settings, test mode, retries, models
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Three quick ZIPs (one with a unicode name), and an uninterrupted run of them as reference."""
    root = tmp_path_factory.mktemp("small")
    zips = root / "zips"
    for i, name in enumerate(["batch_0001.zip", "batch_0002.zip", "Sommer – Mix.zip"]):
        h.small_zip(zips, name, n=3, seconds=1.5, seed=10 * i)
    (zips / "metadata.jsonl").write_text(json.dumps({"path": "batch_0001/track_00.wav", "description": "first"}))
    reference = root / "reference"
    summary = _run(zips, reference, root / "scratch")
    assert summary["zips_done"] == 3
    return zips, h.snapshot(reference), reference


def test_limit_keeps_nothing_and_reports_throughput_and_eta(small, tmp_path, capsys):
    zips, reference, _ = small
    s = _run(zips, tmp_path / "tokens", tmp_path / "scratch", limit=4)
    assert s["files_ok"] == 4 and s["zips_done"] == 0 and s["limit"] == 4
    assert s["files_per_s"] > 0 and s["audio_seconds_per_s"] > 0
    assert s["files_remaining"] == 9 and s["eta_seconds"] > 0
    assert "ETA for all 9 audio files" in capsys.readouterr().out
    assert not (tmp_path / "tokens").exists() and list((tmp_path / "scratch").iterdir()) == []
    full = _run(zips, tmp_path / "tokens", tmp_path / "scratch")
    assert full["zips_done"] == 3 and h.snapshot(tmp_path / "tokens") == reference


def test_test_mode_progress_counts_to_the_limit(small, tmp_path, capsys):
    zips, _, _ = small
    cfg = tokenize.TokenizeConfig(zips=str(zips), out=str(tmp_path / "tokens"), model="tiny", describe="none",
                                  scratch=str(tmp_path / "scratch"), limit=4)  # progress bars on
    tokenize.run(cfg)
    overall = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "all ZIPs" in line]
    assert "4/4" in overall[-1] and "100%" in overall[-1], overall[-1]  # not 4/9 (44%)


def test_limit_in_a_folder_with_finished_zips_leaves_them_alone(small, tmp_path):
    zips, reference, finished = small
    shutil.copytree(finished, tmp_path / "tokens")
    s = _run(zips, tmp_path / "tokens", tmp_path / "scratch", limit=2)
    assert s["zips_skipped"] == 3 and s["files_ok"] == 0 and h.snapshot(tmp_path / "tokens") == reference


def test_other_codec_settings_are_refused_with_what_differs(small, tmp_path):
    zips, _, finished = small
    shutil.copytree(finished, tmp_path / "tokens")
    with pytest.raises(UserError) as err:
        _run(zips, tmp_path / "tokens", tmp_path / "scratch", segment_seconds=10)
    assert "segment_seconds: 30.0 -> 10.0" in str(err.value) and "--out" in str(err.value)
    with pytest.raises(UserError, match="model: 'tiny' -> 'tiny-stereo'"):
        _run(zips, tmp_path / "tokens", tmp_path / "scratch", model="tiny-stereo")
    s = _run(zips, tmp_path / "tokens", tmp_path / "scratch", default_description="new text")
    assert s["zips_done"] == 0 and "Description settings changed" in s["warnings"][0]
    (tmp_path / "tokens" / tokenize.SETTINGS_FILE).unlink()  # the shards still say how they were made
    with pytest.raises(UserError, match="segment_seconds"):
        _run(zips, tmp_path / "tokens", tmp_path / "scratch", segment_seconds=10)


def test_failed_zip_is_skipped_while_unchanged_then_retried(tmp_path):
    zips = tmp_path / "zips"
    h.small_zip(zips, "good.zip", n=2, seconds=1.2)
    broken = h.truncate(h.small_zip(zips, "broken.zip", n=2, seconds=1.2))
    first = _run(zips, tmp_path / "tokens", tmp_path / "scratch")
    assert (first["zips_done"], first["zips_failed"]) == (1, 1)
    again = _run(zips, tmp_path / "tokens", tmp_path / "scratch")
    assert (again["zips_done"], again["zips_failed"], again["zips_skipped"]) == (0, 0, 2)
    forced = _run(zips, tmp_path / "tokens", tmp_path / "scratch", retry_failed=True)
    assert (forced["zips_done"], forced["zips_failed"]) == (0, 1)
    h.small_zip(zips, "broken.zip", n=2, seconds=1.2)  # the user replaces it with a good copy
    assert broken.stat().st_size != 0
    fixed = _run(zips, tmp_path / "tokens", tmp_path / "scratch")
    assert (fixed["zips_done"], fixed["zips_skipped"]) == (1, 1)


def test_an_unreadable_zip_fails_for_now_and_is_retried(tmp_path):
    zips = tmp_path / "zips"
    h.small_zip(zips, "good.zip", n=1, seconds=1.2)
    (zips / "odd.zip").mkdir()  # an I/O error, not a corrupt ZIP: worth another try next run
    first = _run(zips, tmp_path / "tokens", tmp_path / "scratch")
    assert (first["zips_done"], first["zips_failed"]) == (1, 1)
    assert first["failures"][0]["reason"].startswith("could not read the ZIP (IsADirectoryError")
    again = _run(zips, tmp_path / "tokens", tmp_path / "scratch")
    assert (again["zips_failed"], again["zips_skipped"]) == (1, 1)
    assert list((tmp_path / "scratch").iterdir()) == []


def test_a_scratch_folder_that_cannot_be_written_is_named_as_such(tmp_path):
    zips = tmp_path / "zips"
    h.small_zip(zips, "good.zip", n=1, seconds=1.2)
    (tmp_path / "scratch").write_text("a file, not a folder")  # a mistyped --scratch
    s = _run(zips, tmp_path / "tokens", tmp_path / "scratch")
    reason = s["failures"][0]["reason"]
    assert s["zips_failed"] == 1 and reason.startswith(f"could not write to the scratch folder {tmp_path / 'scratch'}")
    assert "check --scratch" in reason and not ledger.latest(tmp_path / "tokens")["good.zip"]["permanent"]


def test_a_replaced_zip_is_encoded_again(tmp_path):
    zips = tmp_path / "zips"
    h.small_zip(zips, "a.zip", n=2, seconds=1.2)
    _run(zips, tmp_path / "tokens", tmp_path / "scratch")
    h.small_zip(zips, "a.zip", n=3, seconds=1.2)  # new content, same name
    s = _run(zips, tmp_path / "tokens", tmp_path / "scratch")
    assert s["zips_done"] == 1 and s["files_ok"] == 3
    assert len(shards.open_shard(tmp_path / "tokens" / "shards" / "a.json").segments) == 3


def test_stereo_model_interleaves_left_and_right(tmp_path):
    zips = tmp_path / "zips"
    left, right = h.synth.track("arpeggio", 2.0, 48_000, 1), h.synth.track("percussion", 2.0, 48_000, 2)
    h.write_zip(zips / "st.zip", [("lr.flac", h.encode_audio(np.stack([left, right], 1), 48_000, "flac")),
                                  ("mono.wav", h.tone(1.5, 32_000))])
    s = _run(zips, tmp_path / "tokens", tmp_path / "scratch", model="tiny-stereo")
    assert s["files_ok"] == 2
    shard = shards.open_shard(tmp_path / "tokens" / "shards" / "st.json")
    assert shard.meta["num_codebooks"] == 8 and shard.meta["audio_channels"] == 2
    import torch

    codec, _ = models.load_codec("tiny-stereo")
    wav = tmp_path / "lr.flac"
    wav.write_bytes(h.encode_audio(np.stack([left, right], 1), 48_000, "flac"))
    decoded = torch.from_numpy(audio.load(wav, channels=2))
    with torch.inference_mode():  # L and R as a batch of two mono signals, as transformers does
        expected = codec.encode(decoded[:, None]).audio_codes[0].numpy()
    codes = shard.segment_codes(0)
    assert codes.shape == (100, 8)
    np.testing.assert_array_equal(codes[:, 0::2], expected[0].T)
    np.testing.assert_array_equal(codes[:, 1::2], expected[1].T)
    assert (shard.segment_codes(1)[:, 0::2] == shard.segment_codes(1)[:, 1::2]).all()  # mono -> L = R


def test_batches_end_to_end_map_each_segment_to_its_codes(tmp_path):
    """batch_size 2 with equal-length tracks: the shard holds exactly the codes of those batches."""
    from nbutils.tokenize.encoder import Encoder

    zips = tmp_path / "zips"
    names = [f"t{i}.wav" for i in range(3)]
    members = [(name, h.tone(2.0, 44_100, "wav", 1, style, i))
               for i, (name, style) in enumerate(zip(names, h.synth.STYLES))]
    h.write_zip(zips / "eq.zip", members)
    _run(zips, tmp_path / "tokens", tmp_path / "scratch", batch_size=2)
    shard = shards.open_shard(tmp_path / "tokens" / "shards" / "eq.json", verify=True)
    assert [seg.path for seg in shard.segments] == names
    waves = []
    for name, data in members:
        (tmp_path / name).write_bytes(data)
        waves.append(audio.load(tmp_path / name))
    encoder = Encoder(*models.load_codec("tiny"), device="cpu")
    expected = encoder.encode(waves[:2]) + encoder.encode(waves[2:])  # the batches the run made
    for i, codes in enumerate(expected):
        np.testing.assert_array_equal(shard.segment_codes(i), codes)


def test_local_save_pretrained_model_gives_the_same_codes(small, tiny_dir, tmp_path):
    zips, reference, _ = small
    _run(zips, tmp_path / "tokens", tmp_path / "scratch", model=str(tiny_dir))
    shard = shards.open_shard(tmp_path / "tokens" / "shards" / "batch_0001.json")
    assert shard.meta["codec"] == str(tiny_dir)
    with open(tmp_path / "ref.npy", "wb") as fh:
        fh.write(reference["batch_0001.npy"])
    np.testing.assert_array_equal(shard.codes, np.load(tmp_path / "ref.npy"))


def test_wandb_gets_per_zip_figures(small, tmp_path):
    import wandb

    zips, _, _ = small
    run = wandb.init(mode="offline", dir=str(tmp_path), project="tokenize-test")
    try:
        _run(zips, tmp_path / "tokens", tmp_path / "scratch")
        assert run.summary["tokenize/zips_processed"] == 3
        assert run.summary["tokenize/files_ok"] == 3
    finally:
        run.finish()


def test_missing_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        _run(tmp_path / "nope", tmp_path / "tokens", tmp_path / "scratch")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="No .zip files"):
        _run(tmp_path / "empty", tmp_path / "tokens", tmp_path / "scratch")
    with pytest.raises(UserError, match="min_seconds"):
        tokenize.TokenizeConfig(segment_seconds=5, min_seconds=6)
    with pytest.raises(UserError, match="workers must be >= 0"):
        tokenize.TokenizeConfig(workers=-1)


def test_unsupported_audio_is_skipped_by_name_and_a_zip_without_audio_is_warned_about(tmp_path, capsys):
    zips = tmp_path / "zips"
    h.write_zip(zips / "mixed.zip", [("a.opus", h.tone(1.5, 48_000, "opus")), ("b.m4a", b"\0\0\0 ftypM4A ")])
    h.write_zip(zips / "phone.zip", [("memo 1.m4a", b"\0\0\0 ftypM4A "), ("memo 2.M4A", b"x"), ("c.wma", b"x"),
                                     ("cover.jpg", b"x")])
    s = _run(zips, tmp_path / "tokens", tmp_path / "scratch")
    out = capsys.readouterr().out
    assert (s["files_ok"], s["files_skipped"], s["files_failed"], s["entries_ignored"]) == (1, 4, 0, 1)
    latest = ledger.latest(tmp_path / "tokens")
    assert latest["mixed.zip"]["skipped"] == [
        {"path": "b.m4a", "reason": "unsupported audio format .m4a: convert to wav/flac/mp3/ogg"}]
    assert [f["path"] for f in latest["phone.zip"]["skipped"]] == ["memo 1.m4a", "memo 2.M4A", "c.wma"]
    assert "phone.zip: 0 ok, 0 failed, 3 skipped" in out
    assert "3 audio files in unsupported formats (.m4a, .wma) skipped: convert them to wav/flac/mp3/ogg" in out
    assert "Warning: no audio kept from this ZIP (0 failed, 3 skipped" in out
    assert "no audio kept" not in str(latest["mixed.zip"]["notes"])
    assert any(w.startswith("phone.zip: no audio kept") for w in s["warnings"])
    text = tokenize.table(tmp_path / "tokens")
    assert "phone.zip/memo 1.m4a: skipped: unsupported audio format .m4a" in text
    assert "phone.zip: note: warning: no audio kept from this ZIP" in text


def test_unusable_metadata_lines_are_reported_before_the_zips_are_done(tmp_path, capsys):
    zips = tmp_path / "zips"
    inside = json.dumps({"path": "b/track_00.wav", "description": "ok"}) + '\n{"path": "b/track_01.wav",}\n'
    h.write_zip(zips / "b.zip", [("b/track_00.wav", h.tone(1.5)), ("metadata.jsonl", inside)])
    (zips / "metadata.jsonl").write_text("\n".join([
        json.dumps({"path": "b/track_00.wav", "description": "fine"}),
        "{'path': 'b/x.wav', 'description': 'python dict'}",
        '{"path": "b/y.wav", "description": "trailing comma",}',
        json.dumps({"description": "no path"}),
    ]) + "\n")
    s = _run(zips, tmp_path / "tokens", tmp_path / "scratch")
    out = capsys.readouterr().out
    beside = {"file": str(zips / "metadata.jsonl"), "count": 3, "first": "line 2",
              "reason": s["metadata_bad_lines"][0]["reason"]}
    assert s["metadata_bad_lines"] == [beside, {"file": "b.zip/metadata.jsonl", "count": 1, "first": "line 2",
                                                "reason": s["metadata_bad_lines"][1]["reason"]}]
    assert beside["reason"].startswith("not JSON") and "double quotes" in beside["reason"]
    warning = f"{zips / 'metadata.jsonl'}: 3 unusable lines skipped (first: line 2: not JSON"
    assert out.index(warning) < out.index("b.zip: 1 ok")  # said before the ZIP is done
    assert "b.zip/metadata.jsonl: 1 unusable line skipped (first: line 2" in out
    assert any(warning in w for w in s["warnings"])
    note = ledger.latest(tmp_path / "tokens")["b.zip"]["notes"]
    assert [n["path"] for n in note] == ["metadata.jsonl"] and "1 unusable line" in note[0]["reason"]
    assert "b.zip/metadata.jsonl: note: metadata: 1 unusable line" in tokenize.table(tmp_path / "tokens")


@pytest.mark.parametrize("other", ["a.ZIP", "A.zip"])
def test_zips_that_would_share_a_shard_are_refused_before_any_work(tmp_path, other):
    zips = tmp_path / "zips"
    h.small_zip(zips, "a.zip", n=1)
    h.small_zip(zips, "other.zip", n=1).rename(zips / other)  # a different batch, same shard name but for case
    with pytest.raises(UserError, match=rf"a\.zip and {other}|{other} and a\.zip") as err:
        _run(zips, tmp_path / "tokens", tmp_path / "scratch")
    assert "Rename one" in str(err.value)
    assert not ledger.records(tmp_path / "tokens") and not shards.list_shards(tmp_path / "tokens")


def test_a_zip_named_like_a_chroma_file_is_refused_before_any_work(tmp_path):
    """x.chroma.zip's codes would be shards/x.chroma.npy: the chroma file of x.zip's shard (melody models)."""
    zips = tmp_path / "zips"
    h.small_zip(zips, "x.zip", n=1)
    h.small_zip(zips, "x.Chroma.zip", n=1)
    with pytest.raises(UserError, match=r"x\.Chroma\.zip .*named like the chroma file of x\.zip's shard.*Rename it"):
        _run(zips, tmp_path / "tokens", tmp_path / "scratch")
    assert not shards.list_shards(tmp_path / "tokens")


def test_short_segments_scale_the_default_minimums_but_refuse_explicit_ones():
    # notebook 01 exposes SEGMENT_SECONDS but not the minimums: 2 s segments must not fail on a
    # 5 s minimum tail the user never set
    short = tokenize.TokenizeConfig(segment_seconds=2)
    assert short.min_tail_seconds == pytest.approx(2 * 5 / 30, abs=1e-3) and short.min_seconds == 1.0
    assert tokenize.TokenizeConfig(segment_seconds=0.5).min_seconds == 0.5
    assert tokenize.TokenizeConfig().min_tail_seconds == 5.0  # 30 s segments: the documented default
    with pytest.raises(UserError, match="min_tail_seconds"):
        tokenize.TokenizeConfig(segment_seconds=2, min_tail_seconds=3)


def test_decode_workers_follow_the_cores(monkeypatch):
    for cores, expected in ((1, 2), (2, 2), (4, 3), (12, 8), (None, 2)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert tokenize.TokenizeConfig().decode_workers == expected, cores
    assert tokenize.TokenizeConfig(workers=5).decode_workers == 5


# ---------------------------------------------------------------------------------------------
# The command line contract and crash safety (real processes, real SIGKILL)
# ---------------------------------------------------------------------------------------------


def test_cli_contract_and_second_run(small, tmp_path, capsys):
    zips, reference, _ = small
    args = ("tokenize", "--zips", str(zips), "--out", str(tmp_path / "tokens"), "--model", "tiny",
            "--scratch", str(tmp_path / "scratch"), "--describe", "none")
    first = last_json(run_cli(*args).stdout)
    assert CONTRACT_KEYS <= set(first) and first["zips_done"] == 3 and first["files_ok"] == 9
    assert first["frames"] == sum(sh.meta["frames"] for sh in shards.open_all(tmp_path / "tokens"))
    assert h.snapshot(tmp_path / "tokens") == reference
    second = last_json(run_cli(*args).stdout)
    assert (second["zips_done"], second["zips_skipped"], second["files_ok"]) == (0, 3, 0)
    # a UserError exits with code 2 and one readable line, no traceback (in-process: same code path)
    assert cli.main([*args, "--segment-seconds", "10"]) == 2
    err = capsys.readouterr().err
    assert "segment_seconds: 30.0 -> 10.0" in err and "Traceback" not in err


def _spawn(zips, out, scratch, kill_at=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("NBUTILS_KILL_AT", None)
    if kill_at:
        env["NBUTILS_KILL_AT"] = kill_at
    return subprocess.Popen(
        [sys.executable, "-m", "nbutils", "tokenize", "--zips", str(zips), "--out", str(out), "--model", "tiny",
         "--scratch", str(scratch), "--no-progress", "--describe", "none"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _done_zips(zips, tokens):
    """The ZIPs a run would skip as done (the run's own criterion)."""
    config_hash = config.config_hash(tokenize.code_settings(tokenize.TokenizeConfig(model="tiny")))
    latest = ledger.latest(tokens)
    return sorted(p.name for p in zips.glob("*.zip") if ledger.is_done(latest.get(p.name), tokens, p, config_hash))


def _finish_and_compare(zips, tokens, scratch, reference, expect_done):
    s = _run(zips, tokens, scratch)
    assert s["zips_done"] == expect_done and s["zips_failed"] == 0
    assert h.snapshot(tokens) == reference  # same shards, byte for byte, and the same done set
    assert not [p for p in (tokens / "shards").iterdir() if p.name.startswith(".")]  # no temp files left
    assert list(scratch.iterdir()) == []  # the killed run's scratch is gone too


@pytest.mark.parametrize("point, done_before_kill", [
    ("mid-npy:2", 1), ("after-npy:2", 1), ("before-ledger:2", 1), ("mid-ledger:3", 2),
])
def test_sigkill_at_named_points_then_rerun_equals_uninterrupted(small, tmp_path, point, done_before_kill):
    zips, reference, _ = small
    tokens, scratch = tmp_path / "tokens", tmp_path / "scratch"
    proc = _spawn(zips, tokens, scratch, kill_at=point)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err
    assert _done_zips(zips, tokens) == sorted(p.name for p in zips.glob("*.zip"))[:done_before_kill]
    assert list(scratch.iterdir())  # the kill left its scratch behind: the next run must clean it
    _finish_and_compare(zips, tokens, scratch, reference, expect_done=3 - done_before_kill)


def test_sigkill_at_an_arbitrary_moment_then_rerun_equals_uninterrupted(small, tmp_path):
    """No hook: kill as soon as the first ZIP's ledger line appears, wherever the run is then."""
    zips, reference, _ = small
    tokens, scratch = tmp_path / "tokens", tmp_path / "scratch"
    proc = _spawn(zips, tokens, scratch)
    deadline = time.monotonic() + 120
    while not ledger.path_of(tokens).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = _done_zips(zips, tokens)
    assert 1 <= len(done) < 3
    _finish_and_compare(zips, tokens, scratch, reference, expect_done=3 - len(done))


# ---------------------------------------------------------------------------------------------
# Notebook 01, executed headlessly
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_notebook_01_runs_headlessly(small, tmp_path, monkeypatch):
    import nbformat

    from nbutils import colab
    from nbutils.colab import notebooks

    zips, _, _ = small
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the kernel's local scratch
    (tmp_path / "tmp").mkdir()
    root = tmp_path / "project"
    colab.create_project(root, model="tiny")
    params = {"PROJECT_ROOT": str(root), "MODEL": "tiny", "ZIP_DIR": str(zips), "SEGMENT_SECONDS": 30,
              "DEFAULT_DESCRIPTION": "trig", "TEST_TRACKS": 2, "DESCRIBE": "missing", "CLAP": "none"}
    _run(zips, tmp_path / "reference", tmp_path / "scratch", default_description="trig", describe="missing",
         clap="none")
    reference = h.snapshot(tmp_path / "reference")
    nb = nbformat.read(str(notebooks.notebook_path("01_tokenize")), as_version=4)
    # edit a description in the table and press Save, as a user would
    nb.cells.append(nbformat.v4.new_code_cell("editor.boxes[0][1].value = 'edited in the notebook'\n"
                                              "editor.button.click()\nprint('EDITOR', editor.status.value)"))
    path = tmp_path / "01_tokenize.ipynb"
    nbformat.write(nb, str(path))
    executed = notebooks.execute(path, tmp_path / "run1.ipynb", params, cwd=tmp_path)
    text = notebooks.outputs_text(nbformat.read(str(executed), as_version=4))
    assert "Test mode (2 tracks)" in text and "ETA for all 9 audio files" in text
    assert "Done 3 ZIPs" in text and "batch_0002.zip" in text and "status" in text
    assert h.snapshot(root / "tokens") == reference
    assert "9 tracks in" in text and "- Sommer – Mix.zip/" in text and "EDITOR Saved 1 changed description" in text
    rows = [json.loads(line) for line in (root / "tokens" / "descriptions.jsonl").read_text().splitlines()]
    assert (rows[0]["description"], rows[0]["edited"]) == ("edited in the notebook", True)
    assert (root / "tokens" / "descriptions.png").stat().st_size > 10_000
    cells = nbformat.read(str(executed), as_version=4).cells
    (picture,) = [c for c in cells if c.cell_type == "code" and c.source.startswith("#@title 7. Tempo, key")]
    assert any("image/png" in o.get("data", {}) for o in picture.outputs), "the cell shows the picture"
    bars = [o["data"]["text/plain"] for c in cells
            for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert any(b.startswith("all ZIPs:") for b in bars) and any(b.startswith("batch_0002.zip:") for b in bars)
    rerun = notebooks.execute(path, tmp_path / "run2.ipynb", params, cwd=tmp_path)  # after a disconnect
    again = notebooks.outputs_text(nbformat.read(str(rerun), as_version=4))
    assert "Test mode: nothing left to tokenize (3 ZIPs already done)" in again
    assert "Done 0 ZIPs (3 skipped, 0 failed)" in again and h.snapshot(root / "tokens") == reference
    assert h.files_under(tmp_path / "tmp" / "nbutils-scratch") == []


def test_token_folders_of_format_1_stay_done_and_read_the_same(small, tmp_path):
    from test_shards import _as_format_1

    zips, _, _ = small
    out = tmp_path / "tokens"
    _run(zips, out, tmp_path / "scratch", default_description="trigger")
    before = {p.name: shards.open_shard(p).segments for p in shards.list_shards(out)}
    for index in shards.list_shards(out):
        _as_format_1(index)  # what earlier versions wrote
    again = _run(zips, out, tmp_path / "scratch", default_description="trigger")
    assert again["zips_done"] == 0 and again["zips_skipped"] == len(before)
    assert {p.name: shards.open_shard(p).segments for p in shards.list_shards(out)} == before
