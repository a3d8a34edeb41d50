"""Benchmark: peak memory of tokenizing a ZIP full of large text members, as a ratio to the same ZIP without them.

    python benchmarks/bench_text_memory.py            # 90 members of 8 MiB (720 MiB of text), ~1 minute
    python benchmarks/bench_text_memory.py --quick    # 20 members, for a smoke test

The memory bomb of issue 16: every metadata / sidecar member was read at once, each capped at
8 MiB but with no total cap. A 745 KB ZIP holding 90 such members took a run's peak memory from
0.42 GB to 1.9 GB, and about 1,000 of them would kill a Colab runtime. Now text members are
read one at a time, parsed at once (only descriptions of at most 1,000 characters are kept),
within a 64 MiB budget per ZIP.

Both ZIPs hold the same three tracks; the "bomb" adds ``--members`` folders with an 8 MiB
``metadata.jsonl`` each (lines of 1 MB descriptions, so every one would be read and parsed).
Each ZIP is tokenized with the tiny model in a fresh process, which reports its peak RSS:

(d) peak RSS with the text members / without            target <= 1.2
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MEMBER_BYTES = 8 << 20  # the per-member cap: each member is as large as one may be and still be read
DESCRIPTION_CHARS = 1_000_000


def make_zip(path: Path, members: int) -> Path:
    """Three 2 s tracks, plus ``members`` folders each holding an 8 MiB metadata.jsonl."""
    import io
    import zipfile

    import soundfile as sf

    from nbutils.core import synth

    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"path": "track_00.wav", "description": "warm piano " * (DESCRIPTION_CHARS // 11)}) + "\n"
    text = (line * (MEMBER_BYTES // len(line)))[: MEMBER_BYTES - 1]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, style in enumerate(synth.STYLES):
            buffer = io.BytesIO()
            sf.write(buffer, synth.track(style, 2.0, 32_000, i), 32_000, format="WAV")
            zf.writestr(f"track_{i:02d}.wav", buffer.getvalue())
        for i in range(members):
            zf.writestr(f"notes_{i:03d}/metadata.jsonl", text)
    return path


def peak_rss_child(zips: str, out: str) -> None:
    """In a fresh process: tokenize the ZIP folder, print the peak RSS (MB) and the summary as JSON."""
    from nbutils.tokenize import stage

    started = time.monotonic()
    summary = stage.run(stage.TokenizeConfig(zips=zips, out=out, model="tiny", progress=False, describe="none",
                                             scratch=str(Path(out).parent / "scratch")))
    print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": round(time.monotonic() - started, 1), "files_ok": summary["files_ok"],
                      "warnings": summary["warnings"]}))


def peak_rss(zips: Path) -> dict:
    out = zips.parent / "tokens"
    proc = subprocess.run([sys.executable, __file__, "--rss-child", str(zips), str(out)], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=90, help="8 MiB text members in the bomb ZIP")
    parser.add_argument("--quick", action="store_true", help="20 members (smoke test of this script)")
    parser.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return peak_rss_child(*args.rss_child)
    members = 20 if args.quick else args.members
    work = Path(tempfile.mkdtemp(prefix="bench-text-memory-"))
    try:
        plain = make_zip(work / "plain" / "zips" / "batch.zip", 0)
        bomb = make_zip(work / "bomb" / "zips" / "batch.zip", members)
        print(f"plain ZIP {plain.stat().st_size / 1e6:.2f} MB; bomb ZIP {bomb.stat().st_size / 1e6:.2f} MB holding "
              f"{members} x {MEMBER_BYTES >> 20} MiB of text ({members * MEMBER_BYTES / 2**30:.2f} GiB)", flush=True)
        base, heavy = peak_rss(plain.parent), peak_rss(bomb.parent)
        assert base["files_ok"] == heavy["files_ok"] == 3, (base, heavy)
        print(f"  peak RSS without text members: {base['maxrss_mb']:.0f} MB ({base['seconds']} s); with them: "
              f"{heavy['maxrss_mb']:.0f} MB ({heavy['seconds']} s)")
        print(f"  warning: {next((w for w in heavy['warnings'] if 'not read' in w), 'none')}")
        print(f"(d) peak RSS with the text members / without: {heavy['maxrss_mb'] / base['maxrss_mb']:.2f} "
              "(target <= 1.2)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
