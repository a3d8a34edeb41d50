"""The Colab layer, on a fake ``google.colab`` (tests/fake_colab) and on its local fallbacks.

The fake package mounts "Drive" into a temporary folder, serves secrets from a JSON file and
logs every call, so these tests check the Colab path itself: the mount point, the ``userdata``
calls, the flush, and that secret values appear in no output and no file. Notebook 00 is executed
in a kernel that imports the fake (PYTHONPATH), and its install cell runs for real in a fresh venv.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from nbutils import colab, notebooks
from nbutils.errors import UserError

FAKE_COLAB = Path(__file__).parent / "fake_colab"
REPO = Path(__file__).resolve().parents[1]
SECRETS = {"WANDB_API_KEY": "wandb-key-0123-SECRET-abcdef", "HF_TOKEN": "hf_SECRET_token_4567"}


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


class FakeColab:
    """Handle on the fake ``google.colab``: its call log, secrets file and Drive folders."""

    def __init__(self, tmp: Path):
        self.mount = tmp / "content" / "drive"
        self.storage = tmp / "drive-storage"  # what MyDrive shows once mounted
        self.log = tmp / "colab-calls.jsonl"
        self.secrets_file = tmp / "colab-secrets.json"
        self.set_secrets({})

    def set_secrets(self, secrets: dict) -> None:
        self.secrets_file.write_text(json.dumps(secrets))

    def calls(self, name: str | None = None) -> list[dict]:
        if not self.log.exists():
            return []
        records = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r for r in records if name is None or r["call"] == name]

    def env(self) -> dict[str, str]:
        return {"FAKE_COLAB_LOG": str(self.log), "FAKE_COLAB_SECRETS": str(self.secrets_file),
                "FAKE_DRIVE_STORAGE": str(self.storage), "NBUTILS_DRIVE_MOUNT": str(self.mount)}


def _forget_fake_modules() -> None:
    for name in [m for m in sys.modules if m == "google.colab" or m.startswith("google.colab.")]:
        del sys.modules[name]


@pytest.fixture
def fake_colab(tmp_path, monkeypatch):
    """This process sees the fake ``google.colab``; Drive mounts under ``tmp_path``."""
    fake = FakeColab(tmp_path)
    for name, value in fake.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(colab, "DRIVE_MOUNT", fake.mount)
    monkeypatch.setattr(colab, "_CURRENT", None)
    monkeypatch.syspath_prepend(str(FAKE_COLAB))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    _forget_fake_modules()
    assert colab.in_colab()
    yield fake
    _forget_fake_modules()


@pytest.fixture
def local(tmp_path, monkeypatch):
    """No Colab at all: the local fallbacks."""
    monkeypatch.setattr(colab, "DRIVE_MOUNT", tmp_path / "content" / "drive")
    monkeypatch.setattr(colab, "_CURRENT", None)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert not colab.in_colab()
    return tmp_path


def _files_containing(root: Path, needles) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path}: {n[:6]}..." for n in needles if n.encode() in data]
    return hits


# ---------------------------------------------------------------------------------------------
# Local fallbacks
# ---------------------------------------------------------------------------------------------


def test_local_project_keeps_settings_and_needs_no_colab(local):
    root = local / "project"
    project = colab.create_project(root, model="tiny", run_name="first")
    assert colab.current() is project and not colab.drive_mounted()
    assert {p.name for p in root.iterdir()} >= {"project.json", "zips", "tokens", "runs", "generated", "eval"}
    settings = json.loads((root / "project.json").read_text())
    assert settings == {"model": "tiny", "run_name": "first", "zip_dir": str(root / "zips")}

    # re-running setup with empty values keeps earlier choices; a new value replaces its old one
    colab.create_project(root, model="", run_name="second", zip_dir="")
    settings = json.loads((root / "project.json").read_text())
    assert settings["model"] == "tiny" and settings["run_name"] == "second"

    text = colab.describe_project(colab.current())
    assert str(root / "zips") in text and "runs/second" in text and "local folder" in text


def test_connect_reads_the_project_and_overrides_only_this_runtime(local, capsys, monkeypatch):
    root = local / "project"
    colab.create_project(root, model="tiny", zip_dir=str(local / "elsewhere"))
    monkeypatch.setattr(colab, "_CURRENT", None)
    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    project = colab.connect(root, notebook="02_train", model="tiny-stereo", zip_dir="")
    assert project.model == "tiny-stereo" and project.paths.zips == local / "elsewhere"
    assert colab.current() is project
    assert json.loads((root / "project.json").read_text())["model"] == "tiny"  # file unchanged
    out = capsys.readouterr().out
    assert "02_train connected" in out and "HF_TOKEN set" in out and "WANDB_API_KEY not set" in out
    assert SECRETS["HF_TOKEN"] not in out


def test_missing_project_and_lost_runtime_say_which_cell_to_run(local):
    with pytest.raises(UserError, match="Run notebook 00_setup first.*3. Mount Drive and create the project"):
        colab.connect(local / "nothing-here", notebook="01_tokenize")
    with pytest.raises(UserError, match="cell '2. Connect'"):
        colab.current()
    with pytest.raises(UserError, match="cell '3. Mount Drive and create the project'"):
        colab.current(cell=colab.PROJECT_CELL)


def test_drive_path_outside_colab_is_refused(local):
    with pytest.raises(UserError, match="not a Colab runtime"):
        colab.create_project(colab.DRIVE_MOUNT / "MyDrive" / "project", model="tiny")
    assert not (local / "content").exists()


def test_secrets_from_the_environment_outside_colab(local, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", SECRETS["WANDB_API_KEY"])
    found = colab.use_secrets()
    assert found == {"WANDB_API_KEY": "environment", "HF_TOKEN": None}
    out = capsys.readouterr().out
    assert "WANDB_API_KEY: found (environment)" in out and "HF_TOKEN: not set" in out
    assert SECRETS["WANDB_API_KEY"] not in out
    assert colab.flush_drive() is False  # nothing mounted: a message, no error


def test_prompt_only_when_someone_can_answer(local, monkeypatch, capsys):
    asked = []

    def getpass(prompt):
        asked.append(prompt)
        return SECRETS["HF_TOKEN"] + "  "

    monkeypatch.setattr("getpass.getpass", getpass)
    monkeypatch.setattr(colab, "_can_prompt", lambda: False)
    assert colab.use_secrets(("HF_TOKEN",), prompt=True) == {"HF_TOKEN": None}
    assert asked == []

    monkeypatch.setattr(colab, "_can_prompt", lambda: True)
    assert colab.use_secrets(("HF_TOKEN",), prompt=True) == {"HF_TOKEN": "prompt"}
    assert os.environ["HF_TOKEN"] == SECRETS["HF_TOKEN"] and "hidden" in asked[0]
    assert SECRETS["HF_TOKEN"] not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The Colab path, in this process
# ---------------------------------------------------------------------------------------------


def test_drive_is_mounted_once_at_the_colab_mount_point_and_flushed(fake_colab, monkeypatch):
    root = fake_colab.mount / "MyDrive" / "musicgen-lora"
    project = colab.create_project(root, model="tiny")
    assert fake_colab.calls("drive.mount") == [
        {"call": "drive.mount", "mountpoint": str(fake_colab.mount), "force_remount": False}]
    assert (fake_colab.storage / "musicgen-lora" / "project.json").is_file()  # really "on Drive"
    assert "Google Drive" in colab.describe_project(project)

    colab.connect(root, notebook="01_tokenize")  # already mounted: no second mount
    assert len(fake_colab.calls("drive.mount")) == 1

    assert colab.flush_drive() is True
    assert len(fake_colab.calls("drive.flush_and_unmount")) == 1 and not colab.drive_mounted()
    colab.connect(root, notebook="01_tokenize")  # the Connect cell after a flush mounts again
    assert len(fake_colab.calls("drive.mount")) == 2 and colab.current().model == "tiny"


def test_declined_drive_access_is_a_clear_error(fake_colab, monkeypatch):
    monkeypatch.setenv("FAKE_DRIVE_DECLINE", "1")
    with pytest.raises(UserError, match="allow access to your Drive"):
        colab.create_project(fake_colab.mount / "MyDrive" / "p", model="tiny")


def test_colab_secrets_reach_the_environment_and_nothing_else(fake_colab, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where `wandb login` would write ~/.netrc
    fake_colab.set_secrets(SECRETS)
    found = colab.use_secrets()
    assert found == {"WANDB_API_KEY": "Colab secrets", "HF_TOKEN": "Colab secrets"}
    assert [c["key"] for c in fake_colab.calls("userdata.get")] == ["WANDB_API_KEY", "HF_TOKEN"]
    assert {n: os.environ[n] for n in SECRETS} == SECRETS
    out = capsys.readouterr()
    assert not any(v in out.out + out.err for v in SECRETS.values())
    # the only file holding them is the fake's own store (Colab's Secrets panel)
    assert _files_containing(tmp_path, SECRETS.values()) == [
        f"{fake_colab.secrets_file}: {v[:6]}..." for v in SECRETS.values()]


def test_colab_secret_without_notebook_access_falls_back_and_says_why(fake_colab, monkeypatch, capsys):
    fake_colab.set_secrets({"WANDB_API_KEY": {"denied": True}, "HF_TOKEN": {"denied": True}})
    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    found = colab.use_secrets()
    assert found == {"WANDB_API_KEY": None, "HF_TOKEN": "environment"}
    out = capsys.readouterr().out
    assert "WANDB_API_KEY: in Colab's Secrets panel but this notebook has no access" in out
    assert SECRETS["HF_TOKEN"] not in out
