"""Scores and what is written from them: tables, plot, ``results.json``, the listening page, WandB.

Per clip: ``clap_text`` (cosine between the prompt's and the clip's CLAP embeddings) and
``style_similarity`` (cosine between the clip and the centroid of the held-out segments). Per
model and prompt set (``aggregate``): their means, the Fréchet distance and KAD to the held-out
embeddings, the paired changes against base (on the generic set a clear drop in ``clap_text``
means the adapter made the model forget), each with ``ci95`` and ``n``. Per model: the held-out
likelihood (``heldout``). Per clip again: the copy check (``copies``), flagged clips first. A
melody model adds one ``melody`` row per model: ``chroma_cosine``, how closely its clips follow
held-out melodies (``nbutils.evaluate.melody``), in the tables, ``results.json`` and its own plot panel.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from nbutils.core import atomic, config, tracking
from nbutils.evaluate import aggregate, listen, metrics, plot, table, uncertainty
from nbutils.evaluate.aggregate import BASE, REFERENCE

__all__ = ["BASE", "REFERENCE", "score", "write_results", "show", "log_wandb"]


def _mean_std(values) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    values = np.asarray(values, dtype=np.float64)
    return round(float(values.mean()), 6), round(float(values.std()), 6)


def score(samples: list[dict], sets: dict[str, list[str]], text_emb: dict[str, np.ndarray],
          audio_emb: np.ndarray, reference_emb: np.ndarray | None, *,
          resamples: int = uncertainty.RESAMPLES, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Per-prompt and per-(model, prompt set) rows from the embeddings, with intervals.

    Without reference embeddings (no token shards), style similarity, Fréchet distance and KAD are None.
    """
    style = metrics.centroid(reference_emb) if reference_emb is not None and len(reference_emb) else None
    set_of = {p: name for name, prompts in sets.items() for p in prompts}
    for sample, emb in zip(samples, audio_emb):
        sample["clap_text"] = float(metrics.cosine(emb, text_emb[sample["prompt"]]))
        sample["style_similarity"] = float(metrics.cosine(emb, style)) if style is not None else None
        sample["set"] = set_of[sample["prompt"]]
        sample["embedding"] = emb
    per_prompt = []
    for model in dict.fromkeys(s["model"] for s in samples):
        for name, prompts in sets.items():
            for prompt in prompts:
                mine = [s for s in samples if s["model"] == model and s["prompt"] == prompt]
                text, text_sd = _mean_std([s["clap_text"] for s in mine])
                sim, sim_sd = _mean_std([s["style_similarity"] for s in mine])
                per_prompt.append({"model": model, "prompt_set": name, "prompt": prompt, "samples": len(mine),
                                   "clap_text": text, "clap_text_std": text_sd,
                                   "style_similarity": sim, "style_similarity_std": sim_sd})
    reference = reference_emb if style is not None else None
    return per_prompt, aggregate.summary(samples, sets, reference, resamples=resamples, seed=seed)


