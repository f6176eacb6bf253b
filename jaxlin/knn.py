"""Exact k-nearest-neighbour search, majority vote and prediction.

``search`` streams over query tiles (a host loop, one compiled program for
all tiles) and, inside each, over database tiles (``lax.scan``) with a running
top-k merge, so memory is bounded by the tile sizes: no (Q, N, D) array, and
no (Q, N) array beyond one query tile.

Tie rule: neighbours at equal distance come in increasing database index, as
``jax.lax.top_k`` orders them (it is stable, and the running merge keeps the
candidates of earlier tiles, which have lower indices, first).

Exactness: on uint8 pixels L1 (an int16/int32 accumulation) and L2 (an int8
matrix product accumulated in int32) compute exact integer distances, and the
selection compares them exactly (``order_keys``). So neighbours, ties
included, equal a brute-force integer reference. (Returned distances are
float32: exact below 2**24, rounded to float32 above.) Float inputs use
float32 (L2 centred, ``precision=HIGHEST``).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import distances

TIE_BREAKS = ("smallest_label", "nearest")


def _mode(queries, database, metric) -> str:
  """Which exact kernel serves this search."""
  if metric == "l1":
    return "l1"
  if metric in ("l2", "l2_squared") and distances.same_small_int(queries, database):
    return "l2_pixels"  # exact integer distances
  return "cosine" if metric == "cosine" else "l2_float"


@functools.partial(jax.jit, static_argnames=("mode", "tile"))
def _prepare_tiles(database_NxD, n_valid, *, mode, tile):
  """Database tiles (M, S, D) -- (M, D, S) for L1 -- per-row aux (M, S), and the
  centre for float L2, made in one compiled program (no extra full-size copies).

  Rows past n_valid are padding (zeros); search masks them out.
  """
  db = _pad_rows(database_NxD, tile)
  aux, mu = None, None
  if mode == "l2_pixels":
    db = distances.centred_pixels(db)
    aux = distances.int_squared_norms(db)
  elif mode == "cosine":
    db = distances.as_float(db)
    db = db / jnp.maximum(jnp.linalg.norm(db, axis=1, keepdims=True), 1e-30)
  elif mode == "l2_float":
    db = distances.as_float(db)
    mu = jnp.sum(db, axis=0) / n_valid  # padding rows are zeros: the mean of the real rows
    db = db - mu  # centring: L2 is translation invariant, and float32 cancels less
    aux = distances.squared_norms(db)
  tiles = db.reshape(-1, tile, db.shape[1])
  aux = jnp.zeros(tiles.shape[:2], jnp.float32) if aux is None else aux.reshape(tiles.shape[:2])
  if mode == "l1":
    tiles = tiles.transpose(0, 2, 1)  # feature-major for the accumulation
  return tiles, aux, mu


def _transform_queries(queries_QxD, mode, mu):
  """The query-side counterpart of _prepare_tiles."""
  if mode == "l1":
    return queries_QxD
  if mode == "l2_pixels":
    return distances.centred_pixels(queries_QxD)
  q = distances.as_float(queries_QxD)
  if mode == "cosine":
    return q / jnp.maximum(jnp.linalg.norm(q, axis=1, keepdims=True), 1e-30)
  return q - mu


def _tile_distances(q, q_aux, db_tile, db_aux_tile, mode):
  """(T, S) distances of one query tile to one database tile, in the mode's key dtype."""
  if mode == "l1":  # db_tile is feature-major (D, S)
    return distances.l1_transposed(q.T, db_tile)
  if mode == "l2_pixels":
    return distances.l2_squared_pixels(q, db_tile, q_aux, db_aux_tile)
  if mode == "cosine":
    return 1.0 - jnp.matmul(q, db_tile.T, precision=jax.lax.Precision.HIGHEST)
  return distances.l2_squared_from_dot(q, db_tile, q_aux, db_aux_tile)


