"""The Colab layer, on a fake ``google.colab`` (tests/fake_colab) and on its local fallbacks.

The fake package mounts "Drive" into a temporary folder, serves secrets from a JSON file and
logs every call, so these tests check the Colab path itself: the mount point, the ``userdata``
calls, the flush, and that secret values appear in no output and no file. Notebook 00 is executed
in a kernel that imports the fake (PYTHONPATH), and its install cell runs for real in a fresh venv.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from nbutils import colab
from nbutils.colab import notebooks
from nbutils.core.errors import UserError

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
    monkeypatch.setattr(colab.drive, "DRIVE_MOUNT", fake.mount)
    monkeypatch.setattr(colab.project, "_CURRENT", None)
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
    monkeypatch.setattr(colab.drive, "DRIVE_MOUNT", tmp_path / "content" / "drive")
    monkeypatch.setattr(colab.project, "_CURRENT", None)
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
    monkeypatch.setattr(colab.project, "_CURRENT", None)
    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    project = colab.connect(root, notebook="02_train", model="tiny-stereo", zip_dir="")
    assert project.model == "tiny-stereo" and project.paths.zips == local / "elsewhere"
    assert colab.current() is project
    assert json.loads((root / "project.json").read_text())["model"] == "tiny"  # file unchanged
    out = capsys.readouterr().out
    assert "02_train connected" in out and "HF_TOKEN set" in out and "WANDB_API_KEY not set" in out
    assert SECRETS["HF_TOKEN"] not in out


def test_missing_project_and_lost_runtime_say_which_cell_to_run(local):
    with pytest.raises(UserError, match="Run notebook 00_setup first \\(its cell '2. Connect'\\)"):
        colab.connect(local / "nothing-here", notebook="01_tokenize")
    with pytest.raises(UserError, match="cell '2. Connect'"):
        colab.current()


def test_drive_path_outside_colab_is_refused(local):
    with pytest.raises(UserError, match="not a Colab runtime"):
        colab.create_project(colab.drive.DRIVE_MOUNT / "MyDrive" / "project", model="tiny")
    assert not (local / "content").exists()


def test_secrets_from_the_environment_outside_colab(local, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", SECRETS["WANDB_API_KEY"])
    assert colab.use_secrets() == {"WANDB_API_KEY": "environment", "HF_TOKEN": None}
    assert capsys.readouterr().out == ""  # quiet unless asked to report
    found = colab.use_secrets(report=True)
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
    monkeypatch.setattr(colab.secrets, "_can_prompt", lambda: False)
    assert colab.use_secrets(("HF_TOKEN",), prompt=True, report=True) == {"HF_TOKEN": None}
    assert asked == []

    monkeypatch.setattr(colab.secrets, "_can_prompt", lambda: True)
    assert colab.use_secrets(("HF_TOKEN",), prompt=True, report=True) == {"HF_TOKEN": "prompt"}
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
    with pytest.raises(UserError, match="Drive is not mounted any more.*'2. Connect' again"):
        colab.current()  # a cell run after the flush: say how to get Drive back
    colab.connect(root, notebook="01_tokenize")  # the Connect cell after a flush mounts again
    assert len(fake_colab.calls("drive.mount")) == 2 and colab.current().model == "tiny"


def test_a_dead_drive_mount_is_remounted_by_the_connect_cell(fake_colab, monkeypatch, capsys):
    """Errno 107: the mount point is there but every access raises; Connect remounts with force_remount."""
    import errno

    root = fake_colab.mount / "MyDrive" / "musicgen-lora"
    colab.create_project(root, model="tiny")
    real_probe, dead = colab.drive._probe, [True]

    def probe(path):
        if dead[0] and Path(path) == fake_colab.mount / "MyDrive":
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected", str(path))
        return real_probe(path)

    from google.colab import drive as fake_drive

    real_mount = fake_drive.mount

    def mount(mountpoint, force_remount=False, **kwargs):
        real_mount(mountpoint, force_remount=force_remount, **kwargs)
        dead[0] = dead[0] and not force_remount  # only a forced remount revives a dead transport

    monkeypatch.setattr(colab.drive, "_probe", probe)
    monkeypatch.setattr(fake_drive, "mount", mount)
    with pytest.raises(UserError, match="'2. Connect' again to remount"):
        colab.current()  # a later cell: a message, not an OSError
    capsys.readouterr()
    project = colab.connect(root, notebook="02_train")
    assert "connection died" in capsys.readouterr().out and project.model == "tiny"
    assert fake_colab.calls("drive.mount")[-1]["force_remount"] is True and colab.drive_mounted()


def test_the_long_job_reminder_names_the_flush_cell_of_the_notebook_that_wrote(fake_colab, monkeypatch, capsys):
    """Only the runtime that wrote can flush it: the reminder names that notebook's flush cell."""
    import IPython

    class Shell:
        def __init__(self):
            self.events = type("Events", (), {"register": lambda _, name, f: setattr(self, name, f)})()

    shell = Shell()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    monkeypatch.setattr(colab.drive, "LONG_CELL_SECONDS", 0)
    monkeypatch.setattr(colab.drive, "drive_mounted", lambda: True)
    for name, expected in (("01_tokenize", "run cell '8. Before you close the tab: flush Drive' of this notebook"),
                           ("02_train", "run cell '7. Before you close the tab: flush Drive' of this notebook"),
                           ("04_evaluate", "run colab.flush_drive() in a new cell of this notebook")):
        colab.drive.offer_flush_after_long_cells(name)  # what connect(notebook=...) does
        shell.pre_run_cell()
        shell.post_run_cell()
        assert expected in capsys.readouterr().out, name


