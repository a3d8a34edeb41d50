"""The dataset over shards: split by track, crops, CFG dropout, deterministic resumable order."""

import numpy as np
import pytest
import torch

from _train_helpers import tokens as make_tokens
from nbutils.core.errors import UserError
from nbutils.tokenize import shards
from nbutils.train import dataset as data

PAD = 64



@pytest.fixture
def opened(tmp_path):
    return data.open_shards(make_tokens(tmp_path), num_codebooks=4, sample_rate=32000)


def _tracks(opened):
    return sorted({data.track_of(s, sh) for sh in opened for s in sh.segments})


def test_split_keeps_each_track_on_one_side(opened):
    tracks = _tracks(opened)
    split = data.split_tracks(tracks, 0.34, seed=0)
    train, val = set(split["train_tracks"]), set(split["val_tracks"])
    assert not train & val and train | val == set(tracks) and len(val) == 2
    assert split == data.split_tracks(reversed(tracks), 0.34, seed=0), "same split whatever the input order"
    assert data.split_tracks(tracks, 0.0, 0)["val_tracks"] == []
    assert data.split_tracks(["only"], 0.5, 0) == {"train_tracks": ["only"], "val_tracks": []}
    # crops of a validation track never show up in training
    crops = data.CropDataset(opened, train, 20, train=True, seed=0)
    assert {crops.example(i).track for i in range(len(crops))} <= train


