"""Exact k-nearest-neighbour search, majority vote and prediction.

``search`` streams over query tiles (a host loop, one compiled program for
all tiles) and, inside each, over database tiles (``lax.scan``) with a running
top-k merge, so memory is bounded by the tile sizes: no (Q, N, D) array, and
no (Q, N) array beyond one query tile.

Tie rule: neighbours at equal distance come in increasing database index, as
``jax.lax.top_k`` orders them (it is stable, and the running merge keeps the
candidates of earlier tiles, which have lower indices, first).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import distances

TIE_BREAKS = ("smallest_label", "nearest")


def _prepare_database(database_NxD, metric):
  """Per-search preparation of the database and the matching query transform."""
  if metric == "l1":
    return database_NxD, None, lambda q: q
  db = distances.as_float(database_NxD)
  if metric == "cosine":
    db = db / jnp.maximum(jnp.linalg.norm(db, axis=1, keepdims=True), 1e-30)
    return db, None, lambda q: q / jnp.maximum(jnp.linalg.norm(q, axis=1, keepdims=True), 1e-30)
  mu = jnp.mean(db, axis=0)  # centring: L2 is translation invariant, float32 cancels less
  db = db - mu
  return db, distances.squared_norms(db), lambda q: q - mu


def _tile_distances(q, q_sq, db_tile, db_sq_tile, metric):
  if metric == "l1":
    return distances.l1_tile(q, db_tile)
  if metric == "cosine":
    return 1.0 - jnp.matmul(q, db_tile.T, precision=jax.lax.Precision.HIGHEST)
  return distances.l2_squared_from_dot(q, db_tile, q_sq, db_sq_tile)


@functools.partial(jax.jit, static_argnames=("k", "metric"))
def _search_tile(q_TxD, db_tiles_MxSxD, db_sq_MxS, n_valid, *, k, metric):
  """Top-k over all database tiles for one query tile, by a running merge."""
  t = q_TxD.shape[0]
  tile = db_tiles_MxSxD.shape[1]
  q_sq = None if metric in ("l1", "cosine") else distances.squared_norms(q_TxD)

  def body(carry, inputs):
    best_d, best_i = carry
    m, db_tile, db_sq = inputs
    d = _tile_distances(q_TxD, q_sq, db_tile, db_sq, metric).astype(jnp.float32)
    idx = m * tile + jnp.arange(tile, dtype=jnp.int32)
    d = jnp.where(idx[None, :] < n_valid, d, jnp.inf)
    # Earlier candidates (lower indices) first, so the stable top_k keeps ties by index.
    cand_d = jnp.concatenate([best_d, d], axis=1)
    cand_i = jnp.concatenate([best_i, jnp.broadcast_to(idx, (t, tile))], axis=1)
    neg, pos = jax.lax.top_k(-cand_d, k)
    return (-neg, jnp.take_along_axis(cand_i, pos, axis=1)), None

  init = (jnp.full((t, k), jnp.inf, jnp.float32), jnp.full((t, k), -1, jnp.int32))
  steps = jnp.arange(db_tiles_MxSxD.shape[0], dtype=jnp.int32)
  (best_d, best_i), _ = jax.lax.scan(body, init, (steps, db_tiles_MxSxD, db_sq_MxS))
  if metric == "l2":
    best_d = jnp.sqrt(best_d)
  return best_d, best_i


def default_tiles(metric: str) -> tuple[int, int]:
  """(query_tile, database_tile) sizes that keep intermediates small."""
  return (128, 512) if metric == "l1" else (1024, 4096)


def _pad_rows(x, multiple):
  pad = (-x.shape[0]) % multiple
  return jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)) if pad else x


def search(queries_QxD, database_NxD, k: int, *, metric: str = "l2",
           query_tile: int | None = None, database_tile: int | None = None,
           callback: Callable[[int, int], None] | None = None):
  """Exact k nearest neighbours of every query in the database.

  Args:
    queries_QxD: (Q, D) uint8 or float queries.
    database_NxD: (N, D) database, same feature size.
    k: number of neighbours, 1 <= k <= N.
    metric: "l1", "l2", "l2_squared" or "cosine".
    query_tile, database_tile: tile sizes (memory is bounded by them).
    callback: called as ``callback(queries_done, Q)`` after each query tile.

  Returns:
    (dists_QxK float32, idx_QxK int32): nearest first; ties at equal distance
    in increasing database index.
  """
  distances.check_metric(metric)
  queries_QxD, database_NxD = jnp.asarray(queries_QxD), jnp.asarray(database_NxD)
  distances._check_pair(queries_QxD, database_NxD)
  n = database_NxD.shape[0]
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
    raise ValueError(f"k must be an integer in [1, {n}] (the database size), got {k!r}")
  k = int(k)
  qt, dt = default_tiles(metric)
  qt = max(1, min(query_tile or qt, queries_QxD.shape[0]))
  dt = max(1, min(database_tile or dt, n))

  db, db_sq, transform_q = _prepare_database(database_NxD, metric)
  db = _pad_rows(db, dt).reshape(-1, dt, db.shape[1])
  db_sq = (jnp.zeros(db.shape[:2], jnp.float32) if db_sq is None
           else _pad_rows(db_sq, dt).reshape(db.shape[:2]))
  queries = transform_q(queries_QxD if metric == "l1" else distances.as_float(queries_QxD))

  q_total = queries.shape[0]
  out_d, out_i = [], []
  for start in range(0, q_total, qt):
    q = queries[start:start + qt]
    valid = q.shape[0]
    d, i = _search_tile(_pad_rows(q, qt), db, db_sq, n, k=k, metric=metric)
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
            callback: Callable[[int, int], None] | None = None):
  """kNN predictions. ``k`` an int -> (Q,); a sequence of ints -> (len(k), Q),
  all from ONE search with the largest k."""
  ks = [k] if isinstance(k, (int, np.integer)) else list(k)
  if not ks or any(not isinstance(kk, (int, np.integer)) or kk < 1 for kk in ks):
    raise ValueError(f"k must be a positive int or a non-empty sequence of them, got {k!r}")
  _, idx = search(test_x, train_x, max(ks), metric=metric, callback=callback)
  labels = jnp.asarray(train_y)[idx]
  preds = jnp.stack([vote(labels[:, :kk], num_classes, tie_break=tie_break) for kk in ks])
  return preds[0] if isinstance(k, (int, np.integer)) else preds
