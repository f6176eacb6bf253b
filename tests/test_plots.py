import io
import os
import stat
import subprocess
import sys

import matplotlib.figure
import numpy as np
import pytest
from PIL import Image

from jaxlin import plots
from jaxlin.errors import InputError

NAMES = ("cat", "dog", "frog")
_RNG = np.random.default_rng(0)
CALLS = {
    "cross_validation": lambda ax: plots.cross_validation(
        [1, 3, 5], {"L1": _RNG.random((3, 3)), "L2": _RNG.random((3, 3))}, ax=ax),
    "neighbors": lambda ax: plots.neighbors(
        _RNG.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8), [0, 1],
        _RNG.integers(0, 256, (2, 3, 4, 4, 3), dtype=np.uint8), np.array([[0, 1, 2], [1, 1, 0]]),
        NAMES, ax=ax),
    "confusion": lambda ax: plots.confusion(np.array([[3, 1, 0], [0, 2, 1], [1, 0, 4]]), NAMES,
                                            title="test", ax=ax),
    "templates": lambda ax: plots.templates(_RNG.normal(size=(4 * 4 * 3, 3)), (4, 4, 3), NAMES,
                                            ax=ax),
    "curves": lambda ax: plots.curves({"a": ([1, 2, 3], [3.0, 2.0, 1.0]), "b": ([1, 2], [1, 2])},
                                      logy=True, smooth=2, highlight="a", ax=ax),
    "grid": lambda ax: plots.grid(np.array([[0.1, np.nan], [0.3, 0.4]]), [1e-3, 1e-2], [0.0, 1.0],
                                  a_label="lr", b_label="reg", ax=ax),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_each_plot_returns_a_figure_or_draws_into_the_given_ax(name):
  fig = CALLS[name](None)
  assert isinstance(fig, matplotlib.figure.Figure) and fig.axes
  host = matplotlib.figure.Figure()
  left, right = host.subplots(1, 2)
  assert CALLS[name](right) is host
  assert not left.has_data() and not left.child_axes  # only the given Axes was drawn in
  assert right.has_data() or right.child_axes
  host.savefig(io.BytesIO(), format="png")  # renders headless, without pyplot


def test_save_writes_a_png_with_the_users_umask_and_keeps_the_figure(tmp_path):
  fig = CALLS["curves"](None)
  old = os.umask(0o022)
  try:
    path = plots.save(fig, str(tmp_path / "sub" / "loss.png"))
  finally:
    os.umask(old)
  assert path == str(tmp_path / "sub" / "loss.png")
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size[0] > 100
  assert plots.save(fig, str(tmp_path / "again.png"))  # still usable after saving
  assert sorted(os.listdir(tmp_path / "sub")) == ["loss.png"]  # no temporary left behind


def test_import_keeps_the_backend_and_pyplot_untouched():
  code = ("import matplotlib, sys; before = matplotlib.get_backend(); import jaxlin.plots; "
          "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend()); "
          "assert 'matplotlib.pyplot' not in sys.modules")
  env = dict(os.environ, MPLBACKEND="svg")
  subprocess.run([sys.executable, "-c", code], check=True, env=env,
                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_names_and_labels_must_fit_the_images():
  with pytest.raises(InputError, match="class_names has 2 names for 3 templates"):
    plots.templates(_RNG.normal(size=(4 * 4 * 3, 3)), (4, 4, 3), NAMES[:2])
  with pytest.raises(InputError, match=r"labels must lie in \[0, 3\)"):
    plots.neighbors(np.zeros((1, 4, 4, 3), np.uint8), [0], np.zeros((1, 2, 4, 4, 3), np.uint8),
                    np.array([[0, 3]]), NAMES)
  with pytest.raises(InputError, match="no images to draw"):
    plots.neighbors(np.zeros((0, 4, 4, 3), np.uint8), [], np.zeros((0, 2, 4, 4, 3), np.uint8),
                    np.zeros((0, 2), int), NAMES)
