"""``listen.html``: blind A/B pairs, base vs LoRA, one per prompt, with a tally to download.

Listening beats loss curves. For every adapter named with ``--adapter`` and every prompt, the
first seed's base and LoRA clips are copied under neutral names into ``listen/`` beside the page
(``pair-001-a.wav`` ...), in an order drawn per pair from the evaluation's seed, so the names and
the player order do not tell which is which. The page is one self-contained HTML file (no
network, no external script); its audio is the relative files beside it, so the evaluation folder
can be downloaded from Drive and opened as it is. ``inline`` gives the same page with the audio
embedded (MP3 where soundfile can write it, else WAV) for a notebook cell: Colab's output frame
cannot read files next to the notebook.

The answer key is in the page, base64-encoded: hidden from a glance, not from someone reading the
source. Picks are counted as they are made; "Reveal" shows which was which and the totals, and
"Download JSON" saves every pick with the key.
"""

from __future__ import annotations

import base64
import html
import io
import json
import random
import shutil
from pathlib import Path
from typing import Any, Callable

from nbutils.core import atomic

PAGE = "listen.html"
FOLDER = "listen"


def pairs(samples: list[dict], sets: dict[str, list[str]], adapters: list[str], base: str, seed: int) -> list[dict]:
    """The A/B pairs: per adapter and prompt, the first seed's base and adapter clips in a random order."""
    first = min((s["seed"] for s in samples), default=seed)
    clip = {(s["model"], s["prompt"]): s["path"] for s in samples if s["seed"] == first}
    order = random.Random(f"listen-{seed}")
    out = []
    for adapter in adapters:
        for name, prompts in sets.items():
            for prompt in prompts:
                if (base, prompt) not in clip or (adapter, prompt) not in clip:
                    continue
                lora_first = order.random() < 0.5
                models = [adapter, base] if lora_first else [base, adapter]
                out.append({"pair": len(out) + 1, "prompt": prompt, "set": name, "models": models,
                            "sources": [clip[(m, prompt)] for m in models]})
    return out


def copy_audio(out: Path, chosen: list[dict]) -> list[dict]:
    """Copy each pair's clips to ``out/listen/pair-NNN-a|b.wav``; returns the pairs with those relative paths."""
    folder = out / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for pair in chosen:
        pair["files"] = []
        for side, source in zip("ab", pair["sources"]):
            name = f"{FOLDER}/pair-{pair['pair']:03d}-{side}{Path(source).suffix}"
            with atomic.atomic_path(out / name) as tmp:
                shutil.copyfile(source, tmp)
            pair["files"].append(name)
    return chosen


def write(out: Path, chosen: list[dict], title: str) -> dict[str, Any]:
    """Write ``out/listen.html`` (and its audio in ``out/listen/``); returns its ``facts``."""
    copy_audio(out, chosen)
    page = out / PAGE
    atomic.write_text(page, render(chosen, title, lambda pair, side: pair["files"][side]))
    return facts(page, chosen, title)


def show(listening: dict[str, Any]) -> None:
    """The page inline in a notebook (Colab or Jupyter), audio embedded."""
    from IPython.display import HTML, display

    display(HTML(inline(listening)))


def mp3_data_uri(path: str | Path) -> str:
    """The clip as a ``data:`` URI: MP3 when soundfile can encode it (a tenth of the size), else WAV."""
    import soundfile as sf

    try:
        audio, rate = sf.read(str(path), dtype="float32")
        buffer = io.BytesIO()
        sf.write(buffer, audio, rate, format="MP3", subtype="MPEG_LAYER_III")
        data, kind = buffer.getvalue(), "audio/mpeg"
    except (sf.LibsndfileError, TypeError, ValueError):  # an old libsndfile without MP3
        data, kind = Path(path).read_bytes(), "audio/wav"
    return f"data:{kind};base64," + base64.b64encode(data).decode("ascii")


def inline(listening: dict[str, Any]) -> str:
    """The page of ``results["listening"]`` with its audio embedded, for a notebook output."""
    folder = Path(listening["page"]).parent
    key = json.loads(base64.b64decode(listening["key"]))
    chosen = [{**p, "models": key[str(p["pair"])]} for p in listening["pairs"]]
    return render(chosen, listening["title"], lambda pair, side: mp3_data_uri(folder / pair["files"][side]))


def _key(chosen: list[dict]) -> str:
    key = {str(p["pair"]): p["models"] for p in chosen}
    return base64.b64encode(json.dumps(key).encode()).decode("ascii")


