r"""How tight are lower bounds on L1 distances between images? Rows a certified search must look at.

  python -m benchmarks.bound_tightness --dataset=folder:/data/cifar10-jpeg --out=runs/bench_bounds

For ``--queries`` random test images (seeded) against all training images: the
number of training rows whose lower bound lies at or below the query's true
k-th L1 distance (median, p90, p99, max over the queries). A certified
search (``jaxlin.bounds``) must compute the exact distance of at least that
many rows, so this is the floor of its refinement work. Bounds, over p x p
pixel blocks of each channel (S: the block's sum, n = p * p pixels,
R: the L1 norm of the block minus its mean, sum_d |x_d - S_x / n|):

* ``pooled``: sum_blocks |S_x - S_y| (``jaxlin.bounds``'s L1 bound today).
* ``pooled+residual``: sum_blocks max(|S_x - S_y|, |R_x - R_y| - (1 - 2 / n) |S_x - S_y|).
  With a = (S_x - S_y) / n and b_d the difference of the residuals (sum_d b_d = 0), a
  block's L1 is sum_d |a + b_d| >= |sum_d (a + b_d)| = n |a|, and, as b has positive and
  negative entries summing to zero, >= sum_d |b_d| - (n - 2) |a| >= |R_x - R_y| - (n - 2) |a|.

Every bound is checked against exact distances on a sample of pairs (the run
fails if one ever exceeds them). Measured: WORKSPACE.md.
"""
from __future__ import annotations

import functools

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common

_QUERIES = flags.DEFINE_integer("queries", 300, "random test images (seeded)")
_KS = flags.DEFINE_list("ks", ["1", "10", "100"], "k values")
_POOLS = flags.DEFINE_list("pools", ["4", "2"], "block sides p")


def block_features(x_NxD: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
  """(S, R): per p x p block of each channel of square RGB images (rows of H * H * 3
  values), the pixel sum and the L1 norm of the block minus its mean, float32 (exact for
  p = 1, 2, 4, 8: multiples of 1 / p**2 below 2**20)."""
  n = x_NxD.shape[0]
  side = int(round((x_NxD.shape[1] // 3) ** 0.5))
  img = x_NxD.reshape(n, side // p, p, side // p, p, 3).astype(np.float32)
  s = img.sum(axis=(2, 4))
  r = np.abs(img - (s / (p * p))[:, :, None, :, None, :]).sum(axis=(2, 4))
  return s.reshape(n, -1), r.reshape(n, -1)


@functools.partial(jax.jit, static_argnames="n")
def _bounds(sq, rq, sd, rd, *, n: int):
  """(pooled, pooled+residual) bounds, (Q, N), from block features of queries and rows."""
  a = jnp.abs(sq[:, None, :] - sd[None])
  dr = jnp.abs(rq[:, None, :] - rd[None])
  return a.sum(-1), jnp.maximum(a, dr - a * (1 - 2.0 / n)).sum(-1)


def _checked_flags(db_shape) -> tuple[list[int], list[int]]:
  """(ks, pools) from the flags, or one UsageError naming the flag and the fix."""
  n, d = db_shape
  side = int(round((d // 3) ** 0.5))
  if side * side * 3 != d:
    raise app.UsageError(f"the dataset's images have {d} values: this benchmark needs square "
                         "RGB images (H = W, 3 channels), e.g. CIFAR-10")
  try:
    ks = sorted({int(k) for k in _KS.value})
    pools = [int(p) for p in _POOLS.value]
  except ValueError as e:
    raise app.UsageError(f"--ks and --pools take comma-separated integers: {e}") from None
  if not ks or ks[0] < 1 or ks[-1] > n:
    raise app.UsageError(f"--ks must lie in [1, {n}] (the training images), got {_KS.value}")
  if not 1 <= _QUERIES.value:
    raise app.UsageError(f"--queries must be >= 1, got {_QUERIES.value}")
  for p in pools:  # powers of two: the block means and residual sums are exact in float32
    if p not in (1, 2, 4, 8) or side % p:
      raise app.UsageError(f"--pools must be 1, 2, 4 or 8 and divide the image side {side}, "
                           f"got {p}")
  return ks, pools


def main(argv):
  del argv
  from jaxlin import knn  # pylint: disable=import-outside-toplevel
  out, arrays = common.prepare("bench_bounds")
  db, test_x = arrays["train_x"], arrays["test_x"]
  ks, pools = _checked_flags(db.shape)
  q = test_x[np.random.default_rng(0).permutation(len(test_x))[:_QUERIES.value]]
  d_true, _ = knn.search(q, db, max(ks), metric="l1")
  d_true = np.asarray(d_true)
  exact = np.abs(q[:40, None].astype(np.int32) - db[None, :400].astype(np.int32)).sum(-1)
  rows = []
  for p in pools:
    sq, rq = block_features(q, p)
    parts = {"pooled": [], "pooled+residual": []}
    for start in range(0, len(db), 2000):
      sd, rd = block_features(db[start:start + 2000], p)
      for name, b in zip(parts, _bounds(sq, rq, sd, rd, n=p * p)):
        parts[name].append(np.asarray(b))
    for name, chunks in parts.items():
      b = np.concatenate(chunks, axis=1)
      if np.any(b[:40, :400] > exact):
        raise AssertionError(f"the {name} bound exceeds an exact distance: a bug")
      for k in ks:
        count = (b <= d_true[:, k - 1:k]).sum(axis=1)
        rows.append({"p": p, "features": 2 * sq.shape[1] if "residual" in name else sq.shape[1],
                     "bound": name, "k": k, "median": float(np.median(count)),
                     "p90": float(np.percentile(count, 90)),
                     "p99": float(np.percentile(count, 99)), "max": int(count.max())})
  common.report(out, "bound_tightness", rows,
                ["p", "bound", "features", "k", "median", "p90", "p99", "max"],
                queries=len(q), database=len(db))


if __name__ == "__main__":
  app.run(main)
