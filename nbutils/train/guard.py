"""Non-finite steps and divergence: skip a bad step, stop a run that went wrong, never save NaN.

* **Step guard.** A step whose loss or gradient norm is not finite (NaN, inf) is not applied: its
  gradients are zeroed, neither the optimizer nor the LR schedule steps, and the random state goes
  back to where the step began. The step leaves no trace but the data cursor, which moves past
  its batch. Under fp16 the loss scaler already skips a step whose gradients overflowed (and halves
  its scale); those steps are counted and reported here, not handled a second time.
* **Divergence stop.** ``max_skipped`` skipped steps in a row, or a loss above ``factor`` times
  its running median (the last ``WINDOW`` applied steps) for ``patience`` steps in a row, stop the
  run with a ``Diverged`` error that says what happened, from which step, and what to try. While
  the loss is that high, saves wait, so the last good checkpoint stays as it was.
* **Finite state only.** ``non_finite`` names the non-finite tensors of a checkpoint (LoRA weights,
  optimizer state); every save refuses such a state and resuming rejects one.

The guard's counters and loss window are part of the checkpoint, so a resumed run decides as the
uninterrupted one would.
"""

from __future__ import annotations

import collections
import math
import statistics
from typing import Any, Iterable

from nbutils.core.errors import UserError

WINDOW = 200  # losses of the last applied steps the running median is taken over
MIN_HISTORY = 20  # no divergence verdict before this many losses: the median means little yet
SHOWN_TRACKS = 8  # source tracks named in a message (metrics.jsonl has them all)
KEPT_TRACKS = 100  # tracks of a run of skipped steps kept for the message (and the checkpoint)
SCALER_SKIP = "fp16 overflow: the loss scaler skipped the step and lowered its scale"


class Diverged(UserError):
    """Training stopped because it diverged (non-finite steps, a runaway loss, or non-finite weights)."""