def test_rerunning_setup_keeps_the_saved_model_unless_asked(local, capsys):
    root = local / "project"
    colab.create_project(root, model="tiny")
    capsys.readouterr()
    colab.create_project(root, model="facebook/musicgen-small")  # 00's default, on a re-run
    assert json.loads((root / "project.json").read_text())["model"] == "tiny"
    note = capsys.readouterr().out
    assert "set up for tiny" in note and "CHANGE_MODEL = True" in note and "new PROJECT_ROOT" in note
    colab.create_project(root, model="facebook/musicgen-small", change_model=True)
    assert json.loads((root / "project.json").read_text())["model"] == "facebook/musicgen-small"


def test_a_project_on_the_runtime_disk_gets_a_warning(fake_colab, tmp_path, capsys):
    colab.create_project(tmp_path / "content" / "musicgen-lora", model="tiny")
    assert "deleted with the runtime" in capsys.readouterr().out
    assert fake_colab.calls("drive.mount") == []


def test_declined_drive_access_is_a_clear_error(fake_colab, monkeypatch):
    monkeypatch.setenv("FAKE_DRIVE_DECLINE", "1")
    with pytest.raises(UserError, match="allow access to your Drive"):
        colab.create_project(fake_colab.mount / "MyDrive" / "p", model="tiny")


def test_colab_secrets_reach_the_environment_and_nothing_else(fake_colab, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where `wandb login` would write ~/.netrc
    fake_colab.set_secrets(SECRETS)
    found = colab.use_secrets(report=True)
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
    found = colab.use_secrets(report=True)
    assert found == {"WANDB_API_KEY": None, "HF_TOKEN": "environment"}
    out = capsys.readouterr().out
    assert "WANDB_API_KEY: in Colab's Secrets panel but this notebook has no access" in out
    assert SECRETS["HF_TOKEN"] not in out


# ---------------------------------------------------------------------------------------------
# Notebook 00, executed in a kernel that imports the fake google.colab
# ---------------------------------------------------------------------------------------------

ENV_HASHES = '''import hashlib, os  # appended by the test: proves the secrets reached the kernel's environment
print("env-hashes", {n: hashlib.sha256(os.environ.get(n, "").encode()).hexdigest() for n in ("WANDB_API_KEY", "HF_TOKEN")})'''  # noqa: E501


def _kernel_sees_fake_colab(monkeypatch, fake: FakeColab, home: Path) -> None:
    for name, value in fake.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKE_COLAB), str(REPO)]))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.mark.slow
