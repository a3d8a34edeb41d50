"""Checkpoints: RNG round trip, atomic latest.pt and its fallback, rotation, bytes written, fallbacks,
no non-finite state written or resumed, resume checks."""

import os
import random
import shutil

import numpy as np
import pytest
import torch

from nbutils.core import atomic, faults
from nbutils.core.errors import UserError
from nbutils.train import checkpoint, guard, saves


def _state(step, bad=None):
    state = {"step": step, "lora": {"w": torch.full((2, 2), float(step))}, "rng": checkpoint.rng_state(),
             "optimizer": {"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.ones(2, 2)}},
                           "param_groups": [{"lr": 1e-3, "params": [0]}]}}
    if bad == "lora":
        state["lora"]["w"][0, 0] = float("nan")
    elif bad == "optimizer":
        state["optimizer"]["state"][0]["exp_avg"][1, 1] = float("inf")
    return state


def _adapter(folder):
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"weights")


def _draws():
    return (torch.rand(3).tolist(), random.random(), np.random.rand(2).tolist(), random.gauss(0, 1))


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    random.gauss(0, 1)  # leaves a cached gaussian in python's state, which must survive too
    state = checkpoint.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = _draws()
    _draws()
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == expected


def test_cuda_rng_states_of_a_machine_with_more_gpus_restore_on_fewer(monkeypatch):
    # a checkpoint from 2 GPUs resumed on a 1-GPU Colab (nothing runs on a GPU here)
    state = checkpoint.rng_state()
    state["cuda"] = [torch.ByteTensor([1, 2]), torch.ByteTensor([3, 4])]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append((s.tolist(), device)))
    checkpoint.set_rng_state(state)
    assert restored == [([1, 2], 0)]


