"""k-fold indices (shuffled, seeded, optionally stratified) and cross-validation of kNN.

Folds. With ``shuffle=True`` (the default) the rows are put in the order
``perm = np.random.default_rng(seed).permutation(n)`` and cut by
``np.array_split(perm, num_folds)``; the training rows of a fold are the other
folds concatenated in order. So permuting the data with the same generator
and taking contiguous folds gives identical folds (and identical results).
``shuffle=False`` uses ``perm = arange(n)``: contiguous folds, which on data
sorted by class leave classes out of training. Stratified folds deal each
class's rows (in ``perm`` order) round-robin to the folds, continuing the
count from class to class, so every fold holds each class in proportion and
the fold sizes are those of ``np.array_split``.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import _checks, distances, knn, topk
from jaxlin.errors import InputError

__all__ = ["cross_validate_knn", "kfold_indices"]


def _permutation(n: int, shuffle: bool, seed) -> np.ndarray:
  if not _checks.flag(shuffle, "shuffle"):
    return np.arange(n)
  try:
    rng = np.random.default_rng(seed)
  except (TypeError, ValueError) as e:
    raise InputError(f"seed must be a non-negative int or a sequence of them, got {seed!r}",
                     argument="seed") from e
  return rng.permutation(n)


def kfold_indices(n: int, num_folds: int, *, shuffle: bool = True, seed=0,
                  labels=None) -> list[tuple[np.ndarray, np.ndarray]]:
  """(train_idx, val_idx) for each of ``num_folds`` folds of range(n).

  Args:
    n: number of examples.
    num_folds: 2 <= num_folds <= n.
    shuffle: shuffle with ``seed`` first (see the module docstring); else
      contiguous folds in order.
    seed: an int or a sequence of ints for ``np.random.default_rng``.
    labels: (n,) class labels: stratified folds (each class in proportion).

  Returns:
    A list of (train_idx, val_idx) int arrays. Fold sizes follow
    ``np.array_split`` (the first ``n % num_folds`` folds get one more).
  """
  n = _checks.int_at_least(n, "n", 0)
  num_folds = _checks.concrete_int(num_folds, "num_folds")
  if num_folds < 2:
    raise InputError(f"num_folds must be at least 2, got {num_folds}", argument="num_folds")
  if n < num_folds:
    if n < 2:
      raise InputError(f"n={n} examples cannot make folds (at least 2 are needed)",
                       argument="n")
    raise InputError(f"cannot split {n} examples into {num_folds} folds; use num_folds <= {n}",
                     argument="num_folds")
  perm = _permutation(n, shuffle, seed)
  if labels is None:
    folds = np.array_split(perm, num_folds)
  else:
    labels = np.asarray(labels)
    if labels.shape != (n,):
      raise InputError(f"labels must have shape ({n},), got {labels.shape}", argument="labels")
    try:
      classes, cls = np.unique(labels[perm], return_inverse=True)  # class of perm[j]
    except TypeError:  # e.g. an object array mixing numbers and strings
      raise InputError(f"labels must be numbers or strings that compare with each other, "
                       f"got dtype {labels.dtype}", argument="labels") from None
    if any(isinstance(c, (float, complex)) and not np.isfinite(c) for c in classes.tolist()):
      raise InputError("labels hold NaN or inf: every example needs a class to stratify by",
                       argument="labels")
    fold_of = np.empty(n, np.int64)  # fold of perm[j]
    count = 0
    for c in range(int(cls.max()) + 1):
      where = np.flatnonzero(cls == c)
      fold_of[where] = (count + np.arange(len(where))) % num_folds
      count += len(where)
    folds = [perm[fold_of == f] for f in range(num_folds)]  # in perm order
  return [(np.concatenate(folds[:i] + folds[i + 1:]), folds[i]) for i in range(num_folds)]


def cross_validate_knn(x, y, ks: int | Sequence[int], *, num_folds: int = 5,
                       metric: str = "l2", num_classes: int, tie_break: str = "smallest_label",
                       callback: Callable[[int, int], None] | None = None, shuffle: bool = True,
                       seed=0, stratify: bool = False, mesh=None,
                       layout: str = "queries", method: str = "auto",
                       image_shape=None) -> np.ndarray:
  """Accuracy of kNN for every fold and k: (num_folds, len(ks)) float64
  (``ks`` an int: (num_folds,)), each the exact fraction of a fold's rows right.

  Folds from ``kfold_indices(len(x), num_folds, shuffle=shuffle, seed=seed,
  labels=y if stratify else None)``. Each fold runs ONE search (with
  max(ks)) and votes for every k from it; folds of equal shapes reuse one
  compiled program. uint8 / int8 rows (pixels) on one device, with method
  "auto" or "brute", compute each pair of folds once instead (exact brute force;
  "pruned" keeps the cascade): the distances of fold g to
  fold f are those of f to g, transposed, so half the distance work, with the
  same exact integer distances, selection and vote as one search per fold (the
  same answers). It applies where each pair of folds is real work (S^2 D >=
  2**30 for folds of S rows and D features); elsewhere each fold runs one
  search. Where every fold's rows fit in 512 MiB ((4 F^2 + 8 F) S^2 bytes for F
  folds: up to about 9,800 CIFAR-10 images in 5 folds) each fold selects from
  whole rows; beyond, chunks of rows stream through a running k best of every
  fold (about 24 F S max(ks) bytes, which must fit 512 MiB too). On a CPU those
  selections and merges run on the host (``topk.smallest_k_host``: several times
  faster than XLA's top_k for k near 100). ``callback(fold_done,
  num_folds)`` is called after each fold. x: (N, D) rows; y: (N,) labels in [0,
  num_classes). ``mesh``, ``layout``, ``method`` and ``image_shape`` as in
  ``jaxlin.knn.search``. Neighbours at equal distances are ordered as
  ``knn.predict(x[tr], y[tr], x[va])`` orders them: by position in the fold's
  training rows x[tr], which follow ``kfold_indices``' (shuffled) order, not by
  row of x.
  """
  _checks.outside_jit("cross_validate_knn (it returns numpy accuracies)", "x", x, y)
  knn.not_an_index(x, "x")
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim != 2:
    raise InputError(f"x must be 2-D (examples, features), got shape {x.shape}; "
                     f"{_checks.rows_fix(x.shape)}", argument="x")
  if len(x) == 0:
    raise InputError("x is empty: cross-validation needs at least num_folds rows", argument="x")
  if x.shape[1] == 0:
    raise InputError(f"x has no features (shape {x.shape}): distances need D >= 1",
                     argument="x")
  _checks.finite(x, "x")
  num_classes = _checks.num_classes(num_classes)
  _checks.labels(y, num_classes, "y", len(x))
  single = np.ndim(ks) == 0
  ks = knn.checked_ks(ks, "ks")
  _checks.callback(callback, "callback(folds_done, num_folds)")
  if layout not in knn.LAYOUTS:
    raise InputError(f"unknown layout {layout!r}; choose one of {', '.join(knn.LAYOUTS)}",
                     argument="layout")
  from jaxlin import bounds  # pylint: disable=import-outside-toplevel  # bounds imports knn
  bounds.checked_image_shape(image_shape, x.shape[1])
  folds = kfold_indices(len(x), num_folds, shuffle=shuffle, seed=seed,
                        labels=y if _checks.flag(stratify, "stratify") else None)
  smallest = min(len(tr) for tr, _ in folds)
  if max(ks) > smallest:
    raise InputError(f"k={max(ks)} exceeds the {smallest} training examples of a fold",
                     argument="ks")
  knn._checked_tie_break(tie_break)  # pylint: disable=protected-access
  kernel = _shared_kernel(x, metric, mesh, method, folds, max(ks))
  if kernel is not None:  # pixels: each pair of folds once
    fold_preds = _shared_predictions(x, y, folds, ks, kernel=kernel,
                                     num_classes=num_classes, tie_break=tie_break)
  else:  # one search per fold
    fold_preds = (np.asarray(knn._predict(  # pylint: disable=protected-access  # errors name x
        x[tr], y[tr], x[va], k=ks, metric=metric, num_classes=num_classes, tie_break=tie_break,
        callback=None, mesh=mesh, layout=layout, method=method, image_shape=image_shape,
        names=("x", "x"), y_name="y")) for tr, va in folds)
  out = np.zeros((num_folds, len(ks)), np.float64)
  for f, preds in enumerate(fold_preds):
    va = folds[f][1]
    out[f] = [np.count_nonzero(p == y[va]) / len(va) for p in preds]
    if callback is not None:
      callback(f + 1, num_folds)
  return out[:, 0] if single else out


# Cross-validation of pixels computes each pair of folds once: fold g's distances to fold f
# are fold f's to fold g, transposed, so the folds' searches take half the distance work.
# Where they fit, each fold selects its neighbours from whole rows: with F folds of at most
# S rows, at most (4 F^2 + 8 F) S^2 bytes, a bound (every fold's rows, kept until the last
# fold's program, 4 F (F - 1) S^2 bytes of int32; that program's block of later folds
# before it joins its rows, and a host selection's copies of one fold's rows, 8 (F - 1) S^2)
# up to _WHOLE_ROWS_BYTES: 140 MB for 5 folds of 1,000. Beyond, the blocks are streamed:
# chunks of rows of fold f against fold g (about _CHUNK_BYTES of distances each) update a
# running k best of both folds, as a search's database tiles do; the running bests of all
# folds (about 24 F S k bytes with a merge's) must fit _WHOLE_ROWS_BYTES too, else one
# search per fold. Both ways also hold the rows, about 2 F S D bytes (whole rows: the
# host's copy and the prepared rows; streamed: queries and database tiles), and streaming
# up to four chunks' distances (a block and its transpose, while the next pair's are
# computed).
_WHOLE_ROWS_BYTES = 512 * 2 ** 20
# The largest L1 tile of a block of two folds (queries and database rows): a block of two
# 1,000-image folds as one tile took 53 ms against 63 ms with search's 250 x 1,000 tiles,
# and a block of two 4,000-image folds 0.70 s in tiles of 2,000 against 0.84 s in tiles of
# 1,000 (one-off timings, Intel Xeon with AMX, 2026-12-04). L2 takes whole folds
# (_fold_tiles).
_BLOCK_TILE = 2048
_CHUNK_BYTES = 64 * 2 ** 20
# Each pair of folds pays where it is real work (S^2 D >= 2**30, e.g. 5,000 CIFAR-10 images
# in 5 folds: 3 * 10**9). With small blocks (few features, many folds) the calls and the
# selections cost more than they save.
_SHARED_MIN_WORK = 2 ** 30


def _shared_kernel(x, metric, mesh, method, folds, k_max):
  """The exact integer kernel of the shared-blocks path, or None where it does not apply:
  it serves uint8 / int8 rows on one device with method "auto" or "brute" (exact integer
  distances, so its answers are those of one search per fold), with pairs of folds that
  are real work.
  Its inputs are checked as the folds' searches check them. (Where it does not apply, the
  folds' searches check their arguments.)"""
  if (mesh is not None or method not in ("auto", "brute")
      or x.dtype not in (np.uint8, np.int8) or x.shape[1] == 0
      or metric not in ("l1", "l2", "l2_squared")):
    return None
  size = max(len(va) for _, va in folds)
  if size * size * x.shape[1] < _SHARED_MIN_WORK:
    return None
  if (not _fits_whole_rows(len(folds), size)
      and 24 * len(folds) * size * k_max > _WHOLE_ROWS_BYTES):
    return None  # the streamed running bests of every fold (and a merge's) would not fit
  _, _, kernel = distances.checked_inputs(x, x, metric, names=("x", "x"))  # as a fold's search
  # With method="auto" the shared pairs are taken even where a fold's search would take the
  # L2 cascade: on 49,000 CIFAR-10 training images they took 57 s against the cascade's
  # 71 s, with the same answers (benchmarks/cv_speed.py --per_fold_method=auto; WORKSPACE.md).
  # method="pruned" keeps the cascade.
  return kernel if kernel.dtype == "int32" else None


