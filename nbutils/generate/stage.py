"""Stage 3 (notebook 03): the settings, the run and the command line of generation.

``run(config)`` generates every prompt x variation x model and saves each clip as a 16-bit WAV
(32 kHz; stereo for stereo models) next to a JSON sidecar with every parameter, the model and
adapter, the seed, the compute time and the real-time factor (``output``). The model lives in a
``musicgen.Pipeline``; a notebook keeps one loaded between cells (``pipeline(cfg)``).

Reproducibility: each batch is seeded with ``seed + variation`` right before sampling, so the
same prompts, settings and seed give the same audio (on CPU bit for bit). Prompts are sampled
together in batches of ``batch_size``; the sidecar records the batch, because a prompt sampled
in another batch draws different random numbers. The audio prompt, the melody's chroma and the
window plan are prepared once per request (``Pipeline.prepare``), not per batch.

Command line (the contract in docs/architecture.md)::

    python -m nbutils generate --model M [--adapter DIR] --prompt TEXT [--prompt TEXT ...] \\
        --seconds S --out DIR [--seed N]
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

import numpy as np

from nbutils.core import config, devices, diskerrors
from nbutils.core.config import option
from nbutils.core.errors import UserError
from nbutils.core.sampling import SamplingConfig
from nbutils.generate import adapters, output
from nbutils.generate.musicgen import VARIANTS, Clip, Pipeline, sample_batch

COMPARE_CHOICES = ("auto", "base", "lora", "both")
SEED_MAX = 2**32 - 1  # the range every generator takes (numpy's too); torch.manual_seed raises past 2**64 - 1
# progress in seconds of audio: the rate is then the real-time factor of the whole run
BAR_FORMAT = "{l_bar}{bar}| {n:.1f}/{total:.1f} audio-s [{elapsed}<{remaining}, {rate_fmt}]"


def seed_ok(seed: int, variations: int = 1) -> bool:
    """Whether the seeds ``seed .. seed + variations - 1`` are all within ``0 .. SEED_MAX``."""
    return 0 <= seed and seed + max(variations, 1) - 1 <= SEED_MAX


def seed_rule(variations: int = 1) -> str:
    """What ``seed_ok`` asks, for an error message."""
    last = f" (seed + {variations - 1} for the last variation)" if variations > 1 else ""
    return f"seed must be within 0 .. {SEED_MAX}{last}"


@dataclasses.dataclass
class GenerateConfig:
    """Everything one generation request needs (also written into every sidecar)."""

    WHAT: typing.ClassVar[str] = "generation"

    model: str = option("", "MusicGen: a Hub id (facebook/musicgen-small...), a local save_pretrained folder, "
                            "or 'tiny'.")
    adapter: str = option("", "LoRA adapter: a PEFT folder, a Hub repo id, a training latest.pt, step checkpoint "
                              "or run folder; empty = base model only.")
    prompts: list[str] = option([], "Text prompt; repeat --prompt for several (they are generated as a batch).",
                                flag="--prompt")
    seconds: float = option(10.0, "Length of each clip in seconds; beyond the model's 30 s window, "
                                  "windows continue each other.")
    out: str = option("generated", "Folder for the WAV files and their JSON sidecars (never overwritten).")
    seed: int = option(0, "Random seed: the same seed, prompts and settings give the same audio.")
    variations: int = option(1, "Clips per prompt; variation i is seeded with seed + i.")
    sampling: SamplingConfig = config.nested(SamplingConfig,
                                             "How tokens are drawn: guidance, temperature, top-k, top-p.")
    compare: str = option("auto", "Which model generates: base, lora, both (A/B, same prompt and seed), "
                                  "or auto (lora when an adapter is given).")
    melody: str = option("", "Audio file whose melody (chroma) conditions a musicgen-melody model.")
    audio_prompt: str = option("", "Audio file to continue: the WAV holds it (re-coded) and then `seconds` "
                                   "of new music.")
    window_seconds: float = option(0.0, "Seconds per generation window; 0 = the model's own window (30 s).")
    context_seconds: float = option(10.0, "Seconds of already generated codes that prompt each next window.")
    batch_size: int = option(8, "Prompts sampled together; lower it if the GPU runs out of memory.")
    device: str = option("auto", "cuda, cpu, or auto (the GPU when there is one).")
    precision: str = option("auto", "auto (bf16 on GPUs that run it natively, fp16 on other GPUs, fp32 on CPU), "
                                    "bf16, fp16 or fp32.", aliases=("dtype",))
    merge: bool = option(False, "Merge the LoRA into the weights for speed (not with compare=both).")
    reuse: bool = option(False, "Reuse the clips saved in --out with exactly these settings (same prompts, seeds, "
                                "model and adapter weights) instead of generating them again; if any is missing, "
                                "generate them all.")

    def __post_init__(self):
        if isinstance(self.prompts, str):  # one notebook field: prompts separated by | or new lines
            self.prompts = split_prompts(self.prompts)
        self.device = devices.device_name(self.device)
        self.precision = devices.precision_name(self.precision)
        window = self.window_seconds
        config.require(self.WHAT, [
            (bool(self.model), "model is needed: a Hub id (facebook/musicgen-small), a local save_pretrained folder "
                               "or 'tiny' (--model; notebooks: MODEL, or the project's)"),
            (self.seconds > 0, "seconds must be positive"),
            (self.variations >= 1, "variations must be at least 1"),
            (seed_ok(self.seed, self.variations), seed_rule(self.variations)),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.compare in COMPARE_CHOICES, f"compare must be one of {', '.join(COMPARE_CHOICES)}"),
            (self.context_seconds >= 0 and window >= 0, "window and context seconds must be >= 0"),
            (not window or self.context_seconds < window,
             f"context_seconds ({self.context_seconds}) must be shorter than the window ({window:g} s)"),
            (not (self.merge and self.compare == "both"),
             "merge cannot be combined with compare=both (A/B needs the unmerged adapter)"),
        ])

    @staticmethod
    def project_defaults(project, given: dict[str, Any]) -> dict[str, Any]:
        """Notebook 03's model and output folder, and the project's trained adapter (when ``adapter``
        is empty: the newest of adapters/best, adapters/final, latest.pt)."""
        defaults = {"model": project.model, "out": str(project.paths.generated)}
        if not given.get("adapter"):
            defaults["adapter"] = default_adapter(project)
            if not defaults["adapter"]:
                print("No trained adapter in this project yet: generating with the base model only.")
        return defaults

    def variants(self, has_adapter: bool) -> tuple[str, ...]:
        """The models to run, in order: ``("base",)``, ``("lora",)`` or ``("base", "lora")``."""
        wanted = {"auto": "lora" if has_adapter else "base", "both": "both"}.get(self.compare, self.compare)
        if wanted in ("lora", "both") and not has_adapter:
            raise UserError(
                f"compare={self.compare} needs a LoRA adapter, but none is loaded. Pass --adapter / ADAPTER "
                "(a run's adapters/best, a latest.pt or a Hub id), or use compare=base."
            )
        return VARIANTS if wanted == "both" else (wanted,)


# One model in memory at a time (a GPU rarely holds two): re-running a notebook cell with the
# same settings reuses it, other settings replace it.
_LOADED: Pipeline | None = None


def release() -> None:
    """Unload the loaded pipeline's model and free its GPU memory (even if a notebook variable holds it)."""
    global _LOADED
    if _LOADED is not None:
        _LOADED.release()
    _LOADED = None
    devices.free_memory()


