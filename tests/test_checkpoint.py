"""Checkpoints: RNG round trip, atomic latest.pt, rotation, fallbacks, resume checks."""

import os
import random

import numpy as np
import pytest
import torch

from nbutils.core import atomic, faults
from nbutils.core.errors import UserError
from nbutils.train import checkpoint


def _state(step):
    return {"step": step, "lora": {"w": torch.full((2, 2), float(step))}, "rng": checkpoint.rng_state()}


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


def test_rotation_keeps_exactly_the_newest_folders(tmp_path):
    for step in (2, 4, 6, 8):
        checkpoint.save(tmp_path, _state(step), _adapter, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000006", "step-000008"]
    assert checkpoint.list_steps(tmp_path) == [6, 8]
    folder = checkpoint.step_dir(tmp_path, 8)
    assert {p.name for p in folder.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "state.pt"}
    latest = torch.load(tmp_path / "latest.pt", weights_only=True)
    in_folder = torch.load(folder / "state.pt", weights_only=True)
    assert latest["step"] == in_folder["step"] == 8 and torch.equal(latest["lora"]["w"], in_folder["lora"]["w"])
    checkpoint.save(tmp_path, _state(10), _adapter, keep=0)
    assert checkpoint.list_steps(tmp_path) == [] and torch.load(tmp_path / "latest.pt")["step"] == 10


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


def test_damaged_latest_falls_back_to_newest_step_folder(tmp_path):
    for step in (2, 4):
        checkpoint.save(tmp_path, _state(step), _adapter, keep=2)
    (tmp_path / "latest.pt").write_bytes(b"not a checkpoint")
    messages = []
    state, path = checkpoint.load(tmp_path, log=messages.append)
    assert state["step"] == 4 and path == checkpoint.step_dir(tmp_path, 4) / "state.pt"
    assert "cannot read" in messages[0] and "latest.pt" in messages[0]
    for step in (2, 4):
        (checkpoint.step_dir(tmp_path, step) / "state.pt").write_bytes(b"x")
    with pytest.raises(UserError, match="No readable checkpoint"):
        checkpoint.load(tmp_path, log=messages.append)
    assert checkpoint.load(tmp_path / "empty") is None


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


def test_meaningful_changes_are_refused_and_harmless_ones_noted(tmp_path):
    from nbutils.train.stage import TrainConfig

    saved = {"model": "tiny", "lora_r": 8, "max_steps": 10, "save_every": 5, "out": "a", "data": {"x": "1"}}
    notes = checkpoint.check_resume(TrainConfig, saved, {**saved, "max_steps": 20, "out": "b"}, tmp_path)
    assert notes == ["max_steps: 10 -> 20 (accepted)"], "out is not compared: where the run is, not what it is"
    with pytest.raises(UserError) as err:
        checkpoint.check_resume(TrainConfig, saved, {**saved, "model": "facebook/musicgen-small", "lora_r": 16},
                                tmp_path)
    message = str(err.value)
    assert message.startswith(f"The run folder {tmp_path} holds a training run made with other settings, so it "
                              "cannot be continued:\n")
    assert "model: 'tiny' -> 'facebook/musicgen-small'" in message and "lora_r: 8 -> 16" in message
    assert "another output folder" in message and f"delete {tmp_path}" in message
    with pytest.raises(UserError, match="data: 1 changed"):  # a derived fact that must match too
        checkpoint.check_resume(TrainConfig, saved, {**saved, "data": {"x": "2"}}, tmp_path, ["data"])