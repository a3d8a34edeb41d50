"""Generation and evaluation speed, as ratios measured in one run (not a timed test).

    python benchmarks/bench_generate.py [--model tiny] [--seconds 4] [--threads 1]

Prints:
* batching: 4 prompts in one batch vs one after another (same audio length each);
* long-form: skipping transformers' per-window decode (codes kept, decoded once) vs decoding
  every window as plain ``generate()`` does;
* real-time factor (seconds of audio per second of compute) of a single clip;
* CLAP scoring throughput (clips per second) for the tiny CLAP.

On the tiny model the numbers show overheads, not GPU throughput; run with a real model on a
GPU (``--model facebook/musicgen-small``) for meaningful absolute figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import numpy as np
    import torch

    from nbutils.core import clap, synth
    from nbutils.generate import sampling
    from nbutils.generate import stage as generate

    torch.set_num_threads(args.threads)
    pipe = generate.Pipeline(args.model)
    prompts = ["calm piano chords", "dark techno beat", "bright synth arpeggio", "lofi hip hop"]
    cfg = generate.GenerateConfig(model=args.model, prompts=prompts, seconds=args.seconds)
    pipe.generate(prompts[:1], cfg, variant="base", seed=0)  # warm-up

    batched = timed(lambda: pipe.generate(prompts, cfg, variant="base", seed=0))
    sequential = timed(lambda: [pipe.generate([p], cfg, variant="base", seed=0) for p in prompts])
    print(f"batching: 4 prompts batched {batched:.2f} s vs one by one {sequential:.2f} s "
          f"-> {sequential / batched:.2f}x faster batched")

    frames = int(args.seconds * pipe.spec.frame_rate)
    inputs = pipe.text_inputs(prompts[:1])
    windows = sampling.Windows(window=frames // 2, context=frames // 8)
    context = torch.zeros((1, pipe.spec.num_codebooks, 0), dtype=torch.long)

    def codes_kept():
        torch.manual_seed(0)
        codes, _ = sampling.sample_long(pipe.model, inputs, context, frames, windows, cfg.sampling)
        sampling.decode(pipe.model, codes[0])

    def decode_every_window():  # what calling generate() per window costs: a full decode each time
        torch.manual_seed(0)
        history = context
        for ctx, new in windows.plan(0, frames):
            kwargs = dict(inputs, max_new_tokens=new + sampling.delay_steps(pipe.model),
                          **cfg.sampling.generate_kwargs())
            if ctx:
                kwargs["decoder_input_ids"] = history[:, :, -ctx:].reshape(pipe.spec.num_codebooks, ctx)
            with sampling.codes_only(pipe.model) as got:
                pipe.model.generate(**kwargs)
            sampling.decode(pipe.model, got[-1][0])  # the decode generate() would have done
            history = torch.cat([history, got[-1][:, :, ctx:]], dim=-1)
        sampling.decode(pipe.model, history[0])

    kept, every = timed(codes_kept), timed(decode_every_window)
    print(f"long-form ({args.seconds:g} s in {len(windows.plan(0, frames))} windows): decode once {kept:.2f} s vs "
          f"decode every window {every:.2f} s -> {every / kept:.2f}x")

    single = timed(lambda: pipe.generate(prompts[:1], cfg, variant="base", seed=0))
    print(f"real-time factor, one {args.seconds:g} s clip: {args.seconds / single:.2f} s of audio "
          "per second of compute")

    scorer = clap.load("tiny")
    clips = [synth.track("chords", 10.0, seed=i) for i in range(8)]
    took = timed(lambda: clap.audio_embeddings(scorer, clips, 32_000))
    print(f"CLAP (tiny) scoring: {len(clips) / took:.1f} clips of 10 s per second "
          f"({np.mean([len(c) for c in clips]) / 32000:.0f} s each)")


if __name__ == "__main__":
    main()
