"""``python -m nbutils demo --out DIR``: the whole pipeline, offline, by executing the notebooks.

It writes a small synthetic music collection as ZIP batches (chords, arpeggios and percussive
noise bursts from ``nbutils.synth``, in wav, flac and mp3 at several sample rates, with a
``metadata.jsonl`` beside the ZIPs that describes every other track: the rest get automatic
descriptions, tempo, key and tags from the tiny CLAP), then executes notebooks 00 -> 04 headlessly
with ``MODEL="tiny"`` (or ``--model tiny-melody``: the melody model, trained on its chroma and
given a melody file in 03 and 04) and ``PROJECT_ROOT=DIR``, exactly as a Colab user would run
them, and keeps the executed notebooks in ``DIR/notebooks``. It ends by saying where to look:
audio, plots, tables.

Re-running continues: the dataset is kept (when made with the same settings) and every stage
resumes or skips what is already done.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import io
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

from nbutils.core import atomic, config, diskerrors, synth
from nbutils.core.errors import UserError
from nbutils.core.paths import Paths

DEMO_FILE = "demo.json"  # the dataset settings of a demo folder, to refuse mixing two demos
MELODY_FILE = "melody.wav"  # a melody for 03_generate when the demo runs a melody model
SAMPLE_RATES = (32_000, 44_100, 48_000)  # the collection is not at the model's rate: resampling runs
FORMATS = ("wav", "flac", "mp3")
# What the demo changes in each notebook's parameters cell, besides PROJECT_ROOT and MODEL.
# Small numbers keep the whole run to a few minutes on a 2-core CPU.
STAGE_PARAMETERS: dict[str, dict[str, Any]] = {
    "00_setup": {"ASK_FOR_MISSING_SECRETS": False},
    "01_tokenize": {"TEST_TRACKS": 2, "SEGMENT_SECONDS": 2.0,  # 3 segments per track: a held-out set for 04
                    "CLAP": "tiny"},  # tags from the random tiny CLAP: the code path is real, the words are not
    "02_train": {"CROP_SECONDS": 1.0, "MAX_STEPS": 12, "SAVE_EVERY": 4, "BATCH_SIZE": 2, "GRAD_ACCUM": 1,
                 "SAMPLE_EVERY": 6, "SAMPLE_SECONDS": 1.0, "WANDB": "offline", "MORE_SETTINGS": {"warmup_steps": 3}},
    # REUSE: a re-run plays the clips the first run made, as every other stage continues or skips
    "03_generate": {"PROMPTS": "calm piano chords, slow | dark percussion noise bursts, energetic beat",
                    "SECONDS": 2.0, "COMPARE": "both", "SEED": 1, "REUSE": True},
    "04_evaluate": {"CLAP": "tiny", "SECONDS": 1.0, "SAMPLES_PER_PROMPT": 1},
}


@dataclasses.dataclass
class DemoConfig:
    """Settings of the offline demo."""

    out: Path = config.option(Path("demo_out"), "Folder for everything the demo makes (it becomes PROJECT_ROOT).")
    zips: int = config.option(2, "Number of synthetic ZIP batches (archive_batch_0001.zip, ...).",
                              resume=config.MUST_MATCH)
    tracks_per_zip: int = config.option(3, "Tracks per ZIP; styles rotate: chords, arpeggio, percussion.",
                                        resume=config.MUST_MATCH)
    track_seconds: float = config.option(6.0, "Length of each synthetic track, in seconds.", resume=config.MUST_MATCH)
    seed: int = config.option(0, "Seed of the synthetic music (same seed, same files).", resume=config.MUST_MATCH)
    cell_timeout: int = config.option(1800, "Seconds a single notebook cell may run before the demo stops.")
    model: str = config.option("tiny", "Embedded model the notebooks run with: tiny, tiny-stereo, or tiny-melody "
                                       "(trained on chroma; notebook 03 is given a melody).",
                               resume=config.MUST_MATCH)  # tokens and runs belong to one model

    def __post_init__(self) -> None:
        from nbutils.core import models

        self.out = Path(self.out)
        if self.model not in models.TINY_MODELS:
            raise UserError(f"--model {self.model!r}: the demo runs offline with an embedded model, one of "
                            f"{', '.join(models.TINY_MODELS)}. For a real model, run the notebooks on Colab.")
        if self.zips < 1 or self.tracks_per_zip < 1:
            raise UserError("--zips and --tracks-per-zip must be at least 1.")
        if self.track_seconds < 2:
            raise UserError("--track-seconds must be at least 2 (shorter tracks are skipped as too short).")


# ---------------------------------------------------------------------------------------------
# The synthetic collection
# ---------------------------------------------------------------------------------------------

DESCRIBED_EVERY = 2  # metadata.jsonl describes every second track; the others show automatic descriptions


def _is_melody(model: str) -> bool:
    """Whether the demo's model takes a melody (then notebook 03 is given one)."""
    from nbutils.core import models

    return models.is_melody(model)


