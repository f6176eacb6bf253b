"""Host topology of a run: processes, the mesh, the rows each process reads, and
the helpers that put a split read in parts back together.

One object answers every "which process / which rows" question of an
experiment, so the experiments themselves read as load, select, evaluate,
write. On one host every helper is the identity (or a plain computation), and
the statistics below are the same numbers, bit for bit, as the one-host
formulas (``data.mean_image``, ``jnp.std``).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import bounds, data, features, knn, sharding
from jaxlin.errors import DataError

SPLITS = ("train", "val", "test")


class Hosts:
  """Processes and devices of a run, and what each process reads.

  Attributes:
    mesh: a mesh over every device of every process, or None (one device, or --shard=none).
    layout: kNN layout on the mesh: "queries" or "database".
    count, index: process count and this process's index.
    writer: whether this process writes files (process 0).
    parts: {split: (lo, hi)} the rows of each split this process reads (splits not named are
      read whole).
  """

  def __init__(self, shard: str):
    self.count, self.index = jax.process_count(), jax.process_index()
    self.writer = self.index == 0
    if shard == "none" or jax.device_count() == 1:
      self.mesh, self.layout = None, "queries"
    else:
      self.mesh = sharding.make_mesh()
      self.layout = "database" if shard == "database" else "queries"
    self.parts: dict[str, tuple[int, int]] = {}
    self._ds: data.Dataset | None = None

  @property
  def spread(self) -> bool:
    """Whether there are several processes on one mesh (each reads part of some splits)."""
    return self.mesh is not None and self.count > 1

  @property
  def devices(self) -> int:
    return 1 if self.mesh is None else int(self.mesh.devices.size)

  @property
  def local_mesh(self):
    """A mesh of this process's own devices (None for one device)."""
    local = jax.local_devices()
    return sharding.make_mesh(local) if len(local) > 1 else None

  # ---- reading ---------------------------------------------------------------------------
  def load(self, c, plan: Mapping, split_in_parts: Iterable[str] = ()) -> data.Dataset:
    """The dataset of config ``c``; each split in ``split_in_parts`` read in parts when spread.

    plan: ``data.split_rows`` of the same config (sizes of each split).
    """
    if self.spread:
      self.parts = {s: sharding.process_rows(len(plan[s][1]), self.mesh) for s in split_in_parts}
    ds = data.load(c.dataset, data_dir=c.data_dir, num_train=c.num_train or None,
                   num_val=c.num_val, num_test=c.num_test or None, seed=c.seed,
                   rows=self.parts or None, cache_dir=c.cache_dir or None)
    if self.spread:  # a dataset whose labels have no names numbers the classes it reads: a
      mine = np.zeros((self.count,), np.int64)  # process's part may hold fewer; all agree
      mine[self.index] = ds.num_classes
      agreed = int(np.max(sharding.process_sum(mine)))
      if agreed > ds.num_classes:
        ds = dataclasses.replace(ds, class_names=tuple(str(i) for i in range(agreed)))
    self._ds = ds
    if self._ds.num_classes < 2:  # every prediction right: a 100 % that says nothing
      raise DataError(f"{c.dataset} has {self._ds.num_classes} class "
                      f"({', '.join(self._ds.class_names) or 'none'}): classification needs "
                      "at least 2; give a dataset with two or more classes (for an image "
                      "folder: class folders in train/ and test/)")
    return self._ds

  def in_parts(self, split: data.Split) -> bool:
    """Whether the processes read ``split`` in parts (the same answer on every process)."""
    return any(split is getattr(self._ds, s) for s in self.parts)

  def rows_read(self, ds: data.Dataset) -> list[dict]:
    """[{split: [lo, hi)} for each process]: the rows of every split each process read."""
    mine = np.zeros((self.count, len(SPLITS), 2), np.int64)
    for j, s in enumerate(SPLITS):
      split = getattr(ds, s)
      mine[self.index, j] = split.start, split.start + len(split)
    every = sharding.process_sum(mine)
    return [{s: [int(v) for v in every[p, j]] for j, s in enumerate(SPLITS)}
            for p in range(self.count)]

  # ---- putting splits together -----------------------------------------------------------
  def whole(self, split: data.Split, local) -> np.ndarray:
    """Rows of ``split`` from every process (``local`` holds this process's rows of it)."""
    if not self.in_parts(split):
      return np.asarray(local)
    return sharding.gather_rows(local, split.start, split.total)

  def global_rows(self, split: data.Split, local):
    """This process's rows of ``split`` as one global array laid along the mesh."""
    return sharding.rows_to_global(local, split.total, self.mesh)

  def rows_at(self, split: data.Split, positions) -> np.ndarray:
    """Images at ``positions`` of ``split``, on every process (each adds the rows it holds)."""
    if not self.in_parts(split):
      return split.images[np.asarray(positions)]
    out = np.zeros((len(positions),) + split.images.shape[1:], np.int32)
    for j, r in enumerate(positions):
      if split.start <= r < split.start + len(split):
        out[j] = split.images[r - split.start]
    return sharding.process_sum(out).astype(np.uint8)

  # ---- statistics over the rows of every process -----------------------------------------
  def pixel_stats(self, split: data.Split) -> tuple[jax.Array, float]:
    """(mean image, std of the centred pixels) over every process's rows of ``split``."""
    n = split.total
    mean = data.mean_from_sums(sharding.process_sum(data.pixel_sums(split.images)), n)
    size = n * int(np.prod(np.shape(split.images)[1:]))
    shift = sharding.process_sum(_centred_sum(split.images, mean)) / np.float32(size)
    var = sharding.process_sum(_centred_squares(split.images, mean, shift)) / np.float32(size)
    return mean, float(np.sqrt(var))

  def feature_stats(self, local_NxF, n: int) -> tuple[jax.Array, jax.Array]:
    """(mean, std) of each feature over the n rows of every process."""
    mean = data.mean_from_sums(sharding.process_sum(jnp.sum(local_NxF, axis=0)), n)
    var = sharding.process_sum(_squared_deviations(local_NxF, mean)) / np.float32(n)
    lows, highs = (sharding.process_stack(v) for v in _column_range(local_NxF))
    return features.pin_constant_columns(mean, jnp.sqrt(var), lows.min(0), highs.max(0))

  # ---- kNN search ------------------------------------------------------------------------
  def search(self, split: data.Split, database, metric: str, k: int, *, num_database: int,
             callback=None, method: str = "auto") -> tuple[np.ndarray, dict]:
    """((split.total, k) database indices of the neighbours of every row of ``split``,
    the search's stats (``knn.search``'s ``return_stats``)).

    ``database`` is either the whole (N, D) array or, when it was laid along the mesh with
    ``global_rows``, the global array (``num_database`` real rows).
    """
    flat = split.rows  # a process may hold no rows of a split
    if self.database_spread:
      _, idx, stats = knn.search(flat, database, k, metric=metric, mesh=self.mesh,
                                 layout="database", num_database=num_database, method=method,
                                 return_stats=True, image_shape=split.images.shape[1:])
    else:
      mesh = self.local_mesh if "test" in self.parts else self.mesh
      _, idx, stats = knn.search(flat, database, k, metric=metric, mesh=mesh,
                                 layout=self.layout, callback=callback, method=method,
                                 return_stats=True, image_shape=split.images.shape[1:])
      if self.in_parts(split):  # each process searched its own rows: count them all
        stats = self._summed(stats, metric)
    return self.whole(split, np.asarray(idx)), stats

  def _summed(self, stats: dict, metric: str) -> dict:
    """A search's stats with its counts of queries (and for L1 rows) summed over the
    processes, each of which searched its own queries. With method "auto" each process
    chose for itself: "method" is "mixed" when they chose differently."""
    keys = bounds.count_keys(metric)
    mine = [stats.get(key, 0) for key in keys] + [int(stats["method"] == "pruned")]
    *total, pruned = (int(v) for v in sharding.process_sum(np.array(mine, np.int64)))
    if pruned == 0:
      return {"method": stats["method"], "processes": self.count}
    method = "pruned" if pruned == self.count else "mixed"
    # This process's own devices' counts would not add up to the totals: left out.
    own = {k: v for k, v in stats.items() if k != "per_device"}
    return {**own, "method": method, **dict(zip(keys, total)), "processes": self.count}

  @property
  def database_spread(self) -> bool:
    return "train" in self.parts


@jax.jit
def _column_range(x_NxF):  # (lowest, highest) of each column; (inf, -inf) with no rows
  return (jnp.min(x_NxF, axis=0, initial=jnp.inf), jnp.max(x_NxF, axis=0, initial=-jnp.inf))


@jax.jit
def _squared_deviations(x_NxF, mean_F):
  return jnp.sum(jnp.square(x_NxF - mean_F), axis=0)


@jax.jit
def _centred_sum(images, mean):
  return jnp.sum(images.astype(jnp.float32) - mean)


@jax.jit
def _centred_squares(images, mean, shift):
  return jnp.sum((images.astype(jnp.float32) - mean - shift) ** 2)
