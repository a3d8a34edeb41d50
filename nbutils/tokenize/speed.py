"""Batched pipeline vs one file at a time: the tokenize speed ratios, measured in one run.

``benchmarks/bench_tokenize.py --only ab`` prints these ratios and ``python -m nbutils doctor``
reports them for the user's runtime; both call ``measure``. On the same generated audio
(44.1 kHz stereo mp3 in one ZIP, the common case on users' Drives):

(a) pipeline throughput / encoder-only throughput (target >= 0.9): encoder-only is the same
    codec encoding the same segments, already decoded in memory, with the same batch size; the
    pipeline adds ZIP copy, extraction, decoding, resampling, shard and ledger writes.
(b) pipeline speed / naive loop speed (target >= 3): naive is, for each file, extract it, read
    it, resample it, encode it whole in float32 and ``torch.save`` its codes to one .pt per
    file (what the notebooks people use today do).

The methods run interleaved for ``rounds`` rounds and the best time of each counts, so a change
in the machine's load hits every method alike.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nbutils.core import audio, devices, synth
from nbutils.core.clock import Clock
from nbutils.core.models import AudioSpec

SOURCE_RATE = 44_100  # the tracks are written as 44.1 kHz stereo mp3, as most users' files are
SEGMENT_SECONDS = 30.0
METHODS = ("encoder", "pipeline", "naive")


def make_zip(path: Path, files: int, seconds: float) -> Path:
    """A ZIP of ``files`` 44.1 kHz stereo mp3 tracks (synthetic music, deterministic)."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(files):
            wave = synth.track(synth.STYLES[i % 3], seconds, SOURCE_RATE, i, channels=2)
            buf = io.BytesIO()
            sf.write(buf, wave, SOURCE_RATE, format="MP3", subtype="MPEG_LAYER_III")
            zf.writestr(f"album {i // 10}/track_{i:03d}.mp3", buf.getvalue())
    return path


def run_pipeline(zips: Path, work: Path, model: str, **overrides: Any) -> tuple[Clock, dict, Path]:
    """The tokenize stage on ``zips`` into a new token folder under ``work``.

    Returns:
        ``(clock, summary, token folder)``.
    """
    from nbutils.tokenize import stage as tokenize

    out = Path(tempfile.mkdtemp(dir=work))
    overrides.setdefault("describe", "none")  # tokenizing alone (bench_describe measures the descriptions)
    cfg = tokenize.TokenizeConfig(zips=str(zips), out=str(out / "tokens"), model=model,
                                  scratch=str(out / "scratch"), progress=False, **overrides)
    with Clock() as timer, contextlib.redirect_stdout(io.StringIO()):
        summary = tokenize.run(cfg)
    return timer, summary, out / "tokens"


def decoded_segments(zip_path: Path, work: Path, spec: AudioSpec,
                     segment_seconds: float = SEGMENT_SECONDS) -> list[np.ndarray]:
    """The segments the pipeline encodes, decoded up front (for the encoder-only figure)."""
    segments = []
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            path = Path(zf.extract(name, work / "decoded"))
            report = audio.TrackReport()
            segments += [p.audio for p in audio.iter_segments(
                path, report, sample_rate=spec.sample_rate, channels=spec.audio_channels,
                segment_seconds=segment_seconds)]
            path.unlink()
    return segments


def run_encoder_only(codec, spec: AudioSpec, segments: list[np.ndarray], device: str, precision: str = "auto",
                     segment_seconds: float = SEGMENT_SECONDS) -> Clock:
    """The pipeline's encoder (same device, precision and batch size) on already decoded segments."""
    from nbutils.tokenize.encoder import Batcher, Encoder

    encoder = Encoder(codec, spec, device=device, precision=precision)
    batcher = Batcher(encoder, full_samples=int(segment_seconds * spec.sample_rate),
                      batch_size=encoder.default_batch(segment_seconds))
    with Clock() as timer:
        for i, segment in enumerate(segments):
            batcher.add(i, segment)
        batcher.flush()
    return timer


