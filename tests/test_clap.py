"""CLAP: the tiny model, loading, 48 kHz resampling and windowing."""

from __future__ import annotations

import numpy as np
import pytest

from nbutils.core import clap, synth
from nbutils.core.errors import UserError


@pytest.fixture(scope="module")
def tiny_clap():
    return clap.load("tiny")


def dominant_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()])


def test_resampling_to_48k_keeps_pitch_and_length():
    t = np.arange(32_000) / 32_000
    sine = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    out = clap.to_clap_rate(sine, 32_000)
    assert out.dtype == np.float32 and len(out) == 48_000
    assert dominant_hz(out, 48_000) == pytest.approx(1000, abs=2)
    # a high tone survives too (soxr keeps the band below 16 kHz), and stereo becomes mono
    high = np.sin(2 * np.pi * 12_000 * t).astype(np.float32)
    out = clap.to_clap_rate(np.stack([high, high], axis=1), 32_000)
    assert out.ndim == 1 and dominant_hz(out, 48_000) == pytest.approx(12_000, abs=2)
    assert np.abs(out[1000:-1000]).max() == pytest.approx(1.0, abs=0.02), "no loss of level"


def test_windows_cover_the_clip_and_drop_only_a_short_tail():
    rate = 48_000
    sizes = lambda seconds: [len(w) / rate for w in clap.windows(np.zeros(int(seconds * rate)), 10 * rate, rate)]  # noqa: E731
    assert sizes(25) == [10, 10, 5]
    assert sizes(10.5) == [10]  # 0.5 s tail dropped
    assert sizes(0.5) == [0.5]  # unless it is all there is


def test_tiny_clap_is_offline_deterministic_and_unit_length(tiny_clap):
    assert tiny_clap.sample_rate == clap.CLAP_RATE
    again = clap.load("tiny")
    texts = ["calm piano chords", "dark techno beat with drums"]
    audio = [synth.track("chords", 3.0, seed=1), synth.track("percussion", 12.0, seed=2)]
    a_text, b_text = clap.text_embeddings(tiny_clap, texts), clap.text_embeddings(again, texts)
    a_audio, b_audio = clap.audio_embeddings(tiny_clap, audio, 32_000), clap.audio_embeddings(again, audio, 32_000)
    assert np.array_equal(a_text, b_text) and np.array_equal(a_audio, b_audio)
    assert np.allclose(np.linalg.norm(a_text, axis=1), 1) and np.allclose(np.linalg.norm(a_audio, axis=1), 1)
    assert not np.allclose(a_audio[0], a_audio[1]), "different music, different embeddings"
    assert tiny_clap.processor.tokenizer.unk_token_id not in tiny_clap.processor.tokenizer("calm piano").input_ids


def test_local_folder_loads_the_same_clap(tiny_clap, tmp_path):
    tiny_clap.model.save_pretrained(tmp_path / "clap")
    tiny_clap.processor.save_pretrained(tmp_path / "clap")
    local = clap.load(str(tmp_path / "clap"))
    audio = [synth.track("arpeggio", 2.0, seed=3)]
    assert np.allclose(clap.audio_embeddings(local, audio, 32_000), clap.audio_embeddings(tiny_clap, audio, 32_000),
                       atol=1e-6)
    assert np.allclose(clap.text_embeddings(local, ["calm piano"]), clap.text_embeddings(tiny_clap, ["calm piano"]),
                       atol=1e-6)


def test_unavailable_clap_says_what_to_use():
    with pytest.raises(UserError, match="Could not load CLAP 'someone/no-such-clap'.*tiny"):
        clap.load("someone/no-such-clap")
