"""MusicGen's delay pattern for training: labels, decoder inputs, masks and per-codebook loss.

MusicGen predicts all K codebooks of a frame in one decoder step, with codebook ``k`` delayed by
``k`` steps (Copet et al. 2023, "delay" interleaving). transformers' ``MusicgenForConditionalGeneration``
does **not** apply the pattern for you in training: the caller passes labels of shape
``(B, T + K - 1, K)`` in which codebook ``k`` is shifted right by ``k`` and every other slot
holds the pad token (which the model turns into ``-100``). Truncating the codes to ``T`` steps
instead of growing the sequence to ``T + K - 1`` silently drops the last ``k`` frames of
codebook ``k`` -- a bug in several public fine-tuning scripts.

The sequence ``[start] + labels`` is exactly what ``generate`` builds with
``decoder.build_delay_pattern_mask`` (tested in ``tests/test_labels.py``), so training and
generation agree on which token sits where.
"""

from __future__ import annotations

import torch

IGNORE = -100  # CrossEntropyLoss's ignore_index: crop padding


def delays(num_codebooks: int, audio_channels: int = 1) -> list[int]:
    """Delay of each codebook: ``k`` for mono; ``k // 2`` for stereo, whose left / right
    codebooks are interleaved and share a delay (as in ``build_delay_pattern_mask``)."""
    return [k // audio_channels for k in range(num_codebooks)]


def delay_labels(codes: torch.Tensor, lengths: torch.Tensor | None, pad_id: int,
                 audio_channels: int = 1) -> torch.Tensor:
    """Labels with the delay pattern applied.

    Args:
        codes: ``(B, T, K)`` code ids (frame-major, as stored in the shards).
        lengths: ``(B,)`` number of real frames per row (the rest is crop padding), or None.
        pad_id: The pad token (the codebook size for MusicGen).
        audio_channels: 2 for stereo checkpoints (codebooks interleaved left / right).

    Returns:
        ``(B, T + D, K)`` long tensor with ``D`` the largest delay (``K - 1`` for mono):
        ``labels[b, t + d_k, k] = codes[b, t, k]`` for real frames, ``pad_id`` in the delay
        slots and ``-100`` after a short crop's end (crop padding).
    """
    batch, frames, books = codes.shape
    shifts = delays(books, audio_channels)
    steps = frames + shifts[-1]
    labels = torch.full((batch, steps, books), pad_id, dtype=torch.long, device=codes.device)
    real = codes.long()
    if lengths is not None:
        lengths = lengths.to(codes.device)
        # frames past a short crop's end become delay slots (pad) first ...
        padded = torch.arange(frames, device=codes.device)[None, :] >= lengths[:, None]
        real = real.masked_fill(padded[:, :, None], pad_id)
    for k, shift in enumerate(shifts):
        labels[:, shift : shift + frames, k] = real[:, :, k]
    if lengths is not None:
        # ... so each row reads as the labels of its unpadded crop followed by -100 padding
        tail = torch.arange(steps, device=codes.device)[None, :] >= (lengths[:, None] + shifts[-1])
        labels = labels.masked_fill(tail[:, :, None], IGNORE)
    return labels


def decoder_inputs(labels: torch.Tensor, pad_id: int, start_id: int) -> torch.Tensor:
    """Teacher-forcing inputs: ``labels`` shifted right by one step, start token first.

    Same as transformers' ``shift_tokens_right`` (``-100`` becomes ``pad_id``).

    Returns:
        ``(B, K, T + K - 1)`` long tensor, the layout the MusicGen decoder reshapes to.
    """
    shifted = torch.empty_like(labels.transpose(1, 2))
    shifted[..., 0] = start_id
    shifted[..., 1:] = labels.transpose(1, 2)[..., :-1]
    return shifted.masked_fill(shifted == IGNORE, pad_id)


def decoder_attention_mask(lengths: torch.Tensor, steps: int, max_delay: int) -> torch.Tensor:
    """``(B, steps)`` mask: 1 up to each row's last real step (length + max delay), 0 over padding.

    With right padding and causal attention the padded steps cannot influence real ones; the
    mask makes that explicit and keeps padded keys out of any future non-causal use.
    """
    positions = torch.arange(steps, device=lengths.device)
    return (positions[None, :] < (lengths[:, None] + max_delay)).long()


def codebook_ce(logits: torch.Tensor, labels: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and token count per codebook (pad and -100 ignored).

    Args:
        logits: ``(B * K, L, V)`` as returned by MusicGen, or ``(B, K, L, V)``.
        labels: ``(B, L, K)`` from ``delay_labels``.
        pad_id: The pad token id.

    Returns:
        ``(sums, counts)``, each of shape ``(K,)`` (float32): ``sums[k] / counts[k]`` is the
        mean loss of codebook ``k``, which is what the model's own loss averages over ``k``.
    """
    sums, counts = codebook_ce_rows(logits, labels, pad_id)
    return sums.sum(dim=0), counts.sum(dim=0)


def codebook_ce_rows(logits: torch.Tensor, labels: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``codebook_ce`` per batch row: summed cross-entropy and token count, each ``(B, K)``."""
    batch, length, books = labels.shape
    logits = logits.reshape(batch, books, -1, logits.shape[-1])[:, :, -length:]
    targets = labels.masked_fill(labels == pad_id, IGNORE).transpose(1, 2)  # (B, K, L)
    losses = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(batch, books, length)
    valid = targets != IGNORE
    return (losses * valid).sum(dim=2), valid.sum(dim=2).float()


def mean_loss(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-codebook means and their average (MusicGen's training loss).

    A codebook with no valid token (impossible for crops of at least one frame) counts as 0.
    """
    per_codebook = sums / counts.clamp(min=1)
    return per_codebook.mean(), per_codebook
