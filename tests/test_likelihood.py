"""Held-out likelihood: the numbers, the end-of-training measurement, and that it shows learning."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import _train_helpers as H
from nbutils.core import synth
from nbutils.generate.musicgen import Pipeline
from nbutils.tokenize import shards
from nbutils.train import likelihood, stage


def test_summarize_units_and_per_segment_parts():
    # two segments, 2 codebooks: nats summed per segment and codebook, tokens counted the same way
    rows = np.array([[10.0, 20.0], [30.0, 40.0]])
    counts = np.array([[50.0, 50.0], [100.0, 100.0]])
    found = likelihood.summarize(rows, counts, frame_rate=50)
    assert found.nll_per_codebook == pytest.approx([40 / 150, 60 / 150], abs=1e-5)
    # 100 nats over 3 s of audio
    assert found.bits_per_second == pytest.approx(100 / math.log(2) / 3, abs=1e-3)
    assert found.segment_seconds == [1.0, 2.0] and sum(found.segment_bits) == pytest.approx(100 / math.log(2), abs=1e-3)


def test_measure_equals_the_models_own_loss_on_one_segment(tmp_path):
    """One segment, one forward pass: the mean of the per-codebook values is MusicGen's own loss."""
    import torch

    from nbutils.train.dataset import Collator, Example

    tokens = H.tokens(tmp_path)
    opened = shards.open_all(tokens)
    pipe = Pipeline("tiny")
    start = int(pipe.model.config.decoder.decoder_start_token_id)
    found = likelihood.measure(pipe.model, pipe.processor.tokenizer, [(opened[0], 0)], spec=pipe.spec,
                               start_id=start, device="cpu")
    segment = opened[0].segments[0]
    codes = np.asarray(opened[0].segment_codes(0), dtype=np.int64)
    batch = Collator(pipe.processor.tokenizer, pipe.spec.pad_token_id, start)(
        [Example(codes=codes, length=len(codes), text=segment.description, track=segment.track)])
    with torch.no_grad():
        out = pipe.model(**batch.model_inputs(), labels=batch.labels)
    assert np.mean(found.nll_per_codebook) == pytest.approx(float(out.loss), rel=1e-4)
    assert found.segment_seconds == [segment.frames / 50]


def test_batched_is_the_same_as_one_at_a_time(tmp_path):
    opened = shards.open_all(H.tokens(tmp_path))
    chosen = [(s, i) for s in opened for i in range(len(s.segments))][:5]
    pipe = Pipeline("tiny")
    kw = dict(spec=pipe.spec, start_id=int(pipe.model.config.decoder.decoder_start_token_id), device="cpu")
    together = likelihood.measure(pipe.model, pipe.processor.tokenizer, chosen, batch_size=4, **kw)
    alone = [likelihood.measure(pipe.model, pipe.processor.tokenizer, [c], batch_size=1, **kw) for c in chosen]
    assert together.segment_bits == pytest.approx([a.segment_bits[0] for a in alone], rel=1e-4)


def test_training_reports_base_and_adapter_on_its_validation_tracks(tmp_path):
    out = tmp_path / "run"
    summary = stage.run(H.small_config(H.tokens(tmp_path), out, wandb="offline"))
    facts = json.loads((out / likelihood.RESULT_FILE).read_text())
    assert facts["condition"] == "text"
    val = json.loads((out / "split.json").read_text())["val_tracks"]
    assert facts["segments"] == sum(1 for s in shards.open_all(out.parent / "tokens") for seg in s.segments
                                    if seg.track in val)
    assert summary["heldout_bits_per_second"] == facts["lora"]["bits_per_second"] > 0
    assert summary["heldout_bits_per_second_base"] == facts["base"]["bits_per_second"]
    assert summary["heldout_bits_per_second"] != summary["heldout_bits_per_second_base"], "the adapter is on"
    assert len(summary["heldout_nll_per_codebook"]) == 4
    (run_dir,) = H.offline_runs(out)
    H.finished_records(run_dir)  # wandb's writer may still be closing the file
    logged = [r for r in H.wandb_history(run_dir) if "heldout/bits_per_second" in r]
    assert logged and logged[-1]["heldout/base_bits_per_second"] == facts["base"]["bits_per_second"]
    again = stage.run(H.small_config(out.parent / "tokens", out))  # already complete: same figures
    assert again["heldout_bits_per_second"] == summary["heldout_bits_per_second"]


