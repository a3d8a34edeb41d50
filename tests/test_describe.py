"""Automatic descriptions: tempo, key and CLAP tags while tokenizing, descriptions.jsonl and its edits.

Audio of known tempo and key is made here (``_describe_helpers``); tokenization runs the tiny
model's real EnCodec, librosa and the tiny CLAP (random weights: its words mean nothing, its code
path is the real one).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import _describe_helpers as d
import _tokenize_helpers as h
from conftest import REPO, last_json
from nbutils import cli
from nbutils.core import clap as core_clap
from nbutils.core.errors import UserError
from nbutils.tokenize import analysis, describe, descriptions, ledger, shards, tags
from nbutils.tokenize import stage as tokenize

FIELDS = ["zip", "path", "description", "source", "bpm", "key", "tags", "edited"]
KEY_SPELLING = re.compile(r"(C|C#|D|Eb|E|F|F#|G|Ab|A|Bb|B) (major|minor)")


def _hear(wave: np.ndarray, sr: int = d.SR) -> tuple[float | None, str | None]:
    listener = analysis.Listener(sr)
    for piece in d.pieces(wave):  # 30 s pieces, as tokenize hands them over
        listener.add(piece)
    assert not listener.error
    return listener.tempo_and_key()


def _wav(wave: np.ndarray) -> bytes:
    return h.encode_audio(wave, d.SR, "wav")


def _run(zips, out, scratch, **kwargs):
    cfg = tokenize.TokenizeConfig(zips=str(zips), out=str(out), model="tiny", scratch=str(scratch), progress=False,
                                  **{"describe": "missing", "clap": "none", **kwargs})
    return tokenize.run(cfg)


def _lines(tokens) -> list[dict]:
    return [json.loads(line) for line in descriptions.path_of(tokens).read_text(encoding="utf-8").splitlines()]


def _by_path(tokens) -> dict[str, dict]:
    return {row["path"]: row for row in _lines(tokens)}


# ---------------------------------------------------------------------------------------------
# Tempo and key (librosa), on audio of known tempo and key
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bpm", [90, 120, 150])
@pytest.mark.parametrize("make", [d.click_track, d.drum_pattern], ids=["clicks", "drums"])
def test_tempo_of_clicks_and_drum_patterns_is_within_4_percent(make, bpm):
    found, _ = _hear(make(bpm, 40.0))  # two pieces: 30 s and 10 s
    assert found is not None and abs(found - bpm) <= 0.04 * bpm, found


@pytest.mark.parametrize("key", ["C major", "C minor", "Eb major", "Eb minor", "A major", "A minor"])
def test_key_of_cadences_is_exact(key):
    bpm, found = _hear(d.cadence(key, 16.0))
    assert found == key and KEY_SPELLING.fullmatch(found)


def test_key_survives_a_detuned_recording():
    """A recording 30 cents sharp: librosa's tuning estimate keeps the chroma on the right notes."""
    sharp = d.cadence("F# minor", 16.0, sr=d.SR)
    stretched = np.interp(np.arange(0, len(sharp), 2 ** (0.3 / 12)), np.arange(len(sharp)), sharp)
    assert _hear(stretched.astype(np.float32))[1] == "F# minor"


def test_no_tempo_or_key_is_claimed_where_there_is_none():
    rng = np.random.default_rng(0)
    t = np.arange(20 * d.SR) / d.SR
    noise = (0.1 * rng.standard_normal(len(t))).astype(np.float32)
    drone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    held = (0.2 * sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.18, 329.63))).astype(np.float32)
    assert _hear(noise) == (None, None)
    assert _hear(drone) == (None, None)  # one note: no pulse, and it fits several keys
    assert _hear(held) == (None, None)  # one chord: no pulse, no key
    assert _hear(np.zeros(10 * d.SR, np.float32)) == (None, None)
    assert _hear(d.drum_pattern(120, 20.0))[1] is None  # drums have no key
    assert _hear(d.click_track(120, 3.0))[0] is None  # too short to tell a tempo


