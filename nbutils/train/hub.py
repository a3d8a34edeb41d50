"""Sharing an adapter: the facts of its training, a model card, and an optional Hub upload.

Every adapter folder the trainer writes gets ``training.json`` (the facts) and ``README.md``
(a model card: base model, data size, hyperparameters, how to load). ``push`` uploads a folder
to the Hugging Face Hub with ``HF_TOKEN`` (Colab secret or environment variable); the token is
passed to the Hub client only, never printed, logged or written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nbutils.core import atomic
from nbutils.core.errors import UserError
from nbutils.train import guard, lora


def write_adapter(trainer, name: str, folder: Path) -> Path:
    """Write ``trainer``'s LoRA as the PEFT folder ``folder`` (replaced atomically) with
    ``training.json`` and a model card.

    Raises:
        guard.Diverged: a LoRA weight is NaN or inf; the folder there is kept as it was.
    """
    model = trainer.unwrapped()
    problems = guard.non_finite(lora.state_dict(model))
    if problems:
        raise guard.Diverged(f"Not writing {folder}: {len(problems)} LoRA weights are NaN or inf "
                             f"({', '.join(problems[:3])}): training diverged; the adapter there is kept.")
    with atomic.atomic_dir(folder) as tmp:
        lora.write_adapter(model, tmp, trainer.model_name)
        info = facts(trainer, name)
        atomic.write_json(tmp / "training.json", info)
        atomic.write_text(tmp / "README.md", model_card(info))
    return folder


def facts(trainer, name: str) -> dict[str, Any]:
    """What an adapter is: base model, step, losses, data size and hyperparameters."""
    cfg = trainer.cfg
    return {
        "adapter": name,
        "base_model": trainer.model_name,
        "step": int(trainer.step),
        "val_loss": trainer.last_val,
        "best_val_loss": trainer.best_val,
        "train_loss": trainer.last_train,
        "data": {
            "shards": len(trainer.fingerprint),
            "train_tracks": len(trainer.split["train_tracks"]),
            "val_tracks": len(trainer.split["val_tracks"]),
            "train_hours": round(trainer.train_hours, 3),
            "train_crops": len(trainer.train_set),
        },
        "hyperparameters": {
            "lora": trainer.lora_config,
            "segment_seconds": cfg.segment_seconds,
            "cfg_dropout": cfg.cfg_dropout,
            "effective_batch": trainer.effective_batch,
            "lr": cfg.lr,
            "scheduler": cfg.scheduler,
            "warmup_steps": cfg.warmup_steps,
            "weight_decay": cfg.weight_decay,
            "total_steps": int(trainer.total_steps),
            "precision": trainer.settings["precision"],
            "seed": cfg.seed,
        },
    }


def model_card(info: dict[str, Any]) -> str:
    """A README.md for the adapter folder (Hub model card with metadata header)."""
    hp, data, lora = info["hyperparameters"], info["data"], info["hyperparameters"]["lora"]
    base = info["base_model"]
    val = info["best_val_loss"] if info["adapter"] == "best" else info["val_loss"]
    return f"""---
base_model: {base}
library_name: peft
license: cc-by-nc-4.0
tags: [musicgen, lora, text-to-audio, peft]
---

# MusicGen LoRA adapter ({info["adapter"]}, step {info["step"]})

A LoRA adapter for [{base}](https://huggingface.co/{base}), trained with the MusicGen LoRA Colab suite.

| | |
|---|---|
| base model | `{base}` |
| training data | {data["train_hours"]} h in {data["train_tracks"]} tracks ({data["shards"]} shards); {data["val_tracks"]} tracks held out |
| validation loss | {val if val is not None else "n/a"} |
| LoRA | r={lora["r"]}, alpha={lora["lora_alpha"]}, dropout={lora["lora_dropout"]}, targets {", ".join(lora["target_modules"])} |
| training | {hp["total_steps"]} steps x {hp["effective_batch"]} crops of {hp["segment_seconds"]} s, lr {hp["lr"]} ({hp["scheduler"]}, {hp["warmup_steps"]} warmup), {hp["precision"]} |
| text dropout (CFG) | {hp["cfg_dropout"]} |

## How to load

```python
from peft import PeftModel
from transformers import AutoProcessor, MusicgenForConditionalGeneration

base = MusicgenForConditionalGeneration.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "<this folder or repo id>")
processor = AutoProcessor.from_pretrained("{base}")
inputs = processor(text=["your prompt"], padding=True, return_tensors="pt")
audio = model.generate(**inputs, do_sample=True, guidance_scale=3.0, max_new_tokens=256)
```

## License

The MusicGen weights are Meta's, released under CC-BY-NC-4.0 (non-commercial use only); this adapter
is trained on them and shared under the same license. The code of the training suite is MIT.
"""  # noqa: E501 - one table row per line of the card


def token() -> str | None:
    """``HF_TOKEN`` from the environment (on Colab, ``colab.connect`` puts the secret there)."""
    return os.environ.get("HF_TOKEN") or None


def check_token() -> str:
    """The Hub token, or a ``UserError`` saying how to provide one."""
    value = token()
    if not value:
        raise UserError("push_to_hub needs a Hugging Face token with write access: add HF_TOKEN to Colab's "
                        "secrets (key icon on the left) or the environment, or leave push_to_hub empty.")
    return value


def check_finite(folder: str | os.PathLike) -> None:
    """Refuse (``guard.Diverged``) an adapter folder whose LoRA weights hold NaN or inf."""
    from safetensors.torch import load_file

    weights = Path(folder) / "adapter_model.safetensors"
    problems = guard.non_finite(load_file(str(weights))) if weights.is_file() else []
    if problems:
        raise guard.Diverged(f"Not uploading {folder}: {len(problems)} of its LoRA weights are NaN or inf "
                             f"({', '.join(problems[:3])}); it comes from a diverged training run. Upload an "
                             "adapter of a run that went well (its adapters/best or final).")


def push(folder: str | os.PathLike, repo_id: str, *, private: bool = True, api=None) -> str:
    """Upload an adapter folder to ``repo_id`` (created if needed); returns the repo URL.

    An adapter with non-finite weights is refused before anything is sent (``check_finite``).
    """
    if "/" not in repo_id:
        raise UserError(f"push_to_hub must be 'user/name' (got '{repo_id}').")
    check_finite(folder)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=check_token())
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(Path(folder)), repo_id=repo_id, repo_type="model",
                          commit_message="Upload MusicGen LoRA adapter")
    except Exception as err:  # noqa: BLE001 - network / permission errors: one actionable message
        raise UserError(f"Upload to {repo_id} failed ({type(err).__name__}: {err}). The adapter is safe in "
                        f"{folder}; check HF_TOKEN's write access and retry with hub.push(folder, repo_id).") from err
    return f"https://huggingface.co/{repo_id}"
