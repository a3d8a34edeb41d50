"""Melody checkpoints from tokens to adapter: chroma in the shards, --add-chroma, crops, dropout, resume, samples.

Every test runs the real ``tiny-melody`` (transformers' ``MusicgenMelodyForConditionalGeneration``
from a config) on tracks of known notes (``_melody_helpers``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _melody_helpers import (
    DESCRIPTIONS,
    SEGMENT_SECONDS,
    SR,
    melody_config,
    melody_tokens,
    note_at,
    strip_chroma,
    wave,
)
from _train_helpers import lora_weights, losses_by_step, offline_runs, same_weights, wandb_history
from conftest import last_json, run_cli
from nbutils import tokenize
from nbutils.core import faults, melody, models
from nbutils.core.errors import UserError
from nbutils.tokenize import shards
from nbutils.train import dataset as data
from nbutils.train import melody as train_melody
from nbutils.train import stage as train
from nbutils.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def _segment_audio(segment: shards.Segment) -> np.ndarray:
    from _melody_helpers import SCHEDULES

    start = int(round(segment.start * SR))
    return wave(SCHEDULES[segment.path])[start : start + segment.frames * 640]


# ---------------------------------------------------------------------------------------------
# Tokenize: the chroma beside the codes
# ---------------------------------------------------------------------------------------------


def test_tokenize_stores_each_segments_chroma_of_the_encoded_audio(tmp_path):
    _, tokens = melody_tokens(tmp_path)
    (shard,) = shards.open_all(tokens, verify=True)
    block = shard.meta["chroma"]
    assert (block["sample_rate"], block["n_fft"], block["hop_length"], block["num_chroma"]) == (SR, 16384, 4096, 12)
    assert block["frame_rate"] == 7.8125 and block["encoding"] == "pitch-class" and block["dtype"] == "uint8"
    assert shard.chroma.dtype == np.uint8 and len(shard.segments) == 6
    settings = melody.ChromaSettings()
    for i, segment in enumerate(shard.segments):
        samples = _segment_audio(segment)
        assert len(shard.segment_chroma(i)) == settings.frames_for(len(samples)) == 4 * SR // 4096 + 1
        np.testing.assert_array_equal(shard.segment_chroma(i), melody.pitch_classes(samples, settings))
        middle = shard.segment_chroma(i)[15]  # ~1.9 s in: well inside the segment's second note
        assert melody.PITCH_CLASSES[middle] == note_at(segment.path, segment.start + 15 * 4096 / SR)
    # one byte per chroma frame: 128 bytes of .npy header, then the frames
    assert shards.chroma_path(shard.index_path).stat().st_size == 128 + block["frames"] == block["nbytes"]


def test_other_models_shards_are_unchanged_and_old_shards_open(tmp_path):
    _, tokens = melody_tokens(tmp_path / "a", model="tiny")
    (shard,) = shards.open_all(tokens, verify=True)
    assert "chroma" not in shard.meta and shard.chroma is None and shard.chroma_settings is None
    assert sorted(p.name for p in (tokens / "shards").iterdir()) == ["melodies.json", "melodies.npy"]
    with pytest.raises(ValueError, match="has no chroma"):
        shard.segment_chroma(0)


def test_a_torn_chroma_file_makes_the_shard_incomplete(tmp_path):
    _, tokens = melody_tokens(tmp_path)
    index = shards.list_shards(tokens)[0]
    path = shards.chroma_path(index)
    path.write_bytes(path.read_bytes()[:-3])
    assert not shards.is_complete(index)
    with pytest.raises(UserError, match="incomplete or corrupt"):
        shards.open_shard(index)


# ---------------------------------------------------------------------------------------------
# Shards without chroma: refused before the model loads, then --add-chroma (codes kept)
# ---------------------------------------------------------------------------------------------


def test_chroma_less_shards_are_refused_before_the_model_loads(tmp_path, monkeypatch):
    zips, tokens = melody_tokens(tmp_path)
    strip_chroma(tokens)
    monkeypatch.setattr(models, "load_musicgen", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "run"
    with pytest.raises(UserError) as err:
        train.run(melody_config(tokens, out))
    message = str(err.value)
    assert "1 of 1 token shards" in message and "hold no chroma for tiny-melody" in message
    command = f"python -m nbutils tokenize --zips {zips} --out {tokens} --model tiny-melody --add-chroma"
    assert command in message, message  # the ZIP folder recorded by tokenize, not a placeholder
    assert "add_chroma=True" in message and not out.exists()


def test_add_chroma_reuses_the_codes_and_matches_tokenizing_with_chroma(tmp_path):
    zips, tokens = melody_tokens(tmp_path)
    index = shards.list_shards(tokens)[0]
    made = shards.open_shard(index)
    before = {p.name: p.read_bytes() for p in (tokens / "shards").iterdir()}
    strip_chroma(tokens)
    message = _refusal(tokens)
    args = message.split("python -m nbutils ", 1)[1].split("\n")[0].split()  # the command, as printed
    summary = last_json(run_cli(*args, "--no-progress").stdout)
    assert (summary["mode"], summary["zips_done"], summary["zips_skipped"], summary["zips_failed"]) == \
        ("add_chroma", 1, 0, 0)
    assert (tokens / "shards" / "melodies.npy").read_bytes() == before["melodies.npy"], "the codes were rewritten"
    assert (tokens / "shards" / "melodies.chroma.npy").read_bytes() == before["melodies.chroma.npy"]
    again = shards.open_shard(index, verify=True)
    assert again.meta == made.meta  # the same index as tokenizing with chroma made
    second = last_json(run_cli(*args, "--no-progress").stdout)
    assert (second["zips_done"], second["zips_skipped"]) == (0, 1)


def _refusal(tokens: Path) -> str:
    with pytest.raises(UserError) as err:
        train_melody.require_chroma(tokens, "tiny-melody")
    return str(err.value)


def test_add_chroma_killed_before_its_index_continues(tmp_path):
    zips, tokens = melody_tokens(tmp_path)
    strip_chroma(tokens)
    env = {faults.ENV: "after-chroma"}
    proc = subprocess.run([sys.executable, "-m", "nbutils", "tokenize", "--zips", str(zips), "--out", str(tokens),
                           "--model", "tiny-melody", "--add-chroma"], cwd=REPO, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO), **env}, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert "hold no chroma" in _refusal(tokens)  # the old index: still a shard without chroma
    summary = tokenize.run(tokenize.TokenizeConfig(zips=str(zips), out=str(tokens), model="tiny-melody",
                                                   add_chroma=True, progress=False))
    assert summary["zips_done"] == 1 and train_melody.require_chroma(tokens, "tiny-melody") is not None


def test_add_chroma_refuses_other_codecs_and_reports_a_changed_zip(tmp_path):
    zips, tokens = melody_tokens(tmp_path / "tiny", model="tiny")
    cfg = tokenize.TokenizeConfig(zips=str(zips), out=str(tokens), model="tiny-melody", add_chroma=True, progress=False)
    with pytest.raises(UserError, match=r"cannot be reused for tiny-melody.*codec of tiny.*new folder"):
        tokenize.run(cfg)
    with pytest.raises(UserError, match="'tiny' is not a melody model"):
        tokenize.run(tokenize.TokenizeConfig(zips=str(zips), out=str(tokens), model="tiny", add_chroma=True))
    zips, tokens = melody_tokens(tmp_path / "melody")
    strip_chroma(tokens)
    with open(zips / "melodies.zip", "ab") as fh:
        fh.write(b"\0" * 10)  # the ZIP changed since it was tokenized
    summary = tokenize.run(tokenize.TokenizeConfig(zips=str(zips), out=str(tokens), model="tiny-melody",
                                                   add_chroma=True, progress=False))
    assert summary["zips_failed"] == 1 and "changed since it was tokenized" in summary["failures"][0]["reason"]


def test_tokenizing_a_melody_model_into_a_folder_of_another_suggests_add_chroma(tmp_path):
    zips, tokens = melody_tokens(tmp_path, model="tiny")
    (tokens / "tokenize_config.json").unlink()  # the settings file lost: the shards' own records refuse too
    with pytest.raises(UserError, match="(?s)model: 'tiny' -> 'tiny-melody'.*--model tiny-melody --add-chroma"):
        tokenize.run(tokenize.TokenizeConfig(zips=str(zips), out=str(tokens), model="tiny-melody", progress=False,
                                             segment_seconds=SEGMENT_SECONDS, describe="none"))
    tokenize.run(tokenize.TokenizeConfig(zips=str(zips), out=str(tokens), model="tiny", progress=False,
                                         segment_seconds=SEGMENT_SECONDS, describe="none"))  # writes it again
    with pytest.raises(UserError, match="(?s)model: 'tiny' -> 'tiny-melody'.*--model tiny-melody --add-chroma"):
        tokenize.run(tokenize.TokenizeConfig(zips=str(zips), out=str(tokens), model="tiny-melody", progress=False,
                                             segment_seconds=SEGMENT_SECONDS, describe="none"))


# ---------------------------------------------------------------------------------------------
# Crops: the chroma under each crop, wherever it starts
# ---------------------------------------------------------------------------------------------


def _crops(tokens: Path, crop_frames: int, train: bool, cfg_dropout: float = 0.0, chroma_dropout: float = 0.0):
    opened = shards.open_all(tokens)
    tracks = sorted({s.track for shard in opened for s in shard.segments})
    chroma = train_melody.CropChroma(code_hop=640, chroma_hop=4096, dropout=chroma_dropout)
    return opened, data.CropDataset(opened, tracks, crop_frames, train=train, cfg_dropout=cfg_dropout, seed=5,
                                    chroma=chroma)


def _start_of(example: data.Example, shard: shards.Shard) -> tuple[int, int]:
    """Where a crop lies: ``(segment, first frame)``, found from its codes alone."""
    for gi in range(len(shard.segments)):
        codes = np.asarray(shard.segment_codes(gi))
        for s in range(len(codes) - example.length + 1):
            if np.array_equal(codes[s : s + example.length], example.codes[: example.length]):
                return gi, s
    raise AssertionError("crop not found")


@pytest.mark.parametrize("train_crops", [False, True], ids=["validation-windows", "random-training-crops"])
def test_each_crop_gets_the_chroma_under_it_even_mid_segment(tmp_path, train_crops):
    _, tokens = melody_tokens(tmp_path)
    (shard,), crops = _crops(tokens, crop_frames=75, train=train_crops)  # 1.5 s crops of 4 s segments
    mid = 0
    for index in range(len(crops)):
        for epoch in range(4 if train_crops else 1):
            example = crops.example(index, epoch)
            gi, start = _start_of(example, shard)
            segment = shard.segments[gi]
            mid += start > 0
            first = start * 640 // 4096  # the chroma frame at the crop's first sample
            count = -(-example.length * 640 // 4096)
            whole = melody.pitch_classes(_segment_audio(segment), melody.ChromaSettings())
            np.testing.assert_array_equal(example.chroma, whole[first : first + count])
            for j, pitch in enumerate(example.chroma):  # and in seconds: the note that sounds there
                t = segment.start + (first + j) * 4096 / SR
                if 0.27 < t % 1.0 < 0.73:  # frames whose 0.51 s window lies inside one note
                    assert melody.PITCH_CLASSES[pitch] == note_at(segment.path, t), (index, epoch, j)
    assert mid >= 5, "crops starting mid-segment were checked"


def test_a_batch_carries_each_crops_chroma_tiled_as_the_model_tiles_it():
    tiny, processor = models.load_musicgen("tiny-melody")
    collate = data.Collator(processor.tokenizer, 64, 64, **{"chroma_length": 235, "num_chroma": 12})
    rows = [np.array([3, 4, 5], np.uint8), np.array([7, 8, 9, 10, 11], np.uint8)]
    examples = [data.Example(codes=np.zeros((20, 4), np.int64), length=20, text=t, track="x", chroma=r)
                for t, r in zip(("calm", "dark"), rows)]
    batch = collate(examples)
    assert batch.input_features.shape == (2, 235, 12)
    for row, pitches in zip(batch.input_features, rows):
        assert torch.equal(row.argmax(dim=1), torch.from_numpy(np.resize(pitches, 235)).long())
    one = collate(examples[:1])
    with torch.no_grad():  # tiled here, or the bare 3 frames tiled by the model itself: the same logits
        ours = tiny(**one.model_inputs()).logits
        theirs = tiny(**{**one.model_inputs(), "input_features": melody.one_hot(rows[0][None], 12)}).logits
    assert torch.equal(ours, theirs)


# ---------------------------------------------------------------------------------------------
# Dropout: audiocraft's chroma2music.yaml, and what the model then sees
# ---------------------------------------------------------------------------------------------


def test_dropout_drops_text_and_chroma_at_audiocrafts_rates(tmp_path):
    _, tokens = melody_tokens(tmp_path)
    drops = train_melody.dropouts(None, None, True, data.CFG_DROPOUT)
    assert (drops.cfg, drops.chroma) == (0.2, 0.5)  # chroma2music.yaml: training_dropout, attribute_dropout self_wav
    _, crops = _crops(tokens, 25, train=True, cfg_dropout=drops.cfg, chroma_dropout=drops.chroma)
    n, text_off, chroma_off, only_text = 0, 0, 0, 0
    for epoch in range(150):
        for index in range(len(crops)):
            example = crops.example(index, epoch)
            null = not example.chroma.any()  # no track has a C: a real crop is never all pitch class 0
            n, text_off, chroma_off = n + 1, text_off + (example.text == ""), chroma_off + null
            only_text += example.text == "" and not null
    assert n >= 4000
    # CFG dropout 0.2 drops both; the chroma alone goes with 0.5 more: 0.2 + 0.8 * 0.5 = 0.6
    assert abs(text_off / n - 0.2) < 4 * (0.2 * 0.8 / n) ** 0.5, text_off / n
    assert abs(chroma_off / n - 0.6) < 4 * (0.6 * 0.4 / n) ** 0.5, chroma_off / n
    assert only_text == 0, "a crop without its text always lost its chroma too"
    _, kept = _crops(tokens, 25, train=False, cfg_dropout=drops.cfg, chroma_dropout=drops.chroma)
    assert all(kept.example(i).chroma.any() and kept.example(i).text for i in range(len(kept))), "never in validation"


def test_dropped_conditions_are_what_generate_feeds_as_no_condition():
    """A dropped chroma equals transformers' own "no melody"; a dropped text gives all-zero text states."""
    tiny, processor = models.load_musicgen("tiny-melody")
    collate = data.Collator(processor.tokenizer, 64, 64, chroma_length=235, num_chroma=12)
    example = data.Example(codes=np.zeros((20, 4), np.int64), length=20, text="", track="x",
                           chroma=melody.null_rows(8))
    batch = collate([example])
    with torch.no_grad():
        dropped = tiny(**batch.model_inputs())
        inputs = {k: v for k, v in batch.model_inputs().items() if k != "input_features"}
        none = tiny(**inputs)  # transformers' default when no melody is given
    assert torch.equal(dropped.logits, none.logits)
    text_states = dropped.encoder_hidden_states[0, 235:]  # after the 235 chroma frames
    assert batch.attention_mask.sum() == 0 and torch.count_nonzero(text_states) == 0
    assert torch.equal(batch.input_features[0], melody.one_hot(melody.null_rows(235)))


