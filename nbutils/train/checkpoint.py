"""Training checkpoints: ``OUT/latest.pt``, its fallback, step folders, RNG state, resume checks.

Layout of a run folder ``OUT``::

    latest.pt                          everything needed to continue (``state_of`` / ``restore``)
    previous.pt                        the save before: the old latest.pt, renamed (not copied) when
                                       the next save arrived; the fallback if latest.pt is damaged
    checkpoints/step-000200/           the PEFT adapter of a step-count save (not the optimizer:
    checkpoints/step-000400/           latest.pt holds that) ... the newest ``keep`` of them

Every file is written through a temporary name and renamed into place (``nbutils.atomic``):
a kill at any moment leaves a complete ``latest.pt`` or ``previous.pt``. Older step folders are
pruned only after the new one is complete. Checkpoints hold only tensors, numbers, strings, lists
and dicts, so ``torch.load(path, weights_only=True)`` reads them (no pickled code).

Drive counts what is written, and what is replaced or deleted sits in its Trash: a save writes
the full state once (``latest.pt``) and the adapter once (the step folder), never a second copy of
the optimizer state. Step folders written by older versions also hold ``state.pt`` (a copy of
latest.pt); they are read as fallbacks and pruned like the others.

No save writes non-finite LoRA weights or optimizer state (``guard.Diverged`` instead), and a
``latest.pt`` holding them (an older version's, after training diverged) is refused on resume,
naming the newest good checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from nbutils.core import atomic, config, faults, models
from nbutils.core.errors import UserError
from nbutils.train import build, guard, lora, saves
from nbutils.train import dataset as data

LATEST = "latest.pt"
PREVIOUS = "previous.pt"
CHECKPOINTS = "checkpoints"
STATE = "state.pt"  # in step folders written by versions before 0.2: a copy of latest.pt
ADAPTER_FILE = "adapter_model.safetensors"
FORMAT = "nbutils-train/1"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


# ---------------------------------------------------------------------------------------------
# A step's state: taken as one piece, RNG stored as tensors / ints / lists (weights_only loads it)
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def hold_interrupts():
    """Delay Ctrl-C / Colab's stop button until the block is done (an optimizer update is atomic).

    The trainer updates the weights, the data cursor, the step and the RNG snapshot inside it, so
    a checkpoint never holds some of them from one step and the rest from the next.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def rng_state() -> dict[str, Any]:
    """Snapshot of every random generator training touches (torch, CUDA, python, numpy)."""
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "python": [int(version), [int(v) for v in internal], gauss],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a ``rng_state`` snapshot."""
    import torch

    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        # One state per GPU of the machine that saved; this one may have fewer (2 x T4 -> 1 GPU).
        for index, generator in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(generator, index)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))


# ---------------------------------------------------------------------------------------------
# What a checkpoint holds: a trainer's state, both ways
# ---------------------------------------------------------------------------------------------


def state_of(trainer) -> dict[str, Any]:
    """Everything ``latest.pt`` holds for ``trainer`` (loads with ``torch.load(..., weights_only=True)``)."""
    import peft
    import torch
    import transformers

    scaler = trainer.accelerator.scaler
    return {
        "format": FORMAT,
        "step": int(trainer.step),
        "epoch": int(trainer.cursor.epoch),
        "cursor": trainer.cursor.to_dict(),
        "lora": lora.state_dict(trainer.unwrapped()),
        "lora_config": trainer.lora_config,
        "base_model": trainer.model_name,
        "base_facts": models.base_facts(trainer.base),
        "config": config.to_dict(trainer.cfg),
        "identity": json.loads(json.dumps(trainer.identity())),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": trainer.rng_after_step,
        "guard": trainer.guard.state(),
        "wandb_run_id": trainer.wandb_run_id,
        "train_loss": trainer.last_train,
        "val_loss": trainer.last_val,
        "best_val_loss": trainer.best_val,
        "best_step": trainer.best_step,
        "total_steps": int(trainer.total_steps),
        "world_size": int(trainer.accelerator.num_processes),
        "spec": trainer.spec.to_dict(),
        "versions": {"torch": str(torch.__version__), "transformers": str(transformers.__version__),
                     "peft": str(peft.__version__)},
    }


def restore(trainer, state: dict[str, Any], meaningful: Iterable[str], harmless: Iterable[str]) -> list[str]:
    """Continue ``trainer`` from ``state``: weights, optimizer, scheduler, scaler, cursor, RNG.

    Returns:
        Notes about accepted (``harmless``) setting changes.

    Raises:
        UserError: when a ``meaningful`` setting differs (see ``check_resume``).
    """
    saved = {**state["config"], **state.get("identity", {})}
    notes = check_resume(saved, trainer.identity(), meaningful, harmless, trainer.out)
    lora.load_state_dict(trainer.unwrapped(), state["lora"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    build.follow_current_schedule(trainer.optimizer, trainer.scheduler)
    scaler = trainer.accelerator.scaler
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    trainer.step = trainer.resumed_from = trainer.saved_at = int(state["step"])
    trainer.cursor = data.Cursor.from_dict(state["cursor"])
    trainer.best_val, trainer.best_step = state.get("best_val_loss"), state.get("best_step")
    trainer.last_val, trainer.last_train = state.get("val_loss"), state.get("train_loss")
    trainer.wandb_run_id = state.get("wandb_run_id")
    trainer.rng_after_step = state["rng"]  # applied by Trainer.start() right before the first step
    trainer.guard.load(state.get("guard"))  # absent in checkpoints written before the step guard
    return notes


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def step_dir(out: str | os.PathLike, step: int) -> Path:
    return Path(out) / CHECKPOINTS / step_name(step)


def list_steps(out: str | os.PathLike) -> list[int]:
    """Steps of the complete step folders in ``OUT/checkpoints``, ascending."""
    folder = Path(out) / CHECKPOINTS
    if not folder.is_dir():
        return []
    steps = []
    for entry in folder.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and ((entry / ADAPTER_FILE).exists() or (entry / STATE).exists()):
            steps.append(int(match.group(1)))
    return sorted(steps)


def save(out: str | os.PathLike, state: dict[str, Any], write_adapter: Callable[[Path], None], keep: int, *,
         folder: bool = True, keep_previous: bool = True) -> tuple[dict[str, int], int]:
    """Write ``latest.pt`` and, for a step-count save, ``checkpoints/step-XXXXXX/``; prune to ``keep`` folders.

    Args:
        out: The run folder.
        state: The checkpoint (must contain an int ``step``).
        write_adapter: Writes the PEFT adapter files into the folder it is given.
        keep: Step folders to keep (0: none).
        folder: Write a step folder (False: a time-based save, latest.pt only).
        keep_previous: Rename the current latest.pt to previous.pt first (False when it holds the
            same step, or is not this run's last good save: the fallback stays as it is).

    Returns:
        ``({name: bytes written}, bytes replaced or deleted)``.

    Raises:
        guard.Diverged: the LoRA weights or the optimizer state hold NaN or inf; nothing was written.
    """
    import torch

    problems = guard.state_problems(state)
    if problems:
        raise guard.Diverged(
            f"Not saving step {state['step']}: {len(problems)} of {guard.tensor_count(state)} tensors of the LoRA "
            f"weights and optimizer state are NaN or inf ({', '.join(problems[:3])}, ...): training diverged. "
            f"The checkpoints in {out} are kept as they were. Lower the learning rate (in a new run) or, with "
            "fp16, use bf16 or fp32."
        )
    out = Path(out)
    step = int(state["step"])
    latest, previous = out / LATEST, out / PREVIOUS
    rotate = keep_previous and latest.exists()
    removed = saves.size_of(previous if rotate else latest)
    with atomic.atomic_path(latest) as tmp:
        torch.save(state, tmp)
        faults.point("latest-written", step=step)  # killed here: the previous latest.pt is untouched
        if rotate:  # a rename costs no upload; the older previous.pt is what goes to the Trash
            os.replace(latest, previous)
            faults.point("latest-kept", step=step)  # killed here: previous.pt is complete, no latest.pt
    written = {LATEST: latest.stat().st_size}
    if folder and keep > 0:
        target = step_dir(out, step)
        removed += saves.size_of(target)  # the same step saved again replaces its folder
        with atomic.atomic_dir(target) as tmp:
            write_adapter(tmp)
            faults.point("checkpoint-dir", step=step)  # killed here: a stale temp folder, removed on resume
        written[f"{CHECKPOINTS}/{step_name(step)}"] = saves.size_of(target)
    removed += prune(out, keep)  # only now: the new checkpoint is complete
    return written, removed


def prune(out: str | os.PathLike, keep: int) -> int:
    """Delete all but the newest ``keep`` step folders; return the bytes deleted."""
    steps = list_steps(out)
    deleted = 0
    for step in steps[:-keep] if keep > 0 else steps:
        deleted += saves.size_of(step_dir(out, step))
        shutil.rmtree(step_dir(out, step))
    return deleted


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError("not a training checkpoint")
    return state


def clean(out: str | os.PathLike) -> None:
    """Settle what a killed writer left behind: temporary files, and ``.old`` folders of an
    ``atomic_dir`` replacement (restored if the new folder never arrived, else deleted)."""
    out = Path(out)
    for folder in (out, out / CHECKPOINTS, out / "adapters", out / "samples"):
        atomic.remove_stale_temps(folder)
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.is_dir() and entry.name.endswith(".old"):
                target = entry.with_name(entry.name[: -len(".old")])
                if target.exists():
                    shutil.rmtree(entry)
                else:
                    atomic.recover_dir(target)


def load(out: str | os.PathLike, log: Callable[[str], None] = print, *,
         settle: bool = True) -> tuple[dict[str, Any], Path] | None:
    """The newest readable checkpoint of ``out``: ``latest.pt``, else ``previous.pt``, else the newest
    step folder holding a ``state.pt`` (older versions).

    A damaged file (e.g. a Drive sync gone wrong) is reported and skipped rather than ending the
    run. A readable one with non-finite weights or optimizer state is refused (``UserError``),
    naming the newest good checkpoint and how to continue from it.

    Args:
        out: The run folder.
        log: Where to report a damaged file.
        settle: Run ``clean`` first (the trainer does it on the main process only).

    Returns:
        ``(state, path)`` or None when the folder holds no checkpoint (a fresh start).
    """
    out = Path(out)
    if settle:
        clean(out)
    candidates = [out / LATEST, out / PREVIOUS] + [step_dir(out, s) / STATE for s in reversed(list_steps(out))]
    found = [p for p in candidates if p.exists()]
    poisoned: list[tuple[Path, dict[str, Any], list[str]]] = []
    for path in found:
        try:
            state = _load(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file: say so, try the next copy
            log(f"Warning: cannot read {path} ({type(err).__name__}: {err}); trying an older checkpoint.")
            continue
        problems = guard.state_problems(state)
        if problems:
            poisoned.append((path, state, problems))
        elif poisoned:
            raise UserError(_poisoned_message(out, poisoned, (path, state)))
        else:
            return state, path
    if poisoned:
        raise UserError(_poisoned_message(out, poisoned, None))
    if found:
        raise UserError(f"No readable checkpoint in {out} ({len(found)} damaged). Delete {out} to start fresh.")
    return None


def _poisoned_message(out: Path, poisoned: list, good: tuple[Path, dict[str, Any]] | None) -> str:
    """Why a non-finite checkpoint is refused, and how to continue from the newest good one."""
    path, state, problems = poisoned[0]
    lines = [f"{path} (step {state['step']}) holds non-finite values: {len(problems)} of {guard.tensor_count(state)} "
             f"tensors of its LoRA weights and optimizer state are NaN or inf ({', '.join(problems[:3])}, ...). An "
             "older version of this suite saved it after training had diverged; continuing from it would train "
             "on NaN."]
    if good is not None:
        doomed = [str(p.parent if p.name == STATE else p) for p, _, _ in poisoned]
        lines.append(f"The newest good checkpoint is {good[0]} (step {good[1]['step']}). To continue from it, delete "
                     f"(or move out of the run folder) {', '.join(doomed)}, then run the same command or cell again; "
                     "if the loss diverges again, lower the learning rate in a new run.")
    else:
        lines.append(f"No checkpoint in {out} holds finite values to continue from.")
    lines.append(f"To start over instead, use a new run name (RUN_NAME / --out) or delete {out}.")
    return "\n".join(lines)


def check_resume(saved: dict[str, Any], current: dict[str, Any], meaningful: Iterable[str],
                 harmless: Iterable[str], out: str | os.PathLike) -> list[str]:
    """Compare a checkpoint's settings with the current ones before continuing.

    Args:
        saved: The settings stored in the checkpoint.
        current: The settings of this run.
        meaningful: Keys whose change alters what the weights mean (model, LoRA, data, ...).
        harmless: Keys that may change between sessions (max steps, save interval, logging ...).
        out: The run folder, for the message.

    Returns:
        Human notes about the accepted (harmless) changes.

    Raises:
        UserError: listing every meaningful difference and how to start fresh instead.
    """
    refused = ["  " + _change(k, saved.get(k), current.get(k)) for k in meaningful if saved.get(k) != current.get(k)]
    if refused:
        raise UserError(
            f"{out} holds a run with different settings, so it cannot be continued:\n" + "\n".join(refused)
            + f"\nTo keep training that run, change these back. To start a new run, use another output "
            f"folder (--out, or RUN_NAME in the notebook) or delete {out}."
        )
    return [_change(k, saved.get(k), current.get(k)) + " (accepted)" for k in harmless
            if k in saved and saved.get(k) != current.get(k)]


def _change(key: str, old: Any, new: Any, shown: int = 5) -> str:
    """``key: old -> new``; for mappings (the data's shard table) which entries were added, changed, removed."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return f"{key}: {old!r} -> {new!r}"

    def names(keys: list[str]) -> str:
        more = f", ... ({len(keys) - shown} more)" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    groups = (("added", sorted(new.keys() - old.keys())),
              ("changed", sorted(k for k in old.keys() & new.keys() if old[k] != new[k])),
              ("removed", sorted(old.keys() - new.keys())))
    return f"{key}: " + "; ".join(f"{len(keys)} {what} ({names(keys)})" for what, keys in groups if keys)
