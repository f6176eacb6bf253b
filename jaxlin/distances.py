"""Pairwise distances between two sets of vectors, and the kernels search runs.

Two forms of every metric:

* ``pairwise_distances_reference`` -- the definition, written as a doubly
  vmapped function of two vectors. Slow and obviously correct; tests compare
  against it.
* ``pairwise_distances`` -- ONE tile of what ``jaxlin.knn.search`` runs: the
  same kernel prepares the database, transforms the queries and computes the
  tile, so a test of it is a test of search's arithmetic.

The kernels (``kernel_for`` picks one from the metric and the two dtypes):

=========  ======================  ============================================
kernel     inputs                  distance of a tile
=========  ======================  ============================================
l1_int     both integer            sum_d |x_d - y_d|, exact int32 (int16 partial
                                   sums over 128 features for uint8 / int8)
l1_float   any float               sum_d |x_d - y_d| in float32 (float64 inputs:
                                   float64)
l2_int8    both uint8 / both int8  |x|^2 + |y|^2 - 2 x.y, exact: int8 product
           with D * 255**2 < 2**30 accumulated in int32 on CPUs, exact float32
           (D <= 16,512)           products of 1,024-feature blocks elsewhere
                                   (``int8_products``; uint8 shifted by -128);
                                   74 x 74 x 3 images at most
l2_float   other (pixels with      the same identity on rows centred among the
           more features too)
                                   database's rows (``_centre``), ``precision=HIGHEST``,
                                   clamped at 0
cosine     any                     1 - x.y / (|x| |y|) (1 for a zero vector),
                                   clamped at 0; rounded as floats, so rows
                                   within about 1e-6 of one direction (a
                                   row and its duplicate) may tie or swap
=========  ======================  ============================================

Integer kernels compute int32 distances (search compares them exactly, see
``jaxlin.topk``) and return them as float32, as ``pairwise_distances`` and
``knn.search`` do; float kernels compute in float32, or float64 when an input
is float64 or, under ``jax_enable_x64``, a 32- or 64-bit integer. Inputs are
cast before any arithmetic. Integers ``l2_float`` casts must be exact in that
float (up to 2**24 in float32, 2**53 in float64), else InputError: the
identity cancels, so rounded rows could all tie (cosine and L1 beside floats
round them relatively, as floats). Integer rows in
``l2_float``, and float databases that hold only whole numbers, are centred
on an integer, so their distances are exact (ties included) while every
squared norm and product sum stays below 2**24 (float32) or 2**53 (float64).
Float64 numpy arrays that JAX would round to float32 (without
``jax_enable_x64``) are centred among the database's rows in float64
first, for L1 and L2, in eager calls with numpy inputs (``checked_inputs``'s
``centre_wide``): a common offset large against the rows' spread (e.g.
features near 1e7) then keeps their differences. Under ``jax.jit``, or beside
a jax array, the inputs reach jaxlin already rounded: centre them first.
Shapes: ``x_QxD`` queries, ``y_NxD`` database, result ``(Q, N)``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import _checks, native, topk
from jaxlin.errors import InputError

__all__ = [
    "KERNELS", "METRICS", "Kernel", "as_float", "centred_pixels", "checked_inputs",
    "cpu_has_amx", "cpu_has_bf16", "int8_products", "int_squared_norms", "kernel_for",
    "l1_transposed", "l2_squared_from_dot", "l2_squared_pixels", "pairwise_distances",
    "pairwise_distances_reference", "returned_distances", "to_distances",
]

METRICS = ("l1", "l2", "l2_squared", "cosine")
_HIGHEST = jax.lax.Precision.HIGHEST
_INT_LIMIT = 1 << 30  # integer distances stay below this (jaxlin.topk.INT_WORST)


# --------------------------------------------------------------------------
# Input checks (shared with jaxlin.knn).
# --------------------------------------------------------------------------
def _check_metric(metric) -> str:
  if metric not in METRICS:
    raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}",
                     argument="metric")
  return metric


def checked_inputs(x_QxD, y_NxD, metric: str, *, names=("x_QxD", "y_NxD"),
                   centre_wide: bool = False):
  """(x, y, kernel): both inputs as arrays, checked, and the kernel that serves them.

  centre_wide: where both inputs are host arrays (numpy, not jax), at least one
  of them float64 that JAX rounds to float32 (no ``jax_enable_x64``), and the
  metric is L1 or L2, x and y are returned less y's centre (``_centre``), computed in
  float64 and rounded once (an integer mean where y holds only whole numbers):
  the distances are unchanged, and a common offset large against the rows'
  spread (e.g. values near 1e7, where float32's spacing is 1) keeps their
  differences. Not for a y with padding rows (a database laid along a mesh).

  Raises InputError naming the argument (``names``) for: an unknown metric,
  arrays that are not 2-D, different feature sizes, non-numeric dtypes, NaN or
  inf in a float input, and integers whose L1 distances could reach 2**30.
  Value checks are skipped for traced inputs.
  """
  _check_metric(metric)
  arrays, checked = [], []  # checked: the arrays as given (numpy ones checked on the host)
  for a, name in zip((x_QxD, y_NxD), names):
    if not isinstance(a, jax.Array):
      a = _checks.host_array(a, name)
    checked.append(a)
    a = jnp.asarray(a)
    if a.ndim != 2:
      raise InputError(f"{name} must be 2-D (rows, features), got shape {a.shape}; "
                       f"{_checks.rows_fix(a.shape)}", argument=name)
    if not (is_integer(a) or jnp.issubdtype(a.dtype, jnp.floating)):
      raise InputError(f"{name} must hold integers or real floats, got {a.dtype}", argument=name)
    arrays.append(a)
  x, y = arrays
  if x.shape[1] == 0:
    raise InputError(f"{names[0]} has no features (shape {x.shape}): distances need D >= 1",
                     argument=names[0])
  if x.shape[1] != y.shape[1]:
    raise InputError(f"feature sizes differ: {names[0]} has shape {x.shape}, {names[1]} has "
                     f"{y.shape}; both need the same D", argument=names[0])
  kernel = kernel_for(metric, x.dtype, y.dtype, x.shape[1])
  big = [_checks.finite(a, name) for a, name in zip(checked, names)]  # largest |value|
  if kernel.name == "l1_int":
    _check_l1_int_range(x, y, names)
  elif kernel.name == "l2_float":  # integers cast to floats: exact (the identity cancels)
    fix = ("L2 is unchanged by one shift of both inputs: subtract a reference value (e.g. "
           "the database's column minimum) from both, or enable jax_enable_x64 (32- and "
           "64-bit integers are then computed in float64)")
    big = [max(b, _checks.exact_ints(a, name, kernel.float_dtype, fix))
           for b, a, name in zip(big, checked, names)]
  if kernel.name in ("l1_float", "l2_float"):
    _check_float_range(big, x.shape[1], kernel, names, checked)
    if centre_wide and metric != "cosine" and any(map(_checks.narrowed, checked)) and not any(
        isinstance(a, jax.Array) for a in checked):
      x, y = _centred_on_host(checked[0], checked[1])
  return x, y, kernel


def _centred_on_host(x, y):
  """Host rows x and y less y's centre (``_centre``), in float64 and rounded once to JAX's
  float (both distances are unchanged by one shift of both inputs). Rounding the rows
  first would round away differences small against a common offset: float32 keeps 24 bits,
  so rows near 1e7 would differ by whole numbers only. A database of whole numbers keeps a
  whole centre (exact ties, as in ``_l2_float_prepare``)."""
  y64 = np.asarray(y, np.float64)
  whole = bool(np.all(y64 == np.rint(y64)))
  centre = _centre(y64, len(y64), np, whole) if len(y64) else np.zeros(y64.shape[1])
  if whole:
    centre = np.rint(centre)
  out = []
  for a in (x, y64):
    c = np.empty(a.shape, jax.dtypes.canonicalize_dtype(np.float64))
    np.subtract(a, centre, out=c, casting="same_kind")  # computed wide, rounded once
    out.append(jnp.asarray(c))
  return out


def _centre(db_NxD, n_valid, xp, whole=False, limit: float = 2.0 ** 24):
  """The centre that float L2 subtracts from every row (numpy or jax.numpy ``xp``): the
  mean of the ``n_valid`` real rows, or, where it is better, the mean of the half of them
  nearest to it. The other rows are padding: rows of zeros, wherever they lie.

  The identity |x|^2 + |y|^2 - 2 x.y rounds relative to the centred rows' squared norms.
  One row far off (an unscaled or corrupt record) moves the mean by its offset / N and
  every other row's centred norm with it: one row at 1e7 among 1,000 of N(0, 1) moved it
  by 1e4, and every query's neighbours came out shuffled in float32. The nearer half's
  mean stays among the bulk of the rows, but between two clusters it sits in one and
  doubles the other's distances. So it is taken only where n - n // 10 of the n real rows
  lie nearer to it than as many do to the mean (never below 10 rows). For ``whole``
  (integer-valued) rows the mean stays where every row's squared norm about it is below
  half of ``limit`` (2**24 for float32: pairs of such rows, and queries as near, are
  exact), and elsewhere the nearer half's mean must leave no fewer such rows.
  """
  dtype = db_NxD.dtype
  n_rows = db_NxD.shape[0]
  pad = n_rows - n_valid  # padding rows: zeros, at |c|^2 from any centre c
  zero = xp.all(db_NxD == 0, axis=1)

  def squares(c):  # every row's squared distance to c; rows of zeros exactly |c|^2
    c0 = xp.sum(c * c)
    return xp.where(zero, c0, xp.sum((db_NxD - c) ** 2, axis=1)), c0

  mean = xp.sum(db_NxD, axis=0) / xp.asarray(n_valid).astype(dtype)  # padding adds 0
  r, r0 = squares(mean)
  s = xp.sort(r)
  below, at = xp.sum(r < r0), xp.sum(r == r0) - pad  # real rows below, and at, r0

  def kth(k):  # the k-th smallest r (k from 1) of the real rows: s without the padding's r0s
    pick = lambda i: s[xp.clip(i, 0, n_rows - 1)]
    return xp.where(k <= below, pick(k - 1), xp.where(k <= below + at, r0, pick(k - 1 + pad)))

  # The median real row's r, and that of n - n // 10 of them (under 10 rows: all).
  half, most = kth((n_valid + 1) // 2), n_valid - n_valid // 10
  near = r <= half  # padding rows join where 0 is that near: zeros in the sum
  count = xp.sum(near) - xp.where(r0 <= half, pad, 0)
  nearer = xp.sum(xp.where(near[:, None], db_NxD, 0), axis=0) / xp.maximum(count, 1).astype(
      dtype)
  r_near, r_near0 = squares(nearer)
  radius = kth(most)
  closer = xp.sum(r_near < radius) - xp.where(r_near0 < radius, pad, 0)
  # Whole numbers: pairs of rows whose |x|^2 + |y|^2 and 2 x.y stay below the limit are
  # exact (2 r < limit for both). Where every row is that near the mean, the mean stays
  # (queries as near it are exact too, which they need not be about another centre);
  # else the nearer half's mean must not leave fewer such rows.
  exact = lambda rr, rr0: xp.sum(2 * rr < limit) - xp.where(2 * rr0 < limit, pad, 0)
  keep = (2 * kth(n_valid) < limit) | (exact(r_near, r_near0) < exact(r, r0))
  better = (closer >= most) & ~(whole & keep)
  return xp.where(better, nearer, mean)


def float_limit(kernel, d: int) -> float | None:
  """The largest absolute input value whose distances over ``d`` features stay finite in a
  float L1 or L2 kernel (see ``_check_float_range``); None for other kernels."""
  if kernel.name not in ("l1_float", "l2_float"):
    return None
  big = float(jnp.finfo(kernel.float_dtype).max)
  return (big / (16 * d)) ** 0.5 if kernel.name == "l2_float" else big / (4 * d)


def _check_float_range(big, d, kernel, names, arrays):
  """InputError unless every distance of float rows with largest absolute values ``big``
  stays finite in the kernel's dtype: L2 works on centred rows (entries up to 2 M for
  inputs up to M) through |q|^2 + |d|^2 - 2 q.d, so 16 D M^2 must be finite; L1 sums D
  differences up to 2 M.

  L2 also needs the centred rows' squares above the smallest normal float (``tiny``),
  else they flush to 0 and every row ties. Rows whose values vary by less than
  sqrt(tiny) * 256 (2.8e-17 in float32; relative errors then stay near 1e-4) are refused.
  Only small inputs are scanned for their spread: where M is 2**24 times larger, the
  identity's rounding (eps M^2) already hides such differences, as documented."""
  info = jnp.finfo(kernel.float_dtype)
  limit = float_limit(kernel, d)
  name = names[0] if big[0] >= big[1] else names[1]
  if max(big) > limit:
    raise InputError(f"{name} holds values up to {max(big):.3g}: its {kernel.float_dtype} "
                     f"distances over {d} features would overflow (limit {limit:.3g}); scale "
                     "the inputs, e.g. divide both by their largest absolute value",
                     argument=name)
  low = float(info.tiny) ** 0.5 * 256
  if kernel.name != "l2_float" or max(big) >= low * 2.0 ** 24 or any(
      _checks.is_traced(a) for a in arrays) or all(is_integer(a) for a in arrays):
    return  # integers vary by 0 or at least 1
  rows = [np.asarray(a, np.float64).reshape(-1, d) for a in arrays if a.size]
  if not rows:
    return
  highest = np.max([r.max(0) for r in rows], axis=0)  # per feature, over both inputs
  spread = float(np.max(highest - np.min([r.min(0) for r in rows], axis=0)))
  if 0 < spread < low:
    who = names[0] if names[0] == names[1] else f"{names[0]} and {names[1]}"
    raise InputError(f"{who} vary by at most {spread:.3g} in any feature: their "
                     f"{kernel.float_dtype} squared distances would underflow toward 0 (limit "
                     f"{low:.3g}); scale both inputs up, e.g. divide them by their largest "
                     "difference, or pass float64 with jax_enable_x64", argument=name)


