"""Features of training segments for the copy check, computed once and cached beside the shards.

A segment's codes are decoded with the model's EnCodec (the path every generated clip takes, so a
copied token sequence sounds exactly like its source), then described twice: CLAP embeddings of
10 s windows every 5 s (``WINDOW_SECONDS``, ``WINDOW_HOP``), and its chroma sequence
(``chroma.sequence``).

The cache is ``TOKENS/copycheck/<shard>.<key>.npz``, one file per shard, where ``key`` hashes the
CLAP model, the shard's codes (its sha256), the model whose EnCodec decodes them and the feature
settings. A file holds the segments
computed so far; a run that needs more adds them and rewrites the file (write-to-temp +
``os.replace``), so an interrupted build keeps every finished shard. A re-tokenized shard or
another CLAP gets a new key: the stale file of that shard is deleted once the new one is written.
A token folder that cannot be written (read-only) still works: the features are then computed
again on every run, and a note says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from nbutils.core import atomic, clap
from nbutils.evaluate import chroma

FORMAT = "nbutils-copyindex/1"
FOLDER = "copycheck"
WINDOW_SECONDS = 10.0  # CLAP's own window
WINDOW_HOP = 5.0  # windows overlap by half: a copied passage is never far from a window start
SAVE_EVERY = 128  # segments computed between two writes of a shard's cache file


@dataclasses.dataclass
class Entry:
    """One segment's features."""

    chroma: np.ndarray
    """``(frames, 12)`` unit-length chroma frames (``chroma.sequence``)."""
    clap: np.ndarray
    """``(windows, D)`` unit-length CLAP embeddings."""
    starts: np.ndarray
    """``(windows,)`` start of each window in the segment, seconds."""


def window_starts(samples: int, sample_rate: int) -> list[int]:
    """Window starts (samples) covering ``samples``: every ``WINDOW_HOP``, the last one ending at the end."""
    size, hop = int(WINDOW_SECONDS * sample_rate), int(WINDOW_HOP * sample_rate)
    if samples <= size:
        return [0]
    starts = list(range(0, samples - size + 1, hop))
    return starts + ([samples - size] if starts[-1] != samples - size else [])


def describe(scorer: clap.Clap, waves: list[np.ndarray], sample_rate: int) -> list[Entry]:
    """Features of decoded audio ``(samples, channels)``, one ``Entry`` each."""
    windows, owner, starts = [], [], []
    for i, wave in enumerate(waves):
        for start in window_starts(len(wave), sample_rate):
            windows.append(wave[start : start + int(WINDOW_SECONDS * sample_rate)])
            owner.append(i)
            starts.append(start / sample_rate)
    embedded = clap.audio_embeddings(scorer, windows, sample_rate) if windows else np.zeros((0, 0), np.float32)
    owner, starts = np.asarray(owner), np.asarray(starts, np.float32)
    return [Entry(chroma=chroma.sequence(w, sample_rate), clap=embedded[owner == i].astype(np.float32),
                  starts=starts[owner == i]) for i, w in enumerate(waves)]


def cache_key(clap_name: str, shard, decoder: str) -> str:
    """What a shard's cached features depend on: CLAP, the shard's codes, what decodes them, the settings."""
    facts = {"format": FORMAT, "clap": clap_name, "codes": shard.meta.get("sha256"), "decoder": decoder,
             "window": WINDOW_SECONDS,
             "hop": WINDOW_HOP, "chroma": [chroma.HOP_SECONDS, chroma.N_FFT_SECONDS, chroma.SMOOTH_FRAMES]}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(tokens_dir: str | Path, shard, key: str) -> Path:
    return Path(tokens_dir) / FOLDER / f"{shard.index_path.stem}.{key}.npz"