def write_melody(path: Path, seconds: float = 2.0) -> Path:
    """A short melody for notebook 03 (a synthetic arpeggio at 32 kHz), kept on re-runs."""
    if not path.exists():
        with atomic.atomic_path(path) as tmp:
            import soundfile as sf

            sf.write(tmp, synth.track("arpeggio", seconds, 32_000, seed=7), 32_000, format="WAV")
    return path


def _encode(wave, sample_rate: int, fmt: str) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, wave, sample_rate, format=fmt.upper())
    return buffer.getvalue()


def _tracks(cfg: DemoConfig, batch: int) -> Iterator[dict[str, Any]]:
    """The tracks of ZIP number ``batch`` (1-based): name, style, rate, format; unique names overall."""
    for k in range(cfg.tracks_per_zip):
        n = (batch - 1) * cfg.tracks_per_zip + k  # index over the whole collection
        style = synth.STYLES[n % len(synth.STYLES)]
        fmt = FORMATS[n % len(FORMATS)]
        yield {"n": n, "style": style, "format": fmt, "sample_rate": SAMPLE_RATES[n % len(SAMPLE_RATES)],
               "path": f"music/{style}_{n + 1:04d}.{fmt}"}


def _write_zip(path: Path, cfg: DemoConfig, batch: int) -> list[dict[str, Any]]:
    records = []
    with atomic.atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for t in _tracks(cfg, batch):
            wave = synth.track(t["style"], cfg.track_seconds, t["sample_rate"], seed=cfg.seed * 1000 + t["n"])
            zf.writestr(t["path"], _encode(wave, t["sample_rate"], t["format"]))
            if t["n"] % DESCRIBED_EVERY:
                continue
            records.append({"path": t["path"], "duration": cfg.track_seconds,
                            "sample_rate": t["sample_rate"], "description": synth.describe(t["style"])})
    return records


def _check_same_dataset(paths: Paths, cfg: DemoConfig) -> bool:
    """True if ``paths.root`` already holds this demo's dataset; an error if another one."""
    marker = paths.root / DEMO_FILE
    if not marker.exists():
        return False
    old = {"model": "tiny", **atomic.read_json(marker)}  # demos before --model existed ran tiny
    refused = config.resume_differences(DemoConfig, old, config.to_dict(cfg)).refused
    if refused:
        raise config.resume_refusal(paths.root, refused, kind="demo folder", holds="a demo dataset",
                                    fresh="use another --out folder")
    return all((paths.zips / f"archive_batch_{b:04d}.zip").exists() for b in range(1, cfg.zips + 1))


def make_dataset(paths: Paths, cfg: DemoConfig) -> list[Path]:
    """Write the synthetic ZIP batches and ``metadata.jsonl`` into ``paths.zips`` (kept on re-runs).

    Returns:
        The ZIP files, in order.
    """
    zips = [paths.zips / f"archive_batch_{b:04d}.zip" for b in range(1, cfg.zips + 1)]
    if _check_same_dataset(paths, cfg):
        print(f"Dataset: reusing {len(zips)} ZIP batches in {paths.zips}")
        return zips
    paths.zips.mkdir(parents=True, exist_ok=True)
    records = []
    for batch, zip_path in enumerate(zips, start=1):
        records += _write_zip(zip_path, cfg, batch)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    atomic.write_text(paths.zips / "metadata.jsonl", lines)
    atomic.write_json(paths.root / DEMO_FILE, config.to_dict(cfg))  # last: marks the dataset complete
    tracks = cfg.zips * cfg.tracks_per_zip
    print(f"Dataset: {len(zips)} ZIP batches, {tracks} tracks ({tracks * cfg.track_seconds:.0f} s of audio: "
          f"{', '.join(synth.STYLES)}) and metadata.jsonl for {len(records)} of them in {paths.zips}")
    return zips