def test_setup_notebook_on_colab(tmp_path, monkeypatch):
    fake = FakeColab(tmp_path)
    fake.set_secrets(SECRETS)
    _kernel_sees_fake_colab(monkeypatch, fake, tmp_path / "home")
    nb = nbformat.read(str(notebooks.notebook_path("00_setup")), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(ENV_HASHES))
    flush_at = next(i for i, c in enumerate(nb.cells) if "colab.flush_drive()" in c.source and c.cell_type == "code")
    nb.cells[flush_at:flush_at] = [  # a "long job" just before the flush cell: the flush is offered after it
        nbformat.v4.new_code_cell("colab.drive.LONG_CELL_SECONDS = 0.5"),
        nbformat.v4.new_code_cell("import time; time.sleep(0.6); print('long job done')")]
    source = tmp_path / "00_setup.ipynb"
    nbformat.write(nb, str(source))

    root = fake.mount / "MyDrive" / "musicgen-lora"
    out = notebooks.execute(source, tmp_path / "executed.ipynb", cwd=tmp_path, parameters={
        "PROJECT_ROOT": str(root), "MODEL": "tiny", "ASK_FOR_MISSING_SECRETS": True})
    executed = nbformat.read(str(out), as_version=4)
    text = notebooks.outputs_text(executed)

    # nbutils is importable (source checkout here, pip-installed in CI): nothing to install
    assert ("nbutils 0.1.0 and its dependencies are installed" in text
            or "nbutils 0.1.0 runs from a source checkout" in text) and "Installing what nbutils" not in text
    assert fake.calls("drive.mount") == [
        {"call": "drive.mount", "mountpoint": str(fake.mount), "force_remount": False}]
    settings = json.loads((fake.storage / "musicgen-lora" / "project.json").read_text())
    assert settings["model"] == "tiny" and settings["zip_dir"] == str(root / "zips")
    assert f"Project on Google Drive: {root}" in text
    assert [c["key"] for c in fake.calls("userdata.get")] == ["WANDB_API_KEY", "HF_TOKEN"]
    assert "WANDB_API_KEY: found (Colab secrets)" in text and "HF_TOKEN: found (Colab secrets)" in text
    hashes = {n: hashlib.sha256(v.encode()).hexdigest() for n, v in SECRETS.items()}
    assert f"env-hashes {hashes}" in text
    assert "No GPU in this runtime" in text  # the GPU cell on this CPU machine, then its preset
    assert colab.colab_url("notebooks/01_tokenize.ipynb") in text
    assert len(fake.calls("drive.flush_and_unmount")) == 1 and "Drive flushed and unmounted" in text
    long_job = next(c for c in executed.cells if "long job done" in c.source)
    reminder = f"run cell '{colab.drive.FLUSH_CELLS['00_setup']}' of this notebook"  # the cell below, by name
    assert reminder in notebooks.outputs_text(nbformat.from_dict({"cells": [long_job]}))
    assert text.count("That was a long job") == 1  # offered after the long cell only

    # secrets: in no output, in no file (notebook, project, HOME: no netrc), anywhere under tmp
    assert not any(v in text for v in SECRETS.values())
    assert not (tmp_path / "home" / ".netrc").exists()
    leaks = [h for h in _files_containing(tmp_path, SECRETS.values()) if not h.startswith(str(fake.secrets_file))]
    assert leaks == []


_HIDE_NBUTILS = """
import os, sys  # forget an installed nbutils: its editable-install finder and any path entry holding it
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "nbutils"))]
"""


def _cell(nb, title_prefix: str):
    """A copy of the code cell whose title starts with ``title_prefix``."""
    return copy.deepcopy(next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(title_prefix)))


@pytest.mark.slow
def test_later_cells_say_which_cells_to_run_after_a_disconnect_or_a_restart(tmp_path, monkeypatch):
    """A new runtime (after a disconnect) has no nbutils: every later cell of every notebook says to run
    the parameters cell and the Connect cell, instead of raising ModuleNotFoundError. After a restart
    (nbutils there, the project not), colab.current() says the same."""
    from nbclient import NotebookClient

    monkeypatch.delenv("PYTHONPATH")
    later = [(name, c) for name in notebooks.NOTEBOOKS
             for c in [c for c in nbformat.read(str(notebooks.notebook_path(name)), as_version=4).cells
                       if c.cell_type == "code"][2:]]
    setup = nbformat.read(str(notebooks.notebook_path("00_setup")), as_version=4)
    nb = nbformat.v4.new_notebook(metadata=setup.metadata)
    nb.cells = [nbformat.v4.new_code_cell(_HIDE_NBUTILS)]  # a fresh runtime, even where nbutils is installed (CI)
    nb.cells += [copy.deepcopy(c) for _, c in later]  # run straight after reconnecting, out of order
    nb.cells += [nbformat.v4.new_code_cell(f"sys.path.insert(0, {str(REPO)!r})  # as if a Connect cell installed it"),
                 copy.deepcopy(later[1][1]),  # 00's GPU cell after a restart: the suite is there, the project not
                 _cell(setup, "#@title 1."),
                 nbformat.v4.new_code_cell(f"PROJECT_ROOT = {str(tmp_path / 'project')!r}; MODEL = 'tiny'"),
                 _cell(setup, "#@title 2."),  # the Connect cell: then the same cell works
                 copy.deepcopy(later[1][1])]
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    def shown(cell):
        return "".join(o.get("text", "") + o.get("evalue", "") for o in cell.outputs)

    assert len(later) >= 14, "every later cell of 00-04"
    for (name, source), cell in zip(later, nb.cells[1:]):
        title = source.source.splitlines()[0]
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert errors and errors[0]["ename"] != "ModuleNotFoundError", f"{name} {title}: {cell.outputs}"
        assert "run the parameters cell and cell '2. Connect' first" in shown(cell), f"{name} {title}"
    restarted, *_, connected, gpu = nb.cells[len(later) + 2:]
    assert "\u274c This runtime has no project yet" in shown(restarted) and "'2. Connect'" in shown(restarted)
    assert "Project on a local folder" in shown(connected)
    assert "No GPU in this runtime (00_setup needs none)" in shown(gpu)


