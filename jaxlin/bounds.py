r"""Exact kNN that does less than brute force: pooled lower bounds and a certified cascade.

``build_index(database_NxD, metric=...)`` prepares, once, cheap lower bounds
on the distance of every database row; ``search(queries_QxD, index, k)``
returns exactly what ``jaxlin.knn.search`` returns by brute force (the same
indices, the same float32 distances, ties at equal distance in increasing
database index) on integer pixels (uint8, or int8).

L2, a certified cascade:

1. Bounds for every row (one product with m + 3 float32 columns, or m + 8
   bfloat16 ones on CPUs with bfloat16 dot products, twice as fast there: the
   rounding to bfloat16 is measured and taken off the bound), then the ``C``
   candidates of each query: on a CPU the ``C`` rows of smallest bound, picked
   on the host (``topk.smallest_k_host``); elsewhere in two short steps on the
   device, the ``C`` groups of ``GROUP`` consecutive rows with the smallest
   minimum bound, then the ``C`` rows of smallest bound among those groups'
   rows.
2. Exact integer distances of the ``C`` candidates only (gathered int8 rows and
   a product); on a CPU in two stages: the 3 C / 10 of smallest bound first,
   certified (step 3) against the bound after them, then, for the queries
   left only, those of the other candidates whose bound is at most the k-th
   distance found (the others cannot be among the k nearest).
3. Certificate: with ``D_k`` the k-th smallest exact distance among the
   candidates and ``B`` a lower bound on the distance of every row left out
   (from the (C + 1)-th smallest bound; off the CPU the smaller of the
   (C + 1)-th group minimum and the (C + 1)-th bound among the chosen groups),
   ``D_k < B`` proves that no row left out is among the k
   nearest or ties with the k-th, so the k best candidates (sorted by
   (distance, index)) are the brute-force answer, ties included. The
   inequality is strict: a row left out at ``B == D_k`` could tie with a lower
   index.
4. Queries not certified go through a second round (2x the candidates), and
   those still not certified through brute force (on a CPU from the index's
   own pixels and norms, elsewhere by ``jaxlin.knn``'s own programs), so the
   answer is always the brute-force one. ``stats`` counts the
   queries settled at each level.

L1, a threshold cascade (no certificate to fail):

1. Coarse bound of every row: an L1 over the quantized sums of p x p blocks
   (uint8; G = D / p^2 sums, 192 for CIFAR-10 at p = 4), by brute-force L1's
   loop over features with one uint16 accumulator where G <= 256, else by
   ``distances.l1_transposed`` itself.
2. Threshold ``D_k``: the k-th smallest exact distance among ``C`` rows of
   small coarse bound (any ``C >= k`` real rows give ``D_k`` at least the true
   k-th distance; good ones make it equal).
3. Rows whose coarse bound is at most ``D_k`` get the fine bound (exact sums
   of p / 2 blocks); those whose fine bound is at most ``D_k`` get their exact
   distance; the k best by (distance, index) are the answer. Every row at
   distance at most ``D_k``, which includes the k nearest and any row tied
   with the k-th, passes both bounds, so the answer is the brute-force one.
   The two finer levels work on (query, row) pairs gathered from the host's
   list of those that passed (about 1,500 and 100 per query of 50,000 CIFAR-10
   rows at k = 10). ``stats`` counts the pairs at each level. A tile of queries
   whose coarse level passes more than 1 / 8 of its pairs (data that block
   sums do not describe, e.g. noise), or whose ``C`` is over 1 / 8 of the
   rows, goes to brute force instead.

Which is faster depends on the CPU and the data: brute-force L2 on pixels is an
int8 product on CPUs (``distances.int8_products``), about 7x faster than
float32 on Intel Xeons with AMX (through AVX-512 VNNI), 1.7x on an AMD EPYC with
AVX-512 VNNI, and reportedly 1.4x on AVX2-only CPUs (not measured here), while the
L2 cascade's costs (a float32 or bfloat16 product with m + 3 or m + 8 columns,
selection, gathers) do not depend on it; ``prefer_pruned`` decides by a cost model
and a product timed once per process.

Bounds (v = x - y, integer vectors; D features):

* L1, pooled sums. For a partition of the features into groups g (p x p
  pixel blocks of one channel for images, else runs of p * p consecutive
  features), with S_x,g = sum_{d in g} x_d: sum_g |S_x,g - S_y,g| <=
  sum_d |x_d - y_d| (triangle inequality in each group). The coarse level
  keeps a = floor(S / s) (s: the largest group, p * p where whole blocks fit;
  a fits uint8): with
  S = s a + r, 0 <= r < s, |S_x - S_y| >= s |a_x - a_y| - (s - 1), so
  s L1(a_x, a_y) - (s - 1) G <= sum_g |S_x,g - S_y,g|. All in integers.

* L2, projection and residual. For Q (m, D) with orthonormal rows, a fixed
  integer centre c, x_c = x - c and rho_x = |x_c - Q^T Q x_c| =
  sqrt(|x_c|^2 - |Q x_c|^2): |v|^2 = |Q v|^2 + |(I - Q^T Q) v|^2 >=
  |Q x_c - Q y_c|^2 + (rho_x - rho_y)^2, i.e. |v| >= |u_x - u_y| with
  u_x = (Q x_c, rho_x) in R^{m+1}. For images (``image_shape`` given, with H and
  W C at most 256) Q is m
  rows of the orthonormal DCT of the image (over height, width and channels):
  the m coefficients of largest variance over a sample of the database, rho
  the norm of the others (nothing to estimate, and each coefficient is a
  product of two short sums, so its float error is tiny). Otherwise Q spans the
  top m principal components of (a sample of) the database. Both are tight for
  images (on CIFAR-10, at 192 components, the DCT leaves 3-10 % more rows
  under a query's k-th distance than principal components (median, exact
  arithmetic; WORKSPACE.md)). See
  ``_l2_rows``, ``_dct_rows`` and ``_l2_certified_bound`` for how the float32
  arithmetic is kept a bound (the float error is bounded and subtracted).

Shapes: ``queries_QxD``, ``database_NxD``; results ``(Q, k)``.
"""
from __future__ import annotations

import functools
import itertools
import math
import threading
import zlib
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import _checks, distances, knn, sharding, topk
from jaxlin.errors import InputError

__all__ = ["BOUND_DTYPES", "COMPONENTS", "COMPONENTS_BF16", "L1_MAX_FEATURES", "MAX_FEATURES",
           "METRICS", "Index", "build_index", "checked_image_shape", "int8_speedup",
           "max_features", "prefer_pruned", "search", "supports"]

METRICS = ("l1", "l2", "l2_squared")
COMPONENTS = 224  # default components of the L2 bound (measured: WORKSPACE.md, 2026-12-05, evening)
# ... where its product is bfloat16 (half the cost per column: a tighter bound pays; 10,000
# CIFAR-10 queries searched in 1.92 s at 256 against 2.27 s at 224 and 2.04 s at 288,
# medians of five, AMD EPYC, WORKSPACE.md, 2026-12-05, night)
COMPONENTS_BF16 = 256
MAX_FEATURES = (topk.INT_WORST - 1) // 255 ** 2  # squared distances of uint8 rows below 2**30
L1_MAX_FEATURES = (topk.INT_WORST - 1) // 255  # L1: distances of uint8 rows below 2**30
_U = 2.0 ** -24  # unit roundoff of float32 (round to nearest)
_HIGHEST = jax.lax.Precision.HIGHEST
_F32_EXACT = 2 ** 24  # integers of magnitude below this are exact in float32, as are their sums


# XLA's option for its classic CPU emitters (the suite's, tests/conftest.py), for the L2
# programs that run on a CPU: they compile in about half the time with it and run as fast.
# Lowered and compiled in fresh processes, the index build's program took 0.23-0.29 s
# against 0.35-0.47 s (a fresh build 0.93 s against 1.09 s, medians of six), the bounds'
# 0.27 s against 0.46 s, a round's refinement 0.15-0.21 s against 0.19-0.24 s, and each
# ran within 1 % of its time with XLA's default fusion emitters (50,000 CIFAR-10 rows,
# tiles of 128 queries; AMD EPYC, WORKSPACE.md, 2026-12-06). Not for L1: its kernels run
# 10x slower with these emitters.
_CLASSIC_EMITTERS = {"xla_cpu_use_fusion_emitters": False}


