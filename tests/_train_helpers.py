"""Shared fixtures for the training tests: token shards of synthetic music, small configs, WandB reading.

Shards are made the way the tokenize stage makes them: synthetic tracks (``nbutils.synth``)
encoded with the tiny model's real EnCodec, split into segments, written with ``ShardWriter``.
Encoding is done once per session and cached; each test copies the result into its own folder.
"""

from __future__ import annotations

import functools
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np

from nbutils.core import models, synth
from nbutils.tokenize import shards

STYLES = ("chords", "arpeggio", "percussion")
TRACK_SECONDS = 3.0
SEGMENT_SECONDS = 1.5  # the tokenizer splits tracks; two segments per track here


@functools.lru_cache(maxsize=None)
def encoded(style: str, seed: int, seconds: float = TRACK_SECONDS) -> np.ndarray:
    """``(frames, K)`` int codes of a synthetic track, from the tiny model's EnCodec."""
    import torch

    codec, spec = _codec()
    wave = synth.track(style, seconds, spec.sample_rate, seed=seed)
    with torch.no_grad():
        codes = codec.encode(torch.from_numpy(wave)[None, None]).audio_codes  # (1, 1, K, T)
    return codes[0, 0].T.numpy().astype(np.int64)


@functools.lru_cache(maxsize=1)
def _codec():
    return models.load_codec("tiny")


def write_shards(tokens_dir: Path, *, batches: int = 2, tracks_per_batch: int = 3, model: str = "tiny",
                 seed: int = 0, seconds: float = TRACK_SECONDS, segment_seconds: float = SEGMENT_SECONDS) -> list[str]:
    """Write ``batches`` shards of ``tracks_per_batch`` tracks each; return the track ids."""
    spec = _codec()[1]
    tracks = []
    per_segment = int(segment_seconds * spec.frame_rate)
    for b in range(batches):
        name = f"archive_batch_{b + 1:04d}"
        writer = shards.ShardWriter(tokens_dir, name, {"model": model, "sample_rate": spec.sample_rate,
                                                       "num_codebooks": spec.num_codebooks})
        for t in range(tracks_per_batch):
            style = STYLES[(b * tracks_per_batch + t) % len(STYLES)]
            codes = encoded(style, seed + b * 100 + t, seconds)
            path, track = f"{style}_{t}.wav", f"{name}/{style}_{t}.wav"
            for start in range(0, len(codes), per_segment):
                piece = codes[start : start + per_segment]
                segment = shards.Segment(path=path, start=start / spec.frame_rate, frames=len(piece),
                                         description=synth.describe(style), source="metadata.jsonl", track=track)
                writer.add(segment, piece)
            tracks.append(track)
        writer.commit()
    return tracks


@functools.lru_cache(maxsize=None)
def _cached_tokens(batches: int, tracks_per_batch: int) -> Path:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="nbutils-train-tokens-"))
    write_shards(folder, batches=batches, tracks_per_batch=tracks_per_batch)
    return folder


def tokens(tmp_path: Path, batches: int = 2, tracks_per_batch: int = 3) -> Path:
    """A private copy of the standard test shards."""
    target = tmp_path / "tokens"
    shutil.copytree(_cached_tokens(batches, tracks_per_batch), target)
    return target


def small_config(tokens_dir: Path, out: Path, **overrides: Any):
    """A TrainConfig that trains the tiny model in a second or two."""
    from nbutils.train.stage import TrainConfig

    values = dict(
        tokens=str(tokens_dir), out=str(out), model="tiny", crop_seconds=0.4, batch_size=2, grad_accum=2,
        max_steps=6, save_every=2, keep_checkpoints=2, sample_every=0, wandb="disabled", warmup_steps=2,
        lr=3e-3, val_fraction=0.34, precision="fp32", grad_checkpointing="off", lora_r=4, lora_alpha=8.0,
        lora_dropout=0.1, log_every=1, sample_seconds=0.3,
    )
    values.update(overrides)
    return TrainConfig(**values)


def cli_args(tokens_dir: Path, out: Path, *extra: str) -> list[str]:
    """``train`` CLI arguments equivalent to ``small_config``."""
    return [
        "train", "--tokens", str(tokens_dir), "--out", str(out), "--model", "tiny", "--crop-seconds", "0.4",
        "--batch-size", "2", "--grad-accum", "2", "--max-steps", "6", "--save-every", "2",
        "--keep-checkpoints", "2", "--sample-every", "0", "--wandb", "disabled", "--warmup-steps", "2",
        "--lr", "3e-3", "--val-fraction", "0.34", "--precision", "fp32", "--grad-checkpointing", "off",
        "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0.1", "--log-every", "1", *extra,
    ]


def live_musicgens() -> int:
    """MusicGen models still reachable in this process (after a run that should have let go of its own)."""
    import gc

    from transformers import MusicgenForConditionalGeneration

    gc.collect()
    return sum(issubclass(type(o), MusicgenForConditionalGeneration) for o in gc.get_objects())


def lora_weights(out: Path) -> dict:
    import torch

    return torch.load(Path(out) / "latest.pt", weights_only=True)["lora"]


def losses_by_step(out: Path, key: str = "train/loss") -> dict[int, float]:
    from nbutils.train.stage import read_metrics

    return {r["step"]: r[key] for r in read_metrics(out) if key in r}


# ---------------------------------------------------------------------------------------------
# WandB offline files: the .wandb transaction log, decoded with wandb's own protobuf schema
# ---------------------------------------------------------------------------------------------

_BLOCK = 32 * 1024  # LevelDB log format used by wandb's transaction log
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def same_weights(a: dict, b: dict) -> bool:
    """Two state dicts hold the same tensors under the same names, bit for bit."""
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def wandb_records(run_dir: Path) -> list:
    """Every record of an offline run folder (``offline-run-*``), parsed."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log_file,) = list(Path(run_dir).glob("*.wandb"))
    parsed = []
    for raw in _records(log_file):
        record = pb.Record()
        record.ParseFromString(raw)
        parsed.append(record)
    return parsed


def finished_records(run_dir: Path, timeout: float = 20.0) -> list:
    """Records of an offline run once wandb's writer has closed the file (it may lag finish())."""
    import time

    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            records = wandb_records(run_dir)
        except DecodeError:  # the writer is in the middle of a record: read again
            if time.monotonic() > deadline:
                raise
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def wandb_history(run_dir: Path) -> list[dict[str, Any]]:
    """The logged history rows of an offline run: ``[{key: value, ...}, ...]`` (values JSON-decoded)."""
    import json

    rows = []
    for record in finished_records(run_dir):  # wandb's writer may still be writing after finish()
        if record.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
    return rows


def offline_runs(out: Path) -> list[Path]:
    return sorted((Path(out) / "wandb").glob("offline-run-*"))


def bar_postfixes(monkeypatch) -> list[dict[str, Any]]:
    """Every ``set_postfix`` of the progress bars from now on (what a notebook shows beside the bar), in order."""
    import tqdm.std

    shown: list[dict[str, Any]] = []
    original = tqdm.std.tqdm.set_postfix
    monkeypatch.setattr(tqdm.std.tqdm, "set_postfix",
                        lambda bar, *a, **kw: shown.append(dict(*a, **kw)) or original(bar, *a, **kw))
    return shown
