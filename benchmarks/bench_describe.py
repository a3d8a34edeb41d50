"""Benchmark what automatic descriptions add to tokenizing, on real-size models (random weights) on a CPU.

    python benchmarks/bench_describe.py            # 20-40 minutes on a shared 2-core CPU
    python benchmarks/bench_describe.py --quick    # the tiny models and seconds of audio: a smoke test

The same generated ZIP (44.1 kHz stereo mp3 tracks, no metadata) is tokenized three ways, with
facebook/encodec_32khz's architecture (``bench_tokenize.real_codec``), interleaved for a few rounds
(the best time of each counts):

    alone          --describe none
    tempo + key    --describe all --clap none       (librosa: onset envelope, beat tracker, chroma)
    with CLAP      --describe all --clap <real-size> (tempo + key, and CLAP tags from up to 3 windows)

The CLAP has laion/larger_clap_music's architecture as far as its published config says (HTSAT
audio encoder with 128-wide patch embeddings, depths 2-2-12-2, hidden size 1024; RoBERTa-base
text encoder; 512-d projections), built from a config with random weights: the Hub cannot be
reached here, and speed does not depend on the weights' values. Each run also embeds the ~100
label sentences once (a fixed cost per tokenize run, printed apart and not counted per hour).

Printed: seconds added per hour of audio, and the ratio of each to tokenizing alone. Target for
tempo + key alone: <= 1.25. librosa's first import compiles with numba (about 25 s once per
environment): a warm-up run pays it before anything is timed.

On a shared machine the difference of two whole runs is noisy (another job's load moves each run
by more than the analysis costs), so the analysis is also timed on its own, on the same decoded
pieces: the thread CPU time of tempo + key (one thread, like one decoding thread), and the wall
time of CLAP's tags on the windows tokenize would pick. Those figures are per audio-hour too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tokenize  # noqa: E402 - beside this script: the real-size codec
from clock import Clock  # noqa: E402
from nbutils.core import devices  # noqa: E402
from nbutils.tokenize import speed  # noqa: E402 - the ZIP and the pipeline run, shared with bench_tokenize

BENCH_CLAP = "bench-clap"
METHODS = {  # name: tokenize settings
    "alone": {"describe": "none"},
    "tempo + key": {"describe": "all", "clap": "none"},
    "with CLAP": {"describe": "all", "clap": BENCH_CLAP},
}


def real_clap():
    """A ClapModel with the larger_clap_music architecture (random, seeded weights) and its processor."""
    import torch
    from transformers import ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, ClapTextConfig

    from nbutils.core import clap as core_clap

    audio = ClapAudioConfig(depths=[2, 2, 12, 2], patch_embeds_hidden_size=128, hidden_size=1024,
                            num_attention_heads=[4, 8, 16, 32], enable_fusion=False, projection_dim=512)
    text = ClapTextConfig(projection_dim=512)  # RoBERTa-base
    torch.manual_seed(0)
    model = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=512))
    # The real tokenizer is RoBERTa's (a download); the tiny one's ids are valid RoBERTa ids too.
    processor = ClapProcessor(feature_extractor=ClapFeatureExtractor(truncation="rand_trunc"),
                              tokenizer=core_clap.tiny_tokenizer())
    return model.eval(), processor


def use_tiny_models() -> None:
    """``--quick``: the names ``bench`` and ``bench-clap`` load the tiny MusicGen codec and the tiny CLAP."""
    from nbutils.core import clap as core_clap
    from nbutils.core import models

    load_codec, load_clap = models.load_codec, core_clap.load
    models.load_codec = lambda name, **kw: load_codec("tiny" if name == "bench" else name, **kw)
    bench_tokenize.bench_is_no_melody_model()
    core_clap.load = lambda name, device="cpu": load_clap("tiny" if name == BENCH_CLAP else name, device=device)


def use_real_clap() -> None:
    """Make ``nbutils.core.clap.load`` return the real-size CLAP for the name ``bench-clap``."""
    from nbutils.core import clap as core_clap

    model, processor = real_clap()
    original = core_clap.load
    core_clap.load = lambda name, device="cpu": (core_clap.Clap(model.to(device), processor, device, name)
                                                 if name == BENCH_CLAP else original(name, device=device))


def fixed_cost() -> Clock:
    """What a tokenize run spends once on CLAP: embedding the label sentences (the model is prebuilt here)."""
    from nbutils.core import clap as core_clap
    from nbutils.tokenize import tags

    with Clock() as timer:
        tags.Tagger(core_clap.load(BENCH_CLAP), tags.load_labels())
    return timer


def components(zips: Path, work: Path, clap_name: str) -> dict[str, float]:
    """Seconds per audio-hour of the analysis alone, on the ZIP's tracks decoded up front (32 kHz mono)."""
    import time

    from nbutils.core import audio
    from nbutils.core import clap as core_clap
    from nbutils.tokenize import describe, tags

    tracks = [[p.audio for p in audio.iter_segments(path, audio.TrackReport())]
              for path in _members(zips, work)]
    seconds = sum(p.shape[-1] for t in tracks for p in t) / audio.SAMPLE_RATE
    tagger = tags.Tagger(core_clap.load(clap_name), tags.load_labels())
    describer = describe.Describer("all", audio.SAMPLE_RATE, tagger)
    thread_cpu, clap_wall, windows = 0.0, 0.0, 0
    for pieces in tracks:
        listener = describer.listener()
        started = time.thread_time()
        for piece in pieces:
            listener.add(piece)
        listener.tempo_and_key()
        thread_cpu += time.thread_time() - started
        picked = listener.windows.picked(describe.MAX_WINDOWS)
        windows += len(picked)
        started = time.perf_counter()
        tagger.tags(picked, audio.SAMPLE_RATE)
        clap_wall += time.perf_counter() - started
    hours = seconds / 3600
    return {"tempo_key_cpu": thread_cpu / hours, "clap_wall": clap_wall / hours, "windows": windows}


