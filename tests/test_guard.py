"""A diverging run never overwrites the last good checkpoint (issue 17): non-finite steps are skipped,
a runaway run stops with advice, nothing non-finite is saved or resumed, samples never end training."""

import math
import shutil
import time

import pytest
import torch

from _train_helpers import (
    bar_postfixes,
    lora_weights,
    losses_by_step,
    offline_runs,
    same_weights,
    small_config,
    tokens,
    wandb_history,
)
from nbutils.core import faults
from nbutils.core.errors import UserError
from nbutils.train import checkpoint, guard, hub, samples
from nbutils.train import stage as train
from nbutils.train.trainer import Trainer


def _finite(tree) -> bool:
    return guard.non_finite(tree) == []


def _safetensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


# ---------------------------------------------------------------------------------------------
# The run: lr 1e6
# ---------------------------------------------------------------------------------------------


def test_lr_1e6_is_stopped_and_only_the_last_good_weights_are_saved(tmp_path):
    """`train --lr 1e6 --warmup-steps 0 --lora-targets all-linear --max-steps 20 --save-every 5`: step 1 is
    applied (its loss is finite), every later loss is NaN. Before, latest.pt got 120 of 160 tensors NaN and
    the samples crashed the run."""
    data = tokens(tmp_path)
    settings = dict(lr=1e6, warmup_steps=0, lora_targets="all-linear", save_every=5, sample_every=5,
                    sample_seconds=0.2, keep_checkpoints=2)
    one_step = tmp_path / "one-step"
    train.run(small_config(data, one_step, max_steps=1, **{**settings, "sample_every": 0}))
    out, messages = tmp_path / "run", []
    with pytest.raises(guard.Diverged) as stopped:
        train.run(small_config(data, out, max_steps=20, **settings), log=messages.append)
    message = str(stopped.value)
    assert "the last 10 steps (2 to 11) were all skipped" in message and "the loss is NaN: 10x" in message
    assert f"{out}/latest.pt (step 10) holds the weights of step 1, the last step applied" in message
    assert "lower the learning rate: lr is 1e+06" in message and "check the tracks of the skipped steps: " in message

    latest = torch.load(out / "latest.pt", weights_only=True)
    assert latest["step"] == 10 and _finite(latest["lora"]) and _finite(latest["optimizer"])
    assert same_weights(latest["lora"], lora_weights(one_step)), "the weights of step 1, the last good step"
    assert _finite(torch.load(out / "previous.pt", weights_only=True)["lora"])
    for step in (5, 10):  # the adapters: step folders; adapters/best needs a finite validation loss
        assert same_weights(_safetensors(checkpoint.step_dir(out, step)), _safetensors(one_step / "adapters" / "final"))
    assert not (out / "adapters").exists() and latest["best_val_loss"] is None

    rows = {r["step"]: r for r in train.read_metrics(out) if "train/lr" in r}
    assert sorted(rows) == list(range(1, 12)) and "train/skipped" not in rows[1]
    for step in range(2, 12):
        assert rows[step]["train/skipped"] == 1 and rows[step]["train/loss"] is None
        assert rows[step]["train/skip_reason"] == "the loss is NaN"
        assert "archive_batch_" in rows[step]["train/skip_tracks"]
    failed = [m for m in messages if m.startswith("Warning: the samples of step")]
    assert len(failed) == 2 and "probability tensor contains either `inf`, `nan`" in failed[0], messages


# ---------------------------------------------------------------------------------------------
# One poisoned batch
# ---------------------------------------------------------------------------------------------


