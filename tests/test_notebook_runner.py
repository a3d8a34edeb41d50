"""The headless runner itself: parameter injection and failure reporting."""

import nbformat
import pytest

from nbutils.colab import notebooks
from nbutils.core.errors import UserError


def _write(path, *sources, tags=None):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, str(path))
    return path


@pytest.mark.slow
def test_parameters_are_injected_and_user_errors_name_the_cell(tmp_path):
    ok = _write(tmp_path / "ok.ipynb", "X = 1", "print('X is', X)")
    out = notebooks.execute(ok, tmp_path / "ok.out.ipynb", {"X": 5}, cwd=tmp_path)
    executed = nbformat.read(str(out), 4)
    assert "X is 5" in notebooks.outputs_text(executed)
    assert executed.cells[1].metadata["tags"] == ["injected-parameters"]

    bad = _write(tmp_path / "bad.ipynb", "X = 1", "#@title 3. Train\nfrom nbutils import colab\ncolab.current()")
    with pytest.raises(UserError, match="3. Train.*Connect") as err:
        notebooks.execute(bad, tmp_path / "bad.out.ipynb", cwd=tmp_path)
    assert (tmp_path / "bad.out.ipynb").exists(), str(err.value)
