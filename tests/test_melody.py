"""Chroma without torchaudio, and melody conditioning of a tiny musicgen-melody built from a config."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from nbutils.core import melody, models
from nbutils.generate import stage as generate

SR = 32_000
NOTE_HZ = {"C": 261.63, "E": 329.63, "G": 392.00, "A": 440.00}


def tone(name: str, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * NOTE_HZ[name] * t)).astype(np.float32)


@pytest.mark.parametrize("name", ["C", "E", "G", "A"])
def test_pure_tones_land_in_their_pitch_class(name):
    features = melody.chroma(tone(name, 2.0))
    assert features.shape == (2 * SR // melody.HOP_LENGTH + 1, 12)
    assert torch.equal(features.sum(dim=1), torch.ones(features.shape[0])), "one-hot per frame"
    assert melody.dominant_pitch(features) == name
    assert (features.argmax(dim=1) == melody.PITCH_CLASSES.index(name)).float().mean() > 0.9


def test_a_melody_is_followed_in_time_and_stereo_is_averaged():
    line = np.concatenate([tone("C", 1.0), tone("G", 1.0), tone("E", 1.0)])
    features = melody.chroma(np.stack([line, 0.5 * line], axis=1))  # stereo in
    names = [melody.PITCH_CLASSES[i] for i in features.argmax(dim=1)]
    rate = melody.frames_per_second()
    middle = lambda second: names[int((second + 0.5) * rate)]  # noqa: E731 - away from the note edges
    assert [middle(0), middle(1), middle(2)] == ["C", "G", "E"]


def test_short_audio_is_padded_to_one_window():
    features = melody.chroma(tone("A", 0.1))
    assert features.shape == (melody.N_FFT // melody.HOP_LENGTH + 1, 12)
    assert melody.dominant_pitch(features) == "A"


def test_window_slices_by_time_and_loops_a_short_melody():
    features = torch.eye(12)[torch.arange(20) % 12]  # frame i has pitch class i % 12
    rate = melody.frames_per_second()
    part = melody.window(features, start_seconds=1.0, seconds=2.0)
    first = int(np.floor(1.0 * rate))
    assert part.shape[0] == int(np.ceil(2.0 * rate))
    assert part[0].argmax() == first % 12
    assert torch.equal(part[20 - first], features[0]), "past the end, the melody starts again"


@pytest.fixture(scope="module")
def melody_pipe():
    return generate.Pipeline("tiny-melody")


def test_tiny_melody_is_the_real_architecture(melody_pipe):
    from transformers import MusicgenMelodyForConditionalGeneration

    assert isinstance(melody_pipe.model, MusicgenMelodyForConditionalGeneration)
    assert melody_pipe.is_melody and melody_pipe.model.config.num_chroma == 12
    a, b = models.build_tiny("tiny-melody")[0], models.build_tiny("tiny-melody")[0]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # the chroma really conditions the decoder
    inputs = melody_pipe.text_inputs(["calm piano"])
    dec = torch.full((4, 3), 64)
    chroma_c, chroma_a = torch.zeros(1, 10, 12), torch.zeros(1, 10, 12)
    chroma_c[..., 0], chroma_a[..., 9] = 1, 1
    with torch.no_grad():
        out_c = melody_pipe.model(**inputs, input_features=chroma_c, decoder_input_ids=dec).logits
        out_a = melody_pipe.model(**inputs, input_features=chroma_a, decoder_input_ids=dec).logits
    assert not torch.allclose(out_c, out_a)


def test_generation_follows_the_melody_under_each_window(melody_pipe, tmp_path):
    """Each window gets the chroma of its own stretch of the melody file, and the clip is exact."""
    line = np.concatenate([tone("C", 1.0), tone("G", 1.0), tone("E", 1.0)])
    melody_file = tmp_path / "hum.wav"
    sf.write(melody_file, line, SR)
    seen = []
    projection = melody_pipe.model.audio_enc_to_dec_proj
    hook = projection.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    try:
        config = generate.GenerateConfig(model="tiny-melody", prompts=["calm piano"], seconds=2.2,
                                         window_seconds=1.0, context_seconds=0.2, melody=str(melody_file),
                                         out=str(tmp_path / "out"))
        records = generate.run(config, melody_pipe)
    finally:
        hook.remove()
    audio, rate = sf.read(records[0]["path"])
    assert (rate, audio.shape[0]) == (SR, int(round(2.2 * SR)))
    assert records[0]["windows"] == 3  # 1 s, then 0.8 s + 0.4 s after 0.2 s of context
    assert len(seen) == 3, "the chroma enters once per window (the first step of each generate call)"
    expected = melody.chroma(line)
    for features, start in zip(seen, (0.0, 0.8, 1.6)):  # window starts in seconds
        conditional = features[0]  # row 0: this prompt; row 1: the guidance's null melody
        assert torch.equal(conditional[: 7], melody.window(expected, start, 1.0)[: 7])
        assert features[1, :, 0].eq(1).all(), "the unconditional half has the null chroma (bin 0)"
    names = [melody.dominant_pitch(f[0]) for f in seen]
    assert names == ["C", "G", "E"], names


def test_a_surround_melody_is_read_as_tokenization_reads_it_and_its_chroma_made_once(melody_pipe, tmp_path,
                                                                                    monkeypatch):
    """The chroma comes from the file's mono mix by the tokenizer's rule, computed once for every
    batch and variation of the request."""
    from nbutils.core import audio

    wave = np.zeros((SR, 6), np.float32)
    wave[:, 2], wave[:, 5] = tone("G", 1.0), tone("C", 1.0) * 0.2  # centre: G; right surround: a quiet C
    melody_file = tmp_path / "surround.wav"
    sf.write(melody_file, wave, SR, subtype="FLOAT")
    seen = []
    real = melody.chroma
    monkeypatch.setattr(melody, "chroma", lambda mono, *a, **k: seen.append(mono) or real(mono, *a, **k))
    config = generate.GenerateConfig(model="tiny-melody", prompts=["calm piano", "dark techno"], seconds=0.3,
                                     batch_size=1, variations=2, melody=str(melody_file), out=str(tmp_path / "out"))
    records = generate.run(config, melody_pipe)
    assert len(records) == 4 and len(seen) == 1
    np.testing.assert_array_equal(seen[0], audio.load(melody_file, channels=1)[0])
    assert melody.dominant_pitch(real(seen[0])) == "G"
