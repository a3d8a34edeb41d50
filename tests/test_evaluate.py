"""Evaluation: metric math, held-out reference, tables and plot, determinism, resume, CLI, notebook."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
import soundfile as sf

from _generate_helpers import make_run, make_tokens, peft_model, save_peft
from conftest import last_json, run_cli
from nbutils import colab
from nbutils.colab import notebooks
from nbutils.core import atomic, config
from nbutils.core.errors import UserError
from nbutils.evaluate import clips, metrics, prompts, reference, report
from nbutils.evaluate import stage as evaluate
from nbutils.generate import stage as generate
from nbutils.tokenize import shards

# ---------------------------------------------------------------------------------------------
# Metric math on constructed embeddings
# ---------------------------------------------------------------------------------------------


def test_cosine_identical_orthogonal_opposite():
    a = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    assert metrics.cosine(a, a * 3) == pytest.approx([1, 1, 1])
    assert metrics.cosine(a[0], a[1]) == pytest.approx(0)
    assert metrics.cosine(a[2], -a[2]) == pytest.approx(-1)
    assert metrics.cosine(a[2], a[0]) == pytest.approx(np.sqrt(0.5))
    assert metrics.centroid(np.array([[1.0, 0.0], [0.0, 5.0]])) == pytest.approx([np.sqrt(0.5)] * 2)


def test_frechet_distance_known_values():
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # mean 0, covariance (2/3) I
    assert metrics.frechet_distance(x, x) == pytest.approx(0, abs=1e-12)
    shift = np.array([3.0, -4.0])
    assert metrics.frechet_distance(x, x + shift) == pytest.approx(25.0)  # only the means differ
    # same mean, covariance x4: sum over dims of (sqrt(2/3) - sqrt(8/3))^2 = 4/3
    assert metrics.frechet_distance(x, 2 * x) == pytest.approx(4 / 3)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 2, (50, 1)), rng.normal(-1, 0.5, (80, 1))
    expected = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert metrics.frechet_distance(a, b) == pytest.approx(expected)
    # symmetric, and fine with fewer items than dimensions (singular covariances)
    p, q = rng.normal(size=(5, 16)), rng.normal(size=(7, 16)) + 0.5
    assert metrics.frechet_distance(p, q) == pytest.approx(metrics.frechet_distance(q, p))
    assert metrics.frechet_distance(p, q) > 0
    with pytest.raises(ValueError, match="at least 2 items"):
        metrics.frechet_distance(x[:1], x)


def test_frechet_of_rotated_isotropic_sets_is_the_mean_shift():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    x = (x - x.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T  # covariance exactly I
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    mu = np.array([0.5, 0.0, -1.0])
    assert metrics.frechet_distance(x, x @ rotation + mu) == pytest.approx(mu @ mu, abs=1e-9)


def test_kad_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(2)
    same = [metrics.kernel_audio_distance(rng.normal(size=(8, 6)), rng.normal(size=(8, 6))) for _ in range(300)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same)), "unbiased: averages to 0, even at n = 8"
    assert min(same) < 0, "an unbiased MMD^2 estimate can come out below zero"
    fd = [metrics.frechet_distance(rng.normal(size=(8, 6)), rng.normal(size=(8, 6))) for _ in range(50)]
    assert np.mean(fd) > 1.0, "the Fréchet distance of two samples of one distribution is far from 0 at n = 8"
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    near, far = metrics.kernel_audio_distance(x + 0.5, y), metrics.kernel_audio_distance(x + 2.0, y)
    assert 0 < near < far
    # by hand: Gaussian kernel with the reference's median distance, diagonals left out, x 100
    a, b = np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])
    k = lambda d: np.exp(-(d**2) / (2 * 2.0**2))  # noqa: E731 - median distance of b is 2
    expected = 100 * (k(1) + k(2) - 2 * np.mean([k(0), k(2), k(1), k(1)]))
    assert metrics.kernel_audio_distance(a, b) == pytest.approx(expected)


def test_frechet_via_the_small_svd_equals_the_covariance_formula():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 12)), rng.normal(size=(30, 12)) * 1.5 + 0.3
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    values, vectors = np.linalg.eigh(sx)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sy @ root), 0, None)).sum()
    expected = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(sx) + np.trace(sy) - 2 * cross
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)  # eigh of a singular matrix: ~1e-8


def test_bootstrap_redraws_prompts_then_seeds_and_intervals_narrow_with_more_clips():
    from nbutils.evaluate import uncertainty

    grid = np.arange(12).reshape(4, 3)  # 4 prompts x 3 seeds
    draws = uncertainty.hierarchical(grid, 500, uncertainty.rng(0))
    assert draws.shape == (500, 12)
    for row in draws[:50]:  # every block of 3 is the seeds of one prompt
        assert all(len({i // 3 for i in row[j : j + 3]}) == 1 for j in range(0, 12, 3))
    keys = [(p, s) for p in "abcd" for s in range(3)]
    assert np.array_equal(uncertainty.grid_of(keys), grid)
    assert uncertainty.grid_of(keys[:-1]) is None, "prompts with unequal seeds: flat draws"
    rng = np.random.default_rng(0)

    def width(prompts, seeds):
        values = rng.normal(size=prompts * seeds)
        g = np.arange(prompts * seeds).reshape(prompts, seeds)
        low, high = uncertainty.over(uncertainty.hierarchical(g, 400, uncertainty.rng(1)), lambda i: values[i].mean())
        assert low <= values.mean() <= high
        return high - low

    assert width(16, 4) < width(4, 4) / 1.5


def test_published_reference_beside_the_base_row_only_for_the_card_models():
    from nbutils.evaluate import table

    row = {"model": "base", "prompt_set": "style", "samples": 4, "clap_text": 0.31, "ci95": {"clap_text": [0.29, 0.33]}}
    card = table.published("facebook/musicgen-small")
    assert (card["fad"], card["kl"], card["clap"]) == (4.88, 1.42, 0.27) and "not MusicCaps" in card["note"]
    shown = table.markdown([row, {**row, "model": "lora-best"}], card)
    base_line, lora_line = shown.splitlines()[2:4]
    assert "card: FAD 4.88, KL 1.42, CLAP 0.27" in base_line and "card" not in lora_line
    assert "0.310 [0.290, 0.330]" in base_line
    assert table.published("tiny") is None and "published" not in table.markdown([row])


def test_score_rows_on_constructed_embeddings():
    """Clips equal to their prompt's text embedding score 1; the reference centroid decides style."""
    text = {"style a": np.array([1.0, 0, 0]), "generic b": np.array([0, 1.0, 0])}
    sets = {"style": ["style a"], "generic": ["generic b"]}
    samples = [
        {"model": "base", "prompt": "style a", "path": "", "seed": 0},
        {"model": "base", "prompt": "generic b", "path": "", "seed": 0},
        {"model": "lora", "prompt": "style a", "path": "", "seed": 0},
        {"model": "lora", "prompt": "generic b", "path": "", "seed": 0},
    ]
    audio = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 1.0]])
    reference = np.array([[0, 0, 1.0], [0, 0, 1.0]])
    per_prompt, summary = report.score(samples, sets, text, audio, reference)
    row = {(r["model"], r["prompt_set"]): r for r in summary}
    assert row["base", "style"]["clap_text"] == pytest.approx(1.0)
    assert row["base", "style"]["style_similarity"] == pytest.approx(0)
    assert row["lora", "style"]["clap_text"] == pytest.approx(0)
    assert row["lora", "style"]["style_similarity"] == pytest.approx(1)
    assert row["lora", "generic"]["clap_text_vs_base"] == pytest.approx(-1.0), "forgetting shows on the generic set"
    assert row["held-out", "reference"]["style_similarity"] == pytest.approx(1.0)
    assert len(per_prompt) == 4 and all(r["samples"] == 1 for r in per_prompt)
    assert row["base", "style"]["frechet"] is None, "one clip is not a distribution"


