"""Load a LoRA adapter onto MusicGen, from wherever it was saved, and refuse one made for another model.

An adapter is given as one string, which can be:

* a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``), e.g. the training
  run's ``adapters/best`` or ``adapters/final``, one made by another tool, or a copy on Drive;
* a Hugging Face Hub repo id of such a folder (``user/musicgen-lofi-lora``), downloaded by peft;
* a training step checkpoint ``checkpoints/step-000500/`` (a PEFT folder plus ``state.pt``);
* a training state file ``latest.pt`` (``step``, ``lora`` weights, ``lora_config``, ``base_model``);
* a training run folder (``runs/lora``): its ``adapters/best``, else ``adapters/final``, else
  ``latest.pt``.

Before anything is attached, the adapter is checked against the model, and a mismatch is a
``UserError`` naming both models and what to pass instead:

* both the adapter's recorded base model and the model given are Hub ids, and they differ;
* the facts training records in every adapter (``base_model.json``, or ``base_facts`` in a
  training state: model type, codebooks, audio channels, decoder width) differ from the
  model's (adapters without that record, older or from other tools, skip this check);
* a LoRA weight's module does not exist in the model, or its size differs.

A different *name* with fitting shapes (a Drive path versus the Hub id of the same model) is
only a warning. Target modules are whatever the adapter's config
says, so adapters that also adapt ``enc_to_dec_proj``, ``fc1``/``fc2``, ``lm_heads`` or the
code embeddings load as well as ours.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

from nbutils.core import compat, models
from nbutils.core.errors import UserError

PEFT_CONFIG = "adapter_config.json"
STATE_FILE = "state.pt"  # in each training step checkpoint: the same dict as latest.pt
LATEST = "latest.pt"
RUN_ADAPTERS = ("adapters/best", "adapters/final")  # preferred order inside a training run folder
WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # what peft saves, newest format first
FINGERPRINT_CHARS = 12  # hex digits of the weights file's sha256 kept as the adapter's fingerprint
PEFT_PREFIX = "base_model.model."  # what get_peft_model_state_dict puts before module paths
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_[A-Za-z_]+?)(?:\.weight)?$")


@dataclasses.dataclass
class Adapter:
    """A LoRA adapter read into memory, not yet attached to a model."""

    source: str
    """What the user passed (folder, file, or Hub id)."""
    kind: str
    """``peft`` (folder or Hub) or ``training-state`` (``latest.pt`` / ``state.pt``)."""
    location: str
    """The folder, file or Hub id actually read."""
    config: Any
    """The ``peft.LoraConfig``."""
    weights: dict
    """LoRA tensors, keys as ``get_peft_model_state_dict`` gives them (without adapter name)."""
    base_model: str | None = None
    """The model the adapter says it was trained on (``base_model_name_or_path``)."""
    step: int | None = None
    """Training step, when known."""
    base_facts: dict[str, Any] | None = None
    """What training recorded about the base model (see ``base_facts``), None for older adapters."""
    fingerprint: str = ""
    """Short sha256 of the weights file: changes whenever the adapter is retrained in place."""

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the adapter, for sidecars and tables."""
        return {
            "source": self.source, "kind": self.kind, "location": self.location,
            "base_model": self.base_model, "step": self.step, "fingerprint": self.fingerprint,
            "r": getattr(self.config, "r", None),
            "target_modules": _jsonable_targets(getattr(self.config, "target_modules", None)),
        }

    @property
    def label(self) -> str:
        """Short name for tables and plots: ``lora`` or ``lora@step-500``."""
        return f"lora@step-{self.step}" if self.step is not None and self.kind == "training-state" else "lora"


