r"""Selecting the k nearest from long rows: XLA's top_k against topk.smallest_k and
topk.smallest_k_host.

  python -m benchmarks.topk_speed --out=runs/bench_topk
  python -m benchmarks.topk_speed --out=runs/bench_topk_cv --rows=1000 --cols=4000 --k=100

One block of squared L2 distances (int32, pixel scale: uniform random integers in
[5,000,000, 5,020,000), seeded, not distances of real images; the selections'
speed depends on how many values fall near the k-th) as the search meets it
(by default a 256-query tile against a 50,000-row database tile; the second
command: a fold of 1,000 images against its 4,000 training images, as 5-fold
cross-validation on 5,000 images meets it), for k = 1, 10 and 100 by default:
the plain selection (``jax.lax.top_k`` on float32 keys) against the chunked one
that search uses (``jaxlin.topk.smallest_k``) and numpy's on the host that
cross-validation uses on CPUs (``jaxlin.topk.smallest_k_host``), all checked to
give the same positions, ties included. No dataset needed.
"""
from __future__ import annotations

import sys

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from jaxlin import topk

_ROWS = flags.DEFINE_integer("rows", 256, "rows of the block (queries of a tile)")
_COLS = flags.DEFINE_integer("cols", 50000, "columns of the block (database rows)")
_K = flags.DEFINE_list("k", ["1", "10", "100"], "values of k")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed repeats (best)")


def _best_time(f, x):
  jax.block_until_ready(f(x))
  times = []
  for _ in range(_REPEATS.value):
    with common.Stopwatch() as sw:
      jax.block_until_ready(f(x))
    times.append(sw.seconds)
  return min(times)


def main(argv):
  del argv
  common.usage(_ROWS.value >= 1 and _COLS.value >= 1,
               f"--rows and --cols must be >= 1, got {_ROWS.value} and {_COLS.value}")
  ks = common.positive_ints(_K.value, f"--k must be integers in [1, --cols={_COLS.value}], "
                            f"got {','.join(_K.value)}", at_most=_COLS.value)
  common.check_repeats(_REPEATS.value)
  out = common.out_dir("bench_topk")
  rng = np.random.default_rng(0)
  # Squared distances of pixel rows lie around 10**7; few distinct values make ties.
  d = jnp.asarray(rng.integers(5_000_000, 5_000_000 + 20_000, (_ROWS.value, _COLS.value),
                               dtype=np.int32))
  rows = []
  for k in ks:
    plain = jax.jit(lambda x, k=k: jax.lax.top_k(-topk.order_keys(x), k)[1])
    chunked = jax.jit(lambda x, k=k: topk.smallest_k(x, k))
    host = lambda x, k=k: topk.smallest_k_host(x, k)
    want = np.asarray(plain(d))
    same = bool(np.array_equal(want, np.asarray(chunked(d)))
                and np.array_equal(want, host(d)))
    t_plain, t_chunked, t_host = _best_time(plain, d), _best_time(chunked, d), _best_time(host, d)
    rows.append({"k": k, "block": f"{_ROWS.value} x {_COLS.value}", "top_k (ms)": t_plain * 1e3,
                 "smallest_k (ms)": t_chunked * 1e3, "x faster": t_plain / t_chunked,
                 "smallest_k_host (ms)": t_host * 1e3, "host x faster": t_plain / t_host,
                 "us per row, top_k": t_plain / _ROWS.value * 1e6, "same positions": same})
    print(rows[-1], file=sys.stderr, flush=True)
  common.report(out, "topk_speed", rows, list(rows[0]), uses_dataset=False,
                backend=jax.default_backend(), times="best of the repeats")


if __name__ == "__main__":
  common.run(main)