@functools.partial(jax.jit, static_argnames=("k", "mode"))
def _search_tile(q_TxD, db_tiles, db_aux_MxS, n_valid, *, k, mode):
  """Top-k over all database tiles for one query tile, by a running merge.

  Returns (distances (T, k) in the mode's dtype -- int32 for L2 on pixels,
  exact -- or float32, indices (T, k)); rows past n_valid are padding and
  never returned ahead of a real row (see ``as_float_distances``).
  """
  t = q_TxD.shape[0]
  tile = db_aux_MxS.shape[1]
  q_aux = {"l2_pixels": distances.int_squared_norms, "l2_float": distances.squared_norms}.get(
      mode, lambda q: None)(q_TxD)
  dtype = jnp.int32 if mode == "l2_pixels" else jnp.float32

  def body(carry, inputs):
    best_d, best_i = carry
    m, db_tile, db_aux = inputs
    d = _tile_distances(q_TxD, q_aux, db_tile, db_aux, mode).astype(dtype)
    idx = m * tile + jnp.arange(tile, dtype=jnp.int32)
    d = jnp.where(idx[None, :] < n_valid, d, _worst(dtype))
    # This tile's k best, then a small merge with the running best. Earlier candidates
    # (lower indices) come first, so the stable selections keep ties by index.
    pos = smallest_k(d, min(k, tile))
    cand_d = jnp.concatenate([best_d, jnp.take_along_axis(d, pos, axis=1)], axis=1)
    cand_i = jnp.concatenate([best_i, idx[pos]], axis=1)
    _, pos = jax.lax.top_k(-order_keys(cand_d), k)
    return (jnp.take_along_axis(cand_d, pos, axis=1), jnp.take_along_axis(cand_i, pos, axis=1)), None

  init = (jnp.full((t, k), _worst(dtype), dtype), jnp.full((t, k), -1, jnp.int32))
  steps = jnp.arange(db_aux_MxS.shape[0], dtype=jnp.int32)
  (best_d, best_i), _ = jax.lax.scan(body, init, (steps, db_tiles, db_aux_MxS))
  return best_d, best_i


_CHUNK = 16  # elements per chunk in smallest_k
_INT_WORST = 1 << 30  # above every integer distance of uint8 / int8 rows (< 2**28)


def _worst(dtype):
  """A distance larger than any real one: +inf, or 2**30 for integers."""
  return jnp.inf if jnp.issubdtype(dtype, jnp.floating) else _INT_WORST


def order_keys(values):
  """float32 keys that sort exactly as ``values`` do (XLA's CPU top_k is ~20x
  slower on int32 than on float32).

  Floats are their own keys. Integers in [0, 2**30] are bit-cast: the float32
  whose bits are ``value + 2**23`` -- positive normal floats order as their
  bit patterns -- so no two distinct integers share a key, however large
  (a plain conversion to float32 would merge them above 2**24).
  """
  if jnp.issubdtype(values.dtype, jnp.floating):
    return values.astype(jnp.float32)
  return jax.lax.bitcast_convert_type(values.astype(jnp.int32) + (1 << 23), jnp.float32)


def as_float_distances(d):
  """Distances from _search_tile as float32, with +inf for padding rows."""
  return jnp.where(d == _worst(d.dtype), jnp.inf, d.astype(jnp.float32))


