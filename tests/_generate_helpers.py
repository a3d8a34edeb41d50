"""Helpers for the generation and evaluation tests: LoRA adapters in every format training and
other tools write, built with peft on the tiny model (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

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

    from nbutils.core import models

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
    """The training-state dict format (latest.pt / state.pt) of a peft model, as nbutils.train
    writes it (lora_config as nbutils.lora.config_dict: peft_type, floats, sorted targets...)."""
    from peft import get_peft_model_state_dict

    config = wrapped.peft_config["default"]
    lora_config = {
        "peft_type": "LORA", "r": int(config.r), "lora_alpha": float(config.lora_alpha),
        "lora_dropout": float(config.lora_dropout), "target_modules": sorted(config.target_modules),
        "bias": str(config.bias), "use_rslora": False, "use_dora": False,
        "base_model_name_or_path": config.base_model_name_or_path,
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
    split = {"train_tracks": list(train_tracks), "val_tracks": list(val_tracks)}
    (run_dir / "split.json").write_text(json.dumps(split))
    return run_dir


ZIP_NAME = "archive_batch_0001.zip"
STYLES = ("chords", "arpeggio")


def make_tokens(tokens_dir: Path, zips_dir: Path | None = None, *, tracks_per_style: int = 2,
                seconds: float = 2.0, segment_seconds: float = 1.0) -> dict:
    """A ZIP of synthetic tracks and its token shard (tiny EnCodec codes), as tokenization writes
    them: track ids ``<zip>/<path>``, descriptions per style, the ZIP named in the shard index.

    Returns:
        ``{"tracks": [...], "val_tracks": [...], "train_tracks": [...]}`` (one track per style held out).
    """
    import io
    import zipfile

    import soundfile as sf

    from nbutils.core import models, synth
    from nbutils.tokenize import shards

    codec, spec = models.load_codec("tiny")
    writer = shards.ShardWriter(tokens_dir, Path(ZIP_NAME).stem, {
        "model": "tiny", "sample_rate": spec.sample_rate, "num_codebooks": spec.num_codebooks, "zip": ZIP_NAME})
    members, tracks = {}, []
    for s, style in enumerate(STYLES):
        for t in range(tracks_per_style):
            path = f"music/{style}_{t}.wav"
            wave = synth.track(style, seconds, seed=10 * s + t)
            buffer = io.BytesIO()
            sf.write(buffer, wave, spec.sample_rate, format="WAV")
            members[path] = buffer.getvalue()
            track = f"{ZIP_NAME}/{path}"
            tracks.append(track)
            step = int(segment_seconds * spec.sample_rate)
            for start in range(0, len(wave) - step + 1, step):
                with torch.no_grad():
                    codes = codec.encode(torch.from_numpy(wave[start : start + step])[None, None]).audio_codes[0, 0]
                writer.add(shards.Segment(path=path, start=start / spec.sample_rate, frames=codes.shape[-1],
                                          description=synth.describe(style), source="metadata.jsonl", track=track),
                           codes.T.numpy())
    writer.commit()
    if zips_dir is not None:
        zips_dir.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(zips_dir / ZIP_NAME, "w") as archive:
            for path, data in members.items():
                archive.writestr(path, data)
    val = [t for t in tracks if t.endswith("_0.wav")]
    return {"tracks": tracks, "val_tracks": val, "train_tracks": [t for t in tracks if t not in val]}