def test_rotation_keeps_exactly_the_newest_folders_and_the_previous_latest(tmp_path):
    for step in (2, 4, 6, 8):
        checkpoint.save(tmp_path, _state(step), _adapter, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000006", "step-000008"]
    assert checkpoint.list_steps(tmp_path) == [6, 8]
    folder = checkpoint.step_dir(tmp_path, 8)
    # the step folder is the adapter only: the full state (optimizer too) is written once, as latest.pt
    assert {p.name for p in folder.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert torch.load(tmp_path / "latest.pt", weights_only=True)["step"] == 8
    assert torch.load(tmp_path / "previous.pt", weights_only=True)["step"] == 6, "the fallback: the save before"
    checkpoint.save(tmp_path, _state(10), _adapter, keep=0)
    assert checkpoint.list_steps(tmp_path) == [] and torch.load(tmp_path / "latest.pt")["step"] == 10
    assert torch.load(tmp_path / "previous.pt")["step"] == 8


def test_save_reports_the_bytes_it_wrote_and_sent_to_the_trash(tmp_path):
    checkpoint.save(tmp_path, _state(2), _adapter, keep=1)
    latest_before, folder_before = (tmp_path / "latest.pt").stat().st_size, saves.size_of(tmp_path / "checkpoints")
    written, removed = checkpoint.save(tmp_path, _state(4), _adapter, keep=1)
    assert written == {"latest.pt": (tmp_path / "latest.pt").stat().st_size,
                       "checkpoints/step-000004": saves.size_of(checkpoint.step_dir(tmp_path, 4))}
    assert removed == folder_before, "only the pruned step-2 folder: the old latest.pt was renamed, not deleted"
    written, removed = checkpoint.save(tmp_path, _state(6), _adapter, keep=1, folder=False)  # time-based
    assert list(written) == ["latest.pt"] and removed == latest_before, "the replaced previous.pt (step 2)"
    assert checkpoint.list_steps(tmp_path) == [4]
    written, removed = checkpoint.save(tmp_path, _state(6), _adapter, keep=1, folder=False, keep_previous=False)
    assert torch.load(tmp_path / "previous.pt")["step"] == 4, "the same step saved again keeps the fallback"
    assert removed == written["latest.pt"]


@pytest.mark.parametrize("bad", ["lora", "optimizer"])
def test_a_non_finite_state_is_never_written(tmp_path, bad):
    checkpoint.save(tmp_path, _state(2), _adapter, keep=2)
    before = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(guard.Diverged, match=r"Not saving step 4: 1 of 3 tensors .* NaN or inf \(" + bad):
        checkpoint.save(tmp_path, _state(4, bad=bad), _adapter, keep=2)
    assert {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_failed_save_prunes_nothing(tmp_path):
    for step in (2, 4):
        checkpoint.save(tmp_path, _state(step), _adapter, keep=2)

    def broken(folder):
        (folder / "adapter_config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(tmp_path, _state(6), broken, keep=2)
    assert checkpoint.list_steps(tmp_path) == [2, 4], "old folders stay when the new one failed"
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_damaged_latest_falls_back_to_previous(tmp_path):
    for step in (2, 4):
        checkpoint.save(tmp_path, _state(step), _adapter, keep=2)
    (tmp_path / "latest.pt").write_bytes(b"not a checkpoint")
    messages = []
    state, path = checkpoint.load(tmp_path, log=messages.append)
    assert state["step"] == 2 and path == tmp_path / "previous.pt"
    assert "cannot read" in messages[0] and "latest.pt" in messages[0]
    (tmp_path / "previous.pt").write_bytes(b"x")
    with pytest.raises(UserError, match="No readable checkpoint"):
        checkpoint.load(tmp_path, log=messages.append)
    assert checkpoint.load(tmp_path / "empty") is None


def _old_layout(out, steps, poisoned=()):
    """A run folder as versions before 0.2 wrote it: step folders with a copy of latest.pt, no previous.pt."""
    for step in steps:
        state = _state(step, bad="lora" if step in poisoned else None)
        folder = checkpoint.step_dir(out, step)
        folder.mkdir(parents=True)
        _adapter(folder)
        torch.save(state, folder / "state.pt")
        torch.save(state, out / "latest.pt")


def test_step_folders_of_older_versions_are_still_fallbacks(tmp_path):
    _old_layout(tmp_path, (2, 4))
    (tmp_path / "latest.pt").write_bytes(b"torn")
    state, path = checkpoint.load(tmp_path, log=lambda m: None)
    assert state["step"] == 4 and path == checkpoint.step_dir(tmp_path, 4) / "state.pt"


def test_a_poisoned_latest_is_refused_naming_the_newest_good_checkpoint(tmp_path):
    _old_layout(tmp_path, (2, 4, 6, 8), poisoned=(6, 8))  # an older version saved on after the loss went NaN
    with pytest.raises(UserError) as err:
        checkpoint.load(tmp_path)
    message = str(err.value)
    assert f"{tmp_path / 'latest.pt'} (step 8) holds non-finite values: 1 of 3 tensors" in message
    good = checkpoint.step_dir(tmp_path, 4)
    assert f"newest good checkpoint is {good / 'state.pt'} (step 4)" in message
    doomed = [tmp_path / "latest.pt", checkpoint.step_dir(tmp_path, 8), checkpoint.step_dir(tmp_path, 6)]
    assert f"delete (or move out of the run folder) {', '.join(map(str, doomed))}, then run" in message
    (tmp_path / "latest.pt").unlink()  # doing what it says continues from step 4
    for folder in doomed[1:]:
        shutil.rmtree(folder)
    assert checkpoint.load(tmp_path)[0]["step"] == 4

    _old_layout(tmp_path / "all-bad", (2,), poisoned=(2,))
    with pytest.raises(UserError, match=r"(?s)No checkpoint in .* holds finite values.*new run name"):
        checkpoint.load(tmp_path / "all-bad")


def test_clean_settles_what_a_killed_writer_left(tmp_path):
    checkpoint.save(tmp_path, _state(2), _adapter, keep=2)
    dead = 2**22 + 12345  # a pid that is not running
    (tmp_path / f".latest.pt{atomic.TMP_MARK}{dead}-abcd1234").write_bytes(b"half")
    (tmp_path / "checkpoints" / f".step-000004{atomic.TMP_MARK}{dead}-abcd1234").mkdir()
    adapters = tmp_path / "adapters"
    (adapters / "best.old").mkdir(parents=True)  # killed between atomic_dir's two renames
    (adapters / "best.old" / "adapter_config.json").write_text("{}")
    checkpoint.clean(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapters", "checkpoints", "latest.pt"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]
    assert (adapters / "best" / "adapter_config.json").exists() and not (adapters / "best.old").exists()


def test_kill_while_writing_latest_keeps_the_previous_one(tmp_path):
    checkpoint.save(tmp_path, _state(2), _adapter, keep=2)
    pid = os.fork()
    if pid == 0:  # child: dies between writing the temporary file and renaming it
        os.environ[faults.ENV] = "latest-written:4"
        checkpoint.save(tmp_path, _state(4), _adapter, keep=2)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
    assert torch.load(tmp_path / "latest.pt", weights_only=True)["step"] == 2
    state, _ = checkpoint.load(tmp_path)
    assert state["step"] == 2 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_kill_between_keeping_the_old_latest_and_placing_the_new_one(tmp_path):
    for step in (2, 4):
        checkpoint.save(tmp_path, _state(step), _adapter, keep=2)
    pid = os.fork()
    if pid == 0:  # child: dies after latest.pt became previous.pt, before the new latest.pt is in place
        os.environ[faults.ENV] = "latest-kept:6"
        checkpoint.save(tmp_path, _state(6), _adapter, keep=2)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
    assert not (tmp_path / "latest.pt").exists()
    state, path = checkpoint.load(tmp_path)
    assert (state["step"], path.name) == (4, "previous.pt")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "the torn temporary file is cleared"


def test_meaningful_changes_are_refused_and_harmless_ones_noted(tmp_path):
    saved = {"model": "tiny", "lora_r": 8, "max_steps": 10, "save_every": 5}
    notes = checkpoint.check_resume(saved, {**saved, "max_steps": 20}, ["model", "lora_r"],
                                    ["max_steps", "save_every"], tmp_path)
    assert notes == ["max_steps: 10 -> 20 (accepted)"]
    with pytest.raises(UserError) as err:
        checkpoint.check_resume(saved, {**saved, "model": "facebook/musicgen-small", "lora_r": 16},
                                ["model", "lora_r"], ["max_steps"], tmp_path)
    message = str(err.value)
    assert "model: 'tiny' -> 'facebook/musicgen-small'" in message and "lora_r: 8 -> 16" in message
    assert "another output folder" in message and f"delete {tmp_path}" in message