def test_melody_settings_are_checked(tmp_path):
    _, tokens = melody_tokens(tmp_path)
    with pytest.raises(UserError, match="longer than the 30.08 s of melody this model reads"):
        Trainer(melody_config(tokens, tmp_path / "run", crop_seconds=31.0))
    with pytest.raises(UserError, match="melody_dropout must be in"):
        melody_config(tokens, tmp_path / "run", melody_dropout=1.0)
    text_tokens = melody_tokens(tmp_path / "text", model="tiny")[1]
    with pytest.raises(UserError, match="melody_dropout is for melody models"):
        Trainer(melody_config(text_tokens, tmp_path / "run", model="tiny", melody_dropout=0.3))


# ---------------------------------------------------------------------------------------------
# Training: exact resume, samples with and without a melody, the adapter
# ---------------------------------------------------------------------------------------------


def _cli_train(tokens: Path, out: Path, *extra: str, crash: str = ""):
    import os

    args = ["train", "--tokens", str(tokens), "--out", str(out), "--model", "tiny-melody", "--segment-seconds", "1",
            "--batch-size", "2", "--grad-accum", "2", "--max-steps", "6", "--save-every", "2", "--sample-every", "0",
            "--wandb", "disabled", "--warmup-steps", "2", "--lr", "3e-3", "--val-fraction", "0.34", "--precision",
            "fp32", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0.1", "--log-every", "1", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **({faults.ENV: crash} if crash else {})}
    return subprocess.run([sys.executable, "-m", "nbutils", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_melody_resume_after_sigkill_is_bit_identical(tmp_path):
    _, tokens = melody_tokens(tmp_path)
    reference, out = tmp_path / "reference", tmp_path / "killed"
    assert _cli_train(tokens, reference).returncode == 0
    proc = _cli_train(tokens, out, crash="micro:3")  # killed inside step 3: the checkpoint of step 2 remains
    assert proc.returncode == -9, proc.stderr[-2000:]
    proc = _cli_train(tokens, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Resuming from step 2" in proc.stdout and last_json(proc.stdout)["step"] == 6
    assert same_weights(lora_weights(reference), lora_weights(out))
    assert losses_by_step(reference) == losses_by_step(out)
    assert losses_by_step(reference, "val/loss") == losses_by_step(out, "val/loss")
    state = torch.load(out / "latest.pt", weights_only=True)
    assert (state["identity"]["cfg_dropout"], state["identity"]["melody_dropout"]) == (0.2, 0.5)
    facts = json.loads((out / "adapters" / "final" / "training.json").read_text())
    assert facts["hyperparameters"]["melody_dropout"] == 0.5
    card = (out / "adapters" / "final" / "README.md").read_text()
    assert "MusicgenMelodyForConditionalGeneration.from_pretrained" in card and "chroma dropout 0.5" in card


def test_samples_with_and_without_a_validation_melody(tmp_path):
    _, tokens = melody_tokens(tmp_path)
    out = tmp_path / "run"
    summary = train.run(melody_config(tokens, out, max_steps=2, save_every=2, sample_every=2, wandb="offline",
                                      sample_seconds=0.5))
    assert summary["step"] == 2
    for step, kind in ((0, "base"), (2, "lora")):
        folder = out / "samples" / f"step-{step:06d}"
        info = json.loads((folder / "samples.json").read_text())
        assert {f"{kind}-0.wav", f"{kind}-0-melody.wav", "melody-0.wav"} <= set(info["files"])
        (tune,) = info["melodies"][:1]
        assert tune["track"] in {f"melodies.zip/{p}" for p in DESCRIPTIONS}  # a validation track
        split = json.loads((out / "split.json").read_text())
        assert tune["track"] in split["val_tracks"]
    keys = {k for row in wandb_history(offline_runs(out)[0]) for k in row}
    from nbutils.train import monitor

    shown = [p.name for p in monitor.play_samples(out)]  # notebook 02's last cell
    assert shown[:3] == ["lora-0.wav", "lora-0-melody.wav", "melody-0.wav"] and "base-0-melody.wav" in shown
    logged = {"samples/base/0", "samples/base/0-melody", "samples/lora/0", "samples/lora/0-melody", "samples/melody/0"}
    assert {f"{k}/path" for k in logged} <= keys, keys


def test_text_runs_saved_before_melody_training_still_resume(tmp_path):
    """Checkpoints written before cfg_dropout became model-dependent (0.3 stored, no melody_dropout) resume."""
    from _train_helpers import small_config
    from _train_helpers import tokens as text_tokens

    data_dir, out = text_tokens(tmp_path), tmp_path / "run"
    train.run(small_config(data_dir, out, max_steps=2))
    state = torch.load(out / "latest.pt", weights_only=True)
    for part in ("config", "identity"):
        state[part].pop("melody_dropout")
        state[part]["cfg_dropout"] = 0.3
    torch.save(state, out / "latest.pt")
    messages = []
    summary = train.run(small_config(data_dir, out, max_steps=3), log=messages.append)
    assert summary["step"] == 3 and any("Resuming from step 2" in m for m in messages)
    assert not any("cfg_dropout" in m for m in messages), messages


def test_melody_presets_cover_the_melody_checkpoints():
    from nbutils.train import presets

    label, shape = presets.shape_of("facebook/musicgen-stereo-melody-large")
    assert label == "melody-large" and shape.codebooks == 8 and not shape.cross_attention
    assert presets.shape_of("facebook/musicgen-melody")[0] == "melody"
    assert presets.shape_of("tiny-melody")[1].prefix == 235 + presets.TEXT_TOKENS  # from its config
    melody_shape, medium = presets.SIZES["melody"], presets.SIZES["medium"]
    assert melody_shape.decoder_params < medium.decoder_params  # no cross-attention
    # ...but ~300 more positions per crop, whose activations and logits count
    assert presets.memory_gb(melody_shape, 4, 30, False) > presets.memory_gb(medium, 4, 30, False)
    for gpu in ("T4", "L4", "A100 40GB", "A100 80GB"):
        for size in ("melody", "melody-large"):
            preset = presets.plan(size, presets.SIZES[size], presets.KNOWN_GPUS[gpu])
            assert preset.effective_batch == presets.EFFECTIVE_BATCH and not preset.note, preset
    table = presets.format_table(presets.table())
    assert re.search(r"T4\s+melody-large\s+4 x 4\s+fp16\s+on", table), table
