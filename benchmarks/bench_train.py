"""Training benchmark on a real-size musicgen-small (random weights, CPU, short crops).

    python benchmarks/bench_train.py [--pairs 5] [--seconds 1.0] [--threads 1] [--workdir DIR]

Everything is measured in one run on this machine and printed as ratios (targets from issue 3):

1. **Loop overhead**: the training loop's time per optimizer step (data, delay-pattern labels,
   per-codebook loss, clipping, scheduler, RNG snapshot, metrics, progress bar -- the ``Trainer``'s
   ``train_step`` and ``after_step`` exactly as ``train.run`` calls them) vs a bare forward + backward + AdamW
   step of the same LoRA model on the same, pre-collated batches. Target: <= 5 %.
   Steps are measured in pairs (loop step, then a bare step on its batches; the order alternates)
   and the median of the pair ratios is reported. The ratio uses this process's CPU time on one
   thread (``--threads 1``): on a shared machine wall time mostly measures the neighbours, CPU
   time measures the work. Wall times are printed too.
2. **Checkpoint size**: ``latest.pt`` (LoRA + optimizer + RNG + ...) vs the full model's
   ``state_dict``. Target: <= 2 %.
3. **Resume**: ``python -m nbutils train`` resuming from ``latest.pt`` for one more step vs the
   same command starting fresh for one step -- each a new process (imports, model load,
   checkpoint load, one step, final save), timed from the outside (mean of two of each,
   alternated); plus the in-process time of reading ``latest.pt`` and restoring it.
4. **Drive bytes** (issue 11): what the saves of a 2,000-step run with ``save_every`` 200 write,
   replace or delete in the run folder. On Google Drive a replaced or deleted file goes to the
   Trash and keeps counting against the quota until the Trash is emptied, so both count. The
   ten step-count saves (steps 200, 400, ... 2000) run for real, with the trainer's own ``save``,
   on the LoRA and AdamW state of a musicgen-small-shaped decoder after one real step (their
   size does not depend on the step), in a fresh run folder; ``adapters/best`` is rewritten at
   every save (the worst case: the validation loss improved each time), ``adapters/final`` at
   the end, and 2,000 metrics lines are appended. Each file's fate is read from the filesystem
   (inode, size, mtime before and after every save): new inodes are written bytes, vanished
   ones replaced or deleted, growth of an appended file is written. Not counted: audio samples
   (about 0.5 MB per prompt per ``sample_every``, unchanged) and time-based saves (their number
   depends on the GPU's speed; each writes what the printed ``latest.pt`` line says).
   ``--only drive`` runs just this part, with T5 and EnCodec scaled down (the LoRA, and so
   every byte counted, lives in the decoder, which keeps musicgen-small's shape).

The model has musicgen-small's shapes (T5-base text encoder, EnCodec 32 kHz, 24-layer 1024-wide
decoder, 4 x 2048 codes) with random weights, written once with ``save_pretrained`` and loaded
through the normal local-folder path. The token shards hold random codes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clock import Clock  # noqa: E402 - benchmarks/clock.py, beside this script
from nbutils.core import models, synth  # noqa: E402
from nbutils.tokenize import shards
from nbutils.train import checkpoint
from nbutils.train import stage as train
from nbutils.train.trainer import Trainer


def small_config(quick: bool = False, small_decoder: bool = False):
    """musicgen-small's configuration (transformers' conversion of facebook/musicgen-small).

    ``quick``: the same structure scaled down to a few MB, only to check that this script runs;
    with ``small_decoder`` the decoder keeps musicgen-small's shape (what the LoRA size depends on).
    """
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

    text = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
    codec = EncodecConfig(sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2],
                          codebook_size=2048, num_filters=64, hidden_size=128, codebook_dim=128,
                          num_lstm_layers=2, use_causal_conv=False, normalize=False, use_conv_shortcut=False)
    decoder = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096)
    if quick:
        text = T5Config(vocab_size=32128, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
        codec = EncodecConfig(**{**codec.to_dict(), "num_filters": 4, "hidden_size": 16, "codebook_dim": 16})
        if not small_decoder:
            decoder = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64)
    decoder = MusicgenDecoderConfig(vocab_size=2048, num_codebooks=4, max_position_embeddings=2048, dropout=0.1,
                                    pad_token_id=2048, bos_token_id=2048, decoder_start_token_id=2048, **decoder)
    return MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder)


def build_model(folder: Path, quick: bool = False, small_decoder: bool = False) -> int:
    """Write the random musicgen-small (+ a processor) to ``folder``; return its state_dict bytes."""
    from transformers import EncodecFeatureExtractor, MusicgenForConditionalGeneration, MusicgenProcessor

    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration(small_config(quick, small_decoder))
    model.generation_config.decoder_start_token_id = model.generation_config.pad_token_id = 2048
    model.save_pretrained(folder)
    MusicgenProcessor(feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=32000),
                      tokenizer=models.tiny_tokenizer()).save_pretrained(folder)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    del model
    gc.collect()
    return size


def write_tokens(folder: Path, tracks: int = 24, seconds: float = 10.0) -> None:
    rng = np.random.default_rng(0)
    writer = shards.ShardWriter(folder, "archive_batch_0001", {"model": "bench", "sample_rate": 32000,
                                                               "num_codebooks": 4})
    for t in range(tracks):
        style = synth.STYLES[t % len(synth.STYLES)]
        frames = int(seconds * 50)
        writer.add(shards.Segment(path=f"{t}.wav", start=0.0, frames=frames, description=synth.describe(style),
                                  track=f"b/{t}.wav"), rng.integers(0, 2048, size=(frames, 4)))
    writer.commit()


def bare_step(model, optimizer, batches) -> None:
    """Forward + backward + optimizer step, nothing else (the model computes its own loss)."""
    for batch in batches:
        loss = model(**batch.model_inputs(), labels=batch.labels).loss
        (loss / len(batches)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def start(cfg):
    """Model load + resume-or-start, as ``train.run`` does; returns the trainer."""
    trainer = Trainer(cfg, log=lambda message: None, quiet=True)
    trainer.begin()
    trainer.start()  # WandB is disabled and sample_every 0: only the training RNG streams start
    return trainer


def loop_step(trainer, bar) -> Clock:
    """One step of the real loop (``train.run``'s body)."""
    with Clock() as clock:
        row = trainer.train_step()
        bar.update(1)
        bar.set_postfix(loss=f"{row['train/loss']:.3f}", refresh=False)
        trainer.after_step(row)
    return clock


def timed_bare_step(trainer, model, optimizer, batches) -> Clock:
    trainer.train_mode()  # as the loop: encoders in eval mode, the rest training
    with Clock() as clock:
        bare_step(model, optimizer, batches)
    return clock


def cli_seconds(cfg, out: Path, max_steps: int, threads: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``python -m nbutils train`` (a new process) with ``cfg`` and ``max_steps``."""
    import resource

    args = ["--tokens", cfg.tokens, "--out", str(out), "--model", cfg.model, "--crop-seconds",
            str(cfg.crop_seconds), "--batch-size", "2", "--grad-accum", "2", "--max-steps", str(max_steps),
            "--save-every", "1000000", "--sample-every", "0", "--wandb", "disabled", "--precision", "fp32",
            "--grad-checkpointing", "off", "--val-fraction", "0"]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nbutils", "train", *args], cwd=root, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def _files(folder: Path) -> dict[int, tuple[str, int, int]]:
    """``{inode: (path, size, mtime_ns)}`` of every file under ``folder``."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file():
            st = path.stat()
            found[st.st_ino] = (str(path), st.st_size, st.st_mtime_ns)
    return found


def _churn(before: dict, after: dict) -> tuple[int, int]:
    """``(written, removed)`` bytes between two ``_files`` snapshots.

    A new inode was written; a vanished one was replaced or deleted (on Drive: to the Trash). A
    rename keeps its inode and mtime: it moves no bytes. A file that grew in place was appended to.
    """
    written = removed = 0
    for inode, (path, size, mtime) in after.items():
        old = before.get(inode)
        if old is None:
            written += size
        elif old[2] != mtime:
            if old[0] == path and size >= old[1]:
                written += size - old[1]  # appended (metrics.jsonl)
            else:  # rewritten, or the inode of a deleted file reused
                written, removed = written + size, removed + old[1]
    removed += sum(size for inode, (_, size, _) in before.items() if inode not in after)
    return written, removed


def drive_bytes(trainer, out: Path, steps: int = 2000, every: int = 200) -> dict:
    """Bytes written and removed in ``out`` by the saves of a ``steps``-step run saving every ``every``.

    The trainer's own ``save`` (latest.pt, the step folder, rotation) runs at every step-count save,
    ``adapters/best`` is rewritten at each one (worst case) and ``adapters/final`` at the end.
    """
    from nbutils.train import history

    trainer.out = out
    trainer.metrics = history.MetricsLog(out, writer=True)
    row = trainer.train_step()  # a real metrics line (and AdamW's state), to append 2,000 of
    written = removed = 0
    per_save = []
    for step in range(every, steps + 1, every):
        before = _files(out) if out.exists() else {}
        for s in range(step - every + 1, step + 1):
            trainer.metrics.record({**row, "step": s})
        trainer.step = step
        trainer.save()
        trainer.save_adapter("best")
        w, r = _churn(before, _files(out))
        per_save.append((step, w, r))
        written, removed = written + w, removed + r
    before = _files(out)
    trainer.save_adapter("final")
    w, r = _churn(before, _files(out))
    written, removed = written + w, removed + r
    live = sum(size for _, size, _ in _files(out).values())
    return {"written": written, "removed": removed, "live": live, "per_save": per_save, "saves": len(per_save),
            "latest": (out / checkpoint.LATEST).stat().st_size,
            "keep_checkpoints": trainer.cfg.keep_checkpoints}


def print_drive_bytes(result: dict) -> None:
    mb = 2**20
    print(f"4. Drive bytes:     2,000 steps, save_every 200 ({result['saves']} saves, keep_checkpoints "
          f"{result['keep_checkpoints']}): written {result['written'] / mb:.1f} MB, replaced or deleted "
          f"{result['removed'] / mb:.1f} MB (Drive's Trash) -> {(result['written'] + result['removed']) / mb:.1f} MB "
          f"written + trashed; {result['live'] / mb:.1f} MB left in the run folder; latest.pt "
          f"{result['latest'] / mb:.1f} MB")
    print("   per save (written / trashed MB): " + ", ".join(
        f"{step}: {w / mb:.1f}/{r / mb:.1f}" for step, w, r in result["per_save"]))


def drive_only(args, work: Path) -> None:
    """``--only drive``: the Drive-bytes measurement alone (T5 and EnCodec scaled down)."""
    model_dir = work / "musicgen-small-decoder"
    build_model(model_dir, quick=True, small_decoder=True)
    write_tokens(work / "tokens")
    cfg = train.TrainConfig(
        tokens=str(work / "tokens"), out=str(work / "run"), model=str(model_dir), crop_seconds=args.seconds,
        batch_size=2, grad_accum=2, max_steps=10_000, save_every=200, sample_every=0, wandb="disabled",
        precision="fp32", grad_checkpointing="off", warmup_steps=10,
    )
    trainer = start(cfg)
    result = drive_bytes(trainer, work / "drive-run")
    print_drive_bytes(result)
    print(json.dumps({k: v for k, v in result.items() if k != "per_save"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="measured (loop step, bare step) pairs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU-time ratios need 1)")
    parser.add_argument("--seconds", type=float, default=1.0, help="crop length in seconds")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp folder)")
    parser.add_argument("--only", choices=("all", "drive"), default="all",
                        help="drive: only the Drive-bytes measurement (4)")
    parser.add_argument("--quick", action="store_true",
                        help="a scaled-down model and 2 pairs: checks that the script runs, numbers mean nothing")
    args = parser.parse_args()
    if args.quick:
        args.pairs = 2
    torch.set_num_threads(args.threads)
    models.quiet_transformers()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; files in {work}", flush=True)
    if args.only == "drive":
        return drive_only(args, work)

    model_dir = work / "musicgen-small-random"
    full_bytes = build_model(model_dir, args.quick)
    write_tokens(work / "tokens")
    cfg = train.TrainConfig(
        tokens=str(work / "tokens"), out=str(work / "run"), model=str(model_dir), crop_seconds=args.seconds,
        batch_size=2, grad_accum=2, max_steps=10_000, save_every=10**9, eval_every=10**9, sample_every=0,
        wandb="disabled", precision="fp32", grad_checkpointing="off", warmup_steps=10, log_every=10,
    )

    # -- 1. loop overhead: pairs of (loop step, bare step on the same batches) -------------
    trainer = start(cfg)
    model = trainer.unwrapped()
    bare_optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    bar = trainer.progress_bar()
    loop_step(trainer, bar)  # warm-up: allocations, first-call costs
    loops, bares, ratios = [], [], []
    for pair in range(args.pairs):
        cursor = trainer.cursor
        batches = [trainer.collate(mb) for mb in trainer.sampler.micro_batches(cursor)]
        if pair % 2:  # alternate the order so neither side always runs on a warmer cache
            bares.append(timed_bare_step(trainer, model, bare_optimizer, batches))
            loops.append(loop_step(trainer, bar))
        else:
            loops.append(loop_step(trainer, bar))
            bares.append(timed_bare_step(trainer, model, bare_optimizer, batches))
        ratios.append(loops[-1].cpu / bares[-1].cpu)
        print(f"pair {pair + 1}: loop {loops[-1].cpu:.2f} s CPU ({loops[-1].wall:.2f} s wall), bare "
              f"{bares[-1].cpu:.2f} s CPU ({bares[-1].wall:.2f} s wall), ratio {ratios[-1]:.3f}", flush=True)
    bar.close()

    # -- 2. checkpoint size, and reading it back ------------------------------------------
    started = time.perf_counter()
    trainer.save()
    save_seconds = time.perf_counter() - started
    latest_bytes = (Path(cfg.out) / checkpoint.LATEST).stat().st_size
    started = time.perf_counter()
    state, _ = checkpoint.load(cfg.out)
    trainer.restore(state)
    restore_seconds = time.perf_counter() - started
    drive = drive_bytes(trainer, work / "drive-run")
    del trainer, model, bare_optimizer, state
    gc.collect()

    # -- 3. resume vs fresh start, each a new process ----------------------------------------
    cli_seconds(cfg, work / "resumed", 2, args.threads)  # a run to resume from (at step 2); warms caches
    fresh_runs, resumed_runs = [], []
    for attempt in range(1 if args.quick else 2):  # alternate, so neither kind always runs on warmer caches
        fresh_runs.append(cli_seconds(cfg, work / f"fresh-{attempt}", 1, args.threads))
        resumed_runs.append(cli_seconds(cfg, work / "resumed", 3 + attempt, args.threads))  # +1 step each
    fresh = tuple(statistics.mean(run[i] for run in fresh_runs) for i in (0, 1))
    resumed = tuple(statistics.mean(run[i] for run in resumed_runs) for i in (0, 1))

    loop, bare = statistics.median(c.cpu for c in loops), statistics.median(c.cpu for c in bares)
    wall_ratio = statistics.median(a.wall / b.wall for a, b in zip(loops, bares))
    results = {
        "loop_step_cpu_s": round(loop, 3), "bare_step_cpu_s": round(bare, 3),
        "loop_overhead_pct": round(100 * (statistics.median(ratios) - 1), 2),
        "loop_overhead_wall_pct": round(100 * (wall_ratio - 1), 2),
        "latest_pt_mb": round(latest_bytes / 2**20, 2), "full_state_dict_mb": round(full_bytes / 2**20, 1),
        "latest_pt_pct_of_full": round(100 * latest_bytes / full_bytes, 3), "save_s": round(save_seconds, 2),
        "read_and_restore_s": round(restore_seconds, 2),
        "fresh_process_s": round(fresh[0], 1), "resume_process_s": round(resumed[0], 1),
        "fresh_process_cpu_s": round(fresh[1], 1), "resume_process_cpu_s": round(resumed[1], 1),
        "resume_vs_fresh_cpu": round(resumed[1] / fresh[1], 3), "resume_vs_fresh_wall": round(resumed[0] / fresh[0], 3),
        "crop_seconds": args.seconds, "batch": "2 x 2", "threads": torch.get_num_threads(), "pairs": args.pairs,
    }
    print()
    print(f"1. loop overhead:   median pair ratio {statistics.median(ratios):.3f} -> "
          f"{results['loop_overhead_pct']:+.2f} % CPU time (loop {loop:.2f} s/step, bare {bare:.2f} s/step; "
          f"target <= 5 %); wall time {results['loop_overhead_wall_pct']:+.2f} %")
    print(f"2. latest.pt size:  {results['latest_pt_mb']} MB vs full state_dict {results['full_state_dict_mb']} MB "
          f"-> {results['latest_pt_pct_of_full']} %  (target <= 2 %); written in {save_seconds:.2f} s, "
          f"read + restored in {restore_seconds:.2f} s")
    print(f"3. resume:          {resumed[1]:.1f} s CPU / {resumed[0]:.1f} s wall (new process: imports, model, "
          f"latest.pt, one step) vs fresh start {fresh[1]:.1f} s CPU / {fresh[0]:.1f} s wall -> "
          f"x{results['resume_vs_fresh_cpu']} CPU, x{results['resume_vs_fresh_wall']} wall")
    print_drive_bytes(drive)
    results.update(drive_written_mb=round(drive["written"] / 2**20, 1),
                   drive_removed_mb=round(drive["removed"] / 2**20, 1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
