"""``python -m nbutils demo``: the synthetic dataset, and one real run that executes notebooks 00-04.

The demo runs once (``test_the_demo_from_the_command_line``), and the checks below assert on what
it left in its folder: the ZIP batches, the executed notebooks, and every stage's outputs.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import nbformat
import pytest
import soundfile as sf

from conftest import last_json, run_cli
from nbutils.colab import demo, notebooks
from nbutils.core import synth
from nbutils.core.errors import UserError
from nbutils.core.paths import Paths

# ---------------------------------------------------------------------------------------------
# The synthetic collection (no notebooks needed)
# ---------------------------------------------------------------------------------------------


def test_dataset_is_zip_batches_of_three_styles_with_metadata_for_every_other_track(tmp_path):
    cfg = demo.DemoConfig(out=tmp_path, zips=2, tracks_per_zip=4, track_seconds=3.0)
    paths = Paths.at(tmp_path)
    zips = demo.make_dataset(paths, cfg)
    assert [z.name for z in zips] == ["archive_batch_0001.zip", "archive_batch_0002.zip"]
    records = [json.loads(line) for line in (paths.zips / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 4 and len({r["path"] for r in records}) == 4  # the others get automatic descriptions
    assert {r["description"] for r in records} == {synth.describe(s) for s in synth.STYLES}
    by_path = {r["path"]: r for r in records}
    formats, rates, members = set(), set(), []
    for zip_path in zips:
        with zipfile.ZipFile(zip_path) as zf:
            assert zf.testzip() is None and len(zf.namelist()) == 4
            for member in zf.namelist():
                members.append(member)
                with zf.open(member) as fh:
                    audio, rate = sf.read(io.BytesIO(fh.read()))
                assert abs(len(audio) / rate - 3.0) < 0.1, member  # mp3 pads a little
                assert 0.5 < abs(audio).max() <= 1.0
                formats.add(Path(member).suffix)
                rates.add(rate)
                record = by_path.get(member)  # metadata paths are relative to the ZIP root
                if record:
                    assert rate == record["sample_rate"]
                    assert record["description"] == synth.describe(Path(member).stem.split("_")[0])
    assert formats == {".wav", ".flac", ".mp3"} and rates == set(demo.SAMPLE_RATES)
    assert [m in by_path for m in members] == [True, False] * 4


def test_dataset_is_kept_on_rerun_and_another_demo_is_refused(tmp_path):
    paths = Paths.at(tmp_path)
    cfg = demo.DemoConfig(out=tmp_path, zips=1, tracks_per_zip=2, track_seconds=2.0)
    (zip_path,) = demo.make_dataset(paths, cfg)
    stamp = zip_path.stat().st_mtime_ns
    demo.make_dataset(paths, cfg)
    assert zip_path.stat().st_mtime_ns == stamp  # kept, not rewritten

    other = demo.DemoConfig(out=tmp_path, zips=1, tracks_per_zip=3, track_seconds=2.0)
    with pytest.raises(UserError, match=r"(?s)other settings.*\n  tracks_per_zip: 2 -> 3\n.*another --out folder"):
        demo.make_dataset(paths, other)

    # a run killed before the dataset was complete (no demo.json yet) writes it again
    (tmp_path / demo.DEMO_FILE).unlink()
    zip_path.unlink()
    demo.make_dataset(paths, cfg)
    assert zip_path.exists() and (tmp_path / demo.DEMO_FILE).exists()
    assert not [p for p in paths.zips.iterdir() if ".tmp-" in p.name]


def test_demo_parameters_must_exist_in_the_notebook(tmp_path, monkeypatch):
    paths = Paths.at(tmp_path)
    setup = notebooks.notebook_path("00_setup")
    assert demo.notebook_parameters("00_setup", setup, paths) == {
        "PROJECT_ROOT": str(tmp_path), "MODEL": "tiny", "ASK_FOR_MISSING_SECRETS": False}
    monkeypatch.setitem(demo.STAGE_PARAMETERS, "00_setup", {"NO_SUCH_SETTING": 1})
    with pytest.raises(UserError, match="NO_SUCH_SETTING in 00_setup.ipynb.*STAGE_PARAMETERS"):
        demo.notebook_parameters("00_setup", setup, paths)


def test_demo_outside_a_clone_says_to_clone(tmp_path, monkeypatch):
    monkeypatch.setattr(notebooks, "NOTEBOOK_DIR", tmp_path / "site-packages" / "notebooks")
    with pytest.raises(UserError, match="Run it from a clone: git clone https://github.com/"):
        demo.execute_notebooks(Paths.at(tmp_path), demo.DemoConfig(out=tmp_path), ("00_setup",))


def test_every_demo_parameter_exists_in_its_notebook(tmp_path):
    """The demo's per-notebook settings track the notebooks' parameters cells."""
    for name in notebooks.NOTEBOOKS:
        path = notebooks.NOTEBOOK_DIR / f"{name}.ipynb"
        if not path.exists():
            continue  # checked by tests/test_notebooks.py::test_all_notebooks_are_there
        demo.notebook_parameters(name, path, Paths.at(tmp_path))


# ---------------------------------------------------------------------------------------------
# The real run
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_demo_from_the_command_line(tmp_path):
    """One real ``python -m nbutils demo`` run, then each check on what it left.

    One test, not a session fixture shared by several: pytest-xdist would run such a fixture once
    per worker (its ``xdist_group`` does not take effect under pytest 9.2), doubling CI's longest step."""
    out = tmp_path / "demo_out"
    proc = run_cli("demo", "--out", str(out), timeout=900)
    summary = last_json(proc.stdout)
    check_the_cli_ends_with_where_to_look(out, proc, summary)
    check_every_notebook_ran_with_the_tiny_model(out)
    check_every_stage_left_its_output_in_the_project(out, summary)
    check_a_rerun_reuses_its_clips(out)  # last: it executes notebook 03 again