def _jsonable_targets(targets: Any) -> Any:
    return sorted(targets) if isinstance(targets, (set, list, tuple)) else targets


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _looks_like_hub_id(spec: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", spec)) and not Path(spec).expanduser().exists()


def _step_of_folder(folder: Path) -> int | None:
    match = re.fullmatch(r"step-(\d+)", folder.name)
    return int(match.group(1)) if match else None


def read_peft(location: str, source: str | None = None) -> Adapter:
    """Read a PEFT adapter folder or Hub repo id (peft downloads Hub adapters)."""
    from peft import PeftConfig, load_peft_weights

    try:
        config = PeftConfig.from_pretrained(location)
        weights = load_peft_weights(location, device="cpu")
    except Exception as err:  # noqa: BLE001 - network, auth and format errors become one message
        raise UserError(
            f"Could not load the LoRA adapter '{location}': {type(err).__name__}: {err}. Pass a folder with "
            f"{PEFT_CONFIG} and adapter_model.safetensors, a Hub repo id (set HF_TOKEN for private repos), "
            f"or a training {LATEST}."
        ) from err
    if getattr(config, "peft_type", None) is not None and str(config.peft_type).split(".")[-1].upper() != "LORA":
        raise UserError(f"'{location}' is a {config.peft_type} adapter; only LoRA adapters are supported.")
    folder = Path(location)
    step = _step_of_folder(folder) if folder.is_dir() else None
    record = folder / models.BASE_RECORD
    facts = json.loads(record.read_text(encoding="utf-8")) if folder.is_dir() and record.is_file() else None
    return Adapter(
        source=source or location, kind="peft", location=str(location), config=config, weights=weights,
        base_model=config.base_model_name_or_path, step=step, base_facts=facts,
    )


def lora_config_from_dict(values: dict[str, Any]):
    """A ``peft.LoraConfig`` from the JSON-able dict training stores (unknown keys are ignored,
    so a state written by a newer peft still loads)."""
    from peft import LoraConfig

    known = {f.name for f in dataclasses.fields(LoraConfig)}
    kwargs = {k: v for k, v in values.items() if k in known and k not in ("peft_type", "task_type")}
    return LoraConfig(**kwargs)


def read_training_state(path: str | os.PathLike, source: str | None = None) -> Adapter:
    """Read a training ``latest.pt`` / ``state.pt`` (``torch.load(weights_only=True)``)."""
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated / foreign file
        raise UserError(
            f"Could not read training state {path}: {type(err).__name__}: {err}. If training was killed while "
            "writing, use the run's adapters/final or a checkpoints/step-XXXXXX folder instead."
        ) from err
    missing = [k for k in ("lora", "lora_config") if k not in state]
    if not isinstance(state, dict) or missing:
        raise UserError(f"{path} is not a training state of this suite (missing {', '.join(missing) or 'everything'}).")
    config = lora_config_from_dict(state["lora_config"])
    config.base_model_name_or_path = state.get("base_model")
    return Adapter(
        source=source or str(path), kind="training-state", location=str(path), config=config,
        weights=dict(state["lora"]), base_model=state.get("base_model"),
        step=int(state["step"]) if "step" in state else None, base_facts=state.get("base_facts"),
    )


def locate(spec: str | os.PathLike) -> tuple[str, str]:
    """``(kind, location)`` of the adapter ``spec`` names, without reading it.

    ``kind`` is ``peft`` (a folder or Hub id) or ``training-state`` (a ``latest.pt`` / ``state.pt``).
    """
    spec = str(spec).strip()
    path = Path(spec).expanduser()
    if path.is_file():
        return "training-state", str(path)
    if path.is_dir():
        if (path / PEFT_CONFIG).is_file():
            return "peft", str(path)
        for sub in RUN_ADAPTERS:
            if (path / sub / PEFT_CONFIG).is_file():
                return "peft", str(path / sub)
        if (path / LATEST).is_file():
            return "training-state", str(path / LATEST)
        raise UserError(
            f"No LoRA adapter in {path}: expected {PEFT_CONFIG} (a PEFT folder), or a training run with "
            f"{' or '.join(RUN_ADAPTERS)} or {LATEST}. Has training saved anything yet?"
        )
    if _looks_like_hub_id(spec):
        return "peft", spec
    raise UserError(
        f"Adapter '{spec}' is neither an existing folder or file nor a Hub repo id (user/name). "
        "Check the path (on Colab: /content/drive/MyDrive/...)."
    )


def resolve(spec: str | os.PathLike) -> Adapter:
    """Read the adapter named by ``spec`` (see the module docstring for what ``spec`` may be)."""
    source = str(spec).strip()
    kind, location = locate(source)
    if kind == "training-state":
        adapter = read_training_state(location, source=source)
    else:
        adapter = read_peft(location, source=source)
        state = Path(location) / STATE_FILE
        if adapter.step is None and Path(location).is_dir() and state.is_file():
            adapter.step = read_training_state(state).step
    adapter.fingerprint = fingerprint(source)
    return adapter


def weights_file(spec: str | os.PathLike) -> Path | None:
    """The file holding the LoRA weights ``spec`` names (a Hub adapter: its cached download, if any)."""
    kind, location = locate(spec)
    if kind == "training-state":
        return Path(location)
    folder = Path(location)
    if folder.is_dir():
        return next((folder / name for name in WEIGHTS_FILES if (folder / name).is_file()), None)
    from huggingface_hub import try_to_load_from_cache

    for name in WEIGHTS_FILES:
        cached = try_to_load_from_cache(location, name)
        if isinstance(cached, str):
            return Path(cached)
    return None


def fingerprint(spec: str | os.PathLike) -> str:
    """Short sha256 of the adapter's weights file ('' when it cannot be found without downloading).

    Results made with an adapter (generated clips, a loaded pipeline) are tied to this, so an
    adapter retrained into the same folder is never mistaken for the old one.
    """
    file = weights_file(spec)
    if file is None:
        return ""
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:FINGERPRINT_CHARS]


