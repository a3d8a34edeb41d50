"""pyproject.toml and requirements.txt: what a Colab install resolves, and what CI installs.

Colab ships CUDA torch and numpy (never pin them) and older ipywidgets / IPython (loose lower
bounds); the headless notebook runner is an extra, not a core dependency; every third-party
module nbutils imports is declared; requirements.txt installs all of it for CI.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from nbutils.colab import notebooks

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CORE = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
EXTRAS = {name: [Requirement(r) for r in reqs] for name, reqs in PYPROJECT["project"]["optional-dependencies"].items()}
# Modules a runtime provides itself, never installed by pip: why each is allowed undeclared.
PROVIDED = {"google": "google.colab exists only inside Colab; nbutils imports it only there"}
# Versions Colab's runtime has shipped; the suite must accept them rather than replace them.
COLAB_SHIPS = {"ipywidgets": "7.7.1", "ipython": "7.34.0"}


def _names(reqs) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


def test_setuptools_is_new_enough_for_an_spdx_license_string():
    assert PYPROJECT["project"]["license"] == "MIT"  # an SPDX expression: setuptools >= 77
    (build,) = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    assert build.name == "setuptools" and not build.specifier.contains("76.9") and build.specifier.contains("77.0")


def test_torch_and_numpy_are_never_pinned():
    for req in CORE + [r for reqs in EXTRAS.values() for r in reqs]:
        if canonicalize_name(req.name) in ("torch", "numpy"):
            assert not req.specifier, f"{req}: Colab's own build must satisfy it"
    assert {"torch", "numpy"} <= _names(CORE)


def test_the_notebook_runner_is_an_extra_not_a_core_dependency():
    runner = set(notebooks.RUNNER_PACKAGES)
    assert not runner & _names(CORE), "nbclient/nbformat/ipykernel are for the demo and tests only"
    assert runner <= _names(EXTRAS["demo"]) and runner <= _names(EXTRAS["test"])
    assert notebooks.DEMO_EXTRA == f"{PYPROJECT['project']['name']}[demo]"


def test_colab_preinstalled_versions_are_accepted():
    core = {canonicalize_name(r.name): r for r in CORE}
    for name, version in COLAB_SHIPS.items():
        assert core[name].specifier.contains(version), f"{core[name]} would replace Colab's {name} {version}"


def _imports(path: Path):
    """``(module, at_top_level)`` for absolute imports, skipping the optional ones (``try: ... except ImportError``)."""
    optional: set[int] = set()
    tree = ast.parse(path.read_text())
    optional_errors = ("ImportError", "ModuleNotFoundError")
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in optional_errors for h in node.handlers):
            parts = (node.body, *[h.body for h in node.handlers])
            optional |= {id(n) for part in parts for s in part for n in ast.walk(s)}
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            yield from ((a.name, id(node) in top) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module, id(node) in top


def test_every_third_party_import_is_declared():
    """Top-level imports need a core dependency; imports inside functions a core or extra one."""
    distributions = md.packages_distributions()
    core, anywhere = _names(CORE), _names(CORE) | {n for reqs in EXTRAS.values() for n in _names(reqs)}
    problems = []
    for path in sorted((REPO / "nbutils").rglob("*.py")):
        for module, at_top in _imports(path):
            root = module.split(".")[0]
            if root in sys.stdlib_module_names or root == "nbutils" or root in PROVIDED:
                continue
            dists = {canonicalize_name(d) for d in distributions.get(root, [])}
            assert dists, f"{path.relative_to(REPO)} imports {module}, which is not installed here"
            if not dists & (core if at_top else anywhere):
                problems.append(f"{path.relative_to(REPO)}: {module} ({', '.join(sorted(dists))}) "
                                f"{'at module level needs a core dependency' if at_top else 'is not declared'}")
    assert problems == []


def test_requirements_txt_installs_everything_declared():
    """CI installs requirements.txt then the package with --no-deps: it must hold every requirement."""
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    listed = {canonicalize_name(r.name): r for r in map(Requirement, filter(None, lines))}
    for req in CORE + [r for reqs in EXTRAS.values() for r in reqs]:
        name = canonicalize_name(req.name)
        assert name in listed, f"requirements.txt lacks {req}"
        assert listed[name].specifier == req.specifier, f"requirements.txt has {listed[name]}, pyproject {req}"


@pytest.mark.slow
def test_the_wheel_ships_the_label_lists(tmp_path):
    """pyproject's package-data: a pip install (Colab's) gets nbutils/tokenize/labels.json with the code."""
    import shutil
    import zipfile

    source = tmp_path / "checkout"  # what pip gets from GitHub
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "nbutils", source / "nbutils", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert "nbutils/tokenize/labels.json" in zf.namelist()
        assert json.loads(zf.read("nbutils/tokenize/labels.json"))["genre"]


def test_demo_without_nbclient_says_what_to_install(tmp_path):
    """``python -m nbutils demo`` where the runner extra is not installed: one line, exit 2, nothing made."""
    code = ("import sys; sys.modules['nbclient'] = None  # as if not installed\n"
            "from nbutils import cli; sys.exit(cli.main(['demo', '--out', sys.argv[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "demo")], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("Error: Running the notebooks headlessly needs nbclient,")
    assert f'pip install "{notebooks.DEMO_EXTRA}"' in proc.stderr and "requirements.txt" in proc.stderr
    assert not (tmp_path / "demo").exists()


# ---------------------------------------------------------------------------------------------
# Colab's package set and honest floors
# ---------------------------------------------------------------------------------------------

COLAB_PINS = REPO / ".ci" / "colab-pins.txt"
COLAB_MANIFEST = REPO.parent / "shared" / "colab" / "pip-freeze.gpu.txt"  # beside the clone in CI
# Declared packages that are not in Colab's runtime, or that CI runs at its own newest versions.
NOT_ON_COLAB = {"torch", "numpy", "pytest", "pytest-timeout", "pytest-xdist", "ruff", "setuptools", "playwright"}
# Removed from the standard library in Python 3.13 (PEP 594, and lib2to3): Colab runs 3.13.
REMOVED_IN_313 = {"aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "mailcap", "msilib", "nis",
                  "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau", "telnetlib", "uu", "xdrlib",
                  "lib2to3"}


def _pins() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in COLAB_PINS.read_text().splitlines()]
    reqs = [Requirement(line) for line in lines if line]
    return {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in reqs}


def test_colab_pins_are_colabs_published_versions():
    if not COLAB_MANIFEST.exists():
        pytest.skip(f"Colab's manifest is not beside this clone ({COLAB_MANIFEST}); CI has it")
    published = {}
    for line in COLAB_MANIFEST.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            published[canonicalize_name(name)] = version.split("+")[0]
    assert {name: published.get(name) for name in _pins()} == _pins()


def test_every_lower_bound_is_the_tested_colab_version():
    """A floor is a version the suite runs at: Colab's (make test-colab pins them), never a guess."""
    pins = _pins()
    for req in CORE + [r for reqs in EXTRAS.values() for r in reqs]:
        name = canonicalize_name(req.name)
        if name in NOT_ON_COLAB:
            continue
        assert name in pins, f"{req}: add Colab's version to {COLAB_PINS.name}, so CI tests the floor"
        floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert floors == [Version(pins[name])], f"{req}: the floor must be Colab's tested {pins[name]}"
    declared = _names(CORE) | {n for reqs in EXTRAS.values() for n in _names(reqs)}
    assert set(pins) <= declared, f"pinned but not declared: {set(pins) - declared}"


def test_python_313_is_declared_and_nothing_removed_in_it_is_imported():
    spec = PYPROJECT["project"]["requires-python"]
    from packaging.specifiers import SpecifierSet

    assert all(SpecifierSet(spec).contains(v) for v in ("3.11", "3.12", "3.13")), spec
    classifiers = set(PYPROJECT["project"]["classifiers"])
    assert {f"Programming Language :: Python :: 3.{m}" for m in (11, 12, 13)} <= classifiers
    used = {module.split(".")[0] for folder in ("nbutils", "tests", "benchmarks")
            for path in (REPO / folder).rglob("*.py") for module, _ in _imports(path)}
    assert used & REMOVED_IN_313 == set()
