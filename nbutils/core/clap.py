"""CLAP through transformers' ``ClapModel``: text and audio embeddings in one space.

``C`` is a Hub id (default ``laion/larger_clap_music``, LAION's CLAP trained on music), a local
``save_pretrained`` folder, or ``tiny``: a random ``ClapModel`` built from a small ``ClapConfig``
with an in-memory tokenizer, offline and identical on every call. (The README's "Why these
libraries" says why not the laion-clap wheel: it forces numpy<2, imports torchvision and
downloads roberta.)

CLAP hears 48 kHz audio in windows of 10 s. Audio is resampled with soxr (high quality), made
mono, and cut into consecutive windows of at most 10 s; a clip's embedding is the normalised
mean of its windows' embeddings. Fixed windows instead of the feature extractor's random crops
keep the scores deterministic.

Evaluation scores clips with it (``nbutils.evaluate``); tokenization tags tracks zero-shot with it
(``nbutils.tokenize.tags``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from nbutils.core import audio as core_audio
from nbutils.core.errors import UserError

DEFAULT_CLAP = "laion/larger_clap_music"
TINY = "tiny"
TINY_SEED = 4321
CLAP_RATE = 48_000  # what every LAION CLAP checkpoint's feature extractor expects
MIN_WINDOW_SECONDS = 1.0  # a trailing window shorter than this is dropped (unless it is all there is)


@dataclasses.dataclass
class Clap:
    """A loaded CLAP: model (eval mode), processor, device and name."""

    model: Any
    processor: Any
    device: str
    name: str

    @property
    def sample_rate(self) -> int:
        return int(self.processor.feature_extractor.sampling_rate)

    @property
    def window_samples(self) -> int:
        return int(self.processor.feature_extractor.nb_max_samples)


# ---------------------------------------------------------------------------------------------
# The tiny CLAP
# ---------------------------------------------------------------------------------------------


def tiny_tokenizer():
    """A word-level RoBERTa-style tokenizer (``<s> ... </s>``) over common music words, in memory."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from nbutils.core.models import TINY_WORDS

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for word in sorted(set(TINY_WORDS)):
        vocab[word] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", model_max_length=77)


def tiny_config():
    """A ClapConfig with LAION's audio front end (64 mel bins, 256 x 256 Swin input) and tiny widths."""
    from transformers import ClapAudioConfig, ClapConfig, ClapTextConfig

    text = ClapTextConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=80, projection_dim=16)
    audio = ClapAudioConfig(spec_size=256, window_size=8, num_mel_bins=64, patch_size=4, patch_stride=(4, 4),
                            depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], patch_embeds_hidden_size=8,
                            hidden_size=64, projection_dim=16, enable_fusion=False)
    return ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)


def build_tiny() -> tuple[Any, Any]:
    """The tiny CLAP model and processor (random weights, same on every call and machine)."""
    import torch
    from transformers import ClapFeatureExtractor, ClapModel, ClapProcessor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = ClapModel(tiny_config())
    model.config._name_or_path = TINY
    # rand_trunc like larger_clap_music; never triggered, since we feed windows of <= 10 s
    features = ClapFeatureExtractor(truncation="rand_trunc")
    return model.eval(), ClapProcessor(feature_extractor=features, tokenizer=tiny_tokenizer())


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load(name: str = DEFAULT_CLAP, *, device: str = "cpu") -> Clap:
    """Load CLAP ``name`` (Hub id, local folder, or ``tiny``)."""
    from nbutils.core.models import quiet_transformers

    quiet_transformers()
    if name == TINY:
        model, processor = build_tiny()
    else:
        from transformers import ClapModel, ClapProcessor

        try:
            processor = ClapProcessor.from_pretrained(name)
            model = ClapModel.from_pretrained(name).eval()
        except Exception as err:  # noqa: BLE001 - download, auth and format errors become one message
            raise UserError(
                f"Could not load CLAP '{name}': {type(err).__name__}: {err}. Use a CLAP Hub id such as "
                f"{DEFAULT_CLAP} (needs internet), a folder saved with save_pretrained, or 'tiny' for tests."
            ) from err
    return Clap(model=model.to(device), processor=processor, device=device, name=name)


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


def to_clap_rate(audio: np.ndarray, sample_rate: int, clap_rate: int = CLAP_RATE) -> np.ndarray:
    """Mono float32 at CLAP's rate: channels averaged (``core.audio``'s mono rule), then resampled with soxr."""
    audio = np.asarray(audio, dtype=np.float32)
    mono = core_audio.convert_channels(audio, 1)[:, 0] if audio.ndim == 2 else audio
    return core_audio.resample(mono, sample_rate, clap_rate)


def windows(audio: np.ndarray, size: int, min_size: int) -> list[np.ndarray]:
    """Consecutive windows of ``size`` samples; a short tail is dropped unless it is the only one."""
    parts = [audio[i : i + size] for i in range(0, max(len(audio), 1), size)]
    kept = [p for p in parts if len(p) >= min_size]
    return kept or parts[:1]


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def text_embeddings(clap: Clap, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Unit-length text embeddings ``(len(texts), D)``."""
    import torch

    out = []
    for i in range(0, len(texts), batch_size):
        inputs = clap.processor.tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True,
                                          return_tensors="pt").to(clap.device)
        with torch.inference_mode():
            out.append(clap.model.get_text_features(**inputs).pooler_output.float().cpu().numpy())
    return _normalize(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)


def embed_windows(clap: Clap, pieces: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
    """Embeddings ``(len(pieces), D)`` of windows already mono at CLAP's rate (at most 10 s each), not normalised."""
    import torch

    embedded = []
    for i in range(0, len(pieces), batch_size):
        inputs = clap.processor.feature_extractor(list(pieces[i : i + batch_size]), sampling_rate=clap.sample_rate,
                                                  return_tensors="pt")
        inputs = {k: v.to(clap.device) for k, v in inputs.items()}
        with torch.inference_mode():
            embedded.append(clap.model.get_audio_features(**inputs).pooler_output.float().cpu().numpy())
    return np.concatenate(embedded) if embedded else np.zeros((0, 0), np.float32)


def audio_embeddings(clap: Clap, audios: Sequence[np.ndarray], sample_rate: int, batch_size: int = 16) -> np.ndarray:
    """Unit-length audio embeddings ``(len(audios), D)``: the normalised mean over 10 s windows."""
    pieces, owner = [], []
    for index, audio in enumerate(audios):
        for part in windows(to_clap_rate(audio, sample_rate, clap.sample_rate), clap.window_samples,
                            int(MIN_WINDOW_SECONDS * clap.sample_rate)):
            pieces.append(part)
            owner.append(index)
    flat = embed_windows(clap, pieces, batch_size)
    owner = np.asarray(owner)
    means = np.stack([flat[owner == i].mean(axis=0) for i in range(len(audios))]) if len(audios) else flat
    return _normalize(means)


def logit_scale(clap: Clap) -> float:
    """The model's learned temperature for audio-to-text logits (``logits_per_audio`` = scale x cosine)."""
    return float(clap.model.logit_scale_a.detach().exp())