def _shared_predictions(x, y, folds, ks, *, kernel, num_classes, tie_break):
  """For each fold, (len(ks), fold size) predictions, as ``knn.predict(x[tr], y[tr], x[va])``
  gives them: the same exact distances, in the columns of x[tr] (the other folds in order),
  the same stable selection (ties: lower position) and vote."""
  size = max(len(va) for _, va in folds)
  neighbours = _whole_rows if _fits_whole_rows(len(folds), size) else _streamed
  for (tr, _), pos in zip(folds, neighbours(x, folds, max(ks), kernel=kernel)):
    labels = _checks.labels(y[tr], num_classes, "y", len(tr))
    yield np.asarray(knn._votes(  # pylint: disable=protected-access
        jnp.asarray(labels), pos, tuple(ks), num_classes, tie_break))


def _fits_whole_rows(num_folds: int, size: int) -> bool:
  return (4 * num_folds ** 2 + 8 * num_folds) * size * size <= _WHOLE_ROWS_BYTES


def _whole_rows(x, folds, k, *, kernel):
  """Each fold's k nearest (positions in its training rows), fold by fold. The rows are laid
  out fold after fold and prepared once. Fold f's program computes its distances to all the
  later folds' rows in one block and takes those to each earlier fold g from fold g's rows,
  transposed: each pair of folds once. Each fold then selects from its whole rows, before
  the next fold's program runs: on a CPU on the host (``topk.smallest_k_host``, several
  times faster there than XLA's top_k at large k)."""
  sizes = tuple(len(va) for _, va in folds)
  platform = knn._platform(None, x)  # pylint: disable=protected-access
  rows = x[np.concatenate([va for _, va in folds])]  # fold after fold: one copy
  db, aux = _prepared_rows(jnp.asarray(rows), kernel=kernel)
  done = []
  for f in range(len(folds)):
    done.append(_fold_rows(db, aux, tuple(done), f=f, kernel=kernel, sizes=sizes))
    # On a CPU the host waits for the program, then selects: one thing at a time, on
    # both cores. Selecting while the next fold's program runs was no faster (5 folds of
    # 1,000 CIFAR-10 images, L2, medians: 116-119 ms against 121-126 ms; WORKSPACE.md,
    # 2026-12-05).
    yield (topk.smallest_k_host(done[f], k) if platform == "cpu"
           else topk.smallest_k(done[f], k))


