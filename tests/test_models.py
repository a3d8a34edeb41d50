import json

import pytest
import torch

from nbutils.core import models
from nbutils.core.errors import UserError


def test_tiny_is_deterministic_and_small():
    a, _ = models.build_tiny("tiny")
    b, _ = models.build_tiny("tiny")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert sum(p.numel() for p in a.parameters()) < 1_000_000


def test_tiny_has_real_musicgen_shape(tiny):
    model, _ = tiny
    spec = models.spec_of(model)
    assert (spec.sample_rate, spec.frame_rate, spec.hop_length, spec.num_codebooks) == (32000, 50, 640, 4)
    assert spec.pad_token_id == model.config.decoder.pad_token_id
    assert hasattr(model, "enc_to_dec_proj"), "text width != decoder width, as in musicgen-small"


def test_tiny_tokenizer_is_offline_and_knows_music_words(tiny):
    _, processor = tiny
    ids = processor.tokenizer("calm jazz piano with drums").input_ids
    assert processor.tokenizer.unk_token_id not in ids


def test_tiny_forward_loss_and_generate(tiny):
    model, processor = tiny
    inputs = processor(text=["calm piano", "dark techno beat"], padding=True, return_tensors="pt")
    labels = torch.randint(0, 64, (2, 12, 4))
    out = model(**inputs, labels=labels)
    assert torch.isfinite(out.loss)
    torch.manual_seed(0)
    audio = model.generate(**inputs, max_new_tokens=20 + 3)
    assert audio.shape == (2, 1, 20 * 640)


def test_codec_encodes_at_50_hz():
    codec, spec = models.load_codec("tiny")
    codes = codec.encode(torch.zeros(1, 1, 32000)).audio_codes
    assert codes.shape == (1, 1, spec.num_codebooks, 50)


def test_decoder_start_fix_copies_from_generation_config(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    config["decoder"].pop("decoder_start_token_id", None)  # as on the Hub
    (tiny_dir / "config.json").write_text(json.dumps(config))
    model, processor = models.load_musicgen(str(tiny_dir))
    assert model.config.decoder.decoder_start_token_id == 64
    inputs = processor(text=["calm piano"], return_tensors="pt")
    assert torch.isfinite(model(**inputs, labels=torch.randint(0, 64, (1, 8, 4))).loss)


def test_local_dir_loads_same_weights(tiny_dir, tiny):
    loaded, _ = models.load_musicgen(str(tiny_dir))
    reference, _ = tiny
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def _whole_model_loads(monkeypatch) -> list[str]:
    from transformers import MusicgenForConditionalGeneration

    calls, original = [], MusicgenForConditionalGeneration.from_pretrained.__func__

    def spy(cls, name, *args, **kwargs):
        calls.append(str(name))
        return original(cls, name, *args, **kwargs)

    monkeypatch.setattr(MusicgenForConditionalGeneration, "from_pretrained", classmethod(spy))
    return calls


def test_local_codec_matches_tiny_without_loading_the_whole_model(tiny_dir, monkeypatch):
    whole = _whole_model_loads(monkeypatch)
    codec, spec = models.load_codec(str(tiny_dir))
    ref, ref_spec = models.load_codec("tiny")
    wav = torch.randn(1, 1, 6400)
    assert spec == ref_spec
    assert torch.equal(codec.encode(wav).audio_codes, ref.encode(wav).audio_codes)
    assert whole == [], "only the audio_encoder tensors are read"


def test_local_codec_in_another_layout_falls_back_to_the_whole_model(tiny_dir, tmp_path, monkeypatch):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(tiny_dir, tmp_path / "renamed")
    (weights,) = folder.glob("*.safetensors")
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.startswith("audio_encoder."))
    tensors[key + "_old_layout"] = tensors.pop(key)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    whole = _whole_model_loads(monkeypatch)
    codec, _ = models.load_codec(str(folder))
    assert whole == [str(folder)] and codec.config.sampling_rate == 32000


@pytest.mark.parametrize("name", ["/no/such/folder", "./missing-model"])
def test_missing_local_folder_is_a_clear_error(name):
    with pytest.raises(UserError, match="does not exist"):
        models.load_musicgen(name)


def test_offline_hub_id_is_a_clear_error():
    with pytest.raises(UserError, match="(?s)Could not load model 'facebook/musicgen-small'.*tiny"):
        models.load_config("facebook/musicgen-small")


def test_stereo_tiny_has_interleaved_codebooks():
    model, _ = models.build_tiny("tiny-stereo")
    spec = models.spec_of(model)
    assert (spec.num_codebooks, spec.audio_channels) == (8, 2)


def test_tiny_codec_codes_follow_the_audio_and_decoding_follows_the_codes():
    """transformers builds EnCodec codebooks as zeros; the tiny model fills them (k-means style)."""
    from nbutils.core import synth

    codec, _ = models.load_codec("tiny")
    with torch.no_grad():
        codes = {s: codec.encode(torch.from_numpy(synth.track(s, 1.0, seed=3))[None, None]).audio_codes[0, 0]
                 for s in ("arpeggio", "percussion")}
        assert all(len(set(c[k].tolist())) > 5 for c in codes.values() for k in range(4))
        assert not torch.equal(codes["arpeggio"], codes["percussion"])
        audio = {s: codec.decode(c[None, None], [None]).audio_values for s, c in codes.items()}
    assert not torch.equal(audio["arpeggio"], audio["percussion"])


def test_tiny_melody_builds_offline():
    model, processor = models.load_musicgen("tiny-melody")
    assert model.config.model_type == "musicgen_melody"
    assert models.spec_of(model).num_codebooks == 4
    assert processor.tokenizer("calm piano").input_ids


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("source", ["tiny", "local"])
def test_half_precision_keeps_encodec_float32_and_unrounded(tiny_dir, tiny, source, dtype):
    """EnCodec stays float32 (read straight into float32, never rounded to half and back), and so
    do the modules transformers keeps in float32: T5's ``wo`` in float16. The rest is ``dtype``."""
    name = "tiny" if source == "tiny" else str(tiny_dir)
    model, _ = models.load_musicgen(name, dtype=dtype)
    reference = tiny[0].state_dict()
    for key, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        if key.startswith("audio_encoder."):
            assert tensor.dtype == torch.float32 and torch.equal(tensor, reference[key]), key
        elif key.endswith(".wo.weight"):
            assert tensor.dtype == (torch.float32 if dtype == torch.float16 else dtype), key
        else:
            assert tensor.dtype == dtype, key
    assert model.dtype == dtype