def test_a_single_nan_batch_is_skipped_and_the_run_equals_one_that_never_saw_it(tmp_path, monkeypatch):
    data = tokens(tmp_path)
    out, messages = tmp_path / "poisoned", []
    monkeypatch.setenv(faults.ENV, "nan-loss:3")
    shown = bar_postfixes(monkeypatch)
    summary = train.run(small_config(data, out, max_steps=6, wandb="offline"), log=messages.append)
    assert [s.get("skipped") for s in shown] == [None, None, 1, 1, 1, 1]  # the bar counts it from step 3 on
    monkeypatch.delenv(faults.ENV)
    assert summary["step"] == 6 and math.isfinite(summary["train_loss"])

    # The same run with step 3's batch taken out of the data: its cursor moves past it, nothing else.
    reference = Trainer(small_config(data, tmp_path / "never-saw-it", max_steps=6), quiet=True)
    reference.begin()
    reference.start()
    tracks_of_step_3 = None
    while reference.step < reference.total_steps:
        if reference.step == 2:
            tracks_of_step_3 = reference.sampler.tracks(reference.cursor)
            reference.cursor = reference.sampler.advance(reference.cursor)
            reference.step += 1
            continue
        reference.after_step(reference.train_step())
    reference.finish()

    assert same_weights(lora_weights(out), lora_weights(reference.out))
    ours, theirs = (torch.load(o / "latest.pt", weights_only=True)["optimizer"] for o in (out, reference.out))
    assert all(torch.equal(ours["state"][i][k], theirs["state"][i][k]) for i in ours["state"] for k in ours["state"][i])
    losses = losses_by_step(out)
    assert losses.pop(3) is None and losses == losses_by_step(reference.out)
    assert losses_by_step(out, "val/loss") == losses_by_step(reference.out, "val/loss")

    row = next(r for r in train.read_metrics(out) if r["step"] == 3 and "train/lr" in r)
    assert row["train/skipped"] == 1 and row["train/skip_reason"] == "the loss is NaN"
    assert row["train/skip_tracks"] == ", ".join(tracks_of_step_3) and row["train/skipped_steps"] == 1
    assert f"Step 3 skipped: the loss is NaN; the weights were not changed. Tracks: {row['train/skip_tracks']}." \
        in messages
    logged = {}
    deadline = time.monotonic() + 20
    while 3 not in logged and time.monotonic() < deadline:  # wandb's writer may lag finish()
        logged = {r["_step"]: r for r in wandb_history(offline_runs(out)[0]) if "train/skip_tracks" in r}
        time.sleep(0.2)
    assert logged[3]["train/skip_tracks"] == row["train/skip_tracks"] and logged[3]["train/skipped"] == 1


# ---------------------------------------------------------------------------------------------
# fp16: the loss scaler's own skips
# ---------------------------------------------------------------------------------------------


def _fake_fp16(trainer, overflow_at: int):
    """A real GradScaler on the CPU, wired in as accelerate wires fp16's: the loss is scaled before
    backward, the gradients are unscaled before clipping (which notes any inf/NaN), and the scaler
    steps the optimizer, skipping the step and halving its scale after an inf/NaN. At step
    ``overflow_at`` one gradient overflows, as a half-precision one does past 65504."""
    from accelerate.optimizer import AcceleratedOptimizer

    inner, acc = trainer.optimizer.optimizer, trainer.accelerator
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)  # fp16's initial scale
    wrapped = AcceleratedOptimizer(inner, device_placement=False, scaler=scaler)
    acc.scaler, acc._optimizers, trainer.optimizer = scaler, [wrapped], wrapped
    acc.unscale_gradients = lambda optimizer=None: scaler.unscale_(inner)
    backward = acc.backward

    def backward_that_overflows(loss, **kwargs):
        backward(loss, **kwargs)  # accelerate: scaler.scale(loss).backward()
        if trainer.step + 1 == overflow_at:
            next(p for p in trainer.model.parameters() if p.requires_grad).grad[0, 0] = float("inf")

    acc.backward = backward_that_overflows
    return scaler


def test_fp16_overflow_on_a_faked_scaler_is_counted_not_handled_twice(tmp_path):
    trainer = Trainer(small_config(tokens(tmp_path), tmp_path / "run", lora_dropout=0.0), quiet=True)
    scaler = _fake_fp16(trainer, overflow_at=2)
    trainer.train_step()
    before, scheduled = {k: v.clone() for k, v in trainer.state()["lora"].items()}, trainer.scheduler.last_epoch
    row = trainer.train_step()
    assert row["train/skip_reason"] == guard.SCALER_SKIP and row["train/skipped"] == 1
    assert math.isfinite(row["train/loss"]) and row["train/grad_norm"] == math.inf
    assert trainer.guard.skipped == trainer.guard.scaler_skipped == 1 and trainer.guard.in_a_row == 1
    assert scaler.get_scale() == 2.0**15, "the scaler skipped it and halved its scale, once"
    assert same_weights(trainer.state()["lora"], before) and trainer.scheduler.last_epoch == scheduled
    assert trainer.step == 2, "a skipped step still counts (its data was used)"

    row = trainer.train_step()
    assert "train/skipped" not in row and row["train/skipped_steps"] == 1 and trainer.guard.in_a_row == 0
    assert not same_weights(trainer.state()["lora"], before) and trainer.scheduler.last_epoch == scheduled + 1
    assert scaler.get_scale() == 2.0**15
    trainer.save()
    assert torch.load(tmp_path / "run" / "latest.pt", weights_only=True)["guard"]["scaler_skipped"] == 1
    trainer.release()