def check_the_cli_ends_with_where_to_look(out, proc, summary):
    assert summary["out"] == str(out)
    assert list(summary["notebook_seconds"]) == list(notebooks.NOTEBOOKS)
    for kind in ("audio", "plots", "tables", "notebooks", "adapters"):
        assert summary[kind], f"the demo made no {kind}"
        assert all(Path(p).exists() for p in summary[kind])
    where = proc.stdout[proc.stdout.index("Done. Everything is in"):]
    for kind in ("Audio", "Plots", "Tables", "LoRA adapters", "Executed notebooks"):
        assert kind in where
    assert summary["audio"][0] in where and summary["plots"][0] in where


def check_every_notebook_ran_with_the_tiny_model(out):
    for name in notebooks.NOTEBOOKS:
        nb = nbformat.read(str(out / "notebooks" / f"{name}.ipynb"), as_version=4)
        injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert f"PROJECT_ROOT = {str(out)!r}" in injected.source and "MODEL = 'tiny'" in injected.source
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            assert cell.execution_count is not None, f"{name}: a cell did not run"
            assert not [o for o in cell.outputs if o.output_type == "error"], f"{name}: {cell.source[:60]}"
        shown = notebooks.outputs_text(nb)
        assert "\u274c" not in shown, name
        assert "is_gradient_checkpointing" not in shown, f"{name}: a library's FutureWarning, shown in red"


