"""Where the suite is published: the repository slug and the release every badge and install line uses."""

from __future__ import annotations

# The repository every badge and install line points at: change it here, and the notebook test
# (tests/test_notebooks.py) will tell you which notebook cells still point elsewhere.
REPO_SLUG = "musicgen-lora/musicgen-lora-colab"
# One pinned release for the badges and for the install line: a badge opens the notebooks of this
# tag, and they install the package of the same tag, so they always match (main may move on).
# To release: set the next tag here, commit, tag that commit with it, push the tag.
REPO_REF = "v0.1.0"
INSTALL_REF = REPO_REF


def install_url() -> str:
    """The pip requirement the notebooks install: this repository at the pinned ``INSTALL_REF``."""
    return f"git+https://github.com/{REPO_SLUG}@{INSTALL_REF}"


def colab_url(relative_path: str) -> str:
    """Colab URL that opens ``relative_path`` of this repository from GitHub."""
    return f"https://colab.research.google.com/github/{REPO_SLUG}/blob/{REPO_REF}/{relative_path}"

