"""Loading LoRA adapters from every place they live, and refusing the wrong base model."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from _generate_helpers import OTHER_TOOL_TARGETS, lora_state, make_run, peft_model, save_peft
from nbutils.core import models
from nbutils.core.errors import UserError
from nbutils.generate import adapters


def _logits(model, processor):
    inputs = processor(text=["calm piano"], return_tensors="pt")
    with torch.no_grad():
        return model(**inputs, decoder_input_ids=torch.full((4, 3), 64)).logits


def _lora_tensors(model) -> dict:
    """LoRA weights of an attached model, keyed like get_peft_model_state_dict (no adapter name)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def test_peft_folder_loads_with_its_weights(tmp_path):
    saved = peft_model("tiny")
    folder = save_peft(saved, tmp_path / "adapter")
    model, processor = models.build_tiny("tiny")
    base_logits = _logits(model, processor)
    attached, adapter = adapters.load_onto(model, str(folder), "tiny")
    assert adapter.kind == "peft" and adapter.base_model == "tiny"
    expected = _lora_tensors(saved)
    loaded = _lora_tensors(attached)
    assert expected.keys() == loaded.keys()
    assert all(torch.equal(expected[k], loaded[k]) for k in expected)
    assert not torch.allclose(_logits(model, processor), base_logits), "the adapter must change the output"
    with attached.disable_adapter():
        assert torch.allclose(_logits(model, processor), base_logits), "switched off, it is the base model again"


def test_adapter_with_other_target_modules_loads(tmp_path):
    """Adapters from other tools (dreambooth-style targets incl. enc_to_dec_proj, fc1/fc2, lm_heads,
    embed_tokens) load: targets come from their config, not from ours."""
    saved = peft_model("tiny", OTHER_TOOL_TARGETS)
    folder = save_peft(saved, tmp_path / "dreambooth")
    model, processor = models.build_tiny("tiny")
    attached, adapter = adapters.load_onto(model, str(folder), "tiny")
    names = set(attached.targeted_module_names)
    for expected in ("enc_to_dec_proj", "decoder.lm_heads.0", "decoder.model.decoder.embed_tokens.3",
                     "decoder.model.decoder.layers.1.fc2", "decoder.model.decoder.layers.0.encoder_attn.q_proj"):
        assert expected in names
    expected = _lora_tensors(saved)
    loaded = _lora_tensors(attached)
    assert any("lora_embedding_A" in k for k in loaded)
    assert all(torch.equal(expected[k], loaded[k]) for k in expected)
    assert adapter.describe()["target_modules"] == sorted(OTHER_TOOL_TARGETS)


def test_training_outputs_resolve_to_the_same_adapter(tmp_path):
    run = make_run(tmp_path / "runs" / "lora", steps=(2, 4))
    latest = adapters.resolve(run / "latest.pt")
    step = adapters.resolve(run / "checkpoints" / "step-000002")
    best = adapters.resolve(run / "adapters" / "best")
    whole_run = adapters.resolve(run)
    assert (latest.kind, latest.step, latest.base_model) == ("training-state", 4, "tiny")
    assert (step.kind, step.step) == ("peft", 2)
    assert whole_run.location == str(run / "adapters" / "best"), "a run folder means its best adapter"
    assert best.step is None
    for other in (step, best):
        for key, value in latest.weights.items():
            assert torch.equal(other.weights[key], value), key
    assert sorted(latest.config.target_modules) == ["q_proj", "v_proj"]
    # the training state attaches like the PEFT folder does
    model, processor = models.build_tiny("tiny")
    attached = adapters.attach(model, latest, "tiny")
    assert all(torch.equal(_lora_tensors(attached)[k], v) for k, v in latest.weights.items())


