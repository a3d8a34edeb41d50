import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from nbutils.core import atomic


def test_write_json_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "state.json"
    atomic.write_json(target, {"step": 1})
    atomic.write_json(target, {"step": 2})
    assert atomic.read_json(target) == {"step": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "state.json"
    atomic.write_json(target, {"step": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert atomic.read_json(target) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_sigkill_mid_write_keeps_previous_file(tmp_path):
    target = tmp_path / "big.bin"
    atomic.write_bytes(target, b"old")
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(os.getcwd())!r})
        from nbutils.core import atomic
        with atomic.atomic_path({str(target)!r}) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"x" * 1000)
                fh.flush()
                print("writing", flush=True)
                time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == b"old"
    leftovers = [p for p in tmp_path.iterdir() if p.name != "big.bin"]
    assert len(leftovers) == 1 and atomic.TMP_MARK in leftovers[0].name
    assert atomic.remove_stale_temps(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["big.bin"]


def test_stale_temps_of_a_live_writer_are_kept(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f".x{atomic.TMP_MARK}{sleeper.pid}-abcd"
        live.write_text("in progress")
        assert atomic.remove_stale_temps(tmp_path) == 0
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_jsonl_skips_torn_last_line(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    atomic.append_line(ledger, '{"zip": "a", "status": "done"}')
    with open(ledger, "a") as fh:
        fh.write('{"zip": "b", "sta')  # killed mid-append
    assert atomic.read_jsonl(ledger) == [{"zip": "a", "status": "done"}]


def test_atomic_dir_replaces_whole_folder(tmp_path):
    target = tmp_path / "adapter"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic.atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_recover_dir_after_kill_between_renames(tmp_path):
    target = tmp_path / "adapter"
    old = tmp_path / "adapter.old"
    old.mkdir()
    (old / "a.txt").write_text("1")
    atomic.recover_dir(target)
    assert (target / "a.txt").read_text() == "1" and not old.exists()


def test_json_and_jsonl_survive_any_python_string(tmp_path):
    # A lone surrogate (the JSON escape "\ud800" in a user's metadata) and a command-line argument
    # that was not UTF-8 (Python keeps its bytes as surrogates) used to crash the strict UTF-8 encode.
    texts = {"lone": "a \ud800 b", "argv": "caf\udce9", "fine": "Björk – 日本"}
    atomic.write_json(tmp_path / "x.json", texts)
    assert atomic.read_json(tmp_path / "x.json") == texts
    atomic.append_line(tmp_path / "x.jsonl", json.dumps(texts, ensure_ascii=False))
    assert atomic.read_jsonl(tmp_path / "x.jsonl") == [texts]
    assert "Björk – 日本" in (tmp_path / "x.json").read_text(encoding="utf-8")  # still readable text


def test_read_jsonl_skips_lines_with_huge_numbers_or_deep_nesting(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_text('{"a": 1}\n{"a": %s}\n{"a": %s}\n{"a": 2}\n' % ("9" * 5000, "[" * 100_000 + "]" * 100_000))
    assert atomic.read_jsonl(path) == [{"a": 1}, {"a": 2}]