def pipeline_key(cfg: GenerateConfig) -> tuple:
    """``Pipeline.key`` of the pipeline ``cfg`` asks for; the adapter's fingerprint is read from its
    weights file, so an adapter retrained into the same folder is loaded again."""
    device = devices.pick_device(cfg.device)
    adapter = (cfg.adapter, adapters.fingerprint(cfg.adapter)) if cfg.adapter else ("", "")
    return (cfg.model, *adapter, device, str(devices.pick_dtype(cfg.precision, device)), cfg.merge)


def pipeline(cfg: GenerateConfig) -> Pipeline:
    """The pipeline for ``cfg``'s model/adapter (and its weights)/device/dtype, loaded once and then reused."""
    global _LOADED
    if _LOADED is None or _LOADED.key != pipeline_key(cfg):
        release()  # the old model goes before the new one loads, even if a notebook variable holds it
        _LOADED = Pipeline(cfg.model, cfg.adapter, device=cfg.device, precision=cfg.precision, merge=cfg.merge)
        what = f"{cfg.model} + adapter {_LOADED.adapter.location}" if _LOADED.adapter else f"{cfg.model} (no adapter)"
        print(f"Loaded {what} on {_LOADED.device} ({str(_LOADED.dtype).replace('torch.', '')}).")
    return _LOADED


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def progress(total_seconds: float):
    """A tqdm bar counting seconds of audio, so its rate is the real-time factor."""
    from tqdm.auto import tqdm

    return tqdm(total=total_seconds, desc="Generating", unit="audio-s", bar_format=BAR_FORMAT, dynamic_ncols=True)


