"""The copy check: chroma matching, the cached training features, and flags on fed-back segments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from _generate_helpers import make_run, make_tokens
from nbutils.core import clap, synth
from nbutils.evaluate import chroma, clips, copies, copycheck, copyindex, reference
from nbutils.evaluate import stage as evaluate
from nbutils.tokenize import shards

RATE = 32_000
SOURCE = "source audio"  # the cache key's decoder: these tests read the ZIPs, not EnCodec


def test_chroma_match_finds_a_shifted_excerpt_and_agrees_with_brute_force():
    tracks = [synth.track(style, 6.0, seed=s) for style, s in (("chords", 1), ("chords", 2), ("arpeggio", 3))]
    sequences = [chroma.sequence(t, RATE) for t in tracks]
    bank = chroma.Bank(sequences)
    excerpt = chroma.sequence(tracks[0][int(2.0 * RATE) : int(4.5 * RATE)], RATE)
    similarity, lag = bank.match(excerpt)

    def brute(q, t):  # the definition, pair by pair
        best = (-1.0, 0)
        for shift in range(-(len(q) - 1), len(t)):
            total = sum(float(q[i] @ t[i + shift]) for i in range(len(q)) if 0 <= i + shift < len(t))
            overlap, shorter = min(shift + len(q), len(t)) - max(shift, 0), min(len(q), len(t))
            if overlap >= max(1, np.ceil(chroma.MIN_OVERLAP * shorter)) and total / shorter > best[0]:
                best = (total / shorter, shift)
        return best

    for i, t in enumerate(sequences):
        assert (similarity[i], lag[i]) == pytest.approx(brute(excerpt, t), abs=1e-5)
    assert similarity[0] > 0.99 and lag[0] == 20, "found where it was cut from: 2.0 s = 20 frames"
    assert similarity[0] - max(similarity[1:]) > 0.1, "other music in the same style is much further"
    assert not chroma.sequence(np.zeros(RATE), RATE).any(), "silence is zero, not a pitch class"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six 8 s tracks (chords, arpeggios) in 4 s segments; the *_0 tracks are held out."""
    root = tmp_path_factory.mktemp("copies")
    split = make_tokens(root / "tokens", root / "zips", tracks_per_style=3, seconds=8.0, segment_seconds=4.0)
    run = make_run(root / "run", val_tracks=split["val_tracks"], train_tracks=split["train_tracks"])
    return {"root": root, "shards": shards.open_all(root / "tokens"), "run": run, **split}


def _source(root: Path):
    """``decode(shard, index, frames)`` reading each segment's source audio (real music, not tiny's EnCodec)."""
    reader = reference.SourceAudio(root / "zips")

    def decode(shard, index, frames=None):
        segment = shard.segments[index]
        seconds = (frames or segment.frames) / 50
        return reader.segment(shard.meta["zip"], segment, seconds, RATE, 1)

    return decode


def _features(scorer, waves):
    return [(chroma.sequence(w, RATE), e) for w, e in zip(waves, clap.audio_embeddings(scorer, waves, RATE))]


def _as_generated(tmp_path: Path, name: str, wave: np.ndarray) -> dict:
    """A clip written and read back the way generated clips are (16-bit WAV)."""
    path = tmp_path / f"{name}.wav"
    sf.write(path, wave, RATE, subtype="PCM_16")
    return {"path": str(path), "model": "lora", "prompt": "p", "seed": 0, "audio": clips.read_wav(str(path))}


def test_a_training_segment_fed_back_is_flagged_a_held_out_one_and_new_music_are_not(corpus, tmp_path):
    scorer = clap.load("tiny")
    decode = _source(corpus["root"])
    held_tracks, _ = reference.held_out_tracks(corpus["shards"], corpus["run"])
    assert held_tracks == set(corpus["val_tracks"])
    searched, total = copycheck.training_segments(corpus["shards"], held_tracks, 0)
    assert total == len(searched) == 8 and not {s.segments[i].track for s, i in searched} & held_tracks
    cache = copyindex.Cache(corpus["root"] / "tokens", scorer, decode, RATE, SOURCE)
    index = copies.Index([copies.Segment(s.segments[i].track, s.segments[i].start) for s, i in searched],
                         cache.entries(searched))
    held, _ = reference.held_out_segments(corpus["shards"], corpus["run"], 32)
    calibration = _features(scorer, [decode(s, i, 100) for s, i in held])  # 2 s, like the clips below

    shard, i = searched[3]
    train_wave = decode(shard, i)[int(1.0 * RATE) : int(3.0 * RATE)]  # 2 s from 1.0 s into the segment
    shard_h, i_h = held[1]
    clips_ = [_as_generated(tmp_path, "copy", train_wave),
              _as_generated(tmp_path, "held", decode(shard_h, i_h)[: 2 * RATE]),
              _as_generated(tmp_path, "new", synth.track("chords", 2.0, seed=77))]
    records, facts = copies.check(index, clips_, _features(scorer, [c["audio"] for c in clips_]), calibration, total)
    by_clip = {Path(r["clip"]).stem: r for r in records}
    copied = by_clip["copy"]
    assert copied["flagged"] and records[0] is copied, "flagged first"
    assert copied["nearest_path"] == shard.segments[i].track
    assert copied["nearest_start"] == pytest.approx(shard.segments[i].start + 1.0, abs=0.11)
    assert copied["chroma_similarity"] > facts["thresholds"]["chroma"] > max(facts["heldout_nearest"]["chroma"])
    assert not by_clip["held"]["flagged"], "a held-out segment is your style, not a copy"
    assert not by_clip["new"]["flagged"], "new music in the style is not a copy"
    assert set(copied) >= {"clip", "nearest_path", "nearest_start", "clap_similarity", "chroma_similarity", "flagged"}
    assert facts["training_segments_searched"] == facts["training_segments"] == 8 and facts["flagged"] == 1


