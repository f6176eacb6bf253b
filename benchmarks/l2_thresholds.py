r"""Would L2 gain from L1's threshold cascade? The work it would do, and its kernels' speed.

  python -m benchmarks.l2_thresholds --dataset=folder:/data/cifar10-jpeg --out=runs/bench_l2_thr

L1's cascade (``jaxlin.bounds``) sets each query's threshold D_k from the exact
distances of C rows of small coarse bound, then measures only the (query, row)
pairs whose bounds are at most D_k: a finer bound, then the exact distance. This
benchmark asks what the same design would cost for L2, with the library's
certified L2 bound (``bounds._l2_certified_bound``: principal components and the
residual, float errors taken off) in place of pooled sums:

* work, for ``--queries`` random test images (seeded) against all training images,
  k = ``--k``: per query, the rows whose coarse bound (m components) is at most
  D_k, with D_k the k-th smallest exact distance among the C rows of smallest
  coarse bound ("estimated") or the true k-th distance ("true": the floor), and
  those whose fine bound (``--fine`` components) is at most the estimated D_k too
  (the exact distances the cascade would still compute);
* speed, per compiled call, best of ``--repeats``: the coarse bound product of
  1,024 queries against all training rows (m + 3 columns), a fine level on
  8,192 gathered pairs (float32 rows of ``--fine`` + 1 columns), and exact squared
  distances of 8,192 gathered pairs of uint8 rows (int32, lanes of 128).

"projected s / 10,000 queries" adds the parts: the coarse product, the C exact
distances per query that set D_k, the fine and the exact pairs at the measured
rates. It leaves out the index build, the host's scan of the coarse bounds and
the merges, so it is a floor, to set against the certified cascade's measured
search time (``benchmarks.pruned_speed``). Every bound is checked against the
exact distances here; the run fails if one ever exceeds them.
"""
from __future__ import annotations

import sys

from absl import flags
import numpy as np

from benchmarks import common

_QUERIES = flags.DEFINE_integer("queries", 1000, "random test images (seeded)")
_K = flags.DEFINE_integer("k", 10, "neighbours per query")
_COMPONENTS = flags.DEFINE_list("components", ["64", "128"], "coarse levels: components m")
_FINE = flags.DEFINE_integer("fine", 192, "the fine level's components")
_ESTIMATES = flags.DEFINE_list("estimates", ["32", "64"], "C: rows whose exact distances "
                               "set each query's threshold")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed runs of each kernel (best reported)")

_PAIRS = 8192  # pairs per timed call of the pair kernels
_SUB = 256  # pairs gathered at a time inside a call