@functools.partial(jax.jit, static_argnames=("kernel",))
def _prepared_rows(rows_NxD, *, kernel):
  """(rows, aux): the rows as the kernel's tiles use them, as a database and as queries
  alike (the shared kernels, l1_int and l2_int8, have no centre: their ``transform`` of
  rows is their ``prepare``)."""
  db, aux, _ = kernel.prepare(rows_NxD, rows_NxD.shape[0])
  return db, aux


@functools.partial(jax.jit, static_argnames=("kernel", "query_tile"))
def _tiled_block(q_AxD, q_aux_A, tiles, aux_MxS, *, kernel, query_tile: int):
  """(A, M * S) distances of every query to every database row in the kernel's dtype
  (exact int32 for the integer kernels: the same values as a search's), tile by tile as a
  search computes them, from queries already transformed (``kernel.transform``; A a
  multiple of ``query_tile``) and a database already prepared and cut into tiles
  (``kernel.prepare``, ``kernel.tiles``)."""
  q = q_AxD.reshape(-1, query_tile, q_AxD.shape[1])
  q_aux = q_aux_A.reshape(-1, query_tile)

  def query_rows(args):
    qt, qa = args
    d = jax.lax.map(lambda t: kernel.tile(qt, qa, t[0], t[1]), (tiles, aux_MxS))  # (M, T, S)
    return d.transpose(1, 0, 2).reshape(query_tile, -1)

  return jax.lax.map(query_rows, (q, q_aux)).reshape(q_AxD.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("f", "kernel", "sizes"))
