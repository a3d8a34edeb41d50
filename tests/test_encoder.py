import numpy as np
import pytest
import torch

from nbutils.core import audio, models, synth
from nbutils.core.errors import UserError
from nbutils.tokenize.encoder import Batcher, Encoder


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
    codec, spec = models.load_codec("tiny")
    for precision, autocast in (("auto", None), ("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        assert Encoder(codec, spec, device="cpu", precision=precision).dtype is autocast, precision
    with pytest.raises(UserError, match="Unknown precision 'int8'. Use one of: auto, bf16, fp16, fp32"):
        Encoder(codec, spec, device="cpu", precision="int8")


def test_bf16_autocast_runs_on_cpu():
    codec, spec = models.load_codec("tiny")
    encoder = Encoder(codec, spec, device="cpu", precision="bf16")
    (codes,) = encoder.encode([synth.track("chords", 0.5, 32_000, 0)[None]])
    assert codes.shape == (25, 4) and codes.min() >= 0 and codes.max() < spec.codebook_size


# ---------------------------------------------------------------------------------------------
# Half precision: autocast for the convolutions, float32 for the quantizer
# ---------------------------------------------------------------------------------------------


def _waves():
    return [synth.track(style, 2.0, 32_000, seed)[None] for seed in (5, 6) for style in synth.STYLES]


def test_quantizer_gets_float32_without_autocast_while_the_convolutions_autocast(monkeypatch):
    from transformers.models.encodec.modeling_encodec import EncodecEuclideanCodebook

    codec, spec = models.load_codec("tiny")
    seen, encoder_out = [], []
    quantize = EncodecEuclideanCodebook.quantize

    def spy(self, hidden_states):  # where the nearest-entry distances are computed
        seen.append((hidden_states.dtype, torch.is_autocast_enabled("cpu")))
        return quantize(self, hidden_states)

    monkeypatch.setattr(EncodecEuclideanCodebook, "quantize", spy)
    codec.encoder.register_forward_hook(lambda module, args, out: encoder_out.append(out.dtype))
    Encoder(codec, spec, device="cpu", precision="bf16").encode(_waves()[:2])
    assert encoder_out == [torch.bfloat16], "the convolutions still run under bf16 autocast"
    assert seen == [(torch.float32, False)] * spec.num_codebooks
    assert "encode" not in vars(codec.quantizer), "the float32 wrapper is removed after the call"


def test_bf16_codes_equal_fp32_wherever_bf16_rounding_cannot_flip_them():
    """bf16 rounds the encoder's output, so codes near a tie may legitimately change; codes far
    from one may not. A frame's first code is certain when its distance to the runner-up entry
    exceeds the distance to the nearest by more than twice the rounding error of the embedding
    (each distance moves by at most that error). With the whole encode under autocast, as before,
    most of those certain codes came out wrong: the distance sum cancels in bf16.
    """
    codec, spec = models.load_codec("tiny")
    waves = _waves()
    fp32 = np.stack(Encoder(codec, spec, device="cpu", precision="fp32").encode(waves))
    bf16 = np.stack(Encoder(codec, spec, device="cpu", precision="bf16").encode(waves))
    x = torch.from_numpy(np.stack(waves))
    with torch.inference_mode():
        exact = codec.encoder(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded = codec.encoder(x).float()
            whole = codec.encode(x).audio_codes[0].numpy().transpose(0, 2, 1)  # the old path
        # bf16 mode is exactly: float32 quantizer on the bf16 encoder output
        expected = codec.quantizer.encode(rounded).numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(bf16, expected)

    dim = exact.shape[1]
    frames = exact.transpose(1, 2).reshape(-1, dim)
    nearest, runner_up = torch.cdist(frames, codec.quantizer.layers[0].codebook.embed).topk(2, largest=False).values.T
    error = (rounded - exact).transpose(1, 2).reshape(-1, dim).norm(dim=1)
    certain = ((runner_up - nearest) > 2 * error).numpy()
    reference, new, old = fp32[..., 0].reshape(-1), bf16[..., 0].reshape(-1), whole[..., 0].reshape(-1)
    assert certain.sum() >= 50, "too few clear-cut frames for the test to mean anything"
    np.testing.assert_array_equal(new[certain], reference[certain])
    assert (old[certain] == reference[certain]).mean() < 0.9, "the old whole-autocast path is measurably worse"
    assert (new == reference).mean() > 2 * (old == reference).mean()


def test_gpu_batch_is_sized_by_free_memory_channels_and_precision():
    from nbutils.tokenize.encoder import GPU_BATCH, gpu_batch

    gib = 2**30
    assert gpu_batch(30, 1, True, 80 * gib) == GPU_BATCH  # A100 80 GB: the cap
    t4 = gpu_batch(30, 1, True, 14.5 * gib)  # a T4's free memory, fp16 convolutions
    assert 8 <= t4 < GPU_BATCH
    assert gpu_batch(30, 2, True, 14.5 * gib) == t4 // 2, "a stereo segment is two rows"
    assert gpu_batch(30, 1, False, 14.5 * gib) < t4, "float32 rows cost more"
    assert gpu_batch(10, 1, True, 14.5 * gib) == GPU_BATCH, "shorter segments: more per batch"
    assert gpu_batch(30, 2, False, 1 * gib) == 1, "never 0"


def test_default_batch_reads_the_gpus_free_memory(monkeypatch):
    codec, spec = models.load_codec("tiny")
    enc = Encoder(codec, spec, device="cpu")
    assert enc.default_batch(30) == 1  # CPU_BATCH
    enc.device, enc.dtype = "cuda:0", torch.float16  # as on a T4 (nothing runs on it here)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(14.5 * 2**30), 15 * 2**30))
    assert enc.default_batch(30) == 10


def test_out_of_memory_says_which_batch_size_to_use_and_keeps_no_activations(monkeypatch):
    codec, spec = models.load_codec("tiny")
    enc = Encoder(codec, spec, device="cpu")

    def full(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(enc.codec, "encode", full)
    with pytest.raises(UserError, match=r"BATCH_SIZE = 2 in notebook 01") as err:
        enc.encode([np.zeros((1, 6400), np.float32)] * 4)
    assert err.value.__context__ is None, "the out-of-memory error's frames (activations) are not kept"