def test_crops_have_the_tracks_text_and_are_deterministic(opened):
    tracks = _tracks(opened)
    crops = data.CropDataset(opened, tracks, 20, train=True, cfg_dropout=0.0, seed=3)
    segments_frames = [s.frames for sh in opened for s in sh.segments]
    assert len(crops) == sum(max(1, f // 20) for f in segments_frames)
    example = crops.example(5, epoch=2)
    assert example.codes.shape == (20, 4) and example.length == 20
    assert example.text and example.text in {s.description for sh in opened for s in sh.segments}
    again = crops.example(5, epoch=2)
    assert np.array_equal(example.codes, again.codes) and example.text == again.text
    offsets = {crops.example(5, epoch=e).codes.tobytes() for e in range(8)}
    assert len(offsets) > 1, "a new epoch draws new crop offsets"


def test_short_segments_are_padded_and_masked(tmp_path):
    writer = shards.ShardWriter(tmp_path, "b", {"model": "tiny", "sample_rate": 32000, "num_codebooks": 4})
    writer.add(shards.Segment(path="x.wav", start=0, frames=7, description="calm piano", track="b/x"),
               np.full((7, 4), 5))
    writer.commit()
    opened = data.open_shards(tmp_path, 4, 32000)
    crops = data.CropDataset(opened, ["b/x"], 20, train=True, cfg_dropout=0.0)
    example = crops.example(0)
    assert example.length == 7 and example.codes.shape == (20, 4)
    from nbutils.core.models import tiny_tokenizer

    collate = data.Collator(tiny_tokenizer(), PAD, PAD)
    batch = collate([example])
    assert batch.tokens == 7 * 4
    assert batch.labels.shape == (1, 7 + 3, 4), "a batch of short crops is cut to its longest crop"
    assert batch.decoder_attention_mask[0].tolist() == [1] * 10
    assert int((batch.labels[0] != PAD).sum()) == 7 * 4
    # next to a full crop, the short one is padded and the padding masked
    full = data.Example(np.arange(80).reshape(20, 4) % PAD, 20, "drums", "b/y")
    batch = collate([example, full])
    assert batch.decoder_attention_mask[0].tolist() == [1] * 10 + [0] * 13
    real = batch.labels[0] != -100
    assert int((batch.labels[0][real] != PAD).sum()) == 7 * 4 and not real[10:].any()


def test_cutting_crop_padding_does_not_change_the_loss(tiny):
    from nbutils.train import labels as L

    model, processor = tiny
    collate = data.Collator(processor.tokenizer, PAD, PAD)
    rng = np.random.default_rng(0)
    short = data.Example(np.pad(rng.integers(0, PAD, (9, 4)), ((0, 11), (0, 0))), 9, "calm piano", "b/x")
    full = data.Example(rng.integers(0, PAD, (20, 4)), 20, "calm piano", "b/y")

    def row_loss(examples):
        batch = collate(examples)
        with torch.no_grad():
            logits = model(**batch.model_inputs()).logits
        return L.codebook_ce(logits.reshape(len(examples), 4, *logits.shape[1:])[:1], batch.labels[:1], PAD)

    alone, padded = row_loss([short]), row_loss([short, full])  # cut to 9 frames vs padded to 20
    assert torch.equal(alone[1], padded[1]) and torch.allclose(alone[0], padded[0], rtol=1e-5)


def test_cfg_dropout_rate_and_null_condition(opened, tiny):
    model, processor = tiny
    tracks = _tracks(opened)
    crops = data.CropDataset(opened, tracks, 10, train=True, cfg_dropout=data.CFG_DROPOUT, seed=0)
    drops = [crops.example(i, epoch=e).text == "" for e in range(40) for i in range(len(crops))]
    assert data.CFG_DROPOUT == 0.3  # audiocraft's classifier_free_guidance.training_dropout
    assert abs(np.mean(drops) - 0.3) < 0.04
    assert data.CropDataset(opened, tracks, 10, train=False, cfg_dropout=0.9).example(0).text, "never in validation"

    # A dropped text must be the null condition generate() uses: zero text states, mask 0.
    example = crops.example(0)
    collate = data.Collator(processor.tokenizer, PAD, PAD)
    dropped = collate([data.Example(example.codes, example.length, "", example.track)])
    assert dropped.attention_mask.sum() == 0
    other_text = collate([data.Example(example.codes, example.length, "bright techno", example.track)])
    with torch.no_grad():
        null = model(**dropped.model_inputs()).logits
        zeros = model(encoder_outputs=(torch.zeros(1, 3, 24),), attention_mask=torch.zeros(1, 3, dtype=torch.long),
                      decoder_input_ids=dropped.decoder_input_ids).logits
        masked_other = model(input_ids=other_text.input_ids, attention_mask=torch.zeros_like(other_text.attention_mask),
                             decoder_input_ids=dropped.decoder_input_ids).logits
    assert torch.allclose(null, zeros, atol=1e-5) and torch.allclose(null, masked_other, atol=1e-5)


def test_epoch_order_depends_only_on_seed_and_epoch():
    a = data.epoch_order(50, seed=1, epoch=0)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(a, data.epoch_order(50, seed=1, epoch=0))
    assert not np.array_equal(a, data.epoch_order(50, seed=1, epoch=1))
    assert not np.array_equal(a, data.epoch_order(50, seed=2, epoch=0))


def test_sampler_covers_an_epoch_once_and_splits_ranks(opened):
    crops = data.CropDataset(opened, _tracks(opened), 20, train=True, cfg_dropout=0.0, seed=0)
    n = len(crops)  # 36 crops
    world = [data.StepSampler(crops, batch_size=2, grad_accum=3, world_size=2, rank=r) for r in range(2)]
    assert world[0].effective == 12 and world[0].steps_per_epoch == n // 12
    cursor, seen = data.Cursor(), []
    for _ in range(world[0].steps_per_epoch):
        per_rank = [[i for batch in s.indices(cursor) for i in batch] for s in world]
        assert not set(per_rank[0]) & set(per_rank[1]), "ranks train on different crops"
        seen += per_rank[0] + per_rank[1]
        cursor = world[0].advance(cursor)
    assert cursor == data.Cursor(epoch=1, position=0)
    assert sorted(seen) == list(range(n)), "every crop exactly once per epoch"
    # one process with the same effective batch takes exactly the same items, micro-batch by micro-batch
    single = data.StepSampler(crops, batch_size=4, grad_accum=3).indices(data.Cursor(0, 12))
    two = [world[r].indices(data.Cursor(0, 12)) for r in range(2)]
    assert single == [two[0][m] + two[1][m] for m in range(3)]
    examples = world[1].micro_batches(data.Cursor(0, 12))
    assert [[e.codes.tobytes() for e in mb] for mb in examples] == \
        [[crops.example(i, 0).codes.tobytes() for i in batch] for batch in two[1]]


def test_mismatched_codebooks_are_refused(opened, tmp_path):
    with pytest.raises(UserError, match="8 at 32000 Hz"):
        data.open_shards(tmp_path / "tokens", num_codebooks=8, sample_rate=32000)


def test_fingerprint_changes_with_codes_or_texts_only(tmp_path):
    def shard(name, text, value=5):
        writer = shards.ShardWriter(tmp_path / name, "b", {"model": "tiny", "sample_rate": 32000, "num_codebooks": 4})
        writer.add(shards.Segment(path="x.wav", start=0, frames=7, description=text, track="b/x"),
                   np.full((7, 4), value))
        writer.commit()
        return data.fingerprint(data.open_shards(tmp_path / name, 4, 32000))

    same, again = shard("a", "calm piano"), shard("b", "calm piano")
    assert same == again, "identical shards, identical fingerprint"
    assert shard("c", "loud drums") != same, "a fixed description is different data"
    assert shard("d", "calm piano", value=6) != same, "different codes are different data"


def test_resume_refusal_summarises_a_large_data_change(tmp_path):
    from nbutils.train import checkpoint
    from nbutils.train.stage import TrainConfig

    old = {f"archive_batch_{i:04d}": f"h{i}" for i in range(1, 140)}
    new = {**{k: v for k, v in old.items() if k != "archive_batch_0003"}, "archive_batch_0007": "other",
           **{f"archive_batch_{i:04d}": "new" for i in range(140, 150)}}
    with pytest.raises(UserError) as err:
        checkpoint.check_resume(TrainConfig, {"data": old}, {"data": new}, tmp_path, ["data"])
    message = str(err.value)
    assert "data: 10 added (archive_batch_0140, archive_batch_0141" in message and "(5 more)" in message
    assert "1 changed (archive_batch_0007)" in message and "1 removed (archive_batch_0003)" in message
    assert len(message) < 800, "a summary, not 139 hashes"
