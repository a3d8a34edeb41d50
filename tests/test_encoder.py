import numpy as np
import pytest
import torch

from nbutils import audio, models, synth
from nbutils.encoder import Batcher, Encoder, autocast_dtype
from nbutils.errors import UserError


@pytest.fixture(scope="module")
def mono():
    codec, spec = models.load_codec("tiny")
    return Encoder(codec, spec, device="cpu")


def _alone(encoder, wave):
    with torch.inference_mode():
        codes = encoder.codec.encode(torch.from_numpy(wave)[None]).audio_codes[0, 0]
    return codes.numpy().T


def test_padded_batch_keeps_exactly_each_segments_own_frames(mono):
    lengths = [32_000, 20_001, 640, 47_999]
    waves = [synth.track("chords", n / 32_000 + 0.01, 32_000, i)[None, :n] for i, n in enumerate(lengths)]
    codes = mono.encode(waves)
    for wave, got in zip(waves, codes):
        assert got.shape == (audio.frames_for(wave.shape[-1]), 4) and got.dtype == np.int16
        np.testing.assert_array_equal(got, _alone(mono, wave))  # padding changed nothing kept


def test_stereo_codebooks_are_left_right_interleaved():
    codec, spec = models.load_codec("tiny-stereo")
    encoder = Encoder(codec, spec, device="cpu")
    wave = synth.track("arpeggio", 1.0, 32_000, 0, channels=2).T.copy()
    wave[1] = synth.track("percussion", 1.0, 32_000, 1)  # really different channels
    (codes,) = encoder.encode([wave])
    assert codes.shape == (50, 8)
    np.testing.assert_array_equal(codes[:, 0::2], _alone(encoder, wave[:1]))
    np.testing.assert_array_equal(codes[:, 1::2], _alone(encoder, wave[1:]))
    with pytest.raises(ValueError, match="channels"):
        encoder.encode([wave[:1]])


def test_batcher_keeps_full_and_short_segments_apart_and_returns_every_key(mono):
    batcher = Batcher(mono, full_samples=6400, batch_size=2)
    full, short = np.zeros((1, 6400), np.float32) + 0.1, np.zeros((1, 1000), np.float32) + 0.1
    assert batcher.add("f1", full) == []
    assert batcher.add("s1", short) == []  # a short one does not complete the full batch
    assert [k for k, _ in batcher.add("f2", full)] == ["f1", "f2"]
    done = dict(batcher.add("s2", short) + batcher.flush())
    assert set(done) == {"s1", "s2"} and done["s1"].shape == (2, 4)
    assert batcher.flush() == []


def test_precision_choices():
    assert autocast_dtype("cpu", "auto") is None and autocast_dtype("cpu", "fp32") is None
    assert autocast_dtype("cpu", "bf16") is torch.bfloat16
    with pytest.raises(UserError, match="precision"):
        autocast_dtype("cpu", "int8")


def test_bf16_autocast_runs_on_cpu():
    codec, spec = models.load_codec("tiny")
    encoder = Encoder(codec, spec, device="cpu", precision="bf16")
    (codes,) = encoder.encode([synth.track("chords", 0.5, 32_000, 0)[None]])
    assert codes.shape == (25, 4) and codes.min() >= 0 and codes.max() < spec.codebook_size
