"""``python -m nbutils doctor``: a two-minute self-check of this runtime, and the figures we lack.

No GPU ever ran this code before its users' did. The doctor loads the model the way training
will and runs each part that depends on the runtime for real (``nbutils.colab.doctor_steps``):
the GPU, the project folder's speed, EnCodec under autocast, batched tokenization, training steps
at the preset with their memory, a save and restore, and generation. Each step prints pass, fail
or skipped with its figures; at the end come a table and a one-line verdict.

The report (``{verdict: ok|problems, checks: [{name, status, reason, numbers}], ...}``) is the
last stdout line and is written atomically to ``ROOT/doctor/<time>.json``: attach it to bug
reports. Exit status: 0 unless a check failed (1). ``--quick`` measures small sizes for a smoke
test (CI); the default measures the sizes the README's table of results is made of.

    python -m nbutils doctor --root DIR --model M [--quick]
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from nbutils.colab import doctor_steps as steps
from nbutils.core import atomic, config, devices, diskerrors
from nbutils.core.config import option
from nbutils.core.errors import UserError
from nbutils.core.paths import PROJECT_FILE, Paths

REPORT_DIR = "doctor"
PACKAGES = ("torch", "transformers", "peft", "accelerate", "numpy")
# The figures each check shows in the final table (all of them are in the JSON).
FIGURES = {
    "gpu": ("name", "capability", "free_gb", "bf16_native"),
    "disk": ("write_mb_s", "read_mb_s", "small_file_ms"),
    "encoder_autocast": ("autocast", "agree_percent", "tokenize_precision"),
    "tokenize_batching": ("pipeline_vs_naive", "pipeline_vs_encoder"),
    "train_steps": ("batch_size", "precision", "seconds_per_step"),
    "train_memory": ("measured_gb", "predicted_allocated_gb", "error_percent"),
    "resume": ("max_abs_difference", "tolerance"),
    "generate": ("base_realtime_factor", "lora_realtime_factor"),
}


@dataclasses.dataclass
class DoctorConfig:
    """Settings of one doctor run (the CLI options)."""

    root: str = option("", "The project folder (PROJECT_ROOT): the report goes to ROOT/doctor/<time>.json, its "
                           "speed is measured, and its project.json names the model and records the tokenization "
                           "precision.")
    model: str = option("", "MusicGen to check: Hub id, local save_pretrained folder, or 'tiny'. Empty: the model "
                            "in ROOT/project.json.")
    quick: bool = option(False, "Small sizes for a smoke test (a 4 MB file, 2 s of encoding, 2 tracks of 3 s, 2 s "
                                "crops, 0.5 s of generation); its figures are not the ones to report.")


def _model_of(cfg: DoctorConfig, root: Path) -> str:
    if cfg.model:
        return cfg.model
    project_file = root / PROJECT_FILE
    settings = atomic.read_json(project_file) if project_file.is_file() else {}
    if not settings.get("model"):
        raise UserError(f"Say which model to check: --model M (e.g. facebook/musicgen-small or tiny), or pass the "
                        f"--root of a project whose {PROJECT_FILE} names one (00_setup writes it).")
    return settings["model"]


def _versions() -> dict[str, str]:
    from importlib import metadata

    import nbutils

    found = {"python": platform.python_version(), "nbutils": nbutils.__version__, "platform": platform.platform()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _short(value: Any) -> Any:
    """Floats to 4 significant digits (the JSON stays readable; no figure here is finer than that)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, list):
        return [_short(v) for v in value]
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    return value


def _reason_of(err: BaseException, root: Path) -> tuple[str, str]:
    """``(reason, detail)`` of a step's error: the message users read, and a traceback for bug reports
    when the error is not one the suite explains."""
    if isinstance(err, UserError):
        return str(err), ""
    if isinstance(err, OSError):
        explained = diskerrors.explain(err, root, "--root")
        if explained is not None:
            return str(explained), ""
    detail = "".join(traceback.format_exception(type(err), err, err.__traceback__, limit=-6))
    return f"{type(err).__name__}: {err}", detail


def run_step(name: str, step: Callable[[steps.Context], steps.Outcome], ctx: steps.Context) -> dict[str, Any]:
    """One check: its outcome, or ``fail`` with the error's message; ``numbers["check_seconds"]`` is its time."""
    started = time.perf_counter()
    detail = ""
    try:
        status, reason, numbers = step(ctx)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - a step that breaks is that check's failure, and the next runs
        (reason, detail), status, numbers = _reason_of(err, ctx.root), steps.FAIL, {}
    devices.free_memory()  # outside the except block: the error's frames (and their tensors) are gone
    check = {"name": name, "status": status, "reason": reason,
             "numbers": _short({**numbers, "check_seconds": time.perf_counter() - started})}
    if detail:
        check["detail"] = detail
    return check


def _figures(check: dict[str, Any]) -> str:
    numbers = check["numbers"]
    shown = [f"{k}={numbers[k]}" for k in FIGURES.get(check["name"], ()) if numbers.get(k) is not None]
    return ", ".join(shown) or "-"


def table(checks: list[dict[str, Any]]) -> str:
    """The checks as a text table: name, status, seconds and the main figures."""
    width = max(len(c["name"]) for c in checks)
    lines = [f"{'check':<{width}}  {'status':<7}  {'seconds':>7}  figures"]
    lines += [f"{c['name']:<{width}}  {c['status']:<7}  {c['numbers']['check_seconds']:>7.1f}  {_figures(c)}"
              for c in checks]
    return "\n".join(lines)


