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
from nbutils.core.errors import UserError
from nbutils.core.sampling import SamplingConfig
from nbutils.evaluate import chroma, clips, copycheck, heldout, melody, prompts, reference, report, uncertainty
from nbutils.evaluate.report import BASE
from nbutils.generate import adapters, output
from nbutils.generate import stage as generate
from nbutils.generate.musicgen import Pipeline
from nbutils.tokenize import archive, descriptions, shards
from nbutils.train import likelihood

MIN_REFERENCE_SECONDS = 0.1  # 5 code frames: shorter held-out audio is nothing CLAP can embed
MUST, MAY = config.MUST_MATCH, config.MAY_CHANGE


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
    num_prompts: int = option(8, "Style prompts taken from the training descriptions (most frequent first) when no "
                                 "prompt file is given.", resume=MUST)
    samples_per_prompt: int = option(4, "Clips per prompt and model; clip i is seeded with seed + i (more clips: "
                                        "narrower intervals).", resume=MUST)
    seconds: float = option(10.0, "Seconds per generated clip (CLAP listens in 10 s windows).", resume=MUST)
    seed: int = option(0, "Base seed: the same seed gives the same clips and numbers.", resume=MUST)
    max_reference: int = option(32, "At most this many held-out segments form the style reference (evenly spread).",
                                resume=MUST)
    reference_seconds: float = option(10.0, "Seconds of each held-out segment that are used.", resume=MUST)
    sampling: SamplingConfig = config.nested(SamplingConfig, "How the clips' tokens are drawn: guidance, temperature, "
                                                             "top-k, top-p.", resume=MUST)
    batch_size: int = option(8, "Prompts generated together (and held-out segments scored together).", resume=MUST)
    heldout_segments: int = option(likelihood.MAX_SEGMENTS, "At most this many held-out token segments (evenly "
                                   "spread) for the held-out likelihood.", resume=MAY)
    copy_segments: int = option(2000, "Training segments searched for near-copies of the clips (evenly spread; 0: all, "
                                "about 50 KB of memory each). Their features are computed once and cached beside the "
                                "shards.", resume=MAY)
    bootstrap: int = option(uncertainty.RESAMPLES, "Bootstrap resamples for the 95% intervals.", resume=MAY)
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
                               "nbutils evaluate --model tiny --adapter runs/lora --tokens tokens --out eval "
                               "--clap tiny"),
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
            (self.heldout_segments >= 1, "heldout_segments must be at least 1"),
            (self.copy_segments >= 0, "copy_segments must be 0 (all) or more"),
            (self.bootstrap >= 100, "bootstrap must be at least 100 resamples"),
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


def _adapters(pipe: Pipeline, specs: list[str]):
    """``(label, Adapter)`` for each spec, attached in turn on the one loaded base model."""
    labels = [BASE]
    for spec in specs:
        adapter = pipe.use_adapter(spec)  # replaces the previous adapter; the base stays loaded
        labels.append(clips.unique_label(clips.adapter_label(adapter.location, adapter.kind, adapter.step), labels))
        yield labels[-1], adapter


def _generate_all(cfg: EvalConfig, specs: list[str], texts: list[str], out: Path, all_shards: list[shards.Shard]):
    """The held-out likelihood first, then every model's clips and the held-out reference, with the
    base model loaded once.

    Returns:
        ``(clip records, Reference or None, the model's AudioSpec, {label: adapter fingerprint},
        heldout.facts, {label: summary fields of the likelihood}, (melody clip records, Melodies or None))``
        -- melody clips only for a melody model (``melody``).
    """
    store = clips.Samples(out / "samples")
    gen = cfg.generation(texts, out / "samples")
    fingerprints, ref, likely, how = {}, None, None, ""
    run_dir = reference.run_folder(adapters.locate(specs[0])[1]) if all_shards else None
    pipe = Pipeline(cfg.model, device=cfg.device, precision=cfg.precision)
    try:
        if all_shards:  # cheap and needs no generation: measured (and printed) before anything else
            chosen, how = heldout.segments(cfg, all_shards, run_dir)
            likely = heldout.Store(out, chosen, cfg.batch_size)
            likely.measure(pipe, BASE, "base")
            for label, _ in _adapters(pipe, specs):
                likely.measure(pipe, label, "lora")
        prepared = pipe.prepare(gen)  # the same request for every model: windows planned once
        with generate.progress(cfg.seconds * len(texts) * cfg.samples_per_prompt * (len(specs) + 1)) as bar:
            pipe.use_adapter("")
            samples = store.ensure(pipe, gen, prepared, BASE, "base", bar)
            if all_shards:  # the first adapter's training run says which tracks were held out
                ref = reference.reference_audio(cfg, pipe, all_shards, run_dir)
            tunes = melody.choose(ref, out, pipe.spec.sample_rate) if pipe.is_melody else None
            tuned = melody.generate(pipe, gen, tunes, BASE, "base", bar)
            for label, adapter in _adapters(pipe, specs):
                fingerprints[label] = adapter.fingerprint
                samples += store.ensure(pipe, gen, prepared, label, "lora", bar)
                tuned += melody.generate(pipe, gen, tunes, label, "lora", bar)
    finally:
        pipe.release()  # one model in memory at a time: CLAP loads next
    per_model = heldout.fields(likely.models, BASE, cfg.bootstrap, cfg.seed) if likely else {}
    return samples, ref, pipe.spec, fingerprints, heldout.facts(likely, how), per_model, (tuned, tunes)