def _members(zips: Path, work: Path) -> list[Path]:
    import zipfile

    out = work / "decoded"
    with zipfile.ZipFile(next(zips.glob("*.zip"))) as zf:
        return [Path(zf.extract(name, out)) for name in zf.namelist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3, help="tracks in the ZIP")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each track")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best time counts")
    parser.add_argument("--quick", action="store_true", help="small inputs (smoke test of this script)")
    args = parser.parse_args()
    if args.quick:
        args.files, args.seconds, args.rounds = 2, 8.0, 1
    work = Path(tempfile.mkdtemp(prefix="bench-describe-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, work: Path) -> None:
    import torch

    zips = work / "zips"
    speed.make_zip(zips / "batch_0001.zip", args.files, args.seconds)
    if args.quick:
        use_tiny_models()
    else:
        bench_tokenize.use_real_codec()
        use_real_clap()
    hours = args.files * args.seconds / 3600
    print(f"{args.files} tracks x {args.seconds:g} s (44.1 kHz stereo mp3, no metadata): {hours * 60:.1f} min of "
          f"audio; models: {'tiny' if args.quick else 'real-size EnCodec 32 kHz and CLAP'}; device "
          f"{devices.pick_device()}, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}",
          flush=True)
    speed.run_pipeline(zips, work, "bench", **METHODS["with CLAP"])  # warm-up: librosa's numba compile, caches
    once = fixed_cost()
    parts = components(zips, work, BENCH_CLAP)
    print(f"  the analysis alone, per audio-hour: tempo + key {parts['tempo_key_cpu']:.0f} s of one thread's CPU; "
          f"CLAP tags {parts['clap_wall']:.0f} s wall ({parts['windows']} windows of 10 s)", flush=True)
    runs: dict[str, list] = {name: [] for name in METHODS}
    summaries = {}
    for round_ in range(args.rounds):
        for name, settings in METHODS.items():
            timer, summaries[name], _ = speed.run_pipeline(zips, work, "bench", **settings)
            runs[name].append(timer)
        print(f"  round {round_ + 1} (load {os.getloadavg()[0]:.1f}): "
              + ", ".join(f"{k} {v[-1].wall:.1f} s" for k, v in runs.items()), flush=True)
    report(runs, summaries, hours, once)


def report(runs: dict[str, list], summaries: dict[str, dict], hours: float, once: Clock) -> None:
    wall = {k: min(t.wall for t in v) for k, v in runs.items()}
    cpu = {k: min(t.cpu for t in v) for k, v in runs.items()}
    auto = {k: s["description_sources"].get("auto", 0) for k, s in summaries.items()}
    print(f"  automatic descriptions per run: {auto}; CLAP's fixed cost per run (label sentences): "
          f"{once.wall:.1f} s ({once.cpu:.1f} s CPU), left out of the figures below")
    print("\nResults (this run):")
    for name in ("tempo + key", "with CLAP"):
        fixed = once if name == "with CLAP" else None  # per run, not per hour
        extra = wall[name] - (fixed.wall if fixed else 0.0) - wall["alone"]
        ratio = (wall[name] - (fixed.wall if fixed else 0.0)) / wall["alone"]
        cpu_ratio = (cpu[name] - (fixed.cpu if fixed else 0.0)) / cpu["alone"]
        target = "; target <= 1.25" if name == "tempo + key" else ""
        print(f"{name}: +{extra / hours:.0f} s per audio-hour ({extra:.1f} s for {hours * 60:.1f} min); "
              f"tokenize+describe / tokenize alone: {ratio:.2f} (CPU time: {cpu_ratio:.2f}{target})")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
