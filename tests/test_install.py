"""nbutils.install: which declared requirements a runtime lacks, and nothing to do when none.

The real pip path (fresh venv, constraints, a refused numpy downgrade) is in tests/test_colab.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nbutils import __version__
from nbutils.colab import install


def _distribution(site: Path, name: str, requires: list[str]) -> None:
    """An installed distribution's metadata, as pip leaves it in site-packages."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires))


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_missing_lists_unmet_core_requirements_only(site):
    _distribution(site, "fake-suite", [
        "numpy", "torch>=1.0",  # present
        "numpy>=999", "absent-package-xyz>=1",  # too old, absent
        'pytest>=1; extra == "test"', 'absent-two; sys_platform == "no-such-platform"',  # extra, other platform
    ])
    assert install.missing("fake-suite") == ["numpy>=999", "absent-package-xyz>=1"]


def test_missing_is_none_when_the_suite_is_not_pip_installed():
    assert install.missing("no-such-distribution-xyz") is None


def test_dependencies_does_nothing_when_everything_is_there(site, monkeypatch, capsys):
    _distribution(site, "fake-suite", ["numpy", 'absent-package-xyz; extra == "demo"'])
    monkeypatch.setattr(install, "DISTRIBUTION", "fake-suite")
    assert install.dependencies(log_dir=site) == []
    assert capsys.readouterr().out == f"nbutils {__version__} and its dependencies are installed.\n"
    assert not (site / install.PINS_FILE).exists() and not (site / install.LOG_FILE).exists()


def test_dependencies_from_a_source_checkout_says_how_to_install_them(monkeypatch, capsys):
    monkeypatch.setattr(install, "DISTRIBUTION", "no-such-distribution-xyz")
    assert install.dependencies() == []
    out = capsys.readouterr().out
    assert "runs from a source checkout" in out and "pip install -r requirements.txt" in out
