"""Text prompts for MusicGen's T5 text encoder, never longer than it can take.

Descriptions come from users' metadata and prompts from files: a 1 MB description tokenized
without a limit gave 80,001 tokens, and attention over them tried to allocate tens of GB.
MusicGen's checkpoints ship t5-base's tokenizer (``model_max_length`` 512); a tokenizer without
a real limit (the tiny model's, whose ``model_max_length`` is transformers' "no limit"
sentinel) gets the same 512. Every place that gives text to the model (training batches,
validation, samples, generate, evaluate) goes through ``encode``.
"""

from __future__ import annotations

from typing import Any, Sequence

MAX_PROMPT_TOKENS = 512  # t5-base's model_max_length: the text MusicGen was trained to read
_NO_LIMIT = 10**9  # transformers stores "no limit" as int(1e30)


def limit(tokenizer: Any) -> int:
    """Tokens a prompt may have for this tokenizer (its own limit, else ``MAX_PROMPT_TOKENS``)."""
    own = getattr(tokenizer, "model_max_length", None)
    return int(own) if isinstance(own, int) and 0 < own < _NO_LIMIT else MAX_PROMPT_TOKENS


def encode(processor: Any, texts: Sequence[str]) -> Any:
    """Tokenize ``texts`` (padded to the longest, truncated to ``limit``) as PyTorch tensors.

    Args:
        processor: A MusicGen processor, or its tokenizer.
        texts: The prompts.

    Returns:
        The tokenizer's ``BatchEncoding`` (``input_ids``, ``attention_mask``).
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    return tokenizer(list(texts), padding=True, truncation=True, max_length=limit(tokenizer), return_tensors="pt")
