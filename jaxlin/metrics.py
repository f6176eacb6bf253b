"""Classification metrics on label arrays (numpy or jax)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin.errors import InputError

__all__ = ["accuracy", "confusion_matrix", "per_class_accuracy"]


def accuracy(labels_N, preds_N):
  """Fraction of predictions equal to the labels (float)."""
  labels_N, preds_N = jnp.asarray(labels_N), jnp.asarray(preds_N)
  if labels_N.shape != preds_N.shape:
    raise InputError(f"labels and predictions differ in shape: {labels_N.shape} vs "
                     f"{preds_N.shape}", argument="preds_N")
  if labels_N.size == 0:
    raise InputError("labels_N is empty: accuracy of no examples", argument="labels_N")
  return jnp.mean(labels_N == preds_N)


def confusion_matrix(labels_N, preds_N, num_classes: int):
  """(C, C) int32 counts; row = true class, column = predicted class (both in [0, C))."""
  labels_N, preds_N = jnp.asarray(labels_N), jnp.asarray(preds_N)
  if labels_N.shape != preds_N.shape:
    raise InputError(f"labels and predictions differ in shape: {labels_N.shape} vs "
                     f"{preds_N.shape}", argument="preds_N")
  for name, v in (("labels_N", labels_N), ("preds_N", preds_N)):
    if v.size and not isinstance(v, jax.core.Tracer):  # concrete: bincount would drop them
      lo, hi = int(np.min(v)), int(np.max(v))
      if lo < 0 or hi >= num_classes:
        raise InputError(f"{name} must lie in [0, {num_classes}), got values in [{lo}, {hi}]",
                         argument=name)
  flat = labels_N.astype(jnp.int32) * num_classes + preds_N.astype(jnp.int32)
  counts = jnp.bincount(flat, length=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def per_class_accuracy(confusion_CxC):
  """Recall of each class from a confusion matrix (NaN for an absent class)."""
  confusion_CxC = jnp.asarray(confusion_CxC)
  totals = confusion_CxC.sum(axis=1)
  return jnp.where(totals > 0, jnp.diag(confusion_CxC) / jnp.maximum(totals, 1), jnp.nan)