@functools.lru_cache(maxsize=None)
def _cpu_compiler_options() -> dict:
  """``_CLASSIC_EMITTERS`` where this jax and XLA take them (a program of one addition
  compiled once per process to ask), else {}."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CLASSIC_EMITTERS).lower(
        jax.device_put(np.float32(0), jax.local_devices(backend="cpu")[0])).compile()
  except (TypeError, jax.errors.JaxRuntimeError):  # an older jax, or XLA without the option
    return {}
  return _CLASSIC_EMITTERS


def _cpu_jit(fun=None, **jit_kwargs):
  """``jax.jit(fun, **jit_kwargs)`` with ``_cpu_compiler_options``, made at its first call
  (the options are asked for then, not at import); a decorator too (``@_cpu_jit``, or
  ``@functools.partial(_cpu_jit, static_argnames=...)``). For programs that run on a CPU
  only, called outside jit (jax refuses options on a jit nested in another)."""
  if fun is None:
    return functools.partial(_cpu_jit, **jit_kwargs)
  @functools.lru_cache(maxsize=None)
  def jitted():
    options = _cpu_compiler_options()
    return jax.jit(fun, **jit_kwargs, **({"compiler_options": options} if options else {}))

  @functools.wraps(fun)
  def call(*args, **kwargs):
    return jitted()(*args, **kwargs)
  return call


def max_features(metric: str) -> int:
  """The most features ``search`` serves for ``metric``: its distances of uint8 rows stay
  below 2**30 (16,512 for L2, 4,210,752 for L1)."""
  return L1_MAX_FEATURES if metric == "l1" else MAX_FEATURES


def _gamma(n: int) -> float:
  """gamma_n = n u / (1 - n u): |fl(sum of n terms) - sum| <= gamma_n sum |terms|, for ANY
  order of summation (Higham, Accuracy and Stability of Numerical Algorithms, 3.1)."""
  return n * _U / (1 - n * _U)


def checked_image_shape(image_shape, num_features: int):
  """(H, W, C) of positive ints whose product is ``num_features``, or None; else an
  InputError naming image_shape."""
  if image_shape is None:
    return None
  try:
    h, w, c = (_checks.int_at_least(v, "image_shape", 1) for v in image_shape)
  except (TypeError, ValueError) as e:
    raise InputError(f"image_shape must be (H, W, C), three positive integers, or None, got "
                     f"{image_shape!r}", argument="image_shape") from e
  if h * w * c != num_features:
    raise InputError(f"image_shape {tuple(image_shape)} has {h * w * c} values, but rows have "
                     f"{num_features} features", argument="image_shape")
  return h, w, c


class Index(NamedTuple):
  """What ``search`` needs, built once by ``build_index``.

  Fields (N database rows, D features, G pooled groups, m components):
    metric: "l1", "l2" or "l2_squared".
    database: (N, D) rows as the refinement uses them: uint8 / int8 as given
      for L1; int8 pixels (``distances.centred_pixels``) for L2.
    sq_norms: (N,) int32 |row|^2 of the int8 rows (L2), zeros for L1.
    bound_rows: (M, G, L1_TILE) uint8 quantized pooled sums, feature-major tiles of
      database rows padded with zero rows (L1), or (N', m + 3) float32 rows (z, rho,
      |z|^2 + rho^2, 1) or (N', m + 8) bfloat16 rows (L2, ``_l2_layout``,
      ``_l2_bound_rows``; N' = N rounded up to whole groups of GROUP rows, with padding
      rows whose bound is above every real row's).
    params: dict of arrays: for L2 the bound of a query (see ``_l2_rows``); for L1
      "coarse_table" and "fine_table" (``_pool_table``) and "fine_rows", (N, W) the
      exact fine sums (int16 where they fit; W: G2 padded to whole lanes).
    groups: (D,) int32 group of every feature (L1), or None.
    dtype: "uint8" or "int8", the dtype of the database as given (queries must match).
    fine_groups: (D,) int32 groups of the finer pooling (L1: p / 2 blocks), or None.
    cache: the database as brute force uses it, prepared on first use (a dict).
  """
  metric: str
  database: jax.Array
  sq_norms: jax.Array
  bound_rows: jax.Array
  params: dict
  groups: np.ndarray | None
  dtype: str
  fine_groups: np.ndarray | None = None
  cache: dict | None = None

  def __repr__(self) -> str:  # a notebook shows the index, not every array in it
    n, d = self.database.shape
    basis = ("" if self.metric == "l1" else
             (", basis='dct'" if "dct_h" in self.params else ", basis='pca'")
             + f", bound_dtype={str(self.bound_rows.dtype)!r}")
    return f"Index(metric={self.metric!r}, rows={n}, features={d}, dtype={self.dtype!r}{basis})"


def supports(queries_QxD, database_NxD, metric: str) -> bool:
  """Whether ``search`` serves these inputs: L1, L2 or squared L2 on 2-D arrays that are
  both uint8 or both int8 (pixels), with at most ``max_features(metric)`` features. Other
  inputs go to ``jaxlin.knn.search``."""
  q, d = np.shape(queries_QxD), np.shape(database_NxD)
  dt = {jnp.dtype(a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype)
        for a in (queries_QxD, database_NxD)}
  return (metric in METRICS and len(q) == 2 and len(d) == 2 and q[1] == d[1] and len(dt) == 1
          and dt.pop() in (jnp.uint8, jnp.int8) and d[1] <= max_features(metric))


@functools.lru_cache(maxsize=None)
def int8_speedup() -> float:
  """How many times faster an int8 -> int32 product runs than a float32 one on this
  process's default device: measured once per process (a (512 x 3072) . (3072 x 1024)
  product, the best of 7 runs of each, the two kinds alternating so that a burst of other
  work slows both; about 0.25 s in all). About 7 on CPUs with int8 matrix instructions
  (Intel AMX), 1.5-1.7 with AVX-512 VNNI through XLA's product and about 4 through
  jaxlin's native kernel (``jaxlin.native``), reportedly about 1.4 on AVX2-only CPUs (not
  measured here). Off the CPU,
  ``distances.int8_products`` multiplies in float32, so this compares float32 with float32
  (not measured there: ``knn.search``'s "auto" takes brute force off the CPU anyway)."""
  import time  # pylint: disable=import-outside-toplevel
  contract = (((1,), (1,)), ((), ()))
  a8 = jnp.ones((512, 3072), jnp.int8)
  b8 = jnp.ones((1024, 3072), jnp.int8)
  f8 = jax.jit(distances.int8_products)  # off the CPU: float32 blocks (speedup about 1)
  f32 = jax.jit(lambda a, b: jax.lax.dot_general(a.astype(jnp.float32), b.astype(jnp.float32),
                                                 contract, precision=_HIGHEST))
  fns = (f8, f32)
  for f in fns:
    f(a8, b8).block_until_ready()  # compiled apart
  best = [math.inf, math.inf]
  for _ in range(7):
    for j, f in enumerate(fns):
      t0 = time.perf_counter()
      f(a8, b8).block_until_ready()
      best[j] = min(best[j], time.perf_counter() - t0)
  return best[1] / best[0]


# prefer_pruned's cost model: seconds, fitted to knn.search's first call in a fresh process
# (compilation included) with CIFAR-10 (50,000 rows, k = 10) on an AMD EPYC (Zen 4), where
# int8 products run 1.6-1.7x float32 (WORKSPACE.md, 2026-12-05, evening). 3,072 features:
# brute force 1.30 / 5.48 / 12.7 s for 500 / 4,000 / 10,000 queries; the cascade with its
# build (224 components, the staged first round) 2.19 / 2.59 / 2.93-3.00 / 3.16 / 4.04 / 4.88
# s for 500 / 1,000 / 2,000 / 4,000 / 7,000 / 10,000 queries. 10,000 queries of smaller
# images made from the same ones (32x32x1, 8x8x3, 4x4x1: 1,024, 192 and 16 features): brute
# force 5.23-5.29 / 2.22 / 1.49 s, the cascade 3.87-3.98 / 2.63 / 1.22-1.28 s. The cascade's
# constants (build, build_row, pruned_query) are a least-squares fit to its points (within
# 0.5 s of each; the bound's per pair scaled from its fit at 192 components). Measured before
# the second stage skipped candidates (its first stage then 2 c / 5): float32 CPUs now run
# cheaper refinements than these constants say, and since 2026-12-06 compile the programs in
# about half the time (``_cpu_jit``). Checked then against the cascade's first call in fresh
# processes with a float32 bound (the same 18 points as ``_COST_BF16``'s): within 0.55 s of
# each, 0.07 s under on average, so kept.
_COST_SPEEDUP = 1.62  # int8_speedup() where the costs below were measured
_COST = {
    "brute_product": 2.2e-8,  # brute force per (query, row): the int8 product (x D / 3072
    # x 1.62 / speedup)
    "brute_other": 0.35e-8,  # brute force per (query, row): selection and merge
    "pruned_bound": 0.256e-8,  # the cascade per (query, row): the bound, a float32 product
    # with m + 3 columns (x m / COMPONENTS)
    "pruned_select": 0.12e-8,  # the cascade per (query, row): the host's selection (not x m)
    "pruned_query": 0.87e-4,  # the cascade per query: exact refinement, second rounds
    "build_row": 2.8e-5,  # the index build per row: DCT, int8 pixels, norms
    "build": 0.83,  # the index build, once, and the compilation of the rounds
}
# The same with the bound's product in bfloat16 (``_bound_dtype``; 256 components, the
# second stage skipping candidates, the CPU programs compiled with XLA's classic emitters):
# a least-squares fit (non-negative, within 0.37 s of each point) to knn.search's first
# call in fresh processes, AMD EPYC (Zen 4), 2026-12-06, in turns with brute force: the
# cascade with its build 2.36-2.77 / 2.46-2.85 / 2.77-2.92 / 3.44-3.50 / 3.39-3.85 /
# 4.07-4.17 s for 1,000 / 2,000 / 3,000 / 4,000 / 7,000 / 10,000 queries (brute force
# 1.94-2.01 / 3.07-3.24 / 4.32-4.37 / 5.48-5.52 / 9.15-9.17 / 12.7-12.8 s); 10,000 queries of
# the smaller images 2.91-3.20 / 1.90-2.19 / 1.20-1.55 s (brute force 5.35-5.36 / 2.20-2.22 /
# 1.57-1.62 s; 1,024, 192, 16 features). The selection's per-pair term came out 0 (the
# bound's absorbs it).
_COST_BF16 = {**_COST, "pruned_bound": 0.207e-8, "pruned_select": 0.0, "pruned_query": 0.75e-4,
              "build_row": 2.3e-5, "build": 1.27}
_COST_MARGIN = 1.25  # the cascade is chosen only when predicted 1.25x faster
# L1 (images): seconds per (query, row) and per database row with 3,072 features, measured
# with CIFAR-10 (50,000 rows, k = 10) on an Intel Xeon, 2026-12-04, through knn.search (its
# build in every call): brute force 2.37-2.47 s for 1,000 queries and 4.36 s for 2,000; the
# final cascade 0.70 s for 1,000 and 1.19 s for 2,000 (WORKSPACE.md). Neither is a matrix
# product: int8_speedup does not apply. The cascade's cost per pair is a part that shrinks
# with the features (its kernels) and a part that does not (the coarse array, the host's
# lists of pairs, the merges), 0.42e-8 s, fitted to one-off timings of 8x8x3 (192 features;
# brute force 2x faster) and 16x16x3 images (768; the cascade 1.45x faster) on its first
# version; keeping that part for the final one errs towards brute force.
_L1_COST = {"brute": 4.4e-8, "pruned": 0.58e-8, "pruned_fixed": 0.42e-8, "build_row": 3e-6,
            "build": 0.05}


def _predicted_seconds(num_queries: int, num_database: int, num_features: int,
                       speedup: float, bound_dtype: str = "float32") -> tuple[float, float]:
  """(brute force, cascade with its build): ``_COST`` (``_COST_BF16`` for a bfloat16 bound)
  scaled by the features (brute force's product, the build and the refinement grow with D;
  the bound's product with m; the selections over every row do not shrink with either)."""
  c, f = (_COST_BF16 if bound_dtype == "bfloat16" else _COST), num_features / 3072
  pairs = num_queries * num_database
  brute = pairs * (c["brute_product"] * f * _COST_SPEEDUP / speedup + c["brute_other"])
  top = COMPONENTS_BF16 if bound_dtype == "bfloat16" else COMPONENTS
  m = min(top, num_features) / top
  pruned = (c["build"] + c["build_row"] * f * num_database
            + pairs * (c["pruned_bound"] * m + c["pruned_select"])
            + num_queries * c["pruned_query"] * f)
  return brute, pruned


def prefer_pruned(metric: str, num_queries: int, num_database: int, num_features: int = 3072,
                  *, k: int = 10, speedup: float | None = None, images: bool = False,
                  bound_dtype: str | None = None) -> bool:
  """Whether ``search`` (with its index build) should beat brute force here: the rule of
  ``jaxlin.knn.search(method="auto")``.

  L1: for images only (``images``: the caller gave their shape, so the bounds pool pixel
  blocks; runs of consecutive features were not measured), from 10,000 rows, k at most
  100, where a cost model (``_L1_COST``, measured on an Intel Xeon) predicts the cascade
  with its build 1.25x faster: for 50,000 CIFAR-10 rows from about 160 queries (1,000
  queries measured: 0.70 s against 2.47 s; 250 queries, each with its compilation, 0.87 s
  against 1.23 s).

  L2 on pixels: brute force is an int8 product on CPUs, so its cost falls with
  ``speedup`` (``int8_speedup()``, timed once per process when None; reportedly about
  1.4 on AVX2-only CPUs, 1.7 with AVX-512 VNNI through XLA's product and about 4 through
  jaxlin's native kernel, 7-16 with Intel AMX), while the cascade's
  float32 or bfloat16 products do not. A cost model (``_COST``, measured on an AMD EPYC,
  Zen 4) predicts both times, and the cascade is chosen when predicted 1.25x faster, never
  where int8 runs 6x float32 or more (measured on Intel AMX, 2026-12-05: speedup 7-16, brute
  force 1.61 s against the cascade's 3.4-3.6 s with its build, 10,000 x 50,000; jaxlin's
  native int8 kernel on AVX-512 VNNI measures about 4: brute force 5.9 s against the
  cascade's 4.2 s, as the model predicts, 2026-12-06) or against fewer than
  10,000 rows, or for k above 100 (measured at k = 10 and k = 100: on the AMD EPYC,
  2026-12-06, 10,000 queries at k = 100 took 5.35 s with the build against brute force's
  13.7 s; beyond it the cascade refines 8 k candidates per query, unmeasured). For 50,000
  CIFAR-10 rows (3,072 features) that is from 2,994 queries at speedup 1.62 (10,000 queries,
  measured with the build and the compilation: 4.9 s against 12.7 s), 2,525 at 1.4 and
  5,124 at 2.5; with the bound in bfloat16 (``bound_dtype``: None, what ``build_index``
  would choose here; ``_COST_BF16``) from 2,876 queries at 1.62 (3,000 measured: 2.8-2.9 s
  against 4.3-4.4 s; 2,000: 2.5-2.9 s against 3.1-3.2 s, under the margin; 10,000: 4.1-4.2
  s), 2,470 at 1.4 and 4,552 at 2.5; at 4.1 (the native int8 product on the AMD EPYC) from
  7,827 queries with bfloat16, 10,484 with float32. With ``speedup`` None on a CPU with AMX
  (``distances.cpu_has_amx``) it is brute force, without timing.

  Raises InputError for an unknown metric, counts below 0 (features and k below 1) or an
  unknown bound_dtype (bfloat16 off the CPU).
  """
  distances._check_metric(metric)  # pylint: disable=protected-access  # its shared check
  # Checked first; the default is chosen (a product timed once per process) where L2 needs it.
  bound_dtype = _bound_dtype_name(bound_dtype)
  num_queries = _checks.int_at_least(num_queries, "num_queries", 0)
  num_database = _checks.int_at_least(num_database, "num_database", 0)
  num_features = _checks.int_at_least(num_features, "num_features", 1)
  k = _checks.int_at_least(k, "k", 1)
  if num_database < 10000 or num_queries < 1 or k > 100:
    return False
  if metric == "l1":
    c, f, pairs = _L1_COST, num_features / 3072, num_queries * num_database
    pruned = (c["build"] + c["build_row"] * num_database * f
              + (c["pruned"] * f + c["pruned_fixed"]) * pairs)
    return images and c["brute"] * f * pairs >= _COST_MARGIN * pruned
  if metric not in ("l2", "l2_squared"):
    return False
  dtype = _bound_dtype(bound_dtype, sharding.default_platform())
  brute, pruned = _predicted_seconds(num_queries, num_database, num_features, 1.0, dtype)
  if brute < _COST_MARGIN * pruned:  # not even where int8 is no faster than float32
    return False
  if speedup is None and distances.cpu_has_amx():  # brute force, however the timing went
    return False
  speedup = int8_speedup() if speedup is None else float(speedup)
  if speedup >= 6.0:
    return False
  brute, pruned = _predicted_seconds(num_queries, num_database, num_features, speedup, dtype)
  return brute >= _COST_MARGIN * pruned


# --------------------------------------------------------------------------
# L1: pooled block sums.
# --------------------------------------------------------------------------
def _groups(num_features: int, image_shape, pool: int) -> np.ndarray:
  """(D,) group id of every feature: p x p blocks per channel of an (H, W, C) image
  (row-major, channels last, as ``x.reshape(len(x), -1)`` lays images), else runs of
  p * p consecutive features."""
  if image_shape is None:
    return np.arange(num_features) // (pool * pool)
  h, w, c = image_shape
  gw = -(-w // pool)
  ii, jj, cc = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
  return (((ii // pool) * gw + jj // pool) * c + cc).reshape(-1)


# --------------------------------------------------------------------------
# L2: projection on principal components, with a float error bound.
# --------------------------------------------------------------------------
def _orthonormal_columns(y):
  """Orthonormal float64 columns spanning the leading columns of y, in order
  (Householder QR: orthonormal to float64 rounding even when y is rank deficient,
  e.g. zero for a sample without spread)."""
  q, _ = np.linalg.qr(y)
  return q


@jax.jit
def _centred_floats(rows_SxD, centre_D):
  return rows_SxD.astype(jnp.float32) - centre_D.astype(jnp.float32)


@jax.jit
def _power_step(xs_SxD, basis_DxW):
  return jnp.matmul(xs_SxD.T, jnp.matmul(xs_SxD, basis_DxW, precision=_HIGHEST),
                    precision=_HIGHEST)


def _principal_basis(rows_SxD, centre_D, m: int, seed: int) -> np.ndarray:
  """(m, D) float64 orthonormal rows spanning (about) the top m principal components of
  the sample rows (randomised subspace iteration from a numpy random start: no compiled
  random program). Any orthonormal rows give a valid bound; better components give a
  tighter one."""
  d = rows_SxD.shape[1]
  xs = _centred_floats(rows_SxD, centre_D.astype(np.int32))
  width = min(d, m + 16)
  basis = np.random.default_rng(seed % 2 ** 64).standard_normal((d, width), np.float32)
  for _ in range(3):
    basis = _orthonormal_columns(np.asarray(_power_step(xs, jnp.asarray(basis, jnp.float32)),
                                            np.float64))
  proj = np.asarray(jnp.matmul(xs, jnp.asarray(basis, jnp.float32), precision=_HIGHEST),
                    np.float64)  # (n_s, width)
  w, v = np.linalg.eigh(proj.T @ proj)
  top = basis @ v[:, np.argsort(w)[::-1][:m]]  # (D, m)
  return _orthonormal_columns(top).T


def _on_device(fields: dict) -> dict:
  """{name: (value, numpy dtype)} -> {name: jax array}: converted by numpy, then put on the
  default device (``jnp.asarray`` with a dtype compiles a conversion program for each new
  shape: 60 ms of the index build's 0.14 s of parameters, AMD EPYC, WORKSPACE.md,
  2026-12-05, evening). Float32 values rounded the same way; scalars strongly typed."""
  return {name: jax.device_put(np.asarray(value, dtype)) for name, (value, dtype) in fields.items()}


def _l2_params(basis_mxD: np.ndarray, centre_D: np.ndarray) -> dict:
  """The projection split in two float32 parts, P = P1 + P2, and its error constants.

  P1 = round(Q 2**s) / 2**s with s chosen so that 255 sum_d |P1_id| 2**s < 2**24: for
  integer x_c in [-255, 255]^D every product and every partial sum of P1 x_c is an
  integer multiple of 2**-s below 2**24 in magnitude, so float32 computes P1 x_c EXACTLY
  in any order. P2 = fl32(Q - P1) (|P2| <= 2**-(s+1)): its product errs by at most
  beta_i = gamma_D sum_d |P2_id| 255 per component. phi >= ||P P^T - I||_2 bounds the
  distance from P = P1 + P2 to an exactly orthonormal Q' (||P - Q'||_2 <= phi).
  """
  m, d = basis_mxD.shape
  row_l1 = np.abs(basis_mxD).sum(axis=1).max()
  # sum_d |round(Q_id 2**s)| <= 2**s row_l1 + D / 2.
  s = int(math.floor(math.log2(((_F32_EXACT - 1) / 255.0 - d / 2) / row_l1)))
  p1 = np.round(basis_mxD * 2.0 ** s)
  assert 255 * np.abs(p1).sum(axis=1).max() < _F32_EXACT
  p1 = (p1 / 2.0 ** s).astype(np.float32)
  p2 = (basis_mxD - p1.astype(np.float64)).astype(np.float32)
  p = p1.astype(np.float64) + p2.astype(np.float64)
  phi = float(np.linalg.norm(p @ p.T - np.eye(m), 2)) * (1 + 1e-6) + 1e-12
  beta = _gamma(d) * 255.0 * np.abs(p2.astype(np.float64)).sum(axis=1) * (1 + 1e-6)
  # fl32(P1 + P2) differs from P by at most u |P| entrywise: ||.||_2 <= u ||P||_F.
  p_round = _U * float(np.linalg.norm(p)) * (1 + 1e-6)
  return _on_device({"centre": (centre_D, np.int32), "p1": (p1, np.float32),
                     "p_round": (p_round, np.float32), "p2": (p2, np.float32),
                     "beta_norm": (np.linalg.norm(beta) * (1 + 1e-6), np.float32),
                     "phi": (phi, np.float32)})


# --------------------------------------------------------------------------
# L2 for images: a fixed orthonormal basis, the 2-D DCT of each image and the DCT
# across its channels, instead of principal components: nothing to estimate, and
# each coefficient is a product of two short sums (W C, then H terms), so its
# float error is tiny.
# --------------------------------------------------------------------------
def _dct_matrix(n: int) -> np.ndarray:
  """(n, n) float64 orthonormal DCT-II: row k is sqrt((k ? 2 : 1) / n) cos(pi (2 i + 1) k / 2n)."""
  k, i = np.arange(n)[:, None], np.arange(n)[None, :]
  return np.sqrt(np.where(k == 0, 1.0, 2.0) / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))


# The DCT bound serves images whose two stages stay short (H and W C at most 256, e.g.
# 64 x 64 x 3): a stage of n terms errs by gamma_n sqrt(n) of its input, so an image with
# one long axis (1 x 1024 x 3, say) would get a bound 50x looser than principal components
# (and its error constant four SVDs of 3072 x 3072). Those take principal components.
_DCT_LONGEST = 256


def _dct_fits(image_shape) -> bool:
  """Whether images of this (H, W, C) shape take the DCT bound (``_DCT_LONGEST``)."""
  h, w, c = image_shape
  return h <= _DCT_LONGEST and w * c <= _DCT_LONGEST


def _dct_all(x_NxD, params):
  """(x_c (N, D) int32, the computed coefficients (N, D) float32) of integer rows: the
  centred image x_c = x - centre (exact), multiplied along its (W, C) axes by ``dct_wc``
  (sums of W C terms), then along H by ``dct_h`` (sums of H terms). The coefficients come
  in the order (W C frequency, H frequency), not (H, W C) (``_dct_params``' "take" maps
  them): the second product then takes the H axis last, as one plain (N W C, H) . (H, H)
  product, where a product broadcast over the rows ran slower (the build's program 0.55 s
  against 0.66 s, medians, for 50,000 CIFAR-10 rows; AMD EPYC, WORKSPACE.md, 2026-12-05,
  evening).
  The error bound holds for either order of the stages and of the terms."""
  h, wc = params["dct_h"].shape[0], params["dct_wc"].shape[0]
  n = x_NxD.shape[0]
  xc = x_NxD.astype(jnp.int32) - params["centre"][None, :]
  y = jnp.matmul(xc.astype(jnp.float32).reshape(n * h, wc), params["dct_wc"].T,
                 precision=_HIGHEST)
  y = y.reshape(n, h, wc).transpose(0, 2, 1).reshape(n * wc, h)
  z = jnp.matmul(y, params["dct_h"].T, precision=_HIGHEST)
  return xc, z.reshape(n, wc * h)


# Sample rows whose DCT coefficients' variances order them: 1,000 took 0.09 s against 0.52 s
# for 5,000 (CIFAR-10, in a fresh process, Intel Xeon), and ordered them about as well
# (WORKSPACE.md, 2026-12-05).
_DCT_ORDER_ROWS = 1000


def _dct_params(image_shape, rows_SxD, centre_D, m: int) -> dict:
  """The DCT bound's matrices (float32), the m coefficients it keeps (those of largest
  variance over (up to ``_DCT_ORDER_ROWS`` of) the sample rows; any m give a valid bound),
  and its error constant kappa.

  With A1 = DCT_W (x) DCT_C (n1 = W C) and A2 = DCT_H (n2 = H) exactly orthonormal, A1~,
  A2~ their float32 roundings, z = (A2 (x) A1) x_c the exact coefficients and z^ the
  computed ones: each stage's products are sums of n_i terms, so a stage adds at most
  gamma_{n_i} || |A_i~| ||_2 |input| (Higham 3.5, any order of summation), and
  |z^ - z| <= kappa |x_c| with kappa = (g1 + g2 + g1 g2) s1 s2 + d2 s1 + d1, where
  g_i = gamma_{n_i} || |A_i~| ||_2, s_i = ||A_i~||_2 and d_i = ||A_i~ - A_i||_2 (the same
  bound with the stages in either order). Computed in float64, with a margin.
  """
  h, w, c = image_shape
  a2 = _dct_matrix(h)
  a1 = np.kron(_dct_matrix(w), _dct_matrix(c))
  f1, f2 = a1.astype(np.float32), a2.astype(np.float32)
  r1, r2 = f1.astype(np.float64), f2.astype(np.float64)  # the roundings, held exactly
  norm = lambda a: float(np.linalg.norm(a, 2))
  g1, g2 = _gamma(w * c) * norm(np.abs(r1)), _gamma(h) * norm(np.abs(r2))
  s1, s2 = norm(r1), norm(r2)
  d1, d2 = norm(r1 - a1), norm(r2 - a2)
  kappa = ((g1 + g2 + g1 * g2) * s1 * s2 + d2 * s1 + d1) * (1 + 1e-3) + 1e-12
  # The coefficients of at most _DCT_ORDER_ROWS of the sample rows (evenly spaced), by numpy
  # (no program to compile), for their variances.
  rows = np.asarray(rows_SxD)[::max(1, -(-len(rows_SxD) // _DCT_ORDER_ROWS))]
  xs = (rows.astype(np.float32) - np.asarray(centre_D, np.float32)).reshape(-1, w * c)
  z = np.matmul(f2, (xs @ f1.T).reshape(-1, h, w * c)).reshape(len(rows), -1)
  var = z.var(axis=0)  # float32: only their order matters
  keep = np.sort(np.argsort(-var, kind="stable")[:m]).astype(np.int32)
  # keep: coefficients in the (H, W C) frequency order; take: where _dct_all puts them.
  take = ((keep % (w * c)) * h + keep // (w * c)).astype(np.int32)
  rest = np.ones(h * w * c, np.float32)
  rest[take] = 0.0
  return _on_device({"centre": (centre_D, np.int32), "dct_h": (f2, np.float32),
                     "dct_wc": (f1, np.float32), "keep": (keep, np.int32),
                     "take": (take, np.int32), "rest": (rest, np.float32),
                     "kappa": (kappa, np.float32)})


def _square_norms_above(xf_NxD):
  """Upper bounds (N,) float32 on the squared norms of float32 rows of integers in
  [-255, 255] (centred pixels), for the error terms only: every square is exact (at most
  65,025 < 2**24), and a float32 sum of D non-negative terms in any order is at least
  (1 - gamma_{D-1}) times the exact one (Higham 3.1), so the sum times 1 + 4 gamma_D
  (rounded) is at or above it. A float32 sum over whole rows, which XLA's CPU reduces fast,
  instead of an exact int32 sum (alone 0.16-0.18 s for 50,000 CIFAR-10 rows; inside the
  index build no change in its time was measurable, AMD EPYC, WORKSPACE.md, 2026-12-05)."""
  return jnp.sum(xf_NxD * xf_NxD, axis=1) * jnp.float32(1 + 4 * _gamma(xf_NxD.shape[1]))


def _dct_rows(x_NxD, params):
  """``_l2_rows`` for the DCT bound: z = z^_S, the kept coefficients; rho = |z^_R|, the
  norm of the rest (no cancellation: the rest are computed, not subtracted).

  |u^ - u| <= |z^_S - z_S| + |rho^ - |z^_R|| + | |z^_R| - |z_R| | <= 2 kappa |x_c| +
  gamma_{D+2} rho^ (the squares, a sum of D terms in any order, a square root), and err
  doubles that (second order terms, the rounding of these few operations) plus
  4 u (|z| + rho), as ``_l2_rows``.
  """
  xc, zall = _dct_all(x_NxD, params)
  xsq = _square_norms_above(xc.astype(jnp.float32))
  z = jnp.take(zall, params["take"], axis=1)
  zsq = jnp.sum(z * z, axis=1)
  znorm = jnp.sqrt(zsq)
  rho = jnp.sqrt(jnp.sum(zall * zall * params["rest"][None, :], axis=1))
  e_z = params["kappa"] * jnp.sqrt(xsq) * (1 + 4 * _U)
  err = 2.0 * (2 * e_z + _gamma(zall.shape[1] + 2) * rho) + 4 * _U * (znorm + rho)
  return z, zsq, rho, znorm + rho, err


def _l2_rows(x_NxD, params):
  """(z (N, m), |z|^2 (N,), rho (N,), a (N,), err (N,)) float32 for integer rows x.

  z = fl(P x_c) and rho = fl(sqrt(|x_c|^2 - |z|^2)) with x_c = x - centre (integers in
  [-255, 255]); a = |z| + rho. ``err`` bounds the distance in R^{m+1} between the computed
  u^ = (z, rho) and the exact u = (Q' x_c, |x_c - Q'^T Q' x_c|) of the orthonormal Q'
  (see ``_l2_params``):

  * |z - Q' x_c| <= e_z = |beta| + u |z| (1 + u) + phi |x_c|: P1 x_c exact, P2 x_c within
    beta, one rounding of the sum, ||P - Q'||_2 <= phi.
  * rho is computed from the residual vector r = fl(x_c - fl(P^T z)): with w = fl(P^T z),
    |w - P^T z| <= gamma_m || |P|^T |z| || <= gamma_m sqrt(m) (1 + phi) |z|;
    |P^T z - Q'^T z| <= phi |z|; |Q'^T (z - Q' x_c)| <= e_z. The subtraction adds
    u |r| and the norm (D squares, a sum, a square root) a relative gamma_{D+2}. So
    |rho^ - rho| <= e_rho = e_z + (gamma_m sqrt(m) (1 + phi) + phi) |z| + gamma_{D+3} rho^
    (+ second-order terms).
  * err = 2 (e_z + e_rho) + 4 u (|z| + rho): the factor 2 covers the second-order terms
    and the rounding of these few float32 operations on the error terms themselves.
  """
  if "dct_h" in params:  # images: the DCT basis
    return _dct_rows(x_NxD, params)
  xc = x_NxD.astype(jnp.int32) - params["centre"][None, :]
  xf = xc.astype(jnp.float32)
  xsq = _square_norms_above(xf)
  p = params["p1"] + params["p2"]  # rounded: used only for the residual, within the bound
  z = (jnp.matmul(xf, params["p1"].T, precision=_HIGHEST)
       + jnp.matmul(xf, params["p2"].T, precision=_HIGHEST))
  zsq = jnp.sum(z * z, axis=1)
  znorm = jnp.sqrt(zsq)
  m, d = z.shape[1], xf.shape[1]
  r = xf - jnp.matmul(z, p, precision=_HIGHEST)
  rho = jnp.sqrt(jnp.sum(r * r, axis=1))
  phi = params["phi"] + params["p_round"]
  e_z = params["beta_norm"] + 2 * _U * znorm + phi * jnp.sqrt(xsq)
  e_rho = e_z + (_gamma(m) * math.sqrt(m) * (1 + phi) + phi) * znorm + _gamma(d + 3) * rho
  err = 2.0 * (e_z + e_rho) + 4 * _U * (znorm + rho)
  return z, zsq, rho, znorm + rho, err


GROUP = 16  # database rows per group: the first selection picks groups by their smallest bound
_PAD_BOUND = 1e30  # the bound of a padding row: above every real one


BOUND_DTYPES = ("float32", "bfloat16")  # the L2 bound's product (``build_index``)


def _bound_dtype(choice, platform: str) -> str:
  """``build_index``'s bound_dtype for an index built on a device of ``platform``: None ->
  "bfloat16" on a CPU with bfloat16 dot-product instructions (``distances.cpu_has_bf16``;
  the product ran 1.85x faster: 8.8 ms against 16.3 ms per tile of 128 queries by 50,000
  rows, AMD EPYC, Zen 4, WORKSPACE.md, 2026-12-05, night) whose products pass
  ``_bf16_sums_in_float32``, else "float32". "bfloat16" is refused off the CPU: XLA's CPU
  products convert bfloat16 to float32 (exact products, float32 sums rounded to nearest,
  as the bound's proof needs), while other devices may sum otherwise (GPU tensor cores
  truncate)."""
  name = _bound_dtype_name(choice)
  if name is None:
    fast = platform == "cpu" and distances.cpu_has_bf16() and _bf16_sums_in_float32()
    return "bfloat16" if fast else "float32"
  if name == "bfloat16" and (platform != "cpu" or not _bf16_sums_in_float32()):
    raise InputError(f"bound_dtype='bfloat16' needs a CPU whose bfloat16 products are exact "
                     f"and summed in float32, rounded to nearest; this device is a "
                     f"{platform}{'' if platform != 'cpu' else ' that sums otherwise'}. "
                     "Use bound_dtype='float32' (or None)", argument="bound_dtype")
  return name


def _bound_dtype_name(choice) -> str | None:
  """A given bound_dtype as one of ``BOUND_DTYPES`` (a name, or a dtype such as
  jnp.bfloat16), or None for None; InputError otherwise. No device work: checked before
  any."""
  if choice is None:
    return None
  try:
    name = str(jnp.dtype(choice))
  except (TypeError, ValueError):
    name = None
  if name not in BOUND_DTYPES or isinstance(choice, (bool, int, float)):
    raise InputError(f"bound_dtype must be one of {', '.join(BOUND_DTYPES)} (or their jnp "
                     f"dtypes) or None, got {choice!r}", argument="bound_dtype")
  return name


@functools.lru_cache(maxsize=None)
def _bf16_sums_in_float32() -> bool:
  """Whether the CPU's bfloat16 products (``_bound_product`` compiled as ``_l2_bounds``
  compiles it there, at the bound's shape) are exact and summed in float32 rounded to
  nearest, as the bound's proof needs. Checked once per process (a few ms) on sums whose
  every form differs:

  * 256 + 1 + ... + 1 (261 ones), with the 256 at every position: 517 in float32; 256 or
    520 where the sum is held in bfloat16 (257 and 517 are not bfloat16 values);
  * (1 + 2**-7)**2 + (1.5 * 2**-12) 2**-12 = 1 + 2**-6 + 2**-14 + 1.5 * 2**-24: rounded to
    nearest in float32, 1 + 2**-6 + 2**-14 + 2**-23; truncated, without the 2**-23; with
    products rounded to bfloat16, without the 2**-14.
  """
  k, n = 264, 2048
  b = np.ones((n, k), np.float32)
  b[:, 0], b[:, 1] = 1 + 2.0 ** -7, 2.0 ** -12
  b[np.arange(n), 2 + np.arange(n) % (k - 2)] = 256.0  # the large term at every position
  a = np.ones((128, k), np.float32)
  a[:, :2] = 0.0
  a[0] = 0.0
  a[0, :2] = 1 + 2.0 ** -7, 1.5 * 2.0 ** -12
  # Rounded by numpy (exactly: every value is a bfloat16 one), not by a program to compile.
  cpu = jax.local_devices(backend="cpu")[0]
  out = np.asarray(_bf16_probe(jax.device_put(a.astype(jnp.bfloat16), cpu),
                               jax.device_put(b.astype(jnp.bfloat16), cpu)))
  nearest = np.float32(1 + 2.0 ** -6 + 2.0 ** -14 + 2.0 ** -23)
  return bool(np.all(out[0] == nearest) and np.all(out[1:] == 256.0 + (k - 3)))


def _bf16_values(x):
  """float32 x rounded to bfloat16's precision (to nearest), still float32: an explicit
  ``reduce_precision``, which XLA keeps (a float32 -> bfloat16 -> float32 round trip of
  converts may be dropped as excess precision)."""
  return jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=7)


def _l2_layout(z, zsq, rho, a, err, *, dtype: str, query: bool):
  """(rows (N, W) float32, a', err') of one side of the bound's product, whose product of
  a query row with a database row is b^, the computed |u_x - u_y|^2
  (``_l2_certified_bound``), u = (z, rho). The rows' values are exact in ``dtype``; the
  caller converts them (outside any loop: a bfloat16 output of the index build's map cost
  0.1 s of 0.46 s for 50,000 CIFAR-10 rows, AMD EPYC, WORKSPACE.md, 2026-12-05, night).

  * float32 (W = m + 3): queries (-2 z, -2 rho, 1, |z|^2 + rho^2), database rows (z, rho,
    |z|^2 + rho^2, 1); a' = a, err' = err.
  * bfloat16 (W = m + 8): u~ = u rounded to bfloat16, and its squared norm s = fl32(|u~|^2)
    split into three bfloat16 parts s1 + s2 + s3 (each the rounding of what the parts before
    it leave: s1 + s2 + s3 = s to within 2**-24 s, counted as one rounding more). Queries
    (-2 u~, 1, 1, 1, s1, s2, s3, 0), database rows (u~, s1, s2, s3, 1, 1, 1, 0): the last
    column, 0, makes the width even (bfloat16 products take pairs). The products of
    bfloat16 pairs are exact in float32 and XLA's CPU sums them in float32 (so
    ``_l2_certified_bound``'s count of roundings holds: at most 2 m + 8 per term); the
    bound then holds for u~, and since |u - u~| <= delta (computed: the differences are
    exact, the norm's rounding is covered by the factor; the 1e-3 covers subnormal values
    a CPU may flush to zero), err' = err + delta and a' = a + delta.
  """
  u = jnp.concatenate([z, rho[:, None]], axis=1)
  if dtype == "float32":
    norm = (zsq + rho * rho)[:, None]
    ones = jnp.ones_like(norm)
    row = [-2.0 * u, ones, norm] if query else [u, norm, ones]
    return jnp.concatenate(row, axis=1), a, err
  ut = _bf16_values(u)
  w = u.shape[1]
  delta = jnp.sqrt(jnp.sum((u - ut) ** 2, axis=1)) * (1 + 2 * _gamma(w + 2)) + 1e-3
  s = jnp.sum(ut * ut, axis=1)
  s1 = _bf16_values(s)
  r = s - s1  # exact, as is r - s2: each holds at most 16 significant bits of s
  s2 = _bf16_values(r)
  s3 = _bf16_values(r - s2)
  parts = jnp.stack([s1, s2, s3], axis=1)
  ones, zero = jnp.ones_like(parts), jnp.zeros_like(s)[:, None]
  row = [-2.0 * ut, ones, parts, zero] if query else [ut, parts, ones, zero]
  return jnp.concatenate(row, axis=1), a + delta, err + delta


def _bound_components(rows) -> int:
  """m, the components of the bound whose database rows (``_l2_layout``) these are."""
  return rows.shape[1] - (8 if rows.dtype == jnp.bfloat16 else 3)


def _bound_product(ux, rows):
  """(T, N) float32 b^: the query rows' product with the database rows (``_l2_layout``):
  float32 at HIGHEST precision, or bfloat16 pairs summed in float32."""
  if rows.dtype == jnp.bfloat16:
    return jax.lax.dot_general(ux, rows, (((1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)
  return jnp.matmul(ux, rows.T, precision=_HIGHEST)


# The bfloat16 check's product, compiled as _l2_bounds compiles it on a CPU.
_bf16_probe = _cpu_jit(_bound_product)


def _l2_query_rows(q_TxD, params, dtype: str = "float32"):
  """(ux (T, W), a (T,), err (T,)) of queries (``_l2_layout``; ``_l2_rows`` gives a and
  err)."""
  ux, a, err = _l2_layout(*_l2_rows(q_TxD, params), dtype=dtype, query=True)
  return ux.astype(dtype), a, err


def _l2_certified_bound(b_hat, a_x, err_x, a_max, err_max, m: int):
  """An integer lower bound on the squared distance of every row whose b^ >= ``b_hat``.

  b^ = fl(ux . row), the product of ``_l2_query_rows`` with ``_l2_bound_rows``: every term
  passes through at most 2 m + 8 roundings (float32 rows, 2 m + 3: a norm's term: its square, its
  sum and the + rho^2, m + 1; a cross term: its product, 1; then the sum of the m + 3
  terms, m + 2; the product with 1 is exact. bfloat16 rows: a norm's term: its sum, m, its
  split, 1; every product exact; the sum of the m + 8 terms, m + 7), within the 2 m + 8
  counted below, so with a = |z| + rho >= |u| (a', err' of ``_l2_layout`` for bfloat16),
  |b^ - |u^_x - u^_y|^2| <= e_b = gamma_{2m+8} (a_x + a_y)^2 (1 + 1e-2) in any order of
  summation (Higham 3.1; the 1e-2 covers the norm's three parts, whose magnitudes sum to
  at most (1 + 2**-8) of it, and the norms' own roundings). For such a row y (a_y <= a_max,
  err_y <= err_max): |x - y| >= |u_x - u_y|
  >= |u^_x - u^_y| - err_x - err_y (triangle inequality in R^{m+1}, ``_l2_rows``), so
  |x - y|^2 >= L = (sqrt(b^ - e_b) - err_x - err_max)_+^2, increasing in b^. In float32
  the root and the subtractions err by at most 3 u (sqrt(b^) + err_x + err_max), taken off
  before squaring (cancellation cannot hide it); the squaring and the rest are covered by
  the factor (1 - 1e-5) and the -1; the squared distance is an integer, so it is at least
  ceil(L).
  """
  e_b = _gamma(2 * m + 8) * (1 + 1e-2) * (a_x + a_max) ** 2
  root = jnp.sqrt(jnp.maximum(b_hat - e_b, 0.0))
  # The square root and the two subtractions err by at most 3 u (root + err_x + err_max)
  # in all, even when the subtractions cancel: 4 u of it is taken off.
  s = root - err_x - err_max - 4 * _U * (root + err_x + err_max)
  low = jnp.maximum(s, 0.0) ** 2 * (1.0 - 1e-5) - 1.0
  low = jnp.clip(low, 0.0, float(topk.INT_WORST))
  return jnp.ceil(low).astype(jnp.int32)


# --------------------------------------------------------------------------
# Index.
# --------------------------------------------------------------------------
def build_index(database_NxD, *, metric: str = "l2", image_shape=None, pool: int = 4,
                components: int | None = None, sample: int = 5000, seed: int = 0,
                bound_dtype: str | None = None) -> Index:
  """The bounds of every database row, computed once.

  Args:
    database_NxD: (N, D) uint8 or int8 rows (image pixels, flattened as
      ``x.reshape(len(x), -1)``), N >= 1.
    metric: "l1", "l2" or "l2_squared".
    image_shape: (H, W, C) of the rows. L1: p x p blocks per channel (None:
      groups of p * p consecutive features). L2: the bound projects on a fixed
      basis, the DCT of the images (None, or images with H or W C above 256:
      on principal components estimated from the rows).
    pool: p, the block side of L1's coarse level (4: 192 sums for 32x32x3 images);
      its fine level takes p / 2 blocks (at least 1); blocks larger than the
      image act as the image's size. Unused for L2 (checked all the same).
    components: m, the components of the L2 bound, 1 <= m <= D (default
      min(COMPONENTS, D), with a bfloat16 bound min(COMPONENTS_BF16, D)): the
      m DCT coefficients of largest variance over the sample rows (images),
      else the top m principal components. Unused for L1, as are sample, seed
      and bound_dtype (each checked all the same).
    sample: rows used to order the DCT coefficients or estimate the components
      (any choice gives a valid bound; the DCT orders by at most 1,000 of them,
      evenly spaced; all of them set the centre).
    seed: for the random start of the component estimate (unused where the
      DCT serves).
    bound_dtype: "float32" or "bfloat16", the L2 bound's product (the same
      answers: the rounding to bfloat16 is measured and taken off the bound,
      which comes out slightly looser); None: bfloat16 on CPUs with bfloat16
      dot-product instructions, where it runs about twice as fast, float32
      elsewhere.

  Returns:
    an ``Index`` committed to the default device (``jax.default_device``; L1 given
    a jax array: that array's devices): its searches run there, whatever the default
    device is then.

  Raises:
    InputError: unknown metric, not 2-D, not uint8 / int8, empty database, bad
    image_shape, pool, components, sample, seed or bound_dtype; L2 on a TPU (its
    float32 products are not IEEE ones, which the bound's proof counts on).
  """
  if metric not in METRICS:
    raise InputError(f"unknown metric {metric!r} for pruned search; choose one of "
                     f"{', '.join(METRICS)}", argument="metric")
  _checks.outside_jit("bounds.build_index (it measures the rows on the host)", "database_NxD",
                      database_NxD)
  knn.not_an_index(database_NxD, "database_NxD")
  db = database_NxD if isinstance(database_NxD, jax.Array) else np.asarray(database_NxD)
  if db.ndim != 2 or db.dtype not in (jnp.uint8, jnp.int8) or db.shape[0] == 0:
    raise InputError(f"database_NxD must be a non-empty 2-D uint8 or int8 array, got shape "
                     f"{db.shape} and dtype {db.dtype}", argument="database_NxD")
  n, d = db.shape
  if d == 0 or d > max_features(metric):
    raise InputError(f"database_NxD must have between 1 and {max_features(metric)} features "
                     f"for {metric} (its distances of uint8 rows below 2**30), got {d}",
                     argument="database_NxD")
  image_shape = checked_image_shape(image_shape, d)  # as knn.search checks it
  # Every argument is checked, also those the metric leaves unused.
  pool = _checks.int_at_least(pool, "pool", 1)
  sample = _checks.int_at_least(sample, "sample", 1)
  seed = _checks.concrete_int(seed, "seed")
  if not -2 ** 63 <= seed < 2 ** 63:
    raise InputError(f"seed must fit in 64 bits, got {seed}", argument="seed")
  if components is not None:
    components = _checks.concrete_int(components, "components")
    if not 1 <= components <= d:
      raise InputError(f"components must be in [1, {d}], got {components}",
                       argument="components")
  bound_dtype = _bound_dtype_name(bound_dtype)
  if metric == "l1":
    # Blocks past the image (or past D features) are the same as blocks of its size.
    side = d if image_shape is None else max(image_shape[:2])
    groups = _groups(d, image_shape, min(pool, side))
    fine = _groups(d, image_shape, min(max(1, pool // 2), side))  # the finer level: p / 2
    coarse_table, fine_table = _pool_table(groups), _pool_table(fine)
    width = -(-fine_table.shape[0] // 64) * 64  # whole lanes for the pair kernel
    # Host rows put as a whole (0.07 s against jnp.asarray's 0.11 s, CIFAR-10); a jax array
    # stays on its devices. Committed either way.
    db = _put_committed(db)
    tiles, fine_rows = _l1_build(db, jnp.asarray(coarse_table), jnp.asarray(fine_table),
                                 width=width, tile=L1_TILE,
                                 blocks=_whole_blocks(image_shape, min(pool, side),
                                                      min(max(1, pool // 2), side)))
    params = {"coarse_table": jnp.asarray(coarse_table), "fine_table": jnp.asarray(fine_table),
              "fine_rows": fine_rows}
    return Index("l1", db, jnp.zeros((n,), jnp.int32), tiles, params, groups,
                 str(db.dtype), fine, {})
  # The host copy put on the default device first (as a whole, not split or where a jax
  # input lives): the build took 0.67 s from it against 1.09 s given the numpy array
  # (50,000 CIFAR-10 rows, AMD EPYC, WORKSPACE.md, 2026-12-05).
  host = np.asarray(db)
  on_device = _put_committed(host)
  platform = next(iter(on_device.devices())).platform
  _float32_is_ieee(platform)
  bound_dtype = _bound_dtype(bound_dtype, platform)
  m = min(COMPONENTS_BF16 if bound_dtype == "bfloat16" else COMPONENTS, d) if (
      components is None) else components
  rows = host[np.linspace(0, n - 1, min(n, sample)).astype(np.int64)]
  centre = np.round(rows.mean(axis=0, dtype=np.float64)).astype(np.int64)  # any integers do
  if image_shape is not None and _dct_fits(image_shape):  # a fixed basis: the DCT
    params = _dct_params(image_shape, rows, centre, m)
  else:
    params = _l2_params(_principal_basis(rows, centre, m, seed), centre)
  rows, a_max, err_max, pixels, sq_norms = _l2_build_for(platform)(
      on_device, params, block=min(_BUILD_BLOCK, n), dtype=bound_dtype)
  params = {**params, "a_max": a_max, "err_max": err_max}
  return Index(metric, pixels, sq_norms, rows, params, None, str(db.dtype), None, {})


def _float32_is_ieee(platform: str) -> None:
  """InputError on a TPU: the L2 bound's error analysis counts IEEE float32 roundings of
  its products (``_l2_certified_bound``), and a TPU computes float32 products at HIGHEST
  precision from bfloat16 passes, whose error no such count covers. (CPUs and GPUs give
  IEEE float32 products at HIGHEST; the L1 cascade is integer arithmetic.)"""
  if platform == "tpu":
    raise InputError("the L2 cascade's float32 bound is proved for IEEE float32 products, "
                     "which a TPU emulates with bfloat16 passes; search on the TPU by brute "
                     "force (knn.search(..., method='brute'), exact integers there too), or "
                     "use metric='l1'", argument="metric")


def _put_committed(rows):
  """``rows`` committed to their devices (no copy): host rows put on the default device
  first, a jax array where it lives. The index's arrays computed from them are committed
  too, so its search runs where it lives, whatever the default device then (a CPU index
  searched under a GPU default would otherwise compute its bounds on the GPU, with the CPU's
  bfloat16 arithmetic assumed)."""
  rows = jax.device_put(rows) if isinstance(rows, np.ndarray) else rows
  return jax.device_put(rows, rows.sharding)


# Rows per block of the index build's map: bounded memory for the projections; a (512, D)
# float32 block stays near the cache (the 50,000 CIFAR-10 rows, benchmarks/pruned_parts.py,
# 2026-12-05: blocks of 256 to 2,048 rows within 6 %).
_BUILD_BLOCK = 512


def _l2_build_program(x_NxD, params, *, block: int, dtype: str = "float32"):
  """(``_l2_bound_rows`` rows of ``dtype``, a_max, err_max (the largest a' and err' of the
  real rows, ``_l2_layout``), int8 pixels (``distances.centred_pixels``), their exact int32
  squared norms) of every row: one program, whose map over blocks of ``block`` rows (the
  last one padded) keeps the projections' memory bounded. One program, not one per block
  and a concatenation of their outputs: its compilation and run took 1.0 s against 1.3 s
  for 50,000 CIFAR-10 rows in a fresh process (Intel Xeon, WORKSPACE.md, 2026-12-05,
  afternoon); it is compiled for each database size (0.15 s more than before for each
  new size after the first)."""
  n, d = x_NxD.shape
  blocks = jnp.pad(x_NxD, ((0, (-n) % block), (0, 0))).reshape(-1, block, d)

  def one(x_BxD):
    return _l2_layout(*_l2_rows(x_BxD, params), dtype=dtype, query=False)
  rows, a, err = jax.lax.map(one, blocks)
  rows = rows.reshape(-1, rows.shape[-1])[:n].astype(dtype)
  pixels = distances.centred_pixels(x_NxD)
  return (_l2_bound_rows(rows), jnp.max(a.reshape(-1)[:n]), jnp.max(err.reshape(-1)[:n]),
          pixels, distances.int_squared_norms(pixels))


_BUILD_STATIC = ("block", "dtype")
_l2_build = jax.jit(_l2_build_program, static_argnames=_BUILD_STATIC)
_l2_build_on_cpu = _cpu_jit(_l2_build_program, static_argnames=_BUILD_STATIC)


def _l2_build_for(platform: str):
  """The index build's program for rows on a device of ``platform``: on a CPU compiled with
  ``_cpu_compiler_options``."""
  return _l2_build_on_cpu if platform == "cpu" else _l2_build


def _padded_rows(x: np.ndarray, rows: int) -> np.ndarray:
  """Host rows zero-padded to ``rows`` (padding on the host: no compiled program per
  shape)."""
  return np.pad(x, ((0, rows - len(x)),) + ((0, 0),) * (x.ndim - 1)) if len(x) < rows else x


@jax.jit
def _l2_bound_rows(rows_NxW):
  """``_l2_layout``'s database rows padded to N' = N rounded up to whole groups of
  ``GROUP`` rows. A padding row is the layout of a point far from every real one: zero
  projection, residual norm sqrt(_PAD_BOUND), so its b^ with any query is about
  _PAD_BOUND, never below a real row's."""
  count = (-rows_NxW.shape[0]) % GROUP
  far = jnp.full((count,), math.sqrt(_PAD_BOUND), jnp.float32)
  zeros = jnp.zeros((count, _bound_components(rows_NxW)), jnp.float32)
  pad, _, _ = _l2_layout(zeros, zeros[:, 0], far, far, far, dtype=str(rows_NxW.dtype),
                         query=False)
  return jnp.concatenate([rows_NxW, pad.astype(rows_NxW.dtype)])


# --------------------------------------------------------------------------
# L1: thresholds set by exact distances, then quantized pooled sums, finer
# pooled sums and exact distances, each computed only where the last one left
# a row in (see the module docstring).
# --------------------------------------------------------------------------
L1_TILE = 1024  # database rows per tile of the coarse bound (knn's L1 tile)
_PAIR_BLOCK = 8192  # (query, row) pairs per compiled step of the fine and exact levels
_PAIR_SUB = 256  # pairs per gathered block inside that step


def _pool_table(groups_D: np.ndarray) -> np.ndarray:
  """(G, s) the features of every group (s: the largest group), short groups padded with
  D, the index of a zero feature ``_pooled_sums`` appends."""
  d = groups_D.shape[0]
  g = int(groups_D.max()) + 1
  sizes = np.bincount(groups_D, minlength=g)
  table = np.full((g, int(sizes.max())), d, np.int32)
  order = np.argsort(groups_D, kind="stable")
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  slot = np.arange(d) - np.repeat(starts, sizes)
  table[groups_D[order], slot] = order
  return table


def _whole_blocks(image_shape, *pools):
  """(H, W, C) when every pool's p x p blocks tile the image whole, else None."""
  if image_shape is None or any(image_shape[0] % p or image_shape[1] % p for p in pools):
    return None
  return tuple(image_shape)


def _pooled_sums(x_NxD, table_GxS, dtype=jnp.int32, image_shape=None):
  """(N, G) exact sums of every group of features (``_pool_table``) in ``dtype`` (wide
  enough for them), of the rows made unsigned (int8 + 128: the same differences, so the
  same L1). XLA fuses the gather into the sum: no (N, G, s) array. ``image_shape`` (H,
  W, C): the groups are whole p x p blocks (p^2 = s), summed over a reshape of the image
  instead of a gather (the same sums in the same order, ``_groups``; 1.6x faster)."""
  x = x_NxD.astype(dtype) + (128 if x_NxD.dtype == jnp.int8 else 0)
  if image_shape is not None:
    (h, w, c), p = image_shape, math.isqrt(table_GxS.shape[1])
    return x.reshape(-1, h // p, p, w // p, p, c).sum(axis=(2, 4), dtype=dtype).reshape(
        x.shape[0], -1)
  x = jnp.pad(x, ((0, 0), (0, 1)))  # feature D: zero, for short groups
  n, (g, s) = x.shape[0], table_GxS.shape
  return jnp.sum(jnp.take(x, table_GxS.reshape(-1), axis=1).reshape(n, g, s), axis=2,
                 dtype=dtype)


def _coarse(x_NxD, table_GxS, image_shape=None):
  """(N, G) uint8 floor(S / s) of the pooled sums S (s = ``table_GxS.shape[1]``, the
  largest group): S = s a + r with 0 <= r < s, so |S_x - S_y| >= s |a_x - a_y| - (s - 1)."""
  return (_pooled_sums(x_NxD, table_GxS, image_shape=image_shape)
          // table_GxS.shape[1]).astype(jnp.uint8)


def _fine_dtype(table_GxS):
  """int16 where every fine sum and difference of two (255 s at most) fits, else int32."""
  return jnp.int16 if 255 * table_GxS.shape[1] <= np.iinfo(np.int16).max else jnp.int32


def _fine(x_NxD, table_GxS, width: int, image_shape=None):
  """(N, width) exact fine sums (``_pooled_sums``; zero columns after G: they add
  nothing to an L1), in ``_fine_dtype``."""
  s = _pooled_sums(x_NxD, table_GxS, _fine_dtype(table_GxS), image_shape)
  return jnp.pad(s, ((0, 0), (0, width - s.shape[1])))


_fine_jit = jax.jit(_fine, static_argnames="width")


@functools.partial(jax.jit, static_argnames=("width", "tile", "blocks"))
def _l1_build(x_NxD, coarse_table, fine_table, *, width: int, tile: int, blocks=None):
  """(coarse tiles (M, G, tile) uint8, feature-major, padded with zero rows (the search
  masks them); fine sums (N, width)): one program over the whole database (0.07 s for
  50,000 CIFAR-10 rows once compiled, 0.12 s by gathers; no array larger than its
  outputs). ``blocks``: (H, W, C) when both levels' blocks tile the images whole
  (``_whole_blocks``), summed by reshapes."""
  coarse = _coarse(x_NxD, coarse_table, blocks)
  n, g = coarse.shape
  tiles = jnp.pad(coarse, ((0, (-n) % tile), (0, 0))).reshape(-1, tile, g).transpose(0, 2, 1)
  return tiles, _fine(x_NxD, fine_table, width, blocks)


_U16_TOP = np.iinfo(np.uint16).max  # the coarse bound of a padding row, when uint16


def _coarse_u16(xT_GxU, yT_GxS, unroll: int):
  """(U, S) uint16 sum_g |x_g - y_g| of uint8 rows, feature-major, for G <= 256 (at most
  65,280): one uint16 accumulator over every feature, 1.4x faster than
  ``distances.l1_transposed``'s int16 blocks added into int32 on 192 features (and half
  the bytes for the host to scan)."""
  xs, ys = xT_GxU.astype(jnp.int16), yT_GxS.astype(jnp.int16)

  def add(i, acc):
    return acc + jnp.abs(xs[i][:, None] - ys[i][None, :]).astype(jnp.uint16)
  return jax.lax.fori_loop(0, xs.shape[0], add,
                           jnp.zeros((xs.shape[1], ys.shape[1]), jnp.uint16), unroll=unroll)


@functools.partial(jax.jit, static_argnames=("n", "sub"))
def _l1_coarse_step(q_TxD, table_GxS, tiles_MxGxS, *, n: int, sub: int):
  """The coarse level for a tile of T queries: (raw (M, T, L1_TILE) L1 distances of the
  quantized sums, by query blocks of ``sub``: uint16 (``_coarse_u16``) for G <= 256 sums,
  else int32 (``distances.l1_transposed``), padding rows made the dtype's top (uint16) or
  2**30, above any real one; minima (T, L1_TILE) over the database tiles, the minimum of
  rows j, j + S, j + 2 S, ... for each j)."""
  t = q_TxD.shape[0]
  xt = _coarse(q_TxD, table_GxS).T.reshape(-1, t // sub, sub).transpose(1, 0, 2)  # (T/u, G, u)
  small = tiles_MxGxS.shape[1] <= 256

  def db_tile(y_GxS):
    if small:
      return jax.lax.map(lambda x: _coarse_u16(x, y_GxS, 16), xt).reshape(t, -1)
    return jax.lax.map(lambda x: distances.l1_transposed(x, y_GxS, unroll=distances.L1_UNROLL),
                       xt).reshape(t, -1)
  raw = jax.lax.map(db_tile, tiles_MxGxS)  # (M, T, S)
  m, _, s = raw.shape
  if m * s > n:  # the last tile's padding rows: above every real bound
    raw = raw.at[m - 1, :, s - (m * s - n):].set(_U16_TOP if small else 2 ** 30)
  return raw, jnp.min(raw, axis=0)


def _pair_l1(q_TxF, qi_P, ri_P, rows_NxF, max_diff: int):
  """(P,) exact int32 sum_f |q[qi] - rows[ri]| of every pair, gathered ``_PAIR_SUB``
  pairs at a time, for features whose differences are at most ``max_diff``: lanes of
  partial sums (a strided reduction XLA vectorises, unlike one over the contiguous
  features), in int16 where they cannot overflow (3x faster than int32 here)."""
  f = rows_NxF.shape[1]
  lanes = next(w for w in (128, 64, 32, 16, 8, 4, 2, 1) if f % w == 0)
  small = max_diff <= np.iinfo(np.int16).max
  part = jnp.int16 if small and (f // lanes) * max_diff <= np.iinfo(np.int16).max else jnp.int32
  wide = jnp.int16 if small else jnp.int32

  def one(args):
    qi, ri = args
    x = jnp.take(q_TxF, qi, axis=0, mode="clip").astype(wide)
    y = jnp.take(rows_NxF, ri, axis=0, mode="clip").astype(wide)
    partial = jnp.sum(jnp.abs(x - y).reshape(_PAIR_SUB, -1, lanes), axis=1, dtype=part)
    return jnp.sum(partial, axis=1, dtype=jnp.int32)
  return jax.lax.map(one, (qi_P.reshape(-1, _PAIR_SUB), ri_P.reshape(-1, _PAIR_SUB))).reshape(-1)


_pair_l1_jit = jax.jit(_pair_l1, static_argnames="max_diff")


def _pairs_start(q_TxF, qi, ri, rows_NxF, max_diff: int = 255):
  """``_pair_l1`` of host pair arrays of any length, dispatched in blocks of
  ``_PAIR_BLOCK`` (one compiled shape; the last block padded with pair (0, 0)) and not
  waited for: (length, device blocks) for ``_pairs_end``."""
  n = len(qi)
  m = -(-n // _PAIR_BLOCK) * _PAIR_BLOCK
  qi = np.pad(qi.astype(np.int32), (0, m - n))
  ri = np.pad(ri.astype(np.int32), (0, m - n))
  return n, [_pair_l1_jit(q_TxF, qi[s:s + _PAIR_BLOCK], ri[s:s + _PAIR_BLOCK], rows_NxF,
                          max_diff=max_diff) for s in range(0, m, _PAIR_BLOCK)]


def _pairs_end(started) -> np.ndarray:
  """The (P,) int32 distances of ``_pairs_start``, on the host."""
  n, outs = started
  return np.concatenate([np.asarray(o) for o in outs])[:n] if outs else np.zeros(0, np.int32)


def _pairs_l1(q_TxF, qi, ri, rows_NxF, max_diff: int = 255) -> np.ndarray:
  """(P,) exact int32 L1 of every (q[qi], rows[ri]) pair, on the host."""
  return _pairs_end(_pairs_start(q_TxF, qi, ri, rows_NxF, max_diff))


def _kth_estimate_rows(raw, minima, c0: int, n: int) -> np.ndarray:
  """(T, c0) rows with small coarse bounds (any rows would do: their exact distances
  only set the threshold): the row of smallest bound in each of the c0 strided columns
  (rows j, j + S, ...) of smallest minimum, or, when c0 exceeds the columns, the c0 rows of
  smallest bound."""
  m, t, s = raw.shape
  if c0 <= min(s, n):
    cols = np.argpartition(minima, c0 - 1, axis=1)[:, :c0]  # (T, c0)
    best = np.argmin(raw[:, np.arange(t)[:, None], cols], axis=0)  # (T, c0) database tile
    return (best * s + cols).astype(np.int32)
  flat = raw.transpose(1, 0, 2).reshape(t, m * s)
  return np.argpartition(flat, c0 - 1, axis=1)[:, :c0].astype(np.int32)


def _merge_pairs(best_d, best_i, qi, ri, d, k: int):
  """The k best (distance, index) of each query among its running best (T, k) and new
  pairs (qi, ri, d): (T, k) each."""
  t = best_d.shape[0]
  qs = np.concatenate([np.repeat(np.arange(t), k), qi])
  ds = np.concatenate([best_d.reshape(-1), d])
  rs = np.concatenate([best_i.reshape(-1), ri])
  order = np.lexsort((rs, ds, qs))
  first = np.searchsorted(qs[order], np.arange(t))
  take = order[(first[:, None] + np.arange(k)).reshape(-1)]
  return ds[take].reshape(t, k), rs[take].reshape(t, k)


_L1_GIVE_UP = 8  # a tile goes to brute force when over 1 / 8 of its pairs pass the coarse level
_MERGE_PAIRS = 1 << 20  # exact distances held before they are merged into the k best


def _l1_tile(q_TxD, valid: int, index: Index, k: int, c0: int, sub: int, counts: np.ndarray):
  """Exact k nearest (int32 distances, indices) of the first ``valid`` of T queries (host
  rows, padded), by the L1 levels; adds (fine pairs, exact pairs, brute-force queries) to
  ``counts``.

  Where the coarse bound leaves in more than 1 / ``_L1_GIVE_UP`` of the pairs (data the
  pooled sums do not describe, e.g. noise), or the threshold alone would take c0 rows
  over 1 / ``_L1_GIVE_UP`` of the database, the gathered levels would cost more than brute
  force, which then answers the tile instead."""
  n = index.database.shape[0]

  def brute_force():
    counts[2] += valid
    return _brute_force(q_TxD[:valid], index, k)

  if c0 * _L1_GIVE_UP > n:  # the threshold alone would measure too many rows
    return brute_force()
  coarse_t, fine_t = index.params["coarse_table"], index.params["fine_table"]
  s, g = coarse_t.shape[1], coarse_t.shape[0]
  q = jnp.asarray(q_TxD)
  raw, minima = _l1_coarse_step(q, coarse_t, index.bound_rows, n=n, sub=sub)
  raw, minima = np.asarray(raw), np.asarray(minima)
  t = q_TxD.shape[0]
  est = _kth_estimate_rows(raw, minima, c0, n)
  # Threshold: the k-th smallest exact distance of c0 real rows, at least the true k-th.
  d_est = _pairs_l1(q, np.repeat(np.arange(t), c0), est.reshape(-1), index.database)
  d_k = np.partition(d_est.reshape(t, c0), k - 1, axis=1)[:, k - 1].astype(np.int64)
  # Coarse: s raw - (s - 1) G <= L1, so rows with raw > (d_k + (s - 1) G) // s are out.
  limit = (d_k + (s - 1) * g) // s
  limit = np.minimum(limit, np.iinfo(raw.dtype).max - 1).astype(raw.dtype)  # never padding
  best_d = np.full((t, k), topk.INT_WORST, np.int32)
  best_i = np.full((t, k), -1, np.int32)
  q_fine = _fine_jit(q, fine_t, width=index.params["fine_rows"].shape[1])
  fine_rows, fine_max = index.params["fine_rows"], 255 * fine_t.shape[1]

  def batches():
    """(qi, ri) of the pairs that pass the coarse level, database tile by database tile
    (bounded memory for any data), in batches of about 16 pair blocks; None as soon as
    too many pass."""
    pending, size, passed = [], 0, 0
    for m in range(raw.shape[0]):
      f = np.flatnonzero(raw[m, :valid] <= limit[:valid, None])
      qi, col = np.divmod(f, raw.shape[2])
      pending.append((qi.astype(np.int32), (m * raw.shape[2] + col).astype(np.int32)))
      size, passed = size + len(f), passed + len(f)
      if passed * _L1_GIVE_UP > valid * n:
        yield None
        return
      if size >= 16 * _PAIR_BLOCK or m == raw.shape[0] - 1:
        yield tuple(np.concatenate(a) for a in zip(*pending))
        pending, size = [], 0

  # A pipeline: while the device computes one batch's fine bounds and the previous
  # batch's exact distances, the host lists the next batch's pairs.
  fine_stage = exact_stage = None
  done = np.zeros(2, np.int64)
  measured = []  # (qi, ri, d) of exact distances not yet merged (up to _MERGE_PAIRS)
  for batch in itertools.chain(batches(), [(), ()]):
    if batch is None:  # the coarse level passes too much: brute force answers the tile
      return brute_force()
    started = (*batch, _pairs_start(q_fine, *batch, fine_rows, fine_max)) if batch else None
    if exact_stage is not None:
      measured.append((exact_stage[0], exact_stage[1], _pairs_end(exact_stage[2])))
      if sum(len(m[0]) for m in measured) > _MERGE_PAIRS or not batch:
        best_d, best_i = _merge_pairs(best_d, best_i,
                                      *(np.concatenate(a) for a in zip(*measured)), k)
        measured = []
    exact_stage = None
    if fine_stage is not None:
      qi, ri, fine = fine_stage
      keep = _pairs_end(fine) <= d_k[qi]  # the fine bound never exceeds the distance
      qi, ri = qi[keep], ri[keep]
      done += (len(keep), len(qi))
      exact_stage = (qi, ri, _pairs_start(q, qi, ri, index.database))
    fine_stage = started
  counts[:2] += done
  return best_d[:valid], best_i[:valid]


def _l1_search(q, index: Index, k: int, c0: int, tile: int, callback):
  """(int32 distances, indices, (fine pairs, exact pairs, brute-force queries)) of host
  queries ``q``."""
  q_total = q.shape[0]
  sub = min(tile, knn.l1_query_tile(  # pylint: disable=protected-access
      knn.l2_cache_bytes(), knn._platform(None, index.database), exact=True))
  sub = sub if tile % sub == 0 else tile
  d_out = np.zeros((q_total, k), np.int32)
  i_out = np.zeros((q_total, k), np.int32)
  counts = np.zeros(3, np.int64)
  for start in range(0, q_total, tile):
    rows = q[start:start + tile]
    d_out[start:start + len(rows)], i_out[start:start + len(rows)] = _l1_tile(
        _padded_rows(rows, tile), len(rows), index, k, c0, sub, counts)
    if callback is not None and start + tile < q_total:
      callback(start + tile, q_total)
  return d_out, i_out, counts


# --------------------------------------------------------------------------
# One round over a tile of queries.
# --------------------------------------------------------------------------
def _certified(d_TxC, cand_TxC, low_T, k: int):
  """The k best candidates by (distance, index), and whether the k-th lies strictly below
  ``low_T``, a lower bound on every row left out: then no row left out is among the k
  nearest or ties with the k-th (a tie could have a lower index), so the answer is the
  brute-force one, ties included."""
  d, i = jax.lax.sort((d_TxC, cand_TxC), dimension=1, num_keys=2)
  d, i = d[:, :k], i[:, :k]
  return d, i, d[:, k - 1] < low_T


def _top_k(x, k: int):
  """``jax.lax.top_k``, kept whole: when only part of its outputs is used, XLA's CPU
  compiler may replace it by a full sort of every row (10x slower here)."""
  return jax.lax.optimization_barrier(jax.lax.top_k(x, k))


def _l2_exact(q_TxD, cand_TxC, pixels, sq_norms, block: int):
  """(T, C) exact int32 squared distances of int8 queries to their candidates.

  ``lax.map`` over blocks of ``block`` queries: each gathers its queries' candidate rows
  and takes one product (``distances.int8_products``) with all ``block`` queries,
  keeping the block's diagonal (a product ``block`` times larger than needed, but XLA's
  CPU products run far faster than its batched or per-row forms; measured in
  benchmarks/pruned_speed.py)."""
  t, c = cand_TxC.shape
  qn = distances.int_squared_norms(q_TxD)
  eye = jnp.arange(block)

  def one(args):
    q, idx, n = args  # (block, D), (block * C,), (block,)
    rows = jnp.take(pixels, idx, axis=0, mode="clip")
    dot = distances.int8_products(rows, q)  # (block * C, block)
    dot = dot.reshape(block, c, block)[eye, :, eye]
    return n[:, None] + jnp.take(sq_norms, idx, mode="clip").reshape(block, c) - 2 * dot
  out = jax.lax.map(one, (q_TxD.reshape(t // block, block, -1),
                          cand_TxC.reshape(t // block, block * c), qn.reshape(-1, block)))
  return out.reshape(t, c)


def _l2_finish(q_TxD, cand_TxC, left_T, a, err, pixels, sq_norms, params, *, k: int, m: int,
               prev=None, rest_b=None):
  """Steps 2 and 3 of a round: exact int8 distances of the candidates (``cand_TxC``), and
  the certificate against ``left_T``, at most b^ of every row left out, made a certified
  integer bound (``_l2_certified_bound``; a ``left_T`` below 0 certifies nothing: its
  bound is 0, and no squared distance is below 0). ``prev``: (d (T, k), idx (T, k)), the k
  best of the query's earlier candidates (the first stage of a round), merged with these:
  the k best of the union of two sets of rows are the k best of one's k best and the
  other.

  ``rest_b`` (T, R): b^ of the round's later candidates (the second stage's, in increasing
  order). Then a fourth output (T,) int32 counts those whose certified bound is at most
  the k-th distance found here: the others lie strictly farther than it, and than the k-th
  of any larger set of candidates, so they are neither among the k nearest nor tied with
  the k-th, and the second stage refines only that first count of them (the bound grows
  with b^: they are a prefix)."""
  low = _l2_certified_bound(left_T, a, err, params["a_max"], params["err_max"], m)
  block = 8 if q_TxD.shape[0] % 8 == 0 else 1
  d = _l2_exact(distances.centred_pixels(q_TxD), cand_TxC, pixels, sq_norms, block)
  # A padding row is a candidate only off the CPU, when the chosen groups hold fewer than
  # c real rows (then every real row of them is a candidate too); its distance is made the
  # worst, so it never counts as a neighbour, and the query is not certified if it would.
  d = jnp.where(cand_TxC < pixels.shape[0], d, topk.INT_WORST)
  if prev is not None:
    d, cand_TxC = jnp.concatenate([prev[0], d], axis=1), jnp.concatenate([prev[1], cand_TxC],
                                                                         axis=1)
  out = _certified(d, cand_TxC, low, k)
  if rest_b is None:
    return out
  low_rest = _l2_certified_bound(rest_b, a[:, None], err[:, None], params["a_max"],
                                 params["err_max"], m)
  return out + (jnp.sum(low_rest <= out[0][:, k - 1:k], axis=1, dtype=jnp.int32),)


@functools.partial(jax.jit, static_argnames=("k", "g", "c"))
def _l2_round(q_TxD, pixels, sq_norms, rows, params, *, k, g, c):
  """(d (T, k) int32, idx (T, k) int32, certified (T,) bool) for one tile of queries, off
  the CPU (on a CPU the host selects: ``_l2_bounds`` and ``_l2_settle``).

  1. b^ = |u^_x - u^_y|^2 for every row, by one product with the ``_l2_bound_rows``, and
     each GROUP's minimum.
  2. The ``g`` groups of smallest minimum (top_k over N / GROUP values), then the ``c``
     rows of smallest b^ among their g * GROUP rows (top_k again): two selections over
     short rows instead of one over N. Every row left out has b^ at least
     min((g + 1)-th group minimum, (c + 1)-th value among the chosen groups).
  3. ``_l2_finish``.
  Needs c + 1 <= g * GROUP and g + 1 <= the number of groups.
  """
  t = q_TxD.shape[0]
  ux, a, err = _l2_query_rows(q_TxD, params, str(rows.dtype))
  s = _bound_product(ux, rows).reshape(t, -1, GROUP)
  neg, grp = _top_k(-jnp.min(s, axis=2), g + 1)
  g_left, grp = -neg[:, g], grp[:, :g]
  vals = jnp.take_along_axis(s, grp[:, :, None], axis=1).reshape(t, g * GROUP)
  neg, pos = _top_k(-vals, c + 1)
  cand = (grp[:, :, None] * GROUP + jnp.arange(GROUP)).reshape(t, g * GROUP)
  cand = jnp.take_along_axis(cand, pos[:, :c], axis=1)
  return _l2_finish(q_TxD, cand, jnp.minimum(g_left, -neg[:, c]), a, err, pixels, sq_norms,
                    params, k=k, m=_bound_components(rows))


@_cpu_jit
def _l2_bounds(q_TxD, rows, params):
  """Step 1 on a CPU: (b^ (T, N') float32, a, err) of one tile of queries; the host reads
  b^'s bits as int32 keys (``_host_candidates``: a view, where a bit cast in the program
  copied the (T, N') bounds, 5-8 ms of a 14 ms product per tile on an AMD EPYC,
  WORKSPACE.md, 2026-12-05)."""
  ux, a, err = _l2_query_rows(q_TxD, params, str(rows.dtype))
  return _bound_product(ux, rows), a, err


# Steps 2 and 3 after the host's selection (``_host_candidates``).
_l2_settle = _cpu_jit(_l2_finish, static_argnames=("k", "m"))


def _memory_tile(n: int) -> int:
  """The most queries (a power of two, at least 8) whose (tile, N) bounds (float32 for L2,
  int32 coarse bounds for L1) stay within 256 MB, up to about 8 million rows."""
  fits = (1 << 26) // max(1, -(-n // L1_TILE) * L1_TILE)
  return max(8, 1 << max(0, fits.bit_length() - 1))


def _query_tile(metric: str, n: int, num_queries: int, second: bool = False) -> int:
  """Queries per step: L2 128, 64 in second rounds off the CPU and in the second stage of
  a CPU's first round (``_search_ints``: a CPU's second round takes its first round's
  tile), L1 up to 1,024, at most ``_memory_tile``. A power of two (at least 8) when there
  are fewer queries: few shapes to compile."""
  top = 1024 if metric == "l1" else 64 if second else 128
  return min(top, _memory_tile(n), max(8, 1 << max(0, num_queries - 1).bit_length()))


def _l2_groups(n: int, c: int) -> int:
  """Groups chosen per query for ``c`` candidates among ``n`` rows off the CPU (c, at most
  all groups but one), or 0 when the round cannot run (c + 1 rows must lie in the chosen
  groups and in the database)."""
  g = min(c, -(-n // GROUP) - 1)
  return g if g >= 1 and c + 1 <= min(n, g * GROUP) else 0


def _round_runs(n: int, k: int, c: int, host: bool) -> bool:
  """Whether an L2 round with ``c`` candidates per query can run against ``n`` rows (L1
  has no rounds): c + 1 rows, and off the CPU (not ``host``) the groups it needs."""
  return k <= c and c + 1 <= n and (host or _l2_groups(n, c) > 0)


def _host_selects(index: Index) -> bool:
  """Whether L2 rounds select candidates on the host: where the index lives on a CPU.
  ``topk.smallest_k_host`` over all N bounds took 3 ms per 128 CIFAR-10 queries where
  XLA's two top_k over group minima and groups took 11 ms (Intel Xeon, WORKSPACE.md,
  2026-12-05, afternoon)."""
  return next(iter(index.database.devices())).platform == "cpu"


def _host_candidates(b_TxN, c: int, cut: int | None = None):
  """(the c rows of smallest b^ (T, c), in increasing order, the (c + 1)-th smallest b^
  (T,) float32; with ``cut`` < c, the (cut + 1)-th smallest b^ before it) of
  ``_l2_bounds``' float32 bounds, on the host, by their bits as int32 keys: for b^ >= +0
  they order as b^ does, and every b^ < 0 (rounding below a true value near 0) has a key
  below them all (b^ = -0.0 does not occur: the sums hold a term +|u_y|^2 >= +0, and
  round-to-nearest sums of mixed zeros give +0). So when the (C + 1)-th smallest key is
  >= 0, the C rows of smaller keys hold every row whose b^ is below its value; else the
  round certifies nothing (``_l2_finish``)."""
  keys = np.asarray(b_TxN, np.float32).view(np.int32)
  pos = topk.smallest_k_host(keys, c + 1)  # sorted by (key, position)
  at = lambda j: np.take_along_axis(keys, pos[:, j:j + 1], axis=1)[:, 0].view(np.float32)
  return (pos[:, :c], at(c)) if cut is None else (pos[:, :c], at(cut), at(c))


def _stage_cut(k: int, c: int) -> int | None:
  """The candidates of a host round's first stage: 3 c / 10 (at least k), or None (no
  stage) where that is not below c. With a bfloat16 bound of 256 components on CIFAR-10
  (k = 10, c = 160), 48 candidates settled 55 % of the queries and 64 74 %; the queries left
  needed 32-33 of the other candidates on average (median 22-25). 10,000 queries took
  1.80 s with 48 against 1.85 s with 64 and 1.94 s with 64 before the second stage skipped
  candidates (medians of five, AMD EPYC, WORKSPACE.md, 2026-12-05, night). A float32 bound
  takes the same cut, not measured with it (2 c / 5 was its best before the skipping)."""
  cut = max(k, 3 * c // 10)
  return cut if cut < c else None


def _run_round(queries, index, k, c, tile, callback=None, staged=False):
  """An L2 round over all ``queries`` in tiles: (d, idx, certified) numpy arrays.

  ``staged`` (host selection only): the first ``_stage_cut`` candidates of every query,
  certified against the bound after them; then, for the queries left, the rest of the c
  candidates whose certified bound is at most the first stage's k-th distance (a prefix
  of them: ``_l2_finish``'s count, padded to one of ``_later_widths``), in tiles of their
  own, merged with their first k best and certified against the (c + 1)-th bound, as one
  round of c would certify them (the same answer: the k best of the c candidates by
  (distance, index); the rest left out are farther than the k-th). Its bounds and its
  selection are computed once."""
  q_total = queries.shape[0]
  n, rows = index.database.shape[0], index.bound_rows
  common = {"pixels": index.database, "sq_norms": index.sq_norms, "k": k,
            "params": index.params, "m": _bound_components(rows)}
  cut = _stage_cut(k, c) if staged and _host_selects(index) else None
  later = []  # with stages: each tile's (rest of the candidates, (c + 1)-th bound, a, err)
  if _host_selects(index):
    # (Sending the next tile's bounds before this tile's selection, for the device to compute
    # them while the host selects, was no faster: 2.86-3.03 s against 2.79-2.93 s for 10,000
    # CIFAR-10 queries on an AMD EPYC, WORKSPACE.md, 2026-12-05.)
    def step(q):
      b, a, err = _l2_bounds(q, rows, index.params)
      if cut is None:
        return _l2_settle(q, *_host_candidates(b, c), a, err, **common)
      cand, left_cut, left = _host_candidates(b, c, cut)
      rest = cand[:, cut:]
      later.append((rest, left, a, err))
      return _l2_settle(q, cand[:, :cut], left_cut, a, err,
                        rest_b=np.take_along_axis(np.asarray(b), rest, axis=1), **common)
  else:
    step = functools.partial(_l2_round, rows=rows, params=index.params,
                             g=_l2_groups(n, c), c=c, pixels=index.database,
                             sq_norms=index.sq_norms, k=k)
  outs = []
  for start in range(0, q_total, tile):
    outs.append(step(_padded_rows(queries[start:start + tile], tile)))
    # (Q, Q) is reported once, by search, at the very end.
    if callback is not None and len(outs) % 8 == 0 and start + tile < q_total:
      outs[-1][2].block_until_ready()
      callback(min(start + tile, q_total), q_total)
  d, i, ok = (np.concatenate([np.asarray(o[j]) for o in outs])[:q_total] for j in range(3))
  if cut is None or ok.all():
    return d, i, ok
  need = np.concatenate([np.asarray(o[3]) for o in outs])[:q_total]
  rest, left, a, err = (np.concatenate([np.asarray(t[j]) for t in later])[:q_total]
                        for j in range(4))
  todo = np.flatnonzero(~ok)
  widths = _later_widths(c - cut)
  width_of = widths[np.searchsorted(widths, np.maximum(need[todo], 1))]
  tile = min(tile, _query_tile("l2", n, len(todo), second=True))  # within a user's tile
  for narrow, wider in zip(widths[:-1], widths[1:]):
    if np.sum(width_of == narrow) < tile:  # less than a tile: not worth its compilation
      width_of[width_of == narrow] = wider
  for width in widths:
    group = todo[width_of == width]
    for start in range(0, len(group), tile):
      sel = group[start:start + tile]
      pad = lambda x: _padded_rows(x[sel], tile)  # pylint: disable=cell-var-from-loop
      dd, ii, good = _l2_settle(pad(queries), pad(rest)[:, :width], pad(left), pad(a),
                                pad(err), prev=(pad(d), pad(i)), **common)
      d[sel], i[sel], ok[sel] = (np.asarray(x)[:len(sel)] for x in (dd, ii, good))
  return d, i, ok


def _later_widths(rest: int) -> np.ndarray:
  """The candidates a staged round's second stage refines per query: 32, 64, ... below
  ``rest`` (the candidates after the first stage), and ``rest``; a query takes the
  smallest width that holds the candidates it needs, and a width that would hold less
  than a tile of queries passes them on to the next (each width is a program to compile,
  0.1-0.2 s)."""
  return np.array(sorted({min(rest, 32 << j) for j in range(max(1, rest.bit_length()))}))


@_cpu_jit
def _l2_all(q_TxD, pixels, sq_norms):
  """(T, N) exact int32 squared distances of int8 queries (centred pixels) to every row of
  the index: brute force from the index's own pixels and norms."""
  dot = distances.int8_products(q_TxD, pixels)
  return distances.int_squared_norms(q_TxD)[:, None] + sq_norms[None, :] - 2 * dot


def _l2_brute_on_host(queries, index, k, query_tile=None):
  """(exact integer distances, indices) as numpy of int8 queries (centred pixels) by brute
  force over the index's pixels, selected on the host: the k smallest (distance, index),
  the answer of any exact search. For the few queries that no round certified: 0.16 s
  for 89 CIFAR-10 queries where ``_brute_force`` took 0.22 s, part of it to prepare the
  database's tiles again (AMD EPYC, WORKSPACE.md, 2026-12-05, evening)."""
  n = index.database.shape[0]
  tile = _query_tile("l2", n, len(queries), second=True)
  tile = min(tile, query_tile) if query_tile else tile
  out_d, out_i = [], []
  for start in range(0, len(queries), tile):
    d = np.asarray(_l2_all(_padded_rows(queries[start:start + tile], tile), index.database,
                           index.sq_norms))
    pos = topk.smallest_k_host(d, k)
    out_i.append(pos)
    out_d.append(np.take_along_axis(d, pos, axis=1))
  return (np.concatenate(out_d)[:len(queries)], np.concatenate(out_i)[:len(queries)])


def _brute_force(queries, index, k):  # pylint: disable=protected-access
  """(exact integer distances, indices) as numpy, by ``jaxlin.knn``'s own brute-force
  programs (the same kernel, tiles and merge as ``knn.search``, so the same answer), with
  the database prepared once per index instead of once per call."""
  n, d = index.database.shape
  kernel = distances.kernel_for(index.metric, index.database.dtype, index.database.dtype, d)
  tile = _query_tile(index.metric, n, queries.shape[0])  # few shapes: few compilations
  platform = knn._platform(None, index.database)
  _, dt = knn._tile_sizes(index.metric, tile, n, platform=platform)
  cache = index.cache if index.cache is not None else {}
  if cache.get("tile") != dt:
    db = knn._pad_rows(index.database, dt)
    cache["prepared"] = knn._prepare(db, jnp.int32(n), kernel=kernel, tile=dt,
                                     mesh=None, layout="queries")
    cache["tile"] = dt
  tiles, aux, centre = cache["prepared"]
  q_total = queries.shape[0]
  out_d, out_i = [], []
  for start in range(0, q_total, tile):
    dd, ii = knn._search_block(_padded_rows(queries[start:start + tile], tile), tiles, aux,
                               centre, jnp.int32(n), kernel=kernel, k=k, mesh=None,
                               layout="queries")
    out_d.append(dd)
    out_i.append(ii)
  return (np.asarray(jnp.concatenate(out_d))[:q_total],
          np.asarray(jnp.concatenate(out_i))[:q_total])


def candidate_counts(metric: str, k: int, candidates=None, second_candidates=None):
  """(C, C2): L2's rows per query refined in the first and second rounds; L1's rows per
  query whose exact distances set its threshold, and 0 (see ``search``)."""
  if candidates is None:
    candidates = max(32, 2 * k) if metric == "l1" else max(160, 8 * k)
  c1 = max(k, _checks.int_at_least(candidates, "candidates", 1))
  if second_candidates is None:
    second_candidates = 2 * c1
  c2 = _checks.int_at_least(second_candidates, "second_candidates", 0)
  return (c1, 0) if metric == "l1" else (c1, c2)


L1_KEYS = ("fine_rows", "exact_rows")  # L1's stats beyond the queries by level


def count_keys(metric: str) -> tuple[str, ...]:
  """The keys of ``search``'s stats that count queries or rows (they add up across
  processes that each searched their own queries)."""
  return ("queries", "first_round", "second_round", "brute_force") + (
      L1_KEYS if metric == "l1" else ())


def empty_stats(metric: str, k: int, n: int | None = None, host: bool | None = None) -> dict:
  """``search``'s stats for no queries, with the default candidates (against ``n`` rows:
  0 for a round that cannot run, on the host's selection if ``host``, default: where the
  default device is a CPU; for L1 at most n)."""
  counts = candidate_counts(metric, k)
  if n is not None:
    host = sharding.default_platform() == "cpu" if host is None else host
    counts = ((min(counts[0], n), 0) if metric == "l1" else
              tuple(c if _round_runs(n, k, c, host) else 0 for c in counts))
  return {**{key: 0 for key in count_keys(metric)}, "candidates": list(counts)}


def search(queries_QxD, index: Index, k, *, candidates: int | None = None,
           second_candidates: int | None = None, query_tile: int | None = None,
           callback: Callable[[int, int], None] | None = None):
  """Exact k nearest database rows of every query, as ``jaxlin.knn.search`` by brute force.

  Args:
    queries_QxD: (Q, D) queries of the database's dtype (uint8 or int8).
    index: from ``build_index`` (its metric is the search's).
    k: neighbours, 1 <= k <= N.
    candidates: L2: C, rows refined exactly per query in the first round
      (default max(160, 8 k)); L1: C, rows whose exact distances set each query's
      threshold (default max(32, 2 k)); raised to k when smaller.
    second_candidates: L2: rows per query in the second round, for the queries the
      first could not certify (default 2 C); fewer than k (e.g. 0) skips the
      round. Checked, but unused by L1 (no rounds).
    query_tile: queries per compiled step (default: 128 for L2, 64 in its second
      round off the CPU; for L1 up to 1,024), fewer where their (tile, N) bounds
      (float32 for L2, int32 coarse bounds for L1) would pass 256 MB, a bound that a given tile
      keeps too (down to 8 queries; past about 8 million rows 8 queries take
      more).
    callback: called as ``callback(queries_done, Q)`` as the first round (L1: the
      tiles) goes and once at the end.

  Returns:
    (dists_QxK float32, idx_QxK int32, stats): identical to
    ``knn.search(queries, database, k, metric=index.metric)``; stats: a dict of
    ints {"queries", "first_round", "second_round", "brute_force"} (queries
    settled by each level; L1: by its cascade, or by brute force for tiles whose
    coarse bound passed too many rows) and "candidates": [C, C2], 0 for a round
    that cannot run on this index (C2 < k, or fewer than C + 1 rows, or for L2
    than the groups the round needs): its queries go on to the next level; L1
    [min(C, N), 0]. L1 adds "fine_rows" and "exact_rows": the (query, row) pairs
    whose fine bound, and whose exact distance after both bounds, were computed
    (besides the C exact distances per query that set its threshold).
  """
  if not isinstance(index, Index):
    raise InputError(f"index must be an Index from bounds.build_index, got "
                     f"{type(index).__name__}", argument="index")
  if index.metric not in METRICS or ("coarse_table" in index.params) != (index.metric == "l1"):
    raise InputError(f"index holds bounds of another metric than its metric {index.metric!r} "
                     "says (an Index changed after build_index?); build it again with "
                     "bounds.build_index(database, metric=...)", argument="index")
  n, d = index.database.shape
  _checks.outside_jit("bounds.search (its levels run on the host)", "queries_QxD", queries_QxD)
  knn.not_an_index(queries_QxD, "queries_QxD")
  q = np.asarray(queries_QxD)  # on the host: rounds take tiles and subsets of it
  if q.ndim != 2 or q.shape[1] != d:
    fix = (_checks.rows_fix(q.shape) if q.ndim != 2 or q.size == q.shape[0] * d
           else f"the index's rows have {d}")
    raise InputError(f"queries_QxD must be 2-D (queries, features) with the index's {d} "
                     f"features, got shape {q.shape}; {fix}", argument="queries_QxD")
  if q.dtype != jnp.dtype(index.dtype):
    raise InputError(f"queries_QxD must be {index.dtype}, the dtype of the index's database, "
                     f"got {q.dtype}; convert them, e.g. np.asarray(queries, np.{index.dtype}), "
                     f"if their values fit", argument="queries_QxD")
  k = _checks.concrete_int(k, "k")
  if not 1 <= k <= n:
    raise InputError(f"k must be an integer in [1, {n}] (the database size), got {k}",
                     argument="k")
  c1, c2 = candidate_counts(index.metric, k, candidates, second_candidates)
  if query_tile is not None:
    query_tile = _checks.int_at_least(query_tile, "query_tile", 1)
  _checks.callback(callback, "callback(queries_done, total)")
  d, i, stats = _search_ints(q, index, k, c1, c2, query_tile, callback)
  return jnp.asarray(_to_float_distances(d, index.metric)), jnp.asarray(i), stats


def _search_ints(q, index: Index, k: int, c1: int, c2: int, query_tile, callback):
  """``search`` on checked arguments (q a host array): (exact integer distances (squared
  for L2), indices, stats) as numpy."""
  n = index.database.shape[0]
  q_total = q.shape[0]
  stats = {**empty_stats(index.metric, k), "queries": q_total, "candidates": [c1, c2]}
  if index.metric == "l1":
    c0 = min(c1, n)
    stats["candidates"] = [c0, 0]
    if not q_total:
      return np.zeros((0, k), np.int32), np.zeros((0, k), np.int32), stats
    tile = _query_tile("l1", n, q_total)  # a user's tile, too, within its memory bound
    tile = min(query_tile, tile) if query_tile else tile
    d, i, counts = _l1_search(q, index, k, c0, tile, callback)
    if callback is not None:
      callback(q_total, q_total)
    return d, i, {**stats, "first_round": q_total - int(counts[2]),
                  "brute_force": int(counts[2]), **dict(zip(L1_KEYS, map(int, counts[:2])))}
  host = _host_selects(index)
  where = next(iter(index.database.devices())).platform
  if index.bound_rows.dtype == jnp.bfloat16 and where != "cpu":
    raise InputError(f"index has bfloat16 bounds, which hold on a CPU only, and lives on a "
                     f"{where} device: build it there (bounds.build_index with the default "
                     "bound_dtype, or 'float32')", argument="index")
  d_out = np.zeros((q_total, k), np.int32)
  i_out = np.zeros((q_total, k), np.int32)
  todo = np.arange(q_total)
  def round_tile(count: int, second: bool) -> int:  # a user's tile, within its memory bound
    if query_tile:
      return min(query_tile, _memory_tile(n), 1 << max(0, count - 1).bit_length())
    return _query_tile(index.metric, n, count, second)

  # Both rounds take the first round's tile on a CPU, where the second then runs the
  # first's compiled bounds (0.2-0.3 s of compilation for each new tile, AMD EPYC,
  # WORKSPACE.md, 2026-12-05, night); its few queries are padded.
  first_tile = round_tile(q_total, False)
  for j, (level, c) in enumerate((("first_round", c1), ("second_round", c2))):
    if not _round_runs(n, k, c, host):
      stats["candidates"][j] = 0  # the round cannot run on this index (too few rows)
      continue
    if not len(todo):
      continue
    sub = q[todo]
    tile = first_tile if level == "first_round" or host else round_tile(len(todo), True)
    progress = callback if level == "first_round" and len(todo) == q_total else None
    dd, ii, ok = _run_round(sub, index, k, c, tile, callback=progress,
                            staged=level == "first_round")
    d_out[todo[ok]], i_out[todo[ok]] = dd[ok], ii[ok]
    stats[level] = int(ok.sum())
    todo = todo[~ok]
  if len(todo):
    sub = q[todo]
    if index.metric != "l1":  # the index holds int8 pixels: the same distances
      sub = np.asarray(distances.centred_pixels(sub))
    dd, ii = (_l2_brute_on_host(sub, index, k, query_tile) if host else
              _brute_force(sub, index, k))
    stats["brute_force"] = len(todo)
    d_out[todo], i_out[todo] = dd, ii
  if callback is not None:
    callback(q_total, q_total)
  return d_out, i_out, stats


def _index_on(index: Index, device) -> Index:
  """A copy of ``index`` whose arrays live on ``device`` (its brute-force cache empty)."""
  return index._replace(database=jax.device_put(index.database, device),
                        sq_norms=jax.device_put(index.sq_norms, device),
                        bound_rows=jax.device_put(index.bound_rows, device),
                        params=jax.device_put(index.params, device), cache={})


def _device_rows(database, n: int, device, lo: int, hi: int) -> np.ndarray:
  """Rows [lo, hi) of the database as host data on ``device``'s process: from ``device``'s
  own shard when the database is a global array laid along the mesh by
  ``jaxlin.sharding.rows_to_global`` (its other rows may live on other processes), else
  sliced from the whole array."""
  if isinstance(database, jax.Array):
    for shard in database.addressable_shards:
      start, stop, _ = shard.index[0].indices(database.shape[0])
      if shard.device == device and start <= lo and min(hi, n) <= stop:
        return np.asarray(shard.data)[lo - start:hi - start]
    if not database.is_fully_addressable:
      raise InputError("database_NxD spans processes but is not laid along the mesh's "
                       "devices in order; lay it with jaxlin.sharding.rows_to_global",
                       argument="database_NxD")
  return np.asarray(database)[lo:hi]


def _mesh_search(queries_QxD, database_NxD, k: int, *, metric: str, mesh, layout: str,
                 num_database: int, image_shape=None, query_tile=None, callback=None):
  """The cascade on every device of a mesh: ``jaxlin.knn.search``'s ``method="pruned"``
  with a ``mesh`` (arguments checked there; k <= N = ``num_database``, the real rows).

  layout "database": device j builds the index of rows [j r, (j + 1) r), r = ceil(N /
  devices) (as ``jaxlin.sharding.rows_to_global`` lays them; a laid global array may span
  processes, each reading its own devices' rows), and searches all queries in them; the
  devices' k best are merged by (exact distance, global index), so the answer is the
  one-device answer, ties included. layout "queries": each process builds the index once
  and copies it to its devices, and device j searches the j-th block of queries. Each of a
  process's devices runs in its own thread (JAX releases the interpreter while a device
  computes). Across processes (queries the same on every process, as ``search`` needs
  there) the devices' results are summed into every process, which then merges them
  alike.

  Returns (float distances, indices, stats) as ``search``; stats sums the devices'
  counts (layout "database": every query is searched once per device that holds rows;
  a device without rows counts 0), lists them in
  "per_device", and gives the first device's "candidates" (the one with the most rows).
  """
  devices = list(mesh.devices.flat)
  ndev = len(devices)
  mine = [j for j, dev in enumerate(devices) if dev.process_index == jax.process_index()]
  across = len({dev.process_index for dev in devices}) > 1  # the same on every process
  if not mine:
    raise InputError(f"mesh has none of this process's devices (process "
                     f"{jax.process_index()}): search on a mesh that holds some of them",
                     argument="mesh")
  if isinstance(queries_QxD, jax.Array) and not queries_QxD.is_fully_addressable:
    raise InputError("queries_QxD spans processes; on a mesh across processes pass the "
                     "queries as host data, the same on every process", argument="queries_QxD")
  q = np.asarray(queries_QxD)
  n, q_total = num_database, q.shape[0]
  if layout == "database":
    rows = -(-n // ndev)
    spans = [(j * rows, min(n, (j + 1) * rows)) for j in range(ndev)]
    blocks = [(0, q_total)] * ndev
  else:
    block = -(-q_total // ndev)
    spans = [(0, n)] * ndev
    blocks = [(min(q_total, j * block), min(q_total, (j + 1) * block)) for j in range(ndev)]
  width = max(hi - lo for lo, hi in blocks) if blocks else 0
  if layout == "queries" and isinstance(database_NxD, jax.Array) and not (
      database_NxD.is_fully_addressable or database_NxD.sharding.is_fully_replicated):
    raise InputError("with layout='queries' every process needs the whole database_NxD, but "
                     "it is split across processes; pass it as host data, or use "
                     "layout='database'", argument="database_NxD")
  # Every device's (width, k) answer and its counts; zeros for other processes' devices.
  d_all = np.zeros((ndev, width, k), np.int32)
  i_all = np.zeros((ndev, width, k), np.int32)
  keys = count_keys(metric)
  counts = np.zeros((ndev, len(keys) + 2), np.int64)
  errors: list = []
  full = None  # layout "queries": one index per process, copied to its devices
  if layout == "queries" and q_total:
    try:
      with jax.default_device(devices[mine[0]]):
        full = build_index(_device_rows(database_NxD, n, devices[mine[0]], 0, n),
                           metric=metric, image_shape=image_shape)
    except BaseException as e:  # pylint: disable=broad-exception-caught  # raised below
      errors.append(e)

  def work(j):
    lo, hi = spans[j]
    q_j = q[blocks[j][0]:blocks[j][1]]
    try:
      with jax.default_device(devices[j]):
        size = max(0, hi - lo)
        kj = min(k, size)
        d = np.full((len(q_j), k), topk.INT_WORST, np.int32)
        i = np.full((len(q_j), k), -1, np.int32)
        st = empty_stats(metric, k, size, host=devices[j].platform == "cpu")
        if kj and len(q_j):
          if layout == "queries":
            index = full if j == mine[0] else _index_on(full, devices[j])
          else:
            index = build_index(_device_rows(database_NxD, n, devices[j], lo, hi),
                                metric=metric, image_shape=image_shape)
          c1, c2 = candidate_counts(metric, kj)
          dj, ij, st = _search_ints(q_j, index, kj, c1, c2, query_tile, None)
          d[:, :kj], i[:, :kj] = dj, ij + lo
        d_all[j, :len(q_j)], i_all[j, :len(q_j)] = d, i
        counts[j] = [st[key] for key in keys] + list(st["candidates"])
    except BaseException as e:  # pylint: disable=broad-exception-caught  # re-raised below
      errors.append(e)

  threads = [] if errors else [threading.Thread(target=work, args=(j,), daemon=True)
                               for j in mine]
  for t in threads:
    t.start()
  try:
    for done, t in enumerate(threads, 1):
      t.join()
      if callback is not None and not errors and done < len(mine) and q_total:
        callback(q_total * done // len(mine), q_total)
  except BaseException as e:  # pylint: disable=broad-exception-caught  # re-raised below
    errors.insert(0, e)  # the caller's callback: its error first
  finally:  # a callback that raises: no device left computing behind the caller's back
    for t in threads:
      t.join()
  if across:
    # Every process takes part in this exchange, failed or not (one that left it would
    # leave the others waiting), and learns whether all succeeded on the same queries.
    status = sharding.process_stack(np.array([bool(errors), zlib.crc32(
        np.ascontiguousarray(q).tobytes() + repr(q.shape).encode()) & 0x7FFFFFFF, q_total]))
    if status[:, 0].any() and not errors:
      raise RuntimeError(f"the pruned search failed on process(es) "
                         f"{', '.join(map(str, np.flatnonzero(status[:, 0])))}; see its error")
    if not errors and (status[:, 1:] != status[0, 1:]).any():
      raise InputError("queries_QxD differs between processes; on a mesh across processes "
                       "every process passes the same queries", argument="queries_QxD")
  if errors:
    raise errors[0]
  if layout == "database":  # every device's k best: merged by (d, index), per process first
    d, i = _merged(d_all[mine, :q_total], i_all[mine, :q_total], k)
    if across:
      d, i = _merged(sharding.process_stack(d), sharding.process_stack(i), k)
  else:  # each device's block of queries; other processes' blocks are zeros here
    if across:
      d_all, i_all = sharding.process_sum(d_all), sharding.process_sum(i_all)
    d = np.concatenate([d_all[j, :hi - lo] for j, (lo, hi) in enumerate(blocks)])
    i = np.concatenate([i_all[j, :hi - lo] for j, (lo, hi) in enumerate(blocks)])
  if across:
    counts = sharding.process_sum(counts)
  per_device = [{**{key: int(c[x]) for x, key in enumerate(keys)},
                 "candidates": [int(c[-2]), int(c[-1])]} for c in counts]
  stats = {**empty_stats(metric, k),
           **{key: sum(st[key] for st in per_device) for key in keys},
           "candidates": per_device[0]["candidates"], "per_device": per_device}
  if callback is not None:
    callback(q_total, q_total)
  return jnp.asarray(_to_float_distances(d, metric)), jnp.asarray(i), stats


def _merged(d_PxQxK, i_PxQxK, k: int):
  """The k best of several (Q, k) answers by (exact distance, index): (Q, k) each."""
  d_cat = np.concatenate(list(d_PxQxK), axis=1)
  i_cat = np.concatenate(list(i_PxQxK), axis=1)
  order = np.lexsort((i_cat, d_cat), axis=1)[:, :k]
  return np.take_along_axis(d_cat, order, 1), np.take_along_axis(i_cat, order, 1)


def _to_float_distances(d_int, metric: str):
  """Exact integer distances (squared for L2) as ``knn.search`` returns them, by brute
  force's own program (``distances.returned_distances``: float32, the square root for
  "l2") on the default device, where the cascade runs: they round as brute force's do
  on that device."""
  return distances.returned_distances(jnp.asarray(np.asarray(d_int, np.int32)), metric)
