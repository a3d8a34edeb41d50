"""Prompts reach MusicGen's text encoder truncated to the tokenizer's limit, on every path.

A 1 MB description used to reach the text encoder whole: a tokenizer whose ``model_max_length``
is 512 returned 80,001 tokens, and validation on ``tiny`` tried to allocate 51 GB.
"""

import numpy as np
import pytest

from nbutils.core import models, prompts
from nbutils.train import dataset as data

HUGE = "slow warm piano with soft strings " * 30_000  # 1 MB


@pytest.fixture(scope="module")
def tiny():
    return models.load_musicgen("tiny")


def test_encode_truncates_to_the_tokenizer_limit_or_t5s_512():
    tokenizer = models.tiny_tokenizer()  # "no limit" (transformers' 1e30 sentinel)
    assert prompts.limit(tokenizer) == prompts.MAX_PROMPT_TOKENS == 512
    assert prompts.encode(tokenizer, [HUGE])["input_ids"].shape == (1, 512)
    tokenizer.model_max_length = 77
    assert prompts.encode(tokenizer, [HUGE, "calm"])["input_ids"].shape == (2, 77)
    short = prompts.encode(tokenizer, ["calm piano"])
    assert short["input_ids"].tolist() == tokenizer(["calm piano"], return_tensors="pt")["input_ids"].tolist()


def test_training_and_validation_batches_truncate_descriptions(tiny):
    _, processor = tiny
    collate = data.Collator(processor.tokenizer, 2048, 2048)
    codes = np.zeros((20, 4), np.int64)
    batch = collate([data.Example(codes, 20, HUGE, "b/x"), data.Example(codes, 20, "calm", "b/y")])
    assert batch.input_ids.shape == (2, 512)


def test_generate_and_evaluate_prompts_are_truncated(tiny):
    from nbutils.generate import stage as generate

    pipe = generate.Pipeline("tiny")
    inputs = pipe.text_inputs([HUGE])
    assert inputs["input_ids"].shape == (1, 512)
    clips = generate.sample_clips(pipe, generate.GenerateConfig(model="tiny", prompts=[HUGE], seconds=0.1))
    assert len(clips) == 1


def test_training_samples_truncate_their_prompts(tiny, tmp_path):
    from nbutils.train import samples

    model, processor = tiny
    folder = samples.write(model, processor, models.spec_of(model), tmp_path / "s", kind="lora", step=0,
                           prompts=[HUGE], seeds=[1], seconds=0.1)
    assert (folder / "lora-0.wav").is_file()
