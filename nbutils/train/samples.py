"""Audio samples during training: fixed prompts and seeds, so samples of different steps compare.

``samples/step-000000`` holds the base model's samples (adapter disabled), later step folders the
LoRA's, with the same prompts and seeds; each folder has one WAV per prompt and ``samples.json``
(prompts, seeds, length, sampling settings). Generation runs in a forked RNG: making samples never
changes the training's random streams, so it cannot change the weights. Nor can it end training:
a failed generation (weights gone bad, a sampling error) is logged and skipped; only running out
of GPU memory stops the run, with the same advice as a training step.

A melody model's folders also hold, per prompt, a clip conditioned on the chroma of a validation
segment (``<kind>-<i>-melody.wav``) next to that segment's own audio decoded from its codes
(``melody-<i>.wav``), so "with and without a melody" compare at every step.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Sequence

from nbutils.core import atomic, config, tracking
from nbutils.core.models import AudioSpec
from nbutils.core.prompts import encode as encode_prompts
from nbutils.core.sampling import SamplingConfig

INFO_FILE = "samples.json"


def write_for(trainer, kind: str, folder: Path) -> Path | None:
    """``write`` with a trainer's model, prompts, seeds and settings; None (logged) if it failed.

    Raises:
        torch.cuda.OutOfMemoryError: as a training step would (``run`` gives the advice).
    """
    import torch

    try:
        return write(trainer.unwrapped(), trainer.processor, trainer.spec, folder, kind=kind, step=trainer.step,
                     prompts=trainer.prompts, seeds=[trainer.cfg.seed + i for i in range(len(trainer.prompts))],
                     seconds=trainer.cfg.sample_seconds, autocast=trainer.autocast,
                     info={"model": trainer.model_name}, sampling=trainer.cfg.sampling,
                     melodies=trainer.melody.samples(trainer.val_set, len(trainer.prompts), trainer.cfg.sample_seconds))
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - samples are a view of training, never a reason to end it
        trainer.log(f"Warning: the samples of step {trainer.step} failed ({type(err).__name__}: {err}); "
                    "training continues without them.")
        return None


def write(model, processor, spec: AudioSpec, folder: Path, *, kind: str, step: int, prompts: Sequence[str],
          seeds: Sequence[int], seconds: float, autocast: Callable[[], Any] = contextlib.nullcontext,
          info: dict[str, Any] | None = None, sampling: SamplingConfig | None = None,
          melodies: Sequence[dict[str, Any]] = ()) -> Path:
    """Generate one clip per (prompt, seed) into ``folder`` (replaced atomically) and log them to WandB.

    Args:
        model: A ``PeftModel`` around MusicGen (``kind="base"`` disables the adapter).
        processor: The model's processor (tokenizer).
        spec: The model's ``AudioSpec``.
        folder: ``OUT/samples/step-XXXXXX``.
        kind: ``base`` or ``lora`` (file names, WandB keys).
        step: The training step (WandB step).
        prompts: Texts; ``seeds``: one seed per prompt.
        seconds: Length of each clip.
        autocast: The training's autocast context factory (bf16 / fp16 on a GPU).
        info: Extra facts for ``samples.json``.
        sampling: How tokens are drawn (default: ``SamplingConfig()``, as generation's defaults).
        melodies: Melody models: validation melodies (``train.melody.sample_melodies``); prompt ``i``
            is also generated with melody ``i`` (cycling), and the melody's audio is written too.
    """
    import numpy as np
    import soundfile as sf
    import torch

    from nbutils.train import labels as L

    sampling = sampling or SamplingConfig()
    device = next(model.parameters()).device
    frames = max(1, round(seconds * spec.frame_rate))
    max_new = frames + L.delays(spec.num_codebooks, spec.audio_channels)[-1]  # the delay pattern's tail
    devices = [device] if device.type == "cuda" else []
    adapter_off = model.disable_adapter() if kind == "base" else contextlib.nullcontext()
    files = []
    with atomic.atomic_dir(folder) as tmp, torch.random.fork_rng(devices=devices), adapter_off, torch.no_grad():
        for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
            torch.manual_seed(seed)
            inputs = encode_prompts(processor, [prompt]).to(device)
            with autocast():
                audio = model.generate(**inputs, max_new_tokens=max_new, **sampling.generate_kwargs())
            wav = audio[0].float().cpu().numpy().T.astype(np.float32)  # (samples, channels)
            name = f"{kind}-{i}.wav"
            sf.write(tmp / name, np.clip(wav, -1, 1), spec.sample_rate, subtype="PCM_16")
            files.append(name)
            tracking.log_audio(f"samples/{kind}/{i}", wav, spec.sample_rate, f"{prompt} (seed {seed})", step=step)
            if melodies:
                files += _with_melody(model, inputs, melodies[i % len(melodies)], tmp, i, seed, dict(
                    kind=kind, step=step, prompt=prompt, max_new_tokens=max_new, spec=spec, autocast=autocast,
                    sampling=sampling))
        atomic.write_json(tmp / INFO_FILE, {
            "step": step, "kind": kind, "prompts": list(prompts), "seeds": list(seeds), "seconds": seconds,
            **config.to_dict(sampling), "files": files, **(info or {}),
            "melodies": [{"track": m["track"], "start": m["start"]} for m in melodies],
        })
    return folder


def _with_melody(model, inputs, melody: dict[str, Any], folder: Path, i: int, seed: int, how: dict) -> list[str]:
    """Prompt ``i`` again, conditioned on ``melody``'s chroma, plus the melody's own audio; returns the files."""
    import numpy as np
    import soundfile as sf
    import torch

    from nbutils.core import codec
    from nbutils.core import melody as chroma

    spec, kind, step = how["spec"], how["kind"], how["step"]
    device = next(model.parameters()).device
    features = chroma.one_hot(melody["pitch_classes"], model.config.num_chroma)[None].to(device)
    torch.manual_seed(seed)
    with how["autocast"]():
        audio = model.generate(**inputs, input_features=features, max_new_tokens=how["max_new_tokens"],
                               **how["sampling"].generate_kwargs())
    wav = audio[0].float().cpu().numpy().T.astype(np.float32)
    source = codec.decode(model, torch.tensor(np.asarray(melody["codes"]).T, dtype=torch.long, device=device))
    source = source.numpy().T
    names = [f"{kind}-{i}-melody.wav", f"melody-{i}.wav"]
    for name, clip in zip(names, (wav, source)):
        sf.write(folder / name, np.clip(clip, -1, 1), spec.sample_rate, subtype="PCM_16")
    caption = f"{how['prompt']} (seed {seed}), melody of {melody['track']} at {melody['start']:g} s"
    tracking.log_audio(f"samples/{kind}/{i}-melody", wav, spec.sample_rate, caption, step=step)
    tracking.log_audio(f"samples/melody/{i}", source, spec.sample_rate, f"{melody['track']} at {melody['start']:g} s",
                       step=step)
    return names