def smallest_k(values_TxN, k: int):
  """Positions (T, k) of the k smallest values of each row, as a stable
  ``jax.lax.top_k(-order_keys(values), k)`` gives them (equal values: lower
  position first); exact for floats and for integers in [0, 2**30].

  Long rows go through chunks: the k smallest values lie in the k chunks of
  16 with the smallest minima (each chunk ahead of an element's chunk holds a
  smaller value than that element), so one top_k picks k chunks and a second
  picks k values among their 16 k: a min-reduction, fused with the distance
  computation, and top_k over N / 16 and 16 k elements instead of N
  (benchmarks/topk_speed.py: 1.9x to 4.5x faster on rows of 50,000).
  """
  t, n = values_TxN.shape
  s = _CHUNK
  key = lambda x: -order_keys(x)
  if n < 4 * k * s:  # short rows: the plain selection is as cheap
    return jax.lax.top_k(key(values_TxN), k)[1]
  pad = (-n) % s  # the worst key after every real element: never picked ahead of one
  v = jnp.pad(values_TxN, ((0, 0), (0, pad)), constant_values=_worst(values_TxN.dtype))
  v = v.reshape(t, -1, s)
  _, chunks = jax.lax.top_k(key(jnp.min(v, axis=2)), k)
  chunks = jnp.sort(chunks, axis=1)  # back in position order, for ties
  cand = jnp.take_along_axis(v, chunks[:, :, None], axis=1).reshape(t, k * s)
  _, pos = jax.lax.top_k(key(cand), k)
  return jnp.take_along_axis((chunks[:, :, None] * s + jnp.arange(s)).reshape(t, k * s), pos, 1)


def default_tiles(metric: str) -> tuple[int, int]:
  """Largest (query_tile, database_tile): for L1 the distance block stays
  cache-sized; for L2 / cosine a (256, 65536) block is a large matrix product
  with long rows for smallest_k (measured in benchmarks/knn_speed.py)."""
  return (64, 1024) if metric == "l1" else (256, 65536)


def even_tile(total: int, largest: int, multiple: int = 1) -> int:
  """The smallest tile, a multiple of `multiple`, that covers `total` in as
  few tiles as tiles of `largest` do (so the last tile wastes little)."""
  total = max(total, 1)
  tile = -(-total // -(-total // largest))
  return -(-tile // multiple) * multiple


def tile_sizes(metric: str, num_queries: int, num_database: int, query_tile=None,
               database_tile=None) -> tuple[int, int]:
  """(query_tile, database_tile) for a search: the given sizes, or even splits
  within default_tiles."""
  qt, dt = default_tiles(metric)
  qt = query_tile or even_tile(num_queries, qt, 8 if num_queries > 8 else 1)
  dt = database_tile or even_tile(num_database, dt, _CHUNK if num_database > _CHUNK else 1)
  return max(1, min(qt, num_queries)), max(1, min(dt, num_database))


def checked_inputs(queries_QxD, database_NxD, k, metric, num_database: int | None = None):
  """(queries, database, k) as arrays and an int, or a clear ValueError.

  num_database: the real rows of a database that carries padding rows after them.
  """
  distances.check_metric(metric)
  queries_QxD, database_NxD = jnp.asarray(queries_QxD), jnp.asarray(database_NxD)
  distances._check_pair(queries_QxD, database_NxD)
  n = database_NxD.shape[0] if num_database is None else num_database
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
    raise ValueError(f"k must be an integer in [1, {n}] (the database size), got {k!r}")
  return queries_QxD, database_NxD, int(k)


def _pad_rows(x, multiple):
  pad = (-x.shape[0]) % multiple
  return jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)) if pad else x


