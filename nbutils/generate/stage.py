"""Generate music with the base MusicGen and a LoRA adapter: prompts, seeds, long-form, melody, A/B.

``Pipeline`` holds one base model with an optional adapter attached, so base and LoRA can be
compared with the same prompt and seed without loading twice (peft switches the adapter off
for the base pass). ``run(config)`` generates every prompt x variation x model, and saves each
clip as a 16-bit WAV (32 kHz; stereo for stereo models) next to a JSON sidecar with every
parameter, the model and adapter, the seed, the compute time and the real-time factor.

Reproducibility: each batch is seeded with ``seed + variation`` right before sampling, so the
same prompts, settings and seed give the same audio (on CPU bit for bit). Prompts are sampled
together in batches of ``batch_size``; the sidecar records the batch, because a prompt sampled
in another batch draws different random numbers.

Command line (the contract in DESIGN.md)::

    python -m nbutils generate --model M [--adapter DIR] --prompt TEXT [--prompt TEXT ...] \\
        --seconds S --out DIR [--seed N]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from nbutils.core import atomic, config, devices, models
from nbutils.core import diskerrors
from nbutils.generate import adapters, audio_io, sampling
from nbutils.core.config import option
from nbutils.core.errors import UserError
from nbutils.core.prompts import encode as encode_prompts

VARIANTS = ("base", "lora")
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

    model: str = option("", "MusicGen: a Hub id (facebook/musicgen-small...), a local save_pretrained folder, or 'tiny'.")
    adapter: str = option("", "LoRA adapter: a PEFT folder, a Hub repo id, a training latest.pt, step checkpoint or run folder; empty = base model only.")
    prompts: list[str] = option([], "Text prompt; repeat --prompt for several (they are generated as a batch).", flag="--prompt")
    seconds: float = option(10.0, "Length of each clip in seconds; beyond the model's 30 s window, windows continue each other.")
    out: str = option("generated", "Folder for the WAV files and their JSON sidecars (never overwritten).")
    seed: int = option(0, "Random seed: the same seed, prompts and settings give the same audio.")
    variations: int = option(1, "Clips per prompt; variation i is seeded with seed + i.")
    guidance_scale: float = option(3.0, "Classifier-free guidance: higher follows the prompt more closely; 1 turns it off.")
    temperature: float = option(1.0, "Sampling temperature: lower is safer and more repetitive, higher more varied.")
    top_k: int = option(250, "Sample among the k most likely codes (0 = off).")
    top_p: float = option(0.0, "Nucleus sampling: keep codes within this cumulative probability (0 = off).")
    compare: str = option("auto", "Which model generates: base, lora, both (A/B, same prompt and seed), or auto (lora when an adapter is given).")
    melody: str = option("", "Audio file whose melody (chroma) conditions a musicgen-melody model.")
    audio_prompt: str = option("", "Audio file to continue: the WAV holds it (re-coded) and then `seconds` of new music.")
    window_seconds: float = option(0.0, "Seconds per generation window; 0 = the model's own window (30 s).")
    context_seconds: float = option(10.0, "Seconds of already generated codes that prompt each next window.")
    batch_size: int = option(8, "Prompts sampled together; lower it if the GPU runs out of memory.")
    device: str = option("auto", "cuda, cpu, or auto (the GPU when there is one).")
    dtype: str = option("auto", "float32, float16, bfloat16, or auto (bfloat16/float16 on a GPU, float32 on CPU).")
    merge: bool = option(False, "Merge the LoRA into the weights for speed (not with compare=both).")

    def __post_init__(self):
        if isinstance(self.prompts, str):
            self.prompts = [self.prompts]
        checks = [
            (self.seconds > 0, "seconds must be positive"),
            (self.variations >= 1, "variations must be at least 1"),
            (seed_ok(self.seed, self.variations), seed_rule(self.variations)),
            (self.temperature > 0, "temperature must be positive (lower it towards 0.1 for safer output)"),
            (self.top_k >= 0 and 0 <= self.top_p <= 1, "top_k must be >= 0 and top_p within 0..1"),
            (self.guidance_scale >= 0, "guidance_scale must be >= 0 (1 turns guidance off)"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.compare in COMPARE_CHOICES, f"compare must be one of {', '.join(COMPARE_CHOICES)}"),
            (self.context_seconds >= 0 and self.window_seconds >= 0, "window and context seconds must be >= 0"),
            (not (self.merge and self.compare == "both"), "merge cannot be combined with compare=both (A/B needs the unmerged adapter)"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"Invalid generation setting: {message}.")

    @property
    def sampler(self) -> sampling.Sampling:
        return sampling.Sampling(self.guidance_scale, self.temperature, self.top_k, self.top_p)

    def variants(self, has_adapter: bool) -> tuple[str, ...]:
        """The models to run, in order: ``("base",)``, ``("lora",)`` or ``("base", "lora")``."""
        wanted = {"auto": "lora" if has_adapter else "base", "both": "both"}.get(self.compare, self.compare)
        if wanted in ("lora", "both") and not has_adapter:
            raise UserError(
                f"compare={self.compare} needs a LoRA adapter, but none is loaded. Pass --adapter / ADAPTER "
                "(a run's adapters/best, a latest.pt or a Hub id), or use compare=base."
            )
        return VARIANTS if wanted == "both" else (wanted,)


@dataclasses.dataclass
class Clip:
    """One generated piece of audio, before it is saved."""

    prompt: str
    variant: str
    variation: int
    seed: int
    audio: np.ndarray
    """float32 ``(samples, channels)``."""
    sample_rate: int
    batch: list[str]
    generation_seconds: float
    """Wall time of the whole batch (all its prompts) for this model."""
    windows: int
    prompt_seconds: float = 0.0
    """Seconds of continued audio prompt at the start of ``audio``."""
    index: int = 0
    """Position of the prompt in the request: tells apart the same prompt given twice."""

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / self.sample_rate

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio made per second of compute (the whole batch's audio over its time)."""
        made = (self.seconds - self.prompt_seconds) * len(self.batch)
        return made / self.generation_seconds if self.generation_seconds > 0 else float("inf")


