"""Argument checks shared by jaxlin's modules.

Each raises ``jaxlin.errors.InputError`` naming the argument and the fix.
Value checks are skipped for traced arrays (never branch on a traced value).
"""
from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin.errors import InputError


def is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def concrete_int(value, name: str) -> int:
  """A Python int from an int, a numpy integer or a concrete integer jax scalar."""
  if isinstance(value, (bool, np.bool_)):
    raise InputError(f"{name} must be an integer, got the bool {value!r}", argument=name)
  if is_traced(value):
    raise InputError(f"{name} must be a concrete integer (it sets a shape), not a traced "
                     "value; pass it as a static argument", argument=name)
  if isinstance(value, (jax.Array, np.ndarray)):
    if value.ndim != 0 or not jnp.issubdtype(value.dtype, jnp.integer):
      raise InputError(f"{name} must be an integer scalar, got an array of shape "
                       f"{value.shape} and dtype {value.dtype}", argument=name)
    return int(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  raise InputError(f"{name} must be an integer, got {value!r}", argument=name)


def narrowed(a) -> bool:
  """Whether ``a`` is a host (numpy) float array that JAX would round to a narrower float:
  float64 without jax_enable_x64."""
  return (isinstance(a, np.ndarray) and a.dtype.kind == "f"
          and jax.dtypes.canonicalize_dtype(a.dtype) != a.dtype)


def keeps_spread(a, name: str, argument: str | None = None) -> None:
  """InputError naming ``name`` where ``a`` is a host float array that JAX would narrow
  (``narrowed``) and the narrower float moves a column's values by more than 1/1024 of
  that column's range: 1e8 + N(0, 1) in float32 keeps a handful of values, and a model
  would see noise or constants. Columns whose range is below 2**-40 of their magnitude
  (float64 rounding noise, e.g. sums of probabilities) count as constant; columns that
  the narrower float holds exactly (whole numbers below 2**24) pass."""
  if not narrowed(a) or a.ndim < 2 or not a.size:
    return
  cols = a.reshape(len(a), -1)
  held = jax.dtypes.canonicalize_dtype(a.dtype)
  with np.errstate(invalid="ignore", over="ignore"):
    spread = cols.max(axis=0) - cols.min(axis=0)
    top = np.abs(cols).max(axis=0)
    moved = np.abs(cols.astype(held).astype(a.dtype) - cols).max(axis=0)
  bad = np.flatnonzero((spread > top * 2.0 ** -40) & (moved > spread / 1024))
  if bad.size:
    j = int(bad[0])
    raise InputError(f"{name}'s feature {j} lies near {top[j]:.6g} but spans only "
                     f"{spread[j]:.6g}: JAX's {held} (without jax_enable_x64) would move its "
                     f"values by up to {moved[j]:.3g} ({bad.size} such feature(s)); subtract a "
                     "reference value first (e.g. each feature's mean), or enable "
                     "jax_enable_x64", argument=argument or name)


def mesh_axis(mesh, name: str = "mesh") -> str:
  """The axis name of ``mesh``, a 1-D jax.sharding.Mesh, else an InputError."""
  if not isinstance(mesh, jax.sharding.Mesh) or len(mesh.axis_names) != 1:
    raise InputError(f"{name} must be a 1-D jax.sharding.Mesh (see jaxlin.sharding.make_mesh), "
                     f"got {mesh!r}", argument=name)
  return mesh.axis_names[0]


def int_at_least(value, name: str, low: int) -> int:
  """``value`` as a Python int of at least ``low``, else an InputError naming ``name``."""
  value = concrete_int(value, name)
  if value < low:
    need = "a positive int" if low == 1 else f"an integer >= {low}"
    raise InputError(f"{name} must be {need}, got {value}", argument=name)
  return value


@functools.lru_cache(maxsize=None)
def _raw_key_shape(impl: str) -> tuple:
  """The shape of a raw key of the random-number generator ``impl`` (its key data)."""
  del impl  # the cache key: the shape below is the default generator's
  return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape


def random_key(key, name: str = "key"):
  """``key`` if it is a jax random key (``jax.random.key``, or a raw uint32 key of
  ``jax.random.PRNGKey`` for the default implementation: (2,) for threefry, (4,) for
  rbg), traced or not; else an InputError naming ``name``."""
  dtype = getattr(key, "dtype", None)
  raw = _raw_key_shape(jax.config.jax_default_prng_impl)
  typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
  if typed or (dtype == jnp.uint32 and np.shape(key)[-len(raw):] == raw):
    batch = np.shape(key) if typed else np.shape(key)[:-len(raw)]
    if batch:
      raise InputError(f"{name} must be one random key, got a batch of keys of shape {batch}: "
                       f"pass one of them (e.g. keys[0] of jax.random.split)", argument=name)
    return key
  raise InputError(f"{name} must be a jax random key (jax.random.key(seed)), got {key!r}",
                   argument=name)


def is_real_number(v, integer: bool = False) -> bool:
  """Whether ``v`` is one real number (an integer one with ``integer``): a Python or numpy
  number, or a 0-d real array, jax's too (bfloat16 is no numpy "number", but a real float);
  not a bool, a string or a complex number."""
  if isinstance(v, (bool, np.bool_, str, bytes)) or np.ndim(v) != 0:
    return False
  try:
    dtype = np.asarray(v).dtype
  except (TypeError, ValueError):
    return False
  return bool(jnp.issubdtype(dtype, jnp.integer) or (
      not integer and jnp.issubdtype(dtype, jnp.floating)))


def finite_number(value, name: str):
  """``value`` as a float if it is a finite real number (a traced one passes unchanged),
  else InputError naming ``name``."""
  if is_traced(value):
    return value
  dtype = np.asarray(value).dtype if np.ndim(value) == 0 else None
  if isinstance(value, (bool, np.bool_)) or dtype is None or not (
      jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
    raise InputError(f"{name} must be a real number, got {value!r}", argument=name)
  if not np.isfinite(float(value)):
    raise InputError(f"{name} must be finite, got {value!r}", argument=name)
  return float(value)


def callback(fn, call: str, *arrays, nargs: int = 2) -> None:
  """InputError unless ``fn`` is None or callable with ``nargs`` positional arguments
  (``call``: how it is called), and, when any of ``arrays`` is traced (a caller's jit),
  None: progress is reported as work ends. Checked up front, so that a wrong callback
  fails before the work, not after its first part."""
  if fn is not None and not callable(fn):
    raise InputError(f"callback must be callable as {call} or None, got {fn!r}",
                     argument="callback")
  if fn is not None:
    try:
      signature = inspect.signature(fn, follow_wrapped=False)  # a wrapper's own parameters
    except (TypeError, ValueError):  # some builtins have none: let the call decide
      signature = None
    if signature is not None:
      try:
        signature.bind(*range(nargs))
      except TypeError as e:
        raise InputError(f"callback is called as {call}, but {fn!r} cannot take "
                         f"{nargs} positional argument{'s' if nargs > 1 else ''} ({e}); "
                         "change its parameters", argument="callback") from None
  if fn is not None and under_jit(*arrays):
    raise InputError("callback reports the progress of a call outside jit; under jit, "
                     "vmap or scan pass callback=None", argument="callback")


def num_classes(value) -> int:
  value = concrete_int(value, "num_classes")
  if value < 1:
    raise InputError(f"num_classes must be at least 1, got {value}", argument="num_classes")
  return value


def labels(values, num_classes_: int, name: str, n: int | None = None):
  """Integer labels checked to lie in [0, num_classes); traced ones get the checks of their
  dtype and shape only (known while tracing).

  n: the labels must be 1-D with n entries (one per database row).
  """
  values = values if isinstance(values, jax.Array) or is_traced(values) else np.asarray(values)
  if not jnp.issubdtype(values.dtype, jnp.integer):
    raise InputError(f"{name} must hold integer class labels, got dtype {values.dtype}",
                     argument=name)
  if n is not None and (values.ndim != 1 or values.shape[0] != n):
    raise InputError(f"{name} must be 1-D with one label per row ({n}), got shape "
                     f"{values.shape}", argument=name)
  if is_traced(values):
    return values
  if values.size:
    lo, hi = value_range(values)
    if lo < 0 or hi >= num_classes_:
      raise InputError(f"{name} must lie in [0, num_classes) = [0, {num_classes_}), found "
                       f"{lo if lo < 0 else hi}; pass the right num_classes or fix the labels",
                       argument=name)
  return values


def in_class_range(labels, num_classes_: int):
  """Bool mask of the integer ``labels`` in [0, num_classes), compared in a dtype that
  holds num_classes (uint8 labels with 256 classes do not wrap); works traced."""
  labels = labels.astype(jnp.promote_types(labels.dtype, jnp.int32))
  return (labels >= 0) & (labels < num_classes_)


@jax.jit
def _float_stats_jit(x):
  return jnp.sum(~jnp.isfinite(x)), jnp.max(jnp.where(jnp.isfinite(x), jnp.abs(x), 0))


@jax.jit
def _min_max(x):
  return jnp.min(x), jnp.max(x)


@jax.jit
def _any_nan(x):
  return jnp.isnan(x).any()


# The checks below run on concrete arrays, also when a caller's jit, scan or map is tracing
# around them (a concrete jax array closed over): ensure_compile_time_eval computes them now
# instead of adding them to the caller's program as tracers.


def under_jit(*arrays) -> bool:
  """Whether a caller's jit is tracing around this call: any of ``arrays`` is traced, or a
  value made now is (concrete arrays closed over in a jitted function). The value is put,
  not computed: outside a trace that compiles nothing."""
  return any(is_traced(a) for a in arrays) or is_traced(jax.device_put(0))


def outside_jit(what: str, argument: str, *arrays) -> None:
  """InputError naming ``argument`` when ``what`` is called under a caller's jit."""
  if under_jit(*arrays):
    raise InputError(f"{what} runs outside jit (and vmap, scan and other transformations: it "
                     "needs concrete values); call it outside your transformed function",
                     argument=argument)


def has_nan(x) -> bool:
  """Whether a concrete float array holds NaN (numpy on the host, one program otherwise)."""
  if isinstance(x, np.ndarray):
    return bool(np.isnan(x).any())
  with jax.ensure_compile_time_eval():
    return bool(_any_nan(x))


def extremes(x) -> tuple:
  """(lowest, highest) of a concrete non-empty array, as numpy scalars: numpy for a host
  array, one compiled program for a jax array."""
  if isinstance(x, np.ndarray):
    return np.min(x), np.max(x)
  with jax.ensure_compile_time_eval():
    return tuple(np.asarray(v) for v in _min_max(x))


def value_range(x) -> tuple[int, int]:
  """(lowest, highest) of a concrete non-empty integer array."""
  lo, hi = extremes(x)
  return int(lo), int(hi)


def float_stats(x) -> tuple[int, float]:
  """(number of NaN / inf entries, largest finite absolute value) of a concrete float array:
  numpy on the host (no compilation), one compiled program for a jax array."""
  if isinstance(x, np.ndarray):
    ok = np.isfinite(x)
    return int(x.size - np.count_nonzero(ok)), float(np.max(np.abs(x), where=ok, initial=0))
  if not x.size:  # nothing to count (max has no identity)
    return 0, 0.0
  with jax.ensure_compile_time_eval():
    bad, big = _float_stats_jit(x)
    return int(bad), float(big)


def exact_int_bits(float_dtype) -> int:
  """A float holds every integer up to 2**bits: its mantissa's bits and the implicit one
  (bfloat16 8, float16 11, float32 24, float64 53)."""
  return int(jnp.finfo(float_dtype).nmant) + 1


def float_for(*dtypes) -> str:
  """The float dtype arithmetic on inputs of ``dtypes`` runs in: "float64" if one is float64,
  or, under jax_enable_x64, an integer of 32 or 64 bits (float32 holds integers exactly only
  up to 2**24); "float32" otherwise."""
  dts = [jnp.dtype(d) for d in dtypes]
  wide = jax.config.jax_enable_x64 and any(
      jnp.issubdtype(d, jnp.integer) and d.itemsize >= 4 for d in dts)
  return "float64" if wide or any(d == jnp.float64 for d in dts) else "float32"


def exact_ints(x, name: str, float_dtype: str, fix: str) -> float:
  """The largest absolute value of a concrete integer array ``x`` (0.0 for traced, empty or
  float arrays, and for dtypes ``float_dtype`` holds whole); InputError naming ``name``, with
  ``fix``, if ``float_dtype``, which the arithmetic casts it to, cannot hold every value."""
  bits = exact_int_bits(float_dtype)
  if (is_traced(x) or x.size == 0 or not jnp.issubdtype(x.dtype, jnp.integer)
      or max(-int(jnp.iinfo(x.dtype).min), int(jnp.iinfo(x.dtype).max)) <= 1 << bits):
    return 0.0  # e.g. uint8 or int16 in float32: nothing to scan
  lo, hi = value_range(x)
  largest = max(-lo, hi)
  if largest > 1 << bits:
    raise InputError(f"{name} holds integers up to {largest}, beyond 2**{bits}, so {float_dtype} "
                     f"arithmetic would round them: {fix}", argument=name)
  return float(largest)


def finite(x, name: str, why: str = "distances to them are undefined") -> float:
  """InputError naming ``name`` if a concrete float array holds NaN or inf; else its
  largest absolute value (0.0 for traced, integer or empty arrays)."""
  if is_traced(x) or not jnp.issubdtype(x.dtype, jnp.floating) or x.size == 0:
    return 0.0
  bad, largest = float_stats(x)
  if bad:
    raise InputError(f"{name} contains {bad} NaN or infinite value(s); {why}: remove or "
                     "replace them first", argument=name)
  return largest


def host_array(a, name: str) -> np.ndarray:
  """A non-jax input as a numpy array JAX can hold without changing a value: numeric,
  rectangular, and (without jax_enable_x64) 64-bit integers within int32, which JAX would
  otherwise wrap silently."""
  try:
    a = np.asarray(a)
  except (ValueError, TypeError) as e:
    raise InputError(f"{name} must be a rectangular numeric array: {e}", argument=name) from None
  if a.dtype.kind not in "biuf" and not jnp.issubdtype(a.dtype, jnp.floating):  # + bfloat16
    raise InputError(f"{name} must hold integers or real floats, got dtype {a.dtype}",
                     argument=name)
  if a.dtype.kind == "f" and a.dtype.itemsize > 8:
    raise InputError(f"{name} holds {a.dtype}, which JAX has no type for: convert it first, "
                     "e.g. with .astype(np.float64)", argument=name)
  if a.dtype.kind in "iu" and a.dtype.itemsize >= 4 and a.size and not jax.config.jax_enable_x64:
    info = np.iinfo(np.int32)
    lo, hi = int(a.min()), int(a.max())
    if lo < info.min or hi > info.max:
      raise InputError(f"{name} holds integers beyond int32 ({lo if lo < info.min else hi}), "
                       "which JAX would wrap without jax_enable_x64: pass floats (e.g. "
                       "float64 with jax_enable_x64) or smaller integers", argument=name)
  return a


def jax_exact(a, name: str):
  """``a`` unchanged if it is a jax array or traced; else ``host_array(a, name)``."""
  if isinstance(a, jax.Array) or is_traced(a):
    return a
  return host_array(a, name)


def rows_fix(shape) -> str:
  """The fix to suggest for an array that should be 2-D (rows, features): one row made a
  row of a 2-D array, or images flattened."""
  if len(shape) <= 1:
    return "a single row? make it one row of a 2-D array, e.g. x.reshape(1, -1)"
  return "flatten images first, e.g. x.reshape(len(x), -1)"


def flag(value, name: str) -> bool:
  """A True / False argument (1 and 0 too), or InputError naming it: "no" would be true."""
  if not (isinstance(value, (bool, np.bool_)) or (
      isinstance(value, (int, np.integer)) and value in (0, 1))):
    raise InputError(f"{name} must be True or False (or 1 or 0), got {value!r}", argument=name)
  return bool(value)