def _corpus(folder, style: str, tracks: int, seed: int, transform=None) -> None:
    """Token shards of ``tracks`` synthetic tracks of one style (3 s, in 1.5 s segments)."""
    spec = H._codec()[1]
    writer = shards.ShardWriter(folder, style, {"model": "tiny", "sample_rate": spec.sample_rate,
                                                "num_codebooks": spec.num_codebooks})
    for t in range(tracks):
        codes = H.encoded(style, seed + t, 3.0)
        codes = transform(codes) if transform else codes
        for start in range(0, len(codes), 75):
            writer.add(shards.Segment(path=f"{style}_{t}.wav", start=start / 50, frames=len(codes[start:start + 75]),
                                      description=synth.describe(style), track=f"{style}/{style}_{t}.wav"),
                       codes[start : start + 75])
    writer.commit()


@pytest.mark.slow
def test_an_adapter_lowers_it_on_its_own_corpus_not_on_an_unrelated_one(tmp_path):
    """Trained on chords, the adapter predicts held-out chord tracks better than the base model does.

    The unrelated corpus is synthetic token sequences as structured as those tracks but not of
    their style: new chord tracks with every codebook's ids permuted. (Other synthetic audio is no
    control on the tiny model: its random EnCodec gives every sound similar codes.)"""
    _corpus(tmp_path / "own", "chords", 8, 0)
    permutation = np.stack([np.random.default_rng(7 + k).permutation(64) for k in range(4)])
    _corpus(tmp_path / "unrelated", "chords", 4, 500,
            lambda c: np.stack([permutation[k][c[:, k]] for k in range(4)], axis=1))
    cfg = H.small_config(tmp_path / "own", tmp_path / "run", max_steps=40, save_every=1000, eval_every=1000,
                         val_fraction=0.25)
    summary = stage.run(cfg)
    own_gain = summary["heldout_bits_per_second_base"] - summary["heldout_bits_per_second"]
    assert own_gain > 0.03 * summary["heldout_bits_per_second_base"], summary

    pipe = Pipeline("tiny", str(tmp_path / "run" / "adapters" / "final"))
    unrelated = [(s, i) for s in shards.open_all(tmp_path / "unrelated") for i in range(len(s.segments))]
    kw = dict(spec=pipe.spec, start_id=int(pipe.model.config.decoder.decoder_start_token_id), device="cpu")
    with pipe.using("base"):
        base = likelihood.measure(pipe.model, pipe.processor.tokenizer, unrelated, **kw)
    lora = likelihood.measure(pipe.model, pipe.processor.tokenizer, unrelated, **kw)
    change = base.bits_per_second - lora.bits_per_second
    assert change < 0.1 * own_gain, (base.bits_per_second, lora.bits_per_second, own_gain)


def test_evaluate_refuses_shards_of_another_codebook_count_with_a_message(tmp_path):
    from nbutils.core.errors import UserError
    from nbutils.evaluate import heldout

    opened = shards.open_all(H.tokens(tmp_path))  # mono: 4 codebooks
    store = heldout.Store(tmp_path, [(opened[0], 0)], batch_size=2)
    with pytest.raises(UserError, match=r"shards hold 4 codebooks per frame, the model tiny-stereo 8"):
        store.measure(Pipeline("tiny-stereo"), "base", "base")


def test_an_edited_description_is_measured_again_in_evaluate(tmp_path):
    """The text is the likelihood's condition: evaluate's cache key changes with a segment's description."""
    from nbutils.evaluate import heldout

    opened = shards.open_all(H.tokens(tmp_path))
    chosen = [(opened[0], 0), (opened[0], 1)]
    before = heldout._key("base", "", chosen)
    assert heldout._key("base", "", chosen) == before
    opened[0].segments[1].description = "edited in descriptions.jsonl"
    assert heldout._key("base", "", chosen) != before



# ---------------------------------------------------------------------------------------------
# Melody models: each segment scored with its own chroma, as training conditions it
# ---------------------------------------------------------------------------------------------


