"""What storing a melody checkpoint's chroma costs: disk per audio-hour, and time next to EnCodec.

    python benchmarks/bench_melody.py            # a few minutes on a shared 2-core CPU
    python benchmarks/bench_melody.py --quick    # smaller inputs, for a smoke test

All figures are measured in this one run:

(a) chroma bytes per audio-hour, and as a share of the codes' bytes
    measured on the files ``tokenize --model tiny-melody`` writes for generated tracks (the
    ``.chroma.npy`` and the index's per-segment frame counts), scaled to one hour.
(b) chroma time / EnCodec encode time for the same 30 s segments
    chroma with the released checkpoints' settings (``nbutils.core.melody``: 16384-sample windows,
    hop 4096); EnCodec with facebook/encodec_32khz's architecture (random weights), both on this CPU,
    one segment at a time. Tokenization computes the chroma in its decoding threads, beside the encoder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from nbutils.core import melody, synth  # noqa: E402

HOUR = 3600.0


def disk(work: Path, tracks: int, seconds: float) -> dict[str, float]:
    """Tokenize generated tracks with tiny-melody; bytes of chroma and codes per audio-hour."""
    from _tokenize_helpers import encode_audio, write_zip
    from nbutils import tokenize
    from nbutils.tokenize import shards

    members = [(f"t{i}.wav", encode_audio(synth.track(synth.STYLES[i % 3], seconds, 32_000, seed=i), 32_000))
               for i in range(tracks)]
    write_zip(work / "zips" / "batch.zip", members)
    summary = tokenize.run(tokenize.TokenizeConfig(zips=str(work / "zips"), out=str(work / "tokens"),
                                                   model="tiny-melody", progress=False, describe="none"))
    (index,) = shards.list_shards(work / "tokens")
    meta = json.loads(index.read_text())
    chroma = shards.chroma_path(index).stat().st_size + len(json.dumps(meta["chroma"]["segment_frames"]))
    codes = index.with_suffix(".npy").stat().st_size
    scale = HOUR / summary["audio_seconds"]
    return {"chroma": chroma * scale, "codes": codes * scale, "audio_seconds": summary["audio_seconds"]}


def timing(segments: int, rounds: int) -> tuple[float, float]:
    """Best seconds per 30 s segment: chroma, and EnCodec 32 kHz encoding (real-size architecture)."""
    import torch

    from bench_tokenize import real_codec

    codec = real_codec()
    settings = melody.ChromaSettings()
    audio = [synth.track(synth.STYLES[i % 3], 30.0, 32_000, seed=i) for i in range(segments)]
    melody.pitch_classes(audio[0], settings)  # the filter bank is built once
    best = {"chroma": float("inf"), "encodec": float("inf")}
    for _ in range(rounds):
        started = time.perf_counter()
        for wave in audio:
            melody.pitch_classes(wave, settings)
        best["chroma"] = min(best["chroma"], (time.perf_counter() - started) / segments)
        started = time.perf_counter()
        with torch.inference_mode():
            for wave in audio:
                codec.encode(torch.from_numpy(wave)[None, None])
        best["encodec"] = min(best["encodec"], (time.perf_counter() - started) / segments)
    return best["chroma"], best["encodec"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs (smoke test)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    tracks, seconds, segments, rounds = (3, 20.0, 1, 1) if args.quick else (6, 95.0, 4, 3)
    with tempfile.TemporaryDirectory(prefix="bench-melody-") as work:
        sizes = disk(Path(work), tracks, seconds)
    chroma_s, encodec_s = timing(segments, rounds)
    print(f"{tracks} tracks x {seconds:g} s tokenized with tiny-melody ({sizes['audio_seconds']:.0f} s of audio); "
          f"{segments} segment(s) of 30 s timed, best of {rounds}")
    print("\nResults (this run):")
    print(f"(a) chroma: {sizes['chroma'] / 1024:.1f} KiB per audio-hour = {sizes['chroma'] / sizes['codes']:.1%} "
          f"of the codes ({sizes['codes'] / 2**20:.2f} MiB per audio-hour, 4 codebooks)")
    print(f"(b) chroma / EnCodec encode time per 30 s segment: {chroma_s / encodec_s:.3f} "
          f"({chroma_s * 1000:.0f} ms vs {encodec_s * 1000:.0f} ms on this CPU)")


if __name__ == "__main__":
    main()
