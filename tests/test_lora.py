"""LoRA on MusicGen: target presets, only LoRA trainable, adapter folders that plain PEFT loads."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import MusicgenForConditionalGeneration

from nbutils.core import models
from nbutils.core.errors import UserError
from nbutils.train import labels as L
from nbutils.train import lora


def _wrapped(preset="self-attention", r=4, alpha=8.0, dropout=0.0, name="tiny"):
    model, processor = models.load_musicgen(name)
    return lora.wrap(model, lora.make_config(preset, r, alpha, dropout), name), processor


def _lora_modules(peft_model):
    return sorted({n.rsplit(".lora_", 1)[0].removeprefix("base_model.model.")
                   for n, _ in peft_model.named_parameters() if ".lora_" in n})


@pytest.mark.parametrize("preset, parts", [
    ("self-attention", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"}),
    ("attention", {f"{a}.{p}_proj" for a in ("self_attn", "encoder_attn") for p in ("q", "k", "v", "out")}),
    ("all-linear", {f"{a}.{p}_proj" for a in ("self_attn", "encoder_attn") for p in ("q", "k", "v", "out")}
     | {"fc1", "fc2"}),
])
def test_presets_target_exactly_the_decoder_modules(preset, parts):
    peft_model, _ = _wrapped(preset)
    expected = sorted(f"decoder.model.decoder.layers.{i}.{p}" for i in range(2) for p in parts)
    assert _lora_modules(peft_model) == expected
    assert lora.targets(preset) == sorted(lora.targets(preset))


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(UserError, match="self-attention, attention, all-linear"):
        lora.make_config("everything")


def test_only_lora_is_trainable_and_base_weights_never_change():
    peft_model, processor = _wrapped("all-linear", dropout=0.1)
    trainable, total = lora.check_only_lora_trainable(peft_model)
    names = lora.trainable_names(peft_model)
    assert names and all(".lora_" in n and "decoder.model.decoder.layers." in n for n in names)
    base = peft_model.base_model.model
    for part in (base.text_encoder, base.audio_encoder, base.enc_to_dec_proj, base.decoder.lm_heads):
        assert not any(p.requires_grad for p in part.parameters())
    assert 0 < trainable < total / 10
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    inputs = processor(text=["calm piano"], return_tensors="pt")
    labels = L.delay_labels(torch.randint(0, 64, (1, 10, 4)), None, 64)
    for _ in range(2):
        loss = peft_model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and changed <= set(names)


def test_trainable_check_catches_a_leak():
    peft_model, _ = _wrapped()
    peft_model.base_model.model.text_encoder.shared.weight.requires_grad_(True)
    with pytest.raises(UserError, match="outside the decoder's LoRA"):
        lora.check_only_lora_trainable(peft_model)


def test_rank_alpha_dropout_are_applied_and_recorded():
    peft_model, _ = _wrapped("attention", r=6, alpha=12.0, dropout=0.2)
    layer = peft_model.base_model.model.decoder.model.decoder.layers[0].encoder_attn.q_proj
    assert layer.lora_A["default"].weight.shape[0] == 6
    assert layer.scaling["default"] == pytest.approx(2.0)
    assert layer.lora_dropout["default"].p == pytest.approx(0.2)
    summary = lora.config_dict(peft_model.peft_config["default"])
    assert json.loads(json.dumps(summary)) == summary
    assert summary["r"] == 6 and summary["lora_alpha"] == 12.0 and summary["lora_dropout"] == 0.2
    assert summary["target_modules"] == sorted(summary["target_modules"]) == lora.targets("attention")
    assert summary["base_model_name_or_path"] == "tiny"


def test_state_dict_roundtrip_is_exact():
    a, _ = _wrapped()
    b, _ = _wrapped()
    with torch.no_grad():
        for n, p in a.named_parameters():
            if ".lora_" in n:
                p.add_(torch.randn_like(p))
    weights = lora.state_dict(a)
    assert all(".default." not in k for k in weights), "peft format: no adapter name in the keys"
    lora.load_state_dict(b, weights)
    assert all(torch.equal(weights[k], v) for k, v in lora.state_dict(b).items())
    with pytest.raises(UserError, match="do not fit"):
        lora.load_state_dict(_wrapped("all-linear")[0], weights)


def test_adapter_folder_loads_with_the_plain_peft_snippet(tmp_path, tiny_dir):
    peft_model, processor = _wrapped(name=str(tiny_dir))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.add_(0.5 * torch.randn_like(p))
    folder = lora.save_adapter(peft_model, tmp_path / "adapter", str(tiny_dir))
    assert {p.name for p in folder.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_dir)

    base = MusicgenForConditionalGeneration.from_pretrained(str(tiny_dir))
    loaded = PeftModel.from_pretrained(base, str(folder)).eval()
    inputs = processor(text=["bright synth arpeggio"], return_tensors="pt")
    decoder_ids = torch.full((4, 5), 64)
    with torch.no_grad():
        expected = peft_model.eval()(**inputs, decoder_input_ids=decoder_ids).logits
        got = loaded(**inputs, decoder_input_ids=decoder_ids).logits
        with loaded.disable_adapter():
            plain = loaded(**inputs, decoder_input_ids=decoder_ids).logits
    assert torch.allclose(expected, got, atol=1e-6) and not torch.allclose(got, plain, atol=1e-4)
