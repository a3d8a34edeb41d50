"""Test environment: everything offline, every cache and config folder in a temporary place.

Set before any test module imports transformers, wandb or jupyter, so nothing reads or writes
the user's home folder and nothing tries the network.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

_SANDBOX = Path(tempfile.mkdtemp(prefix="nbutils-tests-"))
# Everything else that asks for a temporary folder (wandb media, torchrun, cached test shards,
# subprocesses) lands inside the sandbox too, and goes with it at the end of the session.
# pytest's own tmp_path folders stay where they were (the last three runs are kept for debugging).
os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
os.environ["TMPDIR"] = str(_SANDBOX / "tmp")
(_SANDBOX / "tmp").mkdir()
tempfile.tempdir = None  # re-read TMPDIR
# numba's compiled code (librosa compiles about 40 s of it on first import) is shared by the whole
# run: the xdist controller's sandbox is handed to its workers, which inherit its environment.
_SHARED = Path(os.environ.setdefault("NBUTILS_TESTS_SHARED", str(_SANDBOX / "shared")))
os.environ["NUMBA_CACHE_DIR"] = str(_SHARED / "numba")
Path(os.environ["NUMBA_CACHE_DIR"]).mkdir(parents=True, exist_ok=True)
for _name, _sub in {
    "HF_HOME": "hf",
    "IPYTHONDIR": "ipython",
    "JUPYTER_CONFIG_DIR": "jupyter/config",
    "JUPYTER_DATA_DIR": "jupyter/data",
    "JUPYTER_RUNTIME_DIR": "jupyter/runtime",
    "WANDB_DIR": "wandb",
    "WANDB_CACHE_DIR": "wandb-cache",
    "WANDB_CONFIG_DIR": "wandb-config",
    "WANDB_DATA_DIR": "wandb-data",
    "MPLCONFIGDIR": "matplotlib",
}.items():
    os.environ[_name] = str(_SANDBOX / _sub)
    Path(os.environ[_name]).mkdir(parents=True, exist_ok=True)
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "MPLBACKEND": "Agg",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONHASHSEED": "0",
    # The tiny models' tensors are so small that a second thread only adds contention on a
    # 2-core machine (a tiny decoding step: 40 ms instead of 4 ms). Set before torch is
    # imported, so this process, CLI subprocesses and notebook kernels all use one thread.
    "OMP_NUM_THREADS": "1",
})
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("HF_TOKEN", None)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# Subprocesses and notebook kernels must import this checkout's nbutils, not another one.
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])


def pytest_collection_modifyitems(config, items):
    """Skip the ``requires_cuda`` tests without a CUDA GPU (CPU CI); on a GPU machine they run."""
    marked = [item for item in items if item.get_closest_marker("requires_cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in marked:
        item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(_SANDBOX, ignore_errors=True)


@pytest.fixture(scope="session")
def sandbox() -> Path:
    return _SANDBOX


@pytest.fixture(scope="session")
def tiny():
    """The embedded tiny MusicGen and its processor (built once per test session)."""
    from nbutils.core import models

    return models.load_musicgen("tiny")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny model written to a folder with save_pretrained, as a user's local model would be."""
    from nbutils.core import models

    model, processor = models.build_tiny("tiny")
    folder = tmp_path_factory.mktemp("tiny-musicgen")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, timeout: float = 600):
    """Run ``python -m nbutils ARGS`` in a subprocess; return the CompletedProcess."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "nbutils", *args], cwd=cwd or REPO, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"nbutils {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def last_json(stdout: str) -> dict:
    """The JSON object on the last non-empty stdout line (the CLI contract)."""
    import json

    return json.loads([line for line in stdout.splitlines() if line.strip()][-1])
