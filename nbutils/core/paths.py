"""The project's folder layout, in one place.

Only ``nbutils.colab`` knows that the project lives under ``/content/drive/MyDrive/...`` on
Colab; every stage takes its folders from a ``Paths`` built from ``PROJECT_ROOT``::

    PROJECT_ROOT/
      project.json            settings written by 00_setup, read by notebooks 01-04
      zips/                   archive_batch_0001.zip ... (+ metadata.jsonl); ZIP_DIR may point elsewhere
      tokens/                 one shard per ZIP (shards/), ledger.jsonl, tokenize_config.json
      runs/<run>/             latest.pt, checkpoints/step-XXXXXX/, adapters/{best,final}/, wandb/
      generated/              WAV + JSON sidecar per generation
      eval/                   evaluation tables (CSV, JSON) and plots (PNG)

Scratch space (ZIP copies, extracted audio) is on the local disk, never on Drive.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

PROJECT_FILE = "project.json"
DEFAULT_RUN = "lora"


def default_scratch() -> Path:
    """Local fast disk for temporary files: ``/content/scratch`` on Colab, the temp dir elsewhere."""
    if Path("/content").is_dir() and os.access("/content", os.W_OK):
        return Path("/content/scratch")
    return Path(tempfile.gettempdir()) / "nbutils-scratch"


def scratch_root(scratch: str | os.PathLike = "") -> Path:
    """The scratch folder a stage works in: ``scratch`` when given (a --scratch option), else the default."""
    return Path(scratch).expanduser().absolute() if scratch else default_scratch()


@dataclasses.dataclass(frozen=True)
class Paths:
    """Folders of one project. Build with ``Paths.at(PROJECT_ROOT)``."""

    root: Path
    """The project folder (on Drive in Colab)."""
    zips: Path
    """Where the ZIP batches are (``ZIP_DIR``); defaults to ``root/zips``."""
    scratch: Path
    """Local scratch for extraction; never on Drive."""

    @classmethod
    def at(cls, root: str | os.PathLike, zips: str | os.PathLike | None = None,
           scratch: str | os.PathLike | None = None) -> "Paths":
        root = Path(root).expanduser().absolute()
        return cls(
            root=root,
            zips=Path(zips).expanduser().absolute() if zips else root / "zips",
            scratch=Path(scratch).expanduser().absolute() if scratch else default_scratch(),
        )

    @property
    def project_file(self) -> Path:
        return self.root / PROJECT_FILE

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, name: str = DEFAULT_RUN) -> Path:
        return self.runs / name

    @property
    def generated(self) -> Path:
        return self.root / "generated"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def ensure(self) -> "Paths":
        """Create every project folder (idempotent)."""
        for folder in (self.root, self.zips, self.tokens, self.runs, self.generated, self.eval):
            folder.mkdir(parents=True, exist_ok=True)
        return self
