"""What a ZIP's contents deserve a word about: warnings shown under its line, notes in the ledger.

None of these stops a ZIP. Two members whose names are the same once normalized are both
tokenized (each from its own scratch file), but they share a track id and a description, so
the user should know. Nested ZIPs are not opened, and are named. A track whose codes are
(nearly) one value throughout decoded to something that is not music (DC, a test tone, garbage
that passed the sample checks) and would teach the model silence.
"""

from __future__ import annotations

import unicodedata
from typing import Iterable

import numpy as np

from nbutils.tokenize import archive

LISTED = 5  # names listed in one warning; the rest are counted
CONSTANT_SHARE = 0.9  # one code on >= 90% of the frames (measured, tiny codec: music 9-37%, DC 98%, 1e30 100%)
CONSTANT_MIN_FRAMES = 50  # 1 s at 50 Hz: shorter tracks are too short to judge


def _collision(first: archive.Entry, second: archive.Entry) -> str:
    """The warning for one colliding pair: how the names collide, and what that means for the run."""
    names = f"{first.info.filename!r} and {second.info.filename!r} are"
    shared = "both are tokenized, but they share one track id and description. Rename one to keep them apart."
    if first.info.filename == second.info.filename:
        return f"{names} the same name twice: {shared}"
    if first.path == second.path:
        return f"{names} the same name once normalized (Unicode NFC, '/' separators, no './'): {shared}"
    if first.kind == archive.AUDIO:  # two tracks here, one file on Windows' and macOS' disks
        return (f"{names} names that differ only in case: both are tokenized as two tracks. If they are the same "
                "recording, delete one (it would count twice in training); else rename one (they are one file on "
                "Windows and macOS disks).")
    return (f"{names} names that differ only in case: both are read for descriptions, and on Windows and macOS "
            "disks they are one file. Keep one.")


def duplicates(entries: Iterable[archive.Entry]) -> list[str]:
    """One warning per pair of members whose names collide (same after NFC and case folding).

    Returns:
        Warnings that name both members as stored in the ZIP.
    """
    seen: dict[str, archive.Entry] = {}
    pairs = []
    for entry in entries:
        if entry.kind not in (archive.AUDIO, archive.TEXT):
            continue
        key = unicodedata.normalize("NFC", entry.path.casefold())
        if key in seen:
            pairs.append((seen[key], entry))
        else:
            seen[key] = entry
    warnings = [_collision(first, second) for first, second in pairs[:LISTED]]
    if len(pairs) > LISTED:
        warnings.append(f"... and {len(pairs) - LISTED} more pairs of colliding names.")
    return warnings


def nested_zips(entries: Iterable[archive.Entry]) -> str:
    """A warning naming the ZIPs inside this ZIP ('' if there is none)."""
    names = [e.path for e in entries if e.kind == archive.JUNK and e.reason == archive.NESTED_ZIP]
    if not names:
        return ""
    shown = ", ".join(names[:LISTED]) + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")
    return (f"{len(names)} ZIP file(s) inside this ZIP were not opened: {shown}. Unzip them and put them beside "
            "the other ZIPs to tokenize their audio.")


def constant_share(codes: list[np.ndarray]) -> float:
    """The share of a track's frames that carry its most frequent first-codebook code (0 if too short)."""
    first = np.concatenate([c[:, 0] for c in codes]) if codes else np.zeros(0, np.int64)
    if len(first) < CONSTANT_MIN_FRAMES:
        return 0.0
    return float(np.bincount(first.astype(np.int64)).max() / len(first))


def constant_note(share: float) -> str:
    """The ledger note for a track whose codes are nearly constant ('' below the threshold)."""
    if share < CONSTANT_SHARE:
        return ""
    return (f"warning: nearly constant codes ({share:.0%} of frames share one code): the audio may be a DC offset, "
            "a test tone or corrupt; listen to it, and remove it from the ZIP if it is not music")
