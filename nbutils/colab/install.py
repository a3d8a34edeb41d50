"""Install what the suite needs into a runtime without replacing its torch or numpy.

Every notebook gets the suite the same way (00_setup's install cell and the Connect cell of 01-04
share these lines; tests/test_notebooks.py checks that they do):

1. a fresh runtime runs ``pip install --no-deps <colab.install_url()>``: the suite's own code only,
   so nothing else in the runtime can change; pip's output is captured and shown only if it fails;
2. ``install.dependencies()`` then installs the requirements the installed suite declares and this
   runtime lacks (or has outside the required range), with the runtime's torch and numpy pinned as
   pip constraints, pip's output in a log (printed only on failure), and a check afterwards that
   torch and numpy are unchanged.

Step 2 runs every time and costs nothing when everything is there, so re-running the cell completes
an install that failed or was interrupted. This module uses the standard library only (plus pip's
own ``packaging``): it runs before any dependency exists.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import subprocess
import sys
import tempfile
from pathlib import Path

from nbutils.core.errors import UserError

DISTRIBUTION = "musicgen-lora-colab"  # the name in pyproject.toml
KEEP = ("torch", "numpy")  # Colab's CUDA torch and its numpy: an install must never replace them
PINS_FILE = "nbutils-pins.txt"
LOG_FILE = "nbutils-pip.log"
LOG_TAIL = 4000  # characters of pip's log shown in the cell


def _requirement(text: str):
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a bare runtime: pip carries its own copy
        from pip._vendor.packaging.requirements import Requirement
    return Requirement(text)


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def missing(distribution: str | None = None) -> list[str] | None:
    """The core requirements of the installed suite that this environment does not satisfy.

    Extras (``test``, ``demo``) and requirements for other platforms are not counted.

    Args:
        distribution: The installed distribution to check (default: the suite, ``DISTRIBUTION``).

    Returns:
        Requirement strings as declared (``"transformers<6,>=5.0"``), ``[]`` when all are met, or
        None when the suite is not pip-installed (it runs from a source checkout on ``sys.path``).
    """
    try:
        declared = md.requires(distribution or DISTRIBUTION) or []
    except md.PackageNotFoundError:
        return None
    unmet = []
    for text in declared:
        req = _requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        version = _version(req.name)
        if version is None or not req.specifier.contains(version, prereleases=True):
            unmet.append(text)
    return unmet


def _kept_versions() -> dict[str, str]:
    return {name: version for name in KEEP if (version := _version(name)) is not None}


def dependencies(log_dir: str | Path | None = None) -> list[str]:
    """Install the suite's missing dependencies, keeping this runtime's torch and numpy.

    Args:
        log_dir: Where the constraints file and pip's log go (default: the temp folder, i.e.
            ``/tmp/nbutils-pip.log`` on Colab).

    Returns:
        The requirements that were installed (``[]`` when nothing was missing).

    Raises:
        UserError: pip failed, torch or numpy changed, or a requirement is still unmet; the
            message says what to do (the pip log's tail is printed above it).
    """
    from nbutils import __version__
    from nbutils.colab.project import show_errors_briefly

    show_errors_briefly()
    todo = missing()
    if todo is None:
        print(f"nbutils {__version__} runs from a source checkout ({Path(__file__).parent}): install its "
              "dependencies with `pip install -r requirements.txt` there.")
        return []
    keep = _kept_versions()
    if not todo:
        print(f"nbutils {__version__} and its dependencies are installed.")
        return []
    folder = Path(log_dir or tempfile.gettempdir())
    pins, log = folder / PINS_FILE, folder / LOG_FILE
    pins.write_text("".join(f"{name}=={version}\n" for name, version in keep.items()))
    print(f"Installing what nbutils {__version__} needs: {', '.join(todo)} (keeping {keep or 'no torch/numpy'})...")
    with open(log, "w") as out:
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", str(pins), *todo],
                             stdout=out, stderr=out)
    importlib.invalidate_caches()
    changed = {name: _version(name) for name in keep if _version(name) != keep[name]}
    still = missing() or []
    if pip.returncode or changed or still:  # only now is pip's log worth reading
        print(f"pip log ({log}):", log.read_text()[-LOG_TAIL:] or "(empty)", sep="\n")
        raise UserError(
            f"Installing the suite's dependencies failed (pip exit code {pip.returncode}; torch/numpy changed: "
            f"{changed or 'no'}; still missing: {', '.join(still) or 'nothing'}). Read the pip log above, fix "
            "the cause (internet? a version conflict?) and re-run this cell; if torch or numpy changed, use "
            "Runtime > Disconnect and delete runtime first."
        )
    print(f"Installed {', '.join(todo)}; kept torch/numpy: {keep}.")
    return todo
