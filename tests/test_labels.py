"""Delay-pattern labels: equal to transformers' own pattern, nothing dropped, padding ignored."""

import pytest
import torch
from transformers.models.musicgen.modeling_musicgen import shift_tokens_right

from nbutils.core import models
from nbutils.train import labels as L

PAD = 64



@pytest.fixture(scope="module")
def stereo():
    return models.load_musicgen("tiny-stereo")


@pytest.mark.parametrize("which", ["mono", "stereo"])
def test_labels_equal_transformers_delay_pattern(which, tiny, stereo):
    model, _ = tiny if which == "mono" else stereo
    books, channels = model.decoder.num_codebooks, model.config.decoder.audio_channels
    frames, batch = 9, 2
    codes = torch.randint(0, PAD, (batch, frames, books), generator=torch.Generator().manual_seed(0))
    labels = L.delay_labels(codes, None, PAD, channels)
    # generate() builds [start] + delayed codes with build_delay_pattern_mask; ours must be identical.
    start = torch.full((batch, books, 1), PAD)
    prompt = torch.cat([start, codes.transpose(1, 2)], dim=2).reshape(batch * books, -1)
    _, pattern = model.decoder.build_delay_pattern_mask(prompt, pad_token_id=PAD, max_length=labels.shape[1] + 1)
    pattern = pattern.reshape(batch, books, -1)
    assert torch.equal(pattern[:, :, 1:], labels.transpose(1, 2))
    decoder_inputs = L.decoder_inputs(labels, PAD, PAD)
    assert torch.equal(decoder_inputs, pattern[:, :, :-1])
    assert torch.equal(decoder_inputs, shift_tokens_right(labels, PAD, PAD))


def test_no_frame_is_dropped():
    frames, books = 7, 4
    codes = torch.arange(frames * books).reshape(1, frames, books) % PAD
    labels = L.delay_labels(codes, None, PAD)
    assert labels.shape == (1, frames + books - 1, books)
    for k in range(books):
        column = labels[0, :, k]
        assert torch.equal(column[k : k + frames], codes[0, :, k]), f"codebook {k} lost frames"
        assert (column[:k] == PAD).all() and (column[k + frames :] == PAD).all()
    assert int((labels != PAD).sum()) == frames * books


def test_short_crop_is_its_own_labels_then_ignored():
    codes = torch.randint(0, PAD, (2, 10, 4), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([10, 6])
    labels = L.delay_labels(codes, lengths, PAD)
    alone = L.delay_labels(codes[1:, :6], None, PAD)[0]
    assert torch.equal(labels[1, : 6 + 3], alone)
    assert (labels[1, 6 + 3 :] == L.IGNORE).all()
    assert torch.equal(labels[0], L.delay_labels(codes[:1], None, PAD)[0])
    mask = L.decoder_attention_mask(lengths, labels.shape[1], 3)
    assert mask[0].all() and mask[1, :9].all() and not mask[1, 9:].any()


def test_padding_changes_neither_loss_nor_its_token_count(tiny):
    model, processor = tiny
    text = processor(text=["calm piano chords"], return_tensors="pt")
    codes = torch.randint(0, PAD, (1, 12, 4), generator=torch.Generator().manual_seed(2))

    def loss_of(codes, lengths):
        labels = L.delay_labels(codes, lengths, PAD)
        mask = None if lengths is None else L.decoder_attention_mask(lengths, labels.shape[1], 3)
        with torch.no_grad():
            logits = model(**text, decoder_input_ids=L.decoder_inputs(labels, PAD, PAD),
                           decoder_attention_mask=mask).logits
        return L.codebook_ce(logits, labels, PAD)

    sums_short, counts_short = loss_of(codes[:, :8], None)
    padded = torch.cat([codes[:, :8], torch.zeros(1, 4, 4, dtype=codes.dtype)], dim=1)
    sums_padded, counts_padded = loss_of(padded, torch.tensor([8]))
    assert torch.equal(counts_short, counts_padded) and counts_short.tolist() == [8.0] * 4
    assert torch.allclose(sums_short, sums_padded, atol=1e-5)


def test_per_codebook_loss_averages_to_the_models_loss(tiny):
    model, processor = tiny
    inputs = processor(text=["dark techno", "bright arpeggio"], padding=True, return_tensors="pt")
    labels = L.delay_labels(torch.randint(0, PAD, (2, 15, 4)), None, PAD)
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    mean, per_codebook = L.mean_loss(*L.codebook_ce(out.logits, labels, PAD))
    assert per_codebook.shape == (4,)
    assert torch.allclose(mean, out.loss, atol=1e-6)
