"""The one place where the experiments meet library APIs that are being changed.

Each adapter speaks the new API (``knn.search(..., layout=, num_database=)``,
``selection.cross_validate_knn(..., seed=, shuffle=)``, ``plots.f(..., ax=None) ->
Figure`` with ``plots.save``, ``train.Trainer`` without ``total_steps``) and
falls back to the older one where the library still has it. Once every library
change has landed, this module can shrink to direct calls.
"""
from __future__ import annotations

import inspect
import os

import numpy as np

from jaxlin import files, knn, plots, selection, train


def _accepts(fn, name: str) -> bool:
  return name in inspect.signature(fn).parameters


def knn_search(queries, database, k: int, *, metric: str, mesh=None, layout: str = "queries",
               num_database: int | None = None, callback=None) -> np.ndarray:
  """Indices (Q, k) of the k nearest database rows of every query."""
  if _accepts(knn.search, "layout"):
    _, idx = knn.search(queries, database, k, metric=metric, mesh=mesh, layout=layout,
                        num_database=num_database, callback=callback)
  elif num_database is not None:
    from jaxlin import sharding  # pylint: disable=g-import-not-at-top
    _, idx = sharding.search(queries, database, k, mesh=mesh, metric=metric, mode="database",
                             num_database=num_database)
  else:
    _, idx = knn.search(queries, database, k, metric=metric, mesh=mesh, shard=layout,
                        callback=callback)
  return np.asarray(idx)


def cross_validate_knn(x, y, ks, *, num_folds: int, metric: str, num_classes: int,
                       tie_break: str, callback, mesh, layout: str, seed) -> np.ndarray:
  """(num_folds, len(ks)) accuracies; the rows shuffled with default_rng(seed) first."""
  kw = dict(num_folds=num_folds, metric=metric, num_classes=num_classes, tie_break=tie_break,
            callback=callback, mesh=mesh)
  if _accepts(selection.cross_validate_knn, "seed"):
    return selection.cross_validate_knn(x, y, ks, layout=layout, seed=seed, shuffle=True, **kw)
  order = np.random.default_rng(seed).permutation(len(y))
  return selection.cross_validate_knn(np.asarray(x)[order], np.asarray(y)[order], ks,
                                      shard=layout, **kw)


def plot(name: str, path: str, *args, **kwargs) -> str:
  """Draws ``plots.<name>(*args, **kwargs)`` and writes it to ``path`` (PNG, user's umask)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fn = getattr(plots, name)
  if hasattr(plots, "save"):
    return plots.save(fn(*args, **kwargs), path)
  fn(path, *args, **kwargs)
  os.chmod(path, files.file_mode())
  return path


def trainer(model, loss_fn, *, optimizer: str, schedule: str, num_steps: int, mesh):
  if _accepts(train.Trainer.__init__, "total_steps"):
    return train.Trainer(model, loss_fn, optimizer=optimizer, schedule=schedule,
                         total_steps=num_steps, mesh=mesh)
  if optimizer == "lbfgs":  # its line search sets the step: nothing to schedule
    schedule = None
  return train.Trainer(model, loss_fn, optimizer=optimizer, schedule=schedule, mesh=mesh)


def learning_rates(optimizer: str, rates):
  """The learning_rates argument of Trainer.fit (None for lbfgs once fit takes None)."""
  if optimizer == "lbfgs" and not _accepts(train.Trainer.__init__, "total_steps"):
    return None
  return list(rates)


def learning_rate_at(schedule: str, num_steps: int, base: float, step: int) -> float:
  """The scheduled learning rate at ``step`` (what the optimiser used for that step)."""
  try:
    fn = train.make_schedule(schedule, num_steps)
  except (AttributeError, TypeError):  # the schedule is built inside Trainer.fit now
    import optax  # pylint: disable=g-import-not-at-top
    fn = {"constant": lambda t: 1.0,
          "cosine": optax.cosine_decay_schedule(1.0, max(num_steps, 1)),
          "step": optax.piecewise_constant_schedule(
              1.0, {int(num_steps * 0.5): 0.1, int(num_steps * 0.75): 0.1})}[schedule]
  return float(base * np.asarray(fn(np.int32(step))))
