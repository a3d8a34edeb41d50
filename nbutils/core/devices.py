"""Which half precision a GPU runs natively: the one place every stage asks.

``torch.cuda.is_bf16_supported()`` answers True on a T4 or V100 too, because PyTorch can
emulate bfloat16 there -- at a fraction of the speed of float16 on the same card. Native
bfloat16 arrived with compute capability 8.0 (Ampere: A100, A10, L4, RTX 30xx; later H100).
So bf16 is chosen only where it is native, and float16 everywhere else on a GPU.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")

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
    """Inside the block, ``module.<method>`` runs in float32 even under autocast.

    Floating-point tensor arguments are cast to float32 and autocast is off for the call. Used for
    what must not run in half precision: EnCodec's quantizer (its nearest-entry distances cancel
    in bf16), and, under the training autocast, the frozen T5 (fp16 activations can overflow) and
    EnCodec's decoder (the audio must stay exact); audiocraft runs all three in float32 too.
    The call is wrapped on this instance only; the class's method is back when the block ends.
    """
    import torch

    original, had_own = getattr(module, method), method in vars(module)

    def full_precision(*args: Any, **kwargs: Any) -> Any:
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
        device = tensors[0].device.type if tensors else "cpu"
        args = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        kwargs = {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                  for k, v in kwargs.items()}
        with torch.autocast(device, enabled=False):
            return original(*args, **kwargs)

    setattr(module, method, full_precision)  # an instance attribute shadows the class's method
    try:
        yield
    finally:
        if had_own:
            setattr(module, method, original)
        else:
            delattr(module, method)


def free_memory() -> None:
    """Collect garbage and hand the GPU's cached blocks back (after a model or a failed step is dropped)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def unless_out_of_memory(call: Callable[[], T]) -> tuple[T | None, bool]:
    """``(call(), False)``, or ``(None, True)`` when the GPU ran out of memory during it.

    The caller raises its own message (what to lower) after this returns. The out-of-memory error
    is dropped here with its frames, and the activations they hold are freed: raised from inside an
    ``except`` block, a new error would carry the old one along, and IPython keeps the last error.
    """
    import torch

    try:
        return call(), False
    except torch.cuda.OutOfMemoryError:
        pass
    free_memory()
    return None, True


def gpu_info() -> dict[str, Any] | None:
    """Name, memory (GiB), count and native bf16 support of the GPU, or None on a CPU runtime."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "vram_gb": round(props.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(),
        "bf16": bf16_native(0),  # native only: T4 / V100 merely emulate it, slowly
    }

