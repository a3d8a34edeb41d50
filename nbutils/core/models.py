"""Load MusicGen: a Hub id, a local ``save_pretrained`` directory, or the embedded ``tiny`` model.

``M`` everywhere in this package is one of:

* a Hub id such as ``facebook/musicgen-small`` (``-medium``, ``-large``, ``-melody``, stereo
  variants) -- downloaded on Colab;
* a local directory written by ``model.save_pretrained(d)`` and ``processor.save_pretrained(d)``;
* ``tiny`` (also ``tiny-stereo``, and ``tiny-melody``: a ``MusicgenMelodyForConditionalGeneration``
  conditioned on chroma like ``facebook/musicgen-melody``): a MusicGen with random weights built from a config in this
  file -- offline, deterministic, a few hundred thousand parameters, with an offline tokenizer.
  It has the real architecture (T5 text encoder, EnCodec at 32 kHz / 50 Hz, 4 codebooks, a
  text-to-decoder projection like musicgen-small) so every code path runs on a CPU in seconds.

Every loader applies the transformers 5.x fix for ``decoder_start_token_id`` (hub configs
keep it only in ``generation_config``; the training loss needs it on ``config.decoder``) and, for
melody checkpoints, the one that lets ``generate()`` see the text and melody (``compat``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

from nbutils.core import compat, melody, modelfiles
from nbutils.core.errors import UserError

HUB_MODELS = (
    "facebook/musicgen-small",
    "facebook/musicgen-medium",
    "facebook/musicgen-large",
    "facebook/musicgen-melody",
    "facebook/musicgen-melody-large",
    "facebook/musicgen-stereo-small",
    "facebook/musicgen-stereo-medium",
    "facebook/musicgen-stereo-large",
    "facebook/musicgen-stereo-melody",
    "facebook/musicgen-stereo-melody-large",
)
TINY_MODELS = ("tiny", "tiny-stereo", "tiny-melody")
MELODY_TYPE = compat.MELODY_TYPE  # config.model_type of the chroma-conditioned checkpoints

# The tiny model mirrors the real one's shapes where they matter and shrinks everything else.
TINY_SEED = 1234
TINY_CODEBOOK_SIZE = 64  # vocab of each codebook; the pad / start token is 64, as 2048 is for real
TINY_TEXT_DIM = 24  # != decoder width, so the model has enc_to_dec_proj like musicgen-small
TINY_DECODER_DIM = 32
TINY_WORDS = (
    "a an and with without of in on the slow fast upbeat calm dark bright happy sad energetic "
    "relaxing ambient jazz rock pop metal hip hop electronic dance techno house lofi classical "
    "folk blues funk soul piano guitar bass drums synth strings violin cello organ pad lead "
    "chords arpeggio melody beat groove percussion noise bursts minor major bpm key solo song "
    "track music loop intro"
).split()


@dataclasses.dataclass(frozen=True)
class AudioSpec:
    """What the codec and decoder agree on; stored with every shard and checkpoint."""

    sample_rate: int
    """Audio samples per second the codec expects (32000 for MusicGen)."""
    frame_rate: int
    """Code frames per second (50 for MusicGen: one frame per 640 samples)."""
    hop_length: int
    """Audio samples per code frame (640)."""
    num_codebooks: int
    """Codebooks per frame the decoder predicts (4 mono; 8 stereo, left/right interleaved)."""
    audio_channels: int
    """1 for mono checkpoints, 2 for stereo ones."""
    codebook_size: int
    """Distinct codes per codebook (2048); also the pad / decoder-start token id."""

    @property
    def pad_token_id(self) -> int:
        return self.codebook_size

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def is_tiny(name: str) -> bool:
    return str(name) in TINY_MODELS


def recorded_name(name: str) -> str:
    """The name to write into checkpoints and adapters: an existing local folder as an absolute path.

    A relative ``models/foo`` would later read like the Hub id ``models/foo`` (and mean nothing
    from another working directory); Hub ids and ``tiny`` stay as they are.
    """
    path = Path(str(name)).expanduser()
    return str(path.resolve()) if not is_tiny(name) and path.is_dir() else str(name)


def quiet_transformers() -> None:
    """Hide transformers' warnings that fire for every real MusicGen checkpoint too.

    (``pad_token_id`` equal to ``vocab_size`` is MusicGen's design, not a problem.)
    """
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------
# The tiny model
# ---------------------------------------------------------------------------------------------


def tiny_tokenizer():
    """An offline T5 (unigram) tokenizer: characters, a ``▁`` word marker and common music words."""
    from transformers import T5Tokenizer

    pieces = [("▁", -2.0)]
    pieces += [(chr(c), -3.0) for c in range(33, 127)]
    pieces += [("▁" + w, -1.0) for w in TINY_WORDS]
    return T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + pieces, extra_ids=0)


def tiny_config(stereo: bool = False, melody: bool = False):
    """The config of the embedded tiny MusicGen (random weights; no download).

    ``melody=True`` gives the musicgen-melody architecture (12 chroma bins prepended to the text
    states instead of cross-attention), otherwise the same sizes.
    """
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        T5Config,
    )

    text = T5Config(
        vocab_size=len(TINY_WORDS) + 100, d_model=TINY_TEXT_DIM, d_kv=8, d_ff=48,
        num_layers=1, num_heads=3, dropout_rate=0.0,
    )
    # Same hop (8*5*4*4 = 640 samples), rate and codebook count as facebook/encodec_32khz.
    codec = EncodecConfig(
        sampling_rate=32_000, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[1.2],
        codebook_size=TINY_CODEBOOK_SIZE, num_filters=4, hidden_size=16, codebook_dim=16,
        num_lstm_layers=1, use_causal_conv=False, normalize=False, use_conv_shortcut=False,
    )
    codebooks = 8 if stereo else 4
    # initializer_factor 0.2 (transformers' default: 0.02): with std-0.02 weights the width-32
    # decoder's logits stay within +-0.1 whatever LoRA does, so the tiny model could not learn
    # anything measurable; at 0.2 it memorises a few crops in a few dozen steps, as a real one does.
    decoder_class = MusicgenMelodyDecoderConfig if melody else MusicgenDecoderConfig
    decoder = decoder_class(
        vocab_size=TINY_CODEBOOK_SIZE, hidden_size=TINY_DECODER_DIM, num_hidden_layers=2,
        num_attention_heads=4, ffn_dim=64, max_position_embeddings=2048, num_codebooks=codebooks,
        audio_channels=2 if stereo else 1, dropout=0.0, initializer_factor=0.2,
        pad_token_id=TINY_CODEBOOK_SIZE, bos_token_id=TINY_CODEBOOK_SIZE,
        decoder_start_token_id=TINY_CODEBOOK_SIZE,
    )
    if melody:
        return MusicgenMelodyConfig(text_encoder=text, audio_encoder=codec, decoder=decoder)
    return MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder)


def _tiny_config_of(name: str):
    return tiny_config(stereo=name == "tiny-stereo", melody=name == "tiny-melody")


def _init_tiny_codebooks(codec) -> None:
    """Give the tiny EnCodec's codebooks real entries, as EnCodec's k-means initialisation does.

    transformers creates the codebooks as zero buffers (checkpoints fill them), so untouched
    every frame would encode to code 0 and every code would decode to the same sound. Each
    codebook instead takes distinct frames of the encoder's output on synthetic music (later
    codebooks: of what the earlier ones leave), so codes follow the audio and decoding follows
    the codes. Runs under the caller's fixed seed.
    """
    import torch

    from nbutils.core import synth

    wave = torch.cat([torch.from_numpy(synth.track(style, 3.0, seed=i)) for i, style in enumerate(synth.STYLES)])
    with torch.no_grad():
        residual = codec.encoder(wave[None, None])[0].T  # (frames, codebook_dim)
        for layer in codec.quantizer.layers:
            book = layer.codebook
            # distinct, non-zero frames only: a frame an earlier codebook matched exactly leaves a
            # zero residual, and duplicate entries would be codes that can never be chosen
            candidates = torch.unique(residual[residual.abs().amax(dim=1) > 0], dim=0)
            entries = candidates[torch.randperm(candidates.shape[0])[: book.embed.shape[0]]]
            book.embed.copy_(entries)
            book.embed_avg.copy_(entries)
            residual = residual - book.decode(book.quantize(residual))


def build_tiny(name: str = "tiny"):
    """Build the tiny model and its processor; identical weights on every call and machine."""
    import torch
    from transformers import EncodecFeatureExtractor, MusicgenProcessor

    if not is_tiny(name):
        raise UserError(f"Unknown tiny model '{name}'. Use one of: {', '.join(TINY_MODELS)}.")
    quiet_transformers()
    config = _tiny_config_of(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = _model_class(config)(config)
        _init_tiny_codebooks(model.audio_encoder)
    model.config._name_or_path = name
    gen = model.generation_config
    pad = TINY_CODEBOOK_SIZE
    gen.pad_token_id = gen.bos_token_id = gen.decoder_start_token_id = pad
    # As the real checkpoints: sampling with top-k, guidance 3, a 30 s window (1500 frames).
    gen.do_sample, gen.top_k, gen.guidance_scale, gen.max_length = True, 250, 3.0, 1500
    model.eval()
    # (tiny-melody too: MusicgenMelodyFeatureExtractor needs torchaudio; nbutils.melody makes the chroma)
    features = EncodecFeatureExtractor(feature_size=2 if name == "tiny-stereo" else 1, sampling_rate=32_000)
    processor = MusicgenProcessor(feature_extractor=features, tokenizer=tiny_tokenizer())
    return model, processor


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def fix_decoder_start(model) -> None:
    """transformers 5.x: the loss path reads ``config.decoder.decoder_start_token_id``.

    Hub checkpoints store it only in ``generation_config``; copy it over (falling back to the
    bos / pad id, which MusicGen sets to the codebook size).
    """
    decoder_config = model.config.decoder
    if getattr(decoder_config, "decoder_start_token_id", None) is not None:
        return
    gen = getattr(model, "generation_config", None)
    for candidate in (
        getattr(gen, "decoder_start_token_id", None),
        getattr(gen, "bos_token_id", None),
        decoder_config.bos_token_id,
        decoder_config.pad_token_id,
    ):
        if candidate is not None:
            decoder_config.decoder_start_token_id = int(candidate)
            return
    raise UserError("This MusicGen config has no decoder start / bos / pad token id; is it a MusicGen checkpoint?")


def load_config(name: str):
    """The MusicGen config of ``name`` (cheap: no weights)."""
    quiet_transformers()  # the tiny configs too: their pad id (= codebook size) draws a warning per field
    if is_tiny(name):
        return _tiny_config_of(name)
    modelfiles.check_local(name)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name)
    except Exception as err:  # noqa: BLE001 - any loading failure becomes one actionable message
        raise modelfiles.load_error(name, err) from err


def _codec_from_folder(name: str, config):
    """The ``audio_encoder.*`` tensors of a local folder's safetensors as an EncodecModel; None if that fails.

    Reads one tensor at a time, so tokenizing with a local musicgen-large copy costs the codec's
    memory, not the 3.3B decoder's. None (the caller loads the whole model) when the folder has no
    safetensors or names the tensors differently (another transformers version's layout).
    """
    folder = Path(name).expanduser()
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    from safetensors import safe_open
    from transformers import EncodecModel

    prefix = "audio_encoder."
    state = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                if key.startswith(prefix):
                    state[key[len(prefix):]] = handle.get_tensor(key)
    codec = EncodecModel(config.audio_encoder)
    if set(state) != set(codec.state_dict()):
        return None
    codec.load_state_dict(state)
    return codec


def _model_class(config):
    if config.model_type == MELODY_TYPE:
        from transformers import MusicgenMelodyForConditionalGeneration

        return MusicgenMelodyForConditionalGeneration
    if config.model_type != "musicgen":
        raise UserError(f"'{config._name_or_path}' is a '{config.model_type}' model, not MusicGen.")
    from transformers import MusicgenForConditionalGeneration

    return MusicgenForConditionalGeneration


def load_processor(name: str):
    """Tokenizer + feature extractor of ``name``.

    A melody checkpoint's is built from its tokenizer (``modelfiles.melody_processor``): transformers'
    melody processor needs torchaudio for a feature extractor the suite never runs.
    """
    if is_tiny(name):
        return build_tiny(name)[1]
    config = load_config(name)  # checks the folder first
    if config.model_type == MELODY_TYPE:
        spec = spec_of(config)
        return modelfiles.melody_processor(name, spec.audio_channels, spec.sample_rate)
    from transformers import AutoProcessor

    quiet_transformers()
    try:
        return AutoProcessor.from_pretrained(name)
    except Exception as err:  # noqa: BLE001
        raise modelfiles.load_error(name, err) from err


def is_melody(name_or_config) -> bool:
    """Whether a model (name, config or model) is a musicgen-melody checkpoint (conditioned on chroma)."""
    config = load_config(name_or_config) if isinstance(name_or_config, str) else getattr(
        name_or_config, "config", name_or_config)
    return config.model_type == MELODY_TYPE


def chroma_settings(name: str) -> melody.ChromaSettings | None:
    """How the melody checkpoint ``name`` makes chroma (its feature extractor's settings); None for
    other MusicGens. ``tiny-melody`` uses the released checkpoints' settings."""
    if not is_melody(name):
        return None
    return melody.ChromaSettings() if is_tiny(name) else modelfiles.chroma_settings(name)


# EnCodec stays float32 whatever dtype the rest of MusicGen runs in: it is known to misbehave in
# float16, it is a small share of the weights and compute, and the quantizer's nearest-entry
# search needs float32 (see nbutils.encoder).
CODEC_MODULE = "audio_encoder"


@functools.cache
def _float32_codec_class(cls):
    """``cls`` whose ``from_pretrained`` loads ``audio_encoder`` as float32 under fp16 / bf16.

    transformers reads ``_keep_in_fp32_modules_strict`` (modules kept float32 for both half
    dtypes) from the class when it plans the load, so the codec's weights are read from the
    checkpoint straight into float32 -- never rounded to half and back. Same class name, so
    ``save_pretrained`` still records the real architecture.
    """
    keep = set(cls._keep_in_fp32_modules_strict or ()) | {CODEC_MODULE}
    return type(cls.__name__, (cls,), {"_keep_in_fp32_modules_strict": sorted(keep), "__module__": cls.__module__})


def float32_modules(model, dtype) -> set[str]:
    """Names of the submodules that stay float32 when ``model`` runs in ``dtype``.

    What ``from_pretrained(dtype=...)`` keeps: EnCodec, the model's ``_keep_in_fp32_modules_strict``,
    and for float16 its ``_keep_in_fp32_modules`` too (T5's feed-forward output ``wo``, which
    overflows in float16).
    """
    import torch

    keep = {CODEC_MODULE, *(model._keep_in_fp32_modules_strict or ())}
    if dtype == torch.float16:
        keep |= set(model._keep_in_fp32_modules or ())
    return keep


def cast_except(module, dtype, keep: set[str]) -> None:
    """``module.to(dtype)`` in place, except submodules whose own name is in ``keep``."""
    if not any(path.rsplit(".", 1)[-1] in keep for path, _ in module.named_modules() if path):
        module.to(dtype)
        return
    for name, child in module.named_children():
        if name not in keep:
            cast_except(child, dtype, keep)
    for param in module.parameters(recurse=False):
        param.data = param.data.to(dtype)
    for name, buffer in module.named_buffers(recurse=False):
        if buffer.is_floating_point():
            setattr(module, name, buffer.to(dtype))


def load_musicgen(name: str, *, device: str | None = None, dtype: Any = None):
    """Load model and processor, in eval mode, with the decoder-start fix applied.

    Args:
        name: Hub id, local ``save_pretrained`` directory, or ``tiny`` / ``tiny-stereo``.
        device: Where to put the model (``None``: CPU).
        dtype: ``torch.float16`` / ``torch.bfloat16`` for GPU inference; ``None`` keeps float32.
            EnCodec (``model.audio_encoder``) stays float32 either way, and so do the modules
            transformers keeps in float32 (``float32_modules``).

    Returns:
        ``(model, processor)``.
    """
    import torch

    half = dtype is not None and dtype != torch.float32
    if is_tiny(name):
        model, processor = build_tiny(name)
        if half:  # built in float32 from a config: cast as from_pretrained would have loaded it
            cast_except(model, dtype, float32_modules(model, dtype))
    else:
        config = load_config(name)
        processor = load_processor(name)
        cls = _model_class(config)
        try:
            # dtype goes to from_pretrained only: a later model.to(dtype) would undo the float32 modules
            model = (_float32_codec_class(cls) if half else cls).from_pretrained(name, dtype=dtype)
        except Exception as err:  # noqa: BLE001
            raise modelfiles.load_error(name, err) from err
    fix_decoder_start(model)
    compat.keep_melody_conditioning(model)  # transformers <= 5.2x: generate() would ignore text and melody
    if device is not None:
        model = model.to(device)
    return model.eval(), processor


def spec_of(model_or_config) -> AudioSpec:
    """The ``AudioSpec`` of a MusicGen model or config."""
    config = getattr(model_or_config, "config", model_or_config)
    codec = config.audio_encoder
    return AudioSpec(
        sample_rate=int(codec.sampling_rate),
        frame_rate=int(codec.frame_rate),
        hop_length=int(codec.hop_length),
        num_codebooks=int(config.decoder.num_codebooks),
        audio_channels=int(config.decoder.audio_channels),
        codebook_size=int(codec.codebook_size),
    )


HUB_CODEC = "facebook/encodec_32khz"  # the codec every facebook/musicgen-* checkpoint was converted with


def codec_id(name: str) -> str:
    """Which codec ``name`` encodes with: ``HUB_CODEC`` for every facebook/musicgen-*, else the model itself."""
    return HUB_CODEC if str(name).startswith("facebook/musicgen") else str(name)


def load_codec(name: str, *, device: str | None = None):
    """Only the EnCodec audio tokenizer of ``name`` (what the tokenize stage needs).

    For ``facebook/musicgen-*`` this loads ``facebook/encodec_32khz`` (240 MB) instead of the
    whole model (up to 13 GB for large): transformers' conversion built every MusicGen from that
    codec. A local folder's own codec is read from its safetensors (only the ``audio_encoder.*``
    tensors); only if they do not fit is the whole model loaded.

    Returns:
        ``(codec, spec)`` where ``codec`` is a transformers ``EncodecModel`` in eval mode.
    """
    if is_tiny(name):
        model, _ = build_tiny(name)
        codec, spec = model.audio_encoder, spec_of(model)
    else:
        config = load_config(name)
        spec = spec_of(config)
        try:
            if codec_id(name) == HUB_CODEC:
                from transformers import EncodecModel

                codec = EncodecModel.from_pretrained(HUB_CODEC)
            else:
                codec = _codec_from_folder(name, config) or _model_class(config).from_pretrained(name).audio_encoder
        except Exception as err:  # noqa: BLE001
            raise modelfiles.load_error(name, err) from err
    if device is not None:
        codec = codec.to(device)
    return codec.eval(), spec


BASE_RECORD = "base_model.json"  # written by training next to the PEFT files: facts of the base model


def base_facts(model) -> dict[str, Any]:
    """What must match between an adapter's base model and the model it is loaded onto.

    Args:
        model: A ``MusicgenForConditionalGeneration`` (or melody), or a peft model wrapping one.
    """
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    return {
        "model_type": str(config.model_type),
        "num_codebooks": int(config.decoder.num_codebooks),
        "audio_channels": int(config.decoder.audio_channels),
        "decoder_hidden_size": int(config.decoder.hidden_size),
    }