# ---------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str):
    """``auto``: bfloat16 on GPUs that run it natively (A100, L4), float16 on older ones (T4, V100), float32 on CPU."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if devices.bf16_native(device) else torch.float16
        return torch.float32
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in names:
        raise UserError(f"Unknown dtype '{dtype}'. Use one of: auto, {', '.join(names)}.")
    return names[dtype]


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


class Pipeline:
    """A loaded MusicGen with an optional LoRA adapter; generates clips as base and/or LoRA."""

    def __init__(self, model: str, adapter: str = "", *, device: str = "auto", dtype: str = "auto", merge: bool = False):
        if not model:
            raise UserError("No model given. Pass --model (e.g. facebook/musicgen-small, a local folder, or tiny).")
        self.model_name = str(model)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model, self.processor = models.load_musicgen(self.model_name, device=self.device, dtype=self.dtype)
        self.spec = models.spec_of(self.model)
        self.adapter: adapters.Adapter | None = None
        self._peft = None
        self.merged = False
        if adapter:
            self._peft, self.adapter = adapters.load_onto(self.model, str(adapter), self.model_name)
            if merge:
                self._peft.merge_and_unload()  # LoRA folded into the weights; the model object stays
                self._peft, self.merged = None, True

    @property
    def key(self) -> tuple:
        """What the loaded weights are: reused only for the same key (see ``pipeline_key``)."""
        adapter = (self.adapter.source, self.adapter.fingerprint) if self.adapter else ("", "")
        return (self.model_name, *adapter, self.device, str(self.dtype), self.merged)

    @property
    def is_melody(self) -> bool:
        return self.model.config.model_type == "musicgen_melody"

    @property
    def window_seconds(self) -> float:
        """The model's own window (``generation_config.max_length`` frames: 30 s for every MusicGen)."""
        return self.model.generation_config.max_length / self.spec.frame_rate

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_name, "adapter": self.adapter.describe() if self.adapter else None,
            "merged": self.merged, "device": self.device, "dtype": str(self.dtype).replace("torch.", ""),
            "melody_model": self.is_melody, **self.spec.to_dict(),
        }

    def release(self) -> None:
        """Unload the model (and free its GPU memory), e.g. before another one loads.

        A notebook may still hold this pipeline in a variable; it must not keep a second model on
        the GPU next to the new one (two musicgen-large do not fit a T4).
        """
        self.model = self._peft = None
        devices.free_memory()

    @contextlib.contextmanager
    def using(self, variant: str) -> Iterator[None]:
        """Generate as ``base`` (adapter switched off) or ``lora`` within the block."""
        if variant == "lora":
            if self.adapter is None:
                raise UserError("No LoRA adapter is loaded; generate with the base model or pass an adapter.")
            yield
        elif self._peft is not None:
            with self._peft.disable_adapter():
                yield
        elif self.merged:
            raise UserError("The adapter was merged into the weights, so there is no base model to compare; load without merge.")
        else:
            yield

    # -- inputs -------------------------------------------------------------------------------

    def text_inputs(self, prompts: list[str]) -> dict:
        inputs = encode_prompts(self.processor, prompts)  # truncated to the text encoder's limit
        return {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}

    def prompt_codes(self, path: str, batch: int):
        """Codes ``(batch, K, P)`` of an audio file to continue (empty when ``path`` is empty)."""
        import torch

        if not path:
            return torch.zeros((batch, self.spec.num_codebooks, 0), dtype=torch.long, device=self.device)
        audio = audio_io.read_audio(path, self.spec.sample_rate, self.spec.audio_channels)
        return sampling.encode(self.model, audio).to(self.device).long()[None].repeat(batch, 1, 1)

    def melody_features(self, path: str, batch: int):
        """``(start, seconds) -> input_features`` for the melody under each window, or None."""
        from nbutils.generate import melody

        if not path:
            return None
        if not self.is_melody:
            raise UserError(
                f"'{self.model_name}' is not a melody model, so it cannot follow a melody. Use "
                "facebook/musicgen-melody (or -melody-large, stereo-melody), or leave the melody empty."
            )
        audio = audio_io.read_audio(path, self.spec.sample_rate, 1)[:, 0]
        chroma = melody.chroma(audio, self.spec.sample_rate).to(self.device, self.model.dtype)

        def at(start: float, seconds: float):
            return melody.window(chroma, start, seconds, self.spec.sample_rate)[None].repeat(batch, 1, 1)

        return at

    # -- sampling -----------------------------------------------------------------------------

    def windows(self, window_seconds: float = 0.0, context_seconds: float = 10.0) -> sampling.Windows:
        own = self.window_seconds
        window = window_seconds or own
        if window > own + 1e-9:
            raise UserError(f"window_seconds {window} exceeds the model's window of {own:g} s; use {own:g} or less.")
        if context_seconds >= window:
            raise UserError(f"context_seconds ({context_seconds}) must be shorter than the window ({window:g} s).")
        rate = self.spec.frame_rate
        frames, context = int(round(window * rate)), int(round(context_seconds * rate))
        if frames < 1:
            raise UserError(
                f"window_seconds {window:g} is less than one code frame: use at least {1 / rate:g} s (or 0 for {own:g} s)."
            )
        if context >= frames:  # both round to whole code frames (1/rate s): a window must add at least one
            raise UserError(
                f"context_seconds ({context_seconds}) and window_seconds ({window:g}) round to {context} and {frames} "
                f"code frames of 1/{rate} s: the context must be at least one frame shorter (e.g. context_seconds "
                f"{(frames - 1) / rate:g}), or the window longer."
            )
        return sampling.Windows(window=frames, context=context)

    def generate(self, prompts: list[str], cfg: GenerateConfig, *, variant: str, seed: int, bar=None) -> tuple[list[np.ndarray], float, int, float]:
        """Sample one batch as ``variant``; returns ``(audio per prompt, seconds taken, windows, prompt seconds)``.

        Every returned clip has exactly ``round(seconds * sample_rate)`` new samples (after the
        re-coded audio prompt, if any).
        """
        import torch

        if self.model is None:
            raise UserError("This pipeline's model was unloaded to make room for another one: run the cell that "
                            "loads the model (generate.pipeline) again.")
        samples, frames = sampling.frames_for(cfg.seconds, self.spec)
        inputs = self.text_inputs(prompts)
        prompt = self.prompt_codes(cfg.audio_prompt, len(prompts))
        features_at = self.melody_features(cfg.melody, len(prompts))
        windows = self.windows(cfg.window_seconds, cfg.context_seconds)
        started = time.monotonic()
        with self.using(variant):
            torch.manual_seed(seed)  # also seeds CUDA
            codes, n_windows = sampling.sample_long(
                self.model, inputs, prompt, frames, windows, cfg.sampler,
                features_at=features_at, bar=bar, frame_rate=self.spec.frame_rate,
            )
        keep = prompt.shape[-1] * self.spec.hop_length + samples
        audio = [sampling.decode(self.model, c)[:, :keep].T.numpy() for c in codes]
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.monotonic() - started
        return audio, elapsed, n_windows, prompt.shape[-1] * self.spec.hop_length / self.spec.sample_rate


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
    device = pick_device(cfg.device)
    adapter = (cfg.adapter, adapters.fingerprint(cfg.adapter)) if cfg.adapter else ("", "")
    return (cfg.model, *adapter, device, str(pick_dtype(cfg.dtype, device)), cfg.merge)


