"""Compare base MusicGen and LoRA with CLAP on the user's own style, and check for forgetting.

For every model (base, the adapter, optionally every training checkpoint) and every prompt of
two fixed sets -- **style** prompts (the training descriptions, or a file) and **generic**
prompts outside the trained style -- the same seeds generate clips, and CLAP scores them:

* ``clap_text``: cosine between the prompt's and the clip's CLAP embeddings (does it follow the text?);
* ``style_similarity``: cosine between the clip and the centroid of held-out training segments
  (does it sound like the user's music?);
* ``frechet``: Fréchet distance between the CLAP embeddings of a model's clips and of the
  held-out segments, with both sample sizes in the table (lower is closer);
* ``clap_text_vs_base``: the change against the base model; on the generic set a clear drop
  means the adapter made the model forget how to follow other prompts.

Held-out segments are those of the validation tracks in the adapter's training run
(``split.json``), else a fixed sample of tracks; their audio is read from the source ZIP when
``zips`` holds it, and otherwise decoded from the token shards with the model's EnCodec decoder.

Outputs in ``out``: ``per_prompt.csv``, ``summary.csv``, ``results.json``, ``comparison.png``,
and ``samples/`` with every clip (WAV + sidecar). Re-running the same command resumes: clips
already in ``samples/index.jsonl`` are reused (a LoRA's only while its weights file is unchanged:
an adapter retrained into the same folder gets new clips); other settings in the same folder are refused.

Command line (the contract in DESIGN.md)::

    python -m nbutils evaluate --model M --adapter DIR --out DIR [--clap C] [--prompts FILE] [--tokens DIR]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from nbutils.core import atomic, config, tracking
from nbutils.core import diskerrors
from nbutils.evaluate import clap, metrics
from nbutils.generate import adapters, audio_io, stage as generate
from nbutils.tokenize import shards
from nbutils.core.config import option
from nbutils.core.errors import UserError

GENERIC_PROMPTS = (
    "solo classical violin playing a slow romantic melody",
    "big band swing jazz with trumpets and saxophones",
    "heavy metal with distorted electric guitars and fast double bass drums",
    "acoustic folk song with fingerpicked guitar and harmonica",
)
PROMPT_SETS = ("style", "generic")
BASE = "base"
REFERENCE = "held-out"
LEDGER = "index.jsonl"
MIN_REFERENCE_SECONDS = 0.1  # 5 code frames: shorter held-out audio is nothing CLAP can embed
# settings that change the numbers: a folder holding results for other values is not resumed
RESULT_KEYS = (
    "model", "adapters", "checkpoints", "clap", "prompts", "tokens", "zips", "num_prompts", "samples_per_prompt",
    "seconds", "seed", "max_reference", "reference_seconds", "guidance_scale", "temperature", "top_k", "top_p",
    "batch_size",
)


@dataclasses.dataclass
class EvalConfig:
    """One evaluation: which models, which prompts and seeds, which reference, where to write."""

    model: str = option("", "Base MusicGen: Hub id, local save_pretrained folder, or 'tiny'.")
    adapters: list[str] = option([], "LoRA adapter to compare with the base model (PEFT folder, Hub id, latest.pt, step checkpoint or run folder); repeat for several.", flag="--adapter")
    checkpoints: bool = option(False, "Also evaluate every checkpoints/step-XXXXXX of the adapter's training run.")
    out: str = option("eval", "Folder for the tables, plot and generated samples (re-running resumes).")
    clap: str = option(clap.DEFAULT_CLAP, "CLAP model: Hub id, local folder, or 'tiny'.")
    prompts: str = option("", "Prompt file: one style prompt per line, or JSON {\"style\": [...], \"generic\": [...]}; empty: training descriptions + generic prompts.")
    tokens: str = option("", "Token shards of the training data: held-out reference audio and default prompts.")
    zips: str = option("", "Folder with the source ZIPs; reference segments are read from there when present, else decoded from the shards.")
    num_prompts: int = option(4, "Style prompts taken from the training descriptions (most frequent first) when no prompt file is given.")
    samples_per_prompt: int = option(2, "Clips per prompt and model; clip i is seeded with seed + i.")
    seconds: float = option(10.0, "Seconds per generated clip (CLAP listens in 10 s windows).")
    seed: int = option(0, "Base seed: the same seed gives the same clips and numbers.")
    max_reference: int = option(32, "At most this many held-out segments form the style reference (evenly spread).")
    reference_seconds: float = option(10.0, "Seconds of each held-out segment that are used.")
    guidance_scale: float = option(3.0, "Classifier-free guidance for the generated clips.")
    temperature: float = option(1.0, "Sampling temperature for the generated clips.")
    top_k: int = option(250, "Top-k for the generated clips (0 = off).")
    top_p: float = option(0.0, "Top-p for the generated clips (0 = off).")
    batch_size: int = option(8, "Prompts generated together.")
    device: str = option("auto", "cuda, cpu, or auto.")
    dtype: str = option("auto", "float32, float16, bfloat16, or auto.")

    def __post_init__(self):
        if isinstance(self.adapters, str):
            self.adapters = [self.adapters] if self.adapters else []
        if self.samples_per_prompt < 1 or self.seconds <= 0 or self.max_reference < 1:
            raise UserError("samples_per_prompt and max_reference must be at least 1 and seconds positive.")
        if self.reference_seconds < MIN_REFERENCE_SECONDS:
            raise UserError(f"reference_seconds must be at least {MIN_REFERENCE_SECONDS} (a few code frames of each "
                            f"held-out segment; the default is 10), not {self.reference_seconds}.")
        if not generate.seed_ok(self.seed, self.samples_per_prompt):
            raise UserError(f"Invalid evaluation setting: {generate.seed_rule(self.samples_per_prompt)}.")

    def generation(self, prompts: list[str], out: Path) -> generate.GenerateConfig:
        """The generation settings every model gets (same prompts, seeds and sampling)."""
        return generate.GenerateConfig(
            model=self.model, prompts=prompts, seconds=self.seconds, out=str(out), seed=self.seed,
            variations=self.samples_per_prompt, guidance_scale=self.guidance_scale, temperature=self.temperature,
            top_k=self.top_k, top_p=self.top_p, batch_size=self.batch_size, device=self.device, dtype=self.dtype,
        )


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def training_descriptions(all_shards: list[shards.Shard], limit: int) -> list[str]:
    """The most frequent distinct descriptions in the shards (ties alphabetical), at most ``limit``."""
    counts: dict[str, int] = {}
    for shard in all_shards:
        for segment in shard.segments:
            text = segment.description.strip()
            if text:
                counts[text] = counts.get(text, 0) + 1
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:limit]


def read_prompt_file(path: str) -> dict[str, list[str]]:
    """Prompt sets from a file: lines (``#`` comments) are style prompts; JSON may give both sets."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"Prompt file {file} does not exist.")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        expected = ('expected a JSON object with "style" and/or "generic" lists of prompts, e.g. '
                    '{"style": ["calm piano", "lofi beat"], "generic": ["opera aria"]}')
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(
                f"{file} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); {expected}."
            ) from err
        if not isinstance(data, dict) or not set(data) <= set(PROMPT_SETS):
            raise UserError(f"{file}: {expected}.")
        sets = {}
        for name, prompts in data.items():
            if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
                raise UserError(
                    f'{file}: "{name}" must be a list of text prompts, not {json.dumps(prompts)[:80]}; {expected}.'
                )
            sets[name] = [p.strip() for p in prompts if p.strip()]
        return sets
    lines = (line.strip() for line in text.splitlines())
    return {"style": [line for line in lines if line and not line.startswith("#")]}


