r"""How tight are lower bounds on L1 and L2 distances between images? Rows to refine.

  python -m benchmarks.bound_tightness --dataset=folder:/data/cifar10 --out=runs/bench_bounds
  python -m benchmarks.bound_tightness --dataset=folder:/data/cifar10 --out=runs/bench_bounds \
    --metric=l2

For ``--queries`` random test images (seeded) against all training images: the
number of training rows whose lower bound lies at or below the query's true
k-th distance (median, p90, p99, max over the queries). A certified search
(``jaxlin.bounds``) must compute the exact distance of at least that many
rows, so this is the floor of its refinement work.

L1 (``--metric=l1``, bound_tightness_l1.md), over p x p pixel blocks of each
channel (S: the block's sum, n = p * p pixels, R: the L1 norm of the block
minus its mean, sum_d |x_d - S_x / n|):

* ``pooled``: sum_blocks |S_x - S_y| (``jaxlin.bounds``'s L1 bound today).
* ``pooled+residual``: sum_blocks max(|S_x - S_y|, |R_x - R_y| - (1 - 2 / n) |S_x - S_y|).
  With a = (S_x - S_y) / n and b_d the difference of the residuals (sum_d b_d = 0), a
  block's L1 is sum_d |a + b_d| >= |sum_d (a + b_d)| = n |a|, and, as b has positive and
  negative entries summing to zero, >= sum_d |b_d| - (n - 2) |a| >= |R_x - R_y| - (n - 2) |a|.

L2 (``--metric=l2``, bound_tightness_l2.md), on squared distances, in float64:
with Q (``--bases``) the m principal components of ``jaxlin.bounds.build_index``
(same sample, centre and seed; "pca") or the m rows of the images' orthonormal
DCT that ``build_index`` keeps when given ``image_shape`` ("dct"), x_c = x -
centre, z = Q x_c and r = x_c - Q^T z the residual, split over r x r square
image regions (all channels; ``--bands`` is the number of regions):
|x - y|^2 = |z_x - z_y|^2 + sum_j |r_x,j - r_y,j|^2
>= |z_x - z_y|^2 + sum_j (|r_x,j| - |r_y,j|)^2 (Q has orthonormal rows; the
regions split the residual into orthogonal parts; triangle inequality in each).
One region is the library's bound. ``columns`` is the width of the bound's
product per (query, row): m + regions + 1, as in ``jaxlin.bounds``.

Every bound is checked against exact distances (L1: a sample of pairs; L2: all
of them); the run fails if one ever exceeds them. Measured: WORKSPACE.md.
"""
from __future__ import annotations

import functools
import itertools

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common

_QUERIES = flags.DEFINE_integer("queries", 300, "random test images (seeded)")
_KS = flags.DEFINE_list("ks", ["1", "10", "100"], "k values")
_POOLS = flags.DEFINE_list("pools", ["4", "2"], "L1: block sides p")
_METRIC = flags.DEFINE_enum("metric", "l1", ["l1", "l2"], "the distance whose bounds are counted")
_COMPONENTS = flags.DEFINE_list("components", ["64", "128", "192"],
                                "L2: principal components m of the bound")
_BASES = flags.DEFINE_list("bases", ["pca", "dct"], "L2: the bound's basis: pca (principal "
                           "components) or dct (the images' DCT coefficients of largest "
                           "variance), as jaxlin.bounds.build_index without and with "
                           "image_shape")
_BANDS = flags.DEFINE_list("bands", ["1", "4", "16", "64"],
                           "L2: square regions the residual's norm is split over (1: the "
                           "library's bound)")


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