def _lower_bounds(db, q, m: int):
  """(Q, N) int32 certified lower bounds on the squared L2 of every pair (m components),
  the index's augmented rows and the queries' product rows (for timing)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jaxlin import bounds  # pylint: disable=import-outside-toplevel
  index = bounds.build_index(db, metric="l2", components=m)
  rows = index.bound_rows[:len(db)]
  p = index.params
  dtype = str(rows.dtype)  # float32, or bfloat16 where build_index chose it

  @jax.jit
  def low(qt):
    ux, a, err = bounds._l2_query_rows(qt, p, dtype)  # pylint: disable=protected-access
    b = bounds._bound_product(ux, rows)  # pylint: disable=protected-access
    return bounds._l2_certified_bound(  # pylint: disable=protected-access
        b, a[:, None], err[:, None], p["a_max"], p["err_max"], m)
  out = np.concatenate([np.asarray(low(jnp.asarray(q[s:s + 256])))
                        for s in range(0, len(q), 256)])
  return out, rows, rows.shape[1]


def _pair_kernels():
  """(fine level, exact level) jitted pair kernels: float32 squared differences of
  gathered rows; int32 squared differences of gathered uint8 rows in lanes of 128."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  def pairs(one):
    def run(q, qi, ri, rows):
      return jax.lax.map(lambda a: one(jnp.take(q, a[0], axis=0, mode="clip"),
                                       jnp.take(rows, a[1], axis=0, mode="clip")),
                         (qi.reshape(-1, _SUB), ri.reshape(-1, _SUB))).reshape(-1)
    return jax.jit(run)

  def fine_one(x, y):
    d = x - y
    return jnp.sum(d * d, axis=1)

  def exact_one(x, y):
    d = x.astype(jnp.int32) - y.astype(jnp.int32)
    return jnp.sum(jnp.sum((d * d).reshape(_SUB, -1, 128), axis=1), axis=1)
  return pairs(fine_one), pairs(exact_one)


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jaxlin import bounds, knn  # pylint: disable=import-outside-toplevel
  ms = common.positive_ints(_COMPONENTS.value, "--components takes positive integers",
                            distinct=True)
  cs = common.positive_ints(_ESTIMATES.value, "--estimates takes positive integers",
                            distinct=True)
  repeats = common.check_repeats(_REPEATS.value)
  common.usage(_QUERIES.value >= 1, f"--queries must be >= 1, got {_QUERIES.value}")
  common.usage(_K.value >= 1 and _FINE.value >= 1, f"--k and --fine must be >= 1, got "
               f"{_K.value} and {_FINE.value}")
  common.usage(min(cs) >= _K.value, f"--estimates must each be >= --k={_K.value} (the k-th "
               f"distance among C rows), got {','.join(map(str, cs))}")
  out, arrays = common.prepare("bench_l2_thr")
  db = arrays["train_x"].reshape(len(arrays["train_x"]), -1)
  test = arrays["test_x"].reshape(len(arrays["test_x"]), -1)
  n, d = db.shape
  k = _K.value
  common.check_k(k, n)
  common.usage(db.dtype == np.uint8 and d % 128 == 0 and max(ms + [_FINE.value]) <= d
               and max(cs) <= n,
               f"this benchmark needs uint8 images with a multiple of 128 features, at most "
               f"{d} components and k <= C <= {n}")
  q = test[common.query_rows(_QUERIES.value, len(test))]

  def exact_all(rows_QxC):  # exact squared distances of each query to its rows
    return np.concatenate([((q[s:s + 50, None].astype(np.int32) - db[rows_QxC[s:s + 50]]) ** 2)
                           .sum(axis=-1, dtype=np.int64) for s in range(0, len(q), 50)])
  # The k-th distance exactly: search's float32 distances round above 2**24.
  _, true_i = knn.search(q, db, k, metric="l2_squared", method="brute")
  true_k = exact_all(np.asarray(true_i))[:, k - 1]
  fine_low, _, _ = _lower_bounds(db, q, _FINE.value)
  fine_rate_fn, exact_fn = _pair_kernels()
  rng = np.random.default_rng(0)
  qi = jnp.asarray(rng.integers(0, len(q), _PAIRS).astype(np.int32))
  ri = jnp.asarray(rng.integers(0, n, _PAIRS).astype(np.int32))
  fine_rows = jnp.asarray(rng.standard_normal((n, _FINE.value + 1)).astype(np.float32))
  fine_q = jnp.asarray(rng.standard_normal((len(q), _FINE.value + 1)).astype(np.float32))
  fine_rate = _PAIRS / common.best_seconds(lambda: fine_rate_fn(fine_q, qi, ri, fine_rows), repeats)
  q_dev, db_dev = jnp.asarray(q), jnp.asarray(db)
  exact_rate = _PAIRS / common.best_seconds(lambda: exact_fn(q_dev, qi, ri, db_dev), repeats)
  print(f"pairs per second: fine {fine_rate:.3g}, exact {exact_rate:.3g}", file=sys.stderr)
  rows = []
  for m in ms:
    low, aug, width = _lower_bounds(db, q, m)
    sample = rng.integers(0, n, (len(q), 64))
    exact = exact_all(sample)
    if not ((np.take_along_axis(low, sample, 1) <= exact).all()
            and (np.take_along_axis(fine_low, sample, 1) <= exact).all()):
      raise AssertionError("a lower bound exceeded an exact distance: a bug in jaxlin.bounds")
    tile = jnp.asarray(rng.standard_normal((1024, width)).astype(aug.dtype))
    product = jax.jit(lambda a: bounds._bound_product(a, aug))  # pylint: disable=protected-access
    coarse_s = common.best_seconds(lambda: product(tile), repeats) * 10000 / 1024
    floor = (low <= true_k[:, None]).sum(axis=1)
    for c in cs:
      est = np.argpartition(low, c - 1, axis=1)[:, :c]
      d_k = np.partition(exact_all(est), k - 1, axis=1)[:, k - 1]
      if not (d_k >= true_k).all():
        raise AssertionError("an estimated threshold fell below the true k-th distance: a bug "
                             "in this benchmark")
      coarse = low <= d_k[:, None]
      both = (coarse & (fine_low <= d_k[:, None])).sum(axis=1)
      coarse = coarse.sum(axis=1)
      projected = (coarse_s + 10000 * c / exact_rate + 10000 * coarse.mean() / fine_rate
                   + 10000 * both.mean() / exact_rate)
      rows.append({"m": m, "C": c, "D_k / true": float((d_k / true_k).mean()),
                   "coarse rows (true D_k) mean": float(floor.mean()),
                   "coarse rows mean": float(coarse.mean()),
                   "coarse rows p99": float(np.percentile(coarse, 99)),
                   "exact rows mean": float(both.mean()),
                   "coarse product s / 10,000": coarse_s,
                   "projected s / 10,000 queries": projected})
      print(rows[-1], file=sys.stderr, flush=True)
  common.report(out, "l2_thresholds", rows, list(rows[0]), queries=len(q), database=n, k=k,
                fine=_FINE.value, fine_pairs_per_s=round(fine_rate),
                exact_pairs_per_s=round(exact_rate))


if __name__ == "__main__":
  common.run(main)
