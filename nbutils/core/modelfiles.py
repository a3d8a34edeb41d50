"""What a MusicGen folder or Hub id holds besides its weights, and why loading it failed.

* **Melody checkpoints without torchaudio.** transformers' ``MusicgenMelodyProcessor`` needs
  torchaudio (no CPU build for the torch used here; Colab has it) -- but only for its feature
  extractor, which this suite never runs: it computes chroma itself (``nbutils.core.melody``).
  So a melody checkpoint's processor is built from its tokenizer alone, with or without
  torchaudio, and the feature extractor's settings (``n_fft``, ``hop_length``, bins) are read
  from its config file: ``processor_config.json`` (transformers 5.x, the feature extractor
  nested) or ``preprocessor_config.json`` (transformers 4.x and the Hub checkpoints, flat).
* **Load errors name the real cause**: a folder missing what ``save_pretrained`` writes, a
  library that is not installed, a Hub id that does not exist or needs a token, no connection.
  Advice about Hub ids and the internet is given only for Hub ids.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from nbutils.core import melody
from nbutils.core.errors import UserError

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")  # transformers 5.x, then 4.x / Hub
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")  # either one loads T5's tokenizer
KNOWN_HUB = "facebook/musicgen-small, -medium, -large, -melody, ..."
_MISSING_LIBRARY = re.compile(r"requires the (\w+) library")


def is_local(name: str) -> bool:
    """Whether ``name`` means a folder rather than a Hub id (an absolute or ./ path, or one that exists)."""
    path = Path(name).expanduser()
    return path.is_absolute() or name.startswith(".") or path.exists() or name.count("/") > 1


def check_local(name: str) -> None:
    """Refuse a folder that does not exist or is not a ``save_pretrained`` MusicGen folder."""
    path = Path(name).expanduser()
    if is_local(name):
        if not path.is_dir():
            raise UserError(f"Model folder '{name}' does not exist. Pass a Hub id (e.g. facebook/musicgen-small), "
                            "a folder written by save_pretrained, or 'tiny'.")
        if not (path / "config.json").exists():
            raise UserError(f"'{name}' has no config.json: it is not a save_pretrained MusicGen folder.")


def _chain(err: BaseException) -> list[BaseException]:
    seen = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def load_error(name: str, err: Exception) -> UserError:
    """The ``UserError`` for a failed load of ``name``: what went wrong and what to do about it."""
    detail = f"{type(err).__name__}: {err}"
    causes = {type(e).__name__ for e in _chain(err)}
    library = _MISSING_LIBRARY.search(str(err))
    if library or isinstance(err, ImportError):
        what = library.group(1) if library else "a library"
        return UserError(f"Could not load model '{name}': it needs {what}, which is not installed ({detail}). "
                         f"Install it (pip install {what if library else '...'}) and run again.")
    if is_local(name):
        return UserError(f"Could not load model '{name}' from its folder: {detail}. A MusicGen folder holds what "
                         "save_pretrained writes: config.json and the weights (model.save_pretrained), and the "
                         "tokenizer files (processor.save_pretrained). Save them again, or pass a Hub id or 'tiny'.")
    if "RepositoryNotFoundError" in causes or "GatedRepoError" in causes:
        return UserError(f"Could not load model '{name}': the Hub has no such model, or it is private or gated "
                         f"({detail}). Check the id (known: {KNOWN_HUB}); for a private or gated model set "
                         "HF_TOKEN with access to it. Or pass a local save_pretrained folder, or 'tiny'.")
    if "LocalEntryNotFoundError" in causes or "ConnectionError" in causes:
        return UserError(f"Could not load model '{name}': it is not in the download cache and the Hub cannot be "
                         f"reached ({detail}). Check your internet connection (and that HF_HUB_OFFLINE is not set), "
                         "or pass a local save_pretrained folder, or 'tiny' for the offline test model.")
    return UserError(f"Could not load model '{name}': {detail}. Check the Hub id (known: {KNOWN_HUB}) and HF_TOKEN, "
                     "or pass a local save_pretrained folder, or 'tiny' for the offline test model.")


# ---------------------------------------------------------------------------------------------
# Melody checkpoints: the tokenizer, and the feature extractor's chroma settings
# ---------------------------------------------------------------------------------------------


def _read_json(name: str, filename: str) -> dict[str, Any] | None:
    """``filename`` of a folder or Hub repo as a dict (downloaded if needed), or None if it has none."""
    if is_local(name):
        path = Path(name).expanduser() / filename
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    from transformers.utils import cached_file

    try:
        found = cached_file(name, filename, _raise_exceptions_for_missing_entries=False)
    except Exception as err:  # noqa: BLE001 - no connection, no repo...: the caller's message
        raise load_error(name, err) from err
    return json.loads(Path(found).read_text(encoding="utf-8")) if found else None


def feature_extractor_config(name: str) -> dict[str, Any] | None:
    """The feature extractor's saved settings (5.x nested or 4.x flat layout), or None if there are none."""
    for filename in PROCESSOR_FILES:
        values = _read_json(name, filename)
        if values is None:
            continue
        nested = values.get("feature_extractor")
        return nested if isinstance(nested, dict) else values
    return None


def chroma_settings(name: str) -> melody.ChromaSettings:
    """How the melody checkpoint ``name`` makes chroma: its feature extractor's settings.

    A folder whose processor was saved without a melody feature extractor (the embedded
    ``tiny-melody`` saves an EnCodec one) gets the released checkpoints' settings.
    """
    values = feature_extractor_config(name) or {}
    if "n_fft" not in values and "hop_length" not in values:
        return melody.ChromaSettings()
    try:
        return melody.ChromaSettings.from_feature_extractor(values)
    except (TypeError, ValueError) as err:
        raise UserError(f"The feature extractor settings of '{name}' are not numbers ({err}): fix or re-save "
                        "its processor_config.json / preprocessor_config.json.") from err


def melody_processor(name: str, audio_channels: int, sample_rate: int):
    """A melody checkpoint's processor from its tokenizer, without torchaudio.

    Returns a ``MusicgenProcessor`` (tokenizer + EnCodec feature extractor, as the embedded
    ``tiny-melody`` has): the suite only ever uses its tokenizer; chroma comes from ``chroma_settings``.
    """
    from transformers import AutoTokenizer, EncodecFeatureExtractor, MusicgenProcessor

    if is_local(name) and not any((Path(name).expanduser() / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"'{name}' has no tokenizer files ({' or '.join(TOKENIZER_FILES)}): save the processor "
                        "into the folder too (processor.save_pretrained(folder), or tokenizer.save_pretrained).")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as err:  # noqa: BLE001
        raise load_error(name, err) from err
    features = EncodecFeatureExtractor(feature_size=audio_channels, sampling_rate=sample_rate)
    return MusicgenProcessor(feature_extractor=features, tokenizer=tokenizer)
