"""Linear classifier f(x) = x W + b.

Parameters are a dict ``{"W": (D, C), "b": (C,)}``; the bias is not
regularised (see ``jaxlin.losses.l2_penalty``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlin.errors import InputError

__all__ = ["init_params", "scores"]


def init_params(key, num_features: int, num_classes: int, *, scale: float = 1e-3):
  """W ~ scale * N(0, 1), b = 0."""
  return {"W": scale * jax.random.normal(key, (num_features, num_classes), jnp.float32),
          "b": jnp.zeros((num_classes,), jnp.float32)}


def scores(params, x_NxD):
  """Class scores (N, C) = x @ W + b."""
  w = params["W"]
  if x_NxD.ndim != 2 or x_NxD.shape[1] != w.shape[0]:
    raise InputError(f"x has shape {x_NxD.shape}; expected (N, {w.shape[0]}) for W of shape "
                     f"{w.shape}", argument="x_NxD")
  return jnp.matmul(x_NxD, w, precision=jax.lax.Precision.HIGHEST) + params["b"]
