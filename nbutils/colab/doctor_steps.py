"""The steps of ``python -m nbutils doctor``, each a real measurement on this runtime.

Each step takes the run's ``Context`` and returns ``(status, reason, numbers)``; an error it raises
is the step's failure (``nbutils.colab.doctor`` turns it into one). Later steps use what earlier
ones made (the token shards, the trainer, the adapter) through ``Context.state``; a step whose
input is missing because an earlier one failed is skipped and says which. The order:

``gpu`` -> ``disk`` -> ``encoder_autocast`` -> ``tokenize_batching`` (token shards) ->
``train_steps`` (a trainer, an adapter) -> ``train_memory`` -> ``resume`` -> ``generate``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nbutils.colab import drive, project
from nbutils.core import devices, diskspeed, models

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"
PROMPT = "calm piano chords, slow"
RESUME_STEPS = 2  # steps after the save that the resumed run must reproduce
NO_GPU = "no GPU in this runtime (torch.cuda.is_available() is False)"
Outcome = tuple[str, str, dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each step measures. ``FULL`` are the issue's sizes; ``QUICK`` a smoke test's."""

    disk_mb: int = 64
    small_files: int = 20
    encode_seconds: float = 10.0
    tracks: int = 4
    track_seconds: float = 30.0
    crop_seconds: float = 30.0
    timed_steps: int = 3
    generate_seconds: float = 2.0


FULL = Sizes()
QUICK = Sizes(disk_mb=4, encode_seconds=2.0, tracks=2, track_seconds=3.0, crop_seconds=2.0, generate_seconds=0.5)


@dataclasses.dataclass
class Context:
    """One doctor run: where, which model, how much, and what the steps hand on to later ones."""

    root: Path
    model: str
    sizes: Sizes
    work: Path
    """Local scratch for token shards and training runs (never the project folder)."""
    device: str
    log: Callable[[str], None] = print
    state: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def close(self) -> None:
        """Let go of what the steps left loaded (a trainer whose ``resume`` step never ran, the codec),
        and of the GPU memory they held: the notebook's next cell may train."""
        trainer = self.state.pop("trainer", None)
        if trainer is not None:
            trainer.release()
        self.state.clear()
        devices.free_memory()


def _missing(ctx: Context, key: str, step: str) -> Outcome | None:
    """A skip when ``key`` is not in the state because ``step`` failed (else None)."""
    if key in ctx.state:
        return None
    return SKIPPED, f"needs what the {step} step makes, and it did not finish (see its line)", {}


def _matmul_error(dtype) -> float:
    """Relative error of a 512 x 512 matrix product in ``dtype`` on the GPU against float32."""
    import torch

    generator = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(512, 512, device="cuda", generator=generator)
    b = torch.randn(512, 512, device="cuda", generator=generator)
    exact = (a.double() @ b.double()).float()
    half = (a.to(dtype) @ b.to(dtype)).float()
    return float((half - exact).norm() / exact.norm())


def gpu(ctx: Context) -> Outcome:
    """Name, compute capability, free memory and bf16 support; a matrix product in the training precision."""
    info = devices.gpu_info()
    if info is None:
        return SKIPPED, f"{NO_GPU}: nothing to describe; on Colab choose Runtime > Change runtime type > GPU", {}
    import torch

    from nbutils.train import presets

    precision = devices.pick_precision("auto", "cuda")
    error = _matmul_error(devices.torch_dtype(precision))
    preset = presets.suggest(ctx.model, info)
    numbers = {**{k: info[k] for k in ("name", "capability", "vram_gb", "free_gb", "count")},
               "bf16_native": info["bf16"], "precision": precision, "matmul_relative_error": error,
               "preset_memory_gb": preset.memory_gb, "cuda": torch.version.cuda}
    about = (f"{info['name']}, compute capability {info['capability']}, {info['free_gb']:.1f} of "
             f"{info['vram_gb']:g} GiB free, bf16 {'native' if info['bf16'] else 'not native (emulated, slow)'}: "
             f"training uses {precision}")
    if not math.isfinite(error) or error > 0.02:  # bf16 keeps ~3 significant digits: ~0.004 expected
        return FAIL, f"{about}, but a {precision} matrix product is off by {error:.1%} (expected < 2 %)", numbers
    if info["free_gb"] < preset.memory_gb:
        return FAIL, (f"{about}, but only {info['free_gb']:.1f} GiB are free and the preset needs "
                      f"~{preset.memory_gb:g}: something else holds the GPU (another notebook's model?); "
                      "Runtime > Restart session frees it"), numbers
    return PASS, f"{about}; a {precision} matrix product is within {error:.2%} of float32", numbers