# ---------------------------------------------------------------------------------------------
# The held-out reference
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Project-like folders: token shards, source ZIPs and a training run with its split."""
    root = tmp_path_factory.mktemp("evaldata")
    split = make_tokens(root / "tokens", root / "zips")
    run = make_run(root / "runs" / "lora", val_tracks=split["val_tracks"], train_tracks=split["train_tracks"])
    return {"root": root, "tokens": root / "tokens", "zips": root / "zips", "run": run, **split}


@pytest.fixture(scope="module")
def pipe():
    return generate.Pipeline("tiny")


def test_reference_is_the_runs_validation_tracks_from_source_or_decoded(data, pipe):
    opened = shards.open_all(data["tokens"])
    cfg = evaluate.EvalConfig(model="tiny", tokens=str(data["tokens"]), zips=str(data["zips"]), max_reference=32)
    from_source = reference.reference_audio(cfg, pipe, opened, data["run"])
    assert set(from_source.tracks) == set(data["val_tracks"]) and from_source.origins == ["source"] * 4
    assert "split.json" in from_source.selection
    first = opened[0].segments[[s.track for s in opened[0].segments].index(from_source.tracks[0])]
    import io
    import zipfile

    with zipfile.ZipFile(data["zips"] / opened[0].meta["zip"]) as archive:
        wave, rate = sf.read(io.BytesIO(archive.read(first.path)), dtype="float32")
    start = int(first.start * rate)
    assert np.allclose(from_source.audio[0][:, 0], wave[start : start + 32_000], atol=1e-6)

    decoded = reference.reference_audio(evaluate.EvalConfig(model="tiny", tokens=str(data["tokens"]), max_reference=3),
                                        pipe, opened, data["run"])
    assert decoded.origins == ["decoded"] * 3 and len(decoded.audio) == 3, "evenly spread, at most max_reference"
    assert all(a.shape == (50 * 640, 1) for a in decoded.audio)
    # without a run (no split.json) the sample is fixed: the same tracks every time
    again = reference.held_out_segments(opened, None, 32)
    assert reference.held_out_segments(opened, None, 32)[0] == again[0]
    assert "fixed sample of 1 of 4 tracks" in again[1]


def test_prompts_from_training_descriptions_or_a_file(data, tmp_path):
    opened = shards.open_all(data["tokens"])
    sets = prompts.prompt_sets(opened, num_prompts=5)
    assert sets["style"] == ["bright synth arpeggio melody, upbeat", "calm piano chords, slow, minor and major"]
    assert sets["generic"] == list(prompts.GENERIC_PROMPTS)
    file = tmp_path / "prompts.txt"
    file.write_text("# my style\nlofi piano\n\nwarm tape hiss beat\n")
    assert prompts.prompt_sets([], str(file))["style"] == ["lofi piano", "warm tape hiss beat"]
    both = tmp_path / "prompts.json"
    both.write_text(json.dumps({"style": ["lofi piano"], "generic": ["opera aria"]}))
    assert prompts.prompt_sets([], str(both)) == {"style": ["lofi piano"], "generic": ["opera aria"]}


def test_prompt_files_are_checked_and_cleaned(tmp_path):
    file = tmp_path / "prompts.txt"
    file.write_text("  # an indented comment\n  lofi piano  \n\t# another\n")
    assert prompts.read_prompt_file(str(file)) == {"style": ["lofi piano"]}
    spaced = tmp_path / "spaced.json"
    spaced.write_text(json.dumps({"style": ["  lofi piano ", "", "   "], "generic": ["opera aria"]}))
    assert prompts.read_prompt_file(str(spaced)) == {"style": ["lofi piano"], "generic": ["opera aria"]}
    for bad in ({"style": "calm piano"}, {"style": ["calm piano", 3]}, {"generic": None}):
        wrong = tmp_path / "wrong.json"
        wrong.write_text(json.dumps(bad))
        with pytest.raises(UserError, match=r'must be a list of text prompts.*e\.g\. \{"style": \["calm piano"'):
            prompts.read_prompt_file(str(wrong))
    broken = tmp_path / "broken.json"
    broken.write_text('{"style": ["calm piano",\n  "lofi"\n')
    with pytest.raises(UserError, match=r"broken.json is not valid JSON \(line 3, column 1"):
        prompts.read_prompt_file(str(broken))


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def eval_config(data, out, **values) -> evaluate.EvalConfig:
    values = {"model": "tiny", "adapters": [str(data["run"])], "clap": "tiny", "tokens": str(data["tokens"]),
              "out": str(out), "seconds": 0.5, "samples_per_prompt": 2, "seed": 3, **values}
    return config.from_dict(evaluate.EvalConfig, values)  # flat sampling keys, as notebook 04 passes them


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_tables_and_plot_written_and_deterministic(data, tmp_path):
    first = evaluate.run(eval_config(data, tmp_path / "a"))
    files = {k: Path(v) for k, v in first["files"].items()}
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = read_csv(files["summary_csv"])
    assert [(r["model"], r["prompt_set"]) for r in summary] == [
        ("base", "style"), ("base", "generic"), ("lora-best", "style"), ("lora-best", "generic"),
        ("held-out", "reference")]
    for row in summary[:4]:
        n = 2 * (2 if row["prompt_set"] == "style" else 4)
        assert int(row["samples"]) == n and int(row["frechet_n_generated"]) == n
        assert int(row["frechet_n_reference"]) == 4, "the sample size is stated next to the distance"
        assert -1 <= float(row["clap_text"]) <= 1 and -1 <= float(row["style_similarity"]) <= 1
        assert float(row["frechet"]) >= 0
    per_prompt = read_csv(files["per_prompt_csv"])
    assert len(per_prompt) == 2 * 6 and {r["samples"] for r in per_prompt} == {"2"}
    results = json.loads(files["json"].read_text())
    assert results["reference"] == {"selection": f"validation tracks of {data['run'] / 'split.json'}", "segments": 4,
                                    "decoded": 4, "from_source": 0, "why_decoded": {reference.NO_ZIPS: 4}}
    assert set(results["forgetting_generic_clap_text"]) == {"lora-best"}
    wavs = sorted((tmp_path / "a" / "samples").rglob("*.wav"))
    assert len(wavs) == 2 * 6 * 2
    _check_contract(results, tmp_path / "a", data)

    second = evaluate.run(eval_config(data, tmp_path / "b"))
    assert Path(second["files"]["summary_csv"]).read_text() == files["summary_csv"].read_text()
    assert Path(second["files"]["per_prompt_csv"]).read_text() == files["per_prompt_csv"].read_text()


def _check_contract(results: dict, out: Path, data: dict) -> None:
    """results.json's contract: held-out likelihood per model row, copies, ci95 + n, kad, listen.html."""
    for row in results["summary"]:
        if row["model"] == "held-out":
            continue
        assert isinstance(row["heldout_bits_per_second"], float) and row["heldout_bits_per_second"] > 0
        assert isinstance(row["heldout_nll_per_codebook"], list) and len(row["heldout_nll_per_codebook"]) == 4
        assert "kad" in row and isinstance(row["kad"], float)
        for key in ("clap_text", "style_similarity", "frechet", "kad", "clap_text_vs_base", "heldout_bits_per_second"):
            low, high = row["ci95"][key]
            assert low <= high and row["n"][key] >= 1, (row["model"], key)
        assert row["ci95"]["clap_text"][0] <= row["clap_text"] <= row["ci95"]["clap_text"][1]
        assert row["n"]["clap_text"] == row["samples"] and row["n"]["heldout_bits_per_second"] == 4
    models = {r["model"]: r["heldout_bits_per_second"] for r in results["summary"] if r["model"] != "held-out"}
    assert results["heldout_likelihood"]["models"]["base"]["bits_per_second"] == models["base"]
    assert models["lora-best"] != models["base"], "the adapter changes the likelihood"
    assert "validation tracks" in results["heldout_likelihood"]["selection"]
    assert len(results["copies"]) == sum(r["samples"] for r in results["summary"] if r["model"] != "held-out")
    for copy in results["copies"]:
        assert {"clip", "nearest_path", "nearest_start", "clap_similarity", "chroma_similarity", "flagged"} <= set(copy)
        assert copy["nearest_path"] in data["train_tracks"], "only training segments are searched"
    flags = [c["flagged"] for c in results["copies"]]
    assert flags == sorted(flags, reverse=True), "flagged first"
    page = out / "listen.html"
    assert page.is_file() and results["files"]["listen"] == str(page)
    html = page.read_text()
    assert html.count("<audio") == 2 * len(results["listening"]["pairs"]) and "samples/" not in html
    for pair in results["listening"]["pairs"]:
        assert all((out / f).is_file() for f in pair["files"])
    summary_csv = read_csv(out / "summary.csv")
    assert {"kad", "kad_ci95_low", "kad_ci95_high", "kad_n", "heldout_bits_per_second",
            "heldout_bits_per_second_ci95_low"} <= set(summary_csv[0])
    assert read_csv(out / "copies.csv")[0]["nearest_path"] in data["train_tracks"]


