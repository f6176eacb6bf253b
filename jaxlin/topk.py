"""Exact, stable k-smallest selection.

``smallest_k(values_TxN, k)`` gives the positions of the k smallest values of
each row, as a stable sort does: equal values come in increasing position.
It works on float distances (float32 or float64, compared as themselves) and
on integer distances in [0, 2**30] (compared exactly through
order-preserving float32 keys, ``order_keys``), so integer distances never
merge above 2**24 as a float32 conversion would merge them.

``smallest_k_host(values_TxN, k)`` gives the same positions for integer
values held as a numpy array, by numpy's selection on the host: several times
faster than XLA's CPU top_k when k is large (cross-validation's k = 100).

``worst(dtype)`` is a value larger than any real distance of that dtype: +inf,
or 2**30 for integers. Search uses it for padding rows, and
``as_float_distances`` turns it back into +inf.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import _checks
from jaxlin.errors import InputError

__all__ = ["CHUNK", "INT_WORST", "as_float_distances", "order_keys", "smallest_k",
           "smallest_k_host", "worst"]

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
    # Under jit NaN cannot be refused: every NaN becomes +NaN, which ranks after +inf. A NaN
    # with its sign bit set (x86's default NaN, e.g. of inf - inf) ranked before every number.
    v = jnp.where(jnp.isnan(v), jnp.full_like(v, jnp.nan), v)
    return jnp.where(v == 0, jnp.zeros_like(v), v)
  return jax.lax.bitcast_convert_type(values.astype(jnp.int32) + (1 << 23), jnp.float32)


def _checked_values(values, name: str, ndim: int | None = None):
  """``values`` as a jax array of real floats without NaN or integers in [0, 2**30], or
  InputError naming ``name`` (value checks only for concrete arrays); float64 host values
  that JAX would round (``_checks.narrowed``) stay numpy."""
  if not _checks.is_traced(values):
    values = _checks.jax_exact(values, name)
    values = values if _checks.narrowed(values) else jnp.asarray(values)
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
  (below 1.2e-38 in float32) count as 0 and keep their position order. NaN is
  refused where values are concrete; under jit every NaN ranks after +inf on a CPU
  (XLA's top_k orders NaN there). Not on a GPU: XLA's own GPU kernel for top_k with
  k <= 16 compares floats as the hardware does, and a row holding NaN comes back in
  another order (openxla/xla issue 48119); ``knn.search`` answers such a row's query
  with NaN and -1 anyway.
  float64 values held on the host (numpy) without jax_enable_x64, which JAX
  would round to float32, are ordered by numpy as float64.

  Long rows go through chunks: the k smallest values lie in the k chunks of
  ``CHUNK`` with the smallest minima (each chunk ahead of an element's chunk
  holds a smaller value than that element), so one top_k picks k chunks and
  a second picks k values among their ``CHUNK * k``: a min-reduction, fused
  with the distance computation, and top_k over N / 16 and 16 k elements
  instead of N (benchmarks/topk_speed.py: 1.9x to 4.5x faster on rows of
  50,000).
  """
  values_TxN = _checked_values(values_TxN, "values_TxN", ndim=2)
  k = _checked_k(k, values_TxN.shape[1])
  if _checks.narrowed(values_TxN):  # host values that JAX would round to float32: numpy's order
    return jnp.asarray(np.argsort(values_TxN, axis=1, kind="stable")[:, :k].astype(np.int32))
  return _smallest_k(values_TxN, k)


def _checked_k(k, n: int) -> int:
  """``k`` as an int in [1, n] (the row length), or InputError."""
  k = _checks.concrete_int(k, "k")
  if not 1 <= k <= n:
    raise InputError(f"k must be an integer in [1, {n}] (the row length), got {k}", argument="k")
  return k


