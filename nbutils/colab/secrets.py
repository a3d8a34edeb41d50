"""Secrets: read from Colab's Secrets panel, else the environment, else a hidden prompt.

Values go into this process's environment only (where wandb and huggingface_hub read them): they
are never printed and never written to a file.
"""

from __future__ import annotations

import os
import sys

from nbutils.colab.drive import in_colab

SECRET_NAMES = ("WANDB_API_KEY", "HF_TOKEN")
SECRET_USES = {
    "WANDB_API_KEY": "optional: with it training logs to WandB online, without it offline into the run folder",
    "HF_TOKEN": "optional: needed only to push adapters to the Hub or to download gated models",
}


def _from_colab(name: str) -> tuple[str | None, str | None]:
    """(value, problem) from Colab's secrets panel; ``problem`` explains a missing value."""
    from google.colab import userdata

    denied = getattr(userdata, "NotebookAccessError", ())
    not_found = getattr(userdata, "SecretNotFoundError", ())
    try:
        return userdata.get(name) or None, None
    except denied:
        return None, "in Colab's Secrets panel but this notebook has no access (turn on 'Notebook access')"
    except not_found:
        return None, None
    except Exception as err:  # noqa: BLE001 - e.g. a TimeoutException: fall back, but say why
        return None, f"Colab's Secrets panel did not answer ({type(err).__name__})"


def _can_prompt() -> bool:
    """True if someone can answer a hidden prompt: a Jupyter frontend or a terminal."""
    try:
        from IPython import get_ipython
    except ImportError:
        get_ipython = lambda: None  # noqa: E731
    shell = get_ipython()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        return bool(getattr(shell.kernel, "_allow_stdin", True))
    return sys.stdin is not None and sys.stdin.isatty()


def _prompt(name: str) -> str | None:
    import getpass

    if not _can_prompt():
        return None
    value = getpass.getpass(f"{name} (input hidden; press Enter to skip): ")
    return value.strip() or None


def lookup_secret(name: str, *, prompt: bool = False) -> tuple[str | None, str]:
    """Find a secret: Colab ``userdata`` first, then the environment, then (optionally) a prompt.

    Returns:
        ``(value, source)``; source is ``"Colab secrets"``, ``"environment"`` or ``"prompt"``, or
        a short reason when the value is None.
    """
    problem = None
    if in_colab():
        value, problem = _from_colab(name)
        if value:
            return value, "Colab secrets"
    value = os.environ.get(name)
    if value:
        return value, "environment"
    if prompt:
        value = _prompt(name)
        if value:
            return value, "prompt"
    return None, problem or "not set"


def secret(name: str, *, prompt: bool = False) -> str | None:
    """Value of a secret (see ``lookup_secret``), or None. Never print what this returns."""
    return lookup_secret(name, prompt=prompt)[0]


def use_secrets(
    names: tuple[str, ...] = SECRET_NAMES, *, prompt: bool = False, report: bool = False
) -> dict[str, str | None]:
    """Put the secrets into this process's environment, where wandb and huggingface_hub read them.

    Nothing is written to disk (no ``wandb login`` netrc, no token file) and no value is ever
    printed: the report says only where each secret was found.

    Args:
        names: Environment variable names to fill.
        prompt: Ask with a hidden prompt for a secret found nowhere else (when someone can answer).
        report: Print one line per secret: where it came from or what it is needed for
            (00_setup does; the Connect cell prints one short line itself).

    Returns:
        ``{name: source}`` with source None for secrets that were not found.
    """
    found: dict[str, str | None] = {}
    for name in names:
        value, source = lookup_secret(name, prompt=prompt)
        if value:
            os.environ[name] = value
        found[name] = source if value else None
        if report:
            print(_secret_line(name, source if value else None, source))
    return found


def _secret_line(name: str, source: str | None, reason: str) -> str:
    if source:
        return f"  {name}: found ({source}); set for this runtime only"
    use = SECRET_USES.get(name, "optional")
    return (f"  {name}: {reason} -- {use}. Add it with the key icon (Secrets) in Colab's left bar, "
            "or as an environment variable, then re-run this cell.")