# ---------------------------------------------------------------------------------------------
# Executing the notebooks
# ---------------------------------------------------------------------------------------------


def parameter_names(notebook_file: str | os.PathLike) -> set[str]:
    """Names assigned in a notebook's cell tagged ``parameters``."""
    import nbformat

    nb = nbformat.read(str(notebook_file), as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            tree = ast.parse(cell.source)
            return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                    if isinstance(t, ast.Name)}
    raise UserError(f"{Path(notebook_file).name} has no cell tagged 'parameters'.")


def notebook_parameters(name: str, notebook_file: Path, paths: Paths, model: str = "tiny") -> dict[str, Any]:
    """What the demo injects into one notebook; every name must exist in its parameters cell."""
    values = {"PROJECT_ROOT": str(paths.root), "MODEL": model, **STAGE_PARAMETERS.get(name, {})}
    if name == "03_generate" and _is_melody(model):
        values["MELODY_FILE"] = str(paths.root / MELODY_FILE)
    unknown = sorted(set(values) - parameter_names(notebook_file))
    if unknown:
        raise UserError(
            f"The demo sets {', '.join(unknown)} in {notebook_file.name}, but its parameters cell "
            "has no such names. Update nbutils/colab/demo.py STAGE_PARAMETERS to match the notebook."
        )
    return values


@contextlib.contextmanager
def _kernel_environment() -> Iterator[None]:
    """Kernels import this checkout's nbutils, stay offline, and log WandB offline."""
    package_parent = str(Path(__file__).resolve().parents[2])
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join([package_parent, *filter(None, [saved.get("PYTHONPATH")])])
    for name, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline",
                        "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _code_cells(notebook_file: Path) -> int:
    import nbformat

    return sum(c.cell_type == "code" for c in nbformat.read(str(notebook_file), as_version=4).cells)


def execute_notebooks(paths: Paths, cfg: DemoConfig, names: tuple[str, ...]) -> dict[str, float]:
    """Execute the notebooks in order, each with its demo parameters; return seconds per notebook.

    The executed copies go to ``DIR/notebooks``; a failing cell stops the demo with a message
    that names the notebook, the cell and the executed copy to open.
    """
    from tqdm.auto import tqdm

    from nbutils.colab import notebooks, release

    if not notebooks.NOTEBOOK_DIR.is_dir():
        raise UserError(
            f"The demo executes the repository's notebooks, and there is no {notebooks.NOTEBOOK_DIR} here "
            f"(nbutils was installed without them). Run it from a clone: git clone "
            f"https://github.com/{release.REPO_SLUG} && cd {release.REPO_SLUG.split('/')[1]} "
            "&& python -m nbutils demo --out demo_out"
        )
    files = {name: notebooks.notebook_path(name) for name in names}
    params = {name: notebook_parameters(name, files[name], paths, cfg.model) for name in names}  # check all first
    out_dir = paths.root / "notebooks"
    seconds: dict[str, float] = {}
    total = sum(_code_cells(f) for f in files.values()) + len(names)  # + the injected cells
    with _kernel_environment(), tqdm(total=total, desc="notebooks", unit="cell") as bar:
        for name in names:
            def start(cell, cell_index, name=name, **_):
                if cell.cell_type == "code":
                    first = (cell.source.splitlines() or [""])[0]
                    title = first.removeprefix("#@title").strip() if first.startswith("#@title") else "parameters"
                    bar.set_description(f"{name}: {title[:40]}")

            started = time.monotonic()
            notebooks.execute(files[name], out_dir / f"{name}.ipynb", params[name], cwd=paths.root,
                              timeout=cfg.cell_timeout,
                              hooks={"on_cell_start": start, "on_cell_executed": lambda **_: bar.update(1)})
            seconds[name] = round(time.monotonic() - started, 1)
            bar.write(f"{name} done in {seconds[name]:.0f} s -> {out_dir / f'{name}.ipynb'}")
    return seconds