def pipeline(cfg: GenerateConfig) -> Pipeline:
    """The pipeline for ``cfg``'s model/adapter (and its weights)/device/dtype, loaded once and then reused."""
    global _LOADED
    if _LOADED is None or _LOADED.key != pipeline_key(cfg):
        release()  # the old model goes before the new one loads, even if a notebook variable holds it
        _LOADED = Pipeline(cfg.model, cfg.adapter, device=cfg.device, dtype=cfg.dtype, merge=cfg.merge)
        what = f"{cfg.model} + adapter {_LOADED.adapter.location}" if _LOADED.adapter else f"{cfg.model} (no adapter)"
        print(f"Loaded {what} on {_LOADED.device} ({str(_LOADED.dtype).replace('torch.', '')}).", file=sys.stderr)
    return _LOADED


# ---------------------------------------------------------------------------------------------
# Running and saving
# ---------------------------------------------------------------------------------------------


def progress(total_seconds: float):
    """A tqdm bar counting seconds of audio, so its rate is the real-time factor."""
    from tqdm.auto import tqdm

    return tqdm(total=total_seconds, desc="Generating", unit="audio-s", bar_format=BAR_FORMAT, dynamic_ncols=True)


def sample_batch(pipe: Pipeline, cfg: GenerateConfig, batch: list[str], *, variant: str, variation: int, bar=None,
                 start: int = 0) -> list[Clip]:
    """One batch of prompts, one model, one variation (seeded with ``cfg.seed + variation``).

    ``start`` is the position of the batch's first prompt in the whole request (``Clip.index``).
    """
    seed = cfg.seed + variation
    result, out_of_memory = devices.unless_out_of_memory(
        lambda: pipe.generate(batch, cfg, variant=variant, seed=seed, bar=bar))
    if out_of_memory:
        raise UserError(
            f"Out of GPU memory generating {len(batch)} prompt(s) at once with {pipe.model_name}. Lower batch_size "
            f"(e.g. {max(1, len(batch) // 2)}), generate shorter windows (window_seconds), or use dtype float16 / "
            "a smaller model. Clips already saved are kept."
        )
    audio, took, windows, prompt_s = result
    return [
        Clip(prompt=p, variant=variant, variation=variation, seed=seed, audio=a, sample_rate=pipe.spec.sample_rate,
             batch=batch, generation_seconds=took, windows=windows, prompt_seconds=prompt_s, index=start + i)
        for i, (p, a) in enumerate(zip(batch, audio))
    ]


