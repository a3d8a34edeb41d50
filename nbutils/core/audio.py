"""Decode any wav / flac / ogg / mp3 into float32 at the model's rate, and cut it into segments.

Files are read block by block and resampled with a streaming soxr resampler, so a one-hour
track costs one segment of memory, not one hour. Every file ends in one of three states, and
the caller is told which and why: its segments were kept; it was skipped (too short, silent);
or it failed (``AudioError``: empty, unreadable, corrupt). Parts of a kept file that are not
encoded (a short tail, a silent segment) are counted in its ``TrackReport``, never dropped
silently.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np

SAMPLE_RATE = 32_000  # Hz: MusicGen's EnCodec works at 32 kHz
HOP_LENGTH = 640  # samples per code frame (EnCodec 32 kHz strides 8*5*4*4)
FRAME_RATE = SAMPLE_RATE // HOP_LENGTH  # 50 code frames per second
SEGMENT_SECONDS = 30.0  # MusicGen trains on 30 s windows
N_SEGMENT = int(SEGMENT_SECONDS * SAMPLE_RATE)  # 960000 samples in a 30-second segment
MIN_SECONDS = 1.0  # files shorter than this are skipped
MIN_TAIL_SECONDS = 5.0  # a track's last partial segment is kept when at least this long
SILENCE_DB = -60.0  # a segment whose peak is below this (dBFS) counts as silent
READ_BLOCK_SECONDS = 10.0  # decode this much source audio per read (bounds memory per file)
RESAMPLE_QUALITY = "HQ"  # soxr quality; librosa's default "soxr_hq" is the same
MIN_SOURCE_RATE = 1_000  # Hz: below this a header is corrupt (a 2 Hz header turns 1 KB into 200 s at 32 kHz)
MAX_PEAK = 1_000.0  # +60 dBFS: float samples beyond this are not audio (corrupt, or integers stored as floats)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
# Audio that libsndfile cannot decode: skipped with a reason that says to convert it (never "not audio").
UNSUPPORTED_AUDIO_EXTENSIONS = (".m4a", ".m4b", ".mp4", ".aac", ".alac", ".wma", ".ape", ".wv", ".ac3", ".amr",
                                ".mka", ".webm")


class AudioError(Exception):
    """A file that cannot be decoded; the message is the reason recorded for it."""


@dataclasses.dataclass
class Piece:
    """One segment of a track at the target rate."""

    start: int
    """First sample of the segment in the track (at the target rate)."""
    audio: np.ndarray
    """float32, shape ``(channels, samples)``."""

    @property
    def samples(self) -> int:
        return int(self.audio.shape[-1])


@dataclasses.dataclass
class TrackReport:
    """What happened to one file, filled in while its segments are read."""

    source_rate: int = 0
    """Sample rate of the file (Hz)."""
    source_channels: int = 0
    seconds: float = 0.0
    """Decoded duration."""
    kept_seconds: float = 0.0
    """Duration of the segments handed to the encoder."""
    segments: int = 0
    silent_segments: int = 0
    silent_seconds: float = 0.0
    tail_dropped_seconds: float = 0.0
    """A last partial segment shorter than the tail minimum (not encoded, but counted)."""
    skipped: str = ""
    """Why the whole file was skipped (too short, silent); empty when segments were kept."""


def is_audio_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def unsupported_reason(name: str) -> str:
    """Why ``name`` is audio this stage cannot read ('' unless its extension is a known unsupported format)."""
    ext = os.path.splitext(name)[1].lower()
    if ext not in UNSUPPORTED_AUDIO_EXTENSIONS:
        return ""
    return f"unsupported audio format {ext}: convert to wav/flac/mp3/ogg"


def frames_for(samples: int, hop_length: int = HOP_LENGTH) -> int:
    """Code frames EnCodec produces for ``samples`` samples (it pads the last frame)."""
    return math.ceil(samples / hop_length)


def peak_db(audio: np.ndarray) -> float:
    """Peak level in dBFS (-inf for digital silence)."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return 20 * math.log10(peak) if peak > 0 else -math.inf


MINUS_3DB = 0.7071  # -3 dB: a centre or surround channel's share of each side in a stereo downmix
# Stereo downmix weights ``(left, right)`` per source channel, in WAV (WAVE_FORMAT_EXTENSIBLE) order.
# The LFE channel is dropped, as in ITU-R BS.775. Other channel counts: odd channels (1, 3, ...)
# left, even channels right (``_DOWNMIX`` has no entry).
_M = MINUS_3DB
_DOWNMIX = {
    3: ((1, 0, _M), (0, 1, _M)),  # FL FR FC
    5: ((1, 0, _M, _M, 0), (0, 1, _M, 0, _M)),  # FL FR FC BL BR (5.0)
    6: ((1, 0, _M, 0, _M, 0), (0, 1, _M, 0, 0, _M)),  # FL FR FC LFE SL SR (5.1)
    8: ((1, 0, _M, 0, _M, 0, _M, 0), (0, 1, _M, 0, 0, _M, 0, _M)),  # FL FR FC LFE BL BR SL SR (7.1)
}


