"""Per-example classification losses and the L2 penalty over any params pytree.

Losses take scores (N, C) and integer labels (N,) in [0, C) and return (N,);
the training objective is mean(loss) + reg * l2_penalty(params). Labels outside
[0, C) raise an InputError; under jit (traced labels, no check) their losses
are NaN, so padding labels (e.g. -1) are masked with ``jnp.where(mask, loss, 0)``,
not by multiplying (NaN * 0 is NaN). float64 numpy scores that JAX would round to
float32 (no jax_enable_x64) are shifted by each row's largest score in float64
first, which changes neither loss (1e8 + (0, 2, 3) would tie in float32); inside
your own jit they arrive rounded: shift them before.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import _checks
from jaxlin.errors import InputError

__all__ = ["multiclass_svm", "softmax_cross_entropy", "l2_penalty", "penalised_leaves", "LOSSES"]

Mask = Union[None, Callable[[str, Any], bool], Any]


def _inputs(scores_NxC, labels_N):
  """The checked (scores, labels) as jax arrays. float64 host scores that JAX would round to
  float32 (no jax_enable_x64) are first shifted by each row's largest finite score in
  float64, which changes neither loss: 1e8 + (0, 2, 3) would otherwise tie."""
  scores_NxC = _checks.jax_exact(scores_NxC, "scores_NxC")
  if _checks.narrowed(scores_NxC) and scores_NxC.ndim == 2 and scores_NxC.size:
    finite = np.isfinite(scores_NxC)
    top = np.max(np.where(finite, scores_NxC, -np.inf), axis=1, keepdims=True)
    low = np.min(np.where(finite, scores_NxC, np.inf), axis=1, keepdims=True)
    # Rows whose finite scores span more than float32's range are left as they are (the
    # shifted ones would overflow to -inf, and -inf - -inf is NaN).
    shift = np.isfinite(top) & (top - low <= np.finfo(np.float32).max)
    scores_NxC = scores_NxC - np.where(shift, top, 0.0)
  scores_NxC = jnp.asarray(scores_NxC)
  labels_N = jnp.asarray(_checks.jax_exact(labels_N, "labels_N"))
  if jnp.issubdtype(scores_NxC.dtype, jnp.integer):  # as floats that hold every value
    dtype = _checks.float_for(scores_NxC.dtype)
    _checks.exact_ints(scores_NxC, "scores_NxC", dtype, "subtract each row's largest score "
                       "first (the losses do not change), or enable jax_enable_x64")
    scores_NxC = scores_NxC.astype(dtype)
  if not jnp.issubdtype(scores_NxC.dtype, jnp.floating):
    raise InputError(f"scores_NxC must be real numbers, got {scores_NxC.dtype}",
                     argument="scores_NxC")
  _check(scores_NxC, labels_N)
  return scores_NxC, labels_N


def _check(scores_NxC, labels_N):
  if scores_NxC.ndim != 2:
    raise InputError(f"scores_NxC must be 2-D (N, C), got shape {scores_NxC.shape}",
                     argument="scores_NxC")
  if labels_N.shape != scores_NxC.shape[:1]:
    raise InputError(f"expected scores (N, C) and labels (N,), got {scores_NxC.shape} and "
                     f"{labels_N.shape}", argument="labels_N")
  if not jnp.issubdtype(labels_N.dtype, jnp.integer):
    raise InputError(f"labels must be integers, got {labels_N.dtype}", argument="labels_N")
  if labels_N.size and not isinstance(labels_N, jax.core.Tracer):  # concrete: check the range
    labels = np.asarray(labels_N)
    c = scores_NxC.shape[1]
    if labels.min() < 0 or labels.max() >= c:
      raise InputError(f"labels must lie in [0, {c}) for scores of {c} classes, got values in "
                       f"[{labels.min()}, {labels.max()}]", argument="labels_N")


def _nan_where_out_of_range(loss_N, labels_N, num_classes: int):
  """Traced labels cannot be checked: a label outside [0, C) gives a NaN loss (training
  then stops as diverged) instead of the loss of a clipped class. (Mask padded labels with
  ``jnp.where``, not by multiplying: NaN * 0 is NaN.)"""
  return jnp.where(_checks.in_class_range(labels_N, num_classes), loss_N, jnp.nan)


def multiclass_svm(scores_NxC, labels_N, *, margin: float = 1.0, squared: bool = False):
  """Weston-Watkins multiclass hinge loss, the course's sum form:

    L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + margin)      (squared: each term ** 2)

  (optax.losses.multiclass_hinge_loss is the Crammer-Singer max form: a different loss.)
  Its gradient counts a term only where its margin is above 0, as the course's
  gradient does (at exactly 0 it takes the subgradient 0).
  """
  scores_NxC, labels_N = _inputs(scores_NxC, labels_N)
  if isinstance(margin, (str, bytes, bool, np.bool_)) or np.ndim(margin) != 0 or (
      not _checks.is_traced(margin) and not np.isfinite(np.asarray(margin, np.float64)).all()):
    raise InputError(f"margin must be a finite number, got {margin!r}", argument="margin")
  if not isinstance(squared, (bool, np.bool_)):
    raise InputError(f"squared must be True or False, got {squared!r}", argument="squared")
  return _svm(scores_NxC, labels_N, margin, bool(squared))


# The checks above run eagerly; the arithmetic is one compiled program (inlined under a
# caller's jit), not one program per operation when a loss is called outside jit.
@functools.partial(jax.jit, static_argnums=3)
def _svm(scores_NxC, labels_N, margin, squared):
  # An out-of-range label (NaN loss below) gathers class 0, as in softmax: the squared
  # margins of a gather past the classes (NaN) had NaN gradients where the caller masks
  # the loss with jnp.where.
  safe = jnp.where(_checks.in_class_range(labels_N, scores_NxC.shape[1]), labels_N, 0)
  correct = jnp.take_along_axis(scores_NxC, safe[:, None], axis=1)
  m = scores_NxC - correct + margin
  # The course's subgradient at a margin of exactly 0: 0 (jnp.maximum's grad splits it: 0.5),
  # so gradient checks on whole-number scores agree with its svm_loss_naive.
  margins = jnp.where(m <= 0, 0.0, m)  # a NaN margin stays NaN (a NaN score is no 0 loss)
  is_true = jax.nn.one_hot(safe, scores_NxC.shape[1], dtype=jnp.bool_)
  margins = jnp.where(is_true, 0.0, margins)
  if squared:
    margins = margins * margins
  return _nan_where_out_of_range(jnp.sum(margins, axis=1), labels_N, scores_NxC.shape[1])


def softmax_cross_entropy(scores_NxC, labels_N):
  """L_i = -log softmax(s)_{y_i} = logsumexp_j(s_j - s_{y_i}).

  Shifting by the correct score (inside logsumexp's own max shift) keeps the
  result finite and accurate for scores of any size: no cancellation between
  two large numbers.
  """
  scores_NxC, labels_N = _inputs(scores_NxC, labels_N)
  return _softmax_cross_entropy(scores_NxC, labels_N)


@jax.jit
def _softmax_cross_entropy(scores_NxC, labels_N):
  c = scores_NxC.shape[1]
  # An out-of-range label (NaN loss below) gathers class 0: a gather past the classes gives
  # NaN, whose gradient stays NaN even where the caller masks its loss with jnp.where.
  safe = jnp.where(_checks.in_class_range(labels_N, c), labels_N, 0)
  # Rows whose loss the rules at the end decide (a NaN or +inf score, or a correct score of
  # -inf) go through the smooth form below as zeros: their inf - inf NaNs had NaN
  # gradients even where the caller masks their loss with jnp.where. -inf for other
  # classes is no such row: its probability is 0, and the smooth form handles it.
  given_scores = jax.lax.stop_gradient(scores_NxC)
  given = jnp.take_along_axis(given_scores, safe[:, None], axis=1)[:, 0]
  infs = jnp.sum(given_scores == jnp.inf, axis=1)
  nans = jnp.any(jnp.isnan(given_scores), axis=1)
  ruled = nans | (infs > 0) | (given == -jnp.inf)
  scores_NxC = jnp.where(ruled[:, None], 0.0, scores_NxC)
  correct = jnp.take_along_axis(scores_NxC, safe[:, None], axis=1)
  # logsumexp_j(d_j), d = s - s_y, d_y = 0, with m = max(0, max_{j != y} d_j):
  # m + log(exp(-m) + sum_{j != y} exp(d_j - m)); where m = 0, log1p of the sum, so that a
  # confident prediction keeps its small loss (scores (20, 0, 0): 4.1e-9, not 0).
  others = jnp.where(jax.nn.one_hot(safe, c, dtype=jnp.bool_), -jnp.inf, scores_NxC - correct)
  m = jax.lax.stop_gradient(jnp.maximum(jnp.max(others, axis=1, initial=-jnp.inf), 0))
  # Scores whose differences overflow (3e38 and -3e38): loss +inf, and the gradient
  # softmax(s) - onehot(y) from logsumexp(s) - s_y, which does not overflow below. Their
  # rows leave the shifted form with zeros, whose gradient would otherwise be NaN.
  over = m == jnp.inf  # the ruled rows are zeros here: no score is NaN or +inf
  others = jnp.where(over[:, None], 0.0, others)
  m = jnp.where(over, 0.0, m)
  rest = jnp.sum(jnp.exp(others - m[:, None]), axis=1)
  loss = jnp.where(m > 0, m + jnp.log(jnp.exp(-m) + rest), jnp.log1p(rest))
  spread = jnp.where(over[:, None], scores_NxC, 0.0)
  loss = jnp.where(over, jax.nn.logsumexp(spread, axis=1) - jnp.where(over, correct[:, 0], 0.0),
                   loss)
  # The ruled rows, from their scores as given (constants: no gradient), in this order: a
  # NaN score, NaN; another score +inf, +inf; a correct score of -inf: probability 0, loss
  # +inf; of +inf: probability 1, loss 0 if no other score is +inf (else undefined, NaN).
  rule = jnp.where(nans | (infs == 0), jnp.nan, jnp.inf)
  rule = jnp.where(given == -jnp.inf, jnp.inf, rule)
  rule = jnp.where(given == jnp.inf, jnp.where(infs == 1, 0.0, jnp.nan), rule)
  loss = jnp.where(ruled, rule, loss)
  return _nan_where_out_of_range(loss, labels_N, scores_NxC.shape[1])


def _path_name(path) -> str:
  """"layers/0/w" for a jax key path."""
  parts = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _is_number_matrix(node) -> bool:
  """A list or tuple of non-empty lists or tuples of 0-d numbers (a matrix written as
  nested sequences); a sequence holding any array or None is not one."""
  def number(v):
    return (v is not None and not isinstance(v, (list, tuple, dict, str, bytes))
            and np.ndim(v) == 0)
  return (isinstance(node, (list, tuple)) and len(node) > 0 and all(
      isinstance(row, (list, tuple)) and len(row) > 0 and all(number(v) for v in row)
      for row in node))


def _number_matrix(params):
  """Where in ``params`` (any pytree: dicts, dataclasses, flax and equinox nodes) a matrix is
  given as nested sequences of numbers, a tree of scalars the penalty would skip (also
  under jit): "'W'" or "its top level"; None if nowhere."""
  if _is_number_matrix(params):
    return "its top level"
  flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_number_matrix)[0]
  return next((f"'{_path_name(path)}'" for path, leaf in flat if _is_number_matrix(leaf)),
              None)


def penalised_leaves(params, *, mask: Mask = None) -> list:
  """The leaves of ``params`` that ``l2_penalty`` sums over, in tree order.

  mask: None (every leaf with ndim >= 2: weight matrices and kernels, not
  biases or scales), a predicate ``(path, leaf) -> bool`` with path a string
  such as "layers/0/w" (any result Python takes as true or false chooses: a
  regex match, a count, None; a traced or many-valued result is an InputError,
  as is a function that cannot take (path, leaf), such as optax's masks of
  params: pass its result instead), or a pytree of bools with the structure of
  params.
  """
  if mask is None:
    where = _number_matrix(params)
    if where is not None:
      raise InputError(f"params holds a nested list of numbers at {where} (a tree of "
                       "scalars, which the penalty skips as it skips biases); pass the "
                       "weights as an array, e.g. jnp.asarray(W), or choose the penalised "
                       "leaves with mask=", argument="params")
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [v for _, v in flat if jnp.ndim(v) >= 2]
  if callable(mask):
    try:
      inspect.signature(mask).bind("w", None)
    except TypeError:
      raise InputError("mask must be a predicate (path, leaf) -> bool, with path a string "
                       "such as 'layers/0/w'; an optax-style mask (params -> pytree of "
                       "bools) can be given as its result, mask=mask_fn(params)",
                       argument="mask") from None
    except ValueError:  # no signature to read (a builtin): it is called as it is
      pass
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [v for path, v in flat if _predicate_bit(mask(_path_name(path), v))]
  if jax.tree.structure(mask) != jax.tree.structure(params):
    raise InputError(f"mask must be a predicate or a pytree of bools with the structure of "
                     f"params {jax.tree.structure(params)}, got {jax.tree.structure(mask)}",
                     argument="mask")
  return [v for m, v in zip(jax.tree.leaves(mask), jax.tree.leaves(params)) if _mask_bit(m)]


def _mask_bit(m) -> bool:
  """A leaf of a pytree mask as a Python bool, or InputError: it chooses leaves, so it must
  be a concrete True or False (a mask computed under jit cannot choose)."""
  if _checks.is_traced(m):
    raise InputError("mask's leaves must be concrete bools: it chooses which leaves to "
                     "penalise, so build it outside jax.jit, or pass a predicate "
                     "(path, leaf) -> bool", argument="mask")
  if np.ndim(m) != 0 or np.asarray(m).dtype != np.bool_:
    raise InputError(f"mask's leaves must be True or False, got {m!r}", argument="mask")
  return bool(m)


def _predicate_bit(m) -> bool:
  """A mask predicate's result, true or false as Python takes it (a match, a count, None),
  or InputError where it cannot choose: a traced value (computed from a leaf's values under
  jit) or an array of several values."""
  if _checks.is_traced(m):
    raise InputError("mask's result must be concrete: it chooses which leaves to penalise, "
                     "so decide by the path and the leaf's shape or dtype, not its values "
                     "under jax.jit", argument="mask")
  try:
    return bool(m)
  except (TypeError, ValueError) as e:  # an array of several values
    raise InputError(f"mask's result must be true or false, got {m!r} ({e})",
                     argument="mask") from None


def l2_penalty(params, *, mask: Mask = None):
  """sum over penalised leaves W of sum(W ** 2) (see ``penalised_leaves``; 0 if none).

  By default every leaf with ndim >= 2 is penalised: the weights of
  ``{"W", "b"}``, ``{"W1", "b1", "W2", "b2"}``, ``{"kernel", "bias"}`` or a
  list of layers, never the 1-D biases. The rule is the shape alone: biases
  stacked (layers, H) for a scanned network are penalised, and a 1-D weight
  vector is not; pass ``mask`` for those.
  """
  total = 0.0
  for i, v in enumerate(penalised_leaves(params, mask=mask)):
    v = jnp.asarray(v)
    # Integer weights: no wrap-around; float16 / bfloat16: a float32 sum, no overflow at 6.5e4.
    v = v.astype(jnp.promote_types(v.dtype, jnp.float32))
    total = jnp.sum(v * v) if i == 0 else total + jnp.sum(v * v)
  return jnp.asarray(total, jnp.float32) if isinstance(total, float) else total


LOSSES = {"svm": multiclass_svm, "softmax": softmax_cross_entropy}