# ---------------------------------------------------------------------------------------------
# A runaway (finite) loss
# ---------------------------------------------------------------------------------------------


def test_with_its_defaults_a_runaway_loss_stops_after_20_steps_above_twice_the_median(tmp_path, monkeypatch):
    """The README's defaults (2 x the running median, 20 steps in a row, a verdict after 20 losses)."""
    defaults = train.TrainConfig(tokens="x")
    assert (defaults.divergence_factor, defaults.divergence_steps, guard.MIN_HISTORY) == (2.0, 20, 20)
    monkeypatch.setenv(faults.ENV, "high-loss:25")  # x100 from step 25 on
    with pytest.raises(guard.Diverged) as stopped:
        train.run(small_config(tokens(tmp_path), tmp_path / "run", max_steps=80, save_every=100, eval_every=100,
                               warmup_steps=0))
    assert "from step 25 to 44 the loss stayed above 2 x its running median" in str(stopped.value)


def test_a_runaway_loss_stops_the_run_and_the_last_good_checkpoint_stays(tmp_path, monkeypatch):
    monkeypatch.setattr(guard, "MIN_HISTORY", 4)  # a verdict after 4 losses (20 in real runs)
    data = tokens(tmp_path)
    settings = dict(max_steps=30, save_every=2, eval_every=100, divergence_steps=4, keep_checkpoints=1)
    out, messages = tmp_path / "run", []
    monkeypatch.setenv(faults.ENV, "high-loss:9")  # x100 from step 9 on
    with pytest.raises(guard.Diverged) as stopped:
        train.run(small_config(data, out, **settings), log=messages.append)
    message = str(stopped.value)
    assert "from step 9 to 12 the loss stayed above 2 x its running median" in message and "4 steps in a row" in message
    assert f"{out}/latest.pt (step 8), saved before the trouble began, is kept as it was" in message
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 8, "the saves of steps 10 and 12 waited"
    assert checkpoint.list_steps(out) == [8]

    # A stop while the loss runs away does not save either; once it is gone, the waiting save happens.
    monkeypatch.setenv(faults.ENV, "high-loss:9,interrupt:11")
    with pytest.raises(KeyboardInterrupt):
        train.run(small_config(data, out, **{**settings, "divergence_steps": 10}), log=messages.append)
    assert "Stopped at step 10, not saved: the loss has been far above its running median since step 9" in messages[-1]
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 8
    monkeypatch.setenv(faults.ENV, "interrupt:13")  # no runaway loss now: training recovers
    with pytest.raises(KeyboardInterrupt):
        train.run(small_config(data, out, **settings), log=messages.append)
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 12


def test_the_guard_resumes_where_it_stopped():
    first = guard.StepGuard(max_skipped=3, factor=2.0, patience=2)
    for step, loss in enumerate([4.0] * 25, start=1):
        first.record(step, loss, None)
    first.record(26, float("nan"), "the loss is NaN", ["a.wav"])
    first.record(27, float("nan"), "the loss is NaN", ["b.wav"])
    resumed = guard.StepGuard(max_skipped=3, factor=2.0, patience=2)
    resumed.load(torch.load(_saved(first.state()), weights_only=True))
    for g in (first, resumed):
        g.record(28, float("nan"), "the loss is NaN", ["c.wav"])
    verdicts = [str(g.verdict(step=28, lr=1e-3, precision="fp16", saved=20, out="RUN")) for g in (first, resumed)]
    assert verdicts[0] == verdicts[1] and "the last 3 steps (26 to 28)" in verdicts[0]
    assert "a.wav, b.wav, c.wav" in verdicts[0] and "use bf16 instead of fp16" in verdicts[0]
    assert guard.StepGuard(3, 2.0, 2).verdict(step=1, lr=1e-3, precision="fp32", saved=None, out="RUN") is None