def test_run_without_adapters_falls_back_to_latest_then_explains(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(UserError, match="No LoRA adapter in .*adapters/best.*latest.pt"):
        adapters.resolve(run)
    torch.save(lora_state(peft_model("tiny")) | {"step": 7}, run / "latest.pt")
    assert adapters.resolve(run).step == 7


def _other_musicgen_dir(tmp_path):
    """A MusicGen whose decoder is wider (48) than tiny's (32): a different base model."""
    from transformers import MusicgenForConditionalGeneration

    config = models.tiny_config()
    config.decoder.hidden_size = 48
    model = MusicgenForConditionalGeneration(config)
    folder = tmp_path / "other-musicgen"
    model.save_pretrained(folder)
    return folder, model


def test_wrong_base_error_names_both_models(tmp_path):
    folder, other = _other_musicgen_dir(tmp_path)
    wrapped = peft_model(str(folder), model=other)
    adapter_dir = save_peft(wrapped, tmp_path / "adapter-for-other")
    model, processor = models.build_tiny("tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError) as err:
        adapters.load_onto(model, str(adapter_dir), "tiny")
    message = str(err.value)
    assert str(folder) in message and "'tiny'" in message
    assert "48" in message and "32" in message, message  # says what does not fit
    # nothing was attached: the model is untouched
    assert set(model.state_dict()) == set(before)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_missing_layers_are_a_wrong_base_too(tmp_path):
    """An adapter for the stereo model's 8 heads does not fit the mono model's 4."""
    wrapped = peft_model("tiny-stereo", [f"lm_heads.{i}" for i in range(8)])
    adapter_dir = save_peft(wrapped, tmp_path / "stereo-heads")
    model, _ = models.build_tiny("tiny")
    with pytest.raises(UserError,
                       match=r"made for base model 'tiny-stereo'.*model given is 'tiny'.*lm_heads.4: no such layer"):
        adapters.load_onto(model, str(adapter_dir), "tiny")


def test_same_shapes_under_another_name_warns_and_loads(tmp_path, tiny_dir):
    """A Drive copy of the model under its own path: the adapter names 'tiny', fits, so it loads."""
    adapter_dir = save_peft(peft_model("tiny"), tmp_path / "adapter")
    model, _ = models.load_musicgen(str(tiny_dir))
    with pytest.warns(UserWarning, match="names base model 'tiny'"):
        attached, _ = adapters.load_onto(model, str(adapter_dir), str(tiny_dir))
    assert attached.targeted_module_names


def test_unreadable_sources_say_what_to_do(tmp_path):
    broken = tmp_path / "latest.pt"
    broken.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="adapters/final"):
        adapters.resolve(broken)
    with pytest.raises(UserError, match="neither an existing folder"):
        adapters.resolve(str(tmp_path / "missing" / "deeper" / "folder"))
    # a Hub id goes to peft's downloader; offline (as in tests) that fails with one clear message
    with pytest.raises(UserError, match="Could not load the LoRA adapter 'someone/musicgen-lora'.*HF_TOKEN"):
        adapters.resolve("someone/musicgen-lora")


def test_adapter_config_written_by_newer_peft_still_loads(tmp_path):
    folder = save_peft(peft_model("tiny"), tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["a_field_from_the_future"] = 1
    (folder / "adapter_config.json").write_text(json.dumps(config))
    model, _ = models.build_tiny("tiny")
    attached, _ = adapters.load_onto(model, str(folder), "tiny")
    assert attached.targeted_module_names


# ---------------------------------------------------------------------------------------------
# Wrong base: Hub ids and the facts training records
# ---------------------------------------------------------------------------------------------


def test_different_hub_ids_are_a_wrong_base_even_when_shapes_fit(tmp_path):
    """An adapter trained on musicgen-medium, loaded onto musicgen-small: refused by name."""
    wrapped = peft_model("tiny")
    wrapped.peft_config["default"].base_model_name_or_path = "facebook/musicgen-medium"
    adapter_dir = save_peft(wrapped, tmp_path / "adapter")
    model, _ = models.build_tiny("tiny")  # its weights fit: only the recorded names tell them apart
    with pytest.raises(UserError, match=r"trained on 'facebook/musicgen-medium'.*"
                                        r"model given is 'facebook/musicgen-small'.*"
                                        r"MODEL = 'facebook/musicgen-medium'"):
        adapters.load_onto(model, str(adapter_dir), "facebook/musicgen-small")
    assert not hasattr(model, "peft_config"), "nothing was attached"
    # the same Hub id (spelled with other capitals) is the same model
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # not even a "names another base" warning
        warnings.filterwarnings("ignore", message="Could not find a config file")  # peft, offline
        attached, _ = adapters.load_onto(model, str(adapter_dir), "Facebook/MusicGen-Medium")
    assert attached.targeted_module_names


def _recorded_adapter(tmp_path, model_name: str = "tiny"):
    """An adapter written the way training writes it (``lora.write_adapter``): with base_model.json."""
    from nbutils.train import lora

    wrapped = peft_model(model_name)
    folder = tmp_path / "recorded"
    folder.mkdir()
    lora.write_adapter(wrapped, folder, model_name)
    return folder


def test_training_records_the_base_facts_in_every_adapter(tmp_path):
    """A real (one-step) training run: adapters, step folders and latest.pt carry the base facts."""
    from _train_helpers import small_config, tokens
    from nbutils.train import stage as train

    out = tmp_path / "run"
    train.run(small_config(tokens(tmp_path, batches=1, tracks_per_batch=1), out, max_steps=1, val_fraction=0.3))
    model, _ = models.build_tiny("tiny")
    expected = {"model_type": "musicgen", "num_codebooks": 4, "audio_channels": 1, "decoder_hidden_size": 32}
    assert models.base_facts(model) == expected
    for folder in (out / "adapters" / "final", *(out / "checkpoints").iterdir()):
        assert json.loads((folder / models.BASE_RECORD).read_text()) == expected, folder
    assert torch.load(out / "latest.pt", weights_only=True)["base_facts"] == expected
    assert adapters.resolve(out / "latest.pt").base_facts == expected
    adapters.load_onto(model, str(out / "adapters" / "final"), "tiny")  # its own base: loads


@pytest.mark.parametrize("field, recorded, actual", [
    ("model_type", "musicgen_melody", "musicgen"),
    ("num_codebooks", 8, 4),
    ("audio_channels", 2, 1),
    ("decoder_hidden_size", 48, 32),
])
def test_each_recorded_fact_that_differs_is_named(tmp_path, field, recorded, actual):
    folder = _recorded_adapter(tmp_path)
    facts = json.loads((folder / models.BASE_RECORD).read_text())
    assert facts[field] == actual
    (folder / models.BASE_RECORD).write_text(json.dumps({**facts, field: recorded}))
    model, _ = models.build_tiny("tiny")
    with pytest.raises(UserError) as err:
        adapters.load_onto(model, str(folder), "tiny")
    message = str(err.value)
    assert f"{field}: the adapter's base has {recorded}, the model given has {actual}" in message, message
    assert "'tiny'" in message and "MODEL" in message
    assert not hasattr(model, "peft_config"), "nothing was attached"


def test_facts_of_a_training_state_are_compared_too(tmp_path):
    state = lora_state(peft_model("tiny")) | {"base_facts": models.base_facts(models.build_tiny("tiny-stereo")[0])}
    torch.save(state, tmp_path / "latest.pt")
    model, _ = models.build_tiny("tiny")
    with pytest.raises(UserError, match=r"num_codebooks: the adapter's base has 8, the model given has 4.*"
                                        r"audio_channels: the adapter's base has 2, the model given has 1"):
        adapters.load_onto(model, str(tmp_path / "latest.pt"), "tiny")


def test_adapters_without_a_record_still_load(tmp_path):
    folder = _recorded_adapter(tmp_path)
    (folder / models.BASE_RECORD).unlink()
    model, _ = models.build_tiny("tiny")
    attached, adapter = adapters.load_onto(model, str(folder), "tiny")
    assert adapter.base_facts is None and attached.targeted_module_names


def test_fingerprint_follows_the_weights_file(tmp_path):
    folder = save_peft(peft_model("tiny", seed=1), tmp_path / "adapter")
    first = adapters.resolve(folder)
    assert len(first.fingerprint) == adapters.FINGERPRINT_CHARS and first.describe()["fingerprint"] == first.fingerprint
    assert adapters.fingerprint(tmp_path / "adapter") == first.fingerprint
    save_peft(peft_model("tiny", seed=2), folder)  # retrained into the same folder
    assert adapters.fingerprint(folder) != first.fingerprint
    run = make_run(tmp_path / "run")
    assert adapters.fingerprint(run) == adapters.fingerprint(run / "adapters" / "best")
    assert adapters.resolve(run / "latest.pt").fingerprint == adapters.fingerprint(run / "latest.pt") != ""
