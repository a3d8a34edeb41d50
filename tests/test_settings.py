"""One way to configure a stage: built by ``config.build`` from notebook parameters, the command line
or the project; checked in ``__post_init__`` before any model loads; one rule for what may change
when a stage continues earlier work (``resume=`` on each field, ``config.resume_differences``)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import types

import pytest

from nbutils import cli, evaluate, generate, tokenize, train
from nbutils.core import config, models
from nbutils.core.errors import UserError
from nbutils.core.paths import Paths
from nbutils.train.trainer import DERIVED_MUST_MATCH

STAGES = {"tokenize": tokenize.TokenizeConfig, "train": train.TrainConfig, "generate": generate.GenerateConfig,
          "evaluate": evaluate.EvalConfig}


@pytest.fixture
def project(tmp_path):
    """What ``colab.connect`` returns, as far as the stages read it (no adapter trained yet)."""
    paths = Paths.at(tmp_path / "project")
    return types.SimpleNamespace(paths=paths, model="tiny", run_dir=paths.run("lora"))


# ---------------------------------------------------------------------------------------------
# Building: notebook, command line, project
# ---------------------------------------------------------------------------------------------


def test_notebook_settings_fill_in_the_projects_folders_and_model(project):
    p = project.paths
    tok = tokenize.config_for(project, segment_seconds=10, default_description="")  # "" = the default
    assert (tok.zips, tok.out, tok.scratch, tok.model) == (str(p.zips), str(p.tokens), str(p.scratch), "tiny")
    assert tok.segment_seconds == 10.0 and tok.default_description == ""
    run = train.config_for(project, crop_seconds=5.0, lora_r=8, push_to_hub="")
    assert (run.tokens, run.out, run.model, run.crop_seconds, run.lora_r) == (str(p.tokens), str(project.run_dir),
                                                                             "tiny", 5.0, 8)
    gen = generate.config_for(project, adapter="", prompts="calm piano | dark techno", top_k=5)
    assert (gen.model, gen.out, gen.adapter) == ("tiny", str(p.generated), "")
    assert gen.prompts == ["calm piano", "dark techno"]
    assert gen.sampling.top_k == 5
    ev = evaluate.config_for(project, adapters="runs/lora/adapters/best", clap="", seconds=2)
    assert (ev.model, ev.tokens, ev.zips, ev.adapters) == ("tiny", str(p.tokens), str(p.zips),
                                                           ["runs/lora/adapters/best"])
    assert ev.clap == evaluate.EvalConfig.__dataclass_fields__["clap"].default, "an empty CLAP is the default"
    assert ev.out.startswith(str(p.eval / "eval-"))
    same = evaluate.config_for(project, adapters="runs/lora/adapters/best", seconds=2)
    other = evaluate.config_for(project, adapters="runs/lora/adapters/best", seconds=3)
    assert same.out == ev.out != other.out, "one results folder per settings"
    assert evaluate.config_for(project, adapters="x", out="mine").out == "mine", "a given value beats the project's"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_typo_is_refused_with_a_suggestion_wherever_it_is_typed(stage, project):
    cls = STAGES[stage]
    name = config.setting_names(cls)[2]
    typo = name[:-1] + ("x" if name[-1] != "x" else "y")
    with pytest.raises(UserError, match=rf"Unknown {cls.WHAT} setting '{typo}'\. Did you mean '{name}'"):
        importlib.import_module(f"nbutils.{stage}").config_for(project, **{typo: ""})  # even an empty value
    with pytest.raises(UserError, match=rf"Did you mean '{name}'"):
        config.build(cls, {typo: 1})


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_the_command_line_and_a_notebook_build_the_same_config(stage, tmp_path):
    cls = STAGES[stage]
    values = {"tokenize": {"zips": "z", "out": "o", "model": "tiny", "segment_seconds": 10.0, "batch_size": 2},
              "train": {"tokens": "t", "out": "o", "model": "tiny", "crop_seconds": 5.0, "lora_r": 4},
              "generate": {"model": "tiny", "prompts": ["calm piano"], "top_k": 5, "seed": 3},
              "evaluate": {"model": "tiny", "adapters": ["a"], "tokens": "t", "guidance_scale": 2.0}}[stage]
    argv = []
    for key, value in values.items():
        flag = cls.__dataclass_fields__.get(key)
        option = (flag.metadata.get("flag") if flag else None) or "--" + key.replace("_", "-")
        for item in value if isinstance(value, list) else [value]:
            argv += [option, str(item)]
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, cls)
    assert config.build(cls, args=parser.parse_args(argv)) == config.build(cls, values) == config.from_dict(cls, values)


# ---------------------------------------------------------------------------------------------
# Every refusal before any model loads
# ---------------------------------------------------------------------------------------------


REFUSALS = [
    (["tokenize", "--zips", "z", "--out", "o", "--segment-seconds", "0"], "segment_seconds must be positive"),
    (["tokenize", "--zips", "z", "--out", "o", "--min-seconds", "40"], r"min_seconds \(40.0\) must be between 0 and"),
    (["tokenize", "--zips", "z", "--out", "o", "--workers", "-1"], "workers must be >= 0"),
    (["tokenize", "--zips", "z", "--out", "o", "--max-member-mb", "0"], "max_member_mb must be positive"),
    (["train", "--tokens", "t", "--out", "o", "--lora-r", "0"], "lora_r must be at least 1"),
    (["train", "--tokens", "t", "--out", "o", "--lora-dropout", "1"], r"lora_dropout must be in \[0, 1\)"),
    (["train", "--tokens", "t", "--out", "o", "--lora-alpha", "0"], "lora_alpha must be positive"),
    (["train", "--tokens", "t", "--out", "o", "--crop-seconds", "0"], "crop_seconds must be positive"),
    (["generate", "--prompt", "x"], "model is needed"),
    (["generate", "--model", "tiny", "--prompt", "x", "--top-k", "-1"], "top_k must be >= 0"),
    (["evaluate", "--adapter", "a", "--tokens", "t"], "model is needed"),
    (["evaluate", "--model", "tiny", "--adapter", "a"], "pass tokens .* or prompts"),
    (["evaluate", "--model", "tiny", "--adapter", "a", "--tokens", "t", "--samples-per-prompt", "0"],
     "samples_per_prompt must be at least 1"),
]


@pytest.mark.parametrize(("argv", "message"), REFUSALS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in REFUSALS])
def test_every_refusal_happens_before_any_model_loads(argv, message, monkeypatch, tmp_path):
    def loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the settings were checked")

    for name in ("load_musicgen", "load_codec", "load_config", "load_processor", "build_tiny"):
        monkeypatch.setattr(models, name, loading)
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(argv) == 2
    assert "Traceback" not in err.getvalue()
    assert err.getvalue().strip().startswith("Error: Invalid ") and re.search(message, err.getvalue())
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_notebook_settings_are_checked_before_any_model_loads(project, monkeypatch):
    monkeypatch.setattr(models, "load_musicgen", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(UserError, match="Invalid training setting: lora_r must be at least 1"):
        train.config_for(project, lora_r=0)
    with pytest.raises(UserError, match="Invalid tokenize setting: segment_seconds must be positive"):
        tokenize.config_for(project, segment_seconds=0)


# ---------------------------------------------------------------------------------------------
# What may change when a stage continues
# ---------------------------------------------------------------------------------------------


def test_the_resume_rules_keep_what_each_stage_compared_before():
    """The rules moved onto the fields; what each stage refuses and accepts is what it was in 0.1.0, plus
    melody_dropout (melody checkpoints train since 0.2; a text-only run records None)."""
    assert set(tokenize.stage.CODE_KEYS) == {"model", "segment_seconds", "min_seconds", "min_tail_seconds",
                                             "silence_db", "tokenizer_version"}
    # describe, clap and labels: automatic descriptions (0.2) change the texts only, like the metadata
    assert set(tokenize.stage.TEXT_KEYS) == {"default_description", "metadata", "describe", "clap", "labels"}
    assert set(evaluate.stage.RESULT_KEYS) == {
        "model", "adapters", "checkpoints", "clap", "prompts", "tokens", "zips", "num_prompts", "samples_per_prompt",
        "seconds", "seed", "max_reference", "reference_seconds", "guidance_scale", "temperature", "top_k", "top_p",
        "batch_size"}
    must = set(config.resume_keys(train.TrainConfig, config.MUST_MATCH)) | set(DERIVED_MUST_MATCH)
    assert must == {"model", "data", "crop_seconds", "effective_batch", "lora_targets", "lora_r", "lora_alpha",
                    "lora_dropout", "seed", "cfg_dropout", "melody_dropout", "val_fraction", "val_crops", "lr",
                    "weight_decay", "warmup_steps", "scheduler", "max_grad_norm"}
    may = set(config.resume_keys(train.TrainConfig, config.MAY_CHANGE))
    assert may == {"max_steps", "epochs", "save_every", "save_every_minutes", "keep_checkpoints", "eval_every",
                   "sample_every", "sample_prompts", "sample_seconds", "log_every", "max_skipped_steps",
                   "divergence_factor", "divergence_steps", "wandb", "wandb_project", "wandb_name", "batch_size",
                   "grad_accum", "precision", "grad_checkpointing", "push_to_hub", "hub_private", "tokens",
                   "accept_new_descriptions",  # 0.2: continuing after the descriptions were edited
                   "guidance_scale", "temperature", "top_k", "top_p"}  # 0.2: the samples' SamplingConfig
    assert set(config.setting_names(train.TrainConfig)) - must - may == {"out"}, "every other setting is classified"


def test_resume_differences_read_old_names_and_nested_records():
    old = {**config.to_dict(train.TrainConfig(max_steps=10)), "data": {"a": "1"}}
    old["segment_seconds"] = old.pop("crop_seconds")  # a 0.1.0 checkpoint
    new = {**config.to_dict(train.TrainConfig(max_steps=20, out="elsewhere")), "data": {"a": "1"}}
    resume = config.resume_differences(train.TrainConfig, old, new, must_match=["data"])
    assert resume.refused == [] and resume.accepted == ["max_steps: 10 -> 20"], "out is ignored"
    resume = config.resume_differences(train.TrainConfig, old, {**new, "crop_seconds": 10.0, "data": {"b": "1"}},
                                       must_match=["data"])
    assert resume.refused == ["crop_seconds: 30.0 -> 10.0", "data: 1 added (b); 1 removed (a)"]
    # a nested config under a rule: each of its fields by its flat name; a flat 0.1.0 record reads the same
    nested = config.to_dict(config.build(evaluate.EvalConfig, {"model": "tiny", "tokens": "t", "top_k": 5}))
    flat = {**{k: v for k, v in nested.items() if k != "sampling"}, **nested["sampling"], "top_k": 7}
    assert config.resume_differences(evaluate.EvalConfig, flat, nested).refused == ["top_k: 7 -> 5"]
    # a may-change setting an old record did not hold counts as unchanged
    assert config.resume_differences(train.TrainConfig, {"max_steps": 1}, {"max_steps": 1, "epochs": 3}).accepted == []


def test_the_refusal_says_what_differs_and_how_to_start_fresh(tmp_path):
    error = config.resume_refusal(tmp_path, ["lora_r: 8 -> 16", "lr: 0.1 -> 0.2"], kind="run folder",
                                  holds="a training run", fresh="use another --out", why="They mean other weights.")
    assert str(error) == (f"The run folder {tmp_path} holds a training run made with other settings, so it cannot "
                          "be continued:\n  lora_r: 8 -> 16\n  lr: 0.1 -> 0.2\nThey mean other weights.\nTo "
                          f"continue it, change these back. To start fresh, use another --out, or delete {tmp_path}.")
    with pytest.raises(ValueError, match="resume must be one of"):
        config.option(1, "x", resume="sometimes")
