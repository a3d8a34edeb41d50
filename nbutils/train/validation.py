"""The validation loss of a training run: token-weighted cross-entropy over the held-out tracks.

Evaluation draws no random numbers (no dropout in eval mode, fixed windows), so how often it runs
never changes the weights; every process scores its slice and the sums are reduced.
"""

from __future__ import annotations

from typing import Any


def evaluate(trainer) -> dict[str, Any] | None:
    """The metrics line of the validation loss at ``trainer``'s step (per codebook too); sets
    ``trainer.last_val``. None without validation tracks."""
    import torch

    from nbutils.train import labels as L

    if len(trainer.val_set) == 0:
        return None
    acc = trainer.accelerator
    model = trainer.unwrapped()
    model.eval()
    trainer._in_train_mode = False
    sums = torch.zeros(trainer.spec.num_codebooks, device=trainer.device)
    counts = torch.zeros_like(sums)
    mine = list(range(acc.process_index, len(trainer.val_set), acc.num_processes))
    size = max(1, trainer.batch_size)
    with torch.no_grad():
        for first in range(0, len(mine), size):
            examples = [trainer.val_set.example(i) for i in mine[first : first + size]]
            batch = trainer.collate(examples).to(trainer.device)
            with trainer.autocast():
                logits = model(**batch.model_inputs()).logits
            s, c = L.codebook_ce(logits, batch.labels, trainer.pad_id)
            sums += s
            counts += c
    sums, counts = acc.reduce(sums, reduction="sum"), acc.reduce(counts, reduction="sum")
    loss, per_codebook = L.mean_loss(sums, counts)
    trainer.last_val = float(loss)
    return {"step": trainer.step, "val/loss": trainer.last_val,
            **{f"val/loss_cb{k}": float(v) for k, v in enumerate(per_codebook.tolist())}}
