"""Two-layer network: affine -> ReLU -> affine.

Parameters ``{"W1": (D, H), "b1": (H,), "W2": (H, C), "b2": (C,)}``; the
weights (the 2-D leaves) are L2-regularised, biases are not. Trained
with the same losses, train step and grid search as the linear models.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlin.errors import InputError

__all__ = ["init_params", "hidden", "scores"]


def init_params(key, num_features: int, hidden_size: int, num_classes: int, *,
                scale: float | None = None):
  """He initialisation (std sqrt(2 / fan_in)) unless ``scale`` gives the std."""
  k1, k2 = jax.random.split(key)
  s1 = scale if scale is not None else (2.0 / num_features) ** 0.5
  s2 = scale if scale is not None else (2.0 / hidden_size) ** 0.5
  return {"W1": s1 * jax.random.normal(k1, (num_features, hidden_size), jnp.float32),
          "b1": jnp.zeros((hidden_size,), jnp.float32),
          "W2": s2 * jax.random.normal(k2, (hidden_size, num_classes), jnp.float32),
          "b2": jnp.zeros((num_classes,), jnp.float32)}


def hidden(params, x_NxD):
  """ReLU activations (N, H)."""
  if x_NxD.ndim != 2 or x_NxD.shape[1] != params["W1"].shape[0]:
    raise InputError(f"x has shape {x_NxD.shape}; expected (N, {params['W1'].shape[0]})",
                     argument="x_NxD")
  return jax.nn.relu(x_NxD @ params["W1"] + params["b1"])


def scores(params, x_NxD):
  """Class scores (N, C) = relu(x W1 + b1) W2 + b2."""
  return hidden(params, x_NxD) @ params["W2"] + params["b2"]
