"""Training end to end on the tiny model: CLI contract, learning, exact resume, refusals, rotation,
several processes, and notebook 02 executed headlessly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _train_helpers import (
    bar_postfixes,
    cli_args,
    live_musicgens,
    lora_weights,
    losses_by_step,
    same_weights,
    small_config,
    tokens,
    write_shards,
)
from nbutils.core import faults
from nbutils.core.errors import UserError
from nbutils.core.sampling import SamplingConfig
from nbutils.tokenize import shards
from nbutils.train import build, checkpoint
from nbutils.train import stage as train

REPO = Path(__file__).resolve().parents[1]



def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def _cli(*args, crash=None, timeout=300):
    env = _env(**({faults.ENV: crash} if crash else {}))
    return subprocess.run([sys.executable, "-m", "nbutils", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _last_json(stdout):
    return json.loads([line for line in stdout.splitlines() if line.strip()][-1])


# ---------------------------------------------------------------------------------------------
# The CLI contract and the adapter
# ---------------------------------------------------------------------------------------------


def test_cli_writes_the_contract_and_resumes(tmp_path, tiny_dir):
    data, out = tokens(tmp_path), tmp_path / "run"
    args = cli_args(data, out, "--model", str(tiny_dir), "--max-steps", "4", "--sample-every", "2",
                    "--sample-seconds", "0.2", "--lr", "1e-2")
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr
    summary = _last_json(proc.stdout)
    assert summary["step"] == 4 and isinstance(summary["train_loss"], float) and isinstance(summary["val_loss"], float)
    assert "Starting a new run" in proc.stdout

    state = torch.load(out / "latest.pt", weights_only=True)
    assert isinstance(state["step"], int) and state["step"] == 4 and isinstance(state["epoch"], int)
    assert state["base_model"] == str(tiny_dir) and state["config"]["max_steps"] == 4
    assert state["lora_config"]["target_modules"] == sorted(state["lora_config"]["target_modules"])
    assert state["lora_config"]["r"] == 4 and state["wandb_run_id"] is None
    assert all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in state["lora"])
    assert {"torch", "cuda", "python", "numpy"} <= state["rng"].keys()
    for key in ("optimizer", "scheduler", "scaler", "cursor"):
        assert key in state
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    for folder in [out / "checkpoints" / "step-000004", out / "adapters" / "best", out / "adapters" / "final"]:
        assert (folder / "adapter_model.safetensors").exists()
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_dir)
    split = json.loads((out / "split.json").read_text())
    assert split["val_tracks"] and not set(split["val_tracks"]) & set(split["train_tracks"])
    base_samples = json.loads((out / "samples" / "step-000000" / "samples.json").read_text())
    assert base_samples["kind"] == "base" and (out / "samples" / "step-000000" / base_samples["files"][0]).exists()
    assert json.loads((out / "samples" / "step-000004" / "samples.json").read_text())["kind"] == "lora"

    again = _cli(*args[:-2], "--lr", "1e-2", "--max-steps", "6")  # the same command, trained longer
    assert again.returncode == 0, again.stderr
    assert "Resuming from step 4" in again.stdout and "max_steps: 4 -> 6 (accepted)" in again.stdout
    assert _last_json(again.stdout)["step"] == 6
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
    _adapter_generates_with_plain_peft(tiny_dir, out / "adapters" / "final")


def _adapter_generates_with_plain_peft(base_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    # The snippet users copy, verbatim apart from the paths:
    base = MusicgenForConditionalGeneration.from_pretrained(str(base_dir))
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    processor = AutoProcessor.from_pretrained(str(base_dir))
    inputs = processor(text=["calm piano chords"], padding=True, return_tensors="pt")
    torch.manual_seed(0)
    audio = model.generate(**inputs, do_sample=True, guidance_scale=3.0, max_new_tokens=10 + 3)
    assert audio.shape == (1, 1, 10 * 640) and torch.isfinite(audio).all()
    decoder_ids = torch.full((4, 6), 64)
    with torch.no_grad():
        adapted = model(**inputs, decoder_input_ids=decoder_ids).logits
        with model.disable_adapter():
            plain = model(**inputs, decoder_input_ids=decoder_ids).logits
    assert not torch.allclose(adapted, plain, atol=1e-4), "the trained adapter changes the model"


# ---------------------------------------------------------------------------------------------
# Learning and exact resume
# ---------------------------------------------------------------------------------------------


def test_loss_decreases_when_overfitting_a_tiny_dataset(tmp_path):
    # One track of two 1.5 s segments; 1.5 s crops and batch 2: every step sees the same two crops.
    data = tmp_path / "tokens"
    write_shards(data, batches=1, tracks_per_batch=1)
    cfg = small_config(data, tmp_path / "run", val_fraction=0.0, cfg_dropout=0.0, lora_dropout=0.0,
                       lora_targets="all-linear", lora_r=8, lora_alpha=16.0, lr=3e-2, max_steps=30, save_every=30,
                       warmup_steps=0, scheduler="constant", crop_seconds=1.5, batch_size=2, grad_accum=1)
    summary = train.run(cfg)
    losses = [loss for _, loss in sorted(losses_by_step(tmp_path / "run").items())]
    assert len(losses) == 30 and summary["val_loss"] is None
    # The frozen random tiny model starts near chance (ln 64 = 4.16); LoRA alone must memorise
    # the two crops: a drop of more than a nat in 30 steps, and every 5 steps lower on average than the
    # 5 before (single Adam steps at this rate may bounce back by ~0.1: seen with transformers 5.25).
    assert 4.0 < losses[0] < 5.5
    assert losses[-1] < losses[0] - 1.0, f"no learning: {losses[0]:.3f} -> {losses[-1]:.3f}"
    blocks = [sum(losses[i:i + 5]) / 5 for i in range(0, 30, 5)]
    assert all(b < a for a, b in zip(blocks, blocks[1:])), losses


def test_stop_button_saves_and_resume_is_exact(tmp_path, monkeypatch):
    data = tokens(tmp_path)
    reference = tmp_path / "reference"
    train.run(small_config(data, reference, max_steps=8))
    out, messages = tmp_path / "stopped", []
    for stop_at, saved in ((2, 1), (6, 5)):  # KeyboardInterrupt in the middle of step 2, then of step 6
        monkeypatch.setenv(faults.ENV, f"interrupt:{stop_at}")
        with pytest.raises(KeyboardInterrupt):
            train.run(small_config(data, out, max_steps=8), log=messages.append)
        assert torch.load(out / "latest.pt", weights_only=True)["step"] == saved
        assert f"Saved step {saved}" in messages[-1]
    monkeypatch.delenv(faults.ENV)
    train.run(small_config(data, out, max_steps=8), log=messages.append)
    assert any("Resuming from step 5" in m for m in messages)
    assert same_weights(lora_weights(reference), lora_weights(out))
    assert losses_by_step(reference) == losses_by_step(out)
    assert losses_by_step(reference, "val/loss") == losses_by_step(out, "val/loss")


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    data = tokens(tmp_path)
    reference = tmp_path / "reference"
    train.run(small_config(data, reference, max_steps=8))
    out = tmp_path / "killed"
    args = cli_args(data, out, "--max-steps", "8")
    # kill points: mid-step 3 (checkpoint at 2), while writing latest.pt at step 6 (the old one at 4
    # must survive), between keeping the old latest.pt as previous.pt and placing the new one (the next
    # run resumes from previous.pt), while writing the step-6 folder (after latest.pt was replaced)
    for crash, saved_after in (("micro:3", 2), ("latest-written:6", 4), ("latest-kept:6", None),
                               ("checkpoint-dir:6", 6)):
        proc = _cli(*args, crash=crash)
        assert proc.returncode == -9, f"{crash}: {proc.returncode}\n{proc.stderr[-2000:]}"
        if saved_after is None:
            assert not (out / "latest.pt").exists()
            assert torch.load(out / "previous.pt", weights_only=True)["step"] == 4
        else:
            assert torch.load(out / "latest.pt", weights_only=True)["step"] == saved_after
    assert any(p.name.startswith(".step-000006") for p in (out / "checkpoints").iterdir()), "a torn folder"
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "Resuming from step 6" in proc.stdout and _last_json(proc.stdout)["step"] == 8
    # the torn step-6 folder was cleared; step 6 itself lives on in latest.pt until step 8 replaced it
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-000004", "step-000008"]
    assert same_weights(lora_weights(reference), lora_weights(out))
    assert losses_by_step(reference) == losses_by_step(out)
    assert losses_by_step(reference, "val/loss") == losses_by_step(out, "val/loss")


# ---------------------------------------------------------------------------------------------
# Resume rules, rotation, settings
# ---------------------------------------------------------------------------------------------


def test_changed_settings_are_refused_or_accepted(tmp_path, tiny_dir):
    data, out = tokens(tmp_path), tmp_path / "run"
    train.run(small_config(data, out, max_steps=2))
    refused = [
        ({"lora_r": 8}, "lora_r: 4 -> 8"),
        ({"model": str(tiny_dir)}, "model: 'tiny' ->"),
        ({"crop_seconds": 0.6}, "crop_seconds: 0.4 -> 0.6"),
        ({"grad_accum": 4}, "effective_batch: 4 -> 8"),
        ({"lr": 1e-4}, "lr: 0.003 -> 0.0001"),
    ]
    for change, message in refused:
        with pytest.raises(UserError, match="cannot be continued") as err:
            train.run(small_config(data, out, max_steps=3, **change))
        assert message in str(err.value) and "another output folder" in str(err.value)
    extra = tmp_path / "more"
    write_shards(extra, batches=1, tracks_per_batch=1, seed=7)
    for path in shards.shard_dir(extra).iterdir():
        path.rename(shards.shard_dir(data) / path.name.replace("0001", "0099"))
    with pytest.raises(UserError, match="data: "):
        train.run(small_config(data, out, max_steps=3))
    for path in shards.shard_dir(data).glob("archive_batch_0099.*"):
        path.unlink()
    messages = []
    summary = train.run(small_config(data, out, max_steps=3, save_every=1, batch_size=4, grad_accum=1,
                                     keep_checkpoints=1), log=messages.append)
    assert summary["step"] == 3 and summary["resumed_from"] == 2
    notes = [m.strip() for m in messages]
    assert "changed setting max_steps: 2 -> 3 (accepted)" in notes
    assert "changed setting batch_size: 2 -> 4 (accepted)" in notes
    assert checkpoint.list_steps(out) == [3]
    messages.clear()
    assert train.run(small_config(data, out, max_steps=3), log=messages.append)["step"] == 3
    assert "nothing to do" in messages[-1]


def test_stop_while_finishing_writes_the_adapters_on_the_next_run(tmp_path, monkeypatch):
    data, out = tokens(tmp_path), tmp_path / "run"
    monkeypatch.setenv(faults.ENV, "interrupt-finish:2")
    with pytest.raises(KeyboardInterrupt):
        train.run(small_config(data, out, max_steps=2))
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 2 and not (out / "adapters" / "final").exists()
    monkeypatch.delenv(faults.ENV)
    messages = []
    assert train.run(small_config(data, out, max_steps=2), log=messages.append)["step"] == 2
    assert json.loads((out / "adapters" / "final" / "training.json").read_text())["step"] == 2
    assert not any("nothing to do" in m for m in messages)
    assert "nothing to do" in [train.run(small_config(data, out, max_steps=2), log=messages.append), messages[-1]][1]


def test_rotation_keeps_exactly_the_expected_step_folders(tmp_path):
    data, out = tokens(tmp_path), tmp_path / "run"
    train.run(small_config(data, out, max_steps=7, save_every=2, keep_checkpoints=2))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000006", "step-000007"]
    train.run(small_config(data, out, max_steps=9, save_every=2, keep_checkpoints=3))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000006", "step-000007",
                                                                      "step-000008", "step-000009"][-3:]
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 9


def test_without_validation_tracks_best_is_final(tmp_path):
    data, out = tokens(tmp_path, batches=1, tracks_per_batch=1), tmp_path / "run"
    summary = train.run(small_config(data, out, max_steps=2, val_fraction=0.3))
    assert summary["val_loss"] is None
    best, final = (out / "adapters" / n / "adapter_model.safetensors" for n in ("best", "final"))
    assert best.read_bytes() == final.read_bytes()


def test_gradient_checkpointing_gives_the_same_step(tmp_path):
    data = tokens(tmp_path)
    weights = []
    for mode in ("off", "on"):
        trainer = train.Trainer(small_config(data, tmp_path / mode, grad_checkpointing=mode, lora_dropout=0.0),
                                quiet=True)
        assert trainer.base.decoder.model.decoder.gradient_checkpointing == (mode == "on")
        row = trainer.train_step()
        weights.append((row["train/loss"], {k: v.clone() for k, v in trainer.state()["lora"].items()}))
    assert weights[0][0] == pytest.approx(weights[1][0], abs=1e-6)
    assert all(torch.allclose(weights[0][1][k], weights[1][1][k], atol=1e-6) for k in weights[0][1])


def test_bf16_on_cpu_and_fp16_needs_a_gpu(tmp_path):
    data = tokens(tmp_path)
    summary = train.run(small_config(data, tmp_path / "bf16", precision="bf16", max_steps=2))
    assert summary["step"] == 2 and summary["train_loss"] == pytest.approx(summary["train_loss"])  # finite
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        train.run(small_config(data, tmp_path / "fp16", precision="fp16", max_steps=2))


def test_bad_inputs_say_what_to_do(tmp_path):
    with pytest.raises(UserError, match="Run tokenization first"):
        train.run(small_config(tmp_path / "nothing", tmp_path / "run"))
    data = tokens(tmp_path)
    npy = next(shards.shard_dir(data).glob("*.npy"))
    npy.write_bytes(npy.read_bytes()[:-8])
    with pytest.raises(UserError, match="incomplete or corrupt"):
        train.run(small_config(data, tmp_path / "run"))
    from nbutils.core.paths import Paths

    project = type("Project", (), {"paths": Paths.at(tmp_path), "model": "tiny", "run_dir": tmp_path / "runs" / "lora"})
    with pytest.raises(UserError, match="Unknown training setting 'lora_rank'. Did you mean 'lora_r'"):
        train.config_for(project, lora_rank=8)  # a typo in the notebook's MORE_SETTINGS
    with pytest.warns(FutureWarning, match="notebook_config is now train.config_for"):  # 0.1.0's name, one release
        assert train.notebook_config(project, "run", lora_r=8).out == str(tmp_path / "runs" / "run")
    with pytest.raises(UserError, match="cfg_dropout"):
        small_config(data, tmp_path / "run", cfg_dropout=1.5)


def test_a_0_1_0_run_with_segment_seconds_resumes_and_the_old_name_still_works(tmp_path, capsys):
    """train's segment_seconds is now crop_seconds: a checkpoint that recorded the old name resumes as the
    same run, and the old name is accepted (with a note) from a notebook or the command line."""
    data, out = tokens(tmp_path), tmp_path / "run"
    train.run(small_config(data, out, max_steps=2))
    state = torch.load(out / "latest.pt", weights_only=True)
    for record in (state["config"], state["identity"]):  # as 0.1.0 wrote them
        record["segment_seconds"] = record.pop("crop_seconds")
    torch.save(state, out / "latest.pt")
    messages = []
    summary = train.run(small_config(data, out, max_steps=3), log=messages.append)
    assert summary["resumed_from"] == 2 and summary["step"] == 3
    assert not [m for m in messages if "crop_seconds" in m or "segment_seconds" in m], messages
    with pytest.raises(UserError, match="crop_seconds: 0.4 -> 0.6"):  # the old record still guards the crop
        torch.save(state, out / "latest.pt")
        train.run(small_config(data, out, max_steps=3, crop_seconds=0.6))

    from nbutils.core.paths import Paths

    project = type("Project", (), {"paths": Paths.at(tmp_path), "model": "tiny", "run_dir": out})
    with pytest.warns(FutureWarning, match="'segment_seconds' is now called 'crop_seconds'"):
        assert train.config_for(project, segment_seconds=0.6).crop_seconds == 0.6
    from nbutils import cli

    assert cli.main(["train", "--tokens", str(data), "--out", str(tmp_path / "r2"), "--segment-seconds", "0",
                     "--model", "tiny"]) == 2
    assert "crop_seconds must be positive" in capsys.readouterr().err


def test_learning_rate_schedule():
    factors = [build.lr_factor(s, total=10, warmup=2, kind="cosine") for s in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0] and factors[-1] == pytest.approx(0.0381, abs=1e-3)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:])), "cosine decays monotonically"
    assert build.lr_factor(6, total=10, warmup=2, kind="linear") == pytest.approx(0.5)
    assert build.lr_factor(9, total=10, warmup=2, kind="constant") == 1.0


def test_stop_button_waits_for_the_optimizer_update():
    import signal

    # A kernel's handler, as a notebook has it: an xdist worker starts with SIGINT ignored, and whether an
    # earlier test on the same worker (one that runs a notebook) installed this handler depends on the order.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with checkpoint.hold_interrupts():
                os.kill(os.getpid(), signal.SIGINT)
                finished = True  # the block runs to its end before the interrupt is raised
        assert finished and signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_stopped_or_out_of_memory_run_lets_go_of_its_model(tmp_path, monkeypatch):
    # IPython keeps the last exception with its frames; the re-run that resumes must not find the
    # old model (on a GPU: its memory) still held by them.
    from transformers import MusicgenForConditionalGeneration

    data, before = tokens(tmp_path), live_musicgens()
    forward, calls = MusicgenForConditionalGeneration.forward, []

    def stop_button_in_forward(self, *args, **kwargs):  # where a real stop usually lands
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(MusicgenForConditionalGeneration, "forward", stop_button_in_forward)
    try:
        train.run(small_config(data, tmp_path / "stopped"))
    except KeyboardInterrupt as err:
        kept = err  # as sys.last_value
    assert kept.__traceback__ is not None and live_musicgens() == before
    assert torch.load(tmp_path / "stopped" / "latest.pt", weights_only=True)["step"] == 2
    monkeypatch.undo()

    calls = []
    original = train.Trainer.train_step

    def out_of_memory_on_step_2(self):
        calls.append(1)
        if len(calls) == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self)

    monkeypatch.setattr(train.Trainer, "train_step", out_of_memory_on_step_2)
    with pytest.raises(UserError, match=r"Out of GPU memory with batch_size 2\. Halve it") as caught:
        train.run(small_config(data, tmp_path / "oom"))
    assert caught.value.__context__ is None and live_musicgens() == before
    monkeypatch.undo()
    assert train.run(small_config(data, tmp_path / "oom"))["step"] == 6, "and the re-run resumes"


# ---------------------------------------------------------------------------------------------
# Several processes
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_with_accelerate_launch(tmp_path):
    data = tokens(tmp_path)
    single = tmp_path / "single"
    train.run(small_config(data, single, max_steps=4, lora_dropout=0.0))  # 1 process x batch 2
    out = tmp_path / "two"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "nbutils"]
    args = cli_args(data, out, "--max-steps", "4", "--batch-size", "1", "--lora-dropout", "0")
    proc = subprocess.run(launch + args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _last_json(proc.stdout)["step"] == 4
    assert proc.stdout.count("Starting a new run") == 1, "one process talks"
    state = torch.load(out / "latest.pt", weights_only=True)
    assert state["world_size"] == 2 and state["identity"]["effective_batch"] == 4
    # 2 processes x batch 1 see the same crops as 1 process x batch 2: same training up to rounding
    reference = lora_weights(single)
    assert all(torch.allclose(reference[k], state["lora"][k], atol=1e-5) for k in reference)
    ref_losses, two_losses = losses_by_step(single), losses_by_step(out)
    assert all(abs(ref_losses[s] - two_losses[s]) < 1e-4 for s in ref_losses)
    # ... and a run started on 2 processes continues on 1 with the same effective batch
    summary = train.run(small_config(data, out, max_steps=6, batch_size=2, lora_dropout=0.0))
    assert summary["resumed_from"] == 4 and summary["step"] == 6


# ---------------------------------------------------------------------------------------------
# Notebook 02
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_notebook_trains_resumes_and_shows_results(tmp_path, monkeypatch):
    import nbformat

    from nbutils import colab
    from nbutils.colab import notebooks

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = tmp_path / "project"
    colab.create_project(root, model="tiny")
    write_shards(root / "tokens")
    parameters = {"PROJECT_ROOT": str(root), "MODEL": "tiny", "CROP_SECONDS": 0.4, "MAX_STEPS": 4,
                  "SAVE_EVERY": 2, "BATCH_SIZE": 2, "GRAD_ACCUM": 1, "SAMPLE_EVERY": 2, "SAMPLE_SECONDS": 0.2,
                  "WANDB": "disabled", "MORE_SETTINGS": {"warmup_steps": 1}}
    path = notebooks.notebook_path("02_train")
    executed = notebooks.execute(path, tmp_path / "run1.ipynb", parameters, cwd=tmp_path)
    nb = nbformat.read(str(executed), as_version=4)
    text = notebooks.outputs_text(nb)
    assert "Starting a new run" in text and "Measured here" in text and "per epoch" in text
    kinds = {key for cell in nb.cells for out in cell.get("outputs", []) for key in out.get("data", {})}
    assert "image/png" in kinds and "text/html" in kinds  # the loss curve and the audio players
    run = root / "runs" / "lora"
    assert (run / "adapters" / "final" / "adapter_model.safetensors").exists() and (run / "loss.png").exists()

    executed = notebooks.execute(path, tmp_path / "run2.ipynb", {**parameters, "MAX_STEPS": 6}, cwd=tmp_path)
    text = notebooks.outputs_text(nbformat.read(str(executed), as_version=4))
    assert "Resuming from step 4" in text and "'step': 6" in text


def test_unlabelled_segments_are_reported(tmp_path):
    data = tokens(tmp_path)
    index_path = shards.list_shards(data)[0]
    index = json.loads(index_path.read_text())
    for segment in index["segments"]:
        segment["description"] = ""
    index_path.write_text(json.dumps(index))
    total = sum(len(shards.read_index(p)["segments"]) for p in shards.list_shards(data))
    said = []
    train.Trainer(small_config(data, tmp_path / "run"), log=said.append, quiet=True)
    notes = [line for line in said if "have no description" in line]
    assert len(notes) == 1 and notes[0].startswith(f"Note: {len(index['segments'])} of {total} segments")
    assert "descriptions.jsonl" in notes[0] and "--describe missing" in notes[0], "says how to label them"


def test_the_progress_bar_shows_a_validation_loss_only_once_one_is_measured(tmp_path, monkeypatch):
    """Before the first validation the bar said val=nan: read as a diverged run."""
    shown = bar_postfixes(monkeypatch)
    train.run(small_config(tokens(tmp_path), tmp_path / "run", max_steps=4, save_every=3))
    assert len(shown) == 4 and all("loss" in s and "lr" in s for s in shown)
    assert ["val" in s for s in shown] == [False, False, False, True]  # validated at the save of step 3
    assert all("nan" not in str(v) for s in shown for v in s.values())


def test_samples_are_drawn_with_the_runs_sampling_settings_which_may_change_on_resume(tmp_path):
    """Training samples share generate's SamplingConfig (they always used its defaults)."""
    data, out = tokens(tmp_path), tmp_path / "run"
    settings = dict(max_steps=2, sample_every=2, sample_seconds=0.2, save_every=2)
    sampling = SamplingConfig(temperature=0.5, top_k=7, guidance_scale=1.0)
    train.run(small_config(data, out, sampling=sampling, **settings))
    first = json.loads((out / "samples" / "step-000002" / "samples.json").read_text())
    assert (first["temperature"], first["top_k"], first["guidance_scale"], first["top_p"]) == (0.5, 7, 1.0, 0.0)
    again = train.config.build(train.TrainConfig, {**vars(small_config(data, out, **settings)), "max_steps": 4,
                                                   "sampling": None, "temperature": 0.9})  # flat, as the CLI sets it
    train.run(again)  # resumed, not refused
    later = json.loads((out / "samples" / "step-000004" / "samples.json").read_text())
    assert (later["temperature"], later["top_k"], later["guidance_scale"]) == (0.9, 250, 3.0)
    with pytest.raises(UserError, match="temperature must be positive"):
        train.config.build(train.TrainConfig, {"tokens": str(data), "temperature": 0})
