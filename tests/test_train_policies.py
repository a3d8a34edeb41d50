"""Training policies a Colab user runs by default: epochs, the best adapter, clipping, samples during training."""

import json
import math

import pytest
import torch

from _train_helpers import lora_weights, losses_by_step, small_config, tokens
from nbutils.core import faults
from nbutils.train import build
from nbutils.train import stage as train
from nbutils.train.trainer import SAMPLES_DIR


def _adapter(out, name):
    from safetensors.torch import load_file

    return load_file(str(out / "adapters" / name / "adapter_model.safetensors"))


def test_epochs_set_the_length_when_max_steps_is_zero(tmp_path):
    data, out = tokens(tmp_path), tmp_path / "run"
    trainer = train.Trainer(small_config(data, tmp_path / "probe", max_steps=0, epochs=2), quiet=True)
    per_epoch = trainer.sampler.steps_per_epoch
    assert per_epoch >= 2
    summary = train.run(small_config(data, out, max_steps=0, epochs=2, save_every=100))
    assert summary["step"] == summary["total_steps"] == 2 * per_epoch
    assert summary["epoch"] == 2
    epochs = [r["epoch"] for r in train.read_metrics(out) if "epoch" in r]
    assert epochs[per_epoch - 1] == pytest.approx(1.0) and epochs[-1] == pytest.approx(2.0)


def test_best_adapter_is_the_step_with_the_lowest_validation_loss(tmp_path):
    data, out = tokens(tmp_path), tmp_path / "run"
    summary = train.run(small_config(data, out, max_steps=6, eval_every=1, save_every=100, lr=3e-2))
    val = losses_by_step(out, "val/loss")
    assert sorted(val) == [1, 2, 3, 4, 5, 6]
    best_step = min(val, key=val.get)
    assert summary["best_step"] == best_step and summary["best_val_loss"] == pytest.approx(val[best_step])
    facts = json.loads((out / "adapters" / "best" / "training.json").read_text())
    assert facts["step"] == best_step
    if best_step != 6:  # the best adapter holds that step's weights, not the last ones
        best, final = _adapter(out, "best"), _adapter(out, "final")
        assert any(not torch.equal(best[k], final[k]) for k in best)


def test_gradient_clipping_bounds_the_update(tmp_path):
    data = tokens(tmp_path)
    moved = {}
    for norm in (0.0, 1e-6):
        out = tmp_path / f"clip-{norm}"
        cfg = small_config(data, out, max_steps=1, warmup_steps=0, lr=1e-2, lora_dropout=0.0, max_grad_norm=norm)
        trainer = train.Trainer(cfg, quiet=True)
        before = {k: v.clone() for k, v in trainer.state()["lora"].items()}
        row = trainer.train_step()
        after = trainer.state()["lora"]
        moved[norm] = sum(float((after[k] - before[k]).abs().sum()) for k in before)
        assert row["train/grad_norm"] > 1e-3, "the reported norm is the one before clipping"
    # Adam normalises the step size, so clipping shows in the first step only through epsilon:
    # a gradient clipped to 1e-6 is comparable to eps (1e-8 .. 1e-6) and the update shrinks.
    assert moved[1e-6] < 0.9 * moved[0.0], moved


def test_samples_during_training_change_nothing_and_reuse_prompts_and_seeds(tmp_path, monkeypatch):
    data = tokens(tmp_path)
    plain = tmp_path / "plain"
    train.run(small_config(data, plain, max_steps=6))
    out = tmp_path / "sampled"
    cfg = small_config(data, out, max_steps=6, sample_every=2, sample_seconds=0.2)
    monkeypatch.setenv(faults.ENV, "interrupt:5")
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg)
    monkeypatch.delenv(faults.ENV)
    train.run(cfg)
    assert losses_by_step(plain) == losses_by_step(out), "making samples does not move the training RNG"
    assert all(torch.equal(a, b) for a, b in zip(lora_weights(plain).values(), lora_weights(out).values()))
    infos = [json.loads(p.read_text()) for p in sorted((out / SAMPLES_DIR).glob("*/*/samples.json"))]
    infos += [json.loads(p.read_text()) for p in sorted((out / SAMPLES_DIR).glob("*/samples.json"))]
    assert len(infos) >= 3
    assert len({(tuple(i["prompts"]), tuple(i["seeds"])) for i in infos}) == 1


