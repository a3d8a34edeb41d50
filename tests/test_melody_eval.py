"""The melody path end to end from the command line, and audiocraft's melody metric.

``tokenize -> train -> resume -> generate with a melody -> evaluate`` on ``tiny-melody``; the
metric itself on melodies whose answer is known.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import soundfile as sf

from _melody_helpers import SR, wave, write_melody_zips
from conftest import last_json, run_cli
from nbutils.evaluate import melody as evaluate_melody


def test_chroma_cosine_is_one_on_the_melody_and_zero_off_it():
    line = wave("DEGA")
    same, frames = evaluate_melody.similarity(line, line, SR)
    assert frames == 4 * SR // 4096 + 1 and same == pytest.approx(frames)
    other, _ = evaluate_melody.similarity(line, wave("BFBF"), SR)
    assert other == pytest.approx(0.0, abs=2.0)  # only frames straddling two notes may agree
    shorter, frames = evaluate_melody.similarity(line, line[: 2 * SR], SR)
    assert frames == 2 * SR // 4096 + 1, "compared over the common length"
    from nbutils.core import audio

    tune = audio.resample(wave("DE"), SR, 44_100)
    at_44k, frames = evaluate_melody.similarity(tune, tune, 44_100)  # resampled to the metric's 32 kHz
    assert frames == 2 * SR // 4096 + 1 and at_44k == pytest.approx(frames)


def test_rows_pool_every_frame_of_every_clip(tmp_path):
    tunes = evaluate_melody.Melodies(files=[], prompts=["a", "b"], tracks=["x", "y"])
    records = []
    for j, (tune, played) in enumerate((("DEGA", "DEGA"), ("DEGA", "BFBF"))):
        tunes.files.append(tmp_path / f"melody-{j}.wav")
        sf.write(tunes.files[-1], wave(tune), SR, subtype="FLOAT")
        clip = tmp_path / f"clip-{j}.wav"
        sf.write(clip, wave(played), SR, subtype="FLOAT")
        records.append({"model": "base", "melody": j, "path": str(clip)})
    (row,) = evaluate_melody.rows(records, tunes, SR)
    assert row["prompt_set"] == "melody" and row["samples"] == 2
    assert 0.45 < row["chroma_cosine"] < 0.55 and row["chroma_cosine_std"] > 0.4  # one clip follows, one not


def test_clips_made_for_one_melody_are_not_reused_for_another_with_the_same_number(tmp_path):
    """melody-00.wav is rewritten from the current reference on every run (more tokens, another split):
    a re-run reuses the clip only while that file is the same melody."""
    from nbutils.generate import stage as generate
    from nbutils.generate.musicgen import Pipeline

    pipe = Pipeline("tiny-melody")
    gen = generate.GenerateConfig(model="tiny-melody", prompts=["x"], seconds=0.5, out=str(tmp_path), seed=0)
    tunes = evaluate_melody.Melodies(files=[tmp_path / "melody" / "melody-00.wav"], prompts=["a tune"], tracks=["t"])
    tunes.files[0].parent.mkdir()

    def clip_for(notes: str) -> str:
        sf.write(tunes.files[0], wave(notes), SR, subtype="FLOAT")
        (record,) = evaluate_melody.generate(pipe, gen, tunes, "base", "base", None)
        return record["path"]

    first = clip_for("DEGA")
    assert clip_for("DEGA") == first, "the same melody: reused"
    assert clip_for("BFBF") != first, "another melody under the same number: generated again"


@pytest.mark.slow
def test_the_whole_melody_path_from_the_command_line(tmp_path):
    zips = write_melody_zips(tmp_path / "zips")
    tokens, run, gen, ev = (tmp_path / n for n in ("tokens", "run", "generated", "eval"))
    made = last_json(run_cli("tokenize", "--zips", str(zips), "--out", str(tokens), "--model", "tiny-melody",
                             "--segment-seconds", "4", "--no-progress", "--describe", "none").stdout)
    assert made["zips_done"] == 1 and made["segments"] == 6
    train = ["train", "--tokens", str(tokens), "--out", str(run), "--segment-seconds", "1", "--batch-size", "2",
             "--grad-accum", "1", "--save-every", "2", "--sample-every", "0", "--wandb", "disabled",
             "--precision", "fp32", "--val-fraction", "0.34", "--lr", "1e-2", "--warmup-steps", "0"]
    first = last_json(run_cli(*train, "--max-steps", "2").stdout)  # the model: the one the shards were made with
    assert first["step"] == 2
    proc = run_cli(*train, "--max-steps", "4")
    assert "Resuming from step 2" in proc.stdout and last_json(proc.stdout)["step"] == 4
    sf.write(tmp_path / "hum.wav", wave("GAGA"), SR)
    made = last_json(run_cli("generate", "--model", "tiny-melody", "--adapter", str(run), "--prompt", "calm piano",
                             "--melody", str(tmp_path / "hum.wav"), "--compare", "both", "--seconds", "1",
                             "--out", str(gen)).stdout)
    assert made["variants"] == ["base", "lora"]
    assert all(json.loads(Path(s).read_text())["parameters"]["melody"] for s in made["sidecars"])
    result = last_json(run_cli("evaluate", "--model", "tiny-melody", "--adapter", str(run / "adapters" / "best"),
                               "--tokens", str(tokens), "--zips", str(zips), "--clap", "tiny", "--seconds", "1",
                               "--samples-per-prompt", "1", "--out", str(ev)).stdout)
    rows = [r for r in csv.DictReader(open(result["summary_csv"], encoding="utf-8")) if r["prompt_set"] == "melody"]
    assert [r["model"] for r in rows] == ["base", "lora-best"]
    assert all(0.0 <= float(r["chroma_cosine"]) <= 1.0 and int(r["chroma_frames"]) > 0 for r in rows)
    facts = json.loads(Path(result["json"]).read_text())["melody"]
    assert facts["published_reference"] is None and len(facts["melodies"]) >= 1  # 0.44 is musicgen-melody's
    assert set(facts["chroma_cosine"]) == {"base", "lora-best"}
    assert {r["model"]: float(r["chroma_cosine"]) for r in rows} == facts["chroma_cosine"]
    assert result["melody"] == facts


def test_published_reference_is_drawn_for_musicgen_melody(tmp_path):
    from matplotlib.image import imread

    from nbutils.evaluate import plot, report

    summary = [{"model": "base", "prompt_set": "style", "samples": 1, "clap_text": 0.2, "style_similarity": 0.5,
                "frechet": None, "clap_text_vs_base": 0.0},
               {"model": "base", "prompt_set": "melody", "samples": 2, "chroma_cosine": 0.41, "chroma_cosine_std": 0.1},
               {"model": "lora", "prompt_set": "melody", "samples": 2, "chroma_cosine": 0.39, "chroma_cosine_std": 0.1}]
    plot.plot(summary, tmp_path / "plot.png", "t",
              melody_published=evaluate_melody.PUBLISHED["facebook/musicgen-melody"])
    with_melody = imread(tmp_path / "plot.png")
    plot.plot(summary, tmp_path / "unpublished.png", "t")
    assert with_melody.shape == imread(tmp_path / "unpublished.png").shape
    assert (with_melody != imread(tmp_path / "unpublished.png")).any(), "the published value is drawn"
    plot.plot(summary[:1], tmp_path / "plain.png", "t")
    assert with_melody.shape[0] > imread(tmp_path / "plain.png").shape[0] * 1.2, "one more panel: a third row"
    report.write_csv(tmp_path / "summary.csv", summary)
    header = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert "chroma_cosine" in header and "clap_text" in header


def test_the_printed_table_has_a_chroma_cosine_column_only_with_melody_rows():
    from nbutils.evaluate import table

    style = {"model": "base", "prompt_set": "style", "samples": 1, "clap_text": 0.2}
    melody = {"model": "lora", "prompt_set": "melody", "samples": 2, "chroma_cosine": 0.39, "chroma_cosine_std": 0.1}
    shown = table.text([style, melody])
    assert "chroma_cosine" in shown.splitlines()[0] and "0.39" in shown
    assert "chroma_cosine" not in table.text([style]) and "chroma_cosine" not in table.markdown([style])
    assert "chroma_cosine" in table.markdown([style, melody])