# ---------------------------------------------------------------------------------------------
# Checking and attaching
# ---------------------------------------------------------------------------------------------


def module_path(key: str) -> tuple[str, str] | None:
    """``(module path, lora part)`` of a LoRA weight key, without the PEFT prefix; None for other keys."""
    match = _LORA_KEY.match(key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key)
    return (match.group("module"), match.group("part")) if match else None


def _shape_problem(module, part: str, shape: tuple[int, ...]) -> str | None:
    """Why a LoRA tensor of ``shape`` cannot adapt ``module`` (None if it can)."""
    import torch.nn as nn

    module = getattr(module, "base_layer", module)  # already wrapped by peft
    expect: tuple[int | None, int | None] | None = None
    if isinstance(module, nn.Linear):
        expect = {"lora_A": (None, module.in_features), "lora_B": (module.out_features, None)}.get(part)
    elif isinstance(module, nn.Embedding):
        expect = {
            "lora_embedding_A": (None, module.num_embeddings), "lora_embedding_B": (module.embedding_dim, None),
        }.get(part)
    if expect is None or len(shape) != 2:
        return None
    for axis, want in enumerate(expect):
        if want is not None and shape[axis] != want:
            kind = "inputs" if axis == 1 else "outputs"
            return f"its {part} has {shape[axis]} {kind}, the model's layer has {want}"
    return None


def mismatches(model, adapter: Adapter) -> list[str]:
    """Human lines for every LoRA weight that does not fit ``model`` (empty when all fit)."""
    modules = dict(model.named_modules())
    problems = []
    for key, tensor in adapter.weights.items():
        parsed = module_path(key)
        if parsed is None:
            continue
        name, part = parsed
        if name not in modules:
            problems.append(f"{name}: no such layer in the model")
            continue
        why = _shape_problem(modules[name], part, tuple(tensor.shape))
        if why:
            problems.append(f"{name}: {why}")
    return problems


def _wrong_base(adapter: Adapter, model_name: str, problems: list[str],
                what: str = "LoRA weights do not fit") -> UserError:
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return UserError(
        f"The adapter '{adapter.source}' was made for base model '{adapter.base_model or 'unknown'}', "
        f"but the model given is '{model_name}', and its {what} ({shown}). "
        f"Use --model / MODEL = '{adapter.base_model or 'the model it was trained on'}', or an adapter "
        f"trained on '{model_name}'."
    )


def _fact_problems(recorded: dict[str, Any] | None, model) -> list[str]:
    """``field: adapter value vs model value`` for every recorded fact the model does not share."""
    if not recorded:
        return []  # an adapter from before the record existed, or from another tool
    actual = models.base_facts(model)
    return [f"{field}: the adapter's base has {recorded[field]}, the model given has {actual[field]}"
            for field in actual if field in recorded and recorded[field] != actual[field]]


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and _looks_like_hub_id(str(name))


