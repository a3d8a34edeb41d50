"""Evaluation benchmark: what comparing 3 adapters costs against comparing 1, measured in one run.

    python benchmarks/bench_evaluate.py [--model small|tiny] [--threads 1] [--workdir DIR]

Target (issue 10): evaluating 3 adapters costs <= 1.3 x evaluating 1; in 0.1.0 it was about 3 x,
because every adapter loaded the base model again. Now the base loads once and each adapter is
switched in with peft (``Pipeline.use_adapter``).

Prints:
1. **evaluate.run, 3 adapters vs 1**: the whole command (model load, clips, CLAP scoring, tables,
   plot) into a fresh folder each time, with the least generation that still runs every step (one
   prompt, one clip of ``--seconds`` per model). The two runs alternate ``--repeat`` times; the
   fastest of each is kept. Every model's clips cost the same sampling whatever the code around
   them does, and on a CPU sampling even 0.1 s of musicgen-small costs more than loading it, so
   this line is printed twice: in full, and without the time spent sampling clips
   (``Pipeline.generate``) -- the cost of evaluating around the clips, which the target is about.
2. **model handling alone**, 1 vs 3 adapters: 0.1.0's way (a fresh base + adapter per adapter)
   against the base loaded once plus a switch per adapter, without any generation.

Times are this process's CPU seconds (``--threads 1``, as the other benchmarks: on a shared
machine wall time mostly measures the neighbours); wall seconds are printed too.

``--model small`` (default): musicgen-small's shapes (T5-base, EnCodec 32 kHz, 24 x 1024 decoder)
with random weights, written once with ``save_pretrained`` and loaded through the normal
local-folder path, as a real checkpoint would be (from the page cache here; from Drive on Colab
loading costs more, so the real ratio is lower still). ``--model tiny`` only checks that the
script runs: loading the tiny model is too cheap to show the difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import build_model  # noqa: E402 - musicgen-small's configuration, random weights
from clock import Clock  # noqa: E402 - benchmarks/clock.py, beside this script
from nbutils.evaluate import stage as evaluate  # noqa: E402
from nbutils.generate.musicgen import Pipeline  # noqa: E402

ADAPTERS = 3


def model_folder(workdir: Path, kind: str) -> str:
    """The model to evaluate: ``tiny``, or a random musicgen-small in ``workdir`` (built once)."""
    if kind == "tiny":
        return "tiny"
    from transformers import GenerationConfig

    folder = workdir / "musicgen-small-random"
    if not (folder / "config.json").is_file():
        print(f"Writing a random musicgen-small to {folder} (once)...", file=sys.stderr)
        build_model(folder)
    gen = GenerationConfig.from_pretrained(folder)
    if gen.max_length != 1500:  # as facebook/musicgen-small's: a 30 s window, top-k 250, guidance 3
        gen.max_length, gen.do_sample, gen.top_k, gen.guidance_scale = 1500, True, 250, 3.0
        gen.save_pretrained(folder)
    return str(folder)


def write_adapters(model: str, workdir: Path) -> list[str]:
    """``ADAPTERS`` LoRA adapters (r 16 on the decoder's self-attention, as training's default) with
    different random weights, saved as PEFT folders."""
    from peft import LoraConfig, get_peft_model

    from nbutils.core import models
    from nbutils.train import lora

    folders = []
    base, _ = models.load_musicgen(model)
    for n in range(ADAPTERS):
        folder = workdir / "adapters" / f"a{n}"
        if not (folder / "adapter_config.json").is_file():
            config = LoraConfig(r=16, lora_alpha=32, target_modules=lora.targets(lora.DEFAULT_PRESET),
                                init_lora_weights=False)
            torch.manual_seed(n)
            wrapped = get_peft_model(base, config)
            wrapped.peft_config["default"].base_model_name_or_path = model
            wrapped.save_pretrained(str(folder))
            base = wrapped.unload()
        folders.append(str(folder))
    return folders


def evaluate_once(model: str, adapters: list[str], workdir: Path, seconds: float) -> tuple[Clock, Clock]:
    """``evaluate.run`` into a new folder (one style prompt, one clip per model, tiny CLAP, no
    reference); returns the whole run's clock and the part of it spent sampling clips."""
    prompts = workdir / "prompts.json"
    prompts.write_text(json.dumps({"style": ["calm piano chords"], "generic": []}))
    out = Path(tempfile.mkdtemp(dir=workdir, prefix="eval-"))
    cfg = evaluate.EvalConfig(model=model, adapters=adapters, out=str(out), clap="tiny", prompts=str(prompts),
                              samples_per_prompt=1, seconds=seconds, batch_size=1, device="cpu", precision="fp32")
    sampling = Clock()
    sampling.wall = sampling.cpu = 0.0
    real = Pipeline.generate

    def timed(self, *args, **kwargs):
        with Clock() as clock:
            result = real(self, *args, **kwargs)
        sampling.wall, sampling.cpu = sampling.wall + clock.wall, sampling.cpu + clock.cpu
        return result

    Pipeline.generate = timed
    try:
        with Clock() as clock:
            evaluate.run(cfg)
    finally:
        Pipeline.generate = real
    return clock, sampling