@functools.partial(jax.jit, static_argnums=1)  # one program (inlined under a caller's jit)
def _smallest_k(values_TxN, k):
  if jnp.issubdtype(values_TxN.dtype, jnp.integer) and values_TxN.dtype.itemsize < 4:
    values_TxN = values_TxN.astype(jnp.int32)  # the padding's 2**30 would wrap (uint8: to 0)
  t, n = values_TxN.shape
  s = CHUNK
  key = lambda x: -order_keys(x)
  if n < 4 * k * s:  # short rows: the plain selection is as cheap
    return jax.lax.top_k(key(values_TxN), k)[1]
  # Padding: the worst key, after every real element (NaN for floats: +inf would be picked
  # ahead of a real NaN), and after equal ones by its position.
  pad = (-n) % s
  floating = jnp.issubdtype(values_TxN.dtype, jnp.floating)
  v = jnp.pad(values_TxN, ((0, 0), (0, pad)),
              constant_values=jnp.nan if floating else worst(values_TxN.dtype))
  v = v.reshape(t, -1, s)
  # A NaN (ranked last) must not hide its chunk's numbers: the chunk's least number.
  least = jnp.nanmin(v, axis=2) if floating else jnp.min(v, axis=2)
  _, chunks = jax.lax.top_k(key(least), k)
  chunks = jnp.sort(chunks, axis=1)  # back in position order, for ties
  cand = jnp.take_along_axis(v, chunks[:, :, None], axis=1).reshape(t, k * s)
  _, pos = jax.lax.top_k(key(cand), k)
  cand_pos = chunks[:, :, None] * s + jnp.arange(s, dtype=chunks.dtype)
  return jnp.take_along_axis(cand_pos.reshape(t, k * s), pos, 1)


def smallest_k_host(values_TxN, k: int) -> np.ndarray:
  """Positions (T, k) int32 of the k smallest integer values of each row, computed by
  numpy on the host: the same positions as ``smallest_k`` (equal values: lower position
  first).

  XLA's CPU top_k runs a partial sort of positions, one row at a time on one core: about
  33 microseconds per row of 4,000 values with k = 100. Here each row gets a bound at or
  above its k-th smallest value: the k-th smallest of the minima of max(4 k, 256) groups
  of its columns (numpy's introselect on those minima). One comparison marks the values
  at or below it (on CIFAR-10 distances, 113 per row for k = 100 of 4,000), and only
  those are sorted, on keys that pack (row, value, position) into one int64. A block of
  rows too short for the groups, too large for the keys (2**31 values or so), or with
  many values tied at the bound (then 5-10 % slower than without the bound) takes each
  row's k-th value itself instead (introselect over the whole rows). 4.8-5.9x faster
  than top_k at k = 100 (benchmarks/topk_speed.py; WORKSPACE.md, 2026-12-05, Intel Xeon
  with AMX). Rows where the k-th value is tied beyond the k-th place keep their first
  tied positions.

  Args:
    values_TxN: (T, N) integers (e.g. exact int32 distances) as a numpy or CPU jax array,
      in [-2**31, 2**31).
    k: 1 <= k <= N.

  Raises:
    InputError: values that are not a 2-D integer array or out of range, or k out of range.
  """
  v = np.asarray(values_TxN)
  if v.ndim != 2 or not np.issubdtype(v.dtype, np.integer):
    raise InputError(f"values_TxN must be a 2-D integer array, got {v.dtype} of shape "
                     f"{v.shape}; floats go through smallest_k", argument="values_TxN")
  t, n = v.shape
  k = _checked_k(k, n)
  wide = v.dtype.itemsize > 4 or v.dtype == np.uint32  # else in range by its dtype
  if wide and v.size and (v.min() < -2 ** 31 or v.max() >= 2 ** 31):
    raise InputError("values_TxN must lie in [-2**31, 2**31)", argument="values_TxN")
  if t == 0:
    return np.zeros((0, k), np.int32)
  parts = min(_host_cores(), t, v.size // _HOST_PART_VALUES)
  if parts > 1:  # numpy lets go of the interpreter lock: row blocks run on the cores
    bounds = np.linspace(0, t, parts + 1).astype(int)
    futures = [_host_pool().submit(_smallest_k_rows, v[a:b], k)
               for a, b in zip(bounds[1:-1], bounds[2:])]
    first = _smallest_k_rows(v[:bounds[1]], k)
    return np.concatenate([first] + [f.result() for f in futures])
  return _smallest_k_rows(v, k)


# Values per block of rows of smallest_k_host on its own core: 1,000 x 4,000 in two blocks
# took 4.0 ms against 7.5 ms in one (Intel Xeon, 2 cores; WORKSPACE.md, 2026-12-04).
_HOST_PART_VALUES = 2 ** 20


@functools.lru_cache(maxsize=None)
def _host_cores() -> int:
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not on Linux
    return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=None)