def disk(ctx: Context) -> Outcome:
    """Write and read throughput of one large file and the latency of small files, in the project folder."""
    where = "Google Drive" if drive.on_drive(ctx.root) else "the project folder"
    result = diskspeed.measure(ctx.root / "doctor", big_bytes=ctx.sizes.disk_mb << 20,
                               small_files=ctx.sizes.small_files)
    numbers = {"where": where, **result}
    about = (f"{where}: {result['big_mb']:g} MB written at {result['write_mb_s']:.0f} MB/s and read at "
             f"{result['read_mb_s']:.0f} MB/s; a small file takes {result['small_file_ms']:.0f} ms "
             f"(median of {result['small_files']}, at most {result['small_file_ms_max']:.0f} ms)")
    if not result["verified"]:
        return FAIL, f"{about}, but the file read back differs from the one written: the storage corrupts data", numbers
    return PASS, about, numbers


def encoder_autocast(ctx: Context) -> Outcome:
    """EnCodec on ``encode_seconds`` of audio under autocast and in float32: the share of equal codes.

    Below ``MIN_AGREEMENT`` on a GPU, tokenization encodes in float32 from then on (``project.json``).
    Measured on a CPU (bf16, the one autocast a CPU runs) it is reported and nothing is recorded: it
    says nothing about a GPU's fp16 or bf16, and Colab's 00 runs without a GPU.
    """
    from nbutils.tokenize import precision as encode_precision

    codec, spec = models.load_codec(ctx.model)
    ctx.state["codec"] = codec, spec
    autocast = encode_precision.autocast_precision(ctx.device)
    wave = encode_precision.sample_audio(spec, ctx.sizes.encode_seconds)
    result = encode_precision.agreement(codec, spec, wave, device=ctx.device, precision=autocast)
    numbers = {"autocast": autocast, "audio_seconds": ctx.sizes.encode_seconds, "frames": result["frames"],
               "agree_percent": 100 * result["agree"],
               "agree_percent_per_codebook": [100 * v for v in result["agree_per_codebook"]],
               "fp32_repeat_agree_percent": 100 * result["fp32_repeat_agree"]}
    about = (f"{100 * result['agree']:.2f} % of the codes of {ctx.sizes.encode_seconds:g} s agree between {autocast} "
             f"autocast and fp32 (first codebook {100 * result['agree_per_codebook'][0]:.2f} %)")
    about += _autocast_finding(ctx, result["agree"], autocast)
    recorded = encode_precision.project_default(ctx.root / "tokens")
    chosen = recorded[0] if recorded else devices.pick_precision("auto", ctx.device)
    ctx.state["tokenize_precision"] = numbers["tokenize_precision"] = chosen
    return PASS, about, numbers


def _autocast_finding(ctx: Context, agree: float, autocast: str) -> str:
    """What the agreement means for tokenization, recorded in ``project.json`` when measured on a GPU.

    A CPU measures bf16 (the one autocast a CPU runs): it says nothing about a GPU's fp16 or bf16, and a
    CPU tokenizes in fp32 anyway, so nothing is recorded or advised there (00 runs without a GPU).
    """
    from nbutils.tokenize import precision as encode_precision

    limit = f"{100 * encode_precision.MIN_AGREEMENT:g} %"
    recorded = encode_precision.project_default(ctx.root / "tokens")
    kept = f"project.json keeps {encode_precision.PROJECT_KEY}: {recorded[0]} from before ({recorded[1]})" \
        if recorded else ""
    if not ctx.on_gpu:
        return ((f", below {limit}" if agree < encode_precision.MIN_AGREEMENT else "") +
                "; on this CPU nothing is recorded: tokenizing on a CPU is fp32 anyway, and a GPU's precision is "
                "decided by the doctor on a GPU runtime (00's or 02's doctor cell)" + (f"; {kept}" if kept else ""))
    if agree >= encode_precision.MIN_AGREEMENT:
        return f"; {kept}: delete that key to let tokenization use autocast again" if kept else ""
    note = f"nbutils doctor found {100 * agree:.2f} % of codes agreeing under {autocast} autocast on {ctx.device} " \
           f"(below {limit})"
    values = {encode_precision.PROJECT_KEY: "fp32", encode_precision.NOTE_KEY: note}
    if not (ctx.root / "project.json").exists():
        values["model"] = ctx.model  # a project.json names its model (notebooks read it)
    path = project.record_settings(ctx.root, **values)
    return (f", below {limit}: tokenization encodes in fp32 from now on ({encode_precision.PROJECT_KEY}: fp32 in "
            f"{path}; slower, same codes as float32)")


