import argparse
import dataclasses
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
    cfg = config.from_args(Example, ns)
    assert cfg == Example(segment_seconds=10.0, prompts=["a", "b"], verbose=True)
    assert config.from_args(Example, parser.parse_args([])) == Example()


def test_hash_depends_only_on_chosen_keys():
    a, b = Example(limit=1), Example(limit=2)
    assert config.config_hash(a, ["segment_seconds"]) == config.config_hash(b, ["segment_seconds"])
    assert config.config_hash(a) != config.config_hash(b)
    assert config.differences(config.to_dict(a), config.to_dict(b), ["limit"]) == ["limit: 1 -> 2"]


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
