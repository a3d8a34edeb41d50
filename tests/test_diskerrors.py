"""A read-only or full --out is a message in every command, never a traceback.

The end-to-end tests mount a real read-only or a real full tmpfs on the output folder, in a
private mount namespace of the command's own process (``unshare -rm``), so nothing outside it
sees the mount and it goes away with the process.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest

import _tokenize_helpers as h
from conftest import REPO
from nbutils.core import diskerrors
from nbutils.core.errors import UserError


def _disk_full_error() -> OSError:
    """A real ENOSPC: /dev/full accepts the open and refuses every write."""
    try:
        with open("/dev/full", "wb") as fh:
            fh.write(b"x")
            fh.flush()
    except OSError as err:
        return err
    raise AssertionError("/dev/full accepted a write")


def test_explain_names_the_folder_and_what_to_do(tmp_path):
    full = diskerrors.explain(_disk_full_error(), tmp_path)
    assert isinstance(full, UserError) and "ENOSPC" in str(full) and "is full" in str(full)
    assert "choose another --out" in str(full) and "run the same command (or cell) again" in str(full)
    read_only = diskerrors.explain(OSError(errno.EROFS, "Read-only file system", str(tmp_path / "x.json")), tmp_path)
    assert f"{tmp_path / 'x.json'} is on a read-only file system (EROFS" in str(read_only)
    denied = OSError(errno.EACCES, "Permission denied", str(tmp_path / "a"))
    assert "No permission to write" in str(diskerrors.explain(denied, tmp_path))
    elsewhere = OSError(errno.EACCES, "Permission denied", "/somewhere/else/input.zip")
    assert diskerrors.explain(elsewhere, tmp_path) is None  # an input the user fixes another way
    assert diskerrors.explain(FileNotFoundError(errno.ENOENT, "No such file"), tmp_path) is None


def test_guard_turns_disk_errors_of_a_run_into_user_errors(tmp_path):
    class Config:
        out = str(tmp_path)

    @diskerrors.guard("out")
    def run(cfg):
        with open("/dev/full", "wb") as fh:
            fh.write(b"x" * 10)

    with pytest.raises(UserError, match="is full") as err:
        run(Config())
    assert err.value.__suppress_context__  # no chained traceback under the message

    @diskerrors.guard("out")
    def other(cfg):
        raise FileNotFoundError(errno.ENOENT, "missing", "input.zip")

    with pytest.raises(FileNotFoundError):
        other(Config())


def _namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, check=False)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _namespaces_work(), reason="needs unshare -rm (user and mount namespaces)")
MOUNT = {
    # read-only: writes fail with EROFS
    "read-only": 'mount -t tmpfs -o size=1m,ro tmpfs "$1"',
    # full: a 256 KiB tmpfs filled to the last byte, so every write fails with ENOSPC
    "full": 'mount -t tmpfs -o size=256k tmpfs "$1" && (dd if=/dev/zero of="$1/filler" bs=4k 2>/dev/null || true)',
}
EXPECT = {"read-only": "is on a read-only file system (EROFS", "full": "is full (ENOSPC"}


def _run_on(out, kind: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m nbutils ARGS`` with a read-only or full tmpfs mounted on ``out`` (for it alone)."""
    out.mkdir(parents=True, exist_ok=True)
    script = MOUNT[kind] + ' && shift && exec "$@"'
    command = ["unshare", "-rm", "sh", "-c", script, "sh", str(out), sys.executable, "-m", "nbutils", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env, check=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A ZIP folder, a token folder and a training run (adapter) for the four commands."""
    from _generate_helpers import make_run, make_tokens

    root = tmp_path_factory.mktemp("inputs")
    h.small_zip(root / "zips", "batch.zip", n=2, seconds=1.5)
    make_tokens(root / "tokens")
    make_run(root / "run")
    return root


def _command(name: str, inputs, out) -> list[str]:
    common = ["--out", str(out), "--model", "tiny"]
    return {
        "tokenize": ["tokenize", "--zips", str(inputs / "zips"), *common, "--no-progress",
                     "--scratch", str(inputs / "scratch"), "--describe", "none"],
        "train": ["train", "--tokens", str(inputs / "tokens"), *common, "--max-steps", "2", "--batch-size", "2",
                  "--segment-seconds", "0.4", "--sample-every", "0", "--wandb", "disabled", "--precision", "fp32"],
        "generate": ["generate", *common, "--prompt", "calm piano", "--seconds", "0.2"],
        "evaluate": ["evaluate", *common, "--adapter", str(inputs / "run" / "adapters" / "final"), "--clap", "tiny",
                     "--tokens", str(inputs / "tokens"), "--seconds", "0.2", "--samples-per-prompt", "1",
                     "--num-prompts", "1"],
        "demo": ["demo", "--out", str(out)],
    }[name]


@pytest.mark.slow
@needs_mounts
@pytest.mark.parametrize("kind", ["read-only", "full"])
@pytest.mark.parametrize("command", ["tokenize", "train", "generate", "evaluate", "demo"])
def test_every_command_says_what_is_wrong_with_out(inputs, tmp_path, command, kind):
    out = tmp_path / "out"
    proc = _run_on(out, kind, *_command(command, inputs, out))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert EXPECT[kind] in proc.stderr and "run the same command (or cell) again" in proc.stderr, proc.stderr