def tokenize_batching(ctx: Context) -> Outcome:
    """The batched pipeline vs one file at a time on generated tracks (what ``bench_tokenize --only ab`` prints)."""
    from nbutils.tokenize import speed

    codec, spec = ctx.state.get("codec") or models.load_codec(ctx.model)
    sizes = ctx.sizes
    result = speed.measure(ctx.model, ctx.work / "tokenize", files=sizes.tracks, seconds=sizes.track_seconds,
                           codec=codec, spec=spec, precision=ctx.state.get("tokenize_precision", "auto"),
                           device=ctx.device, log=ctx.log)
    summary = result["summary"]
    numbers = {"tracks": sizes.tracks, "track_seconds": sizes.track_seconds, "audio_seconds": result["audio_seconds"],
               "pipeline_vs_naive": result["pipeline_vs_naive"], "pipeline_vs_encoder": result["pipeline_vs_encoder"],
               **{f"{k}_seconds": v for k, v in result["wall"].items()}, "files_ok": summary["files_ok"],
               "files_failed": summary["files_failed"], "precision": ctx.state.get("tokenize_precision", "auto")}
    if summary["files_failed"] or summary["files_ok"] != sizes.tracks:
        reasons = "; ".join(f"{f['path']}: {f['reason']}" for f in summary["failures"][:3])
        done = f"the pipeline tokenized {summary['files_ok']} of {sizes.tracks} generated tracks"
        return FAIL, f"{done}: {reasons}", numbers
    ctx.state["tokens"] = result["tokens"]
    return PASS, (f"batched pipeline {result['pipeline_vs_naive']:.2f}x the speed of one file at a time (target >= 3 "
                  f"on a GPU); pipeline / encoder alone {result['pipeline_vs_encoder']:.2f} (target >= 0.9), "
                  f"{result['audio_seconds']:.0f} s of audio"), numbers


def train_steps(ctx: Context) -> Outcome:
    """``timed_steps`` LoRA steps at the preset (batch, precision, crop): seconds per step, peak memory."""
    from nbutils.train import selfcheck

    missing = _missing(ctx, "tokens", "tokenize_batching")
    if missing:
        return missing
    cfg = selfcheck.trial_config(ctx.state["tokens"], ctx.work / "run", ctx.model, ctx.sizes.crop_seconds)
    trainer, result = selfcheck.timed_steps(cfg, timed=ctx.sizes.timed_steps)
    ctx.state.update(trainer=trainer, train=result, train_config=cfg, adapter=result["adapter"])
    numbers = {k: v for k, v in result.items() if k not in ("adapter",)}
    about = (f"{ctx.sizes.timed_steps} steps of batch {result['batch_size']} x {result['crop_seconds']:g} s crops in "
             f"{result['precision']} (gradient checkpointing {'on' if result['grad_checkpointing'] else 'off'}): "
             f"{result['seconds_per_micro_batch']:.2f} s each; x {result['preset_grad_accum']} accumulation = "
             f"{result['seconds_per_step']:.2f} s per optimizer step at the preset")
    if result["peak_gpu_gb"] is not None:
        about += f", peak {result['peak_gpu_gb']:.2f} GiB allocated"
    if not all(math.isfinite(loss) for loss in result["losses"]):
        overflow = f"the losses are not finite ({result['losses']}): {result['precision']} overflows"
        return FAIL, f"{about}, but {overflow}", numbers
    return PASS, about, numbers


def train_memory(ctx: Context) -> Outcome:
    """The measured peak of the training steps against the preset's memory model (``presets.compare_memory``)."""
    from nbutils.train import presets

    if not ctx.on_gpu:
        return SKIPPED, (NO_GPU + ": the preset's memory model predicts CUDA memory in half precision; a CPU run "
                         "has no CUDA allocator to measure (the training steps themselves ran)"), {}
    missing = _missing(ctx, "train", "train_steps")
    if missing:
        return missing
    run = ctx.state["train"]
    result = presets.compare_memory(ctx.model, run["batch_size"], run["crop_seconds"], run["grad_checkpointing"],
                                    run["peak_gpu_gb"])
    numbers = {**result, "batch_size": run["batch_size"], "crop_seconds": run["crop_seconds"]}
    about = (f"peak {result['measured_gb']:.2f} GiB allocated vs {result['predicted_allocated_gb']:.2f} GiB predicted "
             f"(+{presets.CONTEXT_GB:g} GiB CUDA context = the preset's {result['predicted_gb']:.2f}): error "
             f"{result['error_percent']:+.1f} %")
    if not result["within_margin"]:
        return FAIL, (f"{about}: the memory model underestimates by more than the {100 * (1 - presets.USABLE):g} % of "
                      "memory the presets keep free, so a preset can run out of memory; please report it with this "
                      "file"), numbers
    return PASS, about, numbers