def downmix_matrix(channels: int) -> np.ndarray:
    """``(channels, 2)`` weights that fold a multichannel file into stereo without clipping.

    5.1 (FL, FR, C, LFE, SL, SR): L = FL + 0.707 C + 0.707 SL, R = FR + 0.707 C + 0.707 SR, LFE
    dropped; 3.0, 5.0 and 7.1 likewise. Any other count: the odd channels make the left side and the
    even ones the right. Each side is then divided by the sum of its weights, so full-scale
    channels cannot add up past full scale.
    """
    if channels in _DOWNMIX:
        matrix = np.array(_DOWNMIX[channels], dtype=np.float32).T
    else:
        matrix = np.zeros((channels, 2), np.float32)
        matrix[0::2, 0] = matrix[1::2, 1] = 1.0
    return matrix / matrix.sum(axis=0, keepdims=True)


def convert_channels(block: np.ndarray, channels: int) -> np.ndarray:
    """``(frames, c)`` to ``(frames, channels)``: mono is the mean of all channels; stereo keeps
    L, R, duplicates a mono source and downmixes more channels (``downmix_matrix``: 5.1 keeps its
    centre and surrounds instead of only the first two channels)."""
    if channels == 1:
        return block.mean(axis=1, keepdims=True, dtype=np.float32) if block.shape[1] > 1 else block
    if block.shape[1] == 2:
        return block
    if block.shape[1] > 2:
        return (block @ downmix_matrix(block.shape[1])).astype(np.float32, copy=False)
    return np.repeat(block, 2, axis=1)


def check_samples(block: np.ndarray, at_seconds: float) -> None:
    """``AudioError`` for decoded samples that are not audio: NaN / infinity, or far beyond full scale.

    Either way the file decodes, and its codes would be constant garbage that training learns.
    """
    if not np.isfinite(block).all():
        raise AudioError(f"non-finite samples (NaN or infinity) after {at_seconds:.1f} s: the file is corrupt; "
                         "re-export it")
    peak = float(np.max(np.abs(block))) if block.size else 0.0
    if peak > MAX_PEAK:
        raise AudioError(f"samples far beyond full scale (peak {peak:.3g}, full scale is 1.0) after "
                         f"{at_seconds:.1f} s: the file is corrupt or not normalized; re-export it")


def _open(path: Path):
    import soundfile as sf

    size = path.stat().st_size
    if size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        detail = str(err).split(":", 1)[-1].strip() or type(err).__name__
        raise AudioError(f"unreadable audio ({detail})") from err


