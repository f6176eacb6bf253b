"""The public surface: lazy package, __all__ of each module, and the README's code runs."""
import importlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "README.md")
OWNED = ("features", "linear", "losses", "metrics", "mlp", "plots", "train")


def test_import_jaxlin_is_lazy_and_needs_no_tensorflow():
  code = ("import sys, jaxlin; assert 'tensorflow' not in sys.modules; "
          "assert callable(jaxlin.knn.search) and callable(jaxlin.train.make_train_step); "
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
          "assert 'jaxlin.data' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                 env=dict(os.environ, PYTHONPATH=ROOT))


def test_package_docstring_lists_every_module():
  import jaxlin
  for name in jaxlin.__all__:
    assert re.search(rf"^\* {name}: ", jaxlin.__doc__, re.M), name
  with pytest.raises(AttributeError):
    jaxlin.no_such_module  # pylint: disable=pointless-statement


@pytest.mark.parametrize("name", OWNED)
def test_all_names_public_documented_objects(name):
  module = importlib.import_module(f"jaxlin.{name}")
  assert module.__all__, name
  for attr in module.__all__:
    assert not attr.startswith("_") and hasattr(module, attr), (name, attr)
    obj = getattr(module, attr)
    if callable(obj) and not isinstance(obj, type(np)):
      assert getattr(obj, "__doc__", None), (name, attr)


def _blocks():
  """The python blocks of the README's section "Using jaxlin in your own code"."""
  with open(DOC) as f:
    text = f.read()
  section = text.split("## Using jaxlin in your own code\n", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def _small_dataset(data):
  """Ten colour-coded classes of 16 x 16 uint8 images (HOG: 2 x 2 cells)."""
  rng = np.random.default_rng(0)

  def split(n):
    y = np.arange(n) % 10
    base = np.stack([np.full(3, 25 * c) for c in range(10)])[y][:, None, None, :]
    base = base + (np.arange(16)[None, :, None, None] * (y[:, None, None, None] % 3))
    x = np.clip(base + rng.normal(0, 8, (n, 16, 16, 3)), 0, 255).astype(np.uint8)
    return data.Split(x, y.astype(np.int32))

  names = tuple(f"class{i}" for i in range(10))
  return data.Dataset(train=split(240), val=split(40), test=split(40), class_names=names)


@pytest.mark.long
def test_readme_snippets_run(tmp_path, monkeypatch):
  import matplotlib
  matplotlib.use("Agg")  # this test's own choice; jaxlin never switches the backend
  import matplotlib.pyplot as plt
  from jaxlin import data
  blocks = _blocks()
  assert len(blocks) == 7
  ds = _small_dataset(data)
  monkeypatch.setattr(data, "load", lambda name, **kw: ds)  # generated data, no download
  monkeypatch.chdir(tmp_path)
  source = "\n".join(blocks).replace("num_steps = 2000", "num_steps = 12")
  namespace = {}
  try:
    exec(compile(source, DOC, "exec"), namespace)  # pylint: disable=exec-used
  finally:
    plt.close("all")
  fit = namespace["fit"]
  assert fit.compile_count == 1 and fit.losses.shape == (12, 4)
  assert np.isfinite(float(namespace["step_metrics"]["loss"]))
  assert namespace["pred"].shape == (40,)
  assert namespace["acc"].shape == (5, 3) and namespace["d"].shape == (4, 10)
  assert os.path.getsize(tmp_path / "figures" / "overview.png") > 1000
