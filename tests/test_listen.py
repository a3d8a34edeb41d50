"""listen.html in a real headless browser: it loads, every player has a playable source, picks are tallied.

The browser is the system's Chromium (Debian's ``chromium``; ``.ci/run`` installs it), driven by
playwright from PyPI with ``executable_path``: no browser is downloaded. ``NBUTILS_CHROMIUM``
points at another Chromium or Chrome binary.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from nbutils.evaluate import listen

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = os.environ.get("NBUTILS_CHROMIUM") or next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if not found:
        pytest.fail("No Chromium found: install Debian's chromium (apt-get install chromium; .ci/run does) "
                    "or set NBUTILS_CHROMIUM to a Chromium/Chrome binary.")
    return found


@pytest.fixture
def browser(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=chromium(),
                                                       headless=True, args=ARGS, accept_downloads=True)
        try:
            yield context
        finally:
            context.close()


def _evaluation(tmp_path: Path) -> tuple[Path, list[dict]]:
    """An evaluation folder with clips of two prompts for base and one adapter, and its page."""
    out = tmp_path / "eval"
    samples = []
    for model in ("base", "lora-best"):
        for n, prompt in enumerate(("calm piano", 'dark "techno" <b>')):
            for seed in (3, 4):
                path = out / "samples" / model / f"{n}-{seed}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                tone = 0.3 * np.sin(2 * np.pi * (220 + 110 * n) * np.arange(16_000) / 32_000)
                sf.write(path, tone.astype(np.float32), 32_000, subtype="PCM_16")
                samples.append({"model": model, "prompt": prompt, "seed": seed, "path": str(path)})
    sets = {"style": ["calm piano"], "generic": ['dark "techno" <b>']}
    chosen = listen.pairs(samples, sets, ["lora-best"], "base", seed=3)
    facts = listen.write(out, chosen, "Blind A/B: test")
    return out, facts


def _players(page) -> list[dict]:
    page.wait_for_function("Array.from(document.querySelectorAll('audio')).every(a => a.readyState >= 1)",
                           timeout=15_000)
    return page.evaluate("""Array.from(document.querySelectorAll('audio')).map(a => ({
        src: a.getAttribute('src'), ready: a.readyState, duration: a.duration, error: a.error && a.error.code,
        wav: a.canPlayType('audio/wav'), mp3: a.canPlayType('audio/mpeg')}))""")


def test_the_page_loads_plays_tallies_reveals_and_downloads(tmp_path, browser):
    out, facts = _evaluation(tmp_path)
    assert sorted(p.name for p in (out / listen.FOLDER).iterdir()) == [
        "pair-001-a.wav", "pair-001-b.wav", "pair-002-a.wav", "pair-002-b.wav"]
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto((out / listen.PAGE).as_uri())
    players = _players(page)
    assert len(players) == 4
    for player in players:
        assert (out / player["src"]).is_file(), "a relative file beside the page"
        assert player["wav"] and player["error"] is None and player["duration"] == pytest.approx(0.5, abs=0.01)
    assert "lora-best" not in page.inner_text("body"), "blind until revealed"
    assert page.inner_text("#tally") == "0 of 2 pairs picked"
    page.click('button.pick[data-pair="1"][data-choice="b"]')
    page.click('button.pick[data-pair="1"][data-choice="a"]')  # a change of mind counts once
    page.click('button.pick[data-pair="2"][data-choice="b"]')
    assert page.inner_text("#tally") == "2 of 2 pairs picked"
    page.click("#reveal")
    key = json.loads(base64.b64decode(facts["key"]))
    preferred = [key["1"][0], key["2"][1]]
    result = page.inner_text("#result")
    for model in set(preferred):
        assert f"{model} preferred in {preferred.count(model)}" in result
    assert f"A was {key['1'][0]}, B was {key['1'][1]}" in page.inner_text("#pair-1")
    with page.expect_download() as download:
        page.click("#download")
    tally = json.loads(Path(download.value.path()).read_text())
    assert [p["preferred"] for p in tally["pairs"]] == preferred and tally["picked"] == 2
    assert tally["pairs"][1]["prompt"] == 'dark "techno" <b>', "prompts are escaped, not markup"
    assert errors == []


def test_the_inline_page_for_a_notebook_embeds_playable_audio(tmp_path, browser):
    out, facts = _evaluation(tmp_path)
    html = listen.inline(facts)
    assert 'src="listen/' not in html and html.count('src="data:audio/') == 4
    page = browser.new_page()
    page.set_content(html)
    for player in _players(page):
        assert player["error"] is None and player["duration"] == pytest.approx(0.5, abs=0.1)
        assert player["mp3"] if player["src"].startswith("data:audio/mpeg") else player["wav"]
    page.click('button.pick[data-pair="2"][data-choice="a"]')
    assert page.inner_text("#tally") == "1 of 2 pairs picked"


def test_pairs_are_blind_stable_and_one_per_prompt_and_adapter(tmp_path):
    out, facts = _evaluation(tmp_path)
    again = listen.pairs([{"model": m, "prompt": p, "seed": s, "path": "x"} for m in ("base", "lora-best")
                          for p in ("calm piano", 'dark "techno" <b>') for s in (3, 4)],
                         {"style": ["calm piano"], "generic": ['dark "techno" <b>']}, ["lora-best"], "base", seed=3)
    key = json.loads(base64.b64decode(facts["key"]))
    assert [p["models"] for p in again] == [key["1"], key["2"]], "the same order on every run"
    assert all(sorted(p["models"]) == ["base", "lora-best"] for p in again)
    clips = [{"model": m, "prompt": str(i), "seed": 0, "path": "x"} for m in ("base", "l") for i in range(40)]
    many = listen.pairs(clips, {"style": [str(i) for i in range(40)]}, ["l"], "base", seed=0)
    firsts = [p["models"][0] for p in many]
    assert 8 < firsts.count("base") < 32, "the order is drawn per pair"