def _score(cfg: EvalConfig, samples: list[dict], sets: dict[str, list[str]], ref, spec, all_shards: list):
    """Per-prompt and summary rows (CLAP embeddings of every clip, prompt and reference segment) and
    the copy check (``(records, facts)``, or ``([], None)`` without shards)."""
    print(f"Scoring {len(samples)} clips with CLAP '{cfg.clap}'...")
    device = devices.pick_device(cfg.device)
    scorer = clap.load(cfg.clap, device=device)
    texts = [p for name in prompts.PROMPT_SETS for p in sets.get(name, [])]
    waves = [clips.read_wav(s["path"]) for s in samples]
    audio_emb = clap.audio_embeddings(scorer, waves, spec.sample_rate)
    text_emb = dict(zip(texts, clap.text_embeddings(scorer, texts)))
    reference_emb = None if ref is None else clap.audio_embeddings(scorer, ref.audio, spec.sample_rate)
    per_prompt, summary = report.score(samples, sets, text_emb, audio_emb, reference_emb, resamples=cfg.bootstrap,
                                       seed=cfg.seed)
    if not all_shards:
        return per_prompt, summary, [], None
    features = [(chroma.sequence(w, spec.sample_rate), e) for w, e in zip(waves, audio_emb)]
    del waves
    run_dir = reference.run_folder(adapters.locate(cfg.adapters[0])[1])
    records, facts = copycheck.run(cfg, all_shards, run_dir, scorer, samples, features, spec, device)
    return per_prompt, summary, records, facts


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
    samples, ref, spec, fingerprints, held, per_model, (tuned, tunes) = _generate_all(cfg, specs, texts, out,
                                                                                      all_shards)
    per_prompt, summary, copies, copy_facts = _score(cfg, samples, sets, ref, spec, all_shards)
    report.add_heldout(summary, per_model)
    melody_rows = melody.rows(tuned, tunes, spec.sample_rate)
    extras = {"reference": reference.facts(ref), "fingerprints": fingerprints, "heldout": held, "copies": copies,
              "copy_check": copy_facts, "adapters": list(fingerprints)[: len(cfg.adapters)],
              "melody": melody.facts(cfg, tunes, melody_rows)}
    return report.write_results(cfg, out, sets, samples, per_prompt, summary + melody_rows, extras, spec.sample_rate)


# ---------------------------------------------------------------------------------------------
# Notebook helpers
# ---------------------------------------------------------------------------------------------


def config_for(project, **settings: Any) -> EvalConfig:
    """An ``EvalConfig`` for notebook 04: model, adapter, tokens, ZIPs and output folder from the project
    (``EvalConfig.project_defaults``), plus ``settings`` (``**SETTINGS``)."""
    return config.build(EvalConfig, settings, project=project)


def saved_results(cfg: EvalConfig) -> dict[str, Any]:
    """The ``results.json`` an earlier ``run(cfg)`` wrote (a later notebook cell, or a new runtime).

    Raises:
        UserError: nothing evaluated with these settings yet, saying what to run.
    """
    path = Path(cfg.out) / "results.json"
    if not path.is_file():
        raise UserError(f"No evaluation results in {cfg.out} yet: run the evaluation first (notebook 04: cell 3, "
                        "with the same parameters; or python -m nbutils evaluate).")
    return atomic.read_json(path)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_cli(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, EvalConfig)


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    results = run(config.build(EvalConfig, args=args))
    keys = ("summary", "forgetting_generic_clap_text", "reference", "heldout_likelihood", "copies", "copy_check",
            "published_reference", "melody")
    return {**results["files"], **{k: results[k] for k in keys}}
