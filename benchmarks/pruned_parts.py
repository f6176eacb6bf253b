r"""Where the pruned L2 search spends its time: the index build's block size and sample,
and the parts of one round, each timed in one process (best of several). Its L2 bound is
the one on principal components (``image_shape`` not given), not the default on the images'
DCT that ``pruned_speed`` times; the report's header says so.

  python -m benchmarks.pruned_parts --dataset=folder:/data/cifar10-jpeg --out=runs/bench_parts

Rows:
* build, block B: the bounds, int8 pixels and norms of all training rows, the bounds in
  blocks of B rows (``bounds._l2_build_for``: the program as ``build_index`` compiles it),
  the components computed once beforehand;
* build, sample S: ``bounds.build_index`` with S rows for the components, and the queries
  of ``--queries`` test images settled in the first round (fewer samples: a cheaper build,
  a looser bound);
* round parts, per tile of 128 test images against all training rows: the queries'
  projections, the bound product, the host's selection of the candidates, their exact
  refinement with the certificate, and the whole round; and the whole round as it runs
  off the CPU, where the device selects (two top_k over group minima and groups).
"""
from __future__ import annotations

import functools
import sys

from absl import flags
import numpy as np

from benchmarks import common

_REPEATS = flags.DEFINE_integer("repeats", 5, "timed runs of each part (best reported)")
_QUERIES = flags.DEFINE_integer("queries", 3000, "test images for the sample rows")
_BLOCKS = flags.DEFINE_list("blocks", ["256", "512", "1024", "2048"],
                            "block sizes of the index build to time")
_SAMPLES = flags.DEFINE_list("samples", ["5000", "2000", "1000"],
                             "sample sizes (rows for the components) of the index build to time")



def _round_parts(bounds, index, tile, repeats):
  """(name, s) of each part of an L2 round on one tile of queries (the same operations)."""
  import jax  # pylint: disable=import-outside-toplevel
  n, rows, params = index.database.shape[0], index.bound_rows, index.params
  query_rows = jax.jit(functools.partial(bounds._l2_query_rows, dtype=str(rows.dtype)))
  b, a, err = bounds._l2_bounds(tile, rows, params)
  b = np.asarray(b)
  cand, left = bounds._host_candidates(b, 160)
  settle = functools.partial(bounds._l2_settle, pixels=index.database, sq_norms=index.sq_norms,
                             params=params, k=10, m=bounds._bound_components(rows))
  device = functools.partial(bounds._l2_round, pixels=index.database, sq_norms=index.sq_norms,
                             rows=rows, params=params, k=10, g=bounds._l2_groups(n, 160), c=160)
  host_tile = np.asarray(tile)
  best = common.best_seconds
  return [("queries' projections", best(lambda: query_rows(tile, params), repeats)),
          ("bound product", best(lambda: bounds._l2_bounds(tile, rows, params), repeats)),
          ("the host's selection of 161 rows", best(lambda: bounds._host_candidates(b, 160),
                                                     repeats)),
          ("exact refinement of 160 candidates and certificate",
           best(lambda: settle(tile, cand, left, a, err), repeats)),
          ("the whole round (k = 10)",
           best(lambda: bounds._run_round(host_tile, index, 10, 160, len(host_tile)), repeats)),
          ("the whole round, selected on the device (as off the CPU)",
           best(lambda: device(tile), repeats))]


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  from jaxlin import bounds  # pylint: disable=import-outside-toplevel
  repeats = common.check_repeats(_REPEATS.value)
  common.usage(_QUERIES.value >= 1, f"--queries must be >= 1, got {_QUERIES.value}")
  blocks = common.positive_ints(_BLOCKS.value, "--blocks takes integers >= 1, got "
                                f"{','.join(_BLOCKS.value)}")
  samples = common.positive_ints(_SAMPLES.value, "--samples takes integers >= 1, got "
                                 f"{','.join(_SAMPLES.value)}")
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
  # The build's program as build_index compiles it for rows on the default device.
  build = bounds._l2_build_for(jax.devices()[0].platform)
  for block in blocks:
    seconds = common.best_seconds(
        lambda: build(x, params, block=block),
        max(2, repeats // 2))
    rows.append({"part": f"build, block {block}", "seconds": seconds, "first_round": ""})
    print(rows[-1], file=sys.stderr, flush=True)
  queries = q[:_QUERIES.value]
  for size in samples:
    seconds = common.best_seconds(
        lambda: bounds.build_index(x, metric="l2", sample=size).bound_rows, max(2, repeats // 2))
    _, _, stats = bounds.search(queries, bounds.build_index(x, metric="l2", sample=size), 10)
    rows.append({"part": f"build, sample {size}", "seconds": seconds,
                 "first_round": f"{stats['first_round']} of {len(queries)}"})
    print(rows[-1], file=sys.stderr, flush=True)
  index = bounds.build_index(x, metric="l2")
  for name, seconds in _round_parts(bounds, index, jax.numpy.asarray(q[:128]), repeats):
    rows.append({"part": f"round: {name} (128 queries)", "seconds": seconds, "first_round": ""})
    print(rows[-1], file=sys.stderr, flush=True)
  common.report(out, "pruned_parts", rows, ["part", "seconds", "first_round"],
                num_train=n, repeats=repeats, basis="principal components (not the DCT)",
                times="best of the repeats")


if __name__ == "__main__":
  common.run(main)