def non_finite(tree: Any, prefix: str = "") -> list[str]:
    """Names (``lora/...``, ``optimizer/state/3/exp_avg``) of the floating tensors in ``tree`` (nested
    dicts and lists, as a checkpoint holds them) that contain NaN or inf."""
    import torch

    found: list[str] = []
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and not bool(torch.isfinite(tree).all()):
            found.append(prefix or "tensor")
    elif isinstance(tree, dict):
        for key, value in tree.items():
            found += non_finite(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            found += non_finite(value, f"{prefix}/{index}")
    return found


def state_problems(state: dict[str, Any]) -> list[str]:
    """The non-finite tensors among a checkpoint's LoRA weights and optimizer state."""
    return non_finite({"lora": state.get("lora", {}), "optimizer": state.get("optimizer", {})})


def tensor_count(state: dict[str, Any]) -> int:
    """Floating tensors among a checkpoint's LoRA weights and optimizer state (for messages)."""
    import torch

    def count(tree: Any) -> int:
        if isinstance(tree, torch.Tensor):
            return int(tree.is_floating_point())
        if isinstance(tree, dict):
            return sum(count(v) for v in tree.values())
        if isinstance(tree, (list, tuple)):
            return sum(count(v) for v in tree)
        return 0

    return count({"lora": state.get("lora", {}), "optimizer": state.get("optimizer", {})})


def _finite(value: float) -> bool:
    return value is not None and math.isfinite(value)


def _shown(value: float) -> str:
    return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")


class StepGuard:
    """Decides which steps to skip, counts them, and says when a run has diverged.

    Args:
        max_skipped: Stop after this many skipped steps in a row (0: never).
        factor: Stop when the loss stays above ``factor`` x its running median ... (0: never).
        patience: ... for this many steps in a row.
    """

    def __init__(self, max_skipped: int, factor: float, patience: int):
        self.max_skipped, self.factor, self.patience = max_skipped, factor, patience
        self.skipped = 0  # every skipped step of the run (ours and the loss scaler's)
        self.scaler_skipped = 0  # of which the fp16 loss scaler skipped
        self.in_a_row = 0
        self.first_skipped: int | None = None  # first step of the current run of skipped steps
        self.high = 0  # steps in a row with the loss above factor x median
        self.high_since: int | None = None
        self.median: float | None = None  # the running median the last high loss was compared with
        self.reasons: dict[str, int] = {}  # why the steps of the current run of skipped steps were skipped
        self.tracks: list[str] = []  # source tracks of the current run of skipped steps
        self.losses: collections.deque[float] = collections.deque(maxlen=WINDOW)

    # -- one step ------------------------------------------------------------------------------

    @staticmethod
    def reason_to_skip(loss: float, grad_norm: float, scaler_active: bool) -> str | None:
        """Why this step must not be applied, or None. With an active loss scaler, the scaler
        decides for non-finite gradients (it skips the step and lowers its scale)."""
        if scaler_active:
            return None
        if not _finite(loss):
            return f"the loss is {_shown(loss)}"
        if not _finite(grad_norm):
            return f"the gradient norm is {_shown(grad_norm)}"
        return None

    def record(self, step: int, loss: float, skipped: str | None, tracks: Iterable[str] = ()) -> dict[str, Any]:
        """Count step ``step`` (``skipped``: why it was skipped, else None); returns its metrics fields."""
        fields: dict[str, Any] = {}
        if skipped is not None:
            self.skipped += 1
            self.scaler_skipped += skipped == SCALER_SKIP
            self.in_a_row += 1
            self.first_skipped = self.first_skipped if self.in_a_row > 1 else step
            self.reasons[skipped] = self.reasons.get(skipped, 0) + 1
            self.tracks = sorted(set(self.tracks) | set(tracks))[:KEPT_TRACKS]
            fields = {"train/skipped": 1, "train/skip_reason": skipped, "train/skip_tracks": ", ".join(sorted(tracks))}
        else:
            self.in_a_row, self.first_skipped, self.reasons, self.tracks = 0, None, {}, []
            self._watch_loss(step, loss)
        fields["train/skipped_steps"] = self.skipped
        return fields

    def _watch_loss(self, step: int, loss: float) -> None:
        if not _finite(loss):  # an fp16 step the scaler applied despite a non-finite loss: no verdict
            return
        if self.factor > 0 and len(self.losses) >= MIN_HISTORY:
            median = statistics.median(self.losses)
            if loss > self.factor * median:
                self.high += 1
                self.high_since = self.high_since if self.high > 1 else step
                self.median = median
            else:
                self.high, self.high_since = 0, None
        self.losses.append(float(loss))

    @property
    def troubled(self) -> bool:
        """The loss is running away (above factor x median) right now: saves wait until it is not."""
        return self.high > 0

    def unsaved(self, step: int, saved: int | None, latest: str) -> str | None:
        """What to say when a stop at ``step`` saves nothing because the loss is running away (None
        when it is not)."""
        if not self.troubled:
            return None
        kept = f"step {saved}" if saved is not None else "the checkpoint it had before this session"
        return (f"Stopped at step {step}, not saved: the loss has been far above its running median since step "
                f"{self.high_since}. {latest} keeps {kept}; run the same command (or cell) again to continue.")

    # -- the verdict ---------------------------------------------------------------------------

    def verdict(self, *, step: int, lr: float, precision: str, saved: int | None, out: str) -> Diverged | None:
        """The error to stop with after step ``step``, or None to go on.

        Args:
            step: The step just taken.
            lr: The configured learning rate (named in the advice).
            precision: The precision in use (fp16 gets its own advice).
            saved: The step of the last checkpoint (latest.pt), or None.
            out: The run folder, for the message.
        """
        if self.max_skipped and self.in_a_row >= self.max_skipped:
            why = "; ".join(f"{reason}: {n}x" for reason, n in collections.Counter(self.reasons).most_common())
            what = (f"Training diverged: the last {self.in_a_row} steps ({self.first_skipped} to {step}) were all "
                    f"skipped because their loss or gradients were not finite ({why}).")
            since = self.first_skipped
        elif self.factor > 0 and self.high >= self.patience:
            what = (f"Training diverged: from step {self.high_since} to {step} the loss stayed above "
                    f"{self.factor:g} x its running median ({self.median:.3f}), {self.high} steps in a row.")
            since = self.high_since
        else:
            return None
        return Diverged("\n".join([what, self._kept(saved, out, since), self._advice(lr, precision)]))

    def _kept(self, saved: int | None, out: str, since: int) -> str:
        """What the run folder holds now."""
        if saved is None:
            return f"Nothing was saved in this session: what {out} held before (if anything) is unchanged."
        latest = f"{out}/latest.pt (step {saved})"
        if saved >= since:  # saved during a run of skipped steps, which change nothing
            return (f"{latest} holds the weights of step {since - 1}, the last step applied: skipped steps change "
                    "nothing.")
        return f"{latest}, saved before the trouble began, is kept as it was: saves wait while the loss runs away."

    def _advice(self, lr: float, precision: str) -> str:
        tips = [f"lower the learning rate: lr is {lr:g}; try a third of it or less, with warmup_steps 100 or "
                "more. lr cannot change within a run: start a new one (a new RUN_NAME, or --out)."]
        if precision == "fp16":
            tips.append("use bf16 instead of fp16 if the GPU has it (A100, L4, H100), else fp32. precision may "
                        "change on resume: re-running with it continues from the last checkpoint.")
        if self.tracks:
            shown = ", ".join(self.tracks[:SHOWN_TRACKS])
            more = f" and {len(self.tracks) - SHOWN_TRACKS} more" if len(self.tracks) > SHOWN_TRACKS else ""
            tips.append(f"check the tracks of the skipped steps: {shown}{more}. Silent, clipped or corrupt audio can "
                        "do this; re-tokenize without them. metrics.jsonl names every skipped step's tracks "
                        "(train/skip_tracks).")
        return "What to try:\n" + "\n".join(f"- {tip}" for tip in tips)

    # -- checkpoint --------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The counters and the loss window, for the checkpoint (plain numbers and lists)."""
        return {"skipped": self.skipped, "scaler_skipped": self.scaler_skipped, "in_a_row": self.in_a_row,
                "first_skipped": self.first_skipped, "high": self.high, "high_since": self.high_since,
                "median": self.median, "reasons": dict(self.reasons), "tracks": list(self.tracks),
                "losses": list(self.losses)}

    def load(self, state: dict[str, Any] | None) -> None:
        """Continue from ``state`` (None: a checkpoint written before the guard existed)."""
        state = state or {}
        for key in ("skipped", "scaler_skipped", "in_a_row", "high"):
            setattr(self, key, int(state.get(key, 0)))
        self.first_skipped, self.high_since = state.get("first_skipped"), state.get("high_since")
        self.median = state.get("median")
        self.reasons = {str(k): int(v) for k, v in state.get("reasons", {}).items()}
        self.tracks = list(state.get("tracks", []))
        self.losses = collections.deque((float(v) for v in state.get("losses", [])), maxlen=WINDOW)
