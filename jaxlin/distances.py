"""Pairwise distances between two sets of vectors.

Two forms of every metric:

* ``pairwise_distances_reference`` -- the definition, written as a doubly
  vmapped function of two vectors. Slow and obviously correct; tests compare
  against it.
* ``pairwise_distances`` -- the fast form used by search: a matrix product for
  L2 / cosine (on uint8 pixels an exact int8 product accumulated in int32;
  on floats ``precision=HIGHEST``, centred, squared distances clamped at 0) and
  an accumulation over features for L1 (exact integer work on pixels).

Inputs may be uint8 pixels or floats; they are cast before any arithmetic.
Shapes: ``x_QxD`` queries, ``y_NxD`` database, result ``(Q, N)`` float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

METRICS = ("l1", "l2", "l2_squared", "cosine")
_HIGHEST = jax.lax.Precision.HIGHEST


def check_metric(metric: str) -> str:
  if metric not in METRICS:
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
  return metric


def _check_pair(x, y):
  if x.ndim != 2 or y.ndim != 2:
    raise ValueError(
        f"expected 2-D arrays (Q, D) and (N, D), got shapes {x.shape} and {y.shape}; "
        "flatten images first, e.g. x.reshape(len(x), -1)")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"feature sizes differ: {x.shape} vs {y.shape}")


def is_integer(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_


def as_float(x):
  """x as float32 or wider (uint8 pixels are cast before any arithmetic)."""
  x = jnp.asarray(x)
  if is_integer(x):
    return x.astype(jnp.float32)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# --------------------------------------------------------------------------
# Reference: the definition, one pair at a time, vmapped over both sets.
# --------------------------------------------------------------------------
def _one_pair(a, b, metric):
  a = a.astype(jnp.float64 if a.dtype == jnp.float64 else jnp.float32)
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
  check_metric(metric)
  x_QxD, y_NxD = jnp.asarray(x_QxD), jnp.asarray(y_NxD)
  _check_pair(x_QxD, y_NxD)
  row = jax.vmap(lambda a, b: _one_pair(a, b, metric), in_axes=(None, 0))
  return jax.vmap(row, in_axes=(0, None))(x_QxD, y_NxD)


# --------------------------------------------------------------------------
# Fast forms.
# --------------------------------------------------------------------------
def squared_norms(x_NxD):
  x = as_float(x_NxD)
  return jnp.sum(x * x, axis=1)


def l2_squared_from_dot(x_QxD, y_NxD, x_sq_Q, y_sq_N):
  """|x|^2 + |y|^2 - 2 x.y with a full-precision matmul, clamped at 0."""
  dot = jnp.matmul(x_QxD, y_NxD.T, precision=_HIGHEST)
  return jnp.maximum(x_sq_Q[:, None] + y_sq_N[None, :] - 2.0 * dot, 0.0)


def centred_pixels(x):
  """uint8 / int8 pixels as int8 in [-128, 127] (uint8 shifted by -128, exactly)."""
  x = jnp.asarray(x)
  if x.dtype == jnp.uint8:
    return (x.astype(jnp.int16) - 128).astype(jnp.int8)
  return x.astype(jnp.int8)


def int_squared_norms(x_NxD):
  """Exact int32 squared norms of integer-valued rows."""
  x = jnp.asarray(x_NxD).astype(jnp.int32)
  return jnp.sum(x * x, axis=1)


def l2_squared_pixels(x_QxD, y_NxD, x_sq_Q, y_sq_N):
  """Exact int32 squared L2 between rows of int8 pixels (see centred_pixels).

  |x|^2 + |y|^2 - 2 x.y with the dot product as an int8 matrix product
  accumulated in int32: every product is at most 2**14 and the sum of 3072
  of them below 2**26, so the result is exact. On CPUs with int8 matrix
  instructions this runs several times faster than a float32 product.
  """
  dot = jax.lax.dot_general(x_QxD, y_NxD, (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.int32)
  return x_sq_Q[:, None] + y_sq_N[None, :] - 2 * dot


def _is_small_int(x) -> bool:
  return x.dtype in (jnp.uint8, jnp.int8)


def same_small_int(x, y) -> bool:
  """Both uint8 or both int8: |a - b| <= 255, so 128 terms fit an int16
  accumulator, and both shift to [-128, 127] the same way."""
  return x.dtype == y.dtype and _is_small_int(x)


def l1_transposed(xT_DxQ, yT_DxN, *, unroll: int = 16):
  """(Q, N) sum_d |x_d - y_d| from feature-major inputs, without a (Q, N, D) array.

  The reduction is written as an accumulation over features: for each d,
  acc[q, n] += |x[d, q] - y[d, n]|, so the inner work is a broadcast over a
  contiguous (Q, N) tile that XLA vectorises well. On uint8/int8 inputs the
  arithmetic is integer and exact: int16 partial sums over blocks of 128
  features (128 * 255 < 2**15), then int32. Other integers accumulate in
  int32, floats in float32.
  """
  d, q = xT_DxQ.shape
  n = yT_DxN.shape[1]
  if is_integer(xT_DxQ) and is_integer(yT_DxN):
    small = same_small_int(xT_DxQ, yT_DxN)
    block, part_dtype = (128, jnp.int16) if small else (1, jnp.int32)
    xs, ys, out_dtype = xT_DxQ.astype(part_dtype), yT_DxN.astype(part_dtype), jnp.int32
  else:
    block, part_dtype, out_dtype = 1, jnp.float32, jnp.float32
    xs, ys = as_float(xT_DxQ).astype(jnp.float32), as_float(yT_DxN).astype(jnp.float32)
  pad = (-d) % block
  if pad:  # zero features add nothing
    xs = jnp.pad(xs, ((0, pad), (0, 0)))
    ys = jnp.pad(ys, ((0, pad), (0, 0)))
  if block == 1:
    def body(i, acc):
      return acc + jnp.abs(xs[i][:, None] - ys[i][None, :]).astype(out_dtype)
    acc = jax.lax.fori_loop(0, xs.shape[0], body, jnp.zeros((q, n), out_dtype),
                            unroll=min(unroll, xs.shape[0]))
    return acc.astype(jnp.float32)

  def outer(b, acc):
    def inner(j, part):
      i = b * block + j
      return part + jnp.abs(xs[i][:, None] - ys[i][None, :])
    part = jax.lax.fori_loop(0, block, inner, jnp.zeros((q, n), part_dtype), unroll=unroll)
    return acc + part.astype(out_dtype)

  acc = jax.lax.fori_loop(0, xs.shape[0] // block, outer, jnp.zeros((q, n), out_dtype))
  return acc.astype(jnp.float32)


def l1_tile(x_QxD, y_NxD):
  """Sum of absolute differences (Q, N); exact on integer inputs. See l1_transposed."""
  return l1_transposed(x_QxD.T, y_NxD.T)


def pairwise_distances(x_QxD, y_NxD, *, metric: str):
  """Pairwise distances, (Q, N) float32, in their fast form.

  l1: sum_d |x_d - y_d| (exact on integer inputs);
  l2_squared: |x - y|^2 by the matmul identity, centred on the mean of y to
  avoid cancellation, clamped at 0; l2: its square root;
  cosine: 1 - x.y / (|x| |y|) (1 for a zero vector).
  For large inputs use ``jaxlin.knn.search``, which streams over tiles.
  """
  check_metric(metric)
  x_QxD, y_NxD = jnp.asarray(x_QxD), jnp.asarray(y_NxD)
  _check_pair(x_QxD, y_NxD)
  if metric == "l1":
    return l1_tile(x_QxD, y_NxD)
  if metric != "cosine" and same_small_int(x_QxD, y_NxD):
    xc, yc = centred_pixels(x_QxD), centred_pixels(y_NxD)  # exact integer results
    d2 = l2_squared_pixels(xc, yc, int_squared_norms(xc), int_squared_norms(yc)).astype(jnp.float32)
    return jnp.sqrt(d2) if metric == "l2" else d2
  x, y = as_float(x_QxD), as_float(y_NxD)
  if metric == "cosine":
    xn = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    yn = y / jnp.maximum(jnp.linalg.norm(y, axis=1, keepdims=True), 1e-30)
    return (1.0 - jnp.matmul(xn, yn.T, precision=_HIGHEST)).astype(jnp.float32)
  mu = jnp.mean(y, axis=0)  # L2 is translation invariant; centring avoids cancellation
  x, y = x - mu, y - mu
  d2 = l2_squared_from_dot(x, y, squared_norms(x), squared_norms(y))
  d2 = d2.astype(jnp.float32)
  return jnp.sqrt(d2) if metric == "l2" else d2