def _check_l1_int_range(x, y, names):
  """Integer L1 accumulates in int32: D * (max - min) must stay below 2**30."""
  d = x.shape[1]
  if same_small_int(x, y):
    span = 255
  elif _checks.is_traced(x) or _checks.is_traced(y) or x.size == 0 or y.size == 0:
    return
  else:
    lo = min(int(jnp.min(x)), int(jnp.min(y)))
    hi = max(int(jnp.max(x)), int(jnp.max(y)))
    span = hi - lo
  if d * span >= _INT_LIMIT:
    raise InputError(f"integer L1 distances of {names[0]} and {names[1]} could reach "
                     f"{d} * {span} >= 2**30 (int32 accumulation); pass float arrays instead",
                     argument=names[1])


def l1_int_may_overflow(x_QxD, lowest, highest):
  """Whether the int32 L1 sums of rows of x against rows with values in [lowest, highest]
  could reach 2**30 (``_check_l1_int_range``'s bound, D * the span, per row; ``lowest`` and
  ``highest`` broadcast against the rows' own, e.g. (1, N) for pairs): for traced inputs,
  which that check cannot refuse, the rows whose answers cannot be trusted. Exact: the
  span hi - lo >= 0 taken in the unsigned type of the inputs' width, compared with
  ceil(2**30 / D)."""
  d = x_QxD.shape[1]
  arrays = [a.astype(jnp.uint8) if a.dtype == jnp.bool_ else a
            for a in (x_QxD, jnp.asarray(lowest), jnp.asarray(highest))]
  dtype = jnp.result_type(*arrays)  # as the kernel's arithmetic promotes them
  unsigned = jnp.dtype(f"uint{jnp.iinfo(dtype).bits}")
  need = -(-_INT_LIMIT // d)
  x, low, high = (a.astype(dtype) for a in arrays)
  if need > jnp.iinfo(unsigned).max:  # no span of this dtype reaches it
    return jnp.zeros((x.shape[0],) + jnp.broadcast_shapes(low.shape, high.shape)[1:], bool)
  lo = jnp.minimum(jnp.min(x, axis=1)[:, None], low)
  hi = jnp.maximum(jnp.max(x, axis=1)[:, None], high)
  return hi.astype(unsigned) - lo.astype(unsigned) >= jnp.asarray(need, unsigned)


# --------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------
def is_integer(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_


def as_float(x):
  """x as float32 or wider (uint8 pixels are cast before any arithmetic)."""
  x = jnp.asarray(x)
  if is_integer(x):
    return x.astype(jnp.float32)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _float_dtype(*dtypes) -> str:
  """The float dtype of the arithmetic: float64 if an input is float64 or, under
  jax_enable_x64, a 32- or 64-bit integer; else float32 (``_checks.float_for``)."""
  return _checks.float_for(*dtypes)


def same_small_int(x, y) -> bool:
  """Both uint8 or both int8: |a - b| <= 255, so 128 terms fit an int16
  accumulator, and both shift to [-128, 127] the same way."""
  return x.dtype == y.dtype and x.dtype in (jnp.uint8, jnp.int8)


# --------------------------------------------------------------------------
# Reference: the definition, one pair at a time, vmapped over both sets.
# --------------------------------------------------------------------------
def _one_pair(a, b, metric):
  a = a.astype(_float_dtype(a.dtype, b.dtype))
  b = b.astype(a.dtype)
  if metric == "l1":
    return jnp.sum(jnp.abs(a - b))
  if metric == "l2_squared":
    return jnp.sum((a - b) ** 2)
  if metric == "l2":
    return jnp.sqrt(jnp.sum((a - b) ** 2))
  # cosine distance = 1 - cos(angle); a zero vector has distance 1 to anything.
  na, nb = jnp.linalg.norm(a), jnp.linalg.norm(b)
  denom = jnp.where(na * nb > 0, na * nb, 1.0)
  return 1.0 - jnp.sum(a * b) / denom


def pairwise_distances_reference(x_QxD, y_NxD, *, metric: str):
  """Distances by their definition: vmap over queries of vmap over database."""
  x_QxD, y_NxD, _ = checked_inputs(x_QxD, y_NxD, metric, centre_wide=True)
  row = jax.vmap(lambda a, b: _one_pair(a, b, metric), in_axes=(None, 0))
  return jax.vmap(row, in_axes=(0, None))(x_QxD, y_NxD)


# --------------------------------------------------------------------------
# Building blocks of the kernels.
# --------------------------------------------------------------------------
def l2_squared_from_dot(x_QxD, y_NxD, x_sq_Q, y_sq_N):
  """|x|^2 + |y|^2 - 2 x.y with a full-precision matmul, clamped at 0."""
  dot = jnp.matmul(x_QxD, y_NxD.T, precision=_HIGHEST)
  return jnp.maximum(x_sq_Q[:, None] + y_sq_N[None, :] - 2.0 * dot, 0.0)


def centred_pixels(x):
  """uint8 / int8 pixels as int8 in [-128, 127] (uint8 shifted by -128, exactly)."""
  return _centred_pixels(jnp.asarray(x))


@jax.jit  # one program (inlined under a caller's jit)
def _centred_pixels(x):
  if x.dtype == jnp.uint8:
    return (x.astype(jnp.int16) - 128).astype(jnp.int8)
  return x.astype(jnp.int8)


def int_squared_norms(x_NxD):
  """Exact int32 squared norms of integer-valued rows: the sum of squares (int8 / uint8
  rows by float32 column blocks, ``_exact_square_sums``).

  Raises InputError for floats (they would be truncated) and, where x_NxD is concrete,
  for values whose squares could add up beyond int32."""
  x = jnp.asarray(_checks.jax_exact(x_NxD, "x_NxD"))
  if not is_integer(x):
    raise InputError(f"x_NxD must hold integers (exact int32 norms), got {x.dtype}; for "
                     "floats use jnp.sum(x * x, axis=1)", argument="x_NxD")
  if x.ndim == 2 and x.size and not _checks.is_traced(x) and x.dtype not in (jnp.int8,
                                                                             jnp.uint8):
    lo, hi = _checks.value_range(x)
    if x.shape[1] * max(lo * lo, hi * hi) >= 1 << 31:
      raise InputError(f"x_NxD's values in [{lo}, {hi}] over {x.shape[1]} features could "
                       "square-sum beyond int32; pass them as floats", argument="x_NxD")
  return _norms_by_sum(x)


def _norms_by_sum(x_NxD):
  if x_NxD.ndim != 2:
    raise InputError(f"x_NxD must be 2-D rows, got shape {x_NxD.shape}", argument="x_NxD")
  if x_NxD.dtype in (jnp.int8, jnp.uint8):
    return _exact_square_sums(x_NxD, 128 if x_NxD.dtype == jnp.int8 else 255)
  x = x_NxD.astype(jnp.int32)
  return jnp.sum(x * x, axis=1, dtype=jnp.int32)


def _exact_square_sums(x_NxD, max_abs: int):
  """(N,) exact int32 sums of squares of integer-valued rows (N, D) with every |x| <=
  ``max_abs`` (at most 4096, and D max_abs**2 below 2**31).

  float32 sums over column blocks whose every partial sum is an integer of at most 2**24
  (float32 holds each exactly, whatever the order of summation), then int32 sums of the
  blocks' totals. XLA's CPU reduces a row of float32 far faster than of int32: the 50,000
  CIFAR-10 rows of int8 pixels took 0.036 s against 0.205 s (AMD EPYC, WORKSPACE.md,
  2026-12-05). The blocks are a loop over column slices (one compilation whatever D): a
  reshape into (N, blocks, width) reduced over its last axis took 0.2 s, as slow as the
  int32 sum, and slices unrolled in Python compiled 40 ms each.
  """
  if not 1 <= max_abs <= 4096:
    raise ValueError(f"max_abs must be in [1, 4096], got {max_abs}")
  n, d = x_NxD.shape
  total = jnp.zeros((n,), jnp.int32)
  if d == 0:
    return total
  width = min(d, (1 << 24) // (max_abs * max_abs))  # every partial sum of a block <= 2**24

  def block_sum(block):
    block = block.astype(jnp.float32)
    return jnp.sum(block * block, axis=1).astype(jnp.int32)

  total = jax.lax.fori_loop(0, d // width, lambda i, t: t + block_sum(
      jax.lax.dynamic_slice_in_dim(x_NxD, i * width, width, axis=1)), total)
  if d % width:  # the last, narrower block
    total = total + block_sum(x_NxD[:, d - d % width:])
  return total


@functools.lru_cache(maxsize=None)
def _cpu_flags(cpuinfo: str) -> set:
  """The flags of the first CPU in Linux's CPU description; empty when it cannot be read."""
  try:
    with open(cpuinfo, encoding="ascii", errors="replace") as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.split(":", 1)[-1].split())
  except OSError:
    pass
  return set()


def cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
  """Whether the CPU lists Intel's AMX int8 instructions (the ``amx_int8`` flag in Linux's
  CPU description); False when it cannot be read."""
  return "amx_int8" in _cpu_flags(cpuinfo)


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
  """Whether the CPU lists bfloat16 dot-product instructions (``avx512_bf16``, or Intel
  AMX's ``amx_bf16``), with which XLA's CPU products of bfloat16 run about twice as fast
  as float32 (an AMD EPYC, Zen 4: 353 against 174 GOP/s, benchmarks/matmul_speed.py);
  without them bfloat16 is converted to float32 first. False when it cannot be read."""
  return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags(cpuinfo))


