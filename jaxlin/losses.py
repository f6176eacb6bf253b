"""Per-example classification losses and the L2 penalty.

Losses take scores (N, C) and integer labels (N,) and return (N,); the
training objective is mean(loss) + reg * l2_penalty(params).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _check(scores_NxC, labels_N):
  if scores_NxC.ndim != 2 or labels_N.shape != scores_NxC.shape[:1]:
    raise ValueError(f"expected scores (N, C) and labels (N,), got {scores_NxC.shape} and {labels_N.shape}")
  if not jnp.issubdtype(labels_N.dtype, jnp.integer):
    raise ValueError(f"labels must be integers, got {labels_N.dtype}")


def multiclass_svm(scores_NxC, labels_N, *, margin: float = 1.0, squared: bool = False):
  """Weston-Watkins multiclass hinge loss, the course's sum form:

    L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + margin)      (squared: each term ** 2)

  (optax.losses.multiclass_hinge_loss is the Crammer-Singer max form: a different loss.)
  """
  scores_NxC, labels_N = jnp.asarray(scores_NxC), jnp.asarray(labels_N)
  _check(scores_NxC, labels_N)
  correct = jnp.take_along_axis(scores_NxC, labels_N[:, None], axis=1)
  margins = jnp.maximum(0.0, scores_NxC - correct + margin)
  is_true = jax.nn.one_hot(labels_N, scores_NxC.shape[1], dtype=jnp.bool_)
  margins = jnp.where(is_true, 0.0, margins)
  if squared:
    margins = margins * margins
  return jnp.sum(margins, axis=1)


def softmax_cross_entropy(scores_NxC, labels_N):
  """L_i = -log softmax(s)_{y_i} = logsumexp_j(s_j - s_{y_i}).

  Shifting by the correct score (inside logsumexp's own max shift) keeps the
  result finite and accurate for scores of any size: no cancellation between
  two large numbers.
  """
  scores_NxC, labels_N = jnp.asarray(scores_NxC), jnp.asarray(labels_N)
  _check(scores_NxC, labels_N)
  correct = jnp.take_along_axis(scores_NxC, labels_N[:, None], axis=1)
  return jax.nn.logsumexp(scores_NxC - correct, axis=1)


def l2_penalty(params):
  """Sum of squared weights over every leaf named W* (biases are not regularised)."""
  return sum(jnp.sum(v * v) for k, v in params.items() if k.startswith("W"))


LOSSES = {"svm": multiclass_svm, "softmax": softmax_cross_entropy}