def verdict_line(report: dict[str, Any]) -> str:
    """One line: the verdict, what failed or was skipped, and where the report is."""
    checks = report["checks"]
    failed = [c["name"] for c in checks if c["status"] == steps.FAIL]
    skipped = [c["name"] for c in checks if c["status"] == steps.SKIPPED]
    passed = sum(c["status"] == steps.PASS for c in checks)
    head = (f"Doctor: problems: {', '.join(failed)} failed (see their lines above)" if failed
            else "Doctor: ok")
    counts = f"{passed} passed, {len(failed)} failed, {len(skipped)} skipped" + (
        f" ({', '.join(skipped)})" if skipped else "")
    where = (f"report: {report['report']} (attach it to bug reports)" if report.get("report")
             else "the report could not be written")
    return f"{head}; {counts}; {where}."


def write_report(report: dict[str, Any], root: Path) -> tuple[Path | None, str]:
    """Write ``report`` to ``ROOT/doctor/<time>.json`` (atomically), else to the temp folder.

    Returns:
        ``(path written or None, why the project folder could not take it)``.
    """
    name = f"{report['started'].replace(':', '-')}.json"
    problem = ""
    for folder in (root / REPORT_DIR, Path(tempfile.gettempdir()) / "nbutils-doctor"):
        path, again = folder / name, 1
        while path.exists():  # two runs within a second: keep both
            again += 1
            path = folder / f"{Path(name).stem}-{again}.json"
        try:
            report["report"] = str(path)
            atomic.write_json(path, report)
            return path, problem
        except OSError as err:
            explained = diskerrors.explain(err, root, "--root")
            problem = problem or (str(explained) if explained else f"{type(err).__name__}: {err}")
    report["report"] = None
    return None, problem


def run(cfg: DoctorConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every check, print each result, the table and the verdict; write and return the report.

    Raises:
        UserError: no model given and none in ``ROOT/project.json``.
    """
    from nbutils.core import models

    if not cfg.root:
        raise UserError("Say which project folder to check: --root DIR (PROJECT_ROOT; the report goes to "
                        "DIR/doctor/).")
    root = Path(cfg.root).expanduser().absolute()
    model = _model_of(cfg, root)
    models.quiet_transformers()
    started = datetime.datetime.now(datetime.timezone.utc)
    work = Paths.at(root).scratch / f"doctor-{os.getpid()}"
    ctx = steps.Context(root=root, model=model, sizes=steps.QUICK if cfg.quick else steps.FULL, work=work,
                        device=devices.pick_device("auto"), log=lambda line: log(f"    {line}"))
    log(f"nbutils doctor: {model} on {ctx.device}, project folder {root}" + (" (quick sizes)" if cfg.quick else ""))
    checks = []
    try:
        for number, (name, step, what) in enumerate(steps.STEPS, start=1):
            log(f"[{number}/{len(steps.STEPS)}] {name}: {what} ...")
            checks.append(run_step(name, step, ctx))
            log(f"  {checks[-1]['status'].upper()} {name} ({checks[-1]['numbers']['check_seconds']:.1f} s): "
                f"{checks[-1]['reason']}")
    finally:
        ctx.close()
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "verdict": "problems" if any(c["status"] == steps.FAIL for c in checks) else "ok",
        "checks": checks, "model": model, "root": str(root), "device": ctx.device, "quick": cfg.quick,
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "seconds": round(time.time() - started.timestamp(), 1),
        "versions": _versions(), "report": None,
    }
    path, problem = write_report(report, root)
    if problem:
        log(f"Could not write the report to {root / REPORT_DIR}: {problem}" + (f" It is in {path}." if path else ""))
    log("\n" + table(checks))
    log(verdict_line(report))
    return report


def run_doctor(project, *, quick: bool | None = None) -> dict[str, Any]:
    """Notebook cell (00_setup, 02_train): the doctor on the project's folder and model.

    Args:
        project: From ``colab.connect`` / ``colab.create_project``.
        quick: Small sizes. None: only for the embedded ``tiny`` test models (the demo, the tests),
            whose figures say nothing about a real model anyway.

    Raises:
        UserError: after the table, when a check failed (so *Run all* stops before hours of work).
    """
    from nbutils.core import models

    if quick is None:
        quick = models.is_tiny(project.model)
    report = run(DoctorConfig(root=str(project.paths.root), model=project.model, quick=quick))
    if report["verdict"] != "ok":
        failed = ", ".join(c["name"] for c in report["checks"] if c["status"] == steps.FAIL)
        raise UserError(f"The doctor found problems ({failed}): see their lines above. Please attach "
                        f"{report['report']} to a bug report; fix what the lines say, or skip this cell to go on.")
    return report


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_cli(parser) -> None:
    """Options of ``python -m nbutils doctor``."""
    config.add_arguments(parser, DoctorConfig)


def run_cli(args) -> dict[str, Any]:
    """``python -m nbutils doctor``: the report is the last stdout line."""
    return run(config.from_args(DoctorConfig, args), log=lambda line: print(line, flush=True))


def exit_status(report: dict[str, Any]) -> int:
    """0 unless a check failed."""
    return 0 if report.get("verdict") == "ok" else 1