def test_windows_are_spread_over_the_whole_track_in_bounded_memory():
    windows = analysis.Windows(size=10, most=3, min_size=4)
    track = np.arange(1000, dtype=np.float32)
    most_kept = 0
    for start in range(0, len(track), 7):  # pieces of 7 samples: windows span pieces
        windows.add(track[start : start + 7])
        most_kept = max(most_kept, len(windows.kept))
    picked = windows.picked(3)
    assert most_kept <= analysis.Windows.SLOTS * 3 + 1
    assert [len(w) for w in picked] == [10, 10, 10]
    assert all(np.array_equal(w, np.arange(w[0], w[0] + 10)) for w in picked)  # contiguous audio
    middles = [int(w[0]) + 5 for w in picked]  # near the middles of the thirds: 167, 500, 833
    assert all(abs(m - target) <= 60 for m, target in zip(middles, (167, 500, 833))), middles
    short = analysis.Windows(size=10, most=3, min_size=4)
    short.add(np.arange(6, dtype=np.float32))
    assert [len(w) for w in short.picked(3)] == [6]  # a track shorter than a window: all of it


# ---------------------------------------------------------------------------------------------
# Wording and labels
# ---------------------------------------------------------------------------------------------


def test_caption_reads_like_musicgen_captions():
    found = {"genre": [["techno", 0.5]], "mood": [["dark", 0.4]],
             "instrument": [["synthesizer", 0.3], ["drum machine", 0.2], ["piano", 0.1]]}
    full = {"bpm": 127.6, "key": "F minor", "tags": found}
    assert describe.caption(full) == "techno, dark, synthesizer, drum machine, 128 bpm, F minor"
    weak = {**found, "instrument": [["synthesizer", 0.3], ["piano", 0.1]]}  # under half the first: not named
    assert describe.caption({"bpm": None, "key": None, "tags": weak}) == "techno, dark, synthesizer"
    assert describe.caption({"bpm": 90.0, "key": None, "tags": describe.EMPTY_TAGS}) == "90 bpm"
    assert describe.compose("trigger", "default", full) == ("trigger, " + describe.caption(full), "auto")
    assert describe.compose("", "none", full) == (describe.caption(full), "auto")
    assert describe.compose("my words.", "sidecar", full) == ("my words, " + describe.caption(full), "sidecar")
    assert describe.compose("trigger", "default", {"bpm": None, "key": None, "tags": {}}) == ("trigger", "default")


def test_builtin_labels_are_documented_and_shipped():
    labels = tags.load_labels()
    counts = {c: len(v) for c, v in labels.lists.items()}
    assert counts == {"genre": 40, "mood": 20, "instrument": 40}
    assert all(len(set(v)) == len(v) for v in labels.lists.values())
    assert all("{}" in labels.prompts[c] for c in tags.CATEGORIES)
    readme = (REPO / "README.md").read_text()
    assert "nbutils/tokenize/labels.json" in readme and "--labels FILE" in readme
    assert all(label in readme for label in ("techno", "melancholic", "synth pad"))


def test_user_label_files_are_checked(tmp_path):
    good = tmp_path / "mine.json"
    good.write_text(json.dumps({"genre": ["ska", "polka"], "prompts": {"genre": "Some {} tune."}}))
    labels = tags.load_labels(str(good))
    assert labels.lists == {"genre": ["ska", "polka"], "mood": [], "instrument": []}
    assert labels.prompts["genre"] == "Some {} tune." and labels.prompts["mood"] == tags.PROMPTS["mood"]
    bad = {"is not JSON": "{genre: [}", "unknown keys (styles)": json.dumps({"styles": ["a", "b"]}),
           '1 "genre" labels': json.dumps({"genre": ["only"]}), "not a list of texts": json.dumps({"mood": [1, 2]}),
           "prompts": json.dumps({"genre": ["a", "b"], "prompts": {"genre": "no placeholder"}})}
    for why, text in bad.items():
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(UserError, match=re.escape(why)):
            tags.load_labels(str(tmp_path / "bad.json"))
    with pytest.raises(UserError, match="does not exist"):
        tags.load_labels(str(tmp_path / "missing.json"))


# ---------------------------------------------------------------------------------------------
# Tokenize with descriptions
# ---------------------------------------------------------------------------------------------


def _collection(zips, name="a.zip", seed=0):
    """A ZIP of four tracks of known tempo / key; metadata.jsonl beside it describes the first one."""
    members = [
        ("a/described.wav", _wav(d.click_track(100, 12.0))),
        ("a/clicks_120.wav", _wav(d.click_track(120, 12.0))),
        ("a/cadence_eb.wav", _wav(d.cadence("Eb major", 12.0))),
        ("a/noise.wav", _wav((0.1 * np.random.default_rng(seed).standard_normal(8 * d.SR)).astype(np.float32))),
    ]
    h.write_zip(zips / name, members)
    (zips / "metadata.jsonl").write_text(json.dumps({"path": "a/described.wav", "description": "my own words"}) + "\n")
    return zips / name


