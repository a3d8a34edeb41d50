"""Benchmark the tokenize stage on the real-size EnCodec 32 kHz architecture (random weights).

    python benchmarks/bench_tokenize.py            # 10-20 minutes on a shared 2-core CPU
    python benchmarks/bench_tokenize.py --quick    # smaller inputs, for a smoke test
    python benchmarks/bench_tokenize.py --only ab  # (a) and (b) only: nbutils.tokenize.speed, which
                                                   # `python -m nbutils doctor` runs on your runtime

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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nbutils.core import devices, models  # noqa: E402
from nbutils.tokenize import speed  # noqa: E402 - the (a) and (b) measurement, shared with `nbutils doctor`

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
    bench_is_no_melody_model()


def bench_is_no_melody_model() -> None:
    """'bench' has no config to read: it stands for musicgen's codec, not a melody checkpoint (tokenize asks)."""
    melody = models.is_melody
    models.is_melody = lambda name: False if name == "bench" else melody(name)


def peak_rss_child(zips: str) -> None:
    """In a fresh process: tokenize the ZIP folder, print the peak RSS (MB) as JSON."""
    use_real_codec()
    timer, summary, _ = speed.run_pipeline(Path(zips), Path(zips).parent, "bench")
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

    use_real_codec()
    print(f"{args.files} tracks x {args.seconds:g} s (44.1 kHz stereo mp3); device {devices.pick_device()}, "
          f"torch threads: {torch.get_num_threads()}; load {os.getloadavg()[0]:.1f}", flush=True)
    result = speed.measure("bench", work / "ab", files=args.files, seconds=args.seconds, rounds=args.rounds,
                           codec=real_codec(), spec=SPEC, log=lambda line: print(line, flush=True))
    wall, cpu, audio_seconds = result["wall"], result["cpu"], result["audio_seconds"]
    print(f"  {audio_seconds:.0f} s of audio")
    for name in speed.METHODS:
        print(f"  {name:>9}: best {wall[name]:7.1f} s wall = {audio_seconds / wall[name]:6.2f} audio-seconds/s; "
              f"{cpu[name]:7.1f} s CPU")
    print("\nResults (this run):")
    print(f"(a) pipeline / encoder-only throughput: {result['pipeline_vs_encoder']:.2f}  "
          f"(CPU time: {result['pipeline_vs_encoder_cpu']:.2f}; target >= 0.9)")
    print(f"(b) pipeline vs naive loop:             {result['pipeline_vs_naive']:.2f}x "
          f"(CPU time: {result['pipeline_vs_naive_cpu']:.2f}x; target >= 3)")


def measure_rss(args: argparse.Namespace, work: Path) -> None:
    few, many = args.rss_files
    small = speed.make_zip(work / "rss-few" / "batch.zip", few, args.rss_seconds).parent
    large = speed.make_zip(work / "rss-many" / "batch.zip", many, args.rss_seconds).parent
    rss_small, rss_large = peak_rss(small), peak_rss(large)
    print(f"  peak RSS, {few} files: {rss_small['maxrss_mb']:.0f} MB ({rss_small['seconds']} s); "
          f"{many} files: {rss_large['maxrss_mb']:.0f} MB ({rss_large['seconds']} s), {args.rss_seconds:g} s tracks; "
          f"all {many} decoded would be {many * args.rss_seconds * SPEC.sample_rate * 4 / 2**20:.0f} MB")
    print(f"(c) peak RSS {many}-file minus {few}-file ZIP: {rss_large['maxrss_mb'] - rss_small['maxrss_mb']:+.0f} MB "
          f"(target <= 200 MB)")

if __name__ == "__main__":
    main()
