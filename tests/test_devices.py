"""Half precision by GPU: bf16 only where it is native (compute capability 8+), fp16 on T4 / V100.

No GPU here, so torch.cuda is made to describe one. ``is_bf16_supported`` answers True for both
cards, as it does on a real T4 (emulation): every stage must look past it.
"""

from __future__ import annotations

import types

import pytest
import torch

from nbutils import colab
from nbutils.core import devices, models
from nbutils.core.errors import UserError
from nbutils.tokenize import encoder
from nbutils.train import presets
from nbutils.train import stage as train

GPUS = {  # capability, name as the driver reports it, memory in GiB
    "T4": ((7, 5), "Tesla T4", 14.7),
    "V100": ((7, 0), "Tesla V100-SXM2-16GB", 15.8),
    "A100": ((8, 0), "NVIDIA A100-SXM4-40GB", 39.6),
    "L4": ((8, 9), "NVIDIA L4", 22.2),
}


@pytest.fixture
def fake_gpu(monkeypatch):
    """``fake_gpu("T4")`` makes torch.cuda describe one such card (nothing runs on it)."""

    def install(card: str) -> None:
        capability, name, gib = GPUS[card]
        props = types.SimpleNamespace(name=name, total_memory=int(gib * 2**30), major=capability[0],
                                      minor=capability[1])
        for attr, value in {
            "is_available": lambda: True,
            "device_count": lambda: 1,
            "get_device_capability": lambda device=None: capability,
            "get_device_name": lambda device=None: name,
            "get_device_properties": lambda device=None: props,
            "mem_get_info": lambda device=None: (props.total_memory, props.total_memory),
            "is_bf16_supported": lambda including_emulation=True: True,  # what torch says on a T4 too
        }.items():
            monkeypatch.setattr(torch.cuda, attr, value)

    return install


@pytest.mark.parametrize("card, native", [("T4", False), ("V100", False), ("A100", True), ("L4", True)])
def test_every_stage_picks_bf16_only_where_it_is_native(fake_gpu, card, native):
    fake_gpu(card)
    half, precision = (torch.bfloat16, "bf16") if native else (torch.float16, "fp16")
    assert devices.bf16_native() is native and devices.bf16_native("cuda:0") is native
    assert devices.bf16_native(0) is native
    codec, spec = models.load_codec("tiny")
    assert encoder.Encoder(codec, spec, device="cpu", precision="auto").dtype is None  # tokenize on a CPU
    assert devices.pick_precision("auto", "cuda") == precision  # the one picker: tokenize, generate, evaluate
    assert devices.pick_dtype("auto", "cuda") is half and devices.pick_dtype("auto", "auto") is half
    info = devices.gpu_info()
    assert info["bf16"] is native
    assert f"bf16 {'yes' if native else 'no'}" in colab.gpu_report("tiny", info)
    assert presets.suggest("facebook/musicgen-small").precision == precision
    settings = presets.settings_for(train.TrainConfig(model="tiny"), "tiny")  # train, precision=auto
    assert settings["precision"] == precision


def test_explicit_choices_are_kept(fake_gpu):
    fake_gpu("T4")
    assert devices.pick_dtype("bf16", "cuda") is torch.bfloat16 and devices.pick_dtype("fp32", "cuda") is torch.float32
    assert devices.pick_device("auto") == devices.pick_device(None) == "cuda" and devices.pick_device("cpu") == "cpu"
    with pytest.warns(FutureWarning, match="'bfloat16' is now written 'bf16'"):
        assert devices.pick_dtype("bfloat16", "cuda") is torch.bfloat16  # 0.1.0's spelling, for one release
    with pytest.raises(UserError, match="Unknown precision 'fp8'. Use one of: auto, bf16, fp16, fp32"):
        devices.pick_precision("fp8", "cuda")
    with pytest.raises(ValueError, match="resolved precision"):
        devices.torch_dtype("auto")


def test_cpu_auto_is_fp32_without_asking_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.pick_device("auto") == "cpu"
    assert devices.pick_precision("auto", "auto") == devices.pick_precision("auto", "cpu") == "fp32"
    assert devices.pick_dtype("auto", "cpu") is torch.float32


def test_cpu_is_never_bf16_native(fake_gpu, monkeypatch):
    fake_gpu("A100")
    assert devices.bf16_native("cpu") is False
    assert devices.bf16_native(torch.device("cpu")) is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_gpu(device=None):
        raise AssertionError("asked a GPU that is not there")

    monkeypatch.setattr(torch.cuda, "get_device_capability", no_gpu)
    assert devices.bf16_native() is False and devices.bf16_native("cuda") is False


@pytest.mark.parametrize("card", ["T4", "L4", "A100"])
def test_one_batch_setting_completes_the_presets_effective_batch_on_every_gpu(fake_gpu, card):
    # a run that keeps its effective batch can move between Colab GPUs (it is part of what a run means)
    fake_gpu(card)
    model = "facebook/musicgen-small"
    for settings, expected in (({"batch_size": 4}, (4, 4)), ({"grad_accum": 4}, (4, 4)),
                               ({"batch_size": 32}, (32, 1)), ({"batch_size": 3, "grad_accum": 5}, (3, 5))):
        picked = presets.settings_for(train.TrainConfig(model=model, **settings), model)
        assert (picked["batch_size"], picked["grad_accum"]) == expected, (card, settings)
    preset = presets.settings_for(train.TrainConfig(model=model), model)
    assert preset["batch_size"] * preset["grad_accum"] == presets.EFFECTIVE_BATCH