def without(total: Clock, part: Clock) -> Clock:
    rest = Clock()
    rest.wall, rest.cpu = total.wall - part.wall, total.cpu - part.cpu
    return rest


def reload_per_adapter(model: str, adapters: list[str]) -> Clock:
    """0.1.0's model handling: a freshly loaded base + adapter for every adapter, one at a time."""
    with Clock() as clock:
        for spec in adapters:
            pipe = Pipeline(model, spec, device="cpu")
            pipe.release()
    return clock


def load_once_and_switch(model: str, adapters: list[str]) -> Clock:
    """Now: the base loads once, each adapter is switched in."""
    with Clock() as clock:
        pipe = Pipeline(model, device="cpu")
        for spec in adapters:
            pipe.use_adapter(spec)
        pipe.release()
    return clock


def best(measure, repeat: int) -> Clock:
    runs = [measure() for _ in range(repeat)]
    return min(runs, key=lambda c: c.cpu)


def ratio_line(what: str, one: Clock, three: Clock) -> str:
    return (f"{what}: 1 adapter {one.cpu:.2f} s, {ADAPTERS} adapters {three.cpu:.2f} s CPU "
            f"(wall {one.wall:.2f} s, {three.wall:.2f} s) -> {three.cpu / one.cpu:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("small", "tiny"), default="small")
    parser.add_argument("--seconds", type=float, default=0.1, help="Seconds per generated clip.")
    parser.add_argument("--repeat", type=int, default=3, help="Runs of each measurement; the fastest counts.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-evaluate-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = model_folder(workdir, args.model)
    adapters = write_adapters(model, workdir)
    evaluate_once(model, adapters[:1], workdir, args.seconds)  # warm-up: imports, page cache, CLAP

    one, three = [], []
    for _ in range(args.repeat):  # alternated, so a busy moment on the machine hits both
        one.append(evaluate_once(model, adapters[:1], workdir, args.seconds))
        three.append(evaluate_once(model, adapters, workdir, args.seconds))
    (one, one_sampling), (three, three_sampling) = (min(runs, key=lambda r: r[0].cpu) for runs in (one, three))
    what = ("musicgen-small shapes, random weights, local folder" if args.model == "small" else
            "tiny: loading is too cheap to show the difference")
    print(f"model: {model} ({what}); {args.seconds:g} s clips, 1 prompt, {args.threads} thread(s)")
    print(ratio_line("evaluate.run in full", one, three)
          + f" (sampling the clips: {one_sampling.cpu:.2f} s, {three_sampling.cpu:.2f} s)")
    print(ratio_line("evaluate.run without sampling the clips", without(one, one_sampling),
                     without(three, three_sampling)) + " (target <= 1.3)")
    print(ratio_line("model handling, reload per adapter (0.1.0)", best(lambda: reload_per_adapter(model, adapters[:1]),
          args.repeat), best(lambda: reload_per_adapter(model, adapters), args.repeat)))
    print(ratio_line("model handling, load once + switch (now)", best(lambda: load_once_and_switch(model, adapters[:1]),
          args.repeat), best(lambda: load_once_and_switch(model, adapters), args.repeat)))


if __name__ == "__main__":
    main()