def _fold_rows(db, aux, earlier, *, f, kernel, sizes):
  """Fold f's (sizes[f], N - sizes[f]) distances to the other folds' rows in order, by the
  kernel's tiles as a search computes them (the same exact integers). ``db``, ``aux``: the
  prepared rows, fold after fold; ``earlier``: the rows of each earlier fold, whose columns
  of fold f, transposed, are fold f's columns of that fold."""
  start, end, n = sum(sizes[:f]), sum(sizes[:f + 1]), sum(sizes)
  parts = [e[:, start - sizes[g]:end - sizes[g]].T for g, e in enumerate(earlier)]
  if end < n:  # the later folds' rows: one block
    q, q_aux, later, later_aux = db[start:end], aux[start:end], db[end:], aux[end:]
    if kernel.feature_major:  # L1: tiles of at most _BLOCK_TILE rows, as in _streamed
      tile = _fold_tiles(kernel, sizes)[0]
      pad = knn._pad_rows  # pylint: disable=protected-access  # a search's padding
      parts.append(_tiled_block(
          pad(q, tile), pad(q_aux, tile), kernel.tiles(pad(later, tile), tile),
          pad(later_aux, tile).reshape(-1, tile), kernel=kernel,
          query_tile=tile)[:sizes[f], :n - end])
    else:  # L2: one product (one of 1,000 x 4,000 rows took 9 ms, four of 1,000 x 1,000 10)
      parts.append(kernel.tile(q, q_aux, later, later_aux))
  return jnp.concatenate(parts, axis=1)