def _check_base(model, adapter: Adapter, model_name: str) -> None:
    """Refuse an adapter whose recorded base is another Hub model, or whose base facts differ."""
    recorded = adapter.base_model
    if _is_hub_id(recorded) and _is_hub_id(model_name) and str(recorded).lower() != str(model_name).lower():
        raise UserError(
            f"The adapter '{adapter.source}' was trained on '{recorded}', but the model given is '{model_name}'. "
            f"Pass --model / MODEL = '{recorded}' (the base it was trained on), "
            f"or an adapter trained on '{model_name}'."
        )
    problems = _fact_problems(adapter.base_facts, model)
    if problems:
        raise _wrong_base(adapter, model_name, problems, what="recorded base model differs")


def _same_model(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return True  # nothing recorded: nothing to warn about
    if _is_hub_id(a) and _is_hub_id(b):
        return a.lower() == b.lower()  # the Hub resolves repo ids case-insensitively
    norm = lambda s: str(Path(s).expanduser().resolve()) if Path(s).expanduser().exists() else s.rstrip("/")  # noqa: E731
    return norm(a) == norm(b)


def _check(model, adapter: Adapter, model_name: str) -> None:
    """Refuse an adapter that does not fit ``model`` (see ``attach``); warn when it names another base."""
    _check_base(model, adapter, model_name)
    problems = mismatches(model, adapter)
    if problems or not any(module_path(k) for k in adapter.weights):
        raise _wrong_base(adapter, model_name, problems or ["it holds no LoRA weights"])
    if not _same_model(adapter.base_model, model_name):
        warnings.warn(
            f"The adapter '{adapter.source}' names base model '{adapter.base_model}', the model given is "
            f"'{model_name}'. Its weights fit, so it is used; make sure both are the same model.",
            UserWarning, stacklevel=3,
        )


def _peft_weights(adapter: Adapter) -> dict:
    return {k if k.startswith(PEFT_PREFIX) else PEFT_PREFIX + k: v for k, v in adapter.weights.items()}


def attach(model, adapter: Adapter, model_name: str):
    """Attach ``adapter`` to ``model`` (in place) and return the ``peft.PeftModel`` wrapping it.

    Raises:
        UserError: the adapter was trained on another Hub model, its recorded base facts differ
            from the model's, or its weights do not fit (names both models).

    Warns:
        UserWarning: the adapter names another base model but fits (e.g. a local copy of it).
    """
    from peft import get_peft_model, set_peft_model_state_dict

    _check(model, adapter, model_name)
    config = dataclasses.replace(adapter.config, inference_mode=True, base_model_name_or_path=model_name)
    try:
        with warnings.catch_warnings(), compat.peft_wrapping():  # peft repeats the base-name warning above
            warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*was renamed")
            peft_model = get_peft_model(model, config)
    except ValueError as err:  # peft: "Target modules ... not found in the base model"
        raise _wrong_base(adapter, model_name, [str(err)]) from err
    result = set_peft_model_state_dict(peft_model, _peft_weights(adapter))
    unexpected = [k for k in result.unexpected_keys if "lora_" in k]
    if unexpected:
        peft_model.unload()
        raise _wrong_base(adapter, model_name, [f"{k}: not adapted by its own config" for k in unexpected])
    return peft_model.eval()


def _layout(config) -> dict[str, Any]:
    """What decides the LoRA layers peft builds from ``config``: everything but names and mode."""
    values = config.to_dict()
    for key in ("base_model_name_or_path", "revision", "inference_mode"):
        values.pop(key, None)
    values["target_modules"] = _jsonable_targets(values.get("target_modules"))
    return values


def reload_weights(peft_model, adapter: Adapter, model_name: str) -> bool:
    """Put ``adapter``'s weights into the LoRA layers of ``peft_model`` when they are exactly the
    layers ``attach`` would build for it (same LoRA config, the same weight names); False, and
    nothing changed, otherwise.

    Every LoRA weight is overwritten, so the model is then what ``attach`` on the bare base gives,
    without rebuilding ~100 layers (evaluation switches adapters this way).
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    weights = _peft_weights(adapter)
    if _layout(peft_model.peft_config["default"]) != _layout(adapter.config):
        return False
    if set(get_peft_model_state_dict(peft_model)) != set(weights):
        return False
    _check(peft_model.get_base_model(), adapter, model_name)
    set_peft_model_state_dict(peft_model, weights)
    return True


def load_onto(model, spec: str, model_name: str):
    """``resolve`` + ``attach``: returns ``(peft_model, adapter)``."""
    adapter = resolve(spec)
    return attach(model, adapter, model_name), adapter
