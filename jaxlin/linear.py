"""Linear classifier f(x) = x W + b.

Parameters are a dict ``{"W": (D, C), "b": (C,)}``; the bias is not
regularised (see ``jaxlin.losses.l2_penalty``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import _checks
from jaxlin.errors import InputError

__all__ = ["init_params", "scores"]


def param(params, name: str, shape: tuple):
  """params[name], checked to have ``shape`` (None: any size), or InputError."""
  try:
    v = params[name]
  except (KeyError, TypeError, IndexError):
    raise InputError(f"params has no {name!r}: pass the dict init_params returns",
                     argument="params") from None
  if isinstance(v, (list, tuple)):  # jnp.result_type cannot type a nested list
    raise InputError(f"params[{name!r}] is a {type(v).__name__}: pass an array, e.g. "
                     "jnp.asarray(value, jnp.float32)", argument="params")
  if not jnp.issubdtype(jnp.result_type(v), jnp.floating):  # integer products would wrap
    raise InputError(f"params[{name!r}] has dtype {jnp.result_type(v)}: the model needs float "
                     "parameters, e.g. jnp.asarray(value, jnp.float32)", argument="params")
  got = np.shape(v)
  if len(got) != len(shape) or any(e is not None and g != e for g, e in zip(got, shape)):
    want = tuple("?" if e is None else e for e in shape)
    raise InputError(f"params[{name!r}] must have shape {want}, got {got}".replace("'?'", "?"),
                     argument="params")
  return v


def only(params, names: tuple) -> None:
  """InputError where ``params`` (a dict) holds entries other than ``names``: a model that
  ignores an entry would train it only through the penalty (e.g. a third layer's weights
  given to a two-layer network)."""
  if not isinstance(params, dict) or not set(names) <= set(params):
    return  # param() names the entry missing (another model's params, say)
  extra = sorted(map(str, set(params) - set(names)))
  if extra:
    raise InputError(f"params has entries this model does not use: {', '.join(extra)} (it "
                     f"uses {', '.join(names)}); remove them, or write your own apply_fn",
                     argument="params")


def init_params(key, num_features: int, num_classes: int, *, scale: float = 1e-3):
  """W ~ scale * N(0, 1), b = 0. ``scale`` >= 0 (0: all-zero weights, from which a linear
  classifier trains as well)."""
  key = _checks.random_key(key)
  num_features = _checks.int_at_least(num_features, "num_features", 1)
  num_classes = _checks.int_at_least(num_classes, "num_classes", 1)
  scale = _checks.finite_number(scale, "scale")
  if not _checks.is_traced(scale) and scale < 0:
    raise InputError(f"scale is the weights' standard deviation and must be >= 0, got {scale}",
                     argument="scale")
  return _init_params(key, num_features, num_classes, scale)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_params(key, num_features, num_classes, scale):
  return {"W": scale * jax.random.normal(key, (num_features, num_classes), jnp.float32),
          "b": jnp.zeros((num_classes,), jnp.float32)}


def bias(params, name: str, w, w_name: str, x):
  """params[name], checked to be one value per column of the layer ``w`` (D, C): (C,).
  A layer given transposed, (C, D) with its bias of C values and inputs ``x`` of D
  features, is named as such (else the bias would take the blame)."""
  try:
    got = np.shape(params[name])
  except (KeyError, TypeError, IndexError):
    got = None  # param() names it
  try:
    width = np.shape(x)[-1] if np.ndim(x) >= 1 else None
  except ValueError:  # a ragged list: checked_rows names it
    width = None
  if got == (w.shape[0],) and width == w.shape[1] != w.shape[0]:
    raise InputError(f"params[{w_name!r}] has shape {w.shape} and params[{name!r}] {got}: "
                     f"{w_name} is (inputs, outputs), so with this bias it must be "
                     f"{(w.shape[1], w.shape[0])}; if it is stored (outputs, inputs), pass "
                     f"its transpose", argument="params")
  return param(params, name, (w.shape[1],))


def checked_rows(x_NxD, w, name: str = "W"):
  """x_NxD as an (N, D) array of real numbers for a first layer ``w`` (D, ...): lists as
  arrays; strings and complex numbers refused; integers that the product's float (JAX's
  promotion of x with ``w``: float32 for float32 weights, bfloat16 for bfloat16 ones) would
  round refused (beyond int32 without jax_enable_x64, as JAX would wrap them; beyond 2**24
  in float32, 2**8 in bfloat16). InputError naming x_NxD."""
  x_NxD = _checks.jax_exact(x_NxD, "x_NxD")  # lists as arrays; strings refused
  _checks.keeps_spread(x_NxD, "x_NxD")
  if not (jnp.issubdtype(x_NxD.dtype, jnp.integer) or jnp.issubdtype(x_NxD.dtype, jnp.floating)
          or x_NxD.dtype == jnp.bool_):
    raise InputError(f"x_NxD must hold real numbers, got dtype {x_NxD.dtype}", argument="x_NxD")
  if np.ndim(x_NxD) != 2 or np.shape(x_NxD)[1] != w.shape[0]:
    fix = f"; {_checks.rows_fix(np.shape(x_NxD))}" if np.ndim(x_NxD) != 2 else ""
    raise InputError(f"x has shape {np.shape(x_NxD)}; expected (N, {w.shape[0]}) for {name} of "
                     f"shape {w.shape}{fix}", argument="x_NxD")
  product = jnp.result_type(jax.dtypes.canonicalize_dtype(x_NxD.dtype),  # int16 x bfloat16:
                            jnp.result_type(w))  # bfloat16
  if not jnp.issubdtype(product, jnp.floating):  # integer weights are refused by param()
    product = jnp.promote_types(product, jnp.float32)
  _checks.exact_ints(x_NxD, "x_NxD", str(product),
                     "scale the inputs (e.g. subtract a reference value), or use wider float "
                     "parameters (float64 under jax_enable_x64)")
  return x_NxD


def scores(params, x_NxD):
  """Class scores (N, C) = x @ W + b."""
  only(params, ("W", "b"))
  w = param(params, "W", (None, None))
  b = bias(params, "b", w, "W", x_NxD)
  x_NxD = checked_rows(x_NxD, w)
  return jnp.matmul(x_NxD, w, precision=jax.lax.Precision.HIGHEST) + b
