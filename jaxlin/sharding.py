"""Many devices through jax.sharding: a device mesh, sharded kNN search, data-parallel training.

One code path for CPU, GPU and TPU; a mesh of one device is the single-device
case. Two kNN modes, both giving results identical to ``jaxlin.knn.search``
(ties included):

* ``mode="queries"`` -- queries split across devices, the database replicated
  on each (the fast default when the database fits on one device);
* ``mode="database"`` -- database rows split across devices; each device finds
  its local top-k, the candidates are gathered and merged by (distance,
  global index), so a database larger than one device's memory can be searched.

Training is data-parallel through ``train.Trainer(..., mesh=mesh)``: each
minibatch is split along the batch axis and the parameters are replicated;
jit's partitioner adds the gradient all-reduce. Across hosts (after
``jax.distributed.initialize()``) the same code runs on the global mesh.

Across hosts each process reads only its own rows of a split:
``process_rows`` says which (the rows its devices hold when the split is laid
along the mesh), ``rows_to_global`` assembles the global array from every
process's rows, ``process_sum`` and ``gather_rows`` bring small results
(statistics, predictions) to every process.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from jaxlin import knn

AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named "data" over the given devices (default: all, every process)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (AXIS,))


def _local_search(q_QxD, db_tiles, db_aux, n_valid, *, k, mode, qt):
  """All query tiles of one device's queries against one device's database tiles."""
  tiles = q_QxD.reshape(-1, qt, q_QxD.shape[1])
  d, i = jax.lax.map(lambda q: knn._search_tile(q, db_tiles, db_aux, n_valid, k=k, mode=mode), tiles)
  return d.reshape(-1, k), i.reshape(-1, k)


def search(queries_QxD, database_NxD, k: int, *, mesh: Mesh, metric: str = "l2",
           mode: str = "queries", query_tile: int | None = None, database_tile: int | None = None,
           num_database: int | None = None):
  """``jaxlin.knn.search`` over the devices of ``mesh``; same results, ties included.

  With mode="database", ``database_NxD`` may also be a global array already laid
  along the mesh by ``rows_to_global`` (each process holding only its own rows);
  then ``num_database`` says how many of its rows are real.
  """
  if mode not in ("queries", "database"):
    raise ValueError(f"unknown mode {mode!r}; choose 'queries' or 'database'")
  if num_database is not None and mode != "database":
    raise ValueError("a database laid along the mesh (num_database given) needs mode='database'")
  queries_QxD, database_NxD, k = knn.checked_inputs(queries_QxD, database_NxD, k, metric,
                                                    num_database)
  n = database_NxD.shape[0] if num_database is None else num_database
  q_total, ndev = queries_QxD.shape[0], mesh.devices.size
  kmode = knn._mode(queries_QxD, database_NxD, metric)

  if mode == "queries":
    qt, dt = knn.tile_sizes(metric, -(-q_total // ndev), n, query_tile, database_tile)
    tiles, aux, mu = knn._prepare_tiles(database_NxD, n, mode=kmode, tile=dt)
    q = knn._pad_rows(knn._transform_queries(queries_QxD, kmode, mu), ndev * qt)
    fn = jax.shard_map(functools.partial(_local_search, k=k, mode=kmode, qt=qt), mesh=mesh,
                       in_specs=(P(AXIS), P(), P(), P()), out_specs=(P(AXIS), P(AXIS)),
                       check_vma=False)
    d, i = jax.jit(fn)(q, tiles, aux, jnp.int32(n))
  else:
    rows = -(-n // ndev)  # device j holds rows [j * rows, (j + 1) * rows), as rows_to_global lays them
    qt, dt = knn.tile_sizes(metric, q_total, rows, query_tile, database_tile)
    laid = database_NxD if num_database is not None else knn._pad_rows(database_NxD, rows * ndev)
    # Each device's rows padded to whole tiles (zeros; masked out as past n_local).
    tiles, aux, mu = knn._prepare_tiles(_pad_each_device(laid, ndev, -(-rows // dt) * dt), n,
                                        mode=kmode, tile=dt)
    q = knn._pad_rows(knn._transform_queries(queries_QxD, kmode, mu), qt)

    def per_device(q, tiles, aux):
      me = jax.lax.axis_index(AXIS)
      n_local = jnp.clip(n - me * rows, 0, rows).astype(jnp.int32)
      d, i = _local_search(q, tiles, aux, n_local, k=k, mode=kmode, qt=qt)
      i = jnp.where(i >= 0, i + me * rows, i)  # global indices
      # Gather every device's candidates in device order (= increasing global index).
      d_all = jax.lax.all_gather(d, AXIS, axis=1, tiled=True)
      i_all = jax.lax.all_gather(i, AXIS, axis=1, tiled=True)
      _, pos = jax.lax.top_k(-knn.order_keys(d_all), k)  # stable: ties keep the lower global index
      return jnp.take_along_axis(d_all, pos, 1), jnp.take_along_axis(i_all, pos, 1)

    fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)),
                       out_specs=(P(), P()), check_vma=False)
    d, i = jax.jit(fn)(q, tiles, aux)
  d, i = to_host(d)[:q_total], to_host(i)[:q_total]
  d = np.asarray(knn.as_float_distances(jnp.asarray(d)))
  if metric == "l2":
    d = np.sqrt(d)
  return jnp.asarray(d), jnp.asarray(i)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pad_each_device(laid_NxD, ndev: int, rows_per_device: int):
  """(ndev * r, D) rows, r per device, -> (ndev * rows_per_device, D): each block zero-padded."""
  x = laid_NxD.reshape(ndev, -1, laid_NxD.shape[1])
  if x.shape[1] == rows_per_device:
    return laid_NxD
  x = jnp.pad(x, ((0, 0), (0, rows_per_device - x.shape[1]), (0, 0)))
  return x.reshape(ndev * rows_per_device, laid_NxD.shape[1])


def padded_rows(n: int, mesh: Mesh) -> int:
  """n rounded up to a multiple of the mesh size: the rows of an n-row array laid along it."""
  return -(-n // mesh.devices.size) * mesh.devices.size


def process_rows(n: int, mesh: Mesh) -> tuple[int, int]:
  """Rows [lo, hi) of an n-row split that this process holds when it is laid along ``mesh``.

  The split is padded to ``padded_rows(n, mesh)`` rows and cut into equal
  blocks, one per device in mesh order; a process holds its devices' blocks,
  clipped to the n real rows (the last processes may hold fewer, or none).
  """
  n_pad = padded_rows(n, mesh)
  spans = sorted(_span(index[0], n_pad) for index in jax.sharding.NamedSharding(
      mesh, P(AXIS)).addressable_devices_indices_map((n_pad,)).values())
  if any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
    raise ValueError("this process's devices are not adjacent in the mesh; build it with "
                     "make_mesh() (devices in process order)")
  return min(spans[0][0], n), min(spans[-1][1], n)


def _span(s: slice, size: int) -> tuple[int, int]:
  return (s.start or 0, size if s.stop is None else s.stop)


def rows_to_global(local, n: int, mesh: Mesh) -> jax.Array:
  """The (padded_rows(n, mesh), ...) global array laid along ``mesh``, from this process's rows.

  ``local`` holds rows ``process_rows(n, mesh)`` of the split; padding rows are
  zeros. Every process calls this with its own rows.
  """
  local = np.asarray(local)
  lo, hi = process_rows(n, mesh)
  if len(local) != hi - lo:
    raise ValueError(f"this process holds rows [{lo}, {hi}) but got {len(local)} rows")
  n_pad = padded_rows(n, mesh)

  def block(index):
    a, b = _span(index[0], n_pad)
    out = np.zeros((b - a,) + local.shape[1:], local.dtype)
    real = local[a - lo:max(min(b, n), a) - lo]
    out[:len(real)] = real
    return out

  return jax.make_array_from_callback((n_pad,) + local.shape[1:],
                                      jax.sharding.NamedSharding(mesh, P(AXIS)), block)


def process_sum(x) -> np.ndarray:
  """Elementwise sum of ``x`` over all processes (``x`` itself in a single process)."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x)).sum(0)


def gather_rows(local, lo: int, n: int) -> np.ndarray:
  """The whole n-row array on every process, from each process's rows [lo, lo + len(local))."""
  local = np.asarray(local)
  if jax.process_count() == 1:
    if (lo, len(local)) != (0, n):
      raise ValueError(f"one process must hold all {n} rows, got [{lo}, {lo + len(local)})")
    return local
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  spans = np.asarray(multihost_utils.process_allgather(np.array([lo, len(local)], np.int64)))
  width = int(spans[:, 1].max())
  block = np.zeros((width,) + local.shape[1:], local.dtype)
  block[:len(local)] = local
  blocks = np.asarray(multihost_utils.process_allgather(block))
  out = np.zeros((n,) + local.shape[1:], local.dtype)
  for (start, count), rows in zip(spans, blocks):
    out[start:start + count] = rows[:count]
  if spans[:, 1].sum() != n:
    raise ValueError(f"the processes hold {spans[:, 1].sum()} rows between them, not {n}")
  return out


def to_host(x) -> np.ndarray:
  """The whole value of a (possibly multi-process) array as numpy, on every process."""
  if x.is_fully_addressable:
    return np.asarray(x)
  if x.sharding.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