# ---------------------------------------------------------------------------------------------
# The install cell, for real: pip in a fresh venv that sees this interpreter's torch and numpy
# ---------------------------------------------------------------------------------------------


def _install_lines(notebook: str = "00_setup") -> str:
    """The install lines of a notebook: its Connect cell up to ``colab.install.dependencies()``."""
    lines = _cell(nbformat.read(str(notebooks.notebook_path(notebook)), as_version=4), "#@title 2.").source.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("colab.install.dependencies()"))
    return "\n".join(lines[: end + 1])


def _checkout(tmp: Path, *extra_requirements: str) -> Path:
    """What pip gets from GitHub: the repository's files, with ``extra_requirements`` added to its core
    dependencies (test packages that this environment lacks, as Colab lacks e.g. transformers 5)."""
    package = tmp / "checkout"
    package.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "nbutils"):
        subprocess.run(["cp", "-r", str(REPO / name), str(package / name)], check=True)
    pyproject = package / "pyproject.toml"
    text = pyproject.read_text()
    assert "\ndependencies = [\n" in text
    pyproject.write_text(text.replace("\ndependencies = [\n", "\ndependencies = [\n" + "".join(
        f'    "{r}",\n' for r in extra_requirements), 1))
    return package


def _wheel(folder: Path, name: str, version: str, requires=(), files=None) -> Path:
    """A minimal pure-Python wheel written by hand (no build step, no index)."""
    dist = f"{name}-{version}.dist-info"
    entries = dict(files or {})
    entries[f"{dist}/METADATA"] = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
    entries[f"{dist}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entries[f"{dist}/RECORD"] = "".join(f"{p},,\n" for p in entries) + f"{dist}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in entries.items():
            zf.writestr(member, text)
    return path


class Venv:
    """A new venv without nbutils; a .pth lets it import this interpreter's packages (torch, numpy, pip)."""

    def __init__(self, tmp: Path):
        import site

        self.tmp = tmp
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
        self.python = tmp / "venv" / "bin" / "python"
        purelib = self.run_python("import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
        Path(purelib, "_shared.pth").write_text("\n".join(site.getsitepackages()) + "\n")
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.env.update({"TMPDIR": str(tmp), "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                         "PIP_NO_BUILD_ISOLATION": "0",  # (sic) pip's spelling for "no build isolation"
                         "PIP_FIND_LINKS": str(tmp / "wheels")})

    def run_python(self, code: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.python), "-c", code], capture_output=True, text=True, cwd=self.tmp,
                              env=getattr(self, "env", None), timeout=300, **kwargs)

    def versions(self, *extra: str) -> dict:
        code = ("import importlib.metadata as md, importlib.util as u, json\n"
                "def v(n):\n    try: return md.version(n)\n    except md.PackageNotFoundError: return None\n"
                f"print(json.dumps({{n: v(n) for n in ('torch', 'numpy', *{extra!r})}}"
                " | {'nbutils': bool(u.find_spec('nbutils'))}))")
        return json.loads(self.run_python(code).stdout)

    def install_cell(self, package: Path, notebook: str = "00_setup", before: str = "") -> subprocess.CompletedProcess:
        """Run a notebook's install lines here, installing ``package`` instead of the GitHub release."""
        source = _install_lines(notebook)
        assert colab.install_url() in source
        return self.run_python(before + source.replace(colab.install_url(), str(package)))


def _here_versions() -> dict:
    import importlib.metadata as md

    return {n: md.version(n) for n in ("torch", "numpy")}