def _fold_tiles(kernel, sizes) -> tuple[int, int]:
  """(queries, database rows) per tile of a block of two folds: for L1, at most
  _BLOCK_TILE each; for the product kernel (L2), one tile of a whole fold: one product of
  4,000 x 4,000 rows took 64 ms against 98 ms in tiles of 1,000 (Intel Xeon with AMX,
  2026-12-04)."""
  tile = knn._even_tile(max(sizes), _BLOCK_TILE, 8)  # pylint: disable=protected-access
  if kernel.feature_major:
    return tile, tile
  whole = -(-max(sizes) // 8) * 8
  return whole, whole


def _prepare_folds(x, folds, kernel, rows: int, db_rows: int, *, database_tile):
  """``_prepared_folds`` of every fold's rows padded with zeros: ``rows`` as queries, the
  first ``db_rows`` as database tiles."""
  padded = max(rows, db_rows)
  stacked = x[np.stack([np.pad(va, (0, padded - len(va))) for _, va in folds])]  # one copy
  for f, (_, va) in enumerate(folds):
    stacked[f, len(va):] = 0  # padding rows: zeros
  return _prepared_folds(jnp.asarray(stacked), kernel=kernel,
                         sizes=tuple(len(va) for _, va in folds), rows=rows, db_rows=db_rows,
                         database_tile=database_tile)


@functools.partial(jax.jit, static_argnames=("kernel", "sizes", "rows", "db_rows",
                                             "database_tile"))
def _prepared_folds(folds_FxPxD, *, kernel, sizes, rows, db_rows, database_tile):
  """Every fold's padded rows, the first ``rows`` as queries and the first ``db_rows`` as
  database tiles of ``database_tile`` rows: (q, q_aux, tiles, aux), each stacked over the
  folds."""
  out = []
  for f, size in enumerate(sizes):
    db, aux, centre = kernel.prepare(folds_FxPxD[f, :db_rows], size)
    q, q_aux = kernel.transform(folds_FxPxD[f, :rows], centre)
    out.append((q, q_aux, kernel.tiles(db, database_tile), aux.reshape(-1, database_tile)))
  return tuple(jnp.stack(parts) for parts in zip(*out))


@functools.partial(jax.jit, static_argnames=("k", "transposed"), donate_argnums=(0, 1))
def _merge_rows(best_d, best_i, d_RxC, n_cols, offset, row0, *, k, transposed=False):
  """The running k best (distances, positions) of rows [row0, row0 + R) updated with the
  first ``n_cols`` columns of d (of d.T with ``transposed``), at positions offset + column.
  Every position in d comes after those in the running best, and ties keep the lower
  position, as in a search."""
  d_RxC = d_RxC.T if transposed else d_RxC
  r = d_RxC.shape[0]
  rows_d, rows_i = knn._merge_best(  # pylint: disable=protected-access  # a search's merge
      jax.lax.dynamic_slice_in_dim(best_d, row0, r), jax.lax.dynamic_slice_in_dim(best_i, row0, r),
      d_RxC, offset, offset + n_cols, k=k)
  return (jax.lax.dynamic_update_slice_in_dim(best_d, rows_d, row0, 0),
          jax.lax.dynamic_update_slice_in_dim(best_i, rows_i, row0, 0))


@functools.partial(jax.jit, static_argnames=("rows", "kernel", "tile", "transposed"))
def _chunk_block(prepared, f, g, r0, *, rows, kernel, tile, transposed):
  """(distances of rows [r0, r0 + rows) of fold f to fold g's padded rows, by the kernel's
  tiles as a search computes them; their transpose, or None) in one program (f, g, r0:
  traced, so one program serves every chunk)."""
  q, q_aux, tiles, aux = prepared
  d = _tiled_block(
      jax.lax.dynamic_slice_in_dim(q[f], r0, rows),
      jax.lax.dynamic_slice_in_dim(q_aux[f], r0, rows), tiles[g], aux[g], kernel=kernel,
      query_tile=tile)
  return d, (d.T if transposed else None)


def _merge_on_host(best_d, best_i, d_RxC, n_cols, offset, row0, *, k, transposed=False):
  """``_merge_rows`` on numpy running bests, updated in place and returned, by
  ``topk.smallest_k_host``: the k best of the new columns, then the k best of those and
  the running best (ahead of them: lower positions), so ties go to the lower index, as in
  a search."""
  d = np.asarray(d_RxC)
  d = (d.T if transposed else d)[:, :n_cols]
  r = d.shape[0]
  pos = topk.smallest_k_host(d, min(k, n_cols))
  cand_d = np.concatenate([best_d[row0:row0 + r], np.take_along_axis(d, pos, axis=1)], axis=1)
  cand_i = np.concatenate([best_i[row0:row0 + r], offset + pos], axis=1)
  keep = topk.smallest_k_host(cand_d, k)
  best_d[row0:row0 + r] = np.take_along_axis(cand_d, keep, axis=1)
  best_i[row0:row0 + r] = np.take_along_axis(cand_i, keep, axis=1)
  return best_d, best_i


def _streamed(x, folds, k, *, kernel):
  """Each fold's k nearest, with bounded memory: for f = 0, 1, ... and chunks of fold f's
  rows in order, the chunk's distances to each later fold g update the running best of the
  chunk (columns of fold g) and of fold g (columns of the chunk). So every fold meets its
  training rows in increasing position, and fold f is complete once its own turn ends."""
  sizes = [len(va) for _, va in folds]
  platform = knn._platform(None, x)  # pylint: disable=protected-access
  qt, dt = _fold_tiles(kernel, sizes)
  cols = -(-max(sizes) // dt) * dt  # a fold as a database: whole tiles
  if not kernel.feature_major:  # one product per chunk: as many rows as the memory allows
    qt = min(cols, max(8, _CHUNK_BYTES // (4 * cols) // 8 * 8))
  rows = min(max(qt, _CHUNK_BYTES // (4 * cols) // qt * qt), -(-cols // qt) * qt)
  height = -(-cols // rows) * rows  # every fold's rows padded to whole chunks
  prepared = _prepare_folds(x, folds, kernel, height, cols, database_tile=dt)
  # On a CPU the merges run on the host (topk.smallest_k_host): for 20,000 images in 5
  # folds, XLA's merges of 100 of 4,100 per row took most of the time.
  host = platform == "cpu"
  merge, new = (_merge_on_host, np.full) if host else (_merge_rows, jnp.full)
  best = [(new((height, k), topk.worst(jnp.int32), np.int32), new((height, k), -1, np.int32))
          for _ in folds]
  first = lambda f, g: sum(sizes[h] for h in range(g) if h != f)  # fold g's in fold f's tr
  steps = [(f, r0, g) for f in range(len(folds) - 1) for r0 in range(0, sizes[f], rows)
           for g in range(f + 1, len(folds))]  # the last fold is complete by its turn
  block = lambda f, r0, g: _chunk_block(prepared, f, g, r0, rows=rows, kernel=kernel,
                                        tile=qt, transposed=host)  # XLA's transpose: faster
  upcoming = block(*steps[0])
  for i, (f, r0, g) in enumerate(steps):
    d, d_t = jax.block_until_ready(upcoming)  # one program at a time (see _whole_rows)
    if i + 1 < len(steps):  # the next block runs while these merges do
      upcoming = block(*steps[i + 1])
    n_chunk = min(rows, sizes[f] - r0)
    best[f] = merge(*best[f], d, sizes[g], first(f, g), r0, k=k)
    best[g] = (merge(*best[g], d_t, n_chunk, first(g, f) + r0, 0, k=k) if host else
               merge(*best[g], d, n_chunk, first(g, f) + r0, 0, k=k, transposed=True))
    del d, d_t
    for done in range(f, steps[i + 1][0] if i + 1 < len(steps) else len(folds)):
      yield best[done][1][:sizes[done]]  # fold f's turn has ended (and the last fold's)
      best[done] = None
