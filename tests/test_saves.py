"""When training saves and what it costs on Drive (issue 11): time-based saves that change nothing,
the bytes each save writes, the free space, and no `is_gradient_checkpointing` warnings."""

import warnings

import pytest

from _train_helpers import lora_weights, losses_by_step, same_weights, small_config, tokens
from nbutils.core import faults
from nbutils.train import checkpoint, saves
from nbutils.train import stage as train


class FakeClock:
    """Four minutes pass every time training looks at the clock (once per step, and at a save)."""

    def __init__(self):
        self.minutes = 0.0

    def __call__(self):
        self.minutes += 4
        return self.minutes * 60


def test_a_time_based_save_changes_nothing_and_resume_from_it_is_exact(tmp_path, monkeypatch):
    data = tokens(tmp_path)
    by_steps = dict(max_steps=8, save_every=100)  # no step-count save before the end
    reference = tmp_path / "reference"
    train.run(small_config(data, reference, save_every_minutes=0, **by_steps))

    monkeypatch.setattr(saves, "now", FakeClock())
    timed = tmp_path / "timed"
    messages = []
    train.run(small_config(data, timed, save_every_minutes=10, **by_steps), log=messages.append)
    assert [m.split(":")[0] for m in messages if m.startswith("Saved step")] == [
        "Saved step 3", "Saved step 6", "Saved step 8"]  # every 10 minutes (12 by this clock), and the end
    assert same_weights(lora_weights(timed), lora_weights(reference)), "saving more often changes no weight"
    assert losses_by_step(timed) == losses_by_step(reference)

    monkeypatch.setattr(saves, "now", FakeClock())
    out, messages = tmp_path / "stopped", []
    monkeypatch.setenv(faults.ENV, "interrupt:4")  # stopped in step 4, right after the time-based save of step 3
    with pytest.raises(KeyboardInterrupt):
        train.run(small_config(data, out, save_every_minutes=10, **by_steps), log=messages.append)
    assert [m for m in messages if m.startswith(("Saved step", "Stopped"))] == [
        next(m for m in messages if m.startswith("Saved step 3: ")),
        f"Stopped. Saved step 3 to {out / 'latest.pt'}; run the same command (or cell) again to continue.",
    ], "the stop found step 3 saved already: latest.pt is the time-based save's"
    assert checkpoint.list_steps(out) == [], "a time-based save writes latest.pt only"
    monkeypatch.delenv(faults.ENV)
    train.run(small_config(data, out, save_every_minutes=0, **by_steps), log=messages.append)
    assert any(m.startswith("Resuming from step 3 (latest.pt") for m in messages)
    assert same_weights(lora_weights(out), lora_weights(reference))
    assert losses_by_step(out) == losses_by_step(reference)
    assert losses_by_step(out, "val/loss") == losses_by_step(reference, "val/loss")


def test_save_every_minutes_defaults_to_10_in_colab_and_off_elsewhere(monkeypatch):
    for name in saves.COLAB_ENV:
        monkeypatch.delenv(name, raising=False)
    assert saves.minutes(None) == 0 and saves.minutes(5) == 5
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260819")
    assert saves.minutes(None) == 10 and saves.minutes(0) == 0
    assert train.TrainConfig().save_every_minutes is None
    with pytest.raises(train.UserError, match="save_every_minutes must be >= 0"):
        train.TrainConfig(save_every_minutes=-1)


def test_training_prints_the_free_space_and_the_bytes_each_save_writes(tmp_path, monkeypatch):
    out, messages, measured = tmp_path / "run", [], []
    real_free_bytes = saves.free_bytes

    def remembered(folder):  # the real measurement; other tests write to this disk meanwhile
        measured.append(real_free_bytes(folder))
        return measured[-1]
    monkeypatch.setattr(saves, "free_bytes", remembered)
    train.run(small_config(tokens(tmp_path), out, max_steps=2, save_every=2, keep_checkpoints=1),
              log=messages.append)
    assert len(measured) == 2 and all(m is not None and m > 0 for m in measured)
    free = saves.human_bytes(measured[0])
    assert any(m.startswith(f"Saving every 2 steps. Free space for the run folder: {free} ") for m in messages)
    free = saves.human_bytes(measured[1])
    latest, folder = (out / "latest.pt").stat().st_size, saves.size_of(checkpoint.step_dir(out, 2))
    h = saves.human_bytes
    assert f"Saved step 2: {h(latest + folder)} written (latest.pt {h(latest)} + checkpoints/step-000002 " \
           f"{h(folder)}), 0 B replaced or deleted; {free} free." in messages
    monkeypatch.setattr(saves, "free_bytes", lambda folder: 3 * latest)
    assert "Warning: room for fewer than 5 more saves. Empty Drive's Trash" in saves.save_note(
        4, {"latest.pt": latest}, latest, out)


def test_a_run_with_gradient_checkpointing_emits_no_is_gradient_checkpointing_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train.run(small_config(tokens(tmp_path), tmp_path / "run", grad_checkpointing="on", max_steps=2,
                               sample_every=2, sample_seconds=0.2))
    assert [str(w.message) for w in caught if "is_gradient_checkpointing" in str(w.message)] == []