def read_blocks(
    path: str | os.PathLike,
    report: TrackReport,
    *,
    sample_rate: int = SAMPLE_RATE,
    channels: int = 1,
    block_seconds: float = READ_BLOCK_SECONDS,
    start: float = 0.0,
    seconds: float | None = None,
) -> Iterator[np.ndarray]:
    """Yield the file as float32 blocks ``(channels, samples)`` at ``sample_rate``.

    ``start`` and ``seconds`` (in the file's time) read only that part of it, e.g. one segment.

    Raises:
        AudioError: empty, unreadable or corrupt file (the message is the reason).
    """
    import soundfile as sf
    import soxr

    with _open(Path(path)) as fh:
        report.source_rate, report.source_channels = int(fh.samplerate), int(fh.channels)
        if fh.samplerate < MIN_SOURCE_RATE:
            raise AudioError(f"sample rate of {fh.samplerate} Hz in the header (below {MIN_SOURCE_RATE} Hz): the "
                             "file is corrupt; re-export it")
        width = 1 if channels == 1 else min(2, fh.channels)  # resample before duplicating mono
        stream = None
        if fh.samplerate != sample_rate:
            stream = soxr.ResampleStream(fh.samplerate, sample_rate, width, dtype="float32",
                                         quality=RESAMPLE_QUALITY)
        block = max(1, int(block_seconds * fh.samplerate))
        left = math.inf if seconds is None else max(0, int(round(seconds * fh.samplerate)))
        if start > 0:
            fh.seek(min(int(round(start * fh.samplerate)), fh.frames))
        done = 0
        while True:
            want = int(min(block, left))
            try:
                data = fh.read(want, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as err:
                raise AudioError(f"corrupt audio after {done / fh.samplerate:.1f} s ({err})") from err
            left -= len(data)
            last = len(data) < want or left <= 0
            check_samples(data, done / fh.samplerate)
            done += len(data)
            data = convert_channels(data, width)
            if stream is not None:
                data = stream.resample_chunk(data, last=last)
            if channels == 2 and data.shape[1] == 1:
                data = np.repeat(data, 2, axis=1)
            if len(data):
                yield np.ascontiguousarray(data.T)
            if last:
                return


class _Buffer:
    """Decoded blocks waiting to be cut: joined only when a segment is taken."""

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []
        self.size = 0  # samples buffered

    def add(self, block: np.ndarray) -> None:
        self.blocks.append(block)
        self.size += block.shape[1]

    def take(self, n: int) -> np.ndarray:
        """Remove and return the first ``n`` samples (contiguous)."""
        joined = np.concatenate(self.blocks, axis=1) if len(self.blocks) > 1 else self.blocks[0]
        head, rest = joined[:, :n], joined[:, n:]
        self.blocks, self.size = ([rest] if rest.shape[1] else []), rest.shape[1]
        return np.ascontiguousarray(head)


def _kept(piece: Piece, report: TrackReport, sample_rate: int, silence_db: float) -> bool:
    """Count ``piece`` in ``report`` as kept, or as silent (peak below ``silence_db``)."""
    if peak_db(piece.audio) < silence_db:
        report.silent_segments += 1
        report.silent_seconds += piece.samples / sample_rate
        return False
    report.segments += 1
    report.kept_seconds += piece.samples / sample_rate
    return True


def iter_segments(
    path: str | os.PathLike,
    report: TrackReport,
    *,
    sample_rate: int = SAMPLE_RATE,
    channels: int = 1,
    segment_seconds: float = SEGMENT_SECONDS,
    min_seconds: float = MIN_SECONDS,
    min_tail_seconds: float = MIN_TAIL_SECONDS,
    silence_db: float = SILENCE_DB,
) -> Iterator[Piece]:
    """Yield the non-silent segments of a file; ``report`` says what happened to the rest.

    Segments are ``segment_seconds`` long. The last, shorter one is kept when it is at least
    ``min_tail_seconds`` long, or when it is the whole track (tracks shorter than a segment
    are kept from ``min_seconds`` on). Silent segments are counted, not yielded. When nothing
    is kept, ``report.skipped`` says why.

    Raises:
        AudioError: the file is empty, unreadable or corrupt.
    """
    seg_len = int(round(segment_seconds * sample_rate))
    buffer = _Buffer()
    total = 0
    for block in read_blocks(path, report, sample_rate=sample_rate, channels=channels):
        buffer.add(block)
        while buffer.size >= seg_len:
            piece = Piece(start=total, audio=buffer.take(seg_len))
            total += seg_len
            if _kept(piece, report, sample_rate, silence_db):
                yield piece
    tail = buffer.size
    report.seconds = (total + tail) / sample_rate
    if total + tail == 0:
        raise AudioError("no audio frames (the file holds only a header)")
    if report.seconds < min_seconds:
        report.skipped = f"too short ({report.seconds:.2f} s < {min_seconds:g} s)"
        return
    if tail:
        if total == 0 or tail >= min_tail_seconds * sample_rate:
            piece = Piece(start=total, audio=buffer.take(tail))
            if _kept(piece, report, sample_rate, silence_db):
                yield piece
        else:
            report.tail_dropped_seconds = tail / sample_rate
    if report.segments == 0 and report.silent_segments:
        report.skipped = f"silent (peak below {silence_db:g} dBFS)"


def load(path: str | os.PathLike, *, sample_rate: int = SAMPLE_RATE, channels: int = 1, start: float = 0.0,
         seconds: float | None = None) -> np.ndarray:
    """The file (or ``seconds`` of it from ``start``) as float32 ``(channels, samples)`` at ``sample_rate``.

    Every stage reads audio this way: tokenization's segments, generation's melody and audio
    prompt, evaluation's held-out source audio all go through the same decoder, resampler and
    channel rule (``convert_channels``: 5.1 is downmixed, not cut to its first two channels).

    Raises:
        AudioError: empty, unreadable or corrupt file (the message is the reason).
        FileNotFoundError: no such file.
    """
    blocks = list(read_blocks(path, TrackReport(), sample_rate=sample_rate, channels=channels, start=start,
                              seconds=seconds))
    if not blocks:
        return np.zeros((channels, 0), np.float32)
    return np.concatenate(blocks, axis=1)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample float audio already in memory (``(samples,)`` or ``(samples, channels)``), as ``load`` does."""
    import soxr

    audio = np.asarray(audio, dtype=np.float32)
    if from_rate == to_rate:
        return audio
    return soxr.resample(audio, from_rate, to_rate, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)
