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


def _direct(codec, waves):
    """What transformers' EnCodec gives for this exact batch of mono segments, ``(B, frames, K)``."""
    with torch.inference_mode():
        return codec.encode(torch.from_numpy(np.stack(waves))).audio_codes[0].numpy().transpose(0, 2, 1)


def test_tiny_codes_follow_the_audio(mono):
    """Every code comparison in these tests means something only if codes depend on the audio."""
    for layer in mono.codec.quantizer.layers:  # transformers leaves them zero; models.build_tiny fills them
        embed = layer.codebook.embed
        assert embed.abs().sum(dim=1).min() > 0, "a tiny EnCodec codebook entry is all zero"
        assert len(torch.unique(embed, dim=0)) == embed.shape[0], "tiny EnCodec codebook entries repeat"
    (codes,) = mono.encode([synth.track("chords", 3.0, 32_000, 1)[None]])
    assert all(len(np.unique(codes[:, k])) > 4 for k in range(codes.shape[1]))


def test_a_segments_codes_do_not_depend_on_its_batch_mates(mono):
    """Same batch size and position, other companions: the same codes, bit for bit.

    (Alone vs in a batch may round differently; the tiny model's random codec puts its frames
    almost equidistant from many codebook entries, so such rounding flips codes there. Hence
    no batch-vs-alone comparison with the tiny model.)
    """
    tracks = [synth.track(style, 1.0, 32_000, seed) for seed in (0, 1) for style in synth.STYLES]
    for n in (32_000, 20_001, 640):  # whole, partial and single frames
        first, other = [t[None, :n] for t in tracks[:3]], [t[None, :n] for t in tracks[3:]]
        reference = mono.encode(first)
        for pos in range(3):
            mixed = list(other)
            mixed[pos] = first[pos]
            got = mono.encode(mixed)[pos]
            assert got.shape == (audio.frames_for(n), 4) and got.dtype == np.int16
            np.testing.assert_array_equal(got, reference[pos])
        np.testing.assert_array_equal(np.stack(reference), _direct(mono.codec, first))


def test_segments_of_different_lengths_never_share_a_batch(mono):
    with pytest.raises(ValueError, match="same length"):
        mono.encode([np.zeros((1, 6400), np.float32), np.zeros((1, 6000), np.float32)])


def test_stereo_codebooks_are_left_right_interleaved():
    codec, spec = models.load_codec("tiny-stereo")
    encoder = Encoder(codec, spec, device="cpu")
    wave = synth.track("arpeggio", 1.0, 32_000, 0, channels=2).T.copy()
    wave[1] = synth.track("percussion", 1.0, 32_000, 1)  # really different channels
    (codes,) = encoder.encode([wave])
    assert codes.shape == (50, 8)
    left, right = _direct(codec, [wave[:1], wave[1:]])  # L and R as one batch of two mono signals
    np.testing.assert_array_equal(codes[:, 0::2], left)  # L0, R0, L1, R1, ...
    np.testing.assert_array_equal(codes[:, 1::2], right)
    with pytest.raises(ValueError, match="channels"):
        encoder.encode([wave[:1]])


class _Recording(Encoder):
    """The real encoder, noting the segment lengths of every batch it is given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def encode(self, audios):
        self.batches.append([a.shape[-1] for a in audios])
        return super().encode(audios)


def test_batcher_forms_equal_length_batches_and_returns_every_key():
    encoder = _Recording(*models.load_codec("tiny"), device="cpu")
    batcher = Batcher(encoder, full_samples=6400, batch_size=3)
    seg = {n: np.full((1, n), 0.1, np.float32) for n in (6400, 1000, 2000)}
    done = []
    for key, n in [("f1", 6400), ("a1", 1000), ("f2", 6400), ("b1", 2000), ("f3", 6400)]:
        done += batcher.add(key, seg[n])
    assert [k for k, _ in done] == ["f1", "f2", "f3"]  # a full batch; short ones still wait
    done += batcher.add("a2", seg[1000])  # 3 short ones waiting: every bucket goes
    done += batcher.add("f4", seg[6400]) + batcher.flush()
    assert encoder.batches == [[6400] * 3, [1000, 1000], [2000], [6400]]
    assert {k for k, _ in done} == {"f1", "f2", "f3", "f4", "a1", "a2", "b1"}
    assert dict(done)["b1"].shape == (4, 4) and batcher.flush() == []


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