def check_every_stage_left_its_output_in_the_project(out, summary):
    import torch

    from nbutils.tokenize import shards

    paths = Paths.at(out)
    settings = json.loads(paths.project_file.read_text())
    assert settings["model"] == "tiny"
    assert sorted(p.stem for p in shards.list_shards(paths.tokens)) == ["archive_batch_0001", "archive_batch_0002"]
    run = paths.run(settings.get("run_name", "lora"))
    state = torch.load(run / "latest.pt", weights_only=True)
    assert isinstance(state["step"], int) and state["step"] > 0
    for which in ("best", "final"):
        assert (run / "adapters" / which / "adapter_config.json").exists()
    generated = [Path(p) for p in summary["audio"] if Path(p).is_relative_to(paths.generated)]
    assert generated and all(sf.info(str(p)).samplerate == 32_000 for p in generated)
    assert all(p.with_suffix(".json").exists() for p in generated)
    assert any(Path(p).suffix == ".csv" for p in summary["tables"])
    assert any(Path(p).is_relative_to(paths.eval) for p in summary["plots"])
    assert os.path.getsize(summary["plots"][0]) > 1000
    rows = [json.loads(line) for line in (paths.tokens / "descriptions.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == ["metadata.jsonl", "auto"] * 3  # every other track had no metadata
    for row in (r for r in rows if r["source"] == "auto"):
        assert row["tags"]["genre"] and row["description"].startswith(row["tags"]["genre"][0][0])
    tokenize_nb = nbformat.read(str(out / "notebooks" / "01_tokenize.ipynb"), as_version=4)
    shown = notebooks.outputs_text(tokenize_nb)
    assert "6 tracks in" in shown and shown.count("[auto") == 3  # the automatic descriptions, in the notebook


def check_a_rerun_reuses_its_clips(out):
    """Re-running continues, as the README says: notebook 03 plays the clips the first run made (REUSE)."""
    paths = Paths.at(out)
    before = sorted(p.name for p in paths.generated.iterdir())
    assert demo.STAGE_PARAMETERS["03_generate"]["REUSE"] is True
    demo.run(demo.DemoConfig(out=out), names=("03_generate",))
    assert sorted(p.name for p in paths.generated.iterdir()) == before, "no new clips"
    executed = nbformat.read(str(out / "notebooks" / "03_generate.ipynb"), as_version=4)
    assert "Reusing 4 clip(s) saved earlier" in notebooks.outputs_text(executed)


# ---------------------------------------------------------------------------------------------
# The melody model
# ---------------------------------------------------------------------------------------------


def test_a_demo_folder_belongs_to_one_model(tmp_path):
    paths = Paths.at(tmp_path)
    demo.make_dataset(paths, demo.DemoConfig(out=tmp_path, zips=1, tracks_per_zip=1, track_seconds=2.0))
    with pytest.raises(UserError, match=r"(?s)model: 'tiny' -> 'tiny-melody'.*another --out folder"):
        demo.make_dataset(paths, demo.DemoConfig(out=tmp_path, zips=1, tracks_per_zip=1, track_seconds=2.0,
                                                 model="tiny-melody"))
    with pytest.raises(UserError, match="runs offline with an embedded model"):
        demo.DemoConfig(out=tmp_path, model="facebook/musicgen-melody")
    setup, generate = (notebooks.notebook_path(n) for n in ("00_setup", "03_generate"))
    assert demo.notebook_parameters("00_setup", setup, paths, "tiny-melody")["MODEL"] == "tiny-melody"
    assert demo.notebook_parameters("03_generate", generate, paths, "tiny-melody")["MELODY_FILE"] == str(
        tmp_path / demo.MELODY_FILE)
    assert "MELODY_FILE" not in demo.notebook_parameters("03_generate", generate, paths)


@pytest.mark.slow
def test_demo_runs_the_notebooks_with_the_melody_model(tmp_path):
    out = tmp_path / "melody_demo"
    summary = last_json(run_cli("demo", "--out", str(out), "--model", "tiny-melody", timeout=900).stdout)
    paths = Paths.at(out)
    assert json.loads(paths.project_file.read_text())["model"] == "tiny-melody"
    for name in notebooks.NOTEBOOKS:
        nb = nbformat.read(str(out / "notebooks" / f"{name}.ipynb"), as_version=4)
        assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"], name
        assert "\u274c" not in notebooks.outputs_text(nb), name
    from nbutils.tokenize import shards

    assert all(s.chroma_settings is not None for s in shards.open_all(paths.tokens)), "chroma beside the codes"
    samples = paths.run("lora") / "samples" / "step-000000"
    assert {"base-0.wav", "base-0-melody.wav", "melody-0.wav"} <= {p.name for p in samples.iterdir()}
    generated = [json.loads(Path(p).with_suffix(".json").read_text()) for p in summary["audio"]
                 if Path(p).is_relative_to(paths.generated)]
    assert {g["variant"] for g in generated} == {"base", "lora"}
    assert all(g["parameters"]["melody"] == str(out / demo.MELODY_FILE) for g in generated)
    (results,) = list(paths.eval.glob("*/results.json"))
    facts = json.loads(results.read_text())["melody"]
    assert set(facts["chroma_cosine"]) == {"base", "lora-best"} and facts["melodies"]
