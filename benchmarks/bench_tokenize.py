"""Benchmark the tokenize stage on the real-size EnCodec 32 kHz architecture (random weights).

    python benchmarks/bench_tokenize.py            # 10-20 minutes on a shared 2-core CPU
    python benchmarks/bench_tokenize.py --quick    # smaller inputs, for a smoke test

All figures are measured in this one run, on the same generated audio (44.1 kHz stereo mp3, the
common case on users' Drives), with facebook/encodec_32khz's architecture and random weights
(the hub cannot be reached here; speed and memory do not depend on the weights' values):

(a) pipeline throughput / encoder-only throughput   target >= 0.9
    encoder-only = the same codec encoding the same segments, already decoded in memory, with
    the same batch size; the pipeline adds ZIP copy, extraction, decoding, resampling, shard
    and ledger writes. 1.0 means all of that is hidden behind the encoder.
(b) pipeline speed / naive loop speed                 target >= 3
    naive = for each file: extract it, read it, resample it, encode it whole, torch.save its
    codes to one .pt per file (what the notebooks people use today do).
(c) peak RSS of a 10-file vs a 200-file ZIP           target: difference <= 200 MB
    each in a fresh process.

The CPU may be shared (CI, other jobs): the methods run interleaved for several rounds and
the best time of each counts. CPU-time ratios are printed too; they do not depend on what
else runs on the machine, and where the encoder already uses every core they are a lower
bound of the wall-clock ratios (decoding then costs encoder time instead of hiding in idle
cores, as it does next to a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from clock import Clock  # noqa: E402 - benchmarks/clock.py, beside this script
from nbutils.core import models, synth  # noqa: E402

# facebook/encodec_32khz's config.json (the codec of every facebook/musicgen-* checkpoint)
ENCODEC_32KHZ = dict(
    audio_channels=1, chunk_length_s=None, codebook_dim=128, codebook_size=2048, compress=2,
    dilation_growth_rate=2, hidden_size=128, kernel_size=7, last_kernel_size=7, norm_type="weight_norm",
    normalize=False, num_filters=64, num_lstm_layers=2, num_residual_layers=1, overlap=None,
    pad_mode="reflect", residual_kernel_size=3, sampling_rate=32_000, target_bandwidths=[2.2],
    trim_right_ratio=1.0, upsampling_ratios=[8, 5, 4, 4], use_causal_conv=False, use_conv_shortcut=False,
)
SPEC = models.AudioSpec(sample_rate=32_000, frame_rate=50, hop_length=640, num_codebooks=4, audio_channels=1,
                        codebook_size=2048)
SOURCE_RATE = 44_100


def real_codec():
    """EnCodec with the 32 kHz MusicGen architecture and (seeded) random weights."""
    import torch
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    return EncodecModel(EncodecConfig(**ENCODEC_32KHZ)).eval()


def use_real_codec() -> None:
    """Make the tokenize stage load the real-size codec for the model name 'bench'."""
    codec = real_codec()
    original = models.load_codec
    models.load_codec = lambda name, **kw: (codec, SPEC) if name == "bench" else original(name, **kw)


def make_zip(path: Path, files: int, seconds: float) -> Path:
    """A ZIP of ``files`` 44.1 kHz stereo mp3 tracks (synthetic music, deterministic)."""
    import io

    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(files):
            wave = synth.track(synth.STYLES[i % 3], seconds, SOURCE_RATE, i, channels=2)
            buf = io.BytesIO()
            sf.write(buf, wave, SOURCE_RATE, format="MP3", subtype="MPEG_LAYER_III")
            zf.writestr(f"album {i // 10}/track_{i:03d}.mp3", buf.getvalue())
    return path


def run_pipeline(zips: Path, work: Path, **overrides) -> tuple[Clock, dict]:
    from contextlib import redirect_stdout
    from io import StringIO

    from nbutils.tokenize import stage as tokenize

    out = Path(tempfile.mkdtemp(dir=work))
    overrides.setdefault("describe", "none")  # tokenizing alone (bench_describe measures the descriptions)
    cfg = tokenize.TokenizeConfig(zips=str(zips), out=str(out / "tokens"), model="bench",
                                  scratch=str(out / "scratch"), progress=False, **overrides)
    with Clock() as timer, redirect_stdout(StringIO()):
        summary = tokenize.run(cfg)
    return timer, summary


def decoded_segments(zip_path: Path, work: Path, segment_seconds: float) -> list[np.ndarray]:
    """The segments the pipeline encodes, decoded up front (for the encoder-only figure)."""
    from nbutils.core import audio

    segments = []
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            path = Path(zf.extract(name, work / "decoded"))
            report = audio.TrackReport()
            segments += [p.audio for p in audio.iter_segments(path, report, segment_seconds=segment_seconds)]
    return segments


def bench_device() -> str:
    """Where all three methods encode: the GPU when there is one (as the pipeline does), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_encoder_only(codec, segments: list[np.ndarray], segment_seconds: float) -> Clock:
    """The pipeline's encoder (same device, precision and batch size) on already decoded segments."""
    from nbutils.tokenize.encoder import Batcher, Encoder

    encoder = Encoder(codec, SPEC, device=bench_device())
    batcher = Batcher(encoder, full_samples=int(segment_seconds * SPEC.sample_rate),
                      batch_size=encoder.default_batch(segment_seconds))
    with Clock() as timer:
        for i, segment in enumerate(segments):
            batcher.add(i, segment)
        batcher.flush()
    return timer