def prompt_sets(cfg: EvalConfig, all_shards: list[shards.Shard]) -> dict[str, list[str]]:
    """The fixed prompt sets: from the file, else training descriptions; generic prompts by default."""
    sets = read_prompt_file(cfg.prompts) if cfg.prompts else {}
    if not sets.get("style"):
        sets["style"] = training_descriptions(all_shards, cfg.num_prompts)
    sets.setdefault("generic", list(GENERIC_PROMPTS))
    sets = {name: list(dict.fromkeys(prompts)) for name, prompts in sets.items()}  # each prompt once,
    sets["generic"] = [p for p in sets["generic"] if p not in sets["style"]]  # in one set
    if not sets["style"]:
        raise UserError("No style prompts: the shards have no descriptions and no --prompts file was given.")
    return {name: sets[name] for name in PROMPT_SETS if sets.get(name)}


# ---------------------------------------------------------------------------------------------
# The held-out reference
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Reference:
    """Held-out training audio: the style the LoRA should have learned."""

    audio: list[np.ndarray]
    tracks: list[str]
    origins: list[str]
    """Per segment: ``source`` (read from its ZIP) or ``decoded`` (from the shard's codes)."""
    selection: str
    """How the segments were chosen (validation split of a run, or a fixed sample)."""


def run_folder(location: str) -> Path | None:
    """The training run folder an adapter lives in (the one with ``split.json``), if any."""
    path = Path(location)
    for folder in [path, *list(path.parents)[:3]]:
        if (folder / "split.json").is_file():
            return folder
    return None


