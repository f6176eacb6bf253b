import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxlin import knn, sharding
from jaxlin.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sharded_paths_on_eight_simulated_devices(tmp_path):
  from jaxlin import data  # pylint: disable=import-outside-toplevel
  from tests.conftest import make_image_folder  # pylint: disable=import-outside-toplevel
  root, cache = str(tmp_path / "images"), str(tmp_path / "cache")
  make_image_folder(root)
  for split in ("train", "test"):  # decoded here: the subprocess needs no TensorFlow
    data.load_split(f"folder:{root}", split, cache_dir=cache)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             JAXLIN_TEST_FOLDER=root, JAXLIN_TEST_CACHE=cache)
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         "-o", "addopts=",
                         "tests/multidevice"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  assert "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]


def test_one_device_mesh_is_the_plain_search():
  rng = np.random.default_rng(0)
  q, db = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(20, 4)).astype(np.float32)
  mesh = sharding.make_mesh(jax.devices()[:1])
  d0, i0 = knn.search(q, db, 3)
  for layout in knn.LAYOUTS:
    d, i = knn.search(q, db, 3, mesh=mesh, layout=layout)
    np.testing.assert_array_equal(i, i0)
    np.testing.assert_array_equal(d, d0)
  laid = sharding.rows_to_global(db, 20, mesh)
  d, i = knn.search(q, laid, 3, mesh=mesh, layout="database", num_database=20)
  np.testing.assert_array_equal(i, i0)
  np.testing.assert_array_equal(d, d0)
  with pytest.raises(InputError, match="unknown layout") as e:
    knn.search(q, db, 3, mesh=mesh, layout="both")
  assert e.value.argument == "layout"


def test_sharding_imports_nothing_of_jaxlin():
  import ast  # pylint: disable=import-outside-toplevel
  with open(os.path.join(ROOT, "jaxlin", "sharding.py")) as f:
    tree = ast.parse(f.read())
  names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
  names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
  assert not [m for m in names if m.startswith("jaxlin")]
  assert not hasattr(sharding, "search")