def test_a_melody_segment_is_scored_with_its_own_chroma_as_the_models_loss_with_it(tmp_path):
    import torch

    from _melody_helpers import melody_tokens
    from nbutils.core import models
    from nbutils.train import melody
    from nbutils.train.dataset import Collator, Example

    _, tokens = melody_tokens(tmp_path)
    (shard,) = shards.open_all(tokens)
    pipe = Pipeline("tiny-melody")
    start = int(pipe.model.config.decoder.decoder_start_token_id)
    inputs = melody.scoring_inputs(pipe.model.config, pipe.spec, models.chroma_settings("tiny-melody"), [shard])
    assert inputs is not None
    kw = dict(spec=pipe.spec, start_id=start, device="cpu")
    found = likelihood.measure(pipe.model, pipe.processor.tokenizer, [(shard, 1)], chroma=inputs, **kw)
    codes = np.asarray(shard.segment_codes(1), dtype=np.int64)
    own = shard.segment_chroma(1)
    crops, collate = inputs
    batch = Collator(pipe.processor.tokenizer, pipe.spec.pad_token_id, start, **collate)(
        [Example(codes=codes, length=len(codes), text=shard.segments[1].description, track="t",
                 chroma=own[: crops.rows(shard, 1, 0, len(codes)).size])])
    with torch.no_grad():
        out = pipe.model(**batch.model_inputs(), labels=batch.labels)
    assert np.mean(found.nll_per_codebook) == pytest.approx(float(out.loss), rel=1e-4)
    text_only = likelihood.measure(pipe.model, pipe.processor.tokenizer, [(shard, 1)], **kw)
    assert text_only.bits_per_second != pytest.approx(found.bits_per_second, rel=1e-4), "the chroma is an input"


def test_evaluate_says_how_a_melody_model_was_conditioned_and_keeps_the_two_apart(tmp_path):
    from _melody_helpers import melody_tokens, strip_chroma
    from nbutils.evaluate import heldout

    _, tokens = melody_tokens(tmp_path / "a")
    opened = shards.open_all(tokens)
    chosen = [(opened[0], 0), (opened[0], 1)]
    pipe = Pipeline("tiny-melody")
    store = heldout.Store(tmp_path / "a", chosen, batch_size=2)
    with_chroma = store.measure(pipe, "base", "base")
    assert store.condition == "text and chroma" and heldout.facts(store, "x")["condition"] == "text and chroma"
    (line,) = [json.loads(x) for x in (tmp_path / "a" / heldout.LEDGER).read_text().splitlines()]
    assert line["key"].endswith("|chroma")

    _, bare = melody_tokens(tmp_path / "b")
    strip_chroma(bare)
    opened = shards.open_all(bare)
    store = heldout.Store(tmp_path / "b", [(opened[0], 0), (opened[0], 1)], batch_size=2)
    without = store.measure(pipe, "base", "base")
    assert store.condition == "text only: some of the shards hold no chroma for this model"
    assert without["bits_per_second"] != pytest.approx(with_chroma["bits_per_second"], rel=1e-4)

    store = heldout.Store(tmp_path / "c", [(shards.open_all(H.tokens(tmp_path / "c"))[0], 0)], batch_size=2)
    store.measure(Pipeline("tiny"), "base", "base")
    assert store.condition == "text"


def test_training_and_evaluate_give_a_melody_base_the_same_held_out_figure(tmp_path):
    from _melody_helpers import melody_config, melody_tokens
    from nbutils.evaluate import heldout

    _, tokens = melody_tokens(tmp_path)
    out = tmp_path / "run"
    stage.run(melody_config(tokens, out, max_steps=2, save_every=2))
    trained = json.loads((out / likelihood.RESULT_FILE).read_text())
    assert trained["condition"] == "text and chroma"
    val = json.loads((out / "split.json").read_text())["val_tracks"]
    chosen = likelihood.held_out(shards.open_all(tokens), val)
    assert len(chosen) == trained["segments"] > 0
    store = heldout.Store(tmp_path / "eval", chosen, batch_size=2)
    pipe = Pipeline("tiny-melody")
    base = store.measure(pipe, "base", "base")
    assert base["bits_per_second"] == pytest.approx(trained["base"]["bits_per_second"], rel=1e-3)
    text_only = likelihood.measure(pipe.model, pipe.processor.tokenizer, chosen, spec=pipe.spec, device="cpu",
                                   start_id=int(pipe.model.config.decoder.decoder_start_token_id))
    assert text_only.bits_per_second != pytest.approx(base["bits_per_second"], rel=1e-3), "both scored with chroma"
