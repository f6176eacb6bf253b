"""Classification metrics on label arrays (numpy or jax)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import _checks
from jaxlin.errors import InputError

__all__ = ["accuracy", "confusion_matrix", "per_class_accuracy"]


def _label_arrays(labels_N, preds_N, *, integers: bool = True):
  """(labels, preds) as jax arrays of one shape (bools as int32), or InputError naming the
  argument; ``integers``: labels must be integers (or bools), as class indices."""
  out = []
  for name, v in (("labels_N", labels_N), ("preds_N", preds_N)):
    v = _checks.jax_exact(v, name)
    held = jax.dtypes.canonicalize_dtype(getattr(v, "dtype", np.int32))
    # float64 labels that float32 (JAX's float without jax_enable_x64) rounds: compared
    # exactly (accuracy), or whole numbers (other labels are refused below as not integers).
    if isinstance(v, np.ndarray) and v.dtype.kind == "f" and held != v.dtype:
      with np.errstate(over="ignore"):  # labels as JAX holds them (float32 without x64)
        changed = np.isfinite(v) & (v.astype(held) != v)
        rounded = v[changed & (v == np.round(v))] if integers else v[changed]
      if rounded.size:
        raise InputError(f"{name} holds float labels that JAX holds as {held} and would round "
                         f"(e.g. {rounded[0]:.17g}), so equal labels could count as different "
                         "ones or different ones as equal: pass integer labels", argument=name)
    v = jnp.asarray(v)
    if v.dtype == jnp.bool_ or (v.size == 0 and not jnp.issubdtype(v.dtype, jnp.integer)):
      v = v.astype(jnp.int32)  # bools, and empty lists (float32 as arrays): no labels
    if integers and not jnp.issubdtype(v.dtype, jnp.integer):
      raise InputError(f"{name} must hold integer class labels, got dtype {v.dtype}",
                       argument=name)
    out.append(v)
  labels_N, preds_N = out
  if labels_N.shape != preds_N.shape:
    raise InputError(f"labels and predictions differ in shape: {labels_N.shape} vs "
                     f"{preds_N.shape}", argument="preds_N")
  if labels_N.ndim != 1:  # accuracy counts every element but divides by N
    raise InputError(f"labels_N must be 1-D (one class label per example), got shape "
                     f"{labels_N.shape}; for one-hot rows pass their argmax",
                     argument="labels_N")
  return labels_N, preds_N


def accuracy(labels_N, preds_N):
  """Fraction of predictions equal to the labels: the count divided by N (a float32 scalar,
  float64 under jax_enable_x64; 153 of 500 is 0.306, as numpy rounds it). Called eagerly
  the count is divided on the host, so on any device; under jit or vmap on the device,
  where a GPU's float32 division (XLA's) may be up to two units in the last place off
  (a TPU's is not promised to be IEEE's either), and under vmap XLA multiplies by 1/N
  instead, which can be one unit off. Labels of any
  dtype, compared exactly. NaN or inf in concrete float labels or predictions raise an
  InputError (a NaN equals nothing, so it would count as a wrong prediction, hiding the
  fault upstream)."""
  labels_N, preds_N = _label_arrays(labels_N, preds_N, integers=False)
  if labels_N.size == 0:
    raise InputError("labels_N is empty: accuracy of no examples", argument="labels_N")
  if jnp.issubdtype(jnp.result_type(labels_N, preds_N), jnp.floating):  # a float side
    dtype = _checks.float_for(labels_N.dtype, preds_N.dtype)  # compared in float32 or wider
    for name, v in (("labels_N", labels_N), ("preds_N", preds_N)):
      _checks.finite(v, name, "they are no class labels")
      _checks.exact_ints(v, name, dtype, "pass both as integer class labels")
    labels_N, preds_N = labels_N.astype(dtype), preds_N.astype(dtype)
  # The count is exact, and so is one division; jnp.mean's sum times 1/N was not (153 of
  # 500 gave 0.30600002), nor is a division by a constant under jit, which XLA turns into
  # that product: the barrier keeps N from being one.
  dtype = jnp.result_type(float)  # float32, or float64 under jax_enable_x64
  count = jnp.sum(_equal(labels_N, preds_N), dtype=jnp.int32)
  if not _checks.is_traced(count):  # float64's quotient rounded once more: still the nearest
    return jnp.asarray(np.float64(int(count)) / labels_N.shape[0], dtype)  # (53 >= 2 * 24 + 2)
  return count.astype(dtype) / jax.lax.optimization_barrier(
      jnp.asarray(labels_N.shape[0], dtype))


def _equal(a, b):
  """a == b, exactly: without jax_enable_x64 JAX compares uint32 with a signed integer in
  int32, where 3,000,000,000 wraps to -1,294,967,296 and equals it."""
  if a.dtype == b.dtype or not (jnp.issubdtype(a.dtype, jnp.integer)
                                 and jnp.issubdtype(b.dtype, jnp.integer)):
    return a == b
  wide = np.promote_types(a.dtype, b.dtype)  # numpy's: int64 for uint32 and int32
  if jax.dtypes.canonicalize_dtype(wide) == wide:
    return a == b
  signed, unsigned = (a, b) if jnp.issubdtype(a.dtype, jnp.signedinteger) else (b, a)
  return (signed >= 0) & (signed.astype(unsigned.dtype) == unsigned)


def confusion_matrix(labels_N, preds_N, num_classes: int):
  """(C, C) int32 counts; row = true class, column = predicted class (both in [0, C)).

  Values outside [0, C) raise an InputError; under jit (traced labels, no check) a pair
  with either outside is not counted, so the counts sum to fewer than N.
  """
  labels_N, preds_N = _label_arrays(labels_N, preds_N)
  num_classes = _checks.num_classes(num_classes)
  for name, v in (("labels_N", labels_N), ("preds_N", preds_N)):
    if v.size and not isinstance(v, jax.core.Tracer):  # concrete: checked
      lo, hi = _checks.value_range(v)
      if lo < 0 or hi >= num_classes:
        raise InputError(f"{name} must lie in [0, {num_classes}), got values in [{lo}, {hi}]",
                         argument=name)
  return _confusion(labels_N, preds_N, num_classes)


@functools.partial(jax.jit, static_argnums=2)  # one program, not one per operation
def _confusion(labels_N, preds_N, num_classes):
  # Traced: out-of-range pairs are left out, not moved into other cells.
  valid = (_checks.in_class_range(labels_N, num_classes)
           & _checks.in_class_range(preds_N, num_classes))
  flat = jnp.where(valid, labels_N.astype(jnp.int32) * num_classes + preds_N.astype(jnp.int32),
                   0)
  counts = jnp.bincount(flat, weights=valid.astype(jnp.int32),
                        length=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def per_class_accuracy(confusion_CxC):
  """Recall of each class from a confusion matrix (NaN for an absent class)."""
  cm = _checks.jax_exact(confusion_CxC, "confusion_CxC")
  if np.ndim(cm) != 2 or np.shape(cm)[0] != np.shape(cm)[1]:
    raise InputError(f"confusion_CxC must be a square (C, C) matrix, got shape {np.shape(cm)}",
                     argument="confusion_CxC")
  if not _checks.is_traced(cm) and np.size(cm) and float(_checks.extremes(cm)[0]) < 0:
    raise InputError("confusion_CxC holds negative counts", argument="confusion_CxC")
  _checks.finite(cm, "confusion_CxC", "recalls of NaN or inf counts mean nothing")
  return _recall(jnp.asarray(cm))


@jax.jit
def _recall(confusion_CxC):
  # Summed in float32 or wider: float16 rows overflowed at 65,504, int32 ones wrapped.
  confusion_CxC = confusion_CxC.astype(jnp.promote_types(confusion_CxC.dtype,
                                                         jnp.result_type(float)))
  totals = confusion_CxC.sum(axis=1)
  return jnp.where(totals > 0, jnp.diag(confusion_CxC) / jnp.maximum(totals, 1), jnp.nan)