# Features per float32 block of int8_products off the CPU: every partial sum of a block is an
# integer of magnitude at most 1024 * 128**2 = 2**24, and float32 holds every such integer.
_FLOAT32_EXACT_FEATURES = 1024


def int8_products(x_AxD, y_BxD):
  """Exact int32 products x . y^T of two sets of int8 rows: (A, B).

  Pixels go in centred (``centred_pixels``: uint8 shifted by -128 into int8), so every
  product is at most 128**2 = 2**14 in magnitude.

  On a CPU, an int8 matrix product accumulated in int32 (several times faster than
  float32 on CPUs with int8 matrix instructions): on x86-64 CPUs with AVX-512 VNNI and
  no AMX, jaxlin's own kernel (``jaxlin.native``: 1.9-3.1x XLA's int8 product on an AMD
  EPYC, Zen 4, on the shapes measured) for products of at least ``native.MIN_ROWS`` rows
  on each side, else XLA's. On other devices (GPU, TPU), float32
  products (``precision=HIGHEST``) of blocks of at most 1,024 features, added in int32:
  every partial sum of a block is an integer of magnitude at most 1024 * 2**14 = 2**24,
  exact in float32 whatever the order of summation.
  On an NVIDIA H200, XLA's int8 product returned wrong products for rows of 10 features
  (twice the true ones for constant rows; right for 12 to 3,072), and ran no faster
  than float32 (WORKSPACE.md, 2026-12-04).

  The choice is made when the program is compiled for the device it runs on
  (``jax.lax.platform_dependent`` in a jitted program: the device of committed inputs, else
  the default device).

  A program that holds jaxlin's kernel cannot be serialized by ``jax.export``; set
  ``JAXLIN_INT8_PRODUCT=xla`` for one that will be (``jaxlin.native``).

  Raises:
    InputError: inputs that are not 2-D int8 arrays with the same number of features, or
      more than 131,071 features (the sums would overflow int32); a
      ``JAXLIN_INT8_PRODUCT`` other than auto, xla or native.
    RuntimeError: ``JAXLIN_INT8_PRODUCT=native`` on a CPU where the kernel cannot run.
  """
  native.check_rows(x_AxD, y_BxD, " (rows of centred pixels: distances.centred_pixels)")
  native.check_setting()  # here too: a compiled program does not trace its branch again
  return _int8_products(x_AxD, y_BxD)