def batches(items: list[str], size: int) -> list[list[str]]:
    """``items`` in consecutive batches of ``size`` (the batching that seeds are tied to)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def _require_prompts(cfg: GenerateConfig) -> None:
    if not cfg.prompts:
        raise UserError("No prompt given. Pass --prompt TEXT (repeat it for several) or fill PROMPTS in the notebook.")


def sample_clips(pipe: Pipeline, cfg: GenerateConfig) -> list[Clip]:
    """Every prompt x variation x model of ``cfg`` as ``Clip``s (A/B pairs adjacent)."""
    _require_prompts(cfg)
    variants = cfg.variants(pipe.adapter is not None)
    prepared = pipe.prepare(cfg)  # audio prompt, chroma, windows: once for every batch, variation and variant
    clips: list[Clip] = []
    with progress(cfg.seconds * len(cfg.prompts) * cfg.variations * len(variants)) as bar:
        for variation in range(cfg.variations):
            for n, batch in enumerate(batches(list(cfg.prompts), cfg.batch_size)):
                for variant in variants:
                    clips += sample_batch(pipe, prepared, batch, variant=variant, variation=variation,
                                          seed=cfg.seed + variation, bar=bar, start=n * cfg.batch_size)
        bar.n = bar.total  # the per-step estimate lands within float rounding of the total
        bar.refresh()
    return _pair_order(clips)


def _pair_order(clips: list[Clip]) -> list[Clip]:
    """Order clips prompt by prompt, with the base and LoRA take of the same seed side by side."""
    return sorted(clips, key=lambda c: (c.variation, c.index, VARIANTS.index(c.variant)))


@diskerrors.guard("out")  # a read-only or full --out is a message, not a traceback
def run(cfg: GenerateConfig, pipe: Pipeline | None = None) -> list[dict[str, Any]]:
    """Generate and save everything ``cfg`` asks for; returns one record per WAV written.

    With ``cfg.reuse``, the clips saved earlier in ``cfg.out`` with exactly these settings are
    returned instead, when all of them are there (no model is loaded then).
    """
    out = output.output_folder(cfg.out)  # a file in the way is refused before the model loads
    _require_prompts(cfg)
    if cfg.reuse:
        variants = cfg.variants(bool(cfg.adapter))
        fingerprint = adapters.fingerprint(cfg.adapter) if cfg.adapter else ""
        saved = output.find_saved(cfg, out, variants, fingerprint)
        if saved is not None:
            print(f"Reusing {len(saved)} clip(s) saved earlier in {out} with these settings (reuse=False, or "
                  "another seed, makes new ones).")
            return saved
    pipe = pipe or pipeline(cfg)
    clips = sample_clips(pipe, cfg)
    records = output.save(clips, cfg, pipe, out)
    for r in records:
        print(f"{r['variant']:>4}  {r['seconds']:.1f} s  x{r['realtime_factor']:.2f} real time  {r['path']}")
    return records


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The CLI's last line: files written and how fast."""
    rtf = [r["realtime_factor"] for r in records]
    return {
        "files": [r["path"] for r in records],
        "sidecars": [r["sidecar"] for r in records],
        "clips": len(records),
        "seconds": [r["seconds"] for r in records],
        "variants": sorted({r["variant"] for r in records}),
        "realtime_factor": round(float(np.mean(rtf)), 4) if rtf else None,
    }


# ---------------------------------------------------------------------------------------------
# Notebook helpers
# ---------------------------------------------------------------------------------------------


def split_prompts(text: str) -> list[str]:
    """Prompts from one notebook field: separated by ``|`` or new lines, blanks dropped."""
    return [p.strip() for p in str(text).replace("\n", "|").split("|") if p.strip()]


def default_adapter(project) -> str:
    """The newest adapter of the project's training run (best, final, latest.pt), or '' if none."""
    run_dir = project.run_dir
    for candidate in (*(run_dir / sub for sub in adapters.RUN_ADAPTERS), run_dir / adapters.LATEST):
        if (candidate / adapters.PEFT_CONFIG).is_file() or candidate.is_file():
            return str(candidate)
    return ""


def config_for(project, **settings: Any) -> GenerateConfig:
    """A ``GenerateConfig`` for a notebook: model, adapter and output folder from the project, plus
    ``settings`` (``**SETTINGS``; empty ``adapter``: the project's trained one; ``prompts`` may be one
    text with ``|`` between prompts). Cells call it each time they run, with the parameters as they are then.
    """
    return config.build(GenerateConfig, settings, project=project)


def players(records: list[dict[str, Any]]):
    """Inline audio players with a caption per clip (A/B takes next to each other)."""
    from IPython.display import Audio, Markdown, display

    for r in records:
        display(Markdown(f"**{r['variant']}** · {r['prompt']} · seed {r['variation_seed']} · "
                         f"{r['seconds']:.1f} s · `{Path(r['path']).name}`"))
        display(Audio(filename=r["path"]))


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_cli(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, GenerateConfig)


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    cfg = config.build(GenerateConfig, args=args)
    if not cfg.prompts:
        raise UserError("Missing --prompt. Example: python -m nbutils generate --model tiny --prompt 'calm piano' "
                        "--seconds 5 --out generated")
    return summary(run(cfg))
