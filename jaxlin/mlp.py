"""Two-layer network: affine -> ReLU -> affine.

Parameters ``{"W1": (D, H), "b1": (H,), "W2": (H, C), "b2": (C,)}``; the
weights (the 2-D leaves) are L2-regularised, biases are not. Trained
with the same losses, train step and grid search as the linear models.

Products run at full float32 precision on every device, as in ``jaxlin.linear``
(a GPU's TF32 or a TPU's bfloat16 passes would change the scores), so a model
scores alike on CPU, GPU and TPU and as a saved model (``jaxlin.checkpoint``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import _checks, linear
from jaxlin.errors import InputError

_HIGHEST = jax.lax.Precision.HIGHEST

__all__ = ["init_params", "hidden", "scores"]


def init_params(key, num_features: int, hidden_size: int, num_classes: int, *,
                scale: float | None = None):
  """He initialisation (std sqrt(2 / fan_in)) unless ``scale`` (> 0) gives the std."""
  for name, size in (("num_features", num_features), ("hidden_size", hidden_size),
                     ("num_classes", num_classes)):
    _checks.int_at_least(size, name, 1)
  if scale is not None:
    scale = _checks.finite_number(scale, "scale")
    # All-zero weights (scale 0, or below float32's smallest number): ReLU's gradient at 0
    # is 0, so W1, b1 and W2 would never train. (A traced scale is the caller's to check.)
    if not isinstance(scale, jax.core.Tracer) and not np.float32(scale) > 0:
      raise InputError(f"scale is the weights' standard deviation and must be > 0 in float32, "
                       f"got {scale}; None takes He's sqrt(2 / fan_in)", argument="scale")
  k1, k2 = jax.random.split(_checks.random_key(key))
  s1 = scale if scale is not None else (2.0 / num_features) ** 0.5
  s2 = scale if scale is not None else (2.0 / hidden_size) ** 0.5
  return {"W1": s1 * jax.random.normal(k1, (num_features, hidden_size), jnp.float32),
          "b1": jnp.zeros((hidden_size,), jnp.float32),
          "W2": s2 * jax.random.normal(k2, (hidden_size, num_classes), jnp.float32),
          "b2": jnp.zeros((num_classes,), jnp.float32)}


def hidden(params, x_NxD):
  """ReLU activations (N, H). x_NxD is checked as ``jaxlin.linear.scores`` checks it."""
  linear.only(params, ("W1", "b1", "W2", "b2"))
  w1 = linear.param(params, "W1", (None, None))
  b1 = linear.bias(params, "b1", w1, "W1", x_NxD)
  x_NxD = linear.checked_rows(x_NxD, w1, "W1")
  return jax.nn.relu(jnp.matmul(x_NxD, w1, precision=_HIGHEST) + b1)


def scores(params, x_NxD):
  """Class scores (N, C) = relu(x W1 + b1) W2 + b2."""
  h = hidden(params, x_NxD)
  w2 = linear.param(params, "W2", (h.shape[1], None))
  return jnp.matmul(h, w2, precision=_HIGHEST) + linear.param(params, "b2", (w2.shape[1],))