def _saved(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


# ---------------------------------------------------------------------------------------------
# Never save, resume or upload non-finite state
# ---------------------------------------------------------------------------------------------


def _poison(path):
    state = torch.load(path, weights_only=True)
    for tensor in state["lora"].values():
        tensor.fill_(float("nan"))
    for values in state["optimizer"]["state"].values():
        values["exp_avg"].fill_(float("inf"))
    torch.save(state, path)


def test_resume_from_a_poisoned_latest_is_refused_and_the_good_step_continues_exactly(tmp_path):
    data = tokens(tmp_path)
    reference = tmp_path / "reference"
    constant = dict(scheduler="constant")  # the schedule does not depend on max_steps: 2 + 2 + 2 steps = 6 steps
    train.run(small_config(data, reference, max_steps=6, **constant))
    out = tmp_path / "old-version-run"  # as versions before 0.2 left it: state.pt in every step folder
    for steps in (2, 4, 6):
        train.run(small_config(data, out, max_steps=steps, **constant))
        shutil.copy(out / "latest.pt", checkpoint.step_dir(out, steps) / "state.pt")
    (out / "previous.pt").unlink()
    _poison(out / "latest.pt")  # the old version kept saving after the loss went NaN
    _poison(checkpoint.step_dir(out, 6) / "state.pt")
    with pytest.raises(UserError) as refused:
        train.run(small_config(data, out, max_steps=8, **constant))
    message = str(refused.value)
    assert f"{out / 'latest.pt'} (step 6) holds non-finite values" in message
    assert f"newest good checkpoint is {checkpoint.step_dir(out, 4) / 'state.pt'} (step 4)" in message
    assert f"delete (or move out of the run folder) {out / 'latest.pt'}, {checkpoint.step_dir(out, 6)}" in message
    (out / "latest.pt").unlink()
    shutil.rmtree(checkpoint.step_dir(out, 6))
    messages = []
    train.run(small_config(data, out, max_steps=6, **constant), log=messages.append)
    assert any("Resuming from step 4 (checkpoints/step-000004/state.pt" in m for m in messages), messages
    assert same_weights(lora_weights(out), lora_weights(reference))


def test_non_finite_adapters_are_neither_written_nor_uploaded(tmp_path):
    from safetensors.torch import save_file

    out = tmp_path / "run"
    trainer = Trainer(small_config(tokens(tmp_path), out), quiet=True)
    trainer.begin()
    trainer.save_adapter("best")
    with torch.no_grad():
        next(p for n, p in trainer.unwrapped().named_parameters() if "lora_B" in n).fill_(float("inf"))
    with pytest.raises(guard.Diverged, match="Not writing .*adapters/best: 1 LoRA weights are NaN or inf"):
        trainer.save_adapter("best")
    with pytest.raises(guard.Diverged, match="Not saving step 0"):
        trainer.save()
    assert not (out / "latest.pt").exists() and _finite(_safetensors(out / "adapters" / "best"))
    trainer.release()

    bad = tmp_path / "bad-adapter"
    shutil.copytree(out / "adapters" / "best", bad)
    weights = _safetensors(bad)
    next(iter(weights.values()))[0, 0] = float("nan")
    save_file(weights, str(bad / "adapter_model.safetensors"))
    calls = []

    class Api:
        def __getattr__(self, name):
            return lambda *args, **kwargs: calls.append(name)

    with pytest.raises(guard.Diverged, match="Not uploading .*bad-adapter: 1 of its LoRA weights are NaN"):
        hub.push(bad, "someone/lora", api=Api())
    assert calls == [], "nothing was sent"
    hub.push(out / "adapters" / "best", "someone/lora", api=Api())
    assert calls == ["create_repo", "upload_folder"]


# ---------------------------------------------------------------------------------------------
# Samples never end training
# ---------------------------------------------------------------------------------------------


def test_failed_samples_are_logged_and_out_of_memory_keeps_its_handling(tmp_path, monkeypatch):
    data = tokens(tmp_path)
    reference = tmp_path / "reference"
    train.run(small_config(data, reference, max_steps=4))
    real_write = samples.write

    def failing(model, processor, spec, folder, *, kind, step, **kwargs):
        if step == 2:
            raise ValueError("a sampling error")
        return real_write(model, processor, spec, folder, kind=kind, step=step, **kwargs)

    monkeypatch.setattr(samples, "write", failing)
    out, messages = tmp_path / "run", []
    summary = train.run(small_config(data, out, max_steps=4, sample_every=2, sample_seconds=0.2), log=messages.append)
    assert summary["step"] == 4
    assert "Warning: the samples of step 2 failed (ValueError: a sampling error); training continues without " \
           "them." in messages
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-000000", "step-000004"]
    assert same_weights(lora_weights(out), lora_weights(reference)), "samples change nothing, failed or not"

    def out_of_memory(model, processor, spec, folder, *, kind, **kwargs):
        if kind == "lora":  # during training (step 2), where a step's out-of-memory advice applies
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_write(model, processor, spec, folder, kind=kind, **kwargs)

    monkeypatch.setattr(samples, "write", out_of_memory)
    with pytest.raises(UserError, match="Out of GPU memory with batch_size 2"):
        train.run(small_config(data, tmp_path / "oom", max_steps=4, sample_every=2, sample_seconds=0.2))
