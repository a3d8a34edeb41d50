import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from nbutils.core import config
from nbutils.core.errors import UserError


@dataclasses.dataclass
class Example:
    segment_seconds: float = config.option(30.0, "Segment length in seconds.")
    limit: int | None = config.option(None, "Process only N tracks.")
    prompts: list[str] = config.option([], "Prompts, repeatable.")
    verbose: bool = config.option(False, "Say more.")
    out: Path = config.option(Path("out"), "Output folder.")


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(UserError, match="'segment_second'.*Did you mean 'segment_seconds'"):
        config.from_dict(Example, {"segment_second": 10})


def test_cli_options_parse_into_dataclass():
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, Example)
    ns = parser.parse_args(["--segment-seconds", "10", "--prompts", "a", "--prompts", "b", "--verbose"])
    cfg = config.build(Example, args=ns)
    assert cfg == Example(segment_seconds=10.0, prompts=["a", "b"], verbose=True)
    assert config.build(Example, args=parser.parse_args([])) == Example()


def test_hash_depends_only_on_chosen_keys():
    a, b = Example(limit=1), Example(limit=2)
    assert config.config_hash(a, ["segment_seconds"]) == config.config_hash(b, ["segment_seconds"])
    assert config.config_hash(a) != config.config_hash(b)
    assert config.change("limit", 1, 2) == "limit: 1 -> 2"


def test_hash_of_a_dict_is_the_one_token_folders_already_record():
    # tokenize stores this hash in every shard, ledger line and code.json: it must not change, or
    # every existing token folder would look like it was made with other settings.
    settings = {"model": "tiny", "segment_seconds": 30.0, "channels": 1, "skip": ["a", "b"], "tokenizer_version": 2}
    assert config.config_hash(settings) == "6691a3fe0ead3ed3"  # the value earlier releases wrote
    assert config.config_hash(settings, ["model"]) == config.config_hash({"model": "tiny"})
    assert config.config_hash(Example()) == config.config_hash(config.to_dict(Example()))


def test_list_defaults_are_not_shared():
    a, b = Example(), Example()
    a.prompts.append("x")
    assert b.prompts == []


def test_help_shows_defaults_as_typed():
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, Example)
    text = parser.format_help()
    assert "(default: 'out')" in text and "PosixPath" not in text and "(default: 30.0)" in text


@dataclasses.dataclass
class Inner:
    guidance_scale: float = config.option(3.0, "Guidance.")
    top_k: int = config.option(250, "Top-k.")

    def __post_init__(self):
        config.require("inner", [(self.top_k >= 0, "top_k must be >= 0")])


@dataclasses.dataclass
class Outer:
    seconds: float = config.option(10.0, "Length.")
    sampling: Inner = config.nested(Inner, "How tokens are drawn.")
    precision: str = config.option("auto", "Precision.", aliases=("dtype",))


def test_nested_settings_keep_their_flat_names_everywhere_a_user_types_them():
    assert config.setting_names(Outer) == ["seconds", "guidance_scale", "top_k", "precision"]
    cfg = config.from_dict(Outer, {"guidance_scale": 2.0, "seconds": 4})  # notebook parameters
    assert cfg == Outer(seconds=4, sampling=Inner(guidance_scale=2.0))
    assert config.from_dict(Outer, {"sampling": {"top_k": 5}, "top_k": 7}).sampling == Inner(top_k=7), "flat wins"
    assert config.from_dict(Outer, {"sampling": Inner(top_k=5)}).sampling == Inner(top_k=5)
    assert config.from_dict(Outer, config.to_dict(cfg)) == cfg, "a saved record builds the same config again"
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, Outer)
    parsed = parser.parse_args(["--guidance-scale", "1.5", "--top-k", "0"])
    assert config.build(Outer, args=parsed).sampling == Inner(1.5, 0)
    assert "--guidance-scale" in parser.format_help() and "--sampling" not in parser.format_help()
    with pytest.raises(UserError, match="'top_kk'.*Did you mean 'top_k'"):
        config.from_dict(Outer, {"top_kk": 1})
    with pytest.raises(UserError, match="Invalid inner setting: top_k must be >= 0"):
        config.from_dict(Outer, {"top_k": -1})
    with pytest.raises(UserError, match="'sampling' must be a Inner or a dict"):
        config.from_dict(Outer, {"sampling": 3})


def test_flat_records_and_hashes_do_not_change_when_a_setting_is_nested():
    cfg = config.from_dict(Outer, {"guidance_scale": 2.0})
    flat = {"seconds": 10.0, "guidance_scale": 2.0, "top_k": 250, "precision": "auto"}
    assert config.flatten(Outer, config.to_dict(cfg)) == flat == config.flatten(Outer, flat)
    blob = json.dumps({k: flat[k] for k in ("guidance_scale", "seconds")}, sort_keys=True, separators=(",", ":"))
    assert config.config_hash(cfg, ["guidance_scale", "seconds"]) == hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_a_renamed_setting_keeps_its_old_name_for_one_release():
    with pytest.warns(FutureWarning, match="'dtype' is now called 'precision'"):
        assert config.from_dict(Outer, {"dtype": "bf16"}).precision == "bf16"
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, Outer)
    assert "--dtype" not in parser.format_help(), "the old name works, the help shows the new one"
    with pytest.warns(FutureWarning, match="'dtype' is now called 'precision'"):
        assert config.build(Outer, args=parser.parse_args(["--dtype", "fp16"])).precision == "fp16"
