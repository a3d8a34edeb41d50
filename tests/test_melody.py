"""Chroma without torchaudio, and melody conditioning of a tiny musicgen-melody built from a config."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import last_json, run_cli
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


def test_generate_sees_the_text_and_the_melody():
    """transformers <= 5.2x (Colab's 5.15) drops a melody model's conditioning in generate()
    (huggingface/transformers#45647): every prompt and melody gave the same audio. Loaded by the
    suite, the cached generation conditions as a full recomputation without cache does."""
    model, processor = models.load_musicgen("tiny-melody")
    features = melody.one_hot(np.resize(np.array([2] * 8 + [9] * 8), 235)[None], 12)

    def codes(text, **kwargs):
        torch.manual_seed(0)
        return model.generate(**processor.tokenizer([text], return_tensors="pt"), max_new_tokens=23,
                              guidance_scale=3.0, **kwargs)

    greedy = codes("calm piano", input_features=features, do_sample=False)
    assert torch.equal(greedy, codes("calm piano", input_features=features, do_sample=False, use_cache=False))
    sampled = codes("calm piano", input_features=features, do_sample=True)
    assert not torch.equal(sampled, codes("dark techno metal", input_features=features, do_sample=True)), "text"
    assert not torch.equal(sampled, codes("calm piano", do_sample=True)), "melody"


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


# ---------------------------------------------------------------------------------------------
# A melody folder saved by someone else: its own chroma settings, no torchaudio, no extra flags
# ---------------------------------------------------------------------------------------------

THEIR_SETTINGS = {"feature_extractor_type": "MusicgenMelodyFeatureExtractor", "feature_size": 12, "hop_length": 2048,
                  "n_fft": 8192, "chunk_length": 30, "n_samples": 960000, "sampling_rate": 32000,
                  "padding_side": "left", "padding_value": 0.0, "return_attention_mask": False,
                  "stem_indices": [3, 2], "processor_class": "MusicgenMelodyProcessor"}


@pytest.fixture(scope="module")
def foreign_melody(tmp_path_factory):
    """A melody folder as transformers 4.x (and the Hub checkpoints) save it: ``preprocessor_config.json``
    naming MusicgenMelodyFeatureExtractor / MusicgenMelodyProcessor, with a hop of its own (2048)."""
    import json

    model, processor = models.build_tiny("tiny-melody")
    model.config.chroma_length = 469  # 30 s at its hop of 2048
    folder = tmp_path_factory.mktemp("their") / "melody-model"
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    tokenizer_config = folder / "tokenizer_config.json"
    values = json.loads(tokenizer_config.read_text())
    tokenizer_config.write_text(json.dumps({**values, "processor_class": "MusicgenMelodyProcessor"}))
    (folder / "preprocessor_config.json").write_text(json.dumps(THEIR_SETTINGS))
    return folder


def test_chroma_settings_are_read_from_either_processor_layout(tmp_path, foreign_melody):
    import json
    import shutil

    from nbutils.core import modelfiles

    theirs = melody.ChromaSettings(sample_rate=32000, n_fft=8192, hop_length=2048, num_chroma=12)
    assert models.chroma_settings(str(foreign_melody)) == theirs
    nested = tmp_path / "nested"  # transformers 5.x: processor_config.json with the extractor inside
    shutil.copytree(foreign_melody, nested)
    (nested / "preprocessor_config.json").unlink()
    (nested / "processor_config.json").write_text(json.dumps({"feature_extractor": THEIR_SETTINGS,
                                                              "processor_class": "MusicgenMelodyProcessor"}))
    assert models.chroma_settings(str(nested)) == theirs
    assert modelfiles.chroma_settings(str(tmp_path)) == melody.ChromaSettings(), "no processor file: the released"
    assert models.chroma_settings("tiny-melody") == melody.ChromaSettings()
    assert models.chroma_settings("tiny") is None


def test_a_foreign_melody_folder_generates_with_a_melody_without_torchaudio(tmp_path, foreign_melody):
    import importlib.util

    from transformers import AutoProcessor

    if importlib.util.find_spec("torchaudio") is None:  # the user's report: transformers' own loading fails here
        with pytest.raises(ImportError, match="torchaudio"):
            AutoProcessor.from_pretrained(str(foreign_melody))
    sf.write(tmp_path / "hum.wav", tone("G", 2.0), SR)
    proc = run_cli("generate", "--model", str(foreign_melody), "--melody", str(tmp_path / "hum.wav"),
                   "--prompt", "calm piano", "--seconds", "0.5", "--out", str(tmp_path / "out"))
    (sidecar,) = last_json(proc.stdout)["sidecars"]
    assert json_of(sidecar)["pipeline"]["melody_model"] is True
    pipe = generate.Pipeline(str(foreign_melody))
    features = pipe.chroma(str(tmp_path / "hum.wav"))
    assert features.shape == (2 * SR // 2048 + 1, 12), "its own hop, not the released 4096"
    assert melody.dominant_pitch(features) == "G"


def test_a_foreign_melody_folder_trains_with_no_extra_flags(tmp_path, foreign_melody):
    from _melody_helpers import melody_config, write_melody_zips
    from nbutils import tokenize, train
    from nbutils.tokenize import shards

    zips = write_melody_zips(tmp_path / "zips")
    tokenize.run(tokenize.TokenizeConfig(zips=str(zips), out=str(tmp_path / "tokens"), model=str(foreign_melody),
                                         segment_seconds=4.0, progress=False, describe="none"))
    (shard,) = shards.open_all(tmp_path / "tokens")
    assert shard.chroma_settings.hop_length == 2048 and len(shard.segment_chroma(0)) == 4 * SR // 2048 + 1
    summary = train.run(melody_config(tmp_path / "tokens", tmp_path / "run", model="", max_steps=2))
    assert summary["step"] == 2  # the model the shards were tokenized with: the folder, no flags
    sf.write(tmp_path / "hum.wav", tone("A", 1.0), SR)
    records = generate.run(generate.GenerateConfig(model=str(foreign_melody), adapter=summary["adapter_final"],
                                                   prompts=["calm"], seconds=0.3, melody=str(tmp_path / "hum.wav"),
                                                   out=str(tmp_path / "g")))
    assert [r["variant"] for r in records] == ["lora"] and records[0]["parameters"]["melody"]


def json_of(path):
    import json

    return json.loads(open(path, encoding="utf-8").read())


# ---------------------------------------------------------------------------------------------
# Load errors name their real cause
# ---------------------------------------------------------------------------------------------


def test_load_errors_name_their_real_cause(tmp_path, foreign_melody):
    import shutil

    from nbutils.core import modelfiles
    from nbutils.core.errors import UserError

    bare = tmp_path / "no-tokenizer"
    shutil.copytree(foreign_melody, bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "spiece.model"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(UserError, match=r"has no tokenizer files.*processor.save_pretrained") as err:
        models.load_musicgen(str(bare))
    assert "internet" not in str(err.value) and "Hub id" not in str(err.value)
    broken = tmp_path / "broken-weights"
    shutil.copytree(foreign_melody, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="from its folder") as err:
        models.load_musicgen(str(broken))
    assert "internet" not in str(err.value) and "Check the Hub id" not in str(err.value), str(err.value)
    missing = modelfiles.load_error("x/y", ImportError("MusicgenMelodyProcessor requires the torchaudio library but "
                                                      "it was not found in your environment."))
    assert "it needs torchaudio, which is not installed" in str(missing) and "pip install torchaudio" in str(missing)
    with pytest.raises(UserError, match=r"(?s)not in the download cache and the Hub cannot be reached.*'tiny'"):
        models.load_config("facebook/musicgen-melody")  # the tests run offline


# ---------------------------------------------------------------------------------------------
# A LoRA on the melody base: with and without a melody, base / LoRA / A/B, CLI and form
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def melody_adapter(tmp_path_factory):
    from _melody_helpers import melody_config, melody_tokens
    from nbutils import train

    root = tmp_path_factory.mktemp("melody-run")
    _, tokens = melody_tokens(root)
    summary = train.run(melody_config(tokens, root / "run", max_steps=2, lr=5e-2, warmup_steps=0))
    return summary["adapter_best"]


def test_the_adapter_loads_onto_the_melody_base_with_and_without_a_melody(tmp_path, melody_adapter):
    sf.write(tmp_path / "hum.wav", np.concatenate([tone("C", 1.0), tone("A", 1.0)]), SR)
    made = {}
    for tune in ("", str(tmp_path / "hum.wav")):
        proc = run_cli("generate", "--model", "tiny-melody", "--adapter", melody_adapter, "--compare", "both",
                       "--prompt", "calm piano", "--seconds", "0.4", "--melody", tune, "--out", str(tmp_path / "out"))
        summary = last_json(proc.stdout)
        assert summary["variants"] == ["base", "lora"] and summary["clips"] == 2
        for sidecar in summary["sidecars"]:
            info = json_of(sidecar)
            assert info["parameters"]["melody"] == tune and info["pipeline"]["melody_model"]
            made[(tune, info["variant"])] = sf.read(sidecar[: -len(".json")] + ".wav")[0]
    assert not np.array_equal(made[("", "lora")], made[(str(tmp_path / "hum.wav"), "lora")]), "the melody counts"
    assert not np.array_equal(made[("", "base")], made[("", "lora")]), "the adapter counts"


def test_the_form_has_a_melody_field_for_melody_models_only(tmp_path, melody_adapter):
    from nbutils.generate import form as generate_form

    sf.write(tmp_path / "hum.wav", tone("E", 1.0), SR)
    form = generate_form.form(model="tiny-melody", adapter=melody_adapter, prompts=["calm"], seconds=0.3,
                              out=str(tmp_path / "out"), compare="both")
    assert form.melody is not None and form.melody in form.widget.children
    form.melody.value = str(tmp_path / "hum.wav")
    records = form.generate()
    assert sorted(r["variant"] for r in records) == ["base", "lora"]
    assert all(r["parameters"]["melody"] == str(tmp_path / "hum.wav") for r in records)
    assert generate_form.form(model="tiny", prompts=["calm"]).melody is None