def test_precedence_is_metadata_then_automatic_then_default(tmp_path):
    zips = tmp_path / "zips"
    _collection(zips)
    _run(zips, tmp_path / "missing", tmp_path / "s", default_description="trig")
    rows = _by_path(tmp_path / "missing")
    assert (rows["a/described.wav"]["description"], rows["a/described.wav"]["source"]) == ("my own words",
                                                                                            "metadata.jsonl")
    assert rows["a/described.wav"]["bpm"] is None  # --describe missing: not analysed
    clicks = rows["a/clicks_120.wav"]
    assert clicks["source"] == "auto" and clicks["description"] == f"trig, {round(clicks['bpm'])} bpm"
    assert abs(clicks["bpm"] - 120) <= 0.04 * 120
    assert rows["a/cadence_eb.wav"]["description"].endswith("Eb major")
    assert (rows["a/noise.wav"]["description"], rows["a/noise.wav"]["source"]) == ("trig", "default")  # nothing heard
    shard = shards.open_shard(tmp_path / "missing" / "shards" / "a.json")
    assert {s.path: s.description for s in shard.segments} == {p: r["description"] for p, r in rows.items()}

    summary = _run(zips, tmp_path / "all", tmp_path / "s", default_description="trig", describe="all")
    rows = _by_path(tmp_path / "all")
    assert re.fullmatch(r"my own words, \d+ bpm", rows["a/described.wav"]["description"])  # the user's text first
    assert rows["a/described.wav"]["source"] == "metadata.jsonl"
    assert summary["description_sources"] == {"metadata.jsonl": 1, "auto": 2, "default": 1}

    summary = _run(zips, tmp_path / "none", tmp_path / "s", default_description="trig", describe="none")
    rows = _by_path(tmp_path / "none")
    assert [r["source"] for r in rows.values()] == ["metadata.jsonl", "default", "default", "default"]
    assert all(r["bpm"] is None and r["key"] is None for r in rows.values())
    assert summary["descriptions"]["tracks"] == 4 and summary["descriptions"]["auto"] == 0


def test_clap_none_measures_tempo_and_key_only(tmp_path, monkeypatch):
    monkeypatch.setattr(core_clap, "load", lambda *a, **k: pytest.fail("CLAP was loaded"))
    zips = tmp_path / "zips"
    _collection(zips)
    _run(zips, tmp_path / "tokens", tmp_path / "s")
    rows = _by_path(tmp_path / "tokens")
    clicks, cadence = rows["a/clicks_120.wav"], rows["a/cadence_eb.wav"]
    assert abs(clicks["bpm"] - 120) <= 0.04 * 120 and clicks["key"] is None
    assert cadence["key"] == "Eb major"
    assert all(r["tags"] == {"genre": [], "mood": [], "instrument": []} for r in rows.values())
    assert clicks["description"] == f"{round(clicks['bpm'])} bpm"


def test_clap_tags_come_from_the_label_lists(tmp_path):
    zips = tmp_path / "zips"
    _collection(zips)
    mine = tmp_path / "labels.json"
    mine.write_text(json.dumps({"genre": ["ska", "polka", "fado"], "instrument": ["kazoo", "tuba"]}))
    _run(zips, tmp_path / "tokens", tmp_path / "s", clap="tiny", labels=str(mine))
    row = _by_path(tmp_path / "tokens")["a/clicks_120.wav"]
    genres = [label for label, _ in row["tags"]["genre"]]
    assert sorted(genres) == ["fado", "polka", "ska"] and row["tags"]["mood"] == []
    assert sorted(label for label, _ in row["tags"]["instrument"]) == ["kazoo", "tuba"]
    scores = [s for _, s in row["tags"]["genre"]]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 0.01  # softmax over 3 labels
    assert row["description"].startswith(row["tags"]["genre"][0][0] + ", ")


