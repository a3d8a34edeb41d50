"""Helpers for the generation and evaluation tests: LoRA adapters in every format training and
other tools write, built with peft on the tiny model (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

# The tiny model's tensors are so small that a second thread only adds contention on a shared
# 2-core machine (40 ms instead of 4 ms per decoding step); restored after each test.


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for CLI subprocesses and notebook kernels
    yield
    torch.set_num_threads(old)


OUR_TARGETS = ["q_proj", "v_proj"]
# What ylacombe/musicgen-dreamboothing adapts: projections, feed-forward, heads and code embeddings.
OTHER_TOOL_TARGETS = (
    ["enc_to_dec_proj", "k_proj", "v_proj", "q_proj", "out_proj", "fc1", "fc2"]
    + [f"lm_heads.{i}" for i in range(4)]
    + [f"embed_tokens.{i}" for i in range(4)]
)


def peft_model(model_name: str = "tiny", targets=OUR_TARGETS, *, strength: float = 2.0, model=None, seed: int = 0):
    """A tiny MusicGen with a LoRA whose weights are random and large enough to change the output."""
    from peft import LoraConfig, get_peft_model

    from nbutils import models

    if model is None:
        model, _ = models.build_tiny(model_name)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), lora_dropout=0.0, init_lora_weights=False)
    wrapped = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * strength)
    wrapped.peft_config["default"].base_model_name_or_path = model_name
    return wrapped


def lora_state(wrapped) -> dict:
    """The training-state dict format (latest.pt / state.pt) of a peft model."""
    from peft import get_peft_model_state_dict

    config = wrapped.peft_config["default"]
    lora_config = {
        "r": config.r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
        "target_modules": sorted(config.target_modules), "bias": config.bias,
    }
    return {
        "step": 0,
        "lora": {k: v.detach().clone() for k, v in get_peft_model_state_dict(wrapped).items()},
        "lora_config": lora_config,
        "base_model": config.base_model_name_or_path,
    }


def save_peft(wrapped, folder: Path) -> Path:
    wrapped.save_pretrained(str(folder))
    return folder


def make_run(run_dir: Path, model_name: str = "tiny", *, steps=(2, 4), val_tracks=("val/a.wav",),
             train_tracks=("train/b.wav",), seed: int = 0) -> Path:
    """A training run folder exactly as nbutils.train writes it (format fixed in the brief)."""
    wrapped = peft_model(model_name, seed=seed)
    state = lora_state(wrapped)
    for step in steps:
        folder = run_dir / "checkpoints" / f"step-{step:06d}"
        save_peft(wrapped, folder)
        torch.save({**state, "step": step}, folder / "state.pt")
    torch.save({**state, "step": steps[-1]}, run_dir / "latest.pt")
    for name in ("best", "final"):
        save_peft(wrapped, run_dir / "adapters" / name)
    (run_dir / "split.json").write_text(json.dumps({"train_tracks": list(train_tracks), "val_tracks": list(val_tracks)}))
    return run_dir
