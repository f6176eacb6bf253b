r"""Where the pruned L2 search spends its time: the index build's block size and sample,
and the parts of one round, each timed in one process (best of several).

  python -m benchmarks.pruned_parts --dataset=folder:/data/cifar10-jpeg --out=runs/bench_parts

Rows:
* build, block B: the bounds, int8 pixels and norms of all training rows in blocks of B
  rows (``bounds._l2_build``), the components computed once beforehand;
* build, sample S: ``bounds.build_index`` with S rows for the components, and the queries
  of ``--queries`` test images settled in the first round (fewer samples: a cheaper build,
  a looser bound);
* round parts, per tile of 128 test images against all training rows: the queries'
  projections, the bound product with its group minima, the two selections, the exact
  refinement of the candidates, and the whole compiled round.
"""
from __future__ import annotations

import functools
import sys

from absl import app
from absl import flags
import numpy as np

from benchmarks import common

_REPEATS = flags.DEFINE_integer("repeats", 5, "timed runs of each part (best reported)")
_QUERIES = flags.DEFINE_integer("queries", 3000, "test images for the sample rows")



def _round_parts(bounds, distances, index, tile, repeats):
  """(name, ms) of each part of ``bounds._l2_round`` on one tile (the same operations)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  group, g = bounds.GROUP, bounds._l2_groups(index.database.shape[0], 160)
  rows = index.bound_rows.reshape(-1, index.bound_rows.shape[-1])
  query_rows = jax.jit(bounds._l2_query_rows)

  @jax.jit
  def product(q):
    ux = bounds._l2_query_rows(q, index.params)[0]
    s = jnp.matmul(ux, rows.T, precision=jax.lax.Precision.HIGHEST).reshape(
        q.shape[0], -1, group)
    return s, jnp.min(s, axis=2)

  @jax.jit
  def select(s, gmin):
    _, grp = bounds._top_k(-gmin, g + 1)
    vals = jnp.take_along_axis(s, grp[:, :g, None], axis=1).reshape(s.shape[0], -1)
    _, pos = bounds._top_k(-vals, 161)
    cand = (grp[:, :g, None] * group + jnp.arange(group)).reshape(s.shape[0], -1)
    return jnp.take_along_axis(cand, pos[:, :160], axis=1)

  refine = jax.jit(lambda q, cand: bounds._l2_exact(
      distances.centred_pixels(q), cand, index.database, index.sq_norms, 8))
  whole = functools.partial(bounds._l2_round, pixels=index.database, sq_norms=index.sq_norms,
                            chunks=index.bound_rows, params=index.params, k=10, g=g, c=160)
  s, gmin = product(tile)
  cand = select(s, gmin)
  best = common.best_seconds
  return [("queries' projections", best(lambda: query_rows(tile, index.params), repeats)),
          ("bound product and group minima", best(lambda: product(tile), repeats)),
          ("two selections", best(lambda: select(s, gmin), repeats)),
          ("exact refinement of 160 candidates", best(lambda: refine(tile, cand), repeats)),
          ("the whole round (k = 10)", best(lambda: whole(tile), repeats))]


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  from jaxlin import bounds, distances  # pylint: disable=import-outside-toplevel
  repeats = common.check_repeats(_REPEATS.value)
  common.usage(_QUERIES.value >= 1, f"--queries must be >= 1, got {_QUERIES.value}")
  out, arrays = common.prepare("bench_parts")
  x, q = arrays["train_x"], arrays["test_x"]
  # The parts are those of a round of the search: a tile of 128 queries, 160 candidates.
  common.usage(bounds._l2_groups(len(x), 160) > 0 and len(q) >= 128,
               "this benchmark times a round of the pruned search (a tile of 128 test images, "
               f"160 candidates); the dataset's {len(x)} training and {len(q)} test images are "
               "too few for it")
  rows = []
  n = len(x)
  sample = x[np.linspace(0, n - 1, 5000).astype(np.int64)]
  centre = np.round(sample.mean(axis=0, dtype=np.float64)).astype(np.int64)
  params = bounds._l2_params(bounds._principal_basis(sample, centre, bounds.COMPONENTS, 0),
                             centre)
  default = bounds._BUILD_BLOCK
  for block in (256, 512, 1024, 2048):
    bounds._BUILD_BLOCK = block
    seconds = common.best_seconds(lambda: bounds._l2_build(x, params),
                                  max(2, repeats // 2))
    rows.append({"part": f"build, block {block}", "seconds": seconds, "first_round": ""})
    print(rows[-1], file=sys.stderr, flush=True)
  bounds._BUILD_BLOCK = default
  queries = q[:_QUERIES.value]
  for size in (5000, 2000, 1000):
    seconds = common.best_seconds(
        lambda: bounds.build_index(x, metric="l2", sample=size).bound_rows, max(2, repeats // 2))
    _, _, stats = bounds.search(queries, bounds.build_index(x, metric="l2", sample=size), 10)
    rows.append({"part": f"build, sample {size}", "seconds": seconds,
                 "first_round": f"{stats['first_round']} of {len(queries)}"})
    print(rows[-1], file=sys.stderr, flush=True)
  index = bounds.build_index(x, metric="l2")
  for name, seconds in _round_parts(bounds, distances, index, jax.numpy.asarray(q[:128]),
                                    repeats):
    rows.append({"part": f"round: {name} (128 queries)", "seconds": seconds, "first_round": ""})
    print(rows[-1], file=sys.stderr, flush=True)
  common.report(out, "pruned_parts", rows, ["part", "seconds", "first_round"],
                num_train=n, repeats=repeats)


if __name__ == "__main__":
  app.run(main)