def batches(items: list[str], size: int) -> list[list[str]]:
    """``items`` in consecutive batches of ``size`` (the batching that seeds are tied to)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def sample_clips(pipe: Pipeline, cfg: GenerateConfig) -> list[Clip]:
    """Every prompt x variation x model of ``cfg`` as ``Clip``s (A/B pairs adjacent)."""
    if not cfg.prompts:
        raise UserError("No prompt given. Pass --prompt TEXT (repeat it for several) or fill PROMPTS in the notebook.")
    variants = cfg.variants(pipe.adapter is not None)
    clips: list[Clip] = []
    with progress(cfg.seconds * len(cfg.prompts) * cfg.variations * len(variants)) as bar:
        for variation in range(cfg.variations):
            for n, batch in enumerate(batches(list(cfg.prompts), cfg.batch_size)):
                for variant in variants:
                    clips += sample_batch(pipe, cfg, batch, variant=variant, variation=variation, bar=bar,
                                          start=n * cfg.batch_size)
        bar.n = bar.total  # the per-step estimate lands within float rounding of the total
        bar.refresh()
    return _pair_order(clips)


def _pair_order(clips: list[Clip]) -> list[Clip]:
    """Order clips prompt by prompt, with the base and LoRA take of the same seed side by side."""
    return sorted(clips, key=lambda c: (c.variation, c.index, VARIANTS.index(c.variant)))


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    import nbutils

    return {"nbutils": nbutils.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def sidecar(clip: Clip, cfg: GenerateConfig, pipe: Pipeline, wav: Path, written: dict, pair: str | None) -> dict[str, Any]:
    """The JSON record next to a WAV: enough to know, and redo, exactly what made it."""
    return {
        "file": wav.name,
        "prompt": clip.prompt,
        "variant": clip.variant,
        "pair": pair,
        "model": pipe.model_name,
        "adapter": pipe.adapter.describe() if pipe.adapter and clip.variant == "lora" else None,
        "adapter_loaded": pipe.adapter.describe() if pipe.adapter else None,
        "seed": cfg.seed,
        "variation": clip.variation,
        "variation_seed": clip.seed,
        "batch": clip.batch,
        "seconds": round(clip.seconds - clip.prompt_seconds, 6),
        "total_seconds": round(clip.seconds, 6),
        "prompt_seconds": round(clip.prompt_seconds, 6),
        "sample_rate": clip.sample_rate,
        "channels": written["channels"],
        "samples": written["samples"],
        "gain": written["gain"],
        "peak": written["peak"],
        "windows": clip.windows,
        "generation_seconds": round(clip.generation_seconds, 4),
        "realtime_factor": round(clip.realtime_factor, 4),
        "parameters": config.to_dict(cfg),
        "pipeline": pipe.describe(),
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def save(clips: list[Clip], cfg: GenerateConfig, pipe: Pipeline, out: str | Path) -> list[dict[str, Any]]:
    """Write each clip as ``<time>_<prompt>_s<seed>_<variant>.wav`` + ``.json`` in ``out``.

    A/B takes share the name up to the variant. Names are reserved with exclusive create, so
    nothing earlier is ever overwritten (a second run, or a prompt given twice, or two prompts
    with the same slug, get ``-2``, ``-3``...). The WAV is written before its sidecar: a sidecar
    means its WAV is complete.
    """
    out = Path(out).expanduser()
    stamp = audio_io.timestamp()
    groups: dict[tuple, list[Clip]] = {}
    for clip in clips:  # one name per prompt position: the same text twice is two takes
        groups.setdefault((clip.index, clip.variation), []).append(clip)
    records = []
    for group in groups.values():
        stem = f"{stamp}_{audio_io.slug(group[0].prompt)}_s{group[0].seed}"
        suffixes = [f"_{c.variant}{ext}" for c in group for ext in (".wav", ".json")]
        name = audio_io.reserve(out, stem, suffixes)
        for clip in group:
            wav = out / f"{name}_{clip.variant}.wav"
            written = audio_io.write_wav(wav, clip.audio, clip.sample_rate)
            others = [f"{name}_{c.variant}.wav" for c in group if c is not clip]
            record = sidecar(clip, cfg, pipe, wav, written, others[0] if others else None)
            atomic.write_json(wav.with_suffix(".json"), record)
            records.append({**record, "path": str(wav), "sidecar": str(wav.with_suffix(".json"))})
    return records


@diskerrors.guard("out")  # a read-only or full --out is a message, not a traceback
def run(cfg: GenerateConfig, pipe: Pipeline | None = None) -> list[dict[str, Any]]:
    """Generate and save everything ``cfg`` asks for; returns one record per WAV written."""
    out = audio_io.output_folder(cfg.out)  # a file in the way is refused before the model loads
    pipe = pipe or pipeline(cfg)
    clips = sample_clips(pipe, cfg)
    records = save(clips, cfg, pipe, out)
    for r in records:
        print(f"{r['variant']:>4}  {r['seconds']:.1f} s  x{r['realtime_factor']:.2f} real time  {r['path']}", file=sys.stderr)
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


_LAST_CONFIG: GenerateConfig | None = None


def config_for(project, **values: Any) -> GenerateConfig:
    """A ``GenerateConfig`` for a notebook: model, adapter and output folder from the project.

    Empty ``adapter`` means the project's trained adapter when there is one; ``prompts`` may
    be one string with ``|`` between prompts. Notebook cells call it each time they run, with the
    parameters as they are then (``last_config()`` would hand back an earlier cell's settings).
    """
    global _LAST_CONFIG
    values = {k: v for k, v in values.items() if v is not None}
    if isinstance(values.get("prompts"), str):
        values["prompts"] = split_prompts(values["prompts"])
    values.setdefault("model", project.model)
    if not values.get("adapter"):
        values["adapter"] = default_adapter(project)
        if not values["adapter"]:
            print("No trained adapter in this project yet: generating with the base model only.", file=sys.stderr)
    values.setdefault("out", str(project.paths.generated))
    _LAST_CONFIG = config.from_dict(GenerateConfig, values)
    return _LAST_CONFIG


def last_config() -> GenerateConfig:
    """The settings of the notebook's load cell (``config_for``), for the cells after it."""
    if _LAST_CONFIG is None:
        raise UserError("No generation settings in this runtime yet (it was restarted, or cells ran out of order). "
                        "Run the Parameters, Connect and '3. Load' cells, then this cell again.")
    return _LAST_CONFIG


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
    cfg = config.from_args(GenerateConfig, args)
    missing = [flag for flag, value in (("--model", cfg.model), ("--prompt", cfg.prompts)) if not value]
    if missing:
        raise UserError(f"Missing {' and '.join(missing)}. Example: python -m nbutils generate --model tiny "
                        "--prompt 'calm piano' --seconds 5 --out generated")
    return summary(run(cfg))