def search(queries_QxD, database_NxD, k: int, *, metric: str = "l2",
           query_tile: int | None = None, database_tile: int | None = None,
           callback: Callable[[int, int], None] | None = None, mesh=None,
           shard: str = "queries"):
  """Exact k nearest neighbours of every query in the database.

  Args:
    queries_QxD: (Q, D) uint8 or float queries.
    database_NxD: (N, D) database, same feature size.
    k: number of neighbours, 1 <= k <= N.
    metric: "l1", "l2", "l2_squared" or "cosine".
    query_tile, database_tile: tile sizes (memory is bounded by them).
    callback: called as ``callback(queries_done, Q)`` after each query tile.
    mesh: a ``jax.sharding.Mesh`` (see jaxlin.sharding) to search on many
      devices, splitting the queries (shard="queries") or the database
      (shard="database"); same results as on one device.

  Returns:
    (dists_QxK float32, idx_QxK int32): nearest first; ties at equal distance
    in increasing database index.
  """
  if mesh is not None and mesh.devices.size > 1:
    from jaxlin import sharding  # pylint: disable=g-import-not-at-top  (it builds on this module)
    out = sharding.search(queries_QxD, database_NxD, k, mesh=mesh, metric=metric, mode=shard,
                          query_tile=query_tile, database_tile=database_tile)
    if callback is not None:
      callback(len(queries_QxD), len(queries_QxD))
    return out
  queries_QxD, database_NxD, k = checked_inputs(queries_QxD, database_NxD, k, metric)
  n = database_NxD.shape[0]
  qt, dt = tile_sizes(metric, queries_QxD.shape[0], n, query_tile, database_tile)

  mode = _mode(queries_QxD, database_NxD, metric)
  db, db_aux, mu = _prepare_tiles(database_NxD, n, mode=mode, tile=dt)
  queries = _transform_queries(queries_QxD, mode, mu)

  q_total = queries.shape[0]
  out_d, out_i = [], []
  for start in range(0, q_total, qt):
    q = queries[start:start + qt]
    valid = q.shape[0]
    d, i = _search_tile(_pad_rows(q, qt), db, db_aux, n, k=k, mode=mode)
    d = as_float_distances(d)
    if metric == "l2":
      d = jnp.sqrt(d)
    out_d.append(d[:valid])
    out_i.append(i[:valid])
    if callback is not None:
      out_i[-1].block_until_ready()
      callback(start + valid, q_total)
  return jnp.concatenate(out_d), jnp.concatenate(out_i)


@functools.partial(jax.jit, static_argnames=("num_classes", "tie_break"))
def vote(neighbor_labels_QxK, num_classes: int, *, tie_break: str = "smallest_label"):
  """Majority vote over each row of neighbour labels (nearest first).

  tie_break="smallest_label": a tie between classes goes to the smallest
  label (as scikit-learn and the course code). tie_break="nearest": to the
  tied class whose first member is nearest.
  Returns (Q,) int32 predicted labels.
  """
  if tie_break not in TIE_BREAKS:
    raise ValueError(f"unknown tie_break {tie_break!r}; choose one of {TIE_BREAKS}")
  labels = jnp.asarray(neighbor_labels_QxK)
  k = labels.shape[1]
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)  # (Q, K, C)
  counts = one_hot.sum(axis=1)
  if tie_break == "smallest_label":
    return jnp.argmax(counts, axis=1).astype(jnp.int32)  # argmax: first (smallest) maximum
  position = jnp.arange(k, dtype=jnp.int32)[None, :, None]
  first = jnp.min(jnp.where(one_hot > 0, position, k), axis=1)  # (Q, C)
  is_max = counts == counts.max(axis=1, keepdims=True)
  return jnp.argmin(jnp.where(is_max, first, k + 1), axis=1).astype(jnp.int32)


def predict(train_x, train_y, test_x, *, k: int | Sequence[int], metric: str = "l2",
            num_classes: int, tie_break: str = "smallest_label",
            callback: Callable[[int, int], None] | None = None, mesh=None, shard: str = "queries"):
  """kNN predictions. ``k`` an int -> (Q,); a sequence of ints -> (len(k), Q),
  all from ONE search with the largest k."""
  ks = [k] if isinstance(k, (int, np.integer)) else list(k)
  if not ks or any(not isinstance(kk, (int, np.integer)) or kk < 1 for kk in ks):
    raise ValueError(f"k must be a positive int or a non-empty sequence of them, got {k!r}")
  _, idx = search(test_x, train_x, max(ks), metric=metric, callback=callback, mesh=mesh, shard=shard)
  labels = jnp.asarray(train_y)[idx]
  preds = jnp.stack([vote(labels[:, :kk], num_classes, tie_break=tie_break) for kk in ks])
  return preds[0] if isinstance(k, (int, np.integer)) else preds