@jax.jit  # compiled for the inputs' device, which picks the form (inlined under a caller's jit)
def _int8_products(x_AxD, y_BxD):
  return jax.lax.platform_dependent(x_AxD, y_BxD, cpu=_int8_products_int8,
                                    default=_int8_products_float32)


def _int8_products_int8(x_AxD, y_BxD):
  native.check_setting()
  # Only where the default device is a CPU: platform_dependent traces this branch for
  # programs compiled for other devices too, which need no CPU kernel built.
  if (min(x_AxD.shape[0], y_BxD.shape[0]) >= native.MIN_ROWS
      and jax.default_backend() == "cpu" and native.available()):
    return native.int8_products(x_AxD, y_BxD)  # AVX-512 VNNI without AMX: 1.9-3.1x XLA's
  return jax.lax.dot_general(x_AxD, y_BxD, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.int32)


def _int8_products_float32(x_AxD, y_BxD):
  d = x_AxD.shape[1]
  total = jnp.zeros((x_AxD.shape[0], y_BxD.shape[0]), jnp.int32)
  for s in range(0, d, _FLOAT32_EXACT_FEATURES):
    e = min(d, s + _FLOAT32_EXACT_FEATURES)
    part = jax.lax.dot_general(x_AxD[:, s:e].astype(jnp.float32),
                               y_BxD[:, s:e].astype(jnp.float32), (((1,), (1,)), ((), ())),
                               precision=_HIGHEST)
    total = total + part.astype(jnp.int32)
  return total


