import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlin import knn, sharding
from jaxlin.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.long
def test_sharded_paths_on_eight_simulated_devices(tmp_path):
  from jaxlin import data  # pylint: disable=import-outside-toplevel
  from tests.conftest import make_image_folder  # pylint: disable=import-outside-toplevel
  root, cache = str(tmp_path / "images"), str(tmp_path / "cache")
  make_image_folder(root)
  for split in ("train", "test"):  # decoded here: the subprocess needs no TensorFlow
    data.load_split(f"folder:{root}", split, cache_dir=cache)
  flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu",
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
  # float64 rows near 1e7 with num_database but no padding: centred in float64, as without.
  far = db.astype(np.float64) / 4 + 1e7
  d, i = knn.search(far[:2], far, 3, mesh=mesh, layout="database", num_database=20)
  np.testing.assert_array_equal(i, knn.search(far[:2], far, 3)[1])
  np.testing.assert_array_equal(i, knn.search(db[:2], db, 3)[1])  # float32 spacing 1 at 1e7
  with pytest.raises(InputError, match="unknown layout") as e:
    knn.search(q, db, 3, mesh=mesh, layout="both")
  assert e.value.argument == "layout"
  # Under jit it is refused as on several devices (was JAX's ConcretizationTypeError: the
  # answer is gathered to the host).
  with pytest.raises(InputError, match="a search on a mesh runs outside jit") as e:
    jax.jit(lambda a: knn.search(a, db, 3, mesh=mesh))(q)
  assert e.value.argument == "mesh"


def test_sharding_imports_only_the_argument_checks_of_jaxlin():
  import ast  # pylint: disable=import-outside-toplevel
  with open(os.path.join(ROOT, "jaxlin", "sharding.py")) as f:
    tree = ast.parse(f.read())
  names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
  names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
  # A leaf below knn and train: of jaxlin only the checks and error types, which import no
  # other jaxlin module.
  assert sorted({m for m in names if m.startswith("jaxlin")}) == ["jaxlin", "jaxlin.errors"]
  imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
              and n.module == "jaxlin" for a in n.names]
  assert imported == ["_checks"]
  assert not hasattr(sharding, "search")


def test_mesh_and_row_helpers_refuse_what_cannot_be_laid_out():
  mesh = sharding.make_mesh(jax.devices()[:1])
  d0 = jax.devices()[0]
  for call, argument, message in [
      (lambda: sharding.make_mesh([]), "devices", "non-empty list of jax devices"),
      (lambda: sharding.make_mesh([0, 1]), "devices", "non-empty list of jax devices"),
      (lambda: sharding.make_mesh([d0, d0]), "devices", "more than once"),  # wrong row ranges
      (lambda: sharding.padded_rows(5.5, mesh), "n", "must be an integer"),  # was 8.0
      (lambda: sharding.process_rows(-1, mesh), "n", ">= 0"),  # was (-1, -1)
      (lambda: sharding.padded_rows(5, None), "mesh", "1-D jax.sharding.Mesh"),
      (lambda: sharding.rows_to_global(np.array([2 ** 40, 1]), 2, mesh), "local",
       "beyond int32"),  # JAX wrapped it to 0
      (lambda: sharding.rows_to_global(np.zeros((4, 3)), 5, mesh), "local",
       r"rows \[0, 5\) of the 5, but local has shape \(4, 3\)"),
  ]:
    with pytest.raises(InputError, match=message) as e:
      call()
    assert e.value.argument == argument
  np.testing.assert_array_equal(sharding.to_host(np.arange(3)), np.arange(3))
  # Any 1-D mesh, whatever its axis name (knn.search takes them), and bfloat16 rows.
  other = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
  assert sharding.padded_rows(3, other) == 3
  rows = np.arange(6, dtype=np.float32).reshape(3, 2).astype(jnp.bfloat16)
  laid = sharding.rows_to_global(rows, 3, other)
  assert laid.dtype == jnp.bfloat16 and np.asarray(laid, np.float32).tolist() == [
      [0, 1], [2, 3], [4, 5]]


def test_the_default_platform_follows_jax_default_device(monkeypatch):
  """Under `with jax.default_device(cpu)` on a GPU machine host data goes to the CPU, but
  jax.default_backend() still says "gpu": searches took a GPU's tiles and skipped the CPU's
  host selection and cascade there."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # as on a GPU machine
  assert sharding.default_platform() == "gpu"
  for device in (jax.devices("cpu")[0], "cpu"):
    with jax.default_device(device):
      assert sharding.default_platform() == "cpu"
      assert knn._platform(None, np.zeros((2, 2))) == "cpu"  # pylint: disable=protected-access