def add_heldout(summary: list[dict], per_model: dict[str, dict[str, Any]]) -> None:
    """Put each model's held-out likelihood (and its interval) in its summary rows."""
    for row in summary:
        found = per_model.get(row["model"])
        if row["model"] == REFERENCE:
            continue
        if found is None:  # no token shards: nothing to measure it on
            row.update(heldout_bits_per_second=None, heldout_nll_per_codebook=None)
            continue
        row.update(found["values"])
        row.setdefault("ci95", {}).update(found["ci95"])
        row.setdefault("n", {}).update(found["n"])


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` as CSV; columns are every key in first-seen order (a row without one leaves it empty)."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())


def log_wandb(samples: list[dict], summary: list[dict], sample_rate: int, copies: list[dict] | None = None) -> bool:
    """A table with audio players and the summary numbers, when a wandb run is active."""
    if not tracking.active():
        return False
    import wandb

    flagged = {c["clip"] for c in copies or [] if c["flagged"]}
    table_ = wandb.Table(columns=["model", "prompt_set", "prompt", "seed", "clap_text", "style_similarity",
                                  "copy_flagged", "audio"])
    for s in samples:
        table_.add_data(s["model"], s["set"], s["prompt"], s["seed"], s["clap_text"], s["style_similarity"],
                        s["path"] in flagged,
                        wandb.Audio(s["path"], sample_rate=sample_rate, caption=f"{s['model']}: {s['prompt']}"))
    keys = [m.key for m in table.METRICS] + ["chroma_cosine"]
    numbers = {f"eval/{r['model']}/{r['prompt_set']}/{k}": r[k] for r in summary for k in keys
               if isinstance(r.get(k), (int, float))}
    tracking.log({"eval/samples": table_, "eval/copies_flagged": len(flagged), **numbers})
    return True


def write_results(cfg, out: Path, sets: dict[str, list[str]], samples: list[dict], per_prompt: list[dict],
                  summary: list[dict], extras: dict[str, Any], sample_rate: int) -> dict[str, Any]:
    """Write the tables, the plot, the listening page and ``results.json`` (returned) into ``out``.

    ``cfg`` is the ``EvalConfig``; ``extras`` holds ``reference`` (``reference.facts``),
    ``fingerprints``, ``heldout`` (``heldout.facts``), ``copies`` and ``copy_check``, ``adapters``
    (the labels paired with base on the listening page), and ``melody`` (``melody.facts``; None for a
    model without a melody input).
    """
    files = {"per_prompt_csv": out / "per_prompt.csv", "summary_csv": out / "summary.csv",
             "copies_csv": out / "copies.csv", "json": out / "results.json", "plot": out / "comparison.png"}
    reference, copies = extras["reference"], extras.get("copies") or []
    write_csv(files["per_prompt_csv"], per_prompt)
    write_csv(files["summary_csv"], [table.flat(r) for r in summary])
    write_csv(files["copies_csv"], copies or [{k: None for k in ("clip", "nearest_path", "nearest_start",
                                                                "clap_similarity", "chroma_similarity", "flagged")}])
    chosen = listen.pairs(samples, sets, extras["adapters"], BASE, cfg.seed)
    listening = listen.write(out, chosen, f"Blind A/B: base vs LoRA · {cfg.model}")
    files["listen"] = Path(listening["page"])
    n_gen = cfg.samples_per_prompt * max(len(v) for v in sets.values())
    title = (f"{cfg.model} · CLAP {cfg.clap} · {cfg.samples_per_prompt} clip(s) per prompt, seeds {cfg.seed}.."
             f"{cfg.seed + cfg.samples_per_prompt - 1} · reference: {reference['segments'] or 'n/a'} held-out segments"
             f" · whiskers: 95% bootstrap intervals")
    footer = f"Listen blind: {files['listen'].name} ({len(chosen)} pairs)."
    melody = extras.get("melody")
    plot.plot(summary, files["plot"], title, copies, extras.get("copy_check"), footer,
              melody_published=(melody or {}).get("published_reference"))
    forgetting = {r["model"]: r["clap_text_vs_base"] for r in summary
                  if r["prompt_set"] == "generic" and r["model"] not in (BASE, REFERENCE)}
    results = {
        "summary": summary, "per_prompt": per_prompt, "prompt_sets": sets, "forgetting_generic_clap_text": forgetting,
        "reference": reference, "melody": melody, "heldout_likelihood": extras.get("heldout"),
        "copies": copies, "copy_check": extras.get("copy_check"),
        "listening": listening,
        "published_reference": table.published(cfg.model),
        "uncertainty": {"level": uncertainty.LEVEL, "resamples": cfg.bootstrap, "over": "prompts, then seeds within "
                        "a prompt (clips); held-out segments for the likelihood"},
        "sample_sizes": {"clips_per_model_and_set_max": n_gen, "reference_segments": reference["segments"] or 0},
        "settings": config.to_dict(cfg), "adapter_fingerprints": extras["fingerprints"],
        "files": {k: str(v) for k, v in files.items()},
        "wandb": log_wandb(samples, summary, sample_rate, copies),
    }
    atomic.write_json(files["json"], results)
    print(text_report(results))
    return results


def text_report(results: dict[str, Any]) -> str:
    """What the CLI prints at the end: the table, the published reference, copy flags, the page."""
    lines = [table.text(results["summary"], results.get("published_reference")), ""]
    published = table.published_line(results.get("published_reference"))
    if published:
        lines += [published, ""]
    check = results.get("copy_check")
    if check:
        lines.append(f"Copy check: {check['flagged']} of {len(results['copies'])} clips flagged "
                     f"(searched {check['training_segments_searched']} of {check['training_segments']} training "
                     f"segments; thresholds CLAP {check['thresholds']['clap']}, "
                     f"chroma {check['thresholds']['chroma']}).")
        lines += [f"  FLAGGED {c['clip']}: {c['nearest_path']} at {c['nearest_start']} s (CLAP {c['clap_similarity']}, "
                  f"chroma {c['chroma_similarity']})" for c in results["copies"] if c["flagged"]]
    lines.append(f"Listen blind: {results['files']['listen']} ({len(results['listening']['pairs'])} pairs).")
    lines.append(f"Wrote {', '.join(Path(v).name for k, v in results['files'].items())} in "
                 f"{Path(results['files']['json']).parent}")
    return "\n".join(lines)


def show(results: dict[str, Any]) -> None:
    """In a notebook: the held-out likelihood, flagged copies first, the table with intervals, the plot."""
    from IPython.display import Image, Markdown, display

    held = results.get("heldout_likelihood") or {}
    if held.get("models"):
        rows = "\n".join(f"| {m} | {r['bits_per_second']:.1f} | "
                         f"{', '.join(f'{v:.3f}' for v in r['nll_per_codebook'])} |"
                         for m, r in held["models"].items())
        display(Markdown(f"**Held-out likelihood** ({held['segments']} segments of {held['selection']}; lower is "
                         f"better)\n\n| model | bits/s | nats per token, per codebook |\n|---|---|---|\n{rows}"))
    display(Markdown(copies_markdown(results)))
    ref = results["reference"]
    published = table.published_line(results.get("published_reference"))
    display(Markdown(table.markdown(results["summary"], results.get("published_reference"))
                     + f"\n\nValues with [95% bootstrap interval]; n in `summary.csv`. Reference: {ref['selection']} "
                     f"({ref['segments']} segments)." + (f"\n\n{published}" if published else "")))
    display(Image(filename=results["files"]["plot"]))


def copies_markdown(results: dict[str, Any], shown: int = 10) -> str:
    """The copy check for a notebook: flagged clips first, then the closest others."""
    check = results.get("copy_check")
    if not check:
        return "**Copy check**: not run (no token shards)."
    head = (f"**Copy check**: {check['flagged']} of {len(results['copies'])} clips flagged as near-copies of a "
            f"training segment (thresholds: CLAP {check['thresholds']['clap']}, "
            f"chroma {check['thresholds']['chroma']}, "
            f"from {check['heldout_segments']} held-out segments).")
    keys = ("flagged", "clip", "nearest_path", "nearest_start", "clap_similarity", "chroma_similarity")
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(Path(c[k]).name if k == "clip" else c[k]) for k in keys) + " |"
              for c in results["copies"][:shown]]
    return head + "\n\n" + "\n".join(lines)


def show_listening(results: dict[str, Any]) -> None:
    """The blind A/B listening page inline (audio embedded; ``listen.html`` on Drive is the same page)."""
    listen.show(results["listening"])
