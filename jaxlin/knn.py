"""Exact k-nearest-neighbour search, majority vote and prediction.

Public API: ``search`` (the k nearest database rows of every query, on one
device or a mesh), ``vote`` (majority vote over neighbour labels),
``predict`` (search + vote, for many k from one search), and the constants
``METRICS``, ``METHODS``, ``LAYOUTS``, ``TIE_BREAKS``.

How search runs. The distance kernel (``jaxlin.distances.kernel_for``:
metric and dtypes) prepares the database once -- centred, normalised or
shifted to int8, cut into tiles of ``database_tile`` rows -- in one compiled
program. Queries then go in blocks (a host loop, one compiled program for
every block of a shape): inside, a ``lax.scan`` over database tiles computes
each (query tile, database tile) block of distances and merges its k best
with the running k best. Memory is bounded by the tile sizes: no (Q, N, D)
array, and no (Q, N) array beyond one tile. The compiled programs are cached
by (mesh, layout, kernel, k, shapes): CV folds and splits of the same shapes
compile once.

Layouts on a mesh (``mesh``: a 1-D ``jax.sharding.Mesh``, see
``jaxlin.sharding.make_mesh``); both give the one-device answer, ties included, on
integer inputs, whose distances are exact (float distances carry rounding that can
differ with how the work is split, so rows at equal or nearly equal distance may come
in another order):

* ``layout="queries"`` -- each block holds one query tile per device; the
  database is replicated on every device (fast when it fits on one).
* ``layout="database"`` -- database rows split in equal contiguous blocks,
  one per device in mesh order (as ``jaxlin.sharding.rows_to_global`` lays
  them); each device finds its local k best, and the candidates of all
  devices are merged by (distance, global index). ``database_NxD`` may be a
  global array already laid along the mesh, padded to
  ``sharding.padded_rows(num_database, mesh)`` rows, of which
  ``num_database`` are real (each host then holds only its own rows).

Tie rule: neighbours at equal computed distance come in increasing database index
(``jax.lax.top_k`` is stable; the running merge and the device merge keep
earlier, lower-index candidates first). Float distances are rounded, so rows at
the same true distance (duplicates excepted) can get computed distances a rounding
apart and come in either order. Integer-valued data (counts, binary features,
pixels) get exact distances and ties with L1, and with L2 on uint8 or int8 rows
of at most 16,512 features (other integers, and floats that all hold whole
numbers, in L2: while the rows' squared norms stay below 2**24, as above).
Float64 numpy inputs (rounded to float32 without ``jax_enable_x64``) are first
centred in float64 for L1 and L2 in eager calls, so a large common offset keeps
their differences (under ``jax.jit`` they arrive rounded: centre them first).

Exactness: on integer inputs L1 (int16/int32 accumulation) and, on uint8 or
int8 pixels with at most 16,512 features (D * 255**2 < 2**30: 74 x 74 x 3
images), L2 (``distances.int8_products``: an int8 matrix product accumulated in
int32 on CPUs, float32 blocks of 1,024 features elsewhere) compute exact
integer distances, and the selection compares them exactly
(``jaxlin.topk.order_keys``), for any number of rows. So neighbours, ties
included, equal a brute-force integer reference. Pixels with more features
compute L2 in float32, as float inputs do (two rows whose squared distances
lie within float32 rounding of each other can then come in either order).
Returned distances are float32: exact below 2**24, rounded above. Float
inputs compute in float32 (L2 centred among the database's rows,
``precision=HIGHEST``), or float64 under ``jax_enable_x64`` when an input is
float64 or a 32- or 64-bit integer (distances are then returned as float64;
see ``jaxlin.distances`` for which integers go to float kernels).
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlin import _checks, distances, sharding, topk
from jaxlin.errors import InputError

__all__ = ["LAYOUTS", "METHODS", "METRICS", "TIE_BREAKS", "predict", "search", "vote"]

METRICS = distances.METRICS
LAYOUTS = ("queries", "database")
METHODS = ("auto", "brute", "pruned")
TIE_BREAKS = ("smallest_label", "nearest")


# --------------------------------------------------------------------------
# Argument checks.
# --------------------------------------------------------------------------
def _checked_k(k, n: int, name: str = "k") -> int:
  k = _checks.concrete_int(k, name)
  if not 1 <= k <= n:
    raise InputError(f"{name} must be an integer in [1, {n}] (the database size), got {k}",
                     argument=name)
  return k


def _checked_tile(tile, name: str):
  if tile is None:
    return None
  tile = _checks.concrete_int(tile, name)
  if tile < 1:
    raise InputError(f"{name} must be a positive integer or None, got {tile}", argument=name)
  return tile


def _mesh_size(mesh) -> int:
  if mesh is None:
    return 1
  _checks.mesh_axis(mesh)
  return mesh.devices.size


# --------------------------------------------------------------------------
# Tiles.
# --------------------------------------------------------------------------
def _default_tiles(metric: str, platform: str, num_queries: int,
                   exact: bool) -> tuple[int, int]:
  """Largest (query_tile, database_tile) on devices of ``platform`` (a multi-process
  search passes "": every process must pick the same tiles): for L1 see
  ``l1_query_tile``; for L2 / cosine see ``product_tiles``."""
  if metric == "l1":
    return l1_query_tile(l2_cache_bytes(), platform, exact=exact), 1024
  return product_tiles(distances.cpu_has_amx(), platform, num_queries, exact=exact)


def product_tiles(amx: bool, platform: str, num_queries: int, *,
                  exact: bool = True) -> tuple[int, int]:
  """(queries, database rows) per tile of an L2 or cosine search of ``num_queries``
  queries (per device, for a mesh's "queries" layout), whose distances come from a
  matrix product; ``exact``: integer distances, which no tile size can change.

  (256, 65536): a large product with long rows for smallest_k, fitted on an Intel Xeon
  (2026-11-29) and on an AMD EPYC, Zen 4 (2026-12-04: 128 or 512 queries and 16,384 rows
  were no faster). On a CPU with Intel's AMX (``amx``: ``distances.cpu_has_amx``) and
  more than 256 queries, (512, 5120): against 50,000 CIFAR-10 rows, 10,000 queries took
  1.89 s against 2.34 s as uint8 pixels, and 2,048 queries 4.27 s against 7.39 s as
  float32; with 100 queries the smaller database tiles were 15-20 % slower
  (``benchmarks.l2_tiles``; WORKSPACE.md, 2026-12-04). The size of the database tile
  changes how float products round, so float searches (not ``exact``) take (512, 5120)
  whatever their number of queries: their last bits then do not depend on it, and a
  mesh's "queries" layout rounds as one device does. Other platforms, and processes that
  must agree (platform ""), keep (256, 65536).
  """
  if amx and platform == "cpu" and (num_queries > 256 or not exact):
    return 512, 5120
  return 256, 65536


def l1_query_tile(l2_bytes: int, platform: str, *, exact: bool = False) -> int:
  """Queries per L1 tile against 1,024 database rows, by a rule fitted on one CPU: the
  largest of 256, 128 and 64 whose int16 block of partial sums (2 * tile * 1024 bytes;
  the int32 sums it adds into every 128 features take twice that again) fills at most
  half of the level-2 cache ``l2_bytes``; 64, the size before the rule, off the CPU or
  where the cache size is unknown (0).

  Measured by ``benchmarks.l1_tiles`` (1,000 CIFAR-10 queries against 50,000 rows) on
  a CPU with 1 MiB of L2 per core (AMD Zen 4): 256 queries per tile search 1.2-1.4x
  faster than 64 on uint8 pixels and 1.2x on float32; 512 is no faster. Float inputs
  take the same rule though their float32 sums are twice the size (measured, not
  derived). The smaller tiles for smaller caches are a prediction, not a measurement.

  Integer inputs (``exact``; measured on uint8 pixels) on a CPU with at least 2 MiB of L2
  per core take 1,024 queries: on an Intel Xeon with 2 MiB, 1,000 queries per tile searched
  1.42x faster than 256 (512: 1.16x; of 2,000 queries, 2,000 per tile 0.96x of 1,000),
  but float32 inputs 0.94x, so they keep the rule above (``benchmarks.l1_tiles``;
  WORKSPACE.md, 2026-12-04). Other CPUs with such caches follow by prediction.
  """
  if platform != "cpu" or l2_bytes <= 0:
    return 64
  if exact and l2_bytes >= 2 << 20:
    return 1024
  for tile in (256, 128):
    if 2 * tile * 1024 <= l2_bytes // 2:
      return tile
  return 64


def _read_text(path: str) -> str:
  with open(path, encoding="ascii") as f:
    return f.read().strip()


@functools.lru_cache(maxsize=None)
def l2_cache_bytes(cpu_dir: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
  """The first CPU's level-2 (data or unified) cache in bytes, from Linux's cache
  description; 0 when it cannot be read (another system, or a container that hides it)."""
  try:
    entries = sorted(e for e in os.listdir(cpu_dir) if e.startswith("index"))
  except OSError:
    return 0
  for entry in entries:
    path = os.path.join(cpu_dir, entry)
    try:  # an entry that cannot be read is skipped, not the whole description
      if (_read_text(os.path.join(path, "level")) != "2"
          or _read_text(os.path.join(path, "type")) not in ("Unified", "Data")):
        continue
      size = _read_text(os.path.join(path, "size")).upper()
      scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
      return int(size.rstrip("KMG")) * scale
    except (OSError, ValueError):
      continue
  return 0


def _even_tile(total: int, largest: int, multiple: int = 1) -> int:
  """The smallest tile, a multiple of `multiple`, that covers `total` in as
  few tiles as tiles of `largest` do (so the last tile wastes little)."""
  total = max(total, 1)
  tile = -(-total // -(-total // largest))
  return -(-tile // multiple) * multiple


def _tile_sizes(metric: str, num_queries: int, num_database: int, query_tile=None,
                database_tile=None, *, platform: str, exact: bool = True) -> tuple[int, int]:
  """(query_tile, database_tile): the given sizes, or even splits within _default_tiles."""
  qt, dt = _default_tiles(metric, platform, num_queries, exact)
  qt = query_tile or _even_tile(num_queries, qt, 8 if num_queries > 8 else 1)
  dt = database_tile or _even_tile(num_database, dt, topk.CHUNK if num_database > topk.CHUNK
                                   else 1)
  return max(1, min(qt, num_queries)), max(1, min(dt, num_database))


def _pad_rows(x, multiple: int):
  pad = (-x.shape[0]) % multiple
  return jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)) if pad else x


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pad_each_device(laid_NxD, ndev: int, rows_per_device: int):
  """(ndev * r, D) rows, r per device, -> (ndev * rows_per_device, D): each block zero-padded."""
  x = laid_NxD.reshape(ndev, -1, laid_NxD.shape[1])
  if x.shape[1] == rows_per_device:
    return laid_NxD
  x = jnp.pad(x, ((0, 0), (0, rows_per_device - x.shape[1]), (0, 0)))
  return x.reshape(ndev * rows_per_device, laid_NxD.shape[1])


@functools.partial(jax.jit, static_argnames="size")
def _rows(x, start, *, size: int):
  """Rows [start, start + size) of x: one compiled program for every block."""
  return jax.lax.dynamic_slice_in_dim(x, start, size)


# --------------------------------------------------------------------------
# The compiled programs (module-level jits: cached by static arguments and shapes).
# --------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("kernel", "tile", "mesh", "layout"))
def _prepare(database_NxD, n_valid, *, kernel, tile, mesh, layout):
  """(tiles (M, S, D) -- (M, D, S) feature-major --, aux (M, S), centre (D,)), placed
  on the mesh: replicated for layout "queries", split by tiles for "database"."""
  db, aux, centre = kernel.prepare(database_NxD, n_valid)
  tiles = kernel.tiles(db, tile)
  aux = aux.reshape(tiles.shape[0], tile)
  if mesh is not None:
    spec = P(mesh.axis_names[0]) if layout == "database" else P()
    tiles = jax.lax.with_sharding_constraint(tiles, NamedSharding(mesh, spec))
    aux = jax.lax.with_sharding_constraint(aux, NamedSharding(mesh, spec))
    centre = jax.lax.with_sharding_constraint(centre, NamedSharding(mesh, P()))
  return tiles, aux, centre


def _search_tile(q_TxD, tiles, aux_MxS, centre, n_valid, *, kernel, k):
  """Top-k of one query tile over all database tiles, by a running merge.

  Returns (distances (T, k) in the kernel's dtype -- int32 for integer
  kernels, exact -- indices (T, k) int32); rows at or past n_valid are
  padding and never returned ahead of a real row.
  """
  q, q_aux = kernel.transform(q_TxD, centre)
  t, tile = q.shape[0], aux_MxS.shape[1]
  dtype = jnp.dtype(kernel.dtype)
  worst = topk.worst(dtype)

  def body(carry, inputs):
    m, db_tile, db_aux = inputs
    d = kernel.tile(q, q_aux, db_tile, db_aux)
    return _merge_best(*carry, d, m * tile, n_valid, k=k), None

  init = (jnp.full((t, k), worst, dtype), jnp.full((t, k), -1, jnp.int32))
  steps = jnp.arange(aux_MxS.shape[0], dtype=jnp.int32)
  (best_d, best_i), _ = jax.lax.scan(body, init, (steps, tiles, aux_MxS))
  return best_d, best_i


def _merge_best(best_d, best_i, d_TxS, first, limit, *, k: int):
  """The running k best (distances, indices) of T rows merged with a block of distances
  whose columns are indices first, first + 1, ...; columns at index ``limit`` or beyond
  are padding and never chosen ahead of a real one. Every index in the block comes after
  those in the running best: this block's k best, then a small merge, both stable, keep
  ties by lower index."""
  idx = first + jnp.arange(d_TxS.shape[1], dtype=jnp.int32)
  d = jnp.where(idx[None, :] < limit, d_TxS, topk.worst(d_TxS.dtype))
  pos = topk.smallest_k(d, min(k, d.shape[1]))
  cand_d = jnp.concatenate([best_d, jnp.take_along_axis(d, pos, axis=1)], axis=1)
  cand_i = jnp.concatenate([best_i, idx[pos]], axis=1)
  _, pos = jax.lax.top_k(-topk.order_keys(cand_d), k)
  return jnp.take_along_axis(cand_d, pos, 1), jnp.take_along_axis(cand_i, pos, 1)


@functools.partial(jax.jit, static_argnames=("kernel", "k", "mesh", "layout"))
def _search_block(q_BxD, tiles, aux, centre, n_valid, *, kernel, k, mesh, layout):
  """The k best of a block of queries: one tile on one device; with layout
  "queries" one tile per device; with layout "database" one tile searched by
  every device in its rows, merged by (distance, global index)."""
  local = functools.partial(_search_tile, kernel=kernel, k=k)
  if mesh is None:
    return local(q_BxD, tiles, aux, centre, n_valid)
  axis = mesh.axis_names[0]
  if layout == "queries":
    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P(), P(), P(), P()),
                       out_specs=(P(axis), P(axis)), check_vma=False)
    return fn(q_BxD, tiles, aux, centre, n_valid)
  ndev = mesh.devices.size

  def per_device(q, tiles, aux, centre, n):
    me = jax.lax.axis_index(axis)
    rows = (n + ndev - 1) // ndev  # device j holds rows [j * rows, (j + 1) * rows)
    n_local = jnp.clip(n - me * rows, 0, rows).astype(jnp.int32)
    d, i = local(q, tiles, aux, centre, n_local)
    i = jnp.where(i >= 0, i + me * rows, i)  # global indices
    # Every device's candidates in device order (= increasing global index).
    d_all = jax.lax.all_gather(d, axis, axis=1, tiled=True)
    i_all = jax.lax.all_gather(i, axis, axis=1, tiled=True)
    _, pos = jax.lax.top_k(-topk.order_keys(d_all), k)  # stable: ties keep the lower index
    return jnp.take_along_axis(d_all, pos, 1), jnp.take_along_axis(i_all, pos, 1)

  fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(axis), P(axis), P(), P()),
                     out_specs=(P(), P()), check_vma=False)
  return fn(q_BxD, tiles, aux, centre, n_valid)


# --------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------
def search(queries_QxD, database_NxD, k, *, metric: str = "l2", mesh: Mesh | None = None,
           layout: str = "queries", num_database: int | None = None,
           query_tile: int | None = None, database_tile: int | None = None,
           callback: Callable[[int, int], None] | None = None, method: str = "auto",
           return_stats: bool = False, image_shape=None):
  """Exact k nearest neighbours of every query in the database.

  Args:
    queries_QxD: (Q, D) integer (e.g. uint8 pixels) or float queries; Q may be 0.
    database_NxD: (N, D) database, same feature size, N >= 1; with
      ``num_database``, a global array laid along ``mesh`` (see below).
    k: number of neighbours, 1 <= k <= N: an int, numpy integer or concrete
      integer jax scalar.
    metric: "l1", "l2", "l2_squared" or "cosine" (1 - cosine similarity).
    mesh: None (one device) or a 1-D ``jax.sharding.Mesh`` to search on its
      devices; same results as on one device.
    layout: "queries" (queries split across the mesh, database replicated) or
      "database" (database rows split across the mesh).
    num_database: the real rows of a database laid along ``mesh`` by
      ``jaxlin.sharding.rows_to_global`` (``sharding.padded_rows(num_database,
      mesh)`` rows, zeros after the real ones); needs layout "database". A
      laid array passed without it is searched as it is, its zero rows
      included.
    query_tile, database_tile: tile sizes (memory is bounded by them);
      default: sizes measured fast on CPU.
    callback: called as ``callback(queries_done, Q)`` as the search goes: after each
      block of queries (method "pruned": L2 every 8 blocks of its first round, L1
      after every tile, and on a mesh as each device finishes), and with (Q, Q) at the end.
    method: "brute" (every distance), "pruned" (``jaxlin.bounds``: lower bounds
      rule out most rows, L2 by a certificate on its candidates, L1 by a threshold
      that exact distances set; uint8 / int8 inputs,
      l1 / l2 / l2_squared; ``database_tile`` does not apply; with a ``mesh``,
      each device runs the cascade on its rows or its queries, by ``layout``;
      across processes the queries are host data, the same on every process,
      and every process gets the whole answer) or "auto" (pruned on one CPU
      device where it is predicted faster: see ``bounds.prefer_pruned``; brute
      force on a mesh and on GPUs and TPUs, where it is one large matrix
      product per tile). "pruned" L2 is refused on a TPU (its float32 products
      are not IEEE ones, which the bound's proof counts on).
      Every method returns the same neighbours and distances.
    return_stats: also return a dict: {"method": the method used} and, for
      "pruned", ``bounds.search``'s stats: the queries settled by each level of
      the cascade. On a mesh also "layout" and "per_device" (each device's own
      stats); the counts are summed over the devices' searches, so with layout
      "database", where every device searches every query in its rows,
      "queries" is Q times the number of devices that hold rows (with fewer
      rows than devices, the last devices hold none and count 0).
    image_shape: (H, W, C) of the rows (flattened images), for the pruned
      bounds: L1 sums over p x p pixel blocks of each channel (None: over runs
      of consecutive features, which on channels-last images mix the channels
      and rarely rule a row out, so the search falls back to brute force: pass
      the shape for L1); L2 projects on the images' DCT where H and W C are
      at most 256 (None, or longer axes: on principal components estimated
      from the database, a build 1.6x slower on CIFAR-10, Intel Xeon). The same
      answer either way.

  Returns:
    (dists_QxK, idx_QxK int32), and the stats dict with ``return_stats``:
    nearest first; ties at equal distance in increasing database index.
    Distances are float32 (float64 under ``jax_enable_x64`` for float64 inputs and, in
    float kernels, 32- and 64-bit integers):
    sum |x - y| for l1, |x - y| for l2, |x - y|^2 for l2_squared.

    Under jit, where values cannot be checked, a query that holds NaN or inf,
    and every query when the database does, gets NaN distances and indices -1
    (``predict``: the prediction -1); so does a query whose distances overflow,
    or whose integer L1 sums could reach 2**30 in int32.

  Raises:
    InputError naming the argument: not 2-D, different feature sizes, NaN or
    inf in a float input, an empty database, k out of range or not an integer,
    an unknown metric, layout or method, a laid database of the wrong size,
    method "pruned" on inputs it does not serve (or L2 on a TPU), queries and
    database committed to different devices without a mesh (with one, inputs
    committed elsewhere are moved onto it), a mesh (one device too) or method
    "pruned" under jit.
  """
  return_stats = _checks.flag(return_stats, "return_stats")
  out = _search(queries_QxD, database_NxD, k, metric=metric, mesh=mesh, layout=layout,
                num_database=num_database, query_tile=query_tile, database_tile=database_tile,
                callback=callback, names=("queries_QxD", "database_NxD"), method=method,
                image_shape=image_shape)
  return out if return_stats else out[:2]


def _search(queries_QxD, database_NxD, k, *, metric, mesh, layout, num_database, query_tile,
            database_tile, callback, names, method="auto", image_shape=None):
  """search, with errors naming the caller's arguments (``names``: queries, database):
  (dists, idx, stats)."""
  if method not in METHODS:
    raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}",
                     argument="method")
  _checks.callback(callback, "callback(queries_done, total)", queries_QxD, database_NxD)
  if layout not in LAYOUTS:
    raise InputError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}",
                     argument="layout")
  ndev = _mesh_size(mesh)
  if mesh is not None:  # the answer is gathered to the host (one device too)
    _checks.outside_jit("a search on a mesh", "mesh", queries_QxD, database_NxD)
  not_an_index(queries_QxD, names[0])
  not_an_index(database_NxD, names[1])
  from jaxlin import bounds  # pylint: disable=import-outside-toplevel  # bounds imports knn
  # A laid-out database (num_database) may hold padding rows: then not centred on the host.
  whole = num_database is None or _checks.concrete_int(
      num_database, "num_database") == np.shape(database_NxD)[0]
  queries, database, kernel = distances.checked_inputs(queries_QxD, database_NxD, metric,
                                                       names=names, centre_wide=whole)
  queries, database = (_onto(a, mesh) for a in (queries, database))
  _same_devices(queries, database, names)
  if database.shape[0] == 0:
    raise InputError(f"{names[1]} is empty: search needs at least one database row",
                     argument=names[1])
  if image_shape is not None:
    image_shape = bounds.checked_image_shape(image_shape, database.shape[1])
  if num_database is None:
    n = database.shape[0]
  else:
    n = _checks.concrete_int(num_database, "num_database")
    if layout != "database":
      raise InputError("num_database (a database laid along the mesh) needs layout='database'",
                       argument="num_database")
    laid_rows = -(-n // ndev) * ndev
    if n < 1 or database.shape[0] != laid_rows:
      raise InputError(f"num_database={n} real rows laid along {ndev} device(s) make "
                       f"{laid_rows} rows, but {names[1]} has {database.shape[0]} (see "
                       "jaxlin.sharding.rows_to_global)", argument="num_database")
  k = _checked_k(k, n)
  query_tile = _checked_tile(query_tile, "query_tile")
  database_tile = _checked_tile(database_tile, "database_tile")
  q_total = queries.shape[0]
  out_dtype = kernel.distance_dtype
  given = (queries_QxD, database_NxD)
  pruned = _use_pruned(method, queries, database, metric, mesh, num_database, names, k, given,
                       images=image_shape is not None)
  if pruned:
    if mesh is not None:  # no queries too: each device's stats
      d, i, stats = bounds._mesh_search(  # pylint: disable=protected-access  # checked here
          queries, database, k, metric=metric, mesh=mesh, layout=layout, num_database=n,
          image_shape=image_shape, query_tile=query_tile, callback=callback)
      return d, i, {"method": "pruned", "layout": layout, **stats}
    if q_total == 0:
      if callback is not None:
        callback(0, 0)
      return (jnp.zeros((0, k), out_dtype), jnp.zeros((0, k), jnp.int32),
              {"method": "pruned", **bounds.empty_stats(metric, k, n)})
    # The real rows (of a laid database: on the host, not replicated on devices).
    rows = database if n == database.shape[0] else np.asarray(database)[:n]
    index = bounds.build_index(rows, metric=metric, image_shape=image_shape)
    d, i, stats = bounds.search(queries, index, k, query_tile=query_tile, callback=callback)
    return d, i, {"method": "pruned", **stats}
  if q_total == 0:
    if callback is not None:
      callback(0, 0)
    return jnp.zeros((0, k), out_dtype), jnp.zeros((0, k), jnp.int32), {"method": "brute"}

  platform = _platform(mesh, database)
  exact = kernel.dtype == "int32"
  if layout == "queries":
    qt, dt = _tile_sizes(metric, -(-q_total // ndev), n, query_tile, database_tile,
                         platform=platform, exact=exact)
    db = _pad_rows(database, dt)
    block = qt * ndev
  else:
    rows = -(-n // ndev)  # device j holds rows [j * rows, (j + 1) * rows), as rows_to_global
    qt, dt = _tile_sizes(metric, q_total, rows, query_tile, database_tile, platform=platform,
                         exact=exact)
    laid = database if num_database is not None else _pad_rows(database, rows * ndev)
    # Each device's rows padded to whole tiles (zeros; masked out as past its real rows).
    db = _pad_each_device(laid, ndev, -(-rows // dt) * dt)
    block = qt
  n_valid = jnp.int32(n)
  tiles, aux, centre = _prepare(db, n_valid, kernel=kernel, tile=dt, mesh=mesh, layout=layout)

  many_hosts = mesh is not None and jax.process_count() > 1
  unchecked = _unchecked_rows(queries, database, n, given, kernel)
  queries = _pad_rows(queries, block)
  out_d, out_i = [], []
  for start in range(0, q_total, block):
    q = _rows(queries, jnp.int32(start), size=block)
    if many_hosts:
      q = np.asarray(q)  # host data: the same on every process
    d, i = _search_block(q, tiles, aux, centre, n_valid, kernel=kernel, k=k, mesh=mesh,
                         layout=layout)
    out_d.append(d)
    out_i.append(i)
    if callback is not None:
      i.block_until_ready()
      callback(min(start + block, q_total), q_total)
  if mesh is None:
    d, i = jnp.concatenate(out_d)[:q_total], jnp.concatenate(out_i)[:q_total]
  else:  # blocks laid along the mesh (or replicated across hosts): gathered once, at the end
    d = jnp.asarray(np.concatenate([sharding.to_host(x) for x in out_d])[:q_total])
    i = jnp.asarray(np.concatenate([sharding.to_host(x) for x in out_i])[:q_total])
  d = distances.returned_distances(d, metric)
  if unchecked is not None:  # NaN or inf under jit: NaN and -1, never a plausible answer
    # (and finite inputs whose distances overflow, which a concrete call refuses)
    unchecked = unchecked | ~jnp.all(jnp.isfinite(d), axis=1)
    d = jnp.where(unchecked[:, None], jnp.nan, d).astype(d.dtype)
    i = jnp.where(unchecked[:, None], -1, i)
  return d, i, {"method": "brute"}


def _onto(x, mesh):
  """``x``, or its value on the host where it is an array committed elsewhere than the
  mesh (e.g. ``jax.device_put(x, jax.devices()[1])``, or laid along another mesh of the
  same devices in another order: a mesh's programs refuse it), as host data goes onto
  the mesh."""
  if mesh is None or not isinstance(x, jax.Array) or _checks.is_traced(x) or not x.committed:
    return x
  devices = list(mesh.devices.flat)
  if getattr(x.sharding, "mesh", None) == mesh or (len(devices) == 1
                                                   and x.devices() == set(devices)):
    return x
  return sharding.to_host(x)


def _same_devices(queries, database, names) -> None:
  """InputError where queries and database are committed to different devices (JAX's own
  error came from inside a search program)."""
  placed = [sorted(d.id for d in a.devices()) if isinstance(a, jax.Array)
            and not _checks.is_traced(a) and a.committed else None for a in (queries, database)]
  if None not in placed and placed[0] != placed[1]:
    raise InputError(f"{names[0]} is on device(s) {placed[0]} and {names[1]} on {placed[1]}: "
                     "put both on one device (jax.device_put(x, device)), or pass a mesh",
                     argument=names[0])


def _unchecked_rows(queries, database, n: int, given, kernel):
  """Under jit, where values cannot be checked: (Q,) whether each query's answer cannot be
  right, as it or the database (its n real rows) holds NaN or inf, or values beyond what a
  float kernel's distances hold finite (``distances.float_limit``), or integers beyond
  what its float type holds whole -- what a concrete call refuses; else None. (One bad
  database row spoils every distance of L2's and cosine's centred or normalised forms, and
  an overflowing one hides the rows it outranks, so it spoils every query.)"""
  if not any(_checks.is_traced(a) for a in given):
    return None  # concrete inputs were checked: these raised
  limit = distances.float_limit(kernel, queries.shape[1])
  whole = 1 << _checks.exact_int_bits(kernel.float_dtype)  # L2's float kernel: integers up to it

  def bad_values(a, axis):
    out = jnp.zeros(a.shape[:1] if axis else (), bool)
    if jnp.issubdtype(a.dtype, jnp.inexact):
      out = out | ~jnp.all(jnp.isfinite(a), axis=axis)
    if limit is not None:
      big = jnp.max(jnp.abs(a.astype(kernel.float_dtype)), axis=axis, initial=0.0)
      out = out | (big > limit)
    if (kernel.name == "l2_float" and jnp.issubdtype(a.dtype, jnp.integer)
        and max(-int(jnp.iinfo(a.dtype).min), int(jnp.iinfo(a.dtype).max)) > whole):
      out = out | jnp.any((a > whole) | (a < -whole), axis=axis)  # compared as integers
    return out

  wraps = None  # integer L1 in int32: sums that could reach 2**30 (a concrete call refuses)
  if kernel.name == "l1_int" and not distances.same_small_int(queries, database):
    rows = database[:n]
    wraps = distances.l1_int_may_overflow(queries, jnp.min(rows), jnp.max(rows))[:, 0]
  if limit is None and wraps is None and not any(jnp.issubdtype(a.dtype, jnp.inexact)
                                                 for a in (queries, database)):
    return None
  bad = bad_values(queries, 1) | bad_values(database[:n], None)
  return bad if wraps is None else bad | wraps


def _platform(mesh, database) -> str:
  """The platform the search runs on ("cpu", "gpu", ...): the mesh's, else the database's
  device's (the default device for host data); "" across processes, whose CPUs may differ
  while their tiles must not."""
  if mesh is not None:
    return "" if jax.process_count() > 1 else mesh.devices.flat[0].platform
  if isinstance(database, jax.Array) and not isinstance(database, jax.core.Tracer):
    return next(iter(database.devices())).platform
  return sharding.default_platform()  # host data, or traced inside the caller's jit


def not_an_index(x, name: str) -> None:
  """InputError naming ``name`` if ``x`` is a ``bounds.Index`` (rows are expected)."""
  from jaxlin import bounds  # pylint: disable=import-outside-toplevel  # bounds imports knn
  if isinstance(x, bounds.Index):
    raise InputError(f"{name} is a bounds.Index: search it with jaxlin.bounds.search("
                     f"queries, index, k), or pass the rows (a 2-D array) here", argument=name)


def _given_dtype(x) -> str:
  """The dtype the caller passed (before int64 became int32, a list an array)."""
  return str(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)


def _use_pruned(method, queries, database, metric, mesh, num_database, names, k,
                given, *, images: bool = False) -> bool:
  """Whether this search goes through ``jaxlin.bounds`` (see ``search``'s ``method``);
  ``given``: the caller's (queries, database), for the dtypes an error names; ``images``:
  the caller gave their shape."""
  if method == "brute" or (method == "auto" and (mesh is not None or num_database is not None)):
    return False
  # Under a caller's jit (traced inputs, or concrete ones closed over): which rows it measures
  # depends on the values.
  if _checks.under_jit(queries, database):
    if method == "pruned":
      raise InputError("method='pruned' runs outside jit: which rows it measures depends "
                       "on the values; call it outside your jit, or use method='brute'",
                       argument="method")
    return False
  from jaxlin import bounds  # pylint: disable=import-outside-toplevel  # bounds imports knn
  served = bounds.supports(queries, database, metric)
  if method == "pruned":
    if not served and queries.dtype == database.dtype and metric in bounds.METRICS and (
        queries.dtype in (jnp.uint8, jnp.int8)):
      raise InputError(f"method='pruned' serves at most {bounds.max_features(metric)} "
                       f"features for {metric} (its distances of uint8 rows below 2**30), got "
                       f"{database.shape[1]}; use method='brute'", argument="method")
    if not served:
      q_dtype, db_dtype = (_given_dtype(a) for a in given)
      inputs, dtypes = ((f"{names[0]} uint8 or int8", q_dtype) if names[0] == names[1] else
                        (f"{names[0]} and {names[1]} both uint8 or both int8",
                         f"{q_dtype}, {db_dtype}"))
      raise InputError(f"method='pruned' needs {inputs} (pixels, e.g. x.astype(np.uint8) "
                       f"for values in [0, 255]) and metric l1, l2 or l2_squared, got "
                       f"{dtypes} and {metric!r}; use method='brute' or 'auto'",
                       argument="method")
    return True
  # auto: the cascade's cost model was measured on CPUs; on a GPU or TPU brute force is one
  # large matrix product per tile: on an H200, 10,000 CIFAR-10 queries took it 0.5 s, the
  # cascade 26 s with its build. Brute force runs on the database's device, the cascade
  # (its index built from host rows) on the default device: both must be CPUs.
  return (served and _platform(None, database) == "cpu" and sharding.default_platform() == "cpu"
          and bounds.prefer_pruned(metric, *queries.shape[:1], *database.shape, k=k,
                                   images=images))


@functools.partial(jax.jit, static_argnames=("num_classes", "tie_break"))
def _vote(labels_QxK, num_classes: int, tie_break: str):
  k = labels_QxK.shape[1]
  one_hot = jax.nn.one_hot(labels_QxK, num_classes, dtype=jnp.int32)  # (Q, K, C)
  counts = one_hot.sum(axis=1)
  if tie_break == "smallest_label":
    pred = jnp.argmax(counts, axis=1)  # argmax: the first (smallest) maximum
  else:
    position = jnp.arange(k, dtype=jnp.int32)[None, :, None]
    first = jnp.min(jnp.where(one_hot > 0, position, k), axis=1)  # (Q, C)
    is_max = counts == counts.max(axis=1, keepdims=True)
    pred = jnp.argmin(jnp.where(is_max, first, k + 1), axis=1)
  # No neighbour with a label in range (possible only under jit): no class, not class 0.
  return jnp.where(counts.max(axis=1) > 0, pred, -1).astype(jnp.int32)


def _checked_tie_break(tie_break: str) -> str:
  if tie_break not in TIE_BREAKS:
    raise InputError(f"unknown tie_break {tie_break!r}; choose one of {TIE_BREAKS}",
                     argument="tie_break")
  return tie_break


def vote(neighbor_labels_QxK, num_classes: int, *, tie_break: str = "smallest_label"):
  """Majority vote over each row of neighbour labels (nearest first).

  counts[q, c] = #{j : labels[q, j] == c}; the prediction is a class with the
  most votes. tie_break="smallest_label": a tie between classes goes to the
  smallest label (as scikit-learn and the course code). tie_break="nearest":
  to the tied class whose first member is nearest.

  Args:
    neighbor_labels_QxK: (Q, K) integer labels in [0, num_classes) (checked
      when concrete; under jit a label outside counts for no class).
    num_classes: C.

  Returns:
    (Q,) int32 predicted labels; -1 for a row without a label in range (only
    under jit, where labels cannot be checked).
  """
  _checked_tie_break(tie_break)
  num_classes = _checks.num_classes(num_classes)
  labels = _checks.labels(neighbor_labels_QxK, num_classes, "neighbor_labels_QxK")
  if labels.ndim != 2:
    raise InputError(f"neighbor_labels_QxK must be 2-D (queries, neighbours), got shape "
                     f"{labels.shape}", argument="neighbor_labels_QxK")
  if labels.shape[1] == 0:
    raise InputError("neighbor_labels_QxK has no neighbours (K = 0): nothing to vote on",
                     argument="neighbor_labels_QxK")
  return _vote(jnp.asarray(labels), num_classes, tie_break)


def predict(train_x, train_y, test_x, *, k: int | Sequence[int], metric: str = "l2",
            num_classes: int, tie_break: str = "smallest_label",
            callback: Callable[[int, int], None] | None = None, mesh: Mesh | None = None,
            layout: str = "queries", method: str = "auto", image_shape=None):
  """kNN predictions of ``test_x`` from (``train_x``, ``train_y``).

  ``k`` an int -> (Q,) int32; a sequence of ints -> (len(k), Q), all from ONE
  search with the largest k. ``train_y``: (N,) integer labels in
  [0, num_classes). Other arguments as in ``search`` and ``vote``; under jit,
  a query that the search answers with index -1 (NaN or inf in it or in
  ``train_x``) is predicted -1.
  """
  return _predict(train_x, train_y, test_x, k=k, metric=metric, num_classes=num_classes,
                  tie_break=tie_break, callback=callback, mesh=mesh, layout=layout,
                  method=method, image_shape=image_shape, names=("test_x", "train_x"))


def checked_ks(k, name: str = "k") -> list[int]:
  """A positive int or a non-empty sequence of them as a list of ints (InputError naming
  ``name`` otherwise)."""
  ks = [k] if np.ndim(k) == 0 else list(k)
  if not ks:
    raise InputError(f"{name} must be a positive int or a non-empty sequence of them, got []",
                     argument=name)
  ks = [_checks.concrete_int(kk, name) for kk in ks]
  if min(ks) < 1:
    raise InputError(f"{name} must be positive, got {k!r}", argument=name)
  return ks


def _predict(train_x, train_y, test_x, *, k, metric, num_classes, tie_break, callback, mesh,
             layout, method, image_shape, names, y_name="train_y"):
  """predict, with errors naming the caller's arguments (``names``: queries, database)."""
  _checked_tie_break(tie_break)
  num_classes = _checks.num_classes(num_classes)
  single = np.ndim(k) == 0
  ks = checked_ks(k)
  not_an_index(test_x, names[0])
  not_an_index(train_x, names[1])
  if np.ndim(train_x) != 2:
    raise InputError(f"{names[1]} must be 2-D (rows, features), got shape {np.shape(train_x)}; "
                     f"{_checks.rows_fix(np.shape(train_x))}", argument=names[1])
  labels = _checks.labels(train_y, num_classes, y_name, np.shape(train_x)[0])
  _, idx, _ = _search(test_x, train_x, max(ks), metric=metric, mesh=mesh, layout=layout,
                      num_database=None, query_tile=None, database_tile=None,
                      callback=callback, names=names, method=method, image_shape=image_shape)
  preds = _votes(jnp.asarray(labels), idx, tuple(ks), num_classes, tie_break)
  return preds[0] if single else preds


@functools.partial(jax.jit, static_argnames=("ks", "num_classes", "tie_break"))
def _votes(labels_N, idx_QxK, ks, num_classes, tie_break):
  """(len(ks), Q) predictions: the vote of the first kk neighbours for each kk in ks."""
  neighbor_labels = labels_N[idx_QxK]
  # An index -1 (a search under jit over NaN or inf: see search) predicts no class: -1.
  return jnp.stack([jnp.where(jnp.any(idx_QxK[:, :kk] < 0, axis=1), -1,
                              _vote(neighbor_labels[:, :kk], num_classes, tie_break))
                    for kk in ks])
