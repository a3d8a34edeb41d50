"""Scores and what is written from them: per-prompt and summary tables, the plot, results.json, WandB.

For every model and prompt set: ``clap_text`` (cosine between the prompt's and the clip's CLAP
embeddings), ``style_similarity`` (cosine between the clip and the centroid of the held-out
segments), ``frechet`` (Fréchet distance between the model's clip embeddings and the held-out
ones, with both sample sizes beside it) and ``clap_text_vs_base`` (the change against the base
model: on the generic set a clear drop means the adapter made the model forget). A melody
model adds one ``melody`` row per model: ``chroma_cosine``, how closely its clips follow held-out
melodies (``nbutils.evaluate.melody``), in the tables, ``results.json`` and a fourth plot panel.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from nbutils.core import atomic, config, tracking
from nbutils.evaluate import metrics

BASE = "base"
REFERENCE = "held-out"


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


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))  # rows of another kind add their columns
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())


def plot(summary: list[dict], path: Path, title: str, published: float | None = None) -> None:
    """Grouped bars per prompt set: CLAP text similarity, style similarity, Fréchet distance (and for a
    melody model, chroma cosine to the melodies, with the ``published`` reference line)."""
    # a bare Figure renders with Agg and leaves pyplot (and a notebook's inline backend) alone
    from matplotlib.figure import Figure

    tuned = [r for r in summary if r.get("chroma_cosine") is not None]
    rows = [r for r in summary if r["model"] != REFERENCE and r.get("chroma_cosine") is None]
    models = list(dict.fromkeys(r["model"] for r in rows))
    sets = list(dict.fromkeys(r["prompt_set"] for r in rows))
    panels = [("clap_text", "CLAP text–audio similarity ↑"), ("style_similarity", "style similarity to held-out ↑"),
              ("frechet", "Fréchet distance to held-out ↓")]
    fig = Figure(figsize=(20 if tuned else 15, 4.5))
    axes = fig.subplots(1, 4 if tuned else 3)
    if tuned:
        _melody_panel(axes[3], tuned, published)
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


def _melody_panel(ax, rows: list[dict], published: float | None) -> None:
    """Chroma cosine of each model's clips to the melodies they were given, with the published value."""
    ax.bar(range(len(rows)), [r["chroma_cosine"] for r in rows], 0.6,
           yerr=[r.get("chroma_cosine_std") or 0 for r in rows], color=[f"C{i}" for i in range(len(rows))])
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows])
    if published is not None:
        ax.axhline(published, color="gray", linestyle="--", label=f"published (MusicCaps): {published}")
        ax.legend(fontsize="small")
    ax.set_ylim(0, 1)
    ax.set_title("melody: chroma cosine to the melody ↑")


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
               for k in ("clap_text", "style_similarity", "frechet", "chroma_cosine") if r.get(k) is not None}
    tracking.log({"eval/samples": table, **numbers})
    return True


def write_results(cfg, out: Path, sets: dict[str, list[str]], samples: list[dict], per_prompt: list[dict],
                  summary: list[dict], reference: dict[str, Any], sample_rate: int,
                  fingerprints: dict[str, str], melody: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the tables, the plot and ``results.json`` (returned) into ``out``; log to WandB when a run is active.

    ``cfg`` is the ``EvalConfig``; ``reference`` describes the held-out reference (``reference.facts``);
    ``melody`` the melody evaluation of a melody model (``melody.facts``; None for other models).
    """
    files = {"per_prompt_csv": out / "per_prompt.csv", "summary_csv": out / "summary.csv",
             "json": out / "results.json", "plot": out / "comparison.png"}
    write_csv(files["per_prompt_csv"], per_prompt)
    write_csv(files["summary_csv"], summary)
    n_gen = cfg.samples_per_prompt * max(len(v) for v in sets.values())
    title = (f"{cfg.model} · CLAP {cfg.clap} · {cfg.samples_per_prompt} clip(s) per prompt, seeds {cfg.seed}.."
             f"{cfg.seed + cfg.samples_per_prompt - 1} · reference: {reference['segments'] or 'n/a'} held-out segments")
    plot(summary, files["plot"], title, (melody or {}).get("published_reference"))
    forgetting = {r["model"]: r["clap_text_vs_base"] for r in summary
                  if r["prompt_set"] == "generic" and r["model"] not in (BASE, REFERENCE)}
    results = {
        "summary": summary, "per_prompt": per_prompt, "prompt_sets": sets, "forgetting_generic_clap_text": forgetting,
        "reference": reference, "melody": melody,
        "sample_sizes": {"clips_per_model_and_set_max": n_gen, "reference_segments": reference["segments"] or 0},
        "settings": config.to_dict(cfg), "adapter_fingerprints": fingerprints,
        "files": {k: str(v) for k, v in files.items()},
        "wandb": log_wandb(samples, summary, sample_rate),
    }
    atomic.write_json(files["json"], results)
    print(f"Wrote {files['summary_csv']}, {files['per_prompt_csv']}, {files['json']} and {files['plot']}")
    return results


def show(results: dict[str, Any]) -> None:
    """The summary table and the plot, inline."""
    from IPython.display import Image, Markdown, display

    keys = ["model", "prompt_set", "samples", "clap_text", "style_similarity", "frechet", "clap_text_vs_base"]
    if any(r.get("chroma_cosine") is not None for r in results["summary"]):
        keys.append("chroma_cosine")  # a melody model's melody rows
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join("" if r.get(k) is None else f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k])
                                for k in keys) + " |" for r in results["summary"]]
    ref = results["reference"]
    display(Markdown("\n".join(lines) + f"\n\nReference: {ref['selection']} ({ref['segments']} segments)."))
    display(Image(filename=results["files"]["plot"]))
