"""Generation: exact durations (long-form too), seeds, A/B pairing, sidecars, names, CLI, notebook."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pytest
import soundfile as sf
import torch

from _generate_helpers import make_run, peft_model, save_peft
from conftest import last_json, run_cli
from nbutils import colab
from nbutils.colab import notebooks
from nbutils.core import config, synth
from nbutils.core.errors import UserError
from nbutils.core.sampling import SamplingConfig
from nbutils.generate import output, sampling
from nbutils.generate import stage as generate

SR = 32_000


@pytest.fixture(scope="module")
def pipe():
    return generate.Pipeline("tiny")


@pytest.fixture(scope="module")
def strong_adapter(tmp_path_factory) -> Path:
    """A LoRA on the heads large enough that LoRA audio differs from base audio."""
    folder = tmp_path_factory.mktemp("adapter") / "heads"
    return save_peft(peft_model("tiny", [f"lm_heads.{i}" for i in range(4)], strength=3.0), folder)


@pytest.fixture(scope="module")
def ab_pipe(strong_adapter):
    return generate.Pipeline("tiny", str(strong_adapter))


def cfg(tmp_path, **values) -> generate.GenerateConfig:
    values = {"model": "tiny", "prompts": ["calm piano"], "seconds": 0.5, "out": str(tmp_path / "out"), **values}
    return config.from_dict(generate.GenerateConfig, values)  # flat sampling keys, as notebooks pass them


def read(record) -> np.ndarray:
    audio, rate = sf.read(record["path"], dtype="int16", always_2d=True)
    assert rate == SR
    return audio


# ---------------------------------------------------------------------------------------------
# Durations and long-form
# ---------------------------------------------------------------------------------------------


def test_window_plan_covers_the_request_exactly():
    plan = sampling.Windows(window=50, context=20).plan(existing=0, total_new=127)
    assert plan == [(0, 50), (20, 30), (20, 30), (20, 17)]
    assert sum(new for _, new in plan) == 127
    assert all(ctx + new <= 50 for ctx, new in plan)
    # a continued audio prompt is the first window's context
    assert sampling.Windows(window=50, context=20).plan(existing=35, total_new=10) == [(20, 10)]


def test_context_that_rounds_to_the_whole_window_is_refused_not_looped(pipe, tmp_path):
    """0.499 s and 0.5 s are both 25 frames: every window would add nothing, forever."""
    with pytest.raises(UserError, match="round to 25 and 25 code frames.*context_seconds 0.48"):
        generate.run(cfg(tmp_path, seconds=1.0, window_seconds=0.5, context_seconds=0.499), pipe)
    with pytest.raises(UserError, match="less than one code frame"):
        generate.run(cfg(tmp_path, seconds=1.0, window_seconds=0.001, context_seconds=0.0), pipe)
    with pytest.raises(ValueError, match="cannot hold"):
        sampling.Windows(window=25, context=25)
    with pytest.raises(dataclasses.FrozenInstanceError):  # checked once and it stays so: plan() always ends
        sampling.Windows(window=25, context=10).context = 25


@pytest.mark.parametrize("seconds", [0.37, 2.53])
def test_exact_durations_short_and_past_the_window(pipe, tmp_path, seconds):
    """0.37 s is not a whole number of frames; 2.53 s spans four 1 s windows (0.4 s context)."""
    config = cfg(tmp_path, seconds=seconds, window_seconds=1.0, context_seconds=0.4, prompts=["a", "b"])
    records = generate.run(config, pipe)
    expected = int(round(seconds * SR))
    for record in records:
        assert read(record).shape == (expected, 1)
        assert record["samples"] == expected and record["seconds"] == pytest.approx(seconds)
    assert records[0]["windows"] == (1 if seconds < 1 else 4)


@pytest.mark.parametrize("seconds, window, context", [(0.02, 0.0, 10.0), (0.04, 0.0, 10.0), (1.02, 1.0, 0.0)])
def test_one_or_two_frames_have_the_exact_length(pipe, tmp_path, seconds, window, context):
    """transformers needs 3 frames per call for the delay pattern: fewer are sampled as 3 and cut
    (1.02 s in 1 s windows without context ends with a 1-frame window)."""
    records = generate.run(cfg(tmp_path, seconds=seconds, window_seconds=window, context_seconds=context), pipe)
    assert read(records[0]).shape == (int(round(seconds * SR)), 1)
    inputs = pipe.text_inputs(["a"])
    torch.manual_seed(0)
    one = sampling.sample_window(pipe.model, inputs, torch.zeros((1, 4, 0), dtype=torch.long), 1, SamplingConfig())
    torch.manual_seed(0)
    three = sampling.sample_window(pipe.model, inputs, torch.zeros((1, 4, 0), dtype=torch.long), 3, SamplingConfig())
    assert one.shape == (1, 4, 1) and torch.equal(one, three[:, :, :1]), "the first frames do not depend on the cut"


def test_sixty_seconds_with_the_models_own_window(pipe, tmp_path):
    """The real default: 30 s windows, 10 s context; 61.3 s is not a multiple of anything."""
    records = generate.run(cfg(tmp_path, seconds=61.3, guidance_scale=3.0), pipe)
    assert read(records[0]).shape == (int(round(61.3 * SR)), 1)
    assert records[0]["windows"] == 3  # 30 s, then 20 s + 20 s (+1.3 s) after 10 s of context each
    assert pipe.window_seconds == 30.0


# What others save: generation_config.json with max_new_tokens only, with neither limit, or with an
# unusual max_length (transformers 4's default of 20). (generation config, its window in seconds)
FOREIGN = {
    "max_new_tokens-only": ({"max_length": None, "max_new_tokens": 1500}, 30.0),
    "neither": ({"max_length": None, "max_new_tokens": None}, 2048 / 50),  # the decoder's max_position_embeddings
    "max_length-20": ({"max_length": 20, "max_new_tokens": None}, 0.4),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_a_checkpoint_saved_by_others_generates_and_evaluates(kind, tmp_path, capsys):
    """Issue 11: a folder whose generation config lacks max_length crashed in Pipeline.window_seconds."""
    from nbutils.core import models
    from nbutils.evaluate import stage as evaluate

    settings, window = FOREIGN[kind]
    folder = tmp_path / "foreign"
    model, processor = models.build_tiny("tiny")
    for name, value in settings.items():
        setattr(model.generation_config, name, value)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    saved = json.loads((folder / "generation_config.json").read_text())
    assert {k: saved.get(k) for k in settings} == settings, "the folder holds the generation config under test"

    records = generate.run(cfg(tmp_path, model=str(folder), seconds=1.0))
    # the short window: 20 frames, then 14 new after 6 of context each
    assert read(records[0]).shape == (SR, 1) and records[0]["windows"] == (4 if window < 1 else 1)
    loaded = generate.pipeline(cfg(tmp_path, model=str(folder)))
    assert loaded.window_seconds == pytest.approx(window)
    generate.release()
    if window < 1:  # a window shorter than the 10 s context: a third of it continues each window
        assert "each window continues the last 0.12 s instead" in capsys.readouterr().out

    adapter = save_peft(peft_model(str(folder), model=models.load_musicgen(str(folder))[0]), tmp_path / "adapter")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("calm piano\n")
    results = evaluate.run(config.from_dict(evaluate.EvalConfig, {
        "model": str(folder), "adapters": [str(adapter)], "prompts": str(prompts), "clap": "tiny", "seconds": 0.5,
        "samples_per_prompt": 1, "out": str(tmp_path / "eval")}))
    assert {row["model"] for row in results["summary"]} == {"base", "adapter"}
    printed = capsys.readouterr()  # what is not an error goes to stdout (Jupyter shows stderr in red)
    assert "Scoring 10 clips with CLAP" in printed.out and "Wrote " in printed.out
    assert "Scoring" not in printed.err and "Wrote " not in printed.err


def test_each_window_continues_the_codes_before_it(pipe):
    """The last `context` frames of what exists become the next window's prompt, unchanged, and
    the codes of all windows are kept in order (decoded once: joins are exact)."""
    seen = []
    real_generate = pipe.model.generate

    def spy(**kwargs):
        seen.append(kwargs.get("decoder_input_ids"))
        return real_generate(**kwargs)

    pipe.model.generate = spy
    try:
        prompt = torch.randint(0, 64, (1, 4, 7))
        inputs = pipe.text_inputs(["calm piano"])
        torch.manual_seed(0)
        codes, n = sampling.sample_long(pipe.model, inputs, prompt, 60, sampling.Windows(window=25, context=10),
                                        SamplingConfig())
    finally:
        del pipe.model.generate
    assert codes.shape == (1, 4, 67) and n == 4
    assert torch.equal(codes[:, :, :7], prompt), "the continued prompt stays as it was"
    starts = [7 - 7, 7 + 18 - 10, 7 + 18 + 15 - 10, 7 + 18 + 15 + 15 - 10]  # context start of each window
    for ids, start in zip(seen, starts):
        ctx = codes[:, :, start : start + ids.shape[-1]].reshape(4, -1)
        assert torch.equal(ids, ctx)
    assert [ids.shape[-1] for ids in seen] == [7, 10, 10, 10]


def test_audio_prompt_is_continued(pipe, tmp_path):
    prompt_file = tmp_path / "prompt.wav"
    sf.write(prompt_file, synth.track("arpeggio", 0.9, seed=1), SR)
    records = generate.run(cfg(tmp_path, audio_prompt=str(prompt_file), seconds=0.6, window_seconds=1.0,
                               context_seconds=0.5), pipe)
    prompt_frames = int(np.ceil(0.9 * SR / 640))
    record = records[0]
    assert record["prompt_seconds"] == pytest.approx(prompt_frames * 640 / SR)
    assert read(record).shape[0] == prompt_frames * 640 + int(0.6 * SR)
    assert record["windows"] == 2  # 1 s window minus 0.5 s context leaves 0.5 s per window


def _surround(path: Path, seconds: float = 0.6) -> Path:
    """A 5.1 WAV (FL FR C LFE SL SR) whose only sound is in the centre and the left surround."""
    wave = np.zeros((int(seconds * SR), 6), np.float32)
    wave[:, 2] = synth.track("chords", seconds, seed=4)
    wave[:, 4] = synth.track("arpeggio", seconds, seed=5)
    sf.write(path, wave, SR, subtype="FLOAT")
    return path


def test_a_surround_audio_prompt_is_downmixed_as_tokenization_does(tmp_path, monkeypatch):
    """What a stereo model continues is the file as training saw it: 5.1 folded by the ITU downmix
    (centre in both sides, surrounds on theirs), not the plain mean of six channels in both."""
    from nbutils.core import audio

    surround = _surround(tmp_path / "surround.wav")
    seen = []
    encode = sampling.encode
    monkeypatch.setattr(sampling, "encode", lambda model, wave: seen.append(wave) or encode(model, wave))
    stereo = generate.Pipeline("tiny-stereo")
    stereo.prepare(cfg(tmp_path, model="tiny-stereo", audio_prompt=str(surround)))
    report = audio.TrackReport()
    pieces = audio.iter_segments(surround, report, channels=2, min_seconds=0.1)  # as tokenize reads a track
    tokenized = np.concatenate([p.audio for p in pieces], axis=1)
    (wave,) = seen
    np.testing.assert_array_equal(wave.T, tokenized)
    assert not np.allclose(wave[:, 0], wave[:, 1], atol=1e-3), "the left surround stays on the left"
    plain_mean = sf.read(surround, dtype="float32")[0].mean(axis=1)
    assert not np.allclose(wave[:, 0], plain_mean, atol=1e-3), "not 0.1.0's mean of every channel"


def test_the_audio_prompt_is_read_and_encoded_once_per_request(pipe, tmp_path, monkeypatch):
    """3 prompts in batches of 1, 2 variations, base and LoRA: 12 batches, one prompt to read and
    encode, one window plan; and the clips equal those of batches prepared one by one."""
    from nbutils.core import audio

    prompt_file = tmp_path / "prompt.wav"
    sf.write(prompt_file, synth.track("arpeggio", 0.5, seed=1), SR)
    ab = generate.Pipeline("tiny", save_peft(peft_model("tiny", seed=3), tmp_path / "adapter"))
    calls = {"load": 0, "encode": 0, "windows": 0}

    def counted(name, owner, attr):
        real = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, attr, wrapper)

    counted("load", audio, "load")
    counted("encode", sampling, "encode")
    counted("windows", ab, "windows")
    config = cfg(tmp_path, prompts=["a", "b", "c"], batch_size=1, variations=2, compare="both", seconds=0.3,
                 window_seconds=0.4, context_seconds=0.1, audio_prompt=str(prompt_file))
    records = generate.run(config, ab)
    assert len(records) == 12 and calls == {"load": 1, "encode": 1, "windows": 1}
    for record in records[::5]:  # each batch prepared on its own gives the same clip
        alone, _, _, _ = ab.generate([record["prompt"]], config, variant=record["variant"],
                                     seed=record["variation_seed"])
        pcm, _, _ = output.peak_safe_int16(alone[0])
        assert np.array_equal(read(record), pcm)
    assert calls["load"] == 1 + 3, "a config (not a Prepared) is prepared for its call alone"


def test_stereo_model_writes_stereo(tmp_path):
    stereo = generate.Pipeline("tiny-stereo")
    records = generate.run(cfg(tmp_path, model="tiny-stereo", seconds=0.3), stereo)
    audio = read(records[0])
    assert audio.shape == (int(0.3 * SR), 2)
    assert records[0]["channels"] == 2


# ---------------------------------------------------------------------------------------------
# Seeds and A/B
# ---------------------------------------------------------------------------------------------


def test_same_seed_same_audio_on_cpu(pipe, tmp_path):
    first = generate.run(cfg(tmp_path, seed=11, prompts=["calm piano", "dark techno"], variations=2), pipe)
    again = generate.run(cfg(tmp_path, seed=11, prompts=["calm piano", "dark techno"], variations=2), pipe)
    other = generate.run(cfg(tmp_path, seed=12, prompts=["calm piano", "dark techno"]), pipe)
    for a, b in zip(first, again):
        assert (a["prompt"], a["variation_seed"]) == (b["prompt"], b["variation_seed"])
        assert np.array_equal(read(a), read(b))
    assert [r["variation_seed"] for r in first] == [11, 11, 12, 12]
    # seed 12 as the second variation of seed 11 equals seed 12 run on its own
    assert np.array_equal(read(first[2]), read(other[0]))
    assert not np.array_equal(read(first[0]), read(first[2])), "another seed gives other audio"


def test_ab_pairs_base_and_lora_with_the_same_seed(ab_pipe, tmp_path):
    both = generate.run(cfg(tmp_path, compare="both", seed=5, prompts=["calm piano", "dark techno"]), ab_pipe)
    assert [(r["prompt"], r["variant"]) for r in both] == [
        ("calm piano", "base"), ("calm piano", "lora"), ("dark techno", "base"), ("dark techno", "lora")]
    for base, lora in (both[0:2], both[2:4]):
        assert base["pair"] == Path(lora["path"]).name and lora["pair"] == Path(base["path"]).name
        assert base["path"].replace("_base.wav", "") == lora["path"].replace("_lora.wav", "")
        assert base["variation_seed"] == lora["variation_seed"] == 5
        assert base["adapter"] is None and lora["adapter"]["kind"] == "peft"
        assert not np.array_equal(read(base), read(lora)), "the LoRA changes the music"
    # the base take of the pair is exactly what the base model alone makes with that seed
    alone = generate.run(cfg(tmp_path, compare="base", seed=5, prompts=["calm piano", "dark techno"]), ab_pipe)
    assert np.array_equal(read(alone[0]), read(both[0]))
    lora_alone = generate.run(cfg(tmp_path, compare="lora", seed=5, prompts=["calm piano", "dark techno"]), ab_pipe)
    assert np.array_equal(read(lora_alone[1]), read(both[3]))


def test_switching_adapters_on_one_base_equals_loading_each_fresh(strong_adapter, tmp_path, monkeypatch):
    """Same LoRA layout: the weights are reloaded into the layers; another layout: the layers are
    rebuilt. Either way the audio is bit for bit that of a freshly loaded base + that adapter."""
    from nbutils.generate import adapters

    qv1 = save_peft(peft_model("tiny", seed=1), tmp_path / "qv1")
    qv2 = save_peft(peft_model("tiny", seed=2), tmp_path / "qv2")
    config = cfg(tmp_path, seconds=0.3)

    def clip(pipe, variant="lora"):
        return pipe.generate(["calm piano"], config, variant=variant, seed=1)[0][0]

    paths = {"qv1": qv1, "qv2": qv2, "heads": strong_adapter}
    fresh = {name: clip(generate.Pipeline("tiny", str(path))) for name, path in paths.items()}
    base = clip(generate.Pipeline("tiny"), "base")
    reloaded = []
    real = adapters.reload_weights
    monkeypatch.setattr(adapters, "reload_weights", lambda *a: reloaded.append(real(*a)) or reloaded[-1])
    switched = generate.Pipeline("tiny")
    for name in ("qv1", "qv2", "heads", "qv1"):
        assert switched.use_adapter(str(paths[name])).location == str(paths[name])
        assert np.array_equal(clip(switched), fresh[name]), name
        assert np.array_equal(clip(switched, "base"), base), f"base with {name} switched off"
    assert reloaded == [True, False, False], "qv2 into qv1's layers; heads and qv1 again rebuilt"
    wrong = save_peft(peft_model("tiny", seed=3), tmp_path / "wrong")  # qv1's layout, made for an 8-codebook base
    (wrong / "base_model.json").write_text(json.dumps({"num_codebooks": 8}))
    with pytest.raises(UserError, match="num_codebooks: the adapter's base has 8, the model given has 4"):
        switched.use_adapter(str(wrong))
    assert switched.adapter.location == str(qv1) and np.array_equal(clip(switched), fresh["qv1"]), "refused: unchanged"
    assert switched.use_adapter("") is None and np.array_equal(clip(switched, "base"), base)
    assert not [n for n, _ in switched.model.named_modules() if "lora_" in n], "no LoRA layer is left behind"


def test_sidecar_records_every_parameter(ab_pipe, tmp_path, strong_adapter):
    config = cfg(tmp_path, compare="both", seed=3, seconds=0.4, temperature=0.9, top_k=50, top_p=0.95,
                 guidance_scale=2.5, adapter=str(strong_adapter))
    records = generate.run(config, ab_pipe)
    lora = json.loads(Path(records[1]["sidecar"]).read_text())
    assert lora["parameters"] == json.loads(json.dumps(generate.config.to_dict(config)))
    assert lora["model"] == "tiny"
    assert lora["adapter"]["location"] == str(strong_adapter) and lora["adapter"]["kind"] == "peft"
    assert (lora["seed"], lora["variation"], lora["variation_seed"]) == (3, 0, 3)
    assert (lora["sample_rate"], lora["channels"], lora["samples"]) == (SR, 1, int(0.4 * SR))
    assert lora["file"] == Path(records[1]["path"]).name and lora["batch"] == ["calm piano"]
    assert lora["generation_seconds"] > 0
    assert lora["realtime_factor"] == pytest.approx(0.4 / lora["generation_seconds"], rel=0.01)
    assert lora["pipeline"]["dtype"] == "float32" and lora["pipeline"]["device"] == "cpu"
    assert {"torch", "transformers", "peft", "nbutils"} <= set(lora["versions"])
    assert 0 < lora["gain"] <= 1 and lora["peak"] > 0


def test_invalid_requests_say_what_to_do(pipe, tmp_path):
    with pytest.raises(UserError, match="temperature must be positive"):
        cfg(tmp_path, temperature=0)
    with pytest.raises(UserError, match="needs a LoRA adapter"):
        generate.run(cfg(tmp_path, compare="both"), pipe)
    with pytest.raises(UserError, match="not a melody model"):
        generate.run(cfg(tmp_path, melody=str(tmp_path)), pipe)
    with pytest.raises(UserError, match="context_seconds .* must be shorter than the window"):
        generate.run(cfg(tmp_path, window_seconds=1.0, context_seconds=1.0), pipe)
    with pytest.raises(UserError, match="exceeds the model's window of 30 s"):
        generate.run(cfg(tmp_path, window_seconds=31), pipe)
    with pytest.raises(UserError, match="does not exist"):
        generate.run(cfg(tmp_path, audio_prompt=str(tmp_path / "missing.wav")), pipe)


def test_seeds_outside_the_generators_range_are_refused(tmp_path):
    for seed, variations in ((99999999999999999999, 1), (-1, 1), (2**32 - 1, 2)):
        with pytest.raises(UserError, match=r"seed must be within 0 \.\. 4294967295"):
            cfg(tmp_path, seed=seed, variations=variations)
    assert cfg(tmp_path, seed=2**32 - 1).seed == 2**32 - 1


def test_out_that_is_a_file_is_refused_before_loading_and_tilde_is_home(pipe, tmp_path, monkeypatch):
    def no_loading(cfg):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(generate, "pipeline", no_loading)
    taken = tmp_path / "taken.wav"
    taken.write_bytes(b"earlier result")
    with pytest.raises(UserError, match="taken.wav is a file"):
        generate.run(cfg(tmp_path, out=str(taken)))
    with pytest.raises(UserError, match=r"sub lies under .*taken.wav, which is a file"):
        generate.run(cfg(tmp_path, out=str(taken / "sub")))
    assert taken.read_bytes() == b"earlier result"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    records = generate.run(cfg(tmp_path, out="~/clips", seconds=0.1), pipe)
    assert Path(records[0]["path"]).parent == tmp_path / "home" / "clips" and Path(records[0]["path"]).is_file()
    assert not (tmp_path / "~").exists(), "no literal ~ folder"


# ---------------------------------------------------------------------------------------------
# WAV writing
# ---------------------------------------------------------------------------------------------


def test_peak_safe_int16_scales_only_when_needed():
    quiet = np.array([0.5, -0.25, 0.0, 1.0, -1.0])
    pcm, gain, peak = output.peak_safe_int16(quiet)
    assert gain == 1.0 and peak == 1.0
    assert pcm.tolist() == [16384, -8192, 0, 32767, -32767]  # rounded, not truncated
    loud = np.array([2.0, -4.0, 1.0])
    pcm, gain, peak = output.peak_safe_int16(loud)
    assert (gain, peak) == (0.25, 4.0)
    assert pcm.tolist() == [16384, -32767, 8192]  # no clipping: the loudest sample is full scale


def test_names_never_overwrite(tmp_path):
    (tmp_path / "clip_base.wav").write_bytes(b"earlier result")
    name = output.reserve(tmp_path, "clip", ["_base.wav", "_base.json", "_lora.wav"])
    assert name == "clip-2"
    assert (tmp_path / "clip_base.wav").read_bytes() == b"earlier result"
    assert output.reserve(tmp_path, "clip", ["_base.wav"]) == "clip-3"
    # a partly taken name is given back whole: no leftover reservation files
    (tmp_path / "x_lora.wav").write_bytes(b"")
    assert output.reserve(tmp_path, "x", ["_base.wav", "_lora.wav"]) == "x-2"
    assert not (tmp_path / "x_base.wav").exists()


def test_two_runs_in_the_same_second_keep_both(pipe, tmp_path):
    first = generate.run(cfg(tmp_path, seed=1), pipe)
    second = generate.run(cfg(tmp_path, seed=1), pipe)
    paths = {r["path"] for r in first + second}
    assert len(paths) == 2 and all(Path(p).exists() for p in paths)
    assert len(list((tmp_path / "out").glob("*.json"))) == 2


def test_duplicate_prompts_each_get_their_own_files(ab_pipe, tmp_path):
    """The same prompt twice, and a third that slugifies to the same name: six takes, none lost."""
    config = cfg(tmp_path, prompts=["rain", "rain", "Rain!"], seconds=0.3, compare="both", seed=2)
    records = generate.run(config, ab_pipe)
    assert [(r["prompt"], r["variant"]) for r in records] == [
        ("rain", "base"), ("rain", "lora"), ("rain", "base"), ("rain", "lora"), ("Rain!", "base"), ("Rain!", "lora")]
    paths = [Path(r["path"]) for r in records]
    assert len(set(paths)) == 6 and all(p.is_file() and p.with_suffix(".json").is_file() for p in paths)
    assert len(list((tmp_path / "out").glob("*.wav"))) == 6 and len(list((tmp_path / "out").glob("*.json"))) == 6
    stems = [p.name.rsplit("_", 1)[0] for p in paths]
    assert stems[0] == stems[1] != stems[2] == stems[3] != stems[4] == stems[5] and len(set(stems)) == 3
    assert stems[2].endswith("-2") and stems[4].endswith("-3")
    for base, lora in zip(records[::2], records[1::2]):  # each A/B pair points at its own partner
        assert base["pair"] == Path(lora["path"]).name and lora["pair"] == Path(base["path"]).name
    # the same prompt in one batch draws its own random numbers: every take is kept, none overwritten
    audio = [read(r) for r in records]
    assert not np.array_equal(audio[0], audio[2])


def test_reuse_plays_the_clips_saved_with_the_same_settings(tmp_path, monkeypatch, capsys):
    """``reuse`` (the demo's re-run, REUSE in notebook 03): the clips saved with exactly these settings and
    adapter weights come back without loading a model; anything else generates."""
    adapter = save_peft(peft_model("tiny", seed=1), tmp_path / "adapter")
    settings = cfg(tmp_path, adapter=str(adapter), compare="both", prompts=["rain", "rain", "sun"], seed=5,
                   seconds=0.3, reuse=True)
    first = generate.run(settings)
    generate.release()
    printed = capsys.readouterr()
    assert printed.out.count("real time") == 6 and "real time" not in printed.err, "notes on stdout, not in red"
    loads = []
    monkeypatch.setattr(generate, "pipeline", lambda c: loads.append(c) or pytest.fail("loaded a model"))
    again = generate.run(settings)
    assert [r["path"] for r in again] == [r["path"] for r in first] and [r["prompt"] for r in again] == [
        "rain", "rain", "rain", "rain", "sun", "sun"]
    assert len({r["path"] for r in again}) == 6, "the same prompt twice: two takes, each its own clip"
    assert "Reusing 6 clip(s) saved earlier" in capsys.readouterr().out
    assert len(list((tmp_path / "out").glob("*.wav"))) == 6
    monkeypatch.undo()
    try:
        for changed in (dataclasses.replace(settings, seed=6), dataclasses.replace(settings, reuse=False)):
            assert not {r["path"] for r in generate.run(changed)} & {r["path"] for r in first}
        save_peft(peft_model("tiny", seed=2), adapter)  # retrained into the same folder: its clips are not these
        third = generate.run(settings)
        assert not {r["path"] for r in third} & {r["path"] for r in first}
        assert [r["path"] for r in generate.run(settings)] == [r["path"] for r in third], "reused"
        Path(third[0]["path"]).unlink()  # a clip gone: the request is generated again, whole
        assert not {r["path"] for r in generate.run(settings)} & {r["path"] for r in third}
    finally:
        generate.release()


def test_reuse_never_plays_clips_made_from_another_recording_at_the_same_path(tmp_path):
    """An audio prompt (or melody) replaced under the same file name is another request."""
    prompt_file = tmp_path / "prompt.wav"
    sf.write(prompt_file, 0.3 * np.sin(np.linspace(0, 300, SR // 2)).astype(np.float32), SR)
    settings = cfg(tmp_path, audio_prompt=str(prompt_file), seconds=0.3, reuse=True)
    try:
        first = generate.run(settings)
        assert [r["path"] for r in generate.run(settings)] == [r["path"] for r in first], "same file: reused"
        sf.write(prompt_file, 0.3 * np.sin(np.linspace(0, 900, SR // 2)).astype(np.float32), SR)
        again = generate.run(settings)
        assert not {r["path"] for r in again} & {r["path"] for r in first}, "another recording: generated"
        assert json.loads(Path(again[0]["sidecar"]).read_text())["inputs"]["audio_prompt"] != json.loads(
            Path(first[0]["sidecar"]).read_text())["inputs"]["audio_prompt"]
    finally:
        generate.release()


def test_reserve_refuses_a_suffix_twice(tmp_path):
    with pytest.raises(ValueError, match="same suffix twice"):
        output.reserve(tmp_path, "clip", ["_lora.wav", "_lora.wav"])
    assert not list(tmp_path.iterdir()), "nothing reserved, no 10000 attempts"


def test_cached_pipeline_is_rebuilt_when_the_adapter_is_retrained(tmp_path):
    """The notebook's load cell reuses the loaded model, unless the adapter's weights changed."""
    from peft import get_peft_model_state_dict

    folder = save_peft(peft_model("tiny", seed=1), tmp_path / "adapter")
    settings = cfg(tmp_path, adapter=str(folder))
    try:
        first = generate.pipeline(settings)
        assert generate.pipeline(settings) is first, "same adapter: reused"
        retrained = peft_model("tiny", seed=2)
        save_peft(retrained, folder)  # same folder, new weights
        second = generate.pipeline(settings)
        assert second is not first and second.adapter.fingerprint != first.adapter.fingerprint
        expected = get_peft_model_state_dict(retrained)
        loaded = get_peft_model_state_dict(second._peft)
        assert all(torch.equal(loaded[k], v) for k, v in expected.items()), "the new weights are the ones in use"
        assert generate.pipeline(settings) is second
        # the notebook's variable still holds the first pipeline: its model is gone, and it says so
        assert first.model is None
        with pytest.raises(UserError, match="unloaded to make room"):
            generate.run(settings, first)
        generate.release()  # as notebook 04 does before loading its models
        assert second.model is None
    finally:
        generate.release()


# ---------------------------------------------------------------------------------------------
# Interfaces
# ---------------------------------------------------------------------------------------------


def test_cli_contract(tmp_path):
    out = tmp_path / "gen"
    proc = run_cli("generate", "--model", "tiny", "--prompt", "calm piano", "--prompt", "dark techno beat",
                   "--seconds", "0.4", "--out", str(out), "--seed", "7")
    summary = last_json(proc.stdout)
    assert summary["clips"] == 2 and len(summary["files"]) == 2
    for wav, sidecar in zip(summary["files"], summary["sidecars"]):
        info = sf.info(wav)
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (SR, 1, int(0.4 * SR), "PCM_16")
        assert json.loads(Path(sidecar).read_text())["seed"] == 7
    missing = run_cli("generate", "--model", "tiny", "--out", str(out), check=False)
    assert missing.returncode == 2 and "Missing --prompt" in missing.stderr


def test_cli_with_an_adapter_generates_one_lora_clip_per_prompt(tmp_path):
    adapter = save_peft(peft_model("tiny"), tmp_path / "adapter")
    out = tmp_path / "gen"
    proc = run_cli("generate", "--model", "tiny", "--adapter", str(adapter), "--prompt", "calm piano",
                   "--prompt", "dark techno beat", "--seconds", "0.4", "--out", str(out), "--seed", "3")
    summary = last_json(proc.stdout)
    assert summary["clips"] == 2 and len(summary["files"]) == 2
    for sidecar in summary["sidecars"]:
        info = json.loads(Path(sidecar).read_text())
        assert info["variant"] == "lora" and str(adapter) in json.dumps(info["adapter"]), info


def _project_with_run(tmp_path) -> Path:
    root = tmp_path / "project"
    project = colab.create_project(root, model="tiny")
    make_run(project.paths.run("lora"))
    return root


@pytest.mark.slow
def test_notebook_executes_plain_cells_and_the_form_button(tmp_path):
    root = _project_with_run(tmp_path)
    nb = nbformat.read(str(notebooks.notebook_path("03_generate")), as_version=4)
    # press the form's button the way a user would, then report what it saved
    nb.cells.append(nbformat.v4.new_code_cell(
        "form.seconds.value = 0.6\nform.seed.value = 9\nform.compare.value = 'base'\n"
        "form.button.click()\nprint('FORM', [r['path'] for r in form.records])"))
    # change two fields, run the parameters cell (its SETTINGS line) and cell 4 again: it uses them
    plain = next(c for c in nb.cells if c.source.startswith("#@title 4."))
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    settings = notebooks.derived_assignments(parameters.source)
    nb.cells.append(nbformat.v4.new_code_cell("\n".join(["SEED = 11", "SECONDS = 0.3", *settings, plain.source])))
    copy = tmp_path / "03_generate.ipynb"
    nbformat.write(nb, str(copy))
    params = {"PROJECT_ROOT": str(root), "MODEL": "tiny", "PROMPTS": "calm piano | dark techno",
              "SECONDS": 0.4, "COMPARE": "both", "SEED": 4}
    executed = nbformat.read(str(notebooks.execute(copy, tmp_path / "out.ipynb", params, cwd=tmp_path, timeout=120)), 4)
    text = notebooks.outputs_text(executed)
    generated = root / "generated"
    sidecars = [json.loads(p.read_text()) for p in sorted(generated.glob("*.json"))]
    plain = [s for s in sidecars if s["seed"] == 4]
    assert sorted((s["prompt"], s["variant"]) for s in plain) == [
        ("calm piano", "base"), ("calm piano", "lora"), ("dark techno", "base"), ("dark techno", "lora")]
    assert all(s["adapter_loaded"]["location"].endswith("adapters/best") for s in plain)
    rerun = [s for s in sidecars if s["seed"] == 11]
    assert sorted((s["prompt"], s["variant"], s["samples"]) for s in rerun) == [
        (p, v, int(0.3 * SR)) for p in ("calm piano", "dark techno") for v in ("base", "lora")]
    clicked = [s for s in sidecars if s["seed"] == 9]
    assert [(s["variant"], s["samples"]) for s in clicked] == [("base", int(0.6 * SR)), ("base", int(0.6 * SR))]
    assert "FORM" in text and all(str(generated) in line for line in text.splitlines() if line.startswith("FORM"))
    audio_outputs = [o for c in executed.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert any("<audio" in o["data"]["text/html"] for o in audio_outputs), "inline players are shown"


def test_form_clamps_out_of_range_settings_and_says_so():
    from nbutils.generate import form as generate_form

    form = generate_form.form(model="tiny", prompts=["rain"], seconds=600.0, guidance_scale=0.0, temperature=5.0,
                              top_k=2000, compare="both")
    shown = (form.seconds.value, form.guidance.value, form.temperature.value, form.top_k.value)
    assert shown == (300.0, 1.0, 2.0, 1000)
    assert form.compare.value == "base"
    joined = "\n".join(form.issues)
    for expected in ("Seconds 600 is outside the form's range 0.5 to 300: the form uses 300",
                     "Guidance 0 is outside", "Temperature 5 is outside",
                     "Top-k 2000 is outside the form's range 0 to 1000",
                     "compare=both needs a LoRA adapter"):
        assert expected in joined, joined
    assert "Seconds 600" in form.widget.children[0].value, "the notes are shown above the controls"
    used = form.config()
    sampled = used.sampling
    shown = (used.seconds, sampled.guidance_scale, sampled.temperature, sampled.top_k, used.compare)
    assert shown == (300.0, 1.0, 2.0, 1000, "base")
    fine = generate_form.form(model="tiny", prompts=["rain"], seconds=4.0, top_k=250)
    assert fine.issues == [] and fine.widget.children[0] is fine.prompt


def test_merged_adapter_matches_the_attached_one(strong_adapter, ab_pipe, tmp_path):
    merged = generate.Pipeline("tiny", str(strong_adapter), merge=True)
    inputs = merged.text_inputs(["calm piano"])
    dec = torch.full((4, 3), 64)
    with torch.no_grad():
        with ab_pipe.using("lora"):
            attached = ab_pipe.model(**inputs, decoder_input_ids=dec).logits
        assert torch.allclose(merged.model(**inputs, decoder_input_ids=dec).logits, attached, atol=1e-4)
    assert merged.describe()["merged"] is True
    with pytest.raises(UserError, match="merged into the weights"):
        generate.run(cfg(tmp_path, compare="base"), merged)
    with pytest.raises(UserError, match="merge cannot be combined with compare=both"):
        cfg(tmp_path, compare="both", merge=True)


def test_bfloat16_generation_on_cpu_with_a_float32_codec(strong_adapter, tmp_path):
    """Decoder and text encoder in bf16, EnCodec in float32: codes decode, an audio prompt encodes."""
    half = generate.Pipeline("tiny", str(strong_adapter), device="cpu", precision="bf16")
    codec = half.model.audio_encoder
    assert {p.dtype for p in codec.parameters()} == {torch.float32}
    assert {b.dtype for b in codec.buffers() if b.is_floating_point()} == {torch.float32}
    assert {p.dtype for n, p in half.model.decoder.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    prompt_file = tmp_path / "prompt.wav"
    sf.write(prompt_file, synth.track("chords", 0.4, seed=2), SR)
    config = cfg(tmp_path, precision="bf16", compare="both", seconds=0.5, audio_prompt=str(prompt_file))
    records = generate.run(config, half)
    assert [r["variant"] for r in records] == ["base", "lora"]
    for record in records:
        audio = read(record)
        assert audio.shape == (int(np.ceil(0.4 * SR / 640)) * 640 + int(0.5 * SR), 1)
        assert np.abs(audio).max() > 0
        assert json.loads(Path(record["sidecar"]).read_text())["pipeline"]["dtype"] == "bfloat16"
    assert not np.array_equal(read(records[0]), read(records[1])), "the adapter still acts in bf16"


@pytest.mark.requires_cuda
def test_bfloat16_generation_on_a_gpu_gives_finite_audio_of_the_asked_length(strong_adapter, tmp_path):
    """The GPU path notebook 03 takes on an A100/L4: decoder in bf16 on cuda, long-form windows,
    an audio prompt encoded on the GPU, audio decoded back to float32 on the CPU."""
    pipe = generate.Pipeline("tiny", str(strong_adapter), device="cuda", precision="bf16")
    assert pipe.device.startswith("cuda") and next(pipe.model.decoder.parameters()).is_cuda
    assert {p.dtype for n, p in pipe.model.decoder.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    prompt_file = tmp_path / "prompt.wav"
    sf.write(prompt_file, synth.track("chords", 0.4, seed=2), SR)
    config = cfg(tmp_path, device="cuda", precision="bf16", prompts=["calm piano", "fast drums"], seconds=1.3,
                 window_seconds=1.0, context_seconds=0.4, audio_prompt=str(prompt_file))
    prompt_samples = int(np.ceil(0.4 * SR / 640)) * 640
    for variant in ("base", "lora"):
        clips, _, windows, _ = pipe.generate(list(config.prompts), config, variant=variant, seed=1)
        assert windows == 3  # 65 new frames after the 20-frame prompt, 50-frame windows with 20 of context: 30+30+5
        for clip in clips:  # the float audio, before the WAV writer clips and quantizes it
            assert clip.shape == (prompt_samples + int(1.3 * SR), 1) and clip.dtype == np.float32
            assert np.isfinite(clip).all() and np.abs(clip[prompt_samples:]).max() > 0
    records = generate.run(cfg(tmp_path, device="cuda", precision="bf16", compare="both", seconds=0.5), pipe)
    assert [r["variant"] for r in records] == ["base", "lora"]
    for record in records:
        assert read(record).shape == (int(0.5 * SR), 1)
        sidecar = json.loads(Path(record["sidecar"]).read_text())["pipeline"]
        assert sidecar["dtype"] == "bfloat16" and sidecar["device"].startswith("cuda")
    assert not np.array_equal(read(records[0]), read(records[1])), "the adapter acts on the GPU in bf16"


def test_old_dtype_spellings_still_work_for_one_release(tmp_path):
    """0.1.0 wrote ``dtype=bfloat16``: the setting is ``precision=bf16`` now, and the old one says so."""
    with pytest.warns(FutureWarning, match="'dtype' is now called 'precision'"):
        with pytest.warns(FutureWarning, match="'bfloat16' is now written 'bf16'"):
            old = cfg(tmp_path, dtype="bfloat16")
    assert old.precision == "bf16" and "dtype" not in config.to_dict(old)
    with pytest.warns(FutureWarning, match="empty device is now written 'auto'"):
        assert cfg(tmp_path, device="").device == "auto"
    with pytest.raises(UserError, match="Unknown precision 'fp8'. Use one of: auto, bf16, fp16, fp32"):
        cfg(tmp_path, precision="fp8")


def test_out_of_memory_while_generating_says_what_to_lower(pipe, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(pipe, "generate", full)
    config = cfg(tmp_path, prompts=["a", "b", "c", "d"], seconds=0.2)
    with pytest.raises(UserError, match=r"generating 4 prompt\(s\) at once.*batch_size \(e\.g\. 2\)") as err:
        generate.run(config, pipe)
    assert err.value.__context__ is None


def test_loading_an_adapter_emits_no_is_gradient_checkpointing_warning(tmp_path):
    """peft's question to the model (renamed in transformers 5.2x) is silenced where generation wraps
    the model too, not only in training: notebooks 03 and 04 showed it in red."""
    adapter = save_peft(peft_model("tiny", seed=1), tmp_path / "qv1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = generate.Pipeline("tiny", str(adapter))
        pipe.generate(["calm piano"], cfg(tmp_path, seconds=0.1), variant="lora", seed=1)
    assert [str(w.message) for w in caught if "is_gradient_checkpointing" in str(w.message)] == []
