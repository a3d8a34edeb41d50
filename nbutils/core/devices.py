"""Devices and precision: the one place every stage picks where and in which precision it runs.

One vocabulary for precision, ``auto | bf16 | fp16 | fp32``, and one for devices, ``auto | cpu |
cuda | cuda:N``. ``auto`` precision is bf16 where the GPU runs it natively, fp16 on other GPUs and
fp32 on a CPU: ``torch.cuda.is_bf16_supported()`` answers True on a T4 or V100 too, because
PyTorch can emulate bfloat16 there -- at a fraction of the speed of float16 on the same card.
Native bfloat16 arrived with compute capability 8.0 (Ampere: A100, A10, L4, RTX 30xx; later H100).

Release 0.1.0 spelled precision ``float32 / float16 / bfloat16`` in generation and evaluation
(their ``dtype`` setting) and an automatic device ``""`` in tokenization; those spellings are
accepted, with a note, until the next release.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator, TypeVar

from nbutils.core.errors import UserError

T = TypeVar("T")

BF16_MIN_CAPABILITY = 8  # compute capability major version with bfloat16 tensor cores (Ampere)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OLD_PRECISIONS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # 0.1.0's dtype names
AUTO_DEVICE = "auto"


def precision_name(value: str) -> str:
    """``value`` in the precision vocabulary (``auto``, ``bf16``, ``fp16``, ``fp32``).

    0.1.0's names (``float32``, ``float16``, ``bfloat16``) are translated with a FutureWarning.

    Raises:
        UserError: any other value (names the valid ones).
    """
    name = str(value).strip().lower()
    if name in OLD_PRECISIONS:
        warnings.warn(f"Precision '{value}' is now written '{OLD_PRECISIONS[name]}' (auto, bf16, fp16, fp32); "
                      "the old name is accepted until the next release.", FutureWarning, stacklevel=3)
        return OLD_PRECISIONS[name]
    if name not in PRECISIONS:
        raise UserError(f"Unknown precision '{value}'. Use one of: {', '.join(PRECISIONS)}.")
    return name


def device_name(value: str | None) -> str:
    """``value`` as a device setting: ``auto``, ``cpu``, ``cuda``, ``cuda:N``... (``""`` becomes
    ``auto``, with a FutureWarning: 0.1.0's tokenizer wrote the automatic device that way)."""
    name = str(value or "").strip()
    if not name:
        warnings.warn("An empty device is now written 'auto' (the GPU when there is one); the empty value is "
                      "accepted until the next release.", FutureWarning, stacklevel=3)
        return AUTO_DEVICE
    return name


def pick_device(device: str | None = AUTO_DEVICE) -> str:
    """The device to run on: ``auto`` (or nothing) is the GPU when there is one, else the CPU."""
    import torch

    if not device or device == AUTO_DEVICE:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def pick_precision(precision: str, device: str, *, bf16: bool | None = None) -> str:
    """``bf16``, ``fp16`` or ``fp32`` for ``precision`` on ``device`` (``auto`` decides by the device).

    Args:
        precision: A name of the precision vocabulary (or a 0.1.0 dtype name).
        device: Where it runs: ``auto`` is bf16 on GPUs that run it natively, fp16 on other GPUs,
            fp32 on a CPU.
        bf16: Whether the GPU runs bf16 natively, when known without asking torch (a GPU
            described by name, as the training presets do); None asks the device.
    """
    name = precision_name(precision)
    if name != "auto":
        return name
    if not device or device == AUTO_DEVICE:
        device = pick_device(device)
    if not str(device).startswith("cuda"):
        return "fp32"
    native = bf16_native(device) if bf16 is None else bf16
    return "bf16" if native else "fp16"


def torch_dtype(precision: str):
    """The torch dtype of a resolved precision (``bf16``, ``fp16``, ``fp32``)."""
    import torch

    name = precision_name(precision)
    if name == "auto":
        raise ValueError("torch_dtype needs a resolved precision: use pick_dtype(precision, device) for 'auto'.")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def pick_dtype(precision: str, device: str):
    """The torch dtype ``precision`` means on ``device`` (``pick_precision`` as a torch dtype)."""
    return torch_dtype(pick_precision(precision, device))


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
    """Name, memory (GiB, total and free now), count, compute capability and native bf16 support of
    the GPU, or None on a CPU runtime."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    free, _total = torch.cuda.mem_get_info(0)
    return {
        "name": props.name,
        "vram_gb": round(props.total_memory / 2**30, 1),
        "free_gb": round(free / 2**30, 2),
        "count": torch.cuda.device_count(),
        "capability": f"{props.major}.{props.minor}",
        "bf16": bf16_native(0),  # native only: T4 / V100 merely emulate it, slowly
    }

