"""Stage 4 (notebook 04): base MusicGen vs LoRA, scored with CLAP on the user's style -- settings, run, CLI.

For every model (base, the adapter, optionally every training checkpoint) and every prompt of
two fixed sets -- **style** prompts (the training descriptions, or a file) and **generic**
prompts outside the trained style (``prompts``) -- the same seeds generate clips (``clips``),
and CLAP scores them against the prompts and against held-out training audio (``reference``;
the metrics and what is written: ``report``). A melody model is also given held-out segments as
melodies and scored on how closely it follows them (``melody``: audiocraft's chroma cosine).

The base model is loaded once; each adapter is then attached in place of the previous one
(``Pipeline.use_adapter``), which gives exactly the clips a freshly loaded base + adapter gives.

Outputs in ``out``: ``per_prompt.csv``, ``summary.csv``, ``results.json``, ``comparison.png``,
and ``samples/`` with every clip (WAV + sidecar). Re-running the same command resumes: clips
already in ``samples/index.jsonl`` are reused (a LoRA's only while its weights file is unchanged:
an adapter retrained into the same folder gets new clips); other settings in the same folder are refused.

Command line (the contract in docs/architecture.md)::

    python -m nbutils evaluate --model M --adapter DIR --out DIR [--clap C] [--prompts FILE] [--tokens DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from nbutils.core import atomic, clap, config, devices, diskerrors
from nbutils.core.config import option
from nbutils.core.sampling import SamplingConfig
from nbutils.evaluate import clips, melody, prompts, reference, report
from nbutils.evaluate.report import BASE
from nbutils.generate import adapters, output
from nbutils.generate import stage as generate
from nbutils.generate.musicgen import Pipeline
from nbutils.tokenize import archive, descriptions, shards

MIN_REFERENCE_SECONDS = 0.1  # 5 code frames: shorter held-out audio is nothing CLAP can embed
MUST = config.MUST_MATCH


@dataclasses.dataclass
class EvalConfig:
    """One evaluation: which models, which prompts and seeds, which reference, where to write.

    The ``must-match`` settings change the numbers: a folder holding results for other values is
    not continued. The others (where to write, device, precision) are not compared.
    """

    WHAT: typing.ClassVar[str] = "evaluation"

    model: str = option("", "Base MusicGen: Hub id, local save_pretrained folder, or 'tiny'.", resume=MUST)
    adapters: list[str] = option([], "LoRA adapter to compare with the base model (PEFT folder, Hub id, latest.pt, "
                                     "step checkpoint or run folder); repeat for several.", flag="--adapter",
                                 resume=MUST)
    checkpoints: bool = option(False, "Also evaluate every checkpoints/step-XXXXXX of the adapter's training run.",
                               resume=MUST)
    out: str = option("eval", "Folder for the tables, plot and generated samples (re-running resumes).")
    clap: str = option(clap.DEFAULT_CLAP, "CLAP model: Hub id, local folder, or 'tiny'.", resume=MUST)
    prompts: str = option("", "Prompt file: one style prompt per line, or JSON {\"style\": [...], \"generic\": [...]}; "
                              "empty: training descriptions + generic prompts.", resume=MUST)
    tokens: str = option("", "Token shards of the training data: held-out reference audio and default prompts.",
                         resume=MUST)
    zips: str = option("", "Folder with the source ZIPs; reference segments are read from there when present, else "
                           "decoded from the shards.", resume=MUST)
    num_prompts: int = option(4, "Style prompts taken from the training descriptions (most frequent first) when no "
                                 "prompt file is given.", resume=MUST)
    samples_per_prompt: int = option(2, "Clips per prompt and model; clip i is seeded with seed + i.", resume=MUST)
    seconds: float = option(10.0, "Seconds per generated clip (CLAP listens in 10 s windows).", resume=MUST)
    seed: int = option(0, "Base seed: the same seed gives the same clips and numbers.", resume=MUST)
    max_reference: int = option(32, "At most this many held-out segments form the style reference (evenly spread).",
                                resume=MUST)
    reference_seconds: float = option(10.0, "Seconds of each held-out segment that are used.", resume=MUST)
    sampling: SamplingConfig = config.nested(SamplingConfig, "How the clips' tokens are drawn: guidance, temperature, "
                                                             "top-k, top-p.", resume=MUST)
    batch_size: int = option(8, "Prompts generated together.", resume=MUST)
    device: str = option("auto", "cuda, cpu, or auto.")
    precision: str = option("auto", "auto (bf16 on GPUs that run it natively, fp16 on other GPUs, fp32 on CPU), "
                                    "bf16, fp16 or fp32.", aliases=("dtype",))
    max_member_mb: float = option(archive.MAX_MEMBER_MB, "Source files inside a ZIP larger than this are not read "
                                  "(tokenize's zip-bomb guard); their reference segments are decoded from the shards.")

    def __post_init__(self):
        if isinstance(self.adapters, str):
            self.adapters = [self.adapters] if self.adapters else []
        self.device = devices.device_name(self.device)
        self.precision = devices.precision_name(self.precision)
        config.require(self.WHAT, [
            (bool(self.model), "model is needed (--model; notebooks: MODEL, or the project's). Example: python -m "
                               "nbutils evaluate --model tiny --adapter runs/lora --tokens tokens --out eval --clap tiny"),
            (bool(self.tokens or self.prompts), "pass tokens (the training shards: reference audio and prompts) or "
                                                "prompts (a prompt file), or both"),
            (self.samples_per_prompt >= 1, "samples_per_prompt must be at least 1"),
            (self.seconds > 0, "seconds must be positive"),
            (self.max_reference >= 1, "max_reference must be at least 1"),
            (self.reference_seconds >= MIN_REFERENCE_SECONDS,
             f"reference_seconds must be at least {MIN_REFERENCE_SECONDS} (a few code frames of each held-out "
             f"segment; the default is 10), not {self.reference_seconds}"),
            (generate.seed_ok(self.seed, self.samples_per_prompt), generate.seed_rule(self.samples_per_prompt)),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.max_member_mb > 0, "max_member_mb must be positive"),
        ])

    @staticmethod
    def project_defaults(project, given: dict[str, Any]) -> dict[str, Any]:
        """Notebook 04's model, adapter, tokens and ZIPs from the project, and its output folder
        ``PROJECT_ROOT/eval/eval-<settings hash>``: the same settings resume there, other settings
        get their own folder (earlier results stay)."""
        adapter = generate.default_adapter(project)
        paths = project.paths
        defaults = {"model": project.model, "adapters": [adapter] if adapter else [], "tokens": str(paths.tokens),
                    "zips": str(paths.zips)}
        if "out" not in given:
            draft = config.from_dict(EvalConfig, {**defaults, **given})
            defaults["out"] = str(paths.eval / f"eval-{config.config_hash(draft, RESULT_KEYS)[:8]}")
        return defaults

    def generation(self, texts: list[str], out: Path) -> generate.GenerateConfig:
        """The generation settings every model gets (same prompts, seeds and sampling)."""
        return generate.GenerateConfig(
            model=self.model, prompts=texts, seconds=self.seconds, out=str(out), seed=self.seed,
            variations=self.samples_per_prompt, sampling=self.sampling, batch_size=self.batch_size,
            device=self.device, precision=self.precision,
        )


# The settings that change the numbers (by their flat names, as 0.1.0 recorded them): the folder
# name of notebook 04's results hashes exactly these.
RESULT_KEYS = config.resume_keys(EvalConfig, MUST)


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def _check_resumable(cfg: EvalConfig, out: Path) -> None:
    """Same settings in ``out``: continue. Other settings: refuse, saying what differs.

    Only checks: ``_record_settings`` writes the settings once the inputs are known to be valid,
    so a run that failed on a typo does not claim the folder for its wrong settings.
    """
    record = out / "eval_config.json"
    if record.exists():  # a record written before sampling was nested (0.1.0) reads the same
        refused = config.resume_differences(EvalConfig, atomic.read_json(record), config.to_dict(cfg)).refused
        if refused:
            raise config.resume_refusal(out, refused, kind="evaluation folder", holds="results",
                                        fresh="use another --out (notebook 04 picks a folder per settings)")


def _record_settings(cfg: EvalConfig, out: Path) -> None:
    """Write the settings that the results in ``out`` belong to (before the first clip is saved)."""
    atomic.write_json(out / "eval_config.json", config.to_dict(cfg))


def _generate_all(cfg: EvalConfig, specs: list[str], texts: list[str], out: Path, all_shards: list[shards.Shard]):
    """Every model's clips and the held-out reference, with the base model loaded once.

    Returns:
        ``(clip records, Reference or None, the model's AudioSpec, {label: adapter fingerprint},
        (melody clip records, Melodies or None))`` -- melody clips only for a melody model (``melody``).
    """
    store = clips.Samples(out / "samples")
    gen = cfg.generation(texts, out / "samples")
    labels, fingerprints, ref = [BASE], {}, None
    pipe = Pipeline(cfg.model, device=cfg.device, precision=cfg.precision)
    try:
        prepared = pipe.prepare(gen)  # the same request for every model: windows planned once
        with generate.progress(cfg.seconds * len(texts) * cfg.samples_per_prompt * (len(specs) + 1)) as bar:
            samples = store.ensure(pipe, gen, prepared, BASE, "base", bar)
            if all_shards:  # the first adapter's training run says which tracks were held out
                run = reference.run_folder(adapters.locate(specs[0])[1])
                ref = reference.reference_audio(cfg, pipe, all_shards, run)
            tunes = melody.choose(ref, out, pipe.spec.sample_rate) if pipe.is_melody else None
            tuned = melody.generate(pipe, gen, tunes, BASE, "base", bar)
            for spec in specs:
                adapter = pipe.use_adapter(spec)  # replaces the previous adapter; the base stays loaded
                label = clips.unique_label(clips.adapter_label(adapter.location, adapter.kind, adapter.step), labels)
                labels.append(label)
                fingerprints[label] = adapter.fingerprint
                samples += store.ensure(pipe, gen, prepared, label, "lora", bar)
                tuned += melody.generate(pipe, gen, tunes, label, "lora", bar)
    finally:
        pipe.release()  # one model in memory at a time: CLAP loads next
    return samples, ref, pipe.spec, fingerprints, (tuned, tunes)


def _score(cfg: EvalConfig, samples: list[dict], sets: dict[str, list[str]], ref, sample_rate: int):
    """Per-prompt and summary rows: CLAP embeddings of every clip, prompt and reference segment."""
    print(f"Scoring {len(samples)} clips with CLAP '{cfg.clap}'...")
    scorer = clap.load(cfg.clap, device=devices.pick_device(cfg.device))
    texts = [p for name in prompts.PROMPT_SETS for p in sets.get(name, [])]
    audio_emb = clap.audio_embeddings(scorer, [clips.read_wav(s["path"]) for s in samples], sample_rate)
    text_emb = dict(zip(texts, clap.text_embeddings(scorer, texts)))
    reference_emb = None if ref is None else clap.audio_embeddings(scorer, ref.audio, sample_rate)
    return report.score(samples, sets, text_emb, audio_emb, reference_emb)


@diskerrors.guard("out")  # a read-only or full --out is a message, not a traceback
def run(cfg: EvalConfig) -> dict[str, Any]:
    """Generate (or reuse) every clip, score with CLAP, and write tables, plot and JSON."""
    out = output.output_folder(cfg.out)
    _check_resumable(cfg, out)
    specs = clips.adapter_specs(cfg)
    generate.release()  # a model loaded by notebook 03 in this runtime would double GPU memory
    all_shards = shards.open_all(cfg.tokens) if cfg.tokens else []
    if all_shards:
        descriptions.apply(cfg.tokens, all_shards)  # the texts training used: descriptions.jsonl, edits included
    sets = prompts.prompt_sets(all_shards, cfg.prompts, cfg.num_prompts)
    texts = [p for name in prompts.PROMPT_SETS for p in sets.get(name, [])]
    _record_settings(cfg, out)  # the inputs are valid: the folder now holds this evaluation
    samples, ref, spec, fingerprints, (tuned, tunes) = _generate_all(cfg, specs, texts, out, all_shards)
    per_prompt, summary = _score(cfg, samples, sets, ref, spec.sample_rate)
    melody_rows = melody.rows(tuned, tunes, spec.sample_rate)
    return report.write_results(cfg, out, sets, samples, per_prompt, summary + melody_rows, reference.facts(ref),
                                spec.sample_rate, fingerprints, melody=melody.facts(cfg, tunes, melody_rows))


# ---------------------------------------------------------------------------------------------
# Notebook helpers
# ---------------------------------------------------------------------------------------------


def config_for(project, **settings: Any) -> EvalConfig:
    """An ``EvalConfig`` for notebook 04: model, adapter, tokens, ZIPs and output folder from the project
    (``EvalConfig.project_defaults``), plus ``settings`` (``**SETTINGS``)."""
    return config.build(EvalConfig, settings, project=project)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_cli(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, EvalConfig)


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    results = run(config.build(EvalConfig, args=args))
    return {**results["files"], "summary": results["summary"], "forgetting_generic_clap_text":
            results["forgetting_generic_clap_text"], "reference": results["reference"], "melody": results["melody"]}