def run_naive(codec, spec: AudioSpec, zip_path: Path, work: Path, device: str) -> Clock:
    """Extract, read, resample, encode the whole file (float32), torch.save -- one file at a time.

    Stereo checkpoints encode each channel as its own mono signal, as the pipeline does.
    """
    import soundfile as sf
    import soxr
    import torch

    codec.to(device)
    out = Path(tempfile.mkdtemp(dir=work))
    with Clock() as timer, zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            path = zf.extract(name, out / "extract")
            wave, sr = sf.read(path, dtype="float32", always_2d=True)
            wave = wave.mean(axis=1, keepdims=True) if spec.audio_channels == 1 else wave[:, :spec.audio_channels]
            wave = soxr.resample(wave, sr, spec.sample_rate).T.copy()  # (channels, samples)
            with torch.no_grad():
                codes = codec.encode(torch.from_numpy(wave)[:, None].to(device)).audio_codes[0]
            torch.save(codes.cpu(), out / (Path(name).stem + ".pt"))
            os.remove(path)
    return timer


def measure(model: str, work: Path, *, files: int = 4, seconds: float = 30.0, rounds: int = 1,
            codec=None, spec: AudioSpec | None = None, precision: str = "auto", device: str | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time the pipeline, the encoder alone and the naive loop on ``files`` generated tracks.

    Args:
        model: The MusicGen whose codec encodes (what the pipeline loads by name).
        work: A scratch folder for the ZIP, the token folders and the naive loop's files.
        files: Tracks in the ZIP.
        seconds: Length of each track.
        rounds: Interleaved repetitions; the best time of each method counts.
        codec: The codec for the encoder-only and naive runs (default: ``models.load_codec(model)``).
        spec: Its ``AudioSpec`` (given with ``codec``).
        precision: The pipeline's and encoder-only run's precision (the naive loop is float32).
        device: Where to encode (default: the GPU when there is one).
        log: Where each round's times go.

    Returns:
        ``audio_seconds``, per method the best ``wall`` and ``cpu`` seconds, the ratios
        ``pipeline_vs_encoder`` (a) and ``pipeline_vs_naive`` (b) with their CPU-time versions,
        the last pipeline ``summary`` and its ``tokens`` folder (shards of the generated tracks).
    """
    from nbutils.core import models

    if codec is None:
        codec, spec = models.load_codec(model)
    device = device or devices.pick_device()  # the GPU when there is one, as the pipeline encodes
    zip_path = make_zip(Path(work) / "zips" / "batch_0001.zip", files, seconds)
    segments = decoded_segments(zip_path, Path(work), spec)
    audio_seconds = sum(s.shape[-1] for s in segments) / spec.sample_rate
    runs: dict[str, list[Clock]] = {name: [] for name in METHODS}
    for round_ in range(rounds):
        runs["encoder"].append(run_encoder_only(codec, spec, segments, device, precision))
        timer, summary, tokens = run_pipeline(zip_path.parent, Path(work), model, precision=precision,
                                              device=device)
        runs["pipeline"].append(timer)
        runs["naive"].append(run_naive(codec, spec, zip_path, Path(work), device))
        log(f"  round {round_ + 1} (load {os.getloadavg()[0]:.1f}): "
            + ", ".join(f"{k} {v[-1].wall:.1f} s" for k, v in runs.items()))
    wall = {k: min(t.wall for t in v) for k, v in runs.items()}
    cpu = {k: min(t.cpu for t in v) for k, v in runs.items()}
    return {
        "audio_seconds": audio_seconds, "files": files, "seconds": seconds, "rounds": rounds, "device": device,
        "wall": wall, "cpu": cpu,
        "pipeline_vs_encoder": wall["encoder"] / wall["pipeline"],
        "pipeline_vs_encoder_cpu": cpu["encoder"] / cpu["pipeline"],
        "pipeline_vs_naive": wall["naive"] / wall["pipeline"],
        "pipeline_vs_naive_cpu": cpu["naive"] / cpu["pipeline"],
        "summary": summary, "tokens": tokens,
    }