def _host_pool():
  return concurrent.futures.ThreadPoolExecutor(max(1, _host_cores() - 1),
                                               thread_name_prefix="jaxlin-topk")


if hasattr(os, "register_at_fork"):  # a forked child has none of the pool's threads
  os.register_at_fork(after_in_child=_host_pool.cache_clear)


# Groups of smallest_k_host's bound: 4 k, at least 256. On one core of an Intel Xeon
# (2026-12-05; random int32 values, ms): 1,000 x 4,000, k = 100: 7.8 against 10.3 for the
# k-th value by introselect (113 values per row at or below the bound on CIFAR-10
# distances); k = 1 and 10: 2.9 and 3.3 against 6.2 and 5.9; 256 x 50,000: 13.8-14.4
# against 27. Fewer groups were slower (4 k alone: 18 ms at k = 1: numpy's minimum over
# groups of 4 columns is slow), more were no faster (1,024: 10.0 ms at k = 100).
_GROUPS_PER_K = 4
_MIN_GROUPS = 256


def _smallest_k_rows(v, k):
  """smallest_k_host of checked values, on the calling thread."""
  t, n = v.shape
  groups = max(_GROUPS_PER_K * k, _MIN_GROUPS)
  shift = max(1, int(n - 1).bit_length())
  if n >= 2 * groups and int(t - 1).bit_length() + 32 + shift <= 63:
    # A bound on each row's k-th value: the k-th smallest of the minima of `groups` groups
    # of columns (columns j, j + groups, ...), k of the row's values, is at or above it.
    m = n // groups
    minima = v[:, :m * groups].reshape(t, m, groups).min(axis=1)
    bound = np.partition(minima, k - 1, axis=1)[:, k - 1:k]
    # Sorting the values under the bound costs more than introselect over the whole rows
    # where they pass both twice k per row and a sixteenth of the block's values (many
    # ties at the bound): then the k-th values below. The minima under it, each a value
    # under it, tell so first where they pass it themselves; else their count does.
    most = max(2 * t * k, v.size // 16)
    under = v <= bound if np.count_nonzero(minima <= bound) <= most else None
    if under is not None and np.count_nonzero(under) <= most:
      flat = np.flatnonzero(under)  # k or more per row, row by row, positions increasing
      vals = np.take(v.reshape(-1), flat).astype(np.int64) + 2 ** 31  # in [0, 2**32)
      rows, cols = np.divmod(flat, n)
      keys = (rows << (32 + shift)) | (vals << shift) | cols  # (row, value, position)
      keys.sort()
      counts = np.bincount(rows, minlength=t)
      first = np.cumsum(counts) - counts  # each row's first key
      return (keys[first[:, None] + np.arange(k)] & ((1 << shift) - 1)).astype(np.int32)
  kth = np.partition(v, k - 1, axis=1)[:, k - 1:k]
  flat = np.flatnonzero(v <= kth)  # row by row, positions increasing: k or more per row
  vals = np.take(v.reshape(-1), flat).astype(np.int64)
  rows, cols = np.divmod(flat, n)
  if len(rows) > t * k:  # some k-th values tied past the k-th place: keep the first tied
    tied = vals == kth[rows, 0]
    start = np.searchsorted(rows, np.arange(t))  # each row's first entry
    below = np.bincount(rows, weights=~tied, minlength=t).astype(np.int64)  # < k-th value
    before = np.cumsum(tied) - tied  # tied entries ahead, over all rows
    place = before - before[start][rows]  # ... within the row
    keep = ~tied | (place < (k - below)[rows])
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
  keys = ((vals << shift) | cols).reshape(t, k)  # (value, position) in one ordered key
  keys.sort(axis=1)
  return (keys & ((1 << shift) - 1)).astype(np.int32)
