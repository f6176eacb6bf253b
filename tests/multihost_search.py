"""One process of tests/test_multihost.py's pruned-search check (not collected as a test).

  python -m tests.multihost_search COORDINATOR_PORT PROCESS_ID

Two processes, one CPU device each, one mesh across both. Every process makes the same
data, searches it with ``method="pruned"`` on the mesh (a database laid along the mesh,
each process holding only its own rows; host queries split along the mesh) and checks the
answer against the one-device brute-force search of the whole data. Prints one JSON line
of the stats; exits non-zero on a difference.
"""
import json
import sys

import jax
import numpy as np

from jaxlin import bounds, knn, sharding
from jaxlin.errors import InputError
from tests.test_bounds import SHAPE, adversarial, smooth_images


def main(port: str, process_id: str) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=int(process_id), initialization_timeout=60)
  mesh = sharding.make_mesh()
  assert jax.process_count() == 2 and mesh.devices.size == 2
  q, db = adversarial()
  # 1,160 rows: 580 on each device, enough for the first rounds of L2 and L1 to run.
  db = np.concatenate([db, smooth_images(np.random.default_rng(1), 860), db[:40]])
  n = len(db)
  lo, hi = sharding.process_rows(n, mesh)
  laid = sharding.rows_to_global(db[lo:hi], n, mesh)  # this process's rows only
  out = {}
  for metric in ("l2", "l1"):
    d0, i0 = knn.search(q, db, 7, metric=metric, method="brute")
    for layout, database, num_database in (("database", laid, n), ("queries", db, None)):
      d, i, stats = knn.search(q, database, 7, metric=metric, mesh=mesh, layout=layout,
                               num_database=num_database, method="pruned", return_stats=True,
                               image_shape=SHAPE)
      np.testing.assert_array_equal(np.asarray(i), np.asarray(i0))
      np.testing.assert_array_equal(np.asarray(d), np.asarray(d0))
      out[f"{metric} {layout}"] = {key: stats[key] for key in (
          "queries", "first_round", "second_round", "brute_force")}
      out[f"{metric} {layout}"]["per_device"] = [p["queries"] for p in stats["per_device"]]
  try:  # the queries layout needs the whole database on every process
    knn.search(q, laid, 7, mesh=mesh, layout="queries", method="pruned")
    raise AssertionError("a database spanning processes was accepted with layout 'queries'")
  except InputError as e:
    assert e.argument == "database_NxD" and "every process needs the whole" in str(e), e
  # A process whose search fails (in either layout) still takes part in the exchange: both
  # raise, none waits. So do processes given different queries.
  real = bounds.build_index
  for layout, database, num_database in (("database", laid, n), ("queries", db, None)):
    if jax.process_index() == 1:
      bounds.build_index = lambda *a, **kw: (_ for _ in ()).throw(MemoryError("no memory"))
    out[f"failure {layout}"] = _error(lambda: knn.search(
        q, database, 7, mesh=mesh, layout=layout, num_database=num_database, method="pruned"))
    bounds.build_index = real
  other = q if jax.process_index() == 0 else q[::-1]
  out["other queries"] = _error(lambda: knn.search(other, db, 7, mesh=mesh, method="pruned"))
  # A mesh of process 0's device only: process 1 is told, process 0 searches alone.
  first = sharding.make_mesh([d for d in jax.devices() if d.process_index == 0])
  out["mesh of process 0"] = _error(lambda: knn.search(q, db, 7, mesh=first, method="pruned"))
  out["rows of process 0's mesh"] = _error(lambda: sharding.process_rows(n, first))
  out["laid on process 0's mesh"] = _error(lambda: sharding.rows_to_global(db[:0], n, first))
  print(json.dumps(out, sort_keys=True), flush=True)


def _error(call) -> str:
  """``call()``'s error as "Type: message", or "ok"."""
  try:
    call()
    return "ok"
  except (InputError, MemoryError, RuntimeError) as e:
    return f"{type(e).__name__}: {e}"


if __name__ == "__main__":
  main(*sys.argv[1:])
