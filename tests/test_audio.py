import math
import re

import numpy as np
import pytest
import soundfile as sf

from _tokenize_helpers import encode_audio, tone
from nbutils.core import audio, synth


def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _sine(seconds, sr, freq=440.0, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def _dominant_freq(wave, sr):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.argmax(spectrum) * sr / len(wave)


@pytest.mark.parametrize("kind, sr, channels", [
    ("wav", 44_100, 2), ("wav24", 48_000, 1), ("wavf", 96_000, 1), ("wav8", 8_000, 1),
    ("flac", 22_050, 2), ("ogg", 16_000, 1), ("mp3", 44_100, 2), ("wav", 32_000, 6), ("opus", 48_000, 2),
    ("aiff", 44_100, 1),
])
def test_any_format_rate_and_channels_become_32k_float32(tmp_path, kind, sr, channels):
    path = _write(tmp_path, f"x.{kind[:4]}", encode_audio(_sine(2.0, sr, 440.0, channels), sr, kind))
    for want in (1, 2):
        wave = audio.load(path, channels=want)
        assert wave.dtype == np.float32 and wave.shape[0] == want
        assert abs(wave.shape[1] - 2.0 * audio.SAMPLE_RATE) <= 0.01 * audio.SAMPLE_RATE
        # the pitch survives decoding and resampling (a wrong rate would shift it)
        assert _dominant_freq(wave[0], audio.SAMPLE_RATE) == pytest.approx(440.0, abs=3.0)


def test_stereo_keeps_left_and_right_and_mono_is_their_mean(tmp_path):
    left, right = _sine(1.0, 32_000, 300.0), _sine(1.0, 32_000, 500.0) * 0.5
    path = tmp_path / "lr.wav"
    sf.write(path, np.stack([left, right], axis=1), 32_000, subtype="FLOAT")
    stereo = audio.load(path, channels=2)
    np.testing.assert_allclose(stereo[0], left, atol=1e-6)
    np.testing.assert_allclose(stereo[1], right, atol=1e-6)
    np.testing.assert_allclose(audio.load(path, channels=1)[0], (left + right) / 2, atol=1e-6)
    mono_source = tmp_path / "m.wav"
    sf.write(mono_source, left, 32_000, subtype="FLOAT")
    both = audio.load(mono_source, channels=2)
    np.testing.assert_array_equal(both[0], both[1])


def _multichannel(tmp_path, channels, **content):
    """A ``channels``-channel float WAV: silent except the named channels (c1, c2...), each its own sine."""
    wave = np.zeros((32_000, channels), np.float32)
    for name, freq in content.items():
        wave[:, int(name[1:]) - 1] = _sine(1.0, 32_000, freq)
    path = tmp_path / f"{channels}ch.wav"
    sf.write(path, wave, 32_000, subtype="FLOAT")
    return path, wave


def test_surround_is_downmixed_to_stereo_not_cut_to_its_first_two_channels(tmp_path):
    # 5.1 in WAV order: FL FR C LFE SL SR. Only the centre channel has content (dialogue, a solo)
    path, wave = _multichannel(tmp_path, 6, c3=440.0)
    stereo = audio.load(path, channels=2)
    scale = 1 + 2 * audio.MINUS_3DB
    np.testing.assert_allclose(stereo[0], wave[:, 2] * audio.MINUS_3DB / scale, atol=1e-6)
    np.testing.assert_allclose(stereo[1], stereo[0])
    report = audio.TrackReport()
    assert len(list(audio.iter_segments(path, report, channels=2))) == 1 and not report.skipped  # not "silent"
    # surrounds go to their side, the LFE is dropped, mono is still the mean of all six
    path, wave = _multichannel(tmp_path, 6, c4=50.0, c5=300.0, c6=500.0)
    stereo = audio.load(path, channels=2)
    np.testing.assert_allclose(stereo[0], wave[:, 4] * audio.MINUS_3DB / scale, atol=1e-6)
    np.testing.assert_allclose(stereo[1], wave[:, 5] * audio.MINUS_3DB / scale, atol=1e-6)
    np.testing.assert_allclose(audio.load(path, channels=1)[0], wave.mean(axis=1), atol=1e-6)
    # other counts: odd channels left, even right; full-scale channels never clip
    path, wave = _multichannel(tmp_path, 4, c1=300.0, c2=500.0, c3=700.0)
    stereo = audio.load(path, channels=2)
    np.testing.assert_allclose(stereo[0], (wave[:, 0] + wave[:, 2]) / 2, atol=1e-6)
    np.testing.assert_allclose(stereo[1], wave[:, 1] / 2, atol=1e-6)
    for channels in (3, 4, 5, 6, 7, 8, 12):
        assert np.abs(audio.convert_channels(np.ones((4, channels), np.float32), 2)).max() <= 1.0 + 1e-6


def test_streaming_resample_matches_one_shot(tmp_path):
    """Reading in blocks must not leave seams: same result as resampling the whole file."""
    import soxr

    wave = synth.track("arpeggio", 25.0, 44_100, 3)
    path = tmp_path / "a.wav"
    sf.write(path, wave, 44_100, subtype="FLOAT")
    streamed = audio.load(path)[0]
    whole = soxr.resample(wave, 44_100, 32_000, quality=audio.RESAMPLE_QUALITY)
    assert len(streamed) == len(whole)
    np.testing.assert_allclose(streamed, whole, atol=1e-4)


def _segments(path, **kwargs):
    report = audio.TrackReport()
    pieces = list(audio.iter_segments(path, report, **kwargs))
    return pieces, report


def test_long_track_is_cut_into_segments_and_the_tail_rule_is_reported(tmp_path):
    path = _write(tmp_path, "long.wav", tone(23.0, 16_000, "wav"))
    pieces, report = _segments(path, segment_seconds=5.0, min_tail_seconds=2.0)
    assert [p.start for p in pieces] == [0, 160_000, 320_000, 480_000, 640_000]
    assert [p.samples for p in pieces] == [160_000] * 4 + [96_000]  # 3 s tail kept
    assert report.segments == 5 and report.seconds == pytest.approx(23.0)
    assert report.tail_dropped_seconds == 0
    pieces, report = _segments(path, segment_seconds=5.0, min_tail_seconds=4.0)
    assert len(pieces) == 4 and report.tail_dropped_seconds == pytest.approx(3.0)
    assert report.kept_seconds + report.tail_dropped_seconds == pytest.approx(report.seconds)
    # concatenated segments are the decoded track: nothing shifted or duplicated
    whole = audio.load(path)
    np.testing.assert_array_equal(np.concatenate([p.audio for p in pieces], axis=1), whole[:, :640_000])


def test_short_track_is_one_segment_and_too_short_is_skipped(tmp_path):
    pieces, report = _segments(_write(tmp_path, "s.wav", tone(2.5, 44_100, "wav")), min_tail_seconds=5.0)
    assert len(pieces) == 1 and report.segments == 1 and not report.skipped
    pieces, report = _segments(_write(tmp_path, "b.wav", tone(0.4, 44_100, "wav")))
    assert pieces == [] and report.skipped == "too short (0.40 s < 1 s)"


def test_silence_is_skipped_per_segment_and_whole_silent_files_say_so(tmp_path):
    path = _write(tmp_path, "z.flac", encode_audio(np.zeros(3 * 44_100, np.float32), 44_100, "flac"))
    pieces, report = _segments(path)
    assert pieces == [] and report.skipped.startswith("silent")
    loud = synth.track("chords", 4.0, 32_000, 1)
    quiet_middle = np.concatenate([loud, np.zeros(4 * 32_000, np.float32), loud])
    path = tmp_path / "gap.wav"
    sf.write(path, quiet_middle, 32_000, subtype="FLOAT")
    pieces, report = _segments(path, segment_seconds=4.0)
    assert [p.start // 32_000 for p in pieces] == [0, 8]
    assert report.silent_segments == 1 and report.silent_seconds == pytest.approx(4.0) and not report.skipped


@pytest.mark.parametrize("data, reason", [
    (b"", r"empty file \(0 bytes\)"),
    (b"not audio at all, just text" * 20, "unreadable audio"),
    (encode_audio(np.zeros(0, np.float32), 32_000, "wav"), "no audio frames"),
])
def test_broken_files_raise_with_a_reason(tmp_path, data, reason):
    with pytest.raises(audio.AudioError, match=reason):
        _segments(_write(tmp_path, "bad.wav", data))


def test_truncated_files_fail_or_keep_only_what_decodes(tmp_path):
    flac = tone(6.0, 44_100, "flac")
    with pytest.raises(audio.AudioError, match="corrupt audio"):
        _segments(_write(tmp_path, "cut.flac", flac[: len(flac) // 2]), segment_seconds=2.0)
    wav = tone(6.0, 44_100, "wav")  # a cut WAV is still readable: its true length is reported
    pieces, report = _segments(_write(tmp_path, "cut.wav", wav[: len(wav) // 2]), segment_seconds=2.0,
                               min_tail_seconds=0.5)
    assert report.seconds == pytest.approx(3.0, abs=0.01) and len(pieces) == report.segments == 2


@pytest.mark.parametrize("bad, reason", [
    (np.nan, "non-finite samples (NaN or infinity) after 0.0 s"),
    (np.inf, "non-finite samples (NaN or infinity) after 0.0 s"),
    (-np.inf, "non-finite samples"),
    (1e30, "samples far beyond full scale (peak 1e+30, full scale is 1.0) after 0.0 s"),
])
def test_float_files_holding_garbage_fail_instead_of_encoding_constant_codes(tmp_path, bad, reason):
    # Float WAVs with inf or 1e30 amplitudes used to be "ok" (NaN silently zeroed) and encoded as constant codes.
    wave = _sine(1.5, 32_000)
    wave[100:200] = bad
    path = tmp_path / "bad.wav"
    sf.write(path, wave, 32_000, subtype="FLOAT")
    with pytest.raises(audio.AudioError, match=re.escape(reason)):
        _segments(path)
    wave[100:200] = 4.0  # a loud but real float file (+12 dBFS) is still read
    sf.write(path, wave, 32_000, subtype="FLOAT")
    assert _segments(path)[1].segments == 1


def test_frames_for_matches_the_codec_hop():
    assert [audio.frames_for(n) for n in (1, 640, 641, 960_000)] == [1, 1, 2, 1500]
    assert audio.FRAME_RATE == 50 and audio.N_SEGMENT == 960_000
    assert audio.peak_db(np.zeros(4)) == -math.inf


def _raw_wav(sample_rate: int, channels: int, frames: int = 1000) -> bytes:
    import struct

    data = (np.ones(frames * channels) * 1000).astype("<i2").tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * channels * 2, channels * 2, 16)
    riff = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    return riff + b"fmt " + fmt + b"data" + struct.pack("<I", len(data)) + data


@pytest.mark.parametrize("sample_rate, channels, outcome", [
    (0, 1, "unreadable"), (44_100, 0, "unreadable"), (4_000_000, 1, "too short"), (44_100, 300, "too short"),
    # 1-3 Hz headers turned 1 KB into minutes of audio after resampling; below 1 kHz the header is corrupt
    (1, 1, "sample rate of 1 Hz in the header (below 1000 Hz)"), (3, 1, "sample rate of 3 Hz"),
    (999, 1, "sample rate of 999 Hz"), (1000, 1, "kept"),
])
def test_odd_headers_are_a_reason_never_a_crash(tmp_path, sample_rate, channels, outcome):
    path = _write(tmp_path, "odd.wav", _raw_wav(sample_rate, channels))
    try:
        pieces, report = _segments(path)
    except audio.AudioError as err:
        assert outcome in str(err)
    else:
        assert (report.skipped or "kept").startswith(outcome)