def read(path: Path) -> dict[int, Entry]:
    """The entries of one cache file ({} if it is missing or unreadable: computed again)."""
    try:
        with np.load(path) as npz:
            if str(npz["format"]) != FORMAT:
                return {}
            c_off, w_off = npz["chroma_offsets"], npz["clap_offsets"]
            return {int(s): Entry(chroma=npz["chroma"][c_off[i] : c_off[i + 1]].astype(np.float32),
                                  clap=npz["clap"][w_off[i] : w_off[i + 1]],
                                  starts=npz["starts"][w_off[i] : w_off[i + 1]])
                    for i, s in enumerate(npz["segments"])}
    except (OSError, ValueError, KeyError):
        return {}


def write(path: Path, entries: dict[int, Entry]) -> None:
    """All ``entries`` of one shard, atomically; then the shard's stale files (other keys) are deleted."""
    order = sorted(entries)
    items = [entries[s] for s in order]
    dim = next((e.clap.shape[1] for e in items if e.clap.size), 0)
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, format=np.asarray(FORMAT), segments=np.asarray(order, np.int64),
                     chroma=np.concatenate([e.chroma for e in items]).astype(np.float16),
                     chroma_offsets=np.cumsum([0] + [len(e.chroma) for e in items]),
                     clap=np.concatenate([e.clap.reshape(-1, dim) for e in items]).astype(np.float32),
                     clap_offsets=np.cumsum([0] + [len(e.clap) for e in items]),
                     starts=np.concatenate([e.starts for e in items]).astype(np.float32))
    shard_name = path.name.split(".")[0]
    for stale in path.parent.glob(f"{shard_name}.*.npz"):
        if stale.name != path.name:
            stale.unlink(missing_ok=True)


class Cache:
    """Features of segments, read from and added to the per-shard cache files under ``tokens_dir``."""

    def __init__(self, tokens_dir: str | Path, scorer: clap.Clap, decode, sample_rate: int, decoder: str):
        """``decode(shard, index) -> (samples, channels)``: a segment's audio at ``sample_rate``;
        ``decoder`` names what decodes (the model whose EnCodec it is), part of the cache key."""
        self.tokens_dir, self.scorer, self.decode, self.sample_rate = Path(tokens_dir), scorer, decode, sample_rate
        self.decoder = decoder
        self.computed = 0
        self.unwritable: str | None = None

    def entries(self, wanted: list[tuple], batch: int = 8, bar=None) -> list[Entry]:
        """The features of every ``(shard, index)`` in ``wanted``, computing only what no cache file holds."""
        by_shard: dict[Path, tuple] = {}
        for shard, index in wanted:
            by_shard.setdefault(shard.index_path, (shard, []))[1].append(index)
        found: dict[tuple[Path, int], Entry] = {}
        for key, (shard, indices) in by_shard.items():
            path = cache_path(self.tokens_dir, shard, cache_key(self.scorer.name, shard, self.decoder))
            have = read(path)
            missing = [i for i in dict.fromkeys(indices) if i not in have]
            if bar is not None:
                bar.update(len(indices) - len(missing))
            unsaved = 0
            for first in range(0, len(missing), batch):
                part = missing[first : first + batch]
                have.update(zip(part, describe(self.scorer, [self.decode(shard, i) for i in part], self.sample_rate)))
                self.computed += len(part)
                unsaved += len(part)
                if bar is not None:
                    bar.update(len(part))
                if unsaved >= SAVE_EVERY or first + batch >= len(missing):  # a kill loses little
                    self._save(path, have)
                    unsaved = 0
            found.update({(key, i): have[i] for i in indices})
        return [found[(shard.index_path, i)] for shard, i in wanted]

    def _save(self, path: Path, entries: dict[int, Entry]) -> None:
        try:
            write(path, entries)
        except OSError as err:  # a read-only token folder: work on, say that nothing is kept
            if self.unwritable is None:
                print(f"Note: cannot keep the copy-check features in {path.parent} ({err.strerror or err}); "
                      "they are computed again next time.", file=sys.stderr)
            self.unwritable = str(err)