# ---------------------------------------------------------------------------------------------
# Where to look
# ---------------------------------------------------------------------------------------------


def _found(root: Path, *patterns: str) -> list[str]:
    """Files matching the patterns, in pattern order (sorted within one), without temporaries."""
    found: dict[str, None] = {}
    for pattern in patterns:
        for p in sorted(root.glob(pattern)):
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts):
                found[str(p)] = None
    return list(found)


def _is_table(path: str) -> bool:
    """A CSV, or a JSON that is neither a WAV's sidecar nor a settings file."""
    p = Path(path)
    return p.suffix == ".csv" or not (p.with_suffix(".wav").exists() or "config" in p.stem)


def results(paths: Paths) -> dict[str, list[str]]:
    """The demo's results by kind: audio, plots, tables, notebooks, adapters."""
    return {
        "audio": _found(paths.root, "generated/**/*.wav", "runs/*/samples/**/*.wav", "eval/**/*.wav"),
        "plots": _found(paths.root, "eval/**/*.png", "runs/*/*.png", "tokens/*.png"),
        "tables": [t for t in _found(paths.root, "eval/**/*.csv", "eval/**/*.json") if _is_table(t)],
        "notebooks": _found(paths.root, "notebooks/*.ipynb"),
        "adapters": sorted(str(p.parent) for p in paths.runs.glob("*/adapters/*/adapter_config.json")),
    }


def where_to_look(paths: Paths, found: dict[str, list[str]]) -> str:
    """The closing message: what the demo made and where, folder by folder."""
    def show(kind: str, what: str) -> list[str]:
        files = found[kind]
        head = f"  {what}: {len(files)} file(s)" if files else f"  {what}: none"
        return [head, *[f"    {f}" for f in files[:6]], *(["    ..."] if len(files) > 6 else [])]

    lines = [f"Done. Everything is in {paths.root}:"]
    lines += show("audio", "Audio (generated music, training samples)")
    lines += show("plots", "Plots (evaluation, loss curve, descriptions)")
    lines += show("tables", "Tables (base vs LoRA scores)")
    lines += show("adapters", "LoRA adapters")
    lines += show("notebooks", "Executed notebooks (open them in Jupyter to see every cell's output)")
    lines.append(f"  Token shards: {paths.tokens}   Training run: {paths.runs}")
    table = paths.tokens / "descriptions.jsonl"
    if table.exists():
        rows = [json.loads(line) for line in table.read_text(encoding="utf-8").splitlines() if line.strip()]
        auto = sum(r.get("source") == "auto" for r in rows)
        lines.append(f"  Descriptions: {table} ({len(rows)} tracks, {auto} described automatically; edit them there)")
    return "\n".join(lines)


@diskerrors.guard("out")  # a read-only or full --out is a message, not a traceback
def run(cfg: DemoConfig, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Make the dataset, execute the notebooks, and return the summary (paths by kind, timings)."""
    from nbutils.colab.notebooks import NOTEBOOKS, require_runner

    require_runner()  # before making the dataset: say what to install, not fail half-way
    started = time.monotonic()
    paths = Paths.at(cfg.out)
    paths.root.mkdir(parents=True, exist_ok=True)
    make_dataset(paths, cfg)
    if _is_melody(cfg.model):
        write_melody(paths.root / MELODY_FILE)
    seconds = execute_notebooks(paths, cfg, names or NOTEBOOKS)
    found = results(paths)
    print(where_to_look(paths, found))
    return {"out": str(paths.root), "seconds": round(time.monotonic() - started, 1),
            "notebook_seconds": seconds, **found}


def add_cli(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, DemoConfig)


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    return run(config.build(DemoConfig, args=args))