def test_an_unloadable_clap_or_label_file_stops_before_any_zip(tmp_path):
    zips = tmp_path / "zips"
    _collection(zips)
    with pytest.raises(UserError, match="Could not load CLAP 'someone/no-such-clap'"):
        _run(zips, tmp_path / "tokens", tmp_path / "s", clap="someone/no-such-clap")
    with pytest.raises(UserError, match="Label file .* does not exist"):
        _run(zips, tmp_path / "tokens", tmp_path / "s", clap="tiny", labels=str(tmp_path / "nope.json"))
    assert not ledger.records(tmp_path / "tokens") and not shards.list_shards(tmp_path / "tokens")
    assert not descriptions.path_of(tmp_path / "tokens").exists()
    assert h.files_under(tmp_path / "s") == []


def test_test_mode_describes_but_keeps_nothing(tmp_path):
    zips = tmp_path / "zips"
    _collection(zips)
    summary = _run(zips, tmp_path / "tokens", tmp_path / "s", limit=3)
    assert summary["description_sources"] == {"metadata.jsonl": 1, "auto": 2} and summary["descriptions"] is None
    assert not (tmp_path / "tokens").exists()


def test_a_failed_analysis_keeps_the_track_with_its_default_text(tmp_path, monkeypatch):
    zips = tmp_path / "zips"
    h.write_zip(zips / "b.zip", [("b/clicks.wav", _wav(d.click_track(120, 8.0)))])

    def broken(self, mono):
        raise RuntimeError("librosa exploded")
    monkeypatch.setattr(analysis.Listener, "_features", broken)
    summary = _run(zips, tmp_path / "tokens", tmp_path / "s", default_description="trig")
    assert summary["files_ok"] == 1 and _by_path(tmp_path / "tokens")["b/clicks.wav"]["description"] == "trig"
    notes = ledger.latest(tmp_path / "tokens")["b.zip"]["notes"]
    assert {"path": "b/clicks.wav", "reason": "no automatic description (RuntimeError: librosa exploded)"} in notes


# ---------------------------------------------------------------------------------------------
# descriptions.jsonl: edits survive, nothing is re-encoded, nothing is half-written
# ---------------------------------------------------------------------------------------------


def _edit_line(tokens, path: str, text: str | None, zip_name: str | None = None) -> None:
    """What a text editor does: change (or delete, with None) one line, ``edited`` left as it was."""
    kept = []
    for line in descriptions.path_of(tokens).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["path"] == path and zip_name in (None, row["zip"]):
            if text is None:
                continue
            row["description"] = text
        kept.append(json.dumps(row, ensure_ascii=False))
    descriptions.path_of(tokens).write_text("\n".join(kept) + "\n", encoding="utf-8")


def test_jsonl_round_trip_after_an_edit(tmp_path, monkeypatch):
    from nbutils.core import models

    zips, tokens = tmp_path / "zips", tmp_path / "tokens"
    _collection(zips)
    _run(zips, tokens, tmp_path / "s", default_description="trig")
    before = _by_path(tokens)
    _edit_line(tokens, "a/clicks_120.wav", "a metronome, 120 bpm — edited by hand ✓")
    _edit_line(tokens, "a/cadence_eb.wav", None)  # deleted: the automatic text comes back
    h.write_zip(zips / "b.zip", [("b/drums.wav", _wav(d.drum_pattern(90, 10.0)))])  # a new batch

    second = _run(zips, tokens, tmp_path / "s", default_description="trig")
    assert (second["zips_done"], second["zips_skipped"]) == (1, 1)  # a.zip is not encoded again
    rows = _by_path(tokens)
    assert rows["a/clicks_120.wav"]["description"] == "a metronome, 120 bpm — edited by hand ✓"
    assert rows["a/clicks_120.wav"]["edited"] is True and rows["a/clicks_120.wav"]["bpm"] == before[
        "a/clicks_120.wav"]["bpm"]
    assert rows["a/cadence_eb.wav"] == before["a/cadence_eb.wav"]
    assert rows["b/drums.wav"]["source"] == "auto" and list(rows) == [*before, "b/drums.wav"]
    assert [list(r) for r in _lines(tokens)] == [FIELDS] * 5

    monkeypatch.setattr(models, "load_codec", lambda *a, **k: pytest.fail("re-encoded"))
    opened = shards.open_all(tokens)
    texts = descriptions.apply(tokens, opened)  # what training reads
    assert texts["a.zip/a/clicks_120.wav"] == "a metronome, 120 bpm — edited by hand ✓"
    assert {s.description for s in opened[0].segments if s.path == "a/clicks_120.wav"} == {
        "a metronome, 120 bpm — edited by hand ✓"}
    assert _run(zips, tokens, tmp_path / "s", default_description="trig")["zips_done"] == 0  # edits need no work
    monkeypatch.undo()

    # the batch is replaced (new audio, same names): encoded again; the edit stays, the rest is new
    members = [("a/described.wav", _wav(d.click_track(100, 12.0))),
               ("a/clicks_120.wav", _wav(d.click_track(140, 12.0))),
               ("a/cadence_eb.wav", _wav(d.cadence("A minor", 12.0)))]
    h.write_zip(zips / "a.zip", members)
    assert _run(zips, tokens, tmp_path / "s", default_description="trig")["zips_done"] == 1
    rows = _by_path(tokens)
    assert rows["a/clicks_120.wav"]["description"] == "a metronome, 120 bpm — edited by hand ✓"
    assert rows["a/cadence_eb.wav"]["key"] == "A minor" and rows["a/cadence_eb.wav"]["edited"] is False
    assert "a/noise.wav" not in rows  # gone from the batch, never edited: gone from the table