def l2_squared_pixels(x_QxD, y_NxD, x_sq_Q, y_sq_N):
  """Exact int32 squared L2 between rows of int8 pixels (see centred_pixels).

  |x|^2 + |y|^2 - 2 x.y with the dot product from ``int8_products`` (an int8 matrix
  product accumulated in int32 on CPUs): every product is at most 2**14 and the
  distance at most D * 255**2, below 2**30 for D <= 16512 (``kernel_for`` checks), so
  the result is exact. On CPUs with int8 matrix instructions this runs several times
  faster than a float32 product.
  """
  return x_sq_Q[:, None] + y_sq_N[None, :] - 2 * int8_products(x_QxD, y_NxD)


def l1_transposed(xT_DxQ, yT_DxN, *, unroll: int = 16):
  """(Q, N) sum_d |x_d - y_d| from feature-major inputs, without a (Q, N, D) array.

  The reduction is written as an accumulation over features: for each d,
  acc[q, n] += |x[d, q] - y[d, n]|, so the inner work is a broadcast over a
  contiguous (Q, N) tile that XLA vectorises well. Integer inputs give exact
  int32: int16 partial sums over blocks of at most 128 features for uint8 / int8
  (128 * 255 < 2**15), int32 otherwise. Floats accumulate in float32, or in
  float64 when an input is float64 (or, under jax_enable_x64, a wide integer).

  Raises InputError for inputs that are not 2-D with one feature count, and, where
  they are concrete integers, for values whose distances could add up beyond int32.
  """
  xT_DxQ, yT_DxN = (jnp.asarray(_checks.jax_exact(a, name))
                    for a, name in ((xT_DxQ, "xT_DxQ"), (yT_DxN, "yT_DxN")))
  if xT_DxQ.ndim != 2 or yT_DxN.ndim != 2 or xT_DxQ.shape[0] != yT_DxN.shape[0]:
    raise InputError(f"xT_DxQ and yT_DxN must be 2-D with one number of features first, "
                     f"got shapes {xT_DxQ.shape} and {yT_DxN.shape}",
                     argument="xT_DxQ" if xT_DxQ.ndim != 2 else "yT_DxN")
  if (is_integer(xT_DxQ) and is_integer(yT_DxN) and xT_DxQ.size and yT_DxN.size
      and not same_small_int(xT_DxQ, yT_DxN)
      and not (_checks.is_traced(xT_DxQ) or _checks.is_traced(yT_DxN))):
    (lo_x, hi_x), (lo_y, hi_y) = _checks.value_range(xT_DxQ), _checks.value_range(yT_DxN)
    if xT_DxQ.shape[0] * (max(hi_x, hi_y) - min(lo_x, lo_y)) >= 1 << 31:
      raise InputError(f"integer inputs in [{min(lo_x, lo_y)}, {max(hi_x, hi_y)}] over "
                       f"{xT_DxQ.shape[0]} features could sum beyond int32; pass them as "
                       "floats", argument="xT_DxQ" if hi_x - lo_x >= hi_y - lo_y else "yT_DxN")
  d, q = xT_DxQ.shape
  n = yT_DxN.shape[1]
  if is_integer(xT_DxQ) and is_integer(yT_DxN):
    small = same_small_int(xT_DxQ, yT_DxN)
    # Blocks of at most 128 features, as even as whole blocks allow (192 -> 2 x 96, not
    # 2 x 128 with 64 zero features).
    block, part_dtype = (-(-d // -(-d // 128)), jnp.int16) if small else (1, jnp.int32)
    xs, ys, out_dtype = xT_DxQ.astype(part_dtype), yT_DxN.astype(part_dtype), jnp.int32
  else:
    out_dtype = jnp.dtype(_float_dtype(xT_DxQ.dtype, yT_DxN.dtype))
    block, part_dtype = 1, out_dtype
    xs, ys = xT_DxQ.astype(out_dtype), yT_DxN.astype(out_dtype)
  pad = (-d) % block
  if pad:  # zero features add nothing
    xs = jnp.pad(xs, ((0, pad), (0, 0)))
    ys = jnp.pad(ys, ((0, pad), (0, 0)))
  if block == 1:
    def body(i, acc):
      return acc + jnp.abs(xs[i][:, None] - ys[i][None, :]).astype(out_dtype)
    return jax.lax.fori_loop(0, xs.shape[0], body, jnp.zeros((q, n), out_dtype),
                             unroll=max(1, min(unroll, xs.shape[0])))

  def outer(b, acc):
    def inner(j, part):
      i = b * block + j
      return part + jnp.abs(xs[i][:, None] - ys[i][None, :])
    part = jax.lax.fori_loop(0, block, inner, jnp.zeros((q, n), part_dtype), unroll=unroll)
    return acc + part.astype(out_dtype)

  return jax.lax.fori_loop(0, xs.shape[0] // block, outer, jnp.zeros((q, n), out_dtype))


def _unit_rows(x):
  """Rows scaled to unit length (zero rows stay zero), exact in direction for any
  magnitude: each row is first divided by its largest absolute entry, so its norm can
  neither overflow (1e20) nor underflow (1e-25) before the division."""
  plain = jnp.linalg.norm(x, axis=1, keepdims=True)
  top = jnp.max(jnp.abs(x), axis=1, keepdims=True)
  safe = jnp.where(top > 0, top, 1)
  scaled = safe * jnp.linalg.norm(x / safe, axis=1, keepdims=True)  # no over/underflow
  tiny = jnp.finfo(x.dtype).tiny
  # The plain norm where its squares stay in range (most rows), else the rescaled one.
  norm = jnp.where((plain > tiny ** 0.25) & (plain < 1 / tiny ** 0.25), plain, scaled)
  return x / jnp.where(top > 0, norm, 1)


# --------------------------------------------------------------------------
# The kernel table. Each entry: prepare the database once, transform each
# query tile, compute one (query tile, database tile) block of distances.
# --------------------------------------------------------------------------
class _Ops(NamedTuple):
  prepare: Callable  # (database_NxD, n_valid, dtype) -> (db_NxD, aux_N, centre_D)
  transform: Callable  # (queries_QxD, centre_D, dtype) -> (q_QxD, q_aux_Q)
  tile: Callable  # (q_TxD, q_aux_T, db_tile, db_aux_S) -> (T, S) distances
  feature_major: bool  # database tiles are (D, S) instead of (S, D)


def _no_aux(x, dtype):
  return jnp.zeros((x.shape[0],), dtype)


def _no_centre(x, dtype):
  return jnp.zeros((x.shape[1],), dtype)


def _l2_float_prepare(db, n_valid, dtype):
  integers = is_integer(db)
  db = db.astype(dtype)
  # An integer centre keeps integer rows integers (integer dtypes, and float rows that all
  # hold whole numbers: counts, binary features): exact while sums stay exact, so rows at the
  # same distance tie exactly and come by index, as the same rows as integers do.
  whole = jnp.asarray(True) if integers else jnp.all(db == jnp.round(db))
  limit = 2.0 ** (jnp.finfo(dtype).nmant + 1)  # 2**24 in float32
  mu = _centre(db, jnp.asarray(n_valid, jnp.int32), jnp, whole, limit)
  mu = jnp.where(whole, jnp.round(mu), mu)
  db = db - mu  # L2 is translation invariant, and centred rows cancel less in the identity
  return db, jnp.sum(db * db, axis=1), mu


def _l2_float_transform(q, centre, dtype):
  q = q.astype(dtype) - centre.astype(dtype)
  return q, jnp.sum(q * q, axis=1)


# Features per fused step of brute-force L1 search (``l1_transposed``'s unroll; the pruned
# search's bounds keep the default). Read when a search program is compiled: a program
# already compiled for a kernel and shapes keeps its value. 8 was 1.1-1.4x faster than 16
# with 64- and 256-query tiles (benchmarks/l1_tiles.py, --unroll).
L1_UNROLL = 8

KERNELS = {
    "l1_int": _Ops(
        prepare=lambda db, n, dt: (db, _no_aux(db, jnp.int32), _no_centre(db, jnp.float32)),
        transform=lambda q, c, dt: (q, _no_aux(q, jnp.int32)),
        tile=lambda q, qa, db_DxS, da: l1_transposed(q.T, db_DxS, unroll=L1_UNROLL),
        feature_major=True),
    "l1_float": _Ops(
        prepare=lambda db, n, dt: (db.astype(dt), _no_aux(db, dt), _no_centre(db, dt)),
        transform=lambda q, c, dt: (q.astype(dt), _no_aux(q, dt)),
        tile=lambda q, qa, db_DxS, da: l1_transposed(q.T, db_DxS, unroll=L1_UNROLL),
        feature_major=True),
    "l2_int8": _Ops(
        prepare=lambda db, n, dt: (centred_pixels(db), int_squared_norms(centred_pixels(db)),
                                   _no_centre(db, jnp.float32)),
        transform=lambda q, c, dt: (centred_pixels(q), int_squared_norms(centred_pixels(q))),
        tile=lambda q, qa, db, da: l2_squared_pixels(q, db, qa, da),
        feature_major=False),
    "l2_float": _Ops(prepare=_l2_float_prepare, transform=_l2_float_transform,
                     tile=lambda q, qa, db, da: l2_squared_from_dot(q, db, qa, da),
                     feature_major=False),
    "cosine": _Ops(
        prepare=lambda db, n, dt: (_unit_rows(db.astype(dt)), _no_aux(db, dt), _no_centre(db, dt)),
        transform=lambda q, c, dt: (_unit_rows(q.astype(dt)), _no_aux(q, dt)),
        # clamped at 0: rounding puts 1 - u.u of a unit row a few ulps either side of 0
        tile=lambda q, qa, db, da: jnp.maximum(1.0 - jnp.matmul(q, db.T, precision=_HIGHEST),
                                               0.0),
        feature_major=False),
}
"""The distance kernels by name (see the module docstring); ``Kernel`` runs them."""


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One entry of ``KERNELS`` with the float dtype of its arithmetic.

  Hashable by value, so it can be a static argument of a compiled program.
  ``dtype`` is the dtype of the distances: "int32" for the integer kernels,
  else "float32" or "float64".
  """
  name: str
  float_dtype: str = "float32"

  @property
  def dtype(self) -> str:
    return "int32" if self.name in ("l1_int", "l2_int8") else self.float_dtype

  @property
  def distance_dtype(self):
    """The dtype of the distances a search returns (``to_distances``): float64 for a
    float64 kernel, else float32 (the integer kernels' exact int32 included)."""
    return jnp.dtype(jnp.float64 if self.dtype == "float64" else jnp.float32)

  @property
  def feature_major(self) -> bool:
    return KERNELS[self.name].feature_major

  def prepare(self, database_NxD, n_valid):
    """(db_NxD, aux_N, centre_D): the database as the tiles use it; rows past
    ``n_valid`` are padding (zeros) and do not count in the centre."""
    return KERNELS[self.name].prepare(database_NxD, n_valid, jnp.dtype(self.float_dtype))

  def tiles(self, db_NxD, tile: int):
    """Database tiles (M, S, D) -- (M, D, S) when feature-major; N a multiple of S."""
    t = db_NxD.reshape(-1, tile, db_NxD.shape[1])
    return t.transpose(0, 2, 1) if self.feature_major else t

  def transform(self, queries_QxD, centre_D):
    """(q_QxD, q_aux_Q): the queries as the tiles use them."""
    return KERNELS[self.name].transform(queries_QxD, centre_D, jnp.dtype(self.float_dtype))

  def tile(self, q_TxD, q_aux_T, db_tile, db_aux_S):
    """(T, S) distances of a transformed query tile to one database tile, in ``dtype``
    (squared for L2)."""
    d = KERNELS[self.name].tile(q_TxD, q_aux_T, db_tile, db_aux_S)
    return d.astype(self.dtype)


def kernel_for(metric: str, queries_dtype, database_dtype, num_features: int) -> Kernel:
  """The kernel that computes ``metric`` on inputs of these dtypes."""
  _check_metric(metric)
  qd, dd = jnp.dtype(queries_dtype), jnp.dtype(database_dtype)
  ints = all(jnp.issubdtype(d, jnp.integer) or d == jnp.bool_ for d in (qd, dd))
  fd = _float_dtype(qd, dd)
  if metric == "l1":
    return Kernel("l1_int" if ints else "l1_float", fd)
  if metric == "cosine":
    return Kernel("cosine", fd)
  small = qd == dd and qd in (jnp.uint8, jnp.int8)
  if small and num_features * 255 ** 2 < _INT_LIMIT:
    return Kernel("l2_int8", fd)
  return Kernel("l2_float", fd)


def to_distances(d, metric: str):
  """Distances as returned to users: float32 (float64 stays float64), square root for "l2"."""
  d = d.astype(jnp.float64 if d.dtype == jnp.float64 else jnp.float32)
  return jnp.sqrt(d) if metric == "l2" else d


def returned_distances(d, metric: str):
  """A search's distances as it returns them, from the values it compares (exact int32
  for the integer kernels, ``topk.worst`` for no row: +inf): ``to_distances``.

  Brute force and the pruned cascade both end here, on a device, so that they round
  alike: XLA's float32 square root on a GPU differed from numpy's (correctly rounded) by
  one unit in the last place for about 1 value in 6. (Brute force runs on the database's
  device, the cascade on the default device: the same device unless the database was
  committed to another.)

  Raises:
    InputError: an unknown metric.
  """
  return _returned_distances(d, _check_metric(metric))


@functools.partial(jax.jit, static_argnames="metric")  # one program, not one per operation
def _returned_distances(d, metric: str):
  return to_distances(topk.as_float_distances(d), metric)


def pairwise_distances(x_QxD, y_NxD, *, metric: str):
  """Pairwise distances (Q, N) by the kernel search runs, as one tile.

  l1: sum_d |x_d - y_d| (exact on integer inputs);
  l2_squared: |x - y|^2 by the matmul identity (exact int8 products on
  uint8 / int8 pixels; on floats centred among the rows of y, clamped at 0);
  l2: its square root; cosine: 1 - x.y / (|x| |y|) (1 for a zero vector).
  float32 results; float64 when an input is float64 or, under jax_enable_x64 in a float
  kernel, a 32- or 64-bit integer. Integer L1 sums in int32: inputs whose sums could
  reach 2**30 are refused, and under jit (unchecked) their pairs are NaN. For large inputs use
  ``jaxlin.knn.search``, which streams over tiles.
  """
  x, y, kernel = checked_inputs(x_QxD, y_NxD, metric, centre_wide=True)
  if y.shape[0] == 0:
    return jnp.zeros((x.shape[0], 0), kernel.distance_dtype)
  d = _one_tile(x, y, kernel=kernel, metric=metric)
  if (kernel.name == "l1_int" and not same_small_int(x, y)
      and (_checks.is_traced(x) or _checks.is_traced(y))):  # a concrete call refuses these
    d = jnp.where(l1_int_may_overflow(x, jnp.min(y, axis=1)[None], jnp.max(y, axis=1)[None]),
                  jnp.nan, d)  # int32 sums that could wrap: NaN, never a plausible distance
  return d


@functools.partial(jax.jit, static_argnames=("kernel", "metric"))
def _one_tile(x_QxD, y_NxD, *, kernel, metric):
  """All of y as one database tile: prepare, transform the queries, the tile's distances."""
  n = y_NxD.shape[0]
  db, aux, centre = kernel.prepare(y_NxD, n)
  q, q_aux = kernel.transform(x_QxD, centre)
  return to_distances(kernel.tile(q, q_aux, kernel.tiles(db, n)[0], aux), metric)