def l2_band_features(x_NxD: np.ndarray, centre_D: np.ndarray, basis_mxD: np.ndarray,
                     regions: int) -> np.ndarray:
  """(N, m + r * r) float64 rows (z, n_1 .. n_{r*r}) of square RGB images: z = Q x_c, and
  n_j the norm of the residual x_c - Q^T z over the j-th of r x r square regions (all
  channels), with x_c = x - centre."""
  n = x_NxD.shape[0]
  side = int(round((x_NxD.shape[1] // 3) ** 0.5))
  xc = x_NxD.astype(np.float64) - centre_D.astype(np.float64)
  z = xc @ basis_mxD.T
  res = (xc - z @ basis_mxD).reshape(n, regions, side // regions, regions, side // regions, 3)
  norms = np.sqrt((res * res).sum(axis=(2, 4, 5))).reshape(n, regions * regions)
  return np.concatenate([z, norms], axis=1)


def l2_bound(uq_QxW: np.ndarray, ud_NxW: np.ndarray) -> np.ndarray:
  """(Q, N) |u_q - u_d|^2, the L2 lower bound on squared distances of these rows."""
  sq = (uq_QxW * uq_QxW).sum(1)[:, None] + (ud_NxW * ud_NxW).sum(1)[None] - 2 * uq_QxW @ ud_NxW.T
  return np.maximum(sq, 0.0)


def _given(flag) -> str:
  return ",".join(flag.value)


def _static_flags() -> tuple[list[int], list[int], list[int], list[int]]:
  """(ks, pools, components, bands) from the flags, checked before any data is read, or
  one UsageError naming the flag and the fix."""
  ks = sorted(set(common.positive_ints(_KS.value, f"--ks takes integers >= 1, got {_given(_KS)}")))
  message = f"--pools takes block sides 1, 2, 4 or 8, got {_given(_POOLS)}"
  pools = common.positive_ints(_POOLS.value, message)
  common.usage(all(p in (1, 2, 4, 8) for p in pools), message)  # the block means stay exact
  components = common.positive_ints(_COMPONENTS.value,
                                    f"--components takes integers >= 1, got {_given(_COMPONENTS)}")
  message = f"--bands takes square numbers of regions (1, 4, 16, 64, ...), got {_given(_BANDS)}"
  bands = common.positive_ints(_BANDS.value, message)
  common.usage(all(round(b ** 0.5) ** 2 == b for b in bands), message)
  common.usage(_QUERIES.value >= 1, f"--queries must be >= 1, got {_QUERIES.value}")
  common.usage(_BASES.value and set(_BASES.value) <= {"pca", "dct"}
               and len(set(_BASES.value)) == len(_BASES.value),
               f"--bases takes pca, dct (each once), got {_given(_BASES)}")
  unused = ["pools"] if _METRIC.value == "l2" else ["components", "bands", "bases"]
  for name in unused:  # a flag the metric does not read would be ignored without a word
    common.usage(not flags.FLAGS[name].present,
                 f"--{name} has no effect with --metric={_METRIC.value}; leave it out")
  return ks, pools, components, bands


def _check_data(db_shape, ks, pools, components, bands) -> int:
  """The image side, or one UsageError: the flags checked against the data."""
  n, d = db_shape
  side = int(round((d // 3) ** 0.5))
  common.usage(side * side * 3 == d, f"the dataset's images have {d} values: this benchmark "
               "needs square RGB images (H = W, 3 channels), e.g. CIFAR-10")
  common.usage(ks[-1] <= n,
               f"--ks must lie in [1, {n}] (the training images), got {_given(_KS)}")
  if _METRIC.value == "l1":
    common.usage(all(side % p == 0 for p in pools),
                 f"--pools must divide the image side {side}, got {_given(_POOLS)}")
  else:
    common.usage(max(components) <= d, f"--components must lie in [1, {d}] (the features), "
                 f"got {_given(_COMPONENTS)}")
    common.usage(all(side % round(b ** 0.5) == 0 for b in bands),
                 f"--bands: the regions' side (the root) must divide the image side {side}, "
                 f"got {_given(_BANDS)}")
  return side


def _l1_rows(q, db, ks, pools) -> list[dict]:
  from jaxlin import knn  # pylint: disable=import-outside-toplevel
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
                     "bound": name, **_counts(k, count)})
  return rows


def _counts(k: int, count: np.ndarray) -> dict:
  return {"k": k, "median": float(np.median(count)), "p90": float(np.percentile(count, 90)),
          "p99": float(np.percentile(count, 99)), "max": int(count.max())}


def _l2_rows(q, db, ks, components, bands) -> list[dict]:
  """Counts for the library's L2 bound (bands = 1) and its residual split over regions."""
  from jaxlin import bounds  # pylint: disable=import-outside-toplevel
  qf = q.astype(np.float64)
  exact = np.empty((len(q), len(db)))
  for start in range(0, len(db), 5000):  # exact squared distances: integers below 2**53
    x = db[start:start + 5000].astype(np.float64)
    exact[:, start:start + 5000] = ((qf * qf).sum(1)[:, None] + (x * x).sum(1)[None]
                                    - 2 * qf @ x.T)
  kth = np.sort(exact, axis=1)[:, :max(ks)]
  # The sample, centre and basis as bounds.build_index makes them.
  sample = db[np.linspace(0, len(db) - 1, min(len(db), 5000)).astype(np.int64)]
  centre = np.round(sample.mean(axis=0, dtype=np.float64)).astype(np.int64)
  side = int(round((db.shape[1] // 3) ** 0.5))
  dct = np.einsum("kh,lw,ec->klehwc", *(bounds._dct_matrix(n)  # pylint: disable=protected-access
                                        for n in (side, side, 3))).reshape(db.shape[1], -1)
  rows = []
  for m, kind in itertools.product(components, _BASES.value):
    if kind == "pca":
      basis = bounds._principal_basis(sample, centre, m, 0)  # pylint: disable=protected-access
    else:  # the m DCT coefficients build_index keeps for images
      keep = bounds._dct_params((side, side, 3), sample, centre, m)["keep"]  # pylint: disable=protected-access
      basis = dct[np.asarray(keep)]
    for b in bands:
      r = int(round(b ** 0.5))
      uq = l2_band_features(q, centre, basis, r)
      bound = np.concatenate([l2_bound(uq, l2_band_features(db[s:s + 5000], centre, basis, r))
                              for s in range(0, len(db), 5000)], axis=1)
      if np.any(bound > exact * (1 + 1e-9) + 1e-6):
        raise AssertionError(f"the L2 bound (m={m}, bands={b}) exceeds an exact distance: a bug")
      for k in ks:  # (the same float64 margin as the check above: a bound near exact)
        count = (bound <= kth[:, k - 1:k] * (1 + 1e-9) + 1e-6).sum(axis=1)
        rows.append({"basis": kind, "components": m, "bands": b, "columns": m + b + 1,
                     **_counts(k, count)})
  return rows


def main(argv):
  del argv
  ks, pools, components, bands = _static_flags()
  out, arrays = common.prepare("bench_bounds")
  db, test_x = arrays["train_x"], arrays["test_x"]
  _check_data(db.shape, ks, pools, components, bands)
  q = test_x[np.random.default_rng(0).permutation(len(test_x))[:_QUERIES.value]]
  if _METRIC.value == "l1":
    rows = _l1_rows(q, db, ks, pools)
    columns = ["p", "bound", "features", "k", "median", "p90", "p99", "max"]
  else:
    rows = _l2_rows(q, db, ks, components, bands)
    columns = ["basis", "components", "bands", "columns", "k", "median", "p90", "p99", "max"]
  common.report(out, "bound_tightness", rows, columns, stem=f"bound_tightness_{_METRIC.value}",
                metric=_METRIC.value, queries=len(q), database=len(db))


if __name__ == "__main__":
  common.run(main)
