"""WandB, optional everywhere: stages log when a run is active and stay silent otherwise.

``log`` and ``active`` are safe to call from any stage without caring whether wandb is
installed, logged in, offline or disabled. Secrets never pass through here: wandb reads
``WANDB_API_KEY`` from the environment (``nbutils.colab.use_secrets`` puts it there), configs
are scrubbed of secret-looking keys and values before they are sent, and code, environment
variables and git state are not captured.

Training uses ``start`` (a new run, or the run whose id the checkpoint stored, so a resumed
training continues the same WandB run), ``log_audio`` for samples, ``log_artifact`` for adapters
and ``finish``. Modes: ``online`` (needs ``WANDB_API_KEY`` or a prior ``wandb login``),
``offline`` (files under the run folder, ``wandb sync`` them later), ``disabled`` (nothing), and
``auto`` = ``WANDB_MODE`` if the environment sets it, else online when a key is available and
offline without one.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from nbutils.core.errors import UserError

MODES = ("auto", "online", "offline", "disabled")
# WANDB_MODE values wandb itself accepts, as our modes (``dryrun`` is its old name for offline).
ENV_MODES = {"online": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
# A key is secret-looking by its words (``hf_token``, ``apiKey``, ``client-secret``), not its letters:
# ``tokens`` (the token folder), ``max_new_tokens`` or ``tokenizer`` are settings worth seeing.
_SECRET_WORDS = {"secret", "secrets", "password", "passwd", "passphrase", "credential", "credentials", "apikey"}
_SECRET_LAST = {"token", "auth"}  # secret as the last word: hf_token, bearer_auth (not tokens, token_dir)
_KEY_OWNERS = {"api", "private", "access", "ssh"}  # api_key, private_key; a bare "key" is a track's musical key
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_SECRET_VALUE = re.compile(r"^(hf_[A-Za-z0-9]{10,}|[0-9a-f]{40}|sk-[A-Za-z0-9]{10,})$")


def _run():
    # Without an import of wandb there cannot be a run; importing it (1 s) just to find out is waste.
    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None)


def active() -> bool:
    """True when a wandb run is active in this process."""
    return _run() is not None


def log(metrics: dict[str, Any], step: int | None = None) -> None:
    """Log to the active wandb run; no-op without one."""
    run = _run()
    if run is not None:
        run.log(metrics, step=step)


def resolve_mode(mode: str) -> str:
    """The mode a run uses. ``auto`` follows ``WANDB_MODE`` when the environment sets it, else goes
    ``online`` with an API key (env or netrc) and ``offline`` (files in the run folder, for
    ``wandb sync``) without one. An explicit mode is used as given."""
    mode = (mode or "auto").lower()
    if mode not in MODES:
        raise UserError(f"Unknown wandb mode '{mode}'. Use one of: {', '.join(MODES)}.")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ENV_MODES:
        return ENV_MODES[env]
    return "online" if _has_key() else "offline"


def _has_key() -> bool:
    """A WandB API key in the environment or a prior ``wandb login`` (netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    except OSError:
        return False


NO_KEY = ("WandB mode 'online' needs an API key. In Colab: add WANDB_API_KEY in the Secrets panel (the key icon "
          "on the left), allow this notebook to read it and re-run the Connect cell; elsewhere: set the "
          "WANDB_API_KEY environment variable. Or set WANDB = \"offline\" (files to `wandb sync` later) or "
          "\"disabled\". Nothing was lost: re-running continues where training stopped.")


def check(mode: str) -> str:
    """The resolved mode; a ``UserError`` now, not after the model has loaded, if online has no key."""
    mode = resolve_mode(mode)
    if mode == "online" and not _has_key():
        raise UserError(NO_KEY)
    return mode


def secret_key(key: Any) -> bool:
    """True for a key that names a secret: ``hf_token``, ``token``, ``api_key``, ``WANDB_API_KEY``,
    ``password``, ``client_secret``; False for ``tokens``, ``max_new_tokens``, ``tokenizer``, ``key``."""
    words = [w.lower() for w in _WORD.findall(str(key))]
    if not words:
        return False
    pairs = set(zip(words, words[1:]))
    return (bool(_SECRET_WORDS.intersection(words)) or words[-1] in _SECRET_LAST
            or any(a in _KEY_OWNERS and b == "key" for a, b in pairs))


def scrub(values: Any) -> Any:
    """Copy of ``values`` without secret-looking keys or values (replaced by ``"<hidden>"``)."""
    if isinstance(values, dict):
        return {k: "<hidden>" if secret_key(k) else scrub(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return [scrub(v) for v in values]
    if isinstance(values, str) and _SECRET_VALUE.match(values):
        return "<hidden>"
    return values


def start(*, mode: str, project: str, directory: str | os.PathLike, config: dict[str, Any],
          run_id: str | None = None, name: str | None = None, job_type: str = "train") -> str | None:
    """Start (or resume, with ``run_id``) a wandb run; returns its id, or None when disabled.

    Args:
        mode: One of ``MODES``.
        project: The wandb project.
        directory: Where wandb keeps its files (a ``wandb/`` folder is created inside).
        config: Settings to record (scrubbed of secrets first).
        run_id: Id of the run to continue (stored in the checkpoint); None for a new run.
        name: Display name of the run.
        job_type: wandb's job type.
    """
    mode = resolve_mode(mode)
    if mode == "disabled":
        return None
    import wandb

    Path(directory).mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(save_code=False, disable_git=True, disable_job_creation=True)
    try:
        run = wandb.init(
            project=project, dir=str(directory), config=scrub(config), id=run_id, resume="allow" if run_id else None,
            name=name or None, job_type=job_type, mode=mode, settings=settings, reinit="finish_previous",
        )
    except wandb.errors.AuthenticationError as err:
        raise UserError(f"WandB refused the API key ({err}). {NO_KEY}") from None
    except wandb.errors.UsageError as err:
        advice = NO_KEY if mode == "online" and not _has_key() else (
            "Check the WandB settings (wandb_project, wandb_name), or set WANDB = \"offline\" or \"disabled\"; "
            "re-running continues where training stopped.")
        raise UserError(f"WandB could not start ({err}). {advice}") from None
    return run.id


def log_audio(key: str, audio, sample_rate: int, caption: str, step: int | None = None) -> None:
    """Log one clip (``(samples,)`` or ``(samples, channels)`` float array); no-op without a run."""
    run = _run()
    if run is None:
        return
    import wandb

    run.log({key: wandb.Audio(audio, sample_rate=sample_rate, caption=caption)}, step=step)


def log_artifact(folder: str | os.PathLike, name: str, kind: str = "lora-adapter",
                 aliases: list[str] | None = None, metadata: dict[str, Any] | None = None) -> None:
    """Upload a folder (an adapter) as a wandb artifact; no-op without a run."""
    run = _run()
    if run is None:
        return
    import wandb

    artifact = wandb.Artifact(name=re.sub(r"[^A-Za-z0-9._-]", "-", name), type=kind, metadata=scrub(metadata or {}))
    artifact.add_dir(str(folder))
    run.log_artifact(artifact, aliases=aliases or [])


def summary(values: dict[str, Any]) -> None:
    """Set summary values of the active run; no-op without one."""
    run = _run()
    if run is not None:
        run.summary.update(scrub(values))


def finish() -> None:
    """Finish the active run (flushes offline files); no-op without one."""
    run = _run()
    if run is not None:
        run.finish()