def test_rerun_resumes_and_other_settings_are_refused(data, tmp_path):
    out = tmp_path / "eval"
    cfg = eval_config(data, out, samples_per_prompt=1, prompts="", num_prompts=1)
    evaluate.run(cfg)
    wavs = sorted(p.name for p in out.rglob("*.wav"))
    ledger = (out / "samples" / "index.jsonl").read_text().splitlines()
    summary = (out / "summary.csv").read_text()
    # kill-like damage: the last ledger line is torn; that unit is generated again, the rest reused
    (out / "samples" / "index.jsonl").write_text("\n".join(ledger[:-1]) + "\n" + ledger[-1][:20])
    evaluate.run(cfg)
    assert len(list(out.rglob("*.wav"))) == len(wavs) + 5, "only the torn unit (5 prompts) was redone"
    assert (out / "summary.csv").read_text() == summary, "resumed equals uninterrupted"
    with pytest.raises(UserError, match=r"(?s)other settings, so it cannot be continued:\n  seconds: 0.5 -> 2.0\n.*"
                                        r"another --out .*or delete"):
        evaluate.run(eval_config(data, out, samples_per_prompt=1, num_prompts=1, seconds=2.0))


def test_out_that_is_a_file_is_refused_before_anything_is_loaded(data, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr(evaluate, "Pipeline", no_loading)
    taken = tmp_path / "results.csv"
    taken.write_text("earlier")
    with pytest.raises(UserError, match="results.csv is a file"):
        evaluate.run(eval_config(data, taken))
    with pytest.raises(UserError, match=r"eval lies under .*results.csv, which is a file"):
        evaluate.run(eval_config(data, taken / "eval"))
    assert taken.read_text() == "earlier"


def test_too_short_reference_or_huge_seed_is_refused_before_generating(data, tmp_path):
    for seconds in (0, 0.01):
        with pytest.raises(UserError, match="reference_seconds must be at least 0.1"):
            eval_config(data, tmp_path / "r", reference_seconds=seconds)
    with pytest.raises(UserError, match=r"seed must be within 0 \.\. 4294967295"):
        eval_config(data, tmp_path / "r", seed=99999999999999999999)
    assert not (tmp_path / "r").exists()


def test_a_failed_start_does_not_block_the_corrected_command(data, tmp_path):
    """A typo in --adapter, or neither --tokens nor --prompts: the fixed command runs in the same folder."""
    out = tmp_path / "eval"
    with pytest.raises(UserError, match="neither an existing folder or file nor a Hub repo id"):
        evaluate.run(eval_config(data, out, adapters=[str(data["run"] / "adapters" / "bets")]))
    with pytest.raises(UserError, match="pass tokens .* or prompts"):
        evaluate.run(eval_config(data, out, tokens=""))
    assert not (out / "eval_config.json").exists()
    results = evaluate.run(eval_config(data, out, samples_per_prompt=1, num_prompts=1))
    assert Path(results["files"]["summary_csv"]).is_file()
    assert (out / "eval_config.json").is_file(), "a real evaluation still claims its folder"


def test_without_tokens_a_prompt_file_still_gives_tables_and_a_plot(data, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("lofi piano\nwarm tape hiss beat\n")
    results = evaluate.run(eval_config(data, tmp_path / "e", tokens="", prompts=str(prompts), samples_per_prompt=1))
    files = {k: Path(v) for k, v in results["files"].items()}
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = read_csv(files["summary_csv"])
    assert {r["model"] for r in summary} == {"base", "lora-best"}, "no held-out row without a reference"
    for row in summary:
        assert -1 <= float(row["clap_text"]) <= 1
        assert row["style_similarity"] == "" and row["frechet"] == "", "no reference: empty, not invented"
    reference = json.loads(files["json"].read_text())["reference"]
    assert reference["selection"].startswith("none (no token shards)") and reference["decoded"] == 0


def test_retrained_adapter_regenerates_its_clips_and_reuses_the_base(data, tmp_path):
    """Retraining into the same folder (same settings) must not reuse the old adapter's clips."""
    run = make_run(tmp_path / "run", val_tracks=data["val_tracks"], train_tracks=data["train_tracks"], seed=1)
    out = tmp_path / "eval"
    cfg = eval_config(data, out, adapters=[str(run / "adapters" / "best")], samples_per_prompt=1, num_prompts=1)

    def ledger(results_dir):
        ledger = atomic.read_jsonl(results_dir / "samples" / "index.jsonl")
        return {r["unit"].split("|")[0]: sorted(c["path"] for c in r["clips"]) for r in ledger}

    first = evaluate.run(cfg)
    before = ledger(out)
    save_peft(peft_model("tiny", seed=2), run / "adapters" / "best")  # retrained: new weights, same folder
    second = evaluate.run(cfg)
    after = ledger(out)
    old_fp, new_fp = first["adapter_fingerprints"]["lora-best"], second["adapter_fingerprints"]["lora-best"]
    assert old_fp and new_fp and old_fp != new_fp
    assert after["base"] == before["base"], "base clips are reused"
    old, new = after[f"lora-best@{old_fp}"], after[f"lora-best@{new_fp}"]
    assert not set(old) & set(new), "the LoRA clips were generated again, into new files"
    assert all(Path(p).is_file() for p in old + new), "the earlier clips are kept"
    assert any(not np.array_equal(clips.read_wav(a), clips.read_wav(b)) for a, b in zip(old, new))
    scores = {(r["model"], r["prompt"]): r["clap_text"] for r in second["per_prompt"]}
    earlier = {(r["model"], r["prompt"]): r["clap_text"] for r in first["per_prompt"]}
    assert all(scores[k] == v for k, v in earlier.items() if k[0] == "base")
    assert any(scores[k] != v for k, v in earlier.items() if k[0] == "lora-best"), "scores of the new clips"
    wavs = len(list(out.rglob("*.wav")))
    evaluate.run(cfg)  # unchanged weights: everything reused
    assert len(list(out.rglob("*.wav"))) == wavs


def test_checkpoints_are_compared_too(data, tmp_path):
    results = evaluate.run(eval_config(data, tmp_path / "ck", checkpoints=True, samples_per_prompt=1, num_prompts=1,
                                       prompts=""))
    models = list(dict.fromkeys(r["model"] for r in results["summary"]))
    assert models == ["base", "lora-best", "step-000002", "step-000004", "held-out"]


def test_wandb_table_with_audio_when_a_run_is_active(data, tmp_path):
    import wandb

    run = wandb.init(project="nbutils-test", mode="offline", dir=str(tmp_path))
    try:
        results = evaluate.run(eval_config(data, tmp_path / "wb", samples_per_prompt=1, num_prompts=1))
        assert results["wandb"] is True
        assert run.summary["eval/samples"]["_type"] == "table-file"
        assert "eval/lora-best/generic/clap_text" in run.summary.keys()
    finally:
        wandb.finish()
    assert report.log_wandb([], [], 32_000) is False, "no run: nothing logged"


def test_cli_contract(data, tmp_path):
    out = tmp_path / "cli"
    proc = run_cli("evaluate", "--model", "tiny", "--adapter", str(data["run"] / "adapters" / "final"),
                   "--out", str(out), "--clap", "tiny", "--tokens", str(data["tokens"]), "--seconds", "0.5",
                   "--samples-per-prompt", "1", "--num-prompts", "1")
    summary = last_json(proc.stdout)
    for key in ("summary_csv", "per_prompt_csv", "json", "plot", "listen", "copies_csv"):
        assert Path(summary[key]).is_file()
    assert summary["heldout_likelihood"]["models"]["lora-final"]["bits_per_second"] > 0
    assert len(summary["copies"]) == 2 * 5 and summary["copy_check"]["thresholds"]["chroma"] is not None
    # progress and the report go to stdout (errors and warnings to stderr), before the JSON line
    assert "Held-out likelihood of base" in proc.stdout and "kad" in proc.stdout and "Listen blind" in proc.stdout
    assert {r["model"] for r in summary["summary"]} == {"base", "lora-final", "held-out"}
    missing = run_cli("evaluate", "--model", "tiny", "--out", str(out / "x"), "--clap", "tiny", "--tokens",
                      str(data["tokens"]), check=False)
    assert missing.returncode == 2 and "No adapter to evaluate" in missing.stderr


@pytest.mark.slow
def test_notebook_executes(tmp_path):
    root = tmp_path / "project"
    project = colab.create_project(root, model="tiny")
    split = make_tokens(project.paths.tokens, project.paths.zips)
    make_run(project.paths.run("lora"), val_tracks=split["val_tracks"], train_tracks=split["train_tracks"])
    params = {"PROJECT_ROOT": str(root), "MODEL": "tiny", "CLAP": "tiny", "SECONDS": 0.5, "SAMPLES_PER_PROMPT": 1}
    out = notebooks.execute(notebooks.notebook_path("04_evaluate"), tmp_path / "04.out.ipynb", params, cwd=tmp_path,
                            timeout=300)
    executed = nbformat.read(str(out), 4)
    (folder,) = (root / "eval").glob("eval-*")  # one folder per settings: a re-run resumes there
    results = json.loads((folder / "results.json").read_text())
    assert results["reference"]["from_source"] == 4, "the project's ZIPs hold the source audio"
    assert {r["model"] for r in results["summary"]} == {"base", "lora-best", "held-out"}
    outputs = [o for c in executed.cells for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the plot is shown"
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert any("| lora-best | style |" in t for t in tables), "the summary table is shown"
    order = [t.split("**")[1] for t in tables if t.startswith("**")]
    assert order[:2] == ["Held-out likelihood", "Copy check"], "the likelihood first, then the copy flags"
    pages = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    pairs = len(results["listening"]["pairs"])
    assert pairs == 6 and any(p.count("<audio") == 2 * pairs and "data:audio/" in p for p in pages), "listen, inline"
    assert (folder / "listen.html").is_file()


# ---------------------------------------------------------------------------------------------
# Source audio through tokenize's ZIP reader
# ---------------------------------------------------------------------------------------------


def _named_tokens(root: Path, names: dict[str, str]) -> tuple[list[shards.Shard], dict[str, np.ndarray]]:
    """A ZIP whose members carry the names ``names`` maps to (as a user's zip tool wrote them) and
    its shard, whose index holds the names tokenization stores (NFC, repaired): one 0.5 s segment each."""
    import io
    import unicodedata

    import torch

    from _tokenize_helpers import clear_utf8_flag, write_zip
    from nbutils.core import models, synth

    codec, spec = models.load_codec("tiny")
    writer = shards.ShardWriter(root / "tokens", "batch", {"model": "tiny", "sample_rate": spec.sample_rate,
                                                           "num_codebooks": spec.num_codebooks, "zip": "batch.zip"})
    members, waves = [], {}
    for n, (stored, written) in enumerate(names.items()):
        wave = synth.track("chords", 1.0, seed=n)
        buffer = io.BytesIO()
        sf.write(buffer, wave, spec.sample_rate, format="WAV", subtype="FLOAT")
        members.append((written.removesuffix("|no-utf8-flag"), buffer.getvalue()))
        waves[stored] = wave[16_000:]
        with torch.no_grad():
            codes = codec.encode(torch.from_numpy(wave[16_000:])[None, None]).audio_codes[0, 0]
        writer.add(shards.Segment(path=unicodedata.normalize("NFC", stored), start=0.5, frames=codes.shape[-1],
                                  description="calm piano", track=f"batch.zip/{stored}"), codes.T.numpy())
    writer.commit()
    write_zip(root / "zips" / "batch.zip", members)
    for written in names.values():
        if written.endswith("|no-utf8-flag"):
            clear_utf8_flag(root / "zips" / "batch.zip", written.removesuffix("|no-utf8-flag"))
    return shards.open_all(root / "tokens"), waves


def test_nfd_and_unflagged_utf8_member_names_are_found_in_their_zip(tmp_path, pipe):
    """macOS writes NFD names, older zip tools UTF-8 bytes without the UTF-8 flag (zipfile reads them
    as cp437): the shard index holds the repaired NFC name, and the source is still found."""
    import unicodedata

    names = {"Música/Café del Mar.wav": unicodedata.normalize("NFD", "Música/Café del Mar.wav"),
             "Björk/Jóga.wav": "Björk/Jóga.wav|no-utf8-flag", "plain/song.wav": "plain/song.wav"}
    opened, waves = _named_tokens(tmp_path, names)
    cfg = evaluate.EvalConfig(model="tiny", tokens=str(tmp_path / "tokens"), zips=str(tmp_path / "zips"),
                              max_reference=8)
    got = reference.reference_audio(cfg, pipe, opened, None)
    chosen = reference.held_out_segments(opened, None, 8)[0]
    assert len(got.audio) == len(chosen) >= 1
    everything = [(s, i) for s in opened for i in range(len(s.segments))]  # and every segment on its own:
    with reference.SourceAudio(tmp_path / "zips") as source:
        for shard, index in everything:
            segment = shard.segments[index]
            wave = source.segment("batch.zip", segment, 0.5, 32_000, 1)
            assert not isinstance(wave, str), f"{segment.path}: {wave}"
            np.testing.assert_allclose(wave[:, 0], waves[segment.track.split("/", 1)[1]], atol=1e-6)
    assert got.origins == ["source"] * len(chosen) and got.why_decoded == {}


def test_an_oversize_member_is_refused_by_the_cap_and_its_segment_decoded_with_the_reason(tmp_path, pipe,
                                                                                          monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    opened, _ = _named_tokens(tmp_path, {"big/track.wav": "big/track.wav"})
    small = evaluate.EvalConfig(model="tiny", tokens=str(tmp_path / "tokens"), zips=str(tmp_path / "zips"),
                                max_member_mb=0.01)  # 10 KiB < 125 KiB
    got = reference.reference_audio(small, pipe, opened, None)
    assert got.origins == ["decoded"]
    ((why, count),) = got.why_decoded.items()
    assert count == 1 and "over the 10485 bytes per-file cap (zip-bomb guard" in why
    assert not list(scratch.iterdir()), "the extraction folder is removed"
    roomy_cfg = evaluate.EvalConfig(model="tiny", tokens=str(tmp_path / "tokens"), zips=str(tmp_path / "zips"))
    roomy = reference.reference_audio(roomy_cfg, pipe, opened, None)
    assert roomy.origins == ["source"]



# ---------------------------------------------------------------------------------------------
# One base model, adapters switched
# ---------------------------------------------------------------------------------------------


def test_adapters_switched_on_one_base_give_the_clips_of_a_fresh_load_per_adapter(data, tmp_path, monkeypatch):
    """Two adapters: the base loads once, and every clip is bit for bit what the 0.1.0 path made,
    a freshly loaded base + adapter per adapter (base clips from the first one, adapter disabled)."""
    from nbutils.core import models
    from nbutils.generate import musicgen, output

    other = make_run(tmp_path / "other", val_tracks=data["val_tracks"], train_tracks=data["train_tracks"], seed=1)
    specs = [str(data["run"]), str(other / "adapters" / "final")]
    loads = []
    real_load = models.load_musicgen
    monkeypatch.setattr(models, "load_musicgen", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    cfg = eval_config(data, tmp_path / "eval", adapters=specs, samples_per_prompt=2, num_prompts=1, batch_size=3)
    results = evaluate.run(cfg)
    assert len(loads) == 1, "the base model is loaded once for both adapters"
    assert set(results["adapter_fingerprints"]) == {"lora-best", "lora-final"}
    made = {(r["unit"].split("|")[0].split("@")[0], c["prompt"], c["seed"]): c["path"]
            for r in atomic.read_jsonl(tmp_path / "eval" / "samples" / "index.jsonl") for c in r["clips"]}
    differ = [not np.array_equal(clips.read_wav(made["lora-best", p, seed]),
                                 clips.read_wav(made["lora-final", p, seed]))
              for (label, p, seed) in made if label == "lora-best"]
    assert all(differ), "the second adapter really replaced the first"
    sets = json.loads(Path(results["files"]["json"]).read_text())["prompt_sets"]
    gen = cfg.generation([p for name in ("style", "generic") for p in sets.get(name, [])], tmp_path / "unused")
    for n, (spec, label) in enumerate(zip(specs, ("lora-best", "lora-final"))):
        fresh = musicgen.Pipeline("tiny", spec)  # what 0.1.0 loaded for each adapter
        prepared = fresh.prepare(gen)
        for variant, name in ((("base", "base"),) if n == 0 else ()) + (("lora", label),):
            for variation in range(gen.variations):
                for batch in generate.batches(gen.prompts, gen.batch_size):
                    for clip in musicgen.sample_batch(fresh, prepared, batch, variant=variant, variation=variation,
                                                      seed=gen.seed + variation):
                        pcm, _, _ = output.peak_safe_int16(clip.audio)
                        saved, _ = sf.read(made[name, clip.prompt, clip.seed], dtype="int16", always_2d=True)
                        assert np.array_equal(saved, pcm), (name, clip.prompt, clip.seed)
        fresh.release()


def test_a_0_1_0_evaluation_folder_resumes_and_keeps_its_name(data, tmp_path):
    """0.1.0 recorded the sampling settings flat (and dtype, not precision): the same settings still
    resume that folder, and notebook 04's eval-<hash> folder name is unchanged."""
    import hashlib

    out = tmp_path / "old"
    cfg = eval_config(data, out, samples_per_prompt=1, num_prompts=1, top_k=100)
    record = config.to_dict(cfg)
    flat = {**{k: v for k, v in record.items() if k not in ("sampling", "precision", "max_member_mb")},
            **record["sampling"], "dtype": "auto"}
    atomic.write_json(out / "eval_config.json", flat)  # as 0.1.0 wrote it
    evaluate._check_resumable(cfg, out)  # same settings: no refusal
    blob = json.dumps({k: flat[k] for k in evaluate.RESULT_KEYS}, sort_keys=True, separators=(",", ":"))
    assert config.config_hash(cfg, evaluate.RESULT_KEYS) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    with pytest.raises(UserError, match=r"other settings, so it cannot be continued:\n  top_k: 100 -> 250\n"):
        evaluate.run(eval_config(data, out, samples_per_prompt=1, num_prompts=1))


def test_a_later_cell_reads_the_saved_results_or_says_what_to_run(tmp_path):
    """Notebook 04's listening cell works in a new runtime: it reads results.json instead of a variable."""
    cfg = evaluate.EvalConfig(model="tiny", prompts=str(tmp_path / "p.txt"), out=str(tmp_path / "eval"))
    with pytest.raises(UserError, match="No evaluation results in .*run the evaluation first"):
        evaluate.saved_results(cfg)
    atomic.write_json(tmp_path / "eval" / "results.json", {"listening": {"pairs": []}})
    assert evaluate.saved_results(cfg) == {"listening": {"pairs": []}}


def test_a_folder_made_before_the_new_defaults_is_refused_with_what_differs(tmp_path):
    """An evaluation folder of 0.1.0 (4 prompts x 2 clips, no analysis settings recorded): the README's
    advice holds - refused with the two changed defaults, accepted with them given back."""
    out = tmp_path / "eval"
    old = config.to_dict(evaluate.EvalConfig(model="tiny", prompts="p.txt", num_prompts=4, samples_per_prompt=2))
    for key in ("heldout_segments", "copy_segments", "bootstrap"):
        old.pop(key)
    atomic.write_json(out / "eval_config.json", old)
    with pytest.raises(UserError, match=r"(?s)num_prompts: 4 -> 8.*samples_per_prompt: 2 -> 4"):
        evaluate._check_resumable(evaluate.EvalConfig(model="tiny", prompts="p.txt"), out)
    evaluate._check_resumable(evaluate.EvalConfig(model="tiny", prompts="p.txt", num_prompts=4,
                                                  samples_per_prompt=2, bootstrap=500), out)
