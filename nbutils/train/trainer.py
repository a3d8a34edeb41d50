"""The trainer: one run's model, data, optimizer and checkpointed state, driven step by step.

``nbutils.train.stage.run`` drives it (read it for the order), and so do the preset time estimate
(``estimate``) and the training benchmark, through the same public steps: ``begin`` (resume or
start fresh), ``complete``, ``start`` (WandB, base samples, the training RNG streams),
``progress_bar``, ``train_step`` (one optimizer step, or a skipped one: ``guard``), ``after_step``
(divergence check; evaluation, checkpoint, samples, metrics when due), ``finish`` (final evaluation,
checkpoint, adapters, held-out likelihood: ``likelihood``, Hub push) and ``stop`` (after a stop, out of
memory or a divergence: save what may be saved, let go of the model, the error to raise).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from nbutils.core import atomic, config, faults, models, tracking
from nbutils.core.errors import UserError
from nbutils.train import build, checkpoint, guard, history, likelihood, lora, melody, presets, saves, texts
from nbutils.train import dataset as data

if TYPE_CHECKING:
    from nbutils.train.stage import TrainConfig

SAMPLES_DIR = "samples"
ADAPTERS_DIR = "adapters"
# What the weights also depend on, derived from the settings and the data (``identity``): these must
# match too when a run resumes, besides the ``must-match`` fields of ``TrainConfig``.
DERIVED_MUST_MATCH = ("data", "effective_batch")


class Trainer:
    """One training run: model, data, optimizer, and the state a checkpoint holds.

    Args:
        cfg: The settings.
        log: Where human messages go (``print`` on the main process).
        quiet: No progress bar (used by the preset time estimate).
    """

    def __init__(self, cfg: TrainConfig, *, log: Callable[[str], None] | None = None, quiet: bool = False):
        from accelerate.utils import set_seed

        if not cfg.tokens:
            raise UserError("Say where the token shards are: --tokens DIR (the tokenize stage's --out).")
        if not cfg.out:
            raise UserError("Say where to write the run: --out DIR (re-using a folder resumes that run).")
        self.cfg = cfg
        self.out = Path(cfg.out).expanduser().absolute()
        self.model_name = models.recorded_name(cfg.model or data.model_of_shards(cfg.tokens))
        self.melody = melody.plan(cfg, self.model_name, data.CFG_DROPOUT)  # melody checks: before the model loads
        self.settings = presets.settings_for(cfg, self.model_name)
        self.accelerator = build.accelerator(self.settings["precision"])
        self.main = self.accelerator.is_main_process
        self.log = log or (print if self.main else (lambda message: None))
        self.quiet = quiet
        self.device = self.accelerator.device

        self.base, self.processor = build.load_base(self.model_name, self.settings["precision"])
        self.spec = models.spec_of(self.base)
        self.pad_id = self.spec.pad_token_id
        self.start_id = int(self.base.config.decoder.decoder_start_token_id)
        self._load_data()
        set_seed(cfg.seed)  # LoRA initialization draws from the torch RNG: a fresh start is reproducible
        self.peft, lora_config = build.wrap_lora(self.base, cfg, self.model_name, self.settings["grad_checkpointing"])
        self.trainable, self.total_params = lora.check_only_lora_trainable(self.peft)
        self.lora_config = lora.config_dict(lora_config)
        self.total_steps = cfg.max_steps or cfg.epochs * self.sampler.steps_per_epoch
        self.optimizer, self.scheduler = build.optimizer_and_scheduler(self.peft, cfg, self.total_steps)
        self.model, self.optimizer = self.accelerator.prepare(self.peft, self.optimizer)

        self.step = 0
        self.cursor = data.Cursor()
        self.best_val: float | None = None
        self.best_step: int | None = None
        self.last_val: float | None = None
        self.last_train: float | None = None
        self.wandb_run_id: str | None = None
        self.resumed_from: int | None = None
        self.rng_after_step: dict[str, Any] = {}
        self.evaluated_at: int | None = None
        self.saved_at: int | None = None
        self.metrics = history.MetricsLog(self.out, writer=self.main)
        self.guard = guard.StepGuard(cfg.max_skipped_steps, cfg.divergence_factor, cfg.divergence_steps)
        self.schedule = saves.SaveSchedule(cfg.save_every, saves.minutes(cfg.save_every_minutes))
        self._latest_good = False  # latest.pt is this run's last save: the next save keeps it as previous.pt
        self._in_train_mode = False

    # -- setup -----------------------------------------------------------------------------

    def _load_data(self) -> None:
        cfg = self.cfg
        opened = data.open_shards(cfg.tokens, self.spec.num_codebooks, self.spec.sample_rate)
        self.fingerprint = data.fingerprint(opened, chroma=self.melody.settings is not None)  # codes, tokenize's texts
        self.texts = texts.load(cfg.tokens, opened)  # the texts trained with: descriptions.jsonl, edits included
        other_model = data.other_model_note(opened, self.model_name)
        if other_model and self.main:
            print(other_model)
        unlabelled = data.unlabelled_note(opened)
        if unlabelled:
            self.log(unlabelled)
        tracks = sorted({data.track_of(s, shard) for shard in opened for s in shard.segments})
        self.split = data.split_tracks(tracks, cfg.val_fraction, cfg.seed)
        self.crop_frames = max(1, round(cfg.crop_seconds * self.spec.frame_rate))
        self.train_set = data.CropDataset(opened, self.split["train_tracks"], self.crop_frames, train=True,
                                          cfg_dropout=self.melody.dropouts.cfg, seed=cfg.seed, chroma=self.melody.crops)
        self.val_set = data.CropDataset(opened, self.split["val_tracks"], self.crop_frames, train=False,
                                        seed=cfg.seed, max_items=cfg.val_crops, chroma=self.melody.crops)
        acc = self.accelerator
        self.batch_size, self.grad_accum = self.settings["batch_size"], self.settings["grad_accum"]
        self.sampler = data.StepSampler(self.train_set, self.batch_size, self.grad_accum, acc.num_processes,
                                        acc.process_index, cfg.seed)
        self.collate = data.Collator(self.processor.tokenizer, self.pad_id, self.start_id, self.spec.audio_channels,
                                     **self.melody.collate)
        self.shards = opened
        self.prompts = list(cfg.sample_prompts) if cfg.sample_prompts else data.sample_prompts(opened, self.split)
        train = set(self.split["train_tracks"])
        frames = sum(s.frames for shard in opened for s in shard.segments if data.track_of(s, shard) in train)
        self.train_hours = frames / self.spec.frame_rate / 3600

    @property
    def effective_batch(self) -> int:
        return self.sampler.effective

    def identity(self) -> dict[str, Any]:
        """The settings that define what the weights mean, plus the harmless ones (for notes)."""
        values = config.to_dict(self.cfg)
        values.update(model=self.model_name, data=self.fingerprint, crop_frames=self.crop_frames,
                      effective_batch=self.effective_batch, descriptions=texts.digests(self.texts),
                      **self.melody.identity())
        return values

    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def train_mode(self) -> None:
        """The LoRA model in training mode, the frozen encoders in eval mode (as every step runs)."""
        if self._in_train_mode:
            return  # switching walks every module: skip it when evaluation / samples did not run
        self.model.train()
        # The frozen encoders stay in eval mode (no dropout), as audiocraft runs its T5.
        self.base.text_encoder.eval()
        self.base.audio_encoder.eval()
        self._in_train_mode = True

    @contextlib.contextmanager
    def autocast(self):
        """The training precision's autocast, with T5 and EnCodec's decoder kept in float32."""
        from nbutils.core import devices

        with self.accelerator.autocast(), devices.without_autocast(self.base.text_encoder), \
                devices.without_autocast(self.base.audio_encoder, "decode"):
            yield

    # -- the run, step by step ---------------------------------------------------------------

    def begin(self) -> None:
        """Resume from OUT (saying from which step) or start fresh (writing split.json)."""
        if self.main:
            checkpoint.clean(self.out)  # one process settles what a killed writer left
        self.accelerator.wait_for_everyone()
        found = checkpoint.load(self.out, log=self.log, settle=False)
        if found is None:
            self._start_fresh()
        else:
            state, path = found
            notes = self.restore(state)
            self._latest_good = path == self.out / checkpoint.LATEST
            self.metrics.trim(self.step)
            where = path.relative_to(self.out) if path.is_relative_to(self.out) else path
            self.log(f"Resuming from step {self.step} ({where}, epoch {self.cursor.epoch}) of {self.total_steps}.")
            for note in notes:
                self.log(f"  changed setting {note}")
        s = self.settings
        self.log(f"Batch {self.batch_size} x accumulation {self.grad_accum} x {self.accelerator.num_processes} "
                 f"process(es), {s['precision']}, gradient checkpointing {'on' if s['grad_checkpointing'] else 'off'}, "
                 f"on {self.device}.")
        minutes = self.schedule.every_minutes
        self.log(f"Saving every {self.cfg.save_every} steps" + (f" and every {minutes:g} minutes" if minutes else "")
                 + f". {saves.start_note(self.out)}")

    def _start_fresh(self) -> None:
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            data.write_split(self.out, self.split)
            texts.write_snapshot(self.out, self.texts)
            self.metrics.discard()  # lines of a run that never saved
        self.log(f"Starting a new run in {self.out}: {self.model_name}, {len(self.train_set)} training "
                 f"crops of {self.cfg.crop_seconds:g} s, {len(self.val_set)} validation crops, "
                 f"{self.total_steps} steps of {self.effective_batch} crops, "
                 f"{self.trainable:,} trainable of {self.total_params:,} parameters.")
        for note in (data.short_segments_note(self.shards, self.crop_frames, self.spec.frame_rate),
                     build.warmup_note(self.cfg.warmup_steps, self.total_steps)):
            if note:
                self.log(note)

    def complete(self) -> bool:
        """Is the run at its last step with its final adapter written (a previous session may have
        died while writing the adapters)?"""
        if self.step < self.total_steps:
            return False
        facts = self.out / ADAPTERS_DIR / "final" / "training.json"
        return facts.exists() and atomic.read_json(facts).get("step") == self.step

    def start(self) -> None:
        """Start (or continue) the WandB run, sample the base model at step 0, and start the
        training RNG streams."""
        cfg = self.cfg
        if self.main:
            facts = {**config.to_dict(cfg), "model": self.model_name, "effective_batch": self.effective_batch,
                     "crop_frames": self.crop_frames, "train_crops": len(self.train_set),
                     "val_crops_used": len(self.val_set), "trainable_params": self.trainable,
                     "lora_config": self.lora_config, "world_size": self.accelerator.num_processes}
            self.wandb_run_id = tracking.start(
                mode=cfg.wandb, project=cfg.wandb_project, directory=self.out, config=facts,
                run_id=self.wandb_run_id, name=cfg.wandb_name or self.out.name,
            )
        if self.step == 0 and cfg.sample_every:
            self.write_samples("base")  # what the untouched model makes of the prompts, to compare against
        # The training RNG streams start here: restored from the checkpoint, or taken now for a fresh
        # run (so a stop before the first step resumes identically). Nothing above may matter.
        if self.resumed_from is not None:
            checkpoint.set_rng_state(self.rng_after_step)
        else:
            self.rng_after_step = checkpoint.rng_state()
        self.schedule.restart()  # minutes to the first time-based save count from here

    def progress_bar(self):
        """A tqdm bar over the run's steps, starting at the current one (off when quiet)."""
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                    disable=self.quiet or not self.main, smoothing=0.1)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches; returns its metrics.

        A step whose loss or gradient norm is not finite is skipped (``nbutils.train.guard``); its
        metrics say so and name its batch's source tracks. A stop during the optimizer update is held
        until the update is done; the step's metrics are recorded before the KeyboardInterrupt goes
        on. A stop before it discards the half-done step.
        """
        started = time.perf_counter()
        self.train_mode()
        cursor = self.cursor
        per_codebook, tokens = self._accumulate()
        grad_norm = float(self._clip_gradients())
        per_codebook = self.accelerator.reduce(per_codebook, reduction="mean")  # every process decides alike
        loss = float(per_codebook.mean())
        scaler = self.accelerator.scaler
        skip = self.guard.reason_to_skip(loss, grad_norm, scaler is not None and scaler.is_enabled())
        lr = self.scheduler.get_last_lr()[0]
        interrupted = self._update(skip=skip is not None)
        if skip is None and self.accelerator.optimizer_step_was_skipped:
            skip = guard.SCALER_SKIP  # counted, not handled twice: the scaler already skipped it
        row = history.step_row(self, per_codebook, tokens, grad_norm, lr, time.perf_counter() - started)
        tracks = self.sampler.tracks(cursor) if skip else []
        row.update(self.guard.record(self.step, loss, skip, tracks))
        if skip:
            self.log(f"Step {self.step} skipped: {skip}; the weights were not changed. Tracks: {', '.join(tracks)}.")
        else:
            self.last_train = loss
        if interrupted:
            self.metrics.record(row)
            raise KeyboardInterrupt
        faults.point("step", step=self.step)
        return row

    def _accumulate(self):
        """Forward and backward over this step's micro-batches (gradients synced on the last one)."""
        import torch

        from nbutils.train import labels as L

        acc = self.accelerator
        micro = self.sampler.micro_batches(self.cursor)
        per_codebook = torch.zeros(self.spec.num_codebooks, device=self.device)
        tokens = 0
        for i, examples in enumerate(micro):
            batch = self.collate(examples).to(self.device)
            tokens += batch.tokens
            sync = contextlib.nullcontext() if i == len(micro) - 1 else acc.no_sync(self.model)
            with sync:
                with self.autocast():
                    logits = self.model(**batch.model_inputs()).logits
                loss, codebooks = L.mean_loss(*L.codebook_ce(logits, batch.labels, self.pad_id))
                if faults.armed("nan-loss", step=self.step + 1):  # the tests' poisoned batch
                    loss, codebooks = loss * float("nan"), codebooks * float("nan")
                elif faults.armed_from("high-loss", self.step + 1):  # the tests' runaway loss
                    loss, codebooks = loss * faults.HIGH_LOSS, codebooks * faults.HIGH_LOSS
                acc.backward(loss / len(micro))
            per_codebook += codebooks.detach() / len(micro)
            faults.point("micro", step=self.step + 1)
            faults.point("interrupt", step=self.step + 1)
        return per_codebook, tokens

    def _clip_gradients(self):
        """Unscale (fp16) and clip the gradients; returns their norm before clipping."""
        import torch

        acc = self.accelerator
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.cfg.max_grad_norm > 0:
            return acc.clip_grad_norm_(params, self.cfg.max_grad_norm)
        acc.unscale_gradients()
        return torch.norm(torch.stack([p.grad.detach().float().norm() for p in params if p.grad is not None]))

    def _update(self, skip: bool = False) -> bool:
        """The optimizer update, the cursor and the RNG snapshot, as one uninterruptible block.

        Args:
            skip: Do not apply this step: no optimizer or schedule step, and the random state goes
                back to where the step began, so it leaves no trace but the moved data cursor.

        Returns:
            Whether a stop arrived during it (the step is done; the caller stops after recording it).
        """
        try:
            with checkpoint.hold_interrupts():
                if skip:
                    if self.rng_after_step:  # empty only in the time estimate, which never resumes
                        checkpoint.set_rng_state(self.rng_after_step)
                else:
                    self.optimizer.step()
                    if not self.accelerator.optimizer_step_was_skipped:
                        self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.cursor = self.sampler.advance(self.cursor)
                self.step += 1
                self.rng_after_step = checkpoint.rng_state()
        except KeyboardInterrupt:
            return True
        return False

    def after_step(self, row: dict[str, Any]) -> None:
        """Record the step's metrics; evaluation, checkpoint, samples and metric flushes when due.

        Raises:
            guard.Diverged: the run diverged (see ``nbutils.train.guard``); nothing of it was saved.
        """
        cfg, step = self.cfg, self.step
        self.metrics.record(row)
        diverged = self.guard.verdict(step=step, lr=cfg.lr, precision=self.settings["precision"],
                                      saved=self.saved_at, out=str(self.out))
        if diverged is not None:
            self.metrics.flush()  # the skipped steps and their tracks, for the user to look at
            raise diverged
        if step % (cfg.eval_every or cfg.save_every) == 0:
            self.validate()
        due = self.schedule.due(step)
        if due and self.guard.troubled:  # the loss is running away: keep the last good checkpoint for now
            self.schedule.wait(due)
        elif due:
            self.save(folder=due == "steps")
        if cfg.sample_every and step % cfg.sample_every == 0:
            self.write_samples("lora")
        if step % max(1, cfg.log_every) == 0:
            self.metrics.flush()

    def finish(self) -> None:
        """Final evaluation, checkpoint, adapters (best, final), samples, artifacts, optional Hub push."""
        cfg = self.cfg
        fresh_eval = self.evaluated_at != self.step
        if fresh_eval:
            self.validate()
        if fresh_eval or self.saved_at != self.step:  # the checkpoint must hold the final best/val
            self.save()
        if not self.main:
            return
        faults.point("interrupt-finish", step=self.step)
        final = self.save_adapter("final")
        best = self.out / ADAPTERS_DIR / "best"
        if self.best_step is None:
            self.log("No validation tracks: adapters/best is the final adapter.")
            self.save_adapter("best")
        if cfg.sample_every and not (self.out / SAMPLES_DIR / checkpoint.step_name(self.step)).exists():
            self.write_samples("lora")
        likelihood.at_finish(self)  # base vs final adapter on the validation tracks: OUT/heldout.json, WandB
        self.metrics.flush()
        tracking.log_artifact(final, f"{self.out.name}-final", aliases=["final", f"step-{self.step}"])
        tracking.log_artifact(best, f"{self.out.name}-best", aliases=["best"])
        tracking.summary({"best_val_loss": self.best_val, "best_step": self.best_step})
        if cfg.push_to_hub:
            from nbutils.train import hub

            url = hub.push(final, cfg.push_to_hub, private=cfg.hub_private)
            self.log(f"Adapter uploaded to {url}")

    def stop(self, reason: str, error: BaseException | None = None) -> BaseException:
        """After a stop (``"stopped"``: save the last completed step), ``"out of memory"`` or
        ``"diverged"`` (``error``: the ``guard.Diverged``; nothing is saved): end the WandB run, let
        go of the model, and return the error to raise.

        Call it outside the ``except`` block that caught the error: the caught error's frames (the
        model's forward and its activations) are gone once it ends.
        """
        if reason == "stopped":
            self.optimizer.zero_grad(set_to_none=True)  # a half-accumulated step is discarded
            self.log(saves.on_stop(self, self.out / checkpoint.LATEST))
            error = KeyboardInterrupt()
        elif reason == "out of memory":
            error = presets.out_of_memory_error(self.batch_size, self.grad_accum)
        tracking.finish()
        self.release()
        return error

    def release(self) -> None:
        """Let go of the model, optimizer and scheduler, and of their GPU memory.

        Called when training stops on an interrupt or an error: IPython keeps the last exception
        and its frames (which hold this trainer), and the re-run that resumes must not find the
        old model still filling the GPU next to the new one.
        """
        from nbutils.core import devices

        self.accelerator.free_memory()
        self.model = self.optimizer = self.scheduler = self.peft = self.base = None
        devices.free_memory()

    # -- evaluation ----------------------------------------------------------------------------

    def validate(self) -> None:
        """The validation loss (``validation.evaluate``): record it, keep adapters/best up to date."""
        from nbutils.train import validation

        result = validation.evaluate(self)
        self.evaluated_at = self.step
        if result is not None:
            self.metrics.record(result)
            self.update_best()

    def update_best(self) -> bool:
        """Save adapters/best when the last validation loss is the lowest so far (and finite)."""
        if self.last_val is None or not math.isfinite(self.last_val) or (
                self.best_val is not None and self.last_val >= self.best_val):
            return False
        self.best_val, self.best_step = self.last_val, self.step
        if self.main:
            self.save_adapter("best")
        return True

    # -- checkpoints, adapters, samples ----------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything ``latest.pt`` holds (see ``checkpoint.state_of``)."""
        return checkpoint.state_of(self)

    def restore(self, state: dict[str, Any]) -> list[str]:
        """Continue from a checkpoint (see ``checkpoint.restore``); returns notes about accepted changes.

        Raises:
            UserError: when a setting or fact the weights depend on differs (the ``must-match``
                fields of ``TrainConfig``, and ``DERIVED_MUST_MATCH``).
        """
        return checkpoint.restore(self, state, DERIVED_MUST_MATCH)

    def save(self, folder: bool = True) -> None:
        """Write latest.pt, plus a step folder unless ``folder`` is False (a time-based save), after
        flushing the metrics (main process); print the bytes written and the free space.

        Raises:
            guard.Diverged: the weights or optimizer state are not finite (nothing is written).
        """
        self.schedule.restart()
        if not self.main:
            return
        self.metrics.flush()
        model = self.unwrapped()
        written, removed = checkpoint.save(
            self.out, self.state(), lambda target: lora.write_adapter(model, target, self.model_name),
            self.cfg.keep_checkpoints, folder=folder, keep_previous=self._latest_good and self.saved_at != self.step)
        self.saved_at, self._latest_good = self.step, True
        self.log(saves.save_note(self.step, written, removed, self.out))

    def save_adapter(self, name: str) -> Path:
        """Write ``OUT/adapters/<name>`` (see ``hub.write_adapter``): a PEFT folder, model card, facts.

        Raises:
            guard.Diverged: a LoRA weight is not finite (the folder there is kept as it was).
        """
        from nbutils.train import hub

        return hub.write_adapter(self, name, self.out / ADAPTERS_DIR / name)

    def write_samples(self, kind: str) -> Path | None:
        """Samples of the fixed prompts and seeds into ``samples/step-XXXXXX`` (main process only);
        a failure other than out of memory is logged and training goes on (``samples.write_for``)."""
        from nbutils.train import samples

        if not self.main:
            return None
        self._in_train_mode = False  # generation puts the model in eval mode
        return samples.write_for(self, kind, self.out / SAMPLES_DIR / checkpoint.step_name(self.step))