def render(chosen: list[dict], title: str, source: Callable[[dict, int], str]) -> str:
    """The HTML of the page; ``source(pair, side)`` gives each player's ``src``."""
    blocks = []
    for pair in chosen:
        players = "".join(
            f'<div class="side"><b>{"AB"[s]}</b><audio controls preload="metadata" '
            f'src="{html.escape(source(pair, s), quote=True)}"></audio>'
            f'<button class="pick" data-pair="{pair["pair"]}" data-choice="{"ab"[s]}">'
            f'{"AB"[s]} is better</button></div>'
            for s in (0, 1))
        blocks.append(f'<section class="pair" id="pair-{pair["pair"]}"><h3>Pair {pair["pair"]} '
                      f'<small>({html.escape(pair["set"])} prompt)</small></h3>'
                      f'<p class="prompt">{html.escape(pair["prompt"])}</p>{players}'
                      f'<p class="answer" hidden></p></section>')
    meta = {"title": title, "pairs": [{"pair": p["pair"], "prompt": p["prompt"], "set": p["set"]} for p in chosen]}
    return TEMPLATE.format(title=html.escape(title), blocks="\n".join(blocks), count=len(chosen),
                           meta=json.dumps(meta).replace("</", "<\\/"), key=_key(chosen), script=SCRIPT)


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 56rem; margin: 1rem auto; padding: 0 1rem; color: #222; }}
.pair {{ border: 1px solid #ddd; border-radius: 8px; padding: .5rem 1rem; margin: .8rem 0; }}
.side {{ display: flex; align-items: center; gap: .6rem; margin: .3rem 0; }}
.prompt {{ font-style: italic; }}
button.pick.chosen {{ background: #2a7; color: white; }}
#bar {{ position: sticky; bottom: 0; background: #f6f6f6; padding: .6rem 1rem; border-top: 1px solid #ccc; }}
.answer {{ color: #555; }}
</style></head>
<body>
<h1>{title}</h1>
<p>Listen to both clips of each pair and pick the one you prefer. The order is random and the names are
hidden until you press <b>Reveal</b> at the end; then download the tally as JSON.</p>
{blocks}
<div id="bar"><span id="tally">0 of {count} pairs picked</span>
<button id="reveal">Reveal which was which</button> <button id="download" disabled>Download JSON</button>
<p id="result"></p></div>
<script id="meta" type="application/json">{meta}</script>
<script>const KEY = "{key}";</script>
<script>{script}</script>
</body></html>
"""

SCRIPT = r"""
const META = JSON.parse(document.getElementById("meta").textContent);
const picks = {};
let revealed = null;
function tally() {
  const done = Object.keys(picks).length;
  document.getElementById("tally").textContent = done + " of " + META.pairs.length + " pairs picked";
}
document.querySelectorAll("button.pick").forEach(function (button) {
  button.addEventListener("click", function () {
    const pair = button.dataset.pair;
    picks[pair] = button.dataset.choice;
    document.querySelectorAll('button.pick[data-pair="' + pair + '"]').forEach(function (b) {
      b.classList.toggle("chosen", b === button);
    });
    tally();
  });
});
function result() {
  const key = JSON.parse(atob(KEY));
  const rows = META.pairs.map(function (p) {
    const models = key[String(p.pair)];
    const pick = picks[String(p.pair)] || null;
    return {pair: p.pair, prompt: p.prompt, set: p.set, a: models[0], b: models[1], pick: pick,
            preferred: pick ? models[pick === "a" ? 0 : 1] : null};
  });
  const totals = {};
  rows.forEach(function (r) { if (r.preferred) { totals[r.preferred] = (totals[r.preferred] || 0) + 1; } });
  return {page: META.title, picked: rows.filter(function (r) { return r.pick; }).length, pairs: rows, totals: totals};
}
document.getElementById("reveal").addEventListener("click", function () {
  revealed = result();
  revealed.pairs.forEach(function (r) {
    const answer = document.querySelector("#pair-" + r.pair + " .answer");
    answer.hidden = false;
    answer.textContent = "A was " + r.a + ", B was " + r.b +
      (r.preferred ? "; you preferred " + r.preferred : "; no pick");
  });
  const parts = Object.keys(revealed.totals).map(function (m) { return m + " preferred in " + revealed.totals[m]; });
  document.getElementById("result").textContent = (parts.join(", ") || "No picks yet") +
    " (of " + revealed.picked + " picked pairs).";
  document.getElementById("download").disabled = false;
});
document.getElementById("download").addEventListener("click", function () {
  const blob = new Blob([JSON.stringify(result(), null, 2)], {type: "application/json"});
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "listening-tally.json";
  document.body.appendChild(link);
  link.click();
  link.remove();
});
"""


def facts(page: Path, chosen: list[dict], title: str) -> dict[str, Any]:
    """What ``results.json`` says about the page: its pairs and (base64) answer key, for ``inline``."""
    return {"page": str(page), "title": title, "key": _key(chosen),
            "pairs": [{"pair": p["pair"], "prompt": p["prompt"], "set": p["set"], "files": p["files"]} for p in chosen]}