@pytest.mark.slow
def test_install_cell_installs_the_suite_and_keeps_torch_and_numpy(tmp_path):
    venv = Venv(tmp_path)
    assert venv.versions("extra-dep") == {**_here_versions(), "extra-dep": None, "nbutils": False}
    _wheel(tmp_path / "wheels", "extra_dep", "1.2", requires=["numpy"])  # a dependency this runtime lacks
    package = _checkout(tmp_path, "extra-dep>=1")
    proc = venv.install_cell(package)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Installed extra-dep>=1; kept torch/numpy: {_here_versions()}" in proc.stdout
    assert "pip log (" not in proc.stdout and (tmp_path / "nbutils-pip.log").exists(), "quiet success, log kept"
    assert proc.stderr == "", "nothing red in the cell"
    assert venv.versions("extra-dep") == {**_here_versions(), "extra-dep": "1.2", "nbutils": True}
    pins = (tmp_path / "nbutils-pins.txt").read_text()
    assert pins == "".join(f"{n}=={v}\n" for n, v in _here_versions().items())

    # 01-04's Connect cell in this runtime (or after a restart): the same lines, now without any pip
    colab.create_project(tmp_path / "project", model="tiny")
    (tmp_path / "nbutils-pip.log").unlink()
    connect = _cell(nbformat.read(str(notebooks.notebook_path("01_tokenize")), as_version=4), "#@title 2.").source
    shared = [line for line in _install_lines().splitlines()[1:] if not line.startswith("from nbutils import")]
    assert [line for line in connect.splitlines() if line in shared] == shared
    proc = venv.run_python(f"PROJECT_ROOT, MODEL, ZIP_DIR = {str(tmp_path / 'project')!r}, '', ''\n" + connect)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("nbutils 0.1.0 and its dependencies are installed.\n01_tokenize connected to ")
    assert not (tmp_path / "nbutils-pip.log").exists()


@pytest.mark.slow
def test_install_cell_refuses_to_downgrade_numpy_and_fails_loudly(tmp_path):
    venv = Venv(tmp_path)
    _wheel(tmp_path / "wheels", "numpy", "1.26.4")  # an old numpy pip could pick
    needs_old = _wheel(tmp_path / "wheels", "needs_old_numpy", "1.0", requires=["numpy<2"])
    # without the pins, pip would replace numpy: the pins are what stops it
    dry = subprocess.run([str(venv.python), "-m", "pip", "install", "--dry-run", str(needs_old)],
                         capture_output=True, text=True, env=venv.env, cwd=tmp_path)
    assert "Would install needs_old_numpy-1.0 numpy-1.26.4" in dry.stdout, dry.stdout + dry.stderr

    package = _checkout(tmp_path, "needs_old_numpy")
    for attempt in range(2):  # re-running the cell tries again (the suite's code is there by now)
        proc = venv.install_cell(package)
        assert proc.returncode != 0
        assert "UserError: Installing the suite's dependencies failed (pip exit code 1" in proc.stderr
        assert "still missing: needs_old_numpy" in proc.stderr
        assert "numpy" in proc.stdout.split("pip log (", 1)[1]  # the log's tail shows the conflict
        assert venv.versions("needs_old_numpy") == {**_here_versions(), "needs_old_numpy": None, "nbutils": True}


@pytest.mark.slow
def test_the_first_pip_step_is_quiet_and_its_failure_shows_pips_error(tmp_path):
    """The --no-deps install of the suite itself: nothing printed when it works, pip's own error and
    what to do when it does not (no internet, a wrong URL)."""
    venv = Venv(tmp_path)
    proc = venv.install_cell(tmp_path / "no-such-checkout")
    assert proc.returncode != 0 and "Installing the suite failed (pip exit code 1)" in proc.stderr
    assert "internet connection, then run this cell again" in proc.stderr
    assert "no-such-checkout" in proc.stderr.split("pip said:", 1)[1], "pip's own error is shown"
    assert proc.stdout == "" and venv.versions()["nbutils"] is False
    proc = venv.install_cell(_checkout(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == "nbutils 0.1.0 and its dependencies are installed.\n" and proc.stderr == ""


@pytest.mark.slow
def test_install_cell_notices_a_changed_numpy(tmp_path):
    # a dependency that smuggles in numpy metadata of another version: the check after pip sees it
    _wheel(tmp_path / "wheels", "sneaky", "1.0", files={
        "numpy-0.1.egg-info": "Metadata-Version: 1.0\nName: numpy\nVersion: 0.1\n"})
    proc = Venv(tmp_path).install_cell(_checkout(tmp_path, "sneaky"))
    assert proc.returncode != 0 and "torch/numpy changed: {'numpy': '0.1'}" in proc.stderr
    assert "Disconnect and delete runtime" in proc.stderr