def _track_rank(track: str) -> str:
    return hashlib.sha256(track.encode()).hexdigest()


def held_out_segments(all_shards: list[shards.Shard], run: Path | None, limit: int) -> tuple[list, str]:
    """``[(shard, segment index)]`` of held-out segments, evenly spread, and how they were chosen."""
    everything = [(shard, i) for shard in all_shards for i in range(len(shard.segments))]
    chosen, how = [], ""
    if run is not None:
        val = set(atomic.read_json(run / "split.json").get("val_tracks", []))
        chosen = [(s, i) for s, i in everything if s.segments[i].track in val]
        how = f"validation tracks of {run / 'split.json'}"
    if not chosen:  # no run, or its validation tracks are not in these shards: a fixed 20% of tracks
        tracks = sorted({s.segments[i].track for s, i in everything}, key=_track_rank)
        keep = set(tracks[: max(1, len(tracks) // 5)])
        chosen = [(s, i) for s, i in everything if s.segments[i].track in keep]
        how = f"fixed sample of {len(keep)} of {len(tracks)} tracks (no usable split.json)"
    if len(chosen) > limit:
        chosen = [chosen[int(round(j))] for j in np.linspace(0, len(chosen) - 1, limit)]
    return chosen, how


def _source_audio(zips: Path, zip_name: str, segment: shards.Segment, seconds: float, sample_rate: int, channels: int):
    """The segment cut from its source file inside its ZIP, or None when that is not available."""
    import zipfile

    import soundfile as sf

    from nbutils.generate import audio_io

    for candidate in (zips / zip_name, zips / f"{zip_name}.zip"):
        if zip_name and candidate.is_file():
            with zipfile.ZipFile(candidate) as archive:
                if segment.path not in archive.namelist():
                    return None
                data, rate = sf.read(io.BytesIO(archive.read(segment.path)), dtype="float32", always_2d=True)
            start = int(round(segment.start * rate))
            data = data[start : start + int(round(seconds * rate))]
            return audio_io.to_channels(audio_io.resample(data, rate, sample_rate), channels)
    return None


def reference_audio(cfg: EvalConfig, pipe: generate.Pipeline, all_shards: list[shards.Shard], run: Path | None) -> Reference:
    """Audio of the held-out segments (source when available, else decoded codes)."""
    import torch

    from nbutils.generate import sampling

    chosen, how = held_out_segments(all_shards, run, cfg.max_reference)
    spec = pipe.spec
    zips = Path(cfg.zips).expanduser() if cfg.zips else None
    audio, origins, tracks = [], [], []
    for shard, index in chosen:
        segment = shard.segments[index]
        seconds = min(cfg.reference_seconds, segment.frames / spec.frame_rate)
        # the shard index names its ZIP; segment tracks are "<zip>/<path inside it>"
        zip_name = shard.meta.get("zip") or segment.track.split("/", 1)[0]
        wave = _source_audio(zips, zip_name, segment, seconds, spec.sample_rate, spec.audio_channels) if zips else None
        if wave is None:
            if shard.meta.get("num_codebooks") != spec.num_codebooks:
                raise UserError(
                    f"The shards hold {shard.meta.get('num_codebooks')} codebooks, the model {spec.num_codebooks}: "
                    f"they were tokenized for another model ({shard.meta.get('model')}). Pass --zips with the source "
                    "ZIPs, or the tokens of this model."
                )
            codes = np.asarray(shard.segment_codes(index)[: int(round(seconds * spec.frame_rate))])
            wave = sampling.decode(pipe.model, torch.from_numpy(codes.T.astype(np.int64)).to(pipe.device)).T.numpy()
            origins.append("decoded")
        else:
            origins.append("source")
        audio.append(wave)
        tracks.append(segment.track)
    return Reference(audio=audio, tracks=tracks, origins=origins, selection=how)


# ---------------------------------------------------------------------------------------------
# Models and samples
# ---------------------------------------------------------------------------------------------


def adapter_label(location: str, kind: str, step: int | None) -> str:
    """Short, readable model names for tables: lora-best, lora-final, step-000500, latest-step-7."""
    path = Path(location)
    if kind == "training-state":
        return f"latest-step-{step}" if step is not None else path.stem
    if path.parent.name == "adapters":
        return f"lora-{path.name}"
    if path.name.startswith("step-"):
        return path.name
    return "lora" if not path.name else path.name


def _unique(label: str, taken: list[str]) -> str:
    n, candidate = 1, label
    while candidate in taken:
        n += 1
        candidate = f"{label}-{n}"
    return candidate


def adapter_specs(cfg: EvalConfig) -> list[str]:
    """The adapters to evaluate, in order; with ``checkpoints``, every step checkpoint of the run too."""
    specs = list(cfg.adapters)
    if not specs:
        raise UserError("No adapter to evaluate. Pass --adapter (a run's adapters/best, latest.pt, a PEFT folder or Hub id).")
    if cfg.checkpoints:
        run = run_folder(adapters.resolve(specs[0]).location)
        steps = sorted((run / "checkpoints").glob("step-*")) if run else []
        if not steps:
            raise UserError(f"--checkpoints: no checkpoints/step-XXXXXX folders next to {specs[0]}.")
        specs += [str(s) for s in steps if str(s) not in specs]
    for spec in specs:  # a missing adapter is reported now, not after the models before it have run
        adapters.locate(spec)
    return specs


def _unit_key(label: str, variation: int, batch: list[str], fingerprint: str = "") -> str:
    """The ledger key of one batch of clips; a LoRA's carries its weights' fingerprint, so clips of
    an adapter retrained into the same folder are generated again (the base clips stay valid)."""
    model = f"{label}@{fingerprint}" if fingerprint else label
    return f"{model}|{variation}|" + hashlib.sha256("\n".join(batch).encode()).hexdigest()[:12]


def _read_wav(path: str) -> np.ndarray:
    import soundfile as sf

    return sf.read(path, dtype="float32", always_2d=True)[0]


class Samples:
    """Generated clips on disk, with a ledger so a re-run reuses what is already there."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.done = {r["unit"]: r["clips"] for r in atomic.read_jsonl(folder / LEDGER)
                     if all(Path(c["path"]).exists() for c in r.get("clips", []))}

    def ensure(self, pipe: generate.Pipeline, gen: generate.GenerateConfig, label: str, variant: str, bar) -> list[dict]:
        """Every clip of ``gen`` for one model, generated only where the ledger has none."""
        records = []
        weights = pipe.adapter.fingerprint if variant == "lora" and pipe.adapter else ""
        for variation in range(gen.variations):
            for batch in generate.batches(list(gen.prompts), gen.batch_size):
                key = _unit_key(label, variation, batch, weights)
                if key not in self.done:
                    clips = generate.sample_batch(pipe, gen, batch, variant=variant, variation=variation, bar=bar)
                    saved = generate.save(clips, gen, pipe, self.folder / label)
                    self.done[key] = [{"prompt": r["prompt"], "path": r["path"], "seed": r["variation_seed"]} for r in saved]
                    atomic.append_line(self.folder / LEDGER, json.dumps({"unit": key, "clips": self.done[key]}))
                elif bar is not None:
                    bar.update(gen.seconds * len(batch))
                records += [{**c, "model": label} for c in self.done[key]]
        return records


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def _mean_std(values) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    values = np.asarray(values, dtype=np.float64)
    return round(float(values.mean()), 6), round(float(values.std()), 6)


def score(samples: list[dict], sets: dict[str, list[str]], text_emb: dict[str, np.ndarray],
          audio_emb: np.ndarray, reference_emb: np.ndarray | None) -> tuple[list[dict], list[dict]]:
    """Per-prompt and per-(model, prompt set) rows from the embeddings.

    Without reference embeddings (no token shards), style similarity and Fréchet distance are None.
    """
    style = metrics.centroid(reference_emb) if reference_emb is not None and len(reference_emb) else None
    set_of = {p: name for name, prompts in sets.items() for p in prompts}
    for sample, emb in zip(samples, audio_emb):
        sample["clap_text"] = float(metrics.cosine(emb, text_emb[sample["prompt"]]))
        sample["style_similarity"] = float(metrics.cosine(emb, style)) if style is not None else None
        sample["set"] = set_of[sample["prompt"]]
        sample["embedding"] = emb
    models = list(dict.fromkeys(s["model"] for s in samples))
    per_prompt, summary = [], []
    for model in models:
        for name, prompts in sets.items():
            group = [s for s in samples if s["model"] == model and s["set"] == name]
            for prompt in prompts:
                mine = [s for s in group if s["prompt"] == prompt]
                text, text_sd = _mean_std([s["clap_text"] for s in mine])
                sim, sim_sd = _mean_std([s["style_similarity"] for s in mine])
                per_prompt.append({"model": model, "prompt_set": name, "prompt": prompt, "samples": len(mine),
                                   "clap_text": text, "clap_text_std": text_sd,
                                   "style_similarity": sim, "style_similarity_std": sim_sd})
            summary.append(_summary_row(model, name, group, reference_emb))
    base = {r["prompt_set"]: r["clap_text"] for r in summary if r["model"] == BASE}
    for row in summary:
        row["clap_text_vs_base"] = round(row["clap_text"] - base.get(row["prompt_set"], row["clap_text"]), 6)
    if style is None:
        return per_prompt, summary
    own = metrics.cosine(reference_emb, style)
    summary.append({"model": REFERENCE, "prompt_set": "reference", "samples": len(reference_emb),
                    "clap_text": None, "clap_text_std": None, "style_similarity": round(float(own.mean()), 6),
                    "style_similarity_std": round(float(own.std()), 6), "frechet": 0.0,
                    "frechet_n_generated": None, "frechet_n_reference": len(reference_emb), "clap_text_vs_base": None})
    return per_prompt, summary


def _summary_row(model: str, name: str, group: list[dict], reference_emb: np.ndarray) -> dict:
    text, text_sd = _mean_std([s["clap_text"] for s in group])
    sim, sim_sd = _mean_std([s["style_similarity"] for s in group])
    emb = np.stack([s["embedding"] for s in group])
    reference_emb = reference_emb if reference_emb is not None else np.zeros((0, emb.shape[1]))
    enough = len(emb) >= 2 and len(reference_emb) >= 2
    fd = round(metrics.frechet_distance(emb, reference_emb), 6) if enough else None
    return {"model": model, "prompt_set": name, "samples": len(group), "clap_text": text, "clap_text_std": text_sd,
            "style_similarity": sim, "style_similarity_std": sim_sd, "frechet": fd,
            "frechet_n_generated": len(emb), "frechet_n_reference": len(reference_emb)}


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())


def plot(summary: list[dict], path: Path, title: str) -> None:
    """Grouped bars per prompt set: CLAP text similarity, style similarity, Fréchet distance."""
    # a bare Figure renders with Agg and leaves pyplot (and a notebook's inline backend) alone
    from matplotlib.figure import Figure

    rows = [r for r in summary if r["model"] != REFERENCE]
    models = list(dict.fromkeys(r["model"] for r in rows))
    sets = list(dict.fromkeys(r["prompt_set"] for r in rows))
    panels = [("clap_text", "CLAP text–audio similarity ↑"), ("style_similarity", "style similarity to held-out ↑"),
              ("frechet", "Fréchet distance to held-out ↓")]
    fig = Figure(figsize=(15, 4.5))
    axes = fig.subplots(1, 3)
    width = 0.8 / max(len(models), 1)
    for ax, (key, label) in zip(axes, panels):
        missing = 0
        for m, model in enumerate(models):
            values = [next((r[key] for r in rows if r["model"] == model and r["prompt_set"] == s), None) for s in sets]
            missing += sum(v is None for v in values)
            ax.bar(np.arange(len(sets)) + m * width, [v if v is not None else 0 for v in values], width, label=model)
        ax.set_xticks(np.arange(len(sets)) + width * (len(models) - 1) / 2, sets)
        ax.set_title(label)
        if missing:  # an empty panel would read as "zero"; say why there is no bar
            ax.text(0.5, 0.5, "n/a: needs at least 2 generated and 2 held-out clips" if key == "frechet"
                    else "n/a for some bars", transform=ax.transAxes, ha="center", va="center", color="gray")
    axes[0].legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def log_wandb(samples: list[dict], summary: list[dict], sample_rate: int) -> bool:
    """A table with audio players and the summary numbers, when a wandb run is active."""
    if not tracking.active():
        return False
    import wandb

    table = wandb.Table(columns=["model", "prompt_set", "prompt", "seed", "clap_text", "style_similarity", "audio"])
    for s in samples:
        table.add_data(s["model"], s["set"], s["prompt"], s["seed"], s["clap_text"], s["style_similarity"],
                       wandb.Audio(s["path"], sample_rate=sample_rate, caption=f"{s['model']}: {s['prompt']}"))
    numbers = {f"eval/{r['model']}/{r['prompt_set']}/{k}": r[k] for r in summary
               for k in ("clap_text", "style_similarity", "frechet") if r.get(k) is not None}
    tracking.log({"eval/samples": table, **numbers})
    return True


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def _check_resumable(cfg: EvalConfig, out: Path) -> None:
    """Same settings in ``out``: continue. Other settings: refuse, saying what differs.

    Only checks: ``_record_settings`` writes the settings once the inputs are known to be valid,
    so a run that failed on a typo does not claim the folder for its wrong settings.
    """
    record = out / "eval_config.json"
    if record.exists():
        old = atomic.read_json(record)
        diffs = config.differences(old, config.to_dict(cfg), RESULT_KEYS)
        if diffs:
            raise UserError(
                f"{out} holds an evaluation with other settings ({'; '.join(diffs)}). Use another --out / "
                "output folder, or delete this one to start fresh."
            )


def _record_settings(cfg: EvalConfig, out: Path) -> None:
    """Write the settings that the results in ``out`` belong to (before the first clip is saved)."""
    atomic.write_json(out / "eval_config.json", config.to_dict(cfg))


@diskerrors.guard("out")  # a read-only or full --out is a message, not a traceback
def run(cfg: EvalConfig) -> dict[str, Any]:
    """Generate (or reuse) every clip, score with CLAP, and write tables, plot and JSON."""
    out = audio_io.output_folder(cfg.out)
    _check_resumable(cfg, out)
    specs = adapter_specs(cfg)
    generate.release()  # a model loaded by notebook 03 in this runtime would double GPU memory
    all_shards = shards.open_all(cfg.tokens) if cfg.tokens else []
    if not all_shards and not cfg.prompts:
        raise UserError("Pass --tokens (the training shards: reference audio and prompts) or --prompts FILE.")
    sets = prompt_sets(cfg, all_shards)
    prompts = [p for name in PROMPT_SETS for p in sets.get(name, [])]
    _record_settings(cfg, out)  # the inputs are valid: the folder now holds this evaluation
    store = Samples(out / "samples")
    gen = cfg.generation(prompts, out / "samples")
    samples, reference, spec, labels, fingerprints = [], None, None, [BASE], {}
    with generate.progress(cfg.seconds * len(prompts) * cfg.samples_per_prompt * (len(specs) + 1)) as bar:
        for n, spec_str in enumerate(specs):
            pipe = generate.Pipeline(cfg.model, spec_str, device=cfg.device, dtype=cfg.dtype)
            label = _unique(adapter_label(pipe.adapter.location, pipe.adapter.kind, pipe.adapter.step), labels)
            labels.append(label)
            fingerprints[label] = pipe.adapter.fingerprint
            if n == 0:  # the base model and the reference come from the first pipeline
                samples += store.ensure(pipe, gen, BASE, "base", bar)
                reference = _reference_or_none(cfg, pipe, all_shards, run_folder(pipe.adapter.location))
            samples += store.ensure(pipe, gen, label, "lora", bar)
            spec = pipe.spec
            del pipe  # one model in memory at a time
    print(f"Scoring {len(samples)} clips with CLAP '{cfg.clap}'...", file=sys.stderr)
    scorer = clap.load(cfg.clap, device=generate.pick_device(cfg.device))
    audio_emb = clap.audio_embeddings(scorer, [_read_wav(s["path"]) for s in samples], spec.sample_rate)
    text_emb = dict(zip(prompts, clap.text_embeddings(scorer, prompts)))
    if reference is None:
        reference_emb, selection, origins = None, "none (no token shards): no style similarity or Fréchet distance", []
    else:
        reference_emb = clap.audio_embeddings(scorer, reference.audio, spec.sample_rate)
        selection, origins = reference.selection, reference.origins
    per_prompt, summary = score(samples, sets, text_emb, audio_emb, reference_emb)
    return _write(cfg, out, sets, samples, per_prompt, summary, selection, origins, spec.sample_rate, fingerprints)


def _reference_or_none(cfg, pipe, all_shards, run):
    return reference_audio(cfg, pipe, all_shards, run) if all_shards else None


def _write(cfg, out, sets, samples, per_prompt, summary, selection, origins, sample_rate, fingerprints) -> dict[str, Any]:
    files = {"per_prompt_csv": out / "per_prompt.csv", "summary_csv": out / "summary.csv",
             "json": out / "results.json", "plot": out / "comparison.png"}
    write_csv(files["per_prompt_csv"], per_prompt)
    write_csv(files["summary_csv"], summary)
    n_gen = cfg.samples_per_prompt * max(len(v) for v in sets.values())
    title = (f"{cfg.model} · CLAP {cfg.clap} · {cfg.samples_per_prompt} clip(s) per prompt, seeds {cfg.seed}.."
             f"{cfg.seed + cfg.samples_per_prompt - 1} · reference: {len(origins) or 'n/a'} held-out segments")
    plot(summary, files["plot"], title)
    forgetting = {r["model"]: r["clap_text_vs_base"] for r in summary
                  if r["prompt_set"] == "generic" and r["model"] not in (BASE, REFERENCE)}
    results = {
        "summary": summary, "per_prompt": per_prompt, "prompt_sets": sets, "forgetting_generic_clap_text": forgetting,
        "reference": {"selection": selection, "segments": len(origins) or None,
                      "decoded": origins.count("decoded"), "from_source": origins.count("source")},
        "sample_sizes": {"clips_per_model_and_set_max": n_gen, "reference_segments": len(origins)},
        "settings": config.to_dict(cfg), "adapter_fingerprints": fingerprints,
        "files": {k: str(v) for k, v in files.items()},
        "wandb": log_wandb(samples, summary, sample_rate),
    }
    atomic.write_json(files["json"], results)
    print(f"Wrote {files['summary_csv']}, {files['per_prompt_csv']}, {files['json']} and {files['plot']}", file=sys.stderr)
    return results


# ---------------------------------------------------------------------------------------------
# Notebook helpers
# ---------------------------------------------------------------------------------------------


def config_for(project, **values: Any) -> EvalConfig:
    """An ``EvalConfig`` for notebook 04: model, adapter, tokens and ZIPs from the project.

    The output folder is ``PROJECT_ROOT/eval/eval-<settings hash>``: re-running with the same
    settings resumes there, other settings get their own folder (earlier results stay).
    """
    values = {k: v for k, v in values.items() if v is not None and v != ""}
    adapter = values.pop("adapter", "") or generate.default_adapter(project)
    values.setdefault("adapters", [adapter] if adapter else [])
    values.setdefault("model", project.model)
    values.setdefault("tokens", str(project.paths.tokens))
    values.setdefault("zips", str(project.paths.zips))
    cfg = config.from_dict(EvalConfig, values)
    if "out" not in values:
        cfg.out = str(project.paths.eval / f"eval-{config.config_hash(cfg, RESULT_KEYS)[:8]}")
    return cfg


def show(results: dict[str, Any]) -> None:
    """The summary table and the plot, inline."""
    from IPython.display import Image, Markdown, display

    keys = ["model", "prompt_set", "samples", "clap_text", "style_similarity", "frechet", "clap_text_vs_base"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join("" if r.get(k) is None else f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k])
                                for k in keys) + " |" for r in results["summary"]]
    ref = results["reference"]
    display(Markdown("\n".join(lines) + f"\n\nReference: {ref['selection']} ({ref['segments']} segments)."))
    display(Image(filename=results["files"]["plot"]))


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_cli(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, EvalConfig)


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    cfg = config.from_args(EvalConfig, args)
    if not cfg.model:
        raise UserError("Missing --model. Example: python -m nbutils evaluate --model tiny --adapter runs/lora "
                        "--tokens tokens --out eval --clap tiny")
    results = run(cfg)
    return {**results["files"], "summary": results["summary"], "forgetting_generic_clap_text":
            results["forgetting_generic_clap_text"], "reference": results["reference"]}
