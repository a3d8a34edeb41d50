"""Which half precision a GPU runs natively: the one place every stage asks.

``torch.cuda.is_bf16_supported()`` answers True on a T4 or V100 too, because PyTorch can
emulate bfloat16 there -- at a fraction of the speed of float16 on the same card. Native
bfloat16 arrived with compute capability 8.0 (Ampere: A100, A10, L4, RTX 30xx; later H100).
So bf16 is chosen only where it is native, and float16 everywhere else on a GPU.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

BF16_MIN_CAPABILITY = 8  # compute capability major version with bfloat16 tensor cores (Ampere)


def bf16_native(device: Any = None) -> bool:
    """Whether ``device`` (default: the current CUDA device) runs bfloat16 natively.

    Args:
        device: A CUDA device (``"cuda"``, ``"cuda:1"``, an index, a ``torch.device``) or None
            for the current one. A CPU device gives False.

    Returns:
        True only when CUDA is available and the device's compute capability is 8.0 or newer.
    """
    import torch

    if not torch.cuda.is_available():
        return False
    if device is not None and not isinstance(device, int) and torch.device(device).type != "cuda":
        return False
    major, _minor = torch.cuda.get_device_capability(device)
    return major >= BF16_MIN_CAPABILITY



@contextlib.contextmanager
def without_autocast(module: Any, method: str = "forward") -> Iterator[None]:
    """Inside the block, ``module.<method>`` runs in its own (float32) precision even under autocast.

    Training and its samples run under bf16/fp16 autocast, which would otherwise also cast the
    frozen T5 text encoder (whose fp16 activations can overflow) and EnCodec's decoder (whose
    audio must stay exact). audiocraft, where these models come from, runs both in float32 too.
    """
    import torch

    original, had_own = getattr(module, method), method in vars(module)
    device_type = next(module.parameters()).device.type

    def full_precision(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, enabled=False):
            return original(*args, **kwargs)

    setattr(module, method, full_precision)  # an instance attribute shadows the class's method
    try:
        yield
    finally:
        if had_own:
            setattr(module, method, original)
        else:
            delattr(module, method)
