"""Pairwise distances between two sets of vectors.

Two forms of every metric:

* ``pairwise_distances_reference`` -- the definition, written as a doubly
  vmapped function of two vectors. Slow and obviously correct; tests compare
  against it.
* ``pairwise_distances`` -- the fast form used by search: a matrix product for
  L2 / cosine (``precision=HIGHEST``, squared distances clamped at 0) and an
  integer accumulation for L1 on integer pixels (exact).

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


def l1_tile(x_QxD, y_NxD, *, chunk: int = 256):
  """Sum of absolute differences without a (Q, N, D) array.

  Accumulates over feature chunks of width ``chunk``: the largest intermediate
  is (Q, N, chunk). On integer inputs the arithmetic is int32 and exact.
  """
  q, d = x_QxD.shape
  n = y_NxD.shape[0]
  exact = is_integer(x_QxD) and is_integer(y_NxD)
  acc_dtype = jnp.int32 if exact else jnp.float32
  x = x_QxD.astype(acc_dtype)
  y = y_NxD.astype(acc_dtype)
  chunk = min(chunk, d)
  pad = (-d) % chunk
  if pad:  # zero columns add nothing to |x - y|
    x = jnp.pad(x, ((0, 0), (0, pad)))
    y = jnp.pad(y, ((0, 0), (0, pad)))
  xs = x.reshape(q, -1, chunk).transpose(1, 0, 2)
  ys = y.reshape(n, -1, chunk).transpose(1, 0, 2)

  def body(acc, xy):
    xc, yc = xy
    return acc + jnp.sum(jnp.abs(xc[:, None, :] - yc[None, :, :]), axis=-1), None

  acc, _ = jax.lax.scan(body, jnp.zeros((q, n), acc_dtype), (xs, ys))
  return acc.astype(jnp.float32)


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
