"""The README is the product's front page: its badges, commands, options and preset table must be true.

Regenerate the GPU preset table after changing nbutils/train/presets.py with
``python tests/test_readme.py`` and paste it into README.md.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # also runnable as a script
    sys.path.insert(0, str(REPO))

from nbutils import cli, colab  # noqa: E402
from nbutils.colab.notebooks import NOTEBOOKS  # noqa: E402

README = REPO / "README.md"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def preset_table() -> str:
    """The README's GPU preset table, rendered from ``nbutils.presets``."""
    from nbutils.train import presets

    rows = presets.table()
    sizes = list(dict.fromkeys(p.model for p in rows))
    lines = ["| GPU | precision | " + " | ".join(f"musicgen-{s}" for s in sizes) + " |",
             "|---|---|" + "---|" * len(sizes)]
    for device in dict.fromkeys(p.device for p in rows):
        mine = {p.model: p for p in rows if p.device == device}
        cells = [f"{p.batch_size} × {p.grad_accum}{', checkpointing' if p.grad_checkpointing else ''} "
                 f"(~{p.memory_gb:.0f} GB)" for p in (mine[s] for s in sizes)]
        lines.append(f"| {device} | {mine[sizes[0]].precision} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_readme_has_one_badge_per_notebook_from_the_one_repository():
    readme = _readme()
    for name in NOTEBOOKS:
        badge = f"[![Open In Colab]({BADGE_IMAGE})]({colab.colab_url(f'notebooks/{name}.ipynb')})"
        assert badge in readme, f"README lacks the badge of {name}"
    for slug in re.findall(r"colab\.research\.google\.com/github/([^/\s]+/[^/\s]+)/", readme):
        assert slug == colab.REPO_SLUG
    for slug in re.findall(r"github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?[@/\"]", readme):
        assert slug == colab.REPO_SLUG
    assert colab.install_url() in readme


def test_readme_commands_are_what_ci_runs():
    """The README's two commands are Makefile targets, and CI runs the test one (then the Colab set)."""
    readme, ci, make = _readme(), (REPO / ".ci" / "run").read_text(), (REPO / "Makefile").read_text()
    assert "make demo   #" in readme and "make test   #" in readme
    assert "\nmake test\nmake test-colab\n" in ci
    assert "python -m nbutils demo --out demo_out" in make.split("\ndemo:")[1].split("\n\n")[0]
    assert "pytest" in make.split("\ntest:")[1].split("\n\n")[0]
    recipe = make.split("define install")[1].split("endef")[0]
    steps = ["venv", "$(TORCH)", "-r requirements.txt", "--no-deps -e ."]
    assert [recipe.index(step) for step in steps] == sorted(recipe.index(step) for step in steps), "torch first"


def _cli_lines(readme: str) -> list[list[str]]:
    """Each ``python -m nbutils ...`` / ``accelerate launch ... -m nbutils ...`` command in the README."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("#")[0].strip()
            if "-m nbutils" in command:
                words = shlex.split(command)
                commands.append(words[words.index("nbutils") + 1:])
    return commands


def test_every_cli_option_in_the_readme_exists():
    commands = _cli_lines(_readme())
    assert {c[0] for c in commands} == set(cli.COMMANDS), "document every command"
    for words in commands:
        parser = cli.build_parser(words[0])
        sub = parser._subparsers._group_actions[0].choices[words[0]]
        known = {flag for action in sub._actions for flag in action.option_strings}
        for word in words[1:]:
            flag = word.strip("[]").split("=")[0]
            if flag.startswith("--"):
                assert flag in known, f"README: `{words[0]} {flag}` is not an option of that command"


def test_readme_preset_table_matches_the_presets():
    assert preset_table() in _readme(), (
        "README's GPU preset table is out of date: run `python tests/test_readme.py` and paste its output")


if __name__ == "__main__":
    print(preset_table())


def test_troubleshooting_quotes_messages_the_code_really_says():
    """Each message the troubleshooting section quotes for tokenize and disk problems is written by nbutils."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "nbutils").rglob("*.py"))
    section = _readme().split("### Troubleshooting", 1)[1].split("\n## ", 1)[0]
    section = " ".join(section.split())  # quotes may wrap
    quotes = {  # as the README quotes it: the part of it the code holds literally
        "is in use by another tokenize run": None, "Took over the token folder's lock from a run that is gone": None,
        "This run lost the token folder's lock": None, "is on a read-only file system": None,
        "The disk holding": None, "corrupt or truncated ZIP": None, "could not write to the scratch folder": None,
        "could not read the ZIP": None, "this is a bug in nbutils": None,
        "encrypted: extract the ZIP with its password and re-zip it without one": None,
        "non-finite samples (NaN or infinity)": None, "samples far beyond full scale": None, "in the header": None,
        "ZIP file(s) inside this ZIP were not opened": None, "are names that differ only in case":
        "names that differ only in case", "the same name twice": None, "the same name once normalized": None,
        "nearly constant codes": None, "passed the 64 MiB budget": "passed the {budget.total >> 20} MiB budget",
        "damaged directory field(s) corrected in memory": None, "refused: an integer with N digits":
        "an integer with {len(", "refused: nested deeper than 64 levels": "nested deeper than {MAX_DEPTH} levels",
        '`"description" is a JSON object, not text`': '"a JSON object"',
    }
    for quoted, code in quotes.items():
        assert quoted in section, quoted
        assert (code or quoted) in source, code or quoted