def run_naive(codec, zip_path: Path, work: Path) -> Clock:
    """Extract, read, resample, encode the whole file (float32), torch.save -- one file at a time."""
    import soundfile as sf
    import soxr
    import torch

    device = bench_device()
    codec.to(device)
    out = Path(tempfile.mkdtemp(dir=work))
    with Clock() as timer, zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            path = zf.extract(name, out / "extract")
            wave, sr = sf.read(path, dtype="float32", always_2d=True)
            wave = soxr.resample(wave.mean(axis=1), sr, SPEC.sample_rate)
            with torch.no_grad():
                codes = codec.encode(torch.from_numpy(wave)[None, None].to(device)).audio_codes[0, 0]
            torch.save(codes, out / (Path(name).stem + ".pt"))
            os.remove(path)
    return timer


def peak_rss_child(zips: str) -> None:
    """In a fresh process: tokenize the ZIP folder, print the peak RSS (MB) as JSON."""
    use_real_codec()
    timer, summary = run_pipeline(Path(zips), Path(zips).parent)
    print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "files_ok": summary["files_ok"], "seconds": round(timer.wall, 1)}))


def peak_rss(zips: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--rss-child", str(zips)], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4, help="tracks for (a) and (b)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each track for (a) and (b)")
    parser.add_argument("--rss-seconds", type=float, default=30.0,
                        help="length of each track for (c); long enough that holding a ZIP's audio would show "
                             "(200 x 30 s is 0.8 GB as float32 at 32 kHz)")
    parser.add_argument("--only", choices=("ab", "c"), help="measure only (a)+(b) or only (c)")
    parser.set_defaults(rss_files=(10, 200))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best time counts")
    parser.add_argument("--quick", action="store_true", help="small inputs (smoke test of this script)")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return peak_rss_child(args.rss_child)
    if args.quick:
        args.files, args.seconds, args.rss_seconds, args.rounds = 2, 5.0, 1.5, 1
        args.rss_files = (3, 6)
    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # generated ZIPs, shards, scratch: nothing to keep


def measure(args: argparse.Namespace, work: Path) -> None:
    if args.only != "c":
        measure_speed(args, work)
    if args.only != "ab":
        measure_rss(args, work)
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def measure_speed(args: argparse.Namespace, work: Path) -> None:
    import torch

    zips = work / "ab"
    zip_path = make_zip(zips / "batch_0001.zip", args.files, args.seconds)
    codec = real_codec()
    use_real_codec()
    segment_seconds = 30.0
    segments = decoded_segments(zip_path, work, segment_seconds)
    audio_seconds = sum(s.shape[-1] for s in segments) / SPEC.sample_rate
    print(f"{args.files} tracks x {args.seconds:g} s (44.1 kHz stereo mp3), {audio_seconds:.0f} s of audio; "
          f"device {bench_device()}, torch threads: {torch.get_num_threads()}; load {os.getloadavg()[0]:.1f}",
          flush=True)

    # Interleaved, so a change in machine load (shared CPU) hits every method alike.
    runs = {"encoder": [], "pipeline": [], "naive": []}
    for round_ in range(args.rounds):
        runs["encoder"].append(run_encoder_only(codec, segments, segment_seconds))
        runs["pipeline"].append(run_pipeline(zips, work)[0])
        runs["naive"].append(run_naive(codec, zip_path, work))
        print(f"  round {round_ + 1} (load {os.getloadavg()[0]:.1f}): "
              + ", ".join(f"{k} {v[-1].wall:.1f} s" for k, v in runs.items()), flush=True)
    wall = {k: min(t.wall for t in v) for k, v in runs.items()}
    cpu = {k: min(t.cpu for t in v) for k, v in runs.items()}
    for name in runs:
        print(f"  {name:>9}: best {wall[name]:7.1f} s wall = {audio_seconds / wall[name]:6.2f} audio-seconds/s; "
              f"{cpu[name]:7.1f} s CPU")
    ratio_a, ratio_b = wall["encoder"] / wall["pipeline"], wall["naive"] / wall["pipeline"]
    cpu_a, cpu_b = cpu["encoder"] / cpu["pipeline"], cpu["naive"] / cpu["pipeline"]

    print("\nResults (this run):")
    print(f"(a) pipeline / encoder-only throughput: {ratio_a:.2f}  (CPU time: {cpu_a:.2f}; target >= 0.9)")
    print(f"(b) pipeline vs naive loop:             {ratio_b:.2f}x (CPU time: {cpu_b:.2f}x; target >= 3)")


def measure_rss(args: argparse.Namespace, work: Path) -> None:
    few, many = args.rss_files
    small = make_zip(work / "rss-few" / "batch.zip", few, args.rss_seconds).parent
    large = make_zip(work / "rss-many" / "batch.zip", many, args.rss_seconds).parent
    rss_small, rss_large = peak_rss(small), peak_rss(large)
    print(f"  peak RSS, {few} files: {rss_small['maxrss_mb']:.0f} MB ({rss_small['seconds']} s); "
          f"{many} files: {rss_large['maxrss_mb']:.0f} MB ({rss_large['seconds']} s), {args.rss_seconds:g} s tracks; "
          f"all {many} decoded would be {many * args.rss_seconds * SPEC.sample_rate * 4 / 2**20:.0f} MB")
    print(f"(c) peak RSS {many}-file minus {few}-file ZIP: {rss_large['maxrss_mb'] - rss_small['maxrss_mb']:+.0f} MB "
          f"(target <= 200 MB)")

if __name__ == "__main__":
    main()
