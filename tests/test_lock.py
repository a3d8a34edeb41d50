"""One tokenize run per token folder: who holds the lock, stale locks, two processes at once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import _tokenize_helpers as h
from conftest import REPO
from nbutils.core import atomic
from nbutils.core.errors import UserError
from nbutils.tokenize import ledger, lock, shards
from nbutils.tokenize import stage as tokenize


def _config(zips, out, scratch, **values):
    return tokenize.TokenizeConfig(zips=str(zips), out=str(out), model="tiny", progress=False, scratch=str(scratch),
                                   describe="none", **values)


def _write_lock(out, **holder):
    out.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "heartbeat": time.time(),
              "id": "theirs", **holder}
    atomic.write_json(out / lock.LOCK_FILE, record)


def _soon(condition, seconds: float = 10.0) -> bool:
    """Wait until ``condition()`` holds (a loaded machine may delay a heartbeat thread)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _holder_process(out):
    """Another process holding the token folder's lock (it prints 'held', then waits)."""
    code = ("import sys, time; from nbutils.tokenize import lock; l = lock.Lock(sys.argv[1]); l.acquire(); "
            "print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_says_who_holds_the_folder_and_a_dead_holder_is_taken_over(tmp_path, capsys):
    zips = tmp_path / "zips"
    h.small_zip(zips, "a.zip", n=1)
    out = tmp_path / "tokens"
    holder = _holder_process(out)
    try:
        with pytest.raises(UserError) as err:
            tokenize.run(_config(zips, out, tmp_path / "s"))
        message = str(err.value)
        assert f"in use by another tokenize run (host {socket.gethostname()}, pid {holder.pid}, started " in message
        assert "Wait for it to finish" in message and str(out / lock.LOCK_FILE) in message
        assert not (out / tokenize.SETTINGS_FILE).exists()  # refused before the settings were even read
    finally:
        holder.send_signal(signal.SIGKILL)  # its runtime dies: no cleanup, the lock file stays
        holder.wait()
    assert (out / lock.LOCK_FILE).exists()
    summary = tokenize.run(_config(zips, out, tmp_path / "s"))
    assert summary["zips_done"] == 1
    said = capsys.readouterr().out
    assert f"Took over the token folder's lock from a run that is gone (host {socket.gethostname()}, pid {holder.pid}" \
           in said and f"its process {holder.pid} on this host is gone" in said
    assert not (out / lock.LOCK_FILE).exists()  # released at the end


def test_a_lock_from_another_runtime_is_respected_until_its_heartbeat_stops(tmp_path, capsys):
    zips, out = tmp_path / "zips", tmp_path / "tokens"
    h.small_zip(zips, "a.zip", n=1)
    _write_lock(out, host="colab-runtime-7f3a", pid=4242, started=time.time() - 3600, heartbeat=time.time() - 20)
    with pytest.raises(UserError, match=r"host colab-runtime-7f3a, pid 4242, .*last heartbeat 2\d s ago"):
        tokenize.run(_config(zips, out, tmp_path / "s"))
    _write_lock(out, host="colab-runtime-7f3a", pid=4242, heartbeat=time.time() - 700)  # Drive is shared: no pid check
    assert tokenize.run(_config(zips, out, tmp_path / "s"))["zips_done"] == 1
    assert "no heartbeat for 12 min (its runtime was disconnected or stopped)" in capsys.readouterr().out


def test_a_torn_lock_file_is_respected_while_young(tmp_path):
    out = tmp_path / "tokens"
    out.mkdir()
    (out / lock.LOCK_FILE).write_text('{"host": "x", "pi')  # its writer died between create and fill
    with pytest.raises(UserError, match="in use by another tokenize run"):
        lock.Lock(out).acquire()
    old = time.time() - 700
    os.utime(out / lock.LOCK_FILE, (old, old))
    with lock.hold(out, say=lambda _: None):
        assert json.loads((out / lock.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_the_heartbeat_is_renewed_and_a_run_whose_lock_was_taken_over_stops(tmp_path):
    held = lock.Lock(tmp_path, heartbeat_seconds=0.05)
    held.acquire()
    try:
        first = json.loads((tmp_path / lock.LOCK_FILE).read_text())["heartbeat"]
        assert _soon(lambda: json.loads((tmp_path / lock.LOCK_FILE).read_text())["heartbeat"] > first)
        held.check()
        _write_lock(tmp_path, host="colab-runtime-new", pid=7)  # took over while this run stalled
        assert _soon(lambda: held.lost)
        with pytest.raises(UserError, match="lost the token folder's lock.*host colab-runtime-new, pid 7"):
            held.check()
    finally:
        held.release()
    assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["id"] == "theirs"  # theirs is left alone


def test_test_mode_takes_no_lock(tmp_path):
    zips, out = tmp_path / "zips", tmp_path / "tokens"
    h.small_zip(zips, "a.zip", n=1)
    _write_lock(out, host="colab-runtime-7f3a", pid=4242)
    assert tokenize.run(_config(zips, out, tmp_path / "s", limit=1))["files_ok"] == 1  # writes nothing there


# Both processes import everything first, then wait for the same file to appear: they reach the
# token folder within a millisecond of each other, not seconds apart as their imports would make them.
_BARRIER = ("import os, sys, time\n"
            "from nbutils import cli\n"
            "from nbutils.tokenize import stage, zipjob, encoder\n"
            "print('ready', flush=True)\n"
            "while not os.path.exists(sys.argv[1]):\n"
            "    time.sleep(0.0005)\n"
            "sys.exit(cli.main(sys.argv[2:]))\n")


def _race(zips, out, scratch, *settings: float) -> list[tuple[int, str, str]]:
    """Tokenize ``zips`` into ``out`` from one process per segment length, started at the same moment."""
    go = out.parent / f"{out.name}.go"
    procs = []
    for seconds in settings:
        args = ["tokenize", "--zips", str(zips), "--out", str(out), "--model", "tiny", "--no-progress",
                "--scratch", str(scratch), "--segment-seconds", str(seconds), "--describe", "none"]
        procs.append(subprocess.Popen([sys.executable, "-c", _BARRIER, str(go), *args], cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "PYTHONPATH": str(REPO)}))
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * len(procs)  # imports done
    go.touch()
    return [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    zips = tmp_path_factory.mktemp("race") / "zips"
    for i in range(4):
        h.small_zip(zips, f"batch_{i}.zip", n=3, seconds=2.0, seed=10 * i)
    return zips


@pytest.mark.slow
def test_two_processes_on_one_folder_encode_each_zip_once(batches, tmp_path):
    results = _race(batches, tmp_path / "tokens", tmp_path / "s", 1.0, 1.0)
    assert sorted(code for code, _, _ in results) == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    assert "in use by another tokenize run" in loser, loser
    assert len(ledger.records(tmp_path / "tokens")) == 4  # one line per ZIP: nothing encoded twice


@pytest.mark.slow
def test_two_processes_with_different_settings_never_mix_one_folder(batches, tmp_path):
    for attempt in range(3):  # the settings race went wrong in 2 of 3 tries before the lock
        out = tmp_path / f"tokens{attempt}"
        results = _race(batches, out, tmp_path / "s", 1.0, 2.0)
        assert sorted(code for code, _, _ in results) == [0, 2], results
        settings = json.loads((out / tokenize.SETTINGS_FILE).read_text())
        assert {shards.read_index(p)["config_hash"] for p in shards.list_shards(out)} == {settings["config_hash"]}
        assert {r["config_hash"] for r in ledger.records(out)} == {settings["config_hash"]}
        assert len(shards.list_shards(out)) == 4


def test_an_out_that_is_a_file_is_refused_with_a_message(tmp_path):
    (tmp_path / "tokens").write_text("not a folder")
    with pytest.raises(UserError, match="The token folder .*tokens is a file"):
        tokenize.run(_config(tmp_path, tmp_path / "tokens", tmp_path / "s"))
