import os
import subprocess
import sys

import numpy as np
import pytest

from jaxlin import knn, sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sharded_paths_on_eight_simulated_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                         "tests/multidevice"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  assert "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]


def test_one_device_mesh_is_the_plain_search():
  rng = np.random.default_rng(0)
  q, db = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(20, 4)).astype(np.float32)
  mesh = sharding.make_mesh()
  for mode in ("queries", "database"):
    d, i = sharding.search(q, db, 3, mesh=mesh, mode=mode)
    d0, i0 = knn.search(q, db, 3)
    np.testing.assert_array_equal(i, i0)
  with pytest.raises(ValueError, match="unknown mode"):
    sharding.search(q, db, 3, mesh=mesh, mode="both")