def test_a_relative_model_folder_is_recorded_as_an_absolute_path(tmp_path, tiny_dir, monkeypatch):
    import os

    data = tokens(tmp_path)
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(tiny_dir, tmp_path)
    summary = train.run(small_config(data, tmp_path / "run", model=relative, max_steps=1, save_every=1))
    config = json.loads((tmp_path / "run" / "adapters" / "final" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_dir.resolve()) != relative
    assert summary["step"] == 1


def test_raising_max_steps_continues_on_the_new_schedule(tmp_path):
    data, out = tokens(tmp_path), tmp_path / "run"
    train.run(small_config(data, out, max_steps=6))
    assert train.run(small_config(data, out, max_steps=10))["step"] == 10
    lrs = losses_by_step(out, "train/lr")
    # step 7 is the first update of the longer run: its rate comes from the 10-step cosine, not the
    # finished 6-step one (which had decayed to 0 there)
    assert lrs[7] == pytest.approx(3e-3 * build.lr_factor(6, total=10, warmup=2, kind="cosine"), rel=1e-6)
    assert lrs[7] > lrs[8] > lrs[9] > lrs[10] > 0


def test_stop_during_the_optimizer_update_keeps_that_steps_metrics_and_resumes_exactly(tmp_path, monkeypatch):
    import os
    import signal

    from nbutils.train import checkpoint

    data = tokens(tmp_path)
    reference = tmp_path / "reference"
    train.run(small_config(data, reference))
    original, calls = checkpoint.rng_state, []

    def stop_button_mid_update():  # taken once at the start, then inside each step's optimizer update
        calls.append(1)
        if len(calls) == 1 + 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original()

    out = tmp_path / "stopped"
    monkeypatch.setattr(checkpoint, "rng_state", stop_button_mid_update)
    with pytest.raises(KeyboardInterrupt):
        train.run(small_config(data, out))
    monkeypatch.undo()
    saved = torch.load(out / "latest.pt", weights_only=True)
    assert saved["step"] == 3 and sorted(losses_by_step(out)) == [1, 2, 3], "step 3's metrics are kept"
    assert saved["train_loss"] == losses_by_step(out)[3]
    train.run(small_config(data, out))
    assert losses_by_step(out) == losses_by_step(reference)
    assert all(torch.equal(v, lora_weights(reference)[k]) for k, v in lora_weights(out).items())


def test_online_wandb_without_a_key_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setattr(train, "Trainer", lambda *a, **k: pytest.fail("the model loaded before the check"))
    with pytest.raises(train.UserError, match="needs an API key.*Secrets panel.*offline"):
        train.run(small_config(tmp_path / "tokens", tmp_path / "run", wandb="online"))


def test_sample_prompts_given_as_one_text_are_split_not_spelled():
    config = train.TrainConfig(sample_prompts="dark techno | calm piano |")
    assert config.sample_prompts == ["dark techno", "calm piano"]
    with pytest.raises(train.UserError, match="sample_prompts"):
        train.TrainConfig(sample_prompts=["ok", 3])


def test_half_precision_training_keeps_t5_and_encodec_in_float32(tmp_path):
    # bf16 autocast runs on the CPU too: the decoder computes in bf16, the frozen T5 and EnCodec's
    # decoder stay in float32 (as in audiocraft); training still runs end to end
    trainer = train.Trainer(small_config(tokens(tmp_path), tmp_path / "run", precision="bf16"), quiet=True)
    seen = {}

    def hook(name):
        def record(module, args, output):
            seen.setdefault(name, output.dtype)  # the first call; returns None: the output is unchanged

        return record

    base = trainer.base
    base.text_encoder.encoder.block[-1].layer[-1].DenseReluDense.wo.register_forward_hook(hook("t5"))
    base.decoder.lm_heads[0].register_forward_hook(hook("decoder"))
    with trainer.autocast():
        decoded = base.audio_encoder.decode(torch.zeros(1, 1, 4, 10, dtype=torch.long), [None]).audio_values
        batch = trainer.collate(trainer.sampler.micro_batches(trainer.cursor)[0])
        trainer.model(**batch.model_inputs())
    assert seen == {"t5": torch.float32, "decoder": torch.bfloat16} and decoded.dtype == torch.float32
    assert "forward" not in vars(base.text_encoder) and "decode" not in vars(base.audio_encoder), "patches undone"
    assert torch.isfinite(torch.tensor(trainer.train_step()["train/loss"]))


def test_start_notes_whole_segment_crops_and_a_warmup_longer_than_the_run(tmp_path):
    logged = []
    # the test shards hold segments of about a second; 5 s crops are whole segments
    train.run(small_config(tokens(tmp_path), tmp_path / "run", crop_seconds=5.0, warmup_steps=6, max_steps=4),
              log=logged.append)
    text = "\n".join(logged)
    assert "each crop is a whole segment" in text and "warmup_steps (6) is more than the run's 4 steps" in text
    with pytest.raises(train.UserError, match="val_crops must be >= 1.*val_fraction 0"):
        train.TrainConfig(val_crops=0)


@pytest.mark.requires_cuda
def test_fp16_on_a_gpu_scales_the_loss_and_skips_an_overflowing_step_whole(tmp_path):
    """fp16 trains with loss scaling (T4, V100). A step whose scaled gradients overflow changes no
    weight, halves the scale and leaves the schedule where it was; a normal step updates the LoRA
    weights and keeps the scale. The scaler's state is saved and comes back on resume."""
    cfg = small_config(tokens(tmp_path), tmp_path / "run", precision="fp16", lora_dropout=0.0)
    trainer = train.Trainer(cfg, quiet=True)
    scaler = trainer.accelerator.scaler
    assert trainer.device.type == "cuda" and scaler is not None and scaler.is_enabled()
    assert {p.dtype for n, p in trainer.base.decoder.named_parameters() if "lora_" not in n} == {torch.float16}
    assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {torch.float32}

    def step() -> tuple[dict, bool]:
        before = {k: v.clone() for k, v in trainer.state()["lora"].items()}
        scale, scheduled = scaler.get_scale(), trainer.scheduler.last_epoch
        row = trainer.train_step()
        changed = any(not torch.equal(v, before[k]) for k, v in trainer.state()["lora"].items())
        skipped = trainer.accelerator.optimizer_step_was_skipped
        if skipped:  # all or nothing: no weight, no schedule step, a smaller scale
            assert not changed and scaler.get_scale() == scale / 2 and trainer.scheduler.last_epoch == scheduled
        else:
            assert changed and scaler.get_scale() == scale and trainer.scheduler.last_epoch == scheduled + 1
            assert math.isfinite(row["train/loss"]) and math.isfinite(row["train/grad_norm"])
        assert row["train/gpu_mem_gb"] > 0
        return row, skipped

    step()  # the first step: applied or skipped (scale 65536 may overflow), consistently either way
    scaler.update(2.0**60)  # no fp16 gradient survives this scale
    assert step()[1], "an overflowing step is skipped"
    scaler.update(1024.0)
    assert not step()[1], "a sane scale applies the step"
    assert trainer.step == 3, "a skipped step still counts (its data was used)"
    trainer.save()
    saved = scaler.state_dict()
    assert torch.load(tmp_path / "run" / "latest.pt", weights_only=True)["scaler"] == saved
    trainer.release()

    resumed = train.Trainer(cfg, quiet=True)
    resumed.begin()
    assert resumed.step == 3 and resumed.accelerator.scaler.state_dict() == saved