def test_unusable_lines_are_never_overwritten_and_stop_training(tmp_path):
    from nbutils.train import texts

    zips, tokens = tmp_path / "zips", tmp_path / "tokens"
    _collection(zips)
    _run(zips, tokens, tmp_path / "s", describe="none")
    broken = descriptions.path_of(tokens).read_text().replace('"description": "my own words"',
                                                              '"description": "my own words",,')
    descriptions.path_of(tokens).write_text(broken)
    summary = _run(zips, tokens, tmp_path / "s", describe="none")
    assert "has 1 unusable line(s): line 1: not JSON" in summary["descriptions"]["warning"]
    assert descriptions.path_of(tokens).read_text() == broken  # the user's line is theirs to fix
    with pytest.raises(UserError, match="line 1: not JSON.*delete them"):
        texts.load(tokens, shards.open_all(tokens))


def test_a_long_run_rewrites_the_table_as_it_goes(tmp_path, monkeypatch):
    zips, seen = tmp_path / "zips", []
    for name in ("a.zip", "b.zip"):
        h.small_zip(zips, name, n=1, seconds=1.5)
    sync = descriptions.sync

    def watched(tokens):
        seen.append(sorted({r["zip"] for r in descriptions.rows(tokens)}))
        return sync(tokens)
    monkeypatch.setattr(descriptions, "sync", watched)
    monkeypatch.setattr(tokenize, "SYNC_EVERY_SECONDS", 0.0)
    _run(zips, tmp_path / "tokens", tmp_path / "s", describe="none")
    assert seen == [["a.zip"], ["a.zip", "b.zip"], ["a.zip", "b.zip"]]  # after each ZIP, then at the end


