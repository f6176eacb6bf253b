"""Train/validation splits, k-fold indices and cross-validation."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from jaxlin import knn, metrics


def kfold_indices(n: int, num_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """(train_idx, val_idx) for each fold: contiguous folds of range(n) in order.

  Fold sizes follow ``np.array_split`` (the first ``n % num_folds`` folds get
  one more). Callers shuffle the data first.
  """
  if num_folds < 2:
    raise ValueError(f"num_folds must be at least 2, got {num_folds}")
  if n < num_folds:
    raise ValueError(f"cannot split {n} examples into {num_folds} folds")
  folds = np.array_split(np.arange(n), num_folds)
  return [(np.concatenate(folds[:i] + folds[i + 1:]), folds[i]) for i in range(num_folds)]


def cross_validate_knn(x, y, ks: Sequence[int], *, num_folds: int = 5, metric: str = "l2",
                       num_classes: int, tie_break: str = "smallest_label",
                       callback: Callable[[int, int], None] | None = None, mesh=None,
                       shard: str = "queries") -> np.ndarray:
  """Accuracy of kNN for every fold and k: (num_folds, len(ks)).

  Each fold runs ONE search (with max(ks)) and votes for every k from it.
  ``callback(fold_done, num_folds)`` is called after each fold.
  """
  x, y = np.asarray(x), np.asarray(y)
  ks = list(ks)
  out = np.zeros((num_folds, len(ks)), np.float64)
  for f, (tr, va) in enumerate(kfold_indices(len(x), num_folds)):
    if max(ks) > len(tr):
      raise ValueError(f"k={max(ks)} exceeds the {len(tr)} training examples of a fold")
    preds = knn.predict(x[tr], y[tr], x[va], k=ks, metric=metric, num_classes=num_classes,
                        tie_break=tie_break, mesh=mesh, shard=shard)
    out[f] = [float(metrics.accuracy(y[va], p)) for p in preds]
    if callback is not None:
      callback(f + 1, num_folds)
  return out