def resume(ctx: Context) -> Outcome:
    """Save ``latest.pt``, continue; resume a new trainer from it: the next losses must be the same."""
    from nbutils.train import selfcheck

    missing = _missing(ctx, "trainer", "train_steps")
    if missing:
        return missing
    saved = selfcheck.save_then_steps(ctx.state.pop("trainer"), after=RESUME_STEPS)
    resumed = selfcheck.resumed_run(ctx.state["train_config"], after=RESUME_STEPS)
    result = selfcheck.compare_losses(saved["uninterrupted"], resumed["resumed"], ctx.state["train"]["device"])
    numbers = {**saved, **resumed, **result}
    how = "bit for bit" if result["tolerance"] == 0 else f"within {result['tolerance']:g} (relative; GPU kernels)"
    about = (f"latest.pt ({saved['latest_mb']:.1f} MB) saved at step {saved['saved_step']} in "
             f"{saved['save_seconds']:.2f} s, resumed in {resumed['restore_seconds']:.2f} s")
    if resumed["resumed_from"] != saved["saved_step"] or not result["equal"]:
        return FAIL, (f"{about}, but the next {RESUME_STEPS} losses after resuming from step {resumed['resumed_from']} "
                      f"({resumed['resumed']}) differ from the uninterrupted run's ({saved['uninterrupted']}) by up to "
                      f"{result['max_abs_difference']:.3g}: a resumed run would not continue the same run"), numbers
    return PASS, f"{about}: the next {RESUME_STEPS} losses equal an uninterrupted run's {how}", numbers


def generate(ctx: Context) -> Outcome:
    """``generate_seconds`` of music without and with the adapter the training steps wrote: real-time factors."""
    from nbutils.generate.musicgen import Pipeline, sample_batch
    from nbutils.generate.stage import GenerateConfig

    adapter = ctx.state.get("adapter")
    if adapter is None:
        return _missing(ctx, "adapter", "train_steps")
    variants = ("base", "lora")
    seconds = ctx.sizes.generate_seconds
    pipe = Pipeline(ctx.model, adapter, device=ctx.device)
    try:
        warm = pipe.prepare(GenerateConfig(model=ctx.model, prompts=[PROMPT], seconds=min(seconds, 0.2)))
        sample_batch(pipe, warm, [PROMPT], variant="base", variation=0, seed=0)  # first-call costs: not counted
        prepared = pipe.prepare(GenerateConfig(model=ctx.model, prompts=[PROMPT], seconds=seconds))
        clips = {v: sample_batch(pipe, prepared, [PROMPT], variant=v, variation=0, seed=0)[0] for v in variants}
        precision = pipe.precision
    finally:
        pipe.release()
    numbers = {"audio_seconds": seconds, "precision": precision,
               **{f"{v}_realtime_factor": c.realtime_factor for v, c in clips.items()},
               **{f"{v}_generation_seconds": c.generation_seconds for v, c in clips.items()}}
    about = f"{seconds:g} s of music in {precision}: {clips['base'].realtime_factor:.2f}x real time without the adapter"
    about += f", {clips['lora'].realtime_factor:.2f}x with it"
    for variant, clip in clips.items():
        if clip.audio.shape[0] != prepared.samples or not np.isfinite(clip.audio).all():
            return FAIL, (f"{about}, but the {variant} audio has {clip.audio.shape[0]} samples (expected "
                          f"{prepared.samples}) or values that are not finite"), numbers
    return PASS, about, numbers


STEPS: tuple[tuple[str, Callable[[Context], Outcome], str], ...] = (
    ("gpu", gpu, "GPU name, compute capability, free memory, bf16"),
    ("disk", disk, "write and read one large file, create small ones, in the project folder"),
    ("encoder_autocast", encoder_autocast, "EnCodec under autocast vs fp32"),
    ("tokenize_batching", tokenize_batching, "tokenize: batched pipeline vs one file at a time"),
    ("train_steps", train_steps, "LoRA training steps at the preset"),
    ("train_memory", train_memory, "peak training memory vs the preset's memory model"),
    ("resume", resume, "latest.pt save and restore"),
    ("generate", generate, "generation with and without an adapter"),
)