def _spawn(zips, tokens, scratch, kill_at=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("NBUTILS_KILL_AT", None)
    if kill_at:
        env["NBUTILS_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "nbutils", "tokenize", "--zips", str(zips), "--out", str(tokens),
                           "--model", "tiny", "--scratch", str(scratch), "--no-progress", "--clap", "none"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_killed_tokenize_leaves_no_half_written_descriptions(tmp_path):
    zips = tmp_path / "zips"
    for n, name in enumerate(("a.zip", "b.zip", "c.zip")):
        stem = name[:-4]
        h.write_zip(zips / name, [(f"{stem}/clicks.wav", _wav(d.click_track(100 + 20 * n, 8.0))),
                                  (f"{stem}/cadence.wav", _wav(d.cadence("Eb major", 8.0)))])
    reference = tmp_path / "reference"
    assert _spawn(zips, reference, tmp_path / "s").returncode == 0

    tokens = tmp_path / "tokens"
    proc = _spawn(zips, tokens, tmp_path / "s", kill_at="mid-npy:2")  # a done, b killed mid-shard
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not descriptions.path_of(tokens).exists()  # written at the end of a run, never half
    assert {r["zip"] for r in descriptions.rows(tokens)} == {"a.zip"}  # b: no rows until its shard is whole

    proc = _spawn(zips, tokens, tmp_path / "s", kill_at="mid-descriptions")  # b, c done; killed writing the file
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not descriptions.path_of(tokens).exists()
    assert [p.name for p in tokens.iterdir() if ".tmp-" in p.name]  # the torn temporary file, never renamed

    assert _spawn(zips, tokens, tmp_path / "s").returncode == 0
    assert descriptions.path_of(tokens).read_text() == descriptions.path_of(reference).read_text()
    assert not [p.name for p in tokens.iterdir() if ".tmp-" in p.name]

    _edit_line(tokens, "b/clicks.wav", "edited")
    edited = descriptions.path_of(tokens).read_text()
    proc = _spawn(zips, tokens, tmp_path / "s", kill_at="mid-descriptions")  # marks the edit: rewrites, killed
    assert proc.returncode == -signal.SIGKILL
    assert descriptions.path_of(tokens).read_text() == edited  # the old file, whole
    assert _spawn(zips, tokens, tmp_path / "s").returncode == 0
    rows = _by_path(tokens)
    assert rows["b/clicks.wav"]["description"] == "edited" and rows["b/clicks.wav"]["edited"] is True


def test_cli_contract_flags_and_fields(tmp_path, capsys):
    zips = tmp_path / "zips"
    _collection(zips)
    assert cli.main(["tokenize", "--zips", str(zips), "--out", str(tmp_path / "tokens"), "--model", "tiny",
                     "--scratch", str(tmp_path / "s"), "--no-progress", "--describe", "all", "--clap", "tiny",
                     "--default-description", "trig"]) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["descriptions"]["file"] == str(descriptions.path_of(tmp_path / "tokens"))
    assert summary["descriptions"]["tracks"] == 4
    for row in _lines(tmp_path / "tokens"):
        assert list(row) == FIELDS
        assert row["zip"] == "a.zip" and row["path"].startswith("a/") and isinstance(row["description"], str)
        assert row["source"] in ("metadata.jsonl", "metadata.json", "sidecar", "txt", "auto", "default")
        assert row["bpm"] is None or isinstance(row["bpm"], float)
        assert row["key"] is None or KEY_SPELLING.fullmatch(row["key"])
        assert set(row["tags"]) == {"genre", "mood", "instrument"} and row["edited"] is False
        for found in row["tags"].values():
            assert all(isinstance(label, str) and 0 <= score <= 1 for label, score in found)
    with pytest.raises(SystemExit):
        cli.main(["tokenize", "--help"])
    usage = capsys.readouterr().out
    assert all(flag in usage for flag in ("--describe", "--clap", "--labels"))
    assert cli.main(["tokenize", "--zips", str(zips), "--out", str(tmp_path / "t2"), "--describe", "some"]) == 2
    assert "describe must be one of none, missing, all" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Notebook 01's editor and picture
# ---------------------------------------------------------------------------------------------


def test_editor_pages_saves_and_the_picture_is_drawn(tmp_path):
    from nbutils.tokenize import editor

    zips, tokens = tmp_path / "zips", tmp_path / "tokens"
    _collection(zips)
    _run(zips, tokens, tmp_path / "s", default_description="trig")
    text = editor.preview(tokens, rows=2)
    assert text.startswith(f"4 tracks in {descriptions.path_of(tokens)}") and "... and 2 more" in text
    assert "- a.zip/a/clicks_120.wav [auto, " in text

    table = editor.edit(tokens, rows=3)
    assert [key for key, _ in table.boxes] == ["a.zip/a/described.wav", "a.zip/a/clicks_120.wav",
                                               "a.zip/a/cadence_eb.wav"]
    assert table.previous.disabled and not table.next.disabled
    table.boxes[1][1].value = "typed in the table"
    table.next.click()  # the typed text stays pending across pages
    assert [key for key, _ in table.boxes] == ["a.zip/a/noise.wav"] and table.next.disabled
    table.boxes[0][1].value = "noise, edited"
    table.button.click()
    assert "Saved 2 changed description(s)" in table.status.value
    rows = _by_path(tokens)
    assert (rows["a/clicks_120.wav"]["description"], rows["a/clicks_120.wav"]["edited"]) == ("typed in the table",
                                                                                               True)
    assert rows["a/noise.wav"]["description"] == "noise, edited" and rows["a/described.wav"]["edited"] is False
    table.boxes[0][1].value = "noise, edited again"
    table.pending["a.zip/gone.wav"] = "a track the table no longer has"  # a refused save: said under the table
    assert table.save() == 0 and "Not saved:</b> No track &#x27;a.zip/gone.wav&#x27;" in table.status.value
    assert table.pending["a.zip/a/noise.wav"] == "noise, edited again", "the typed text stays"
    assert _by_path(tokens)["a/noise.wav"]["description"] == "noise, edited", "nothing written"

    picture = editor.plot(tokens, show=False)
    assert picture == tokens / "descriptions.png" and picture.stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------
# Training reads the table; a resumed run notices edits
# ---------------------------------------------------------------------------------------------


def test_a_resumed_run_lists_changed_descriptions_and_goes_on_only_when_confirmed(tmp_path):
    import torch

    from _train_helpers import small_config
    from _train_helpers import tokens as train_tokens
    from nbutils.train import stage as train
    from nbutils.train.trainer import Trainer

    data, out = train_tokens(tmp_path), tmp_path / "run"
    descriptions.sync(data)  # the table tokenize leaves beside its shards
    train.run(small_config(data, out, max_steps=2))
    _edit_line(data, "chords_0.wav", "a new text", zip_name="archive_batch_0001.zip")
    with pytest.raises(UserError) as err:
        train.run(small_config(data, out, max_steps=3))
    message = str(err.value)
    assert "archive_batch_0001.zip/chords_0.wav: 'calm piano chords, slow, minor and major' -> 'a new text'" in message
    assert "1 change(s)" in message and "--accept-new-descriptions" in message and "new run" in message

    messages: list[str] = []
    summary = train.run(small_config(data, out, max_steps=3, accept_new_descriptions=True), log=messages.append)
    assert (summary["step"], summary["resumed_from"]) == (3, 2)
    assert "Continuing with 1 changed description(s) (accept_new_descriptions):" in messages
    assert train.run(small_config(data, out, max_steps=4))["step"] == 4  # confirmed once: the run goes on
    assert json.loads((out / "descriptions.json").read_text())["texts"]["archive_batch_0001.zip/chords_0.wav"] == \
        "a new text"

    state = torch.load(out / "latest.pt", weights_only=True)  # a checkpoint from before descriptions were recorded
    del state["identity"]["descriptions"]
    torch.save(state, out / "latest.pt")
    _edit_line(data, "chords_0.wav", "yet another text", zip_name="archive_batch_0001.zip")
    assert train.run(small_config(data, out, max_steps=5))["step"] == 5

    trainer = Trainer(small_config(data, tmp_path / "fresh", cfg_dropout=0.0, val_fraction=0.0), quiet=True)
    seen = {trainer.train_set.example(i).text for i in range(len(trainer.train_set))
            if trainer.train_set.example(i).track == "archive_batch_0001/chords_0.wav"}
    assert seen == {"yet another text"}  # training reads the edited table, nothing re-encoded


def test_each_track_is_decoded_once_and_tagged_from_one_window_per_started_minute(tmp_path, monkeypatch):
    """The analysis listens to the decoding that feeds the encoder: no second pass over the ZIP."""
    from nbutils.tokenize import zipjob

    sr = 8000
    lengths = {"a/short.wav": 20, "a/middle.wav": 70, "a/long.wav": 190}  # 1, 2 and 3 windows (4 minutes: capped)
    rng = np.random.default_rng(0)
    members = [(p, h.encode_audio((0.3 * rng.standard_normal(s * sr)).astype(np.float32), sr, "wav"))
               for p, s in lengths.items()]
    h.write_zip(tmp_path / "zips" / "one.zip", members)
    decoded, windows = [], []
    iter_segments, tag = zipjob.audio.iter_segments, tags.Tagger.tags
    monkeypatch.setattr(zipjob.audio, "iter_segments", lambda path, *a, **kw: (
        decoded.append(path.name), iter_segments(path, *a, **kw))[1])
    monkeypatch.setattr(tags.Tagger, "tags", lambda self, w, rate: (windows.append(len(w)), tag(self, w, rate))[1])
    summary = _run(tmp_path / "zips", tmp_path / "tokens", tmp_path / "s", describe="all", clap="tiny")
    assert summary["files_ok"] == 3 and len(decoded) == 3, decoded  # one decode per track, encoder and analysis
    assert sorted(windows) == [1, 2, 3]
    assert all(r["source"] == "auto" for r in _lines(tmp_path / "tokens"))
