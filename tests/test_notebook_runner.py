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


def test_injected_values_reach_the_settings_the_parameters_cell_derives():
    """``SETTINGS = dict(...)`` in the parameters cell runs before the injected cell: the injected cell
    derives it again, so the demo's values (and any injected ones) reach every later cell."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('X = 1  #@param\nMORE = {}\nSETTINGS = dict(x=X,\n                **MORE)'),
                nbformat.v4.new_code_cell("print(SETTINGS)")]
    nb.cells[0].metadata["tags"] = ["parameters"]
    notebooks.inject_parameters(nb, {"X": 5, "MORE": {"y": 2}})
    namespace: dict = {}
    for cell in nb.cells[:2]:
        exec(cell.source, namespace)
    assert namespace["SETTINGS"] == {"x": 5, "y": 2}
    assert notebooks.derived_assignments(nb.cells[0].source) == ["SETTINGS = dict(x=X,\n                **MORE)"]