def test_training_features_are_cached_per_shard_keyed_by_clap_and_codes(corpus, tmp_path):
    import shutil

    tokens = tmp_path / "tokens"
    shutil.copytree(corpus["root"] / "tokens", tokens, ignore=shutil.ignore_patterns(copyindex.FOLDER))
    opened = shards.open_all(tokens)
    scorer = clap.load("tiny")
    calls = []
    source = _source(corpus["root"])

    def decode(shard, index, frames=None):
        calls.append(index)
        return source(shard, index, frames)

    wanted = [(opened[0], i) for i in (0, 2, 4)]
    first = copyindex.Cache(tokens, scorer, decode, RATE, SOURCE).entries(wanted)
    (cached,) = list((tokens / copyindex.FOLDER).glob("*.npz"))
    assert calls == [0, 2, 4] and cached.name.startswith(opened[0].index_path.stem + ".")
    again = copyindex.Cache(tokens, scorer, decode, RATE, SOURCE).entries(wanted + [(opened[0], 5)])
    assert calls == [0, 2, 4, 5], "only the segment not in the cache is described"
    for a, b in zip(first, again):
        np.testing.assert_allclose(a.chroma, b.chroma, atol=1e-3)  # stored as float16
        np.testing.assert_array_equal(a.clap, b.clap)
    # another CLAP (a different name) is another key: computed again, and the stale file goes
    other = clap.load("tiny")
    other.name = "tiny-other"
    copyindex.Cache(tokens, other, decode, RATE, SOURCE).entries(wanted)
    files = list((tokens / copyindex.FOLDER).glob("*.npz"))
    assert len(calls) == 7 and len(files) == 1 and files[0] != cached
    # a damaged cache file is not trusted: it is computed again
    files[0].write_bytes(b"not a zip")
    copyindex.Cache(tokens, other, decode, RATE, SOURCE).entries(wanted)
    assert len(calls) == 10


def test_a_read_only_token_folder_still_gets_checked_with_a_note(corpus, tmp_path, capsys):
    """A file where the cache folder goes fails for root too (a chmod'ed folder would not stop root)."""
    import shutil

    tokens = tmp_path / "tokens"
    shutil.copytree(corpus["root"] / "tokens", tokens, ignore=shutil.ignore_patterns(copyindex.FOLDER))
    (tokens / copyindex.FOLDER).write_text("a file where the cache folder would be")
    opened = shards.open_all(tokens)
    cache = copyindex.Cache(tokens, clap.load("tiny"), _source(corpus["root"]), RATE, SOURCE)
    assert len(cache.entries([(opened[0], 0)])) == 1 and cache.unwritable
    assert "computed again next time" in capsys.readouterr().err


def test_copy_check_of_an_evaluation_flags_a_decoded_training_segment(corpus, tmp_path):
    """The whole path (EnCodec decode, cache beside the shards, calibration on held-out segments):
    a training segment's decoded codes saved as a generated clip is flagged, a held-out one is not.

    The tiny EnCodec's random weights decode every segment to nearly the same sound, so here the
    CLAP side decides (an exact copy is still exactly one); the test above shows both measures on music."""
    cfg = evaluate.EvalConfig(model="tiny", adapters=[str(corpus["run"])], clap="tiny", out=str(tmp_path / "e"),
                              tokens=str(corpus["root"] / "tokens"), seconds=2.0, copy_segments=0)
    decode, spec = copycheck.decoder("tiny", "cpu", 4)
    held_tracks, _ = reference.held_out_tracks(corpus["shards"], corpus["run"])
    (train_shard, train_i), *_ = copycheck.training_segments(corpus["shards"], held_tracks, 0)[0]
    held_shard, held_i = reference.held_out_segments(corpus["shards"], corpus["run"], 32)[0][0]
    samples = [_as_generated(tmp_path, "train", decode(train_shard, train_i)),  # the whole segment, as generated
               _as_generated(tmp_path, "held", decode(held_shard, held_i, 100))]
    scorer = clap.load("tiny")
    features = _features(scorer, [s["audio"] for s in samples])
    records, facts = copycheck.run(cfg, corpus["shards"], corpus["run"], scorer, samples, features, spec, "cpu")
    flags = {Path(r["clip"]).stem: r["flagged"] for r in records}
    assert flags == {"train": True, "held": False}
    assert facts["cache"] == str(corpus["root"] / "tokens" / copyindex.FOLDER)
    assert json.loads(json.dumps(records)) == records, "plain JSON"
