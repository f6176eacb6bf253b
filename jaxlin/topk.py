"""Exact, stable k-smallest selection.

``smallest_k(values_TxN, k)`` gives the positions of the k smallest values of
each row, as a stable sort does: equal values come in increasing position.
It works on float distances (float32 or float64, compared as themselves) and
on integer distances in [0, 2**30] (compared exactly through
order-preserving float32 keys, ``order_keys``), so integer distances never
merge above 2**24 as a float32 conversion would merge them.

``worst(dtype)`` is a value larger than any real distance of that dtype: +inf,
or 2**30 for integers. Search uses it for padding rows, and
``as_float_distances`` turns it back into +inf.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlin import _checks
from jaxlin.errors import InputError

__all__ = ["CHUNK", "INT_WORST", "as_float_distances", "order_keys", "smallest_k", "worst"]

CHUNK = 16  # elements per chunk in smallest_k; database tiles are multiples of it
INT_WORST = 1 << 30  # above every integer distance search computes (checked at its boundary)


def worst(dtype):
  """A distance larger than any real one of ``dtype``: +inf, or 2**30 for integers."""
  return jnp.inf if jnp.issubdtype(dtype, jnp.floating) else INT_WORST


def order_keys(values):
  """Float keys that sort exactly as ``values`` do.

  Floats are their own keys (float32 stays float32, float64 stays float64).
  Integers in [0, 2**30] are bit-cast: the float32 whose bits are
  ``value + 2**23`` -- positive normal floats order as their bit patterns --
  so no two distinct integers share a key, however large. (XLA's CPU top_k is
  about 20x slower on int32 than on float32, hence keys rather than int32.)
  """
  return _order_keys(_checked_values(values, "values"))


@jax.jit  # one program (inlined under a caller's jit)
def _order_keys(values):
  if jnp.issubdtype(values.dtype, jnp.floating):
    # -0.0 becomes +0.0: top_k orders the two zeros by their bits, not as equal. (Not
    # x + 0.0: XLA simplifies it away under jit.)
    v = values if values.dtype == jnp.float64 else values.astype(jnp.float32)
    return jnp.where(v == 0, jnp.zeros_like(v), v)
  return jax.lax.bitcast_convert_type(values.astype(jnp.int32) + (1 << 23), jnp.float32)


def _checked_values(values, name: str, ndim: int | None = None):
  """``values`` as a jax array of real floats without NaN or integers in [0, 2**30], or
  InputError naming ``name`` (value checks only for concrete arrays)."""
  if not _checks.is_traced(values):
    values = jnp.asarray(_checks.jax_exact(values, name))
  if ndim is not None and values.ndim != ndim:
    raise InputError(f"{name} must be {ndim}-D (rows, values), got shape {values.shape}",
                     argument=name)
  floating = jnp.issubdtype(values.dtype, jnp.floating)
  if not floating and not jnp.issubdtype(values.dtype, jnp.integer):
    raise InputError(f"{name} must hold real floats or integers, got {values.dtype}",
                     argument=name)
  if _checks.is_traced(values) or not values.size:
    return values
  if floating and _checks.has_nan(values):
    raise InputError(f"{name} holds NaN: it has no place in an order; remove or replace it",
                     argument=name)
  if not floating:
    lo, hi = _checks.value_range(values)
    if lo < 0 or hi > INT_WORST:
      raise InputError(f"integer {name} must lie in [0, 2**30] (distances), got values in "
                       f"[{lo}, {hi}]; pass them as floats", argument=name)
  return values


def as_float_distances(d):
  """Distances as float32 (float64 stays float64), with +inf where ``d`` is ``worst``."""
  d = d if _checks.is_traced(d) else jnp.asarray(_checks.jax_exact(d, "d"))
  out = d.astype(jnp.float64 if d.dtype == jnp.float64 else jnp.float32)
  return jnp.where(d == worst(d.dtype), jnp.inf, out)


def smallest_k(values_TxN, k: int):
  """Positions (T, k) int32 of the k smallest values of each row.

  The same positions as a stable ``jax.lax.top_k(-order_keys(values), k)``
  (equal values: lower position first); exact for floats and for integers in
  [0, 2**30]. Floats compare as XLA computes them: on CPU, subnormal values
  (below 1.2e-38 in float32) count as 0 and keep their position order.

  Long rows go through chunks: the k smallest values lie in the k chunks of
  ``CHUNK`` with the smallest minima (each chunk ahead of an element's chunk
  holds a smaller value than that element), so one top_k picks k chunks and
  a second picks k values among their ``CHUNK * k``: a min-reduction, fused
  with the distance computation, and top_k over N / 16 and 16 k elements
  instead of N (benchmarks/topk_speed.py: 1.9x to 4.5x faster on rows of
  50,000).
  """
  values_TxN = _checked_values(values_TxN, "values_TxN", ndim=2)
  n = values_TxN.shape[1]
  k = _checks.concrete_int(k, "k")
  if not 1 <= k <= n:
    raise InputError(f"k must be an integer in [1, {n}] (the row length), got {k}", argument="k")
  return _smallest_k(values_TxN, k)


@functools.partial(jax.jit, static_argnums=1)  # one program (inlined under a caller's jit)
def _smallest_k(values_TxN, k):
  if jnp.issubdtype(values_TxN.dtype, jnp.integer) and values_TxN.dtype.itemsize < 4:
    values_TxN = values_TxN.astype(jnp.int32)  # the padding's 2**30 would wrap (uint8: to 0)
  t, n = values_TxN.shape
  s = CHUNK
  key = lambda x: -order_keys(x)
  if n < 4 * k * s:  # short rows: the plain selection is as cheap
    return jax.lax.top_k(key(values_TxN), k)[1]
  pad = (-n) % s  # the worst key after every real element: never picked ahead of one
  v = jnp.pad(values_TxN, ((0, 0), (0, pad)), constant_values=worst(values_TxN.dtype))
  v = v.reshape(t, -1, s)
  _, chunks = jax.lax.top_k(key(jnp.min(v, axis=2)), k)
  chunks = jnp.sort(chunks, axis=1)  # back in position order, for ties
  cand = jnp.take_along_axis(v, chunks[:, :, None], axis=1).reshape(t, k * s)
  _, pos = jax.lax.top_k(key(cand), k)
  cand_pos = chunks[:, :, None] * s + jnp.arange(s, dtype=chunks.dtype)
  return jnp.take_along_axis(cand_pos.reshape(t, k * s), pos, 1)
