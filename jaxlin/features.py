"""Image features: histogram of oriented gradients and a hue histogram.

Both are pure functions of one (H, W, 3) image that jit and vmap over batches
(``extract`` does both, batched). As in the course:

* HOG: grey image (0.299 r + 0.587 g + 0.114 b, computed exactly in
  integers), forward-difference gradients (0 in the last row / column),
  orientation atan2(gy, gx) + 90 degrees binned over (0, 180) into
  ``orientations`` equal half-open bins; each cell of ``cell`` x ``cell``
  pixels gets, per bin, the sum of the gradient magnitudes of its pixels in that
  bin divided by the cell's cell * cell pixels (the course's mean over the cell).
  So only gradients that point right (gx > 0) are counted: a pixel whose
  gradient points left (gx < 0, orientation beyond 180) or straight up or down
  (gx = 0, orientation 0 or 180, as on a horizontal edge) is in no bin. The
  features are not mirror-invariant (a left-to-right ramp has them, its mirror
  image none), and on CIFAR-10 about half the gradient magnitude is left out.
  This is the course's HOG, kept so that its figures can be reproduced, with
  two differences from its published code: that code weighs blue by 0.144 (a
  typo for the standard 0.114 used here), and lays out its cells column-major
  (here row-major: the same features in another order, which no classifier
  here notices).
* Colour: a histogram of the hue channel of HSV over ``bins`` equal bins of
  [0, 1], normalised to sum to 1; each pixel's bin in exact integer arithmetic
  (a hue on a bin edge goes to the upper bin).

Images are uint8 pixels (0..255), as data.load gives them. Other dtypes are
rejected with an InputError: HOG magnitudes scale with the pixel range, so
float images in [0, 1] would silently give features 255 times smaller.
Convert them first, e.g. ``(images * 255).round().astype(np.uint8)``.
"""
from __future__ import annotations

import functools
import hashlib
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import _checks, files
from jaxlin.errors import InputError

__all__ = ["GREY", "MAX_BINS", "hog", "hue", "hue_histogram", "extract", "cached_extract",
           "standardise"]

GREY = (0.299, 0.587, 0.114)


def _pixels(image, argument: str = "image_HxWx3", ndim: int = 3):
  """``image`` as an array, checked to be uint8 (..., 3) pixels (at trace time under jit)."""
  x = image if isinstance(image, jax.Array) else np.asarray(image)
  if x.dtype != np.uint8:
    raise InputError(f"{argument} must be uint8 pixels (0..255), got {x.dtype}; "
                     f"{_dtype_fix(x)} (features scale with the pixel range)", argument=argument)
  if x.ndim != ndim or x.shape[-1] != 3:
    shape = "(H, W, 3)" if ndim == 3 else "(N, H, W, 3)"
    raise InputError(f"expected {argument} {shape}, got {x.shape}{_layout_fix(x.shape, ndim)}",
                     argument=argument)
  return x


def _dtype_fix(x) -> str:
  """How to turn ``x`` into uint8 pixels, from its values where they are known (not under
  jit): floats in [0, 1] are scaled by 255, values already in 0..255 only rounded (scaling
  those would wrap around silently)."""
  general = ("for floats in [0, 1] pass (x * 255).round().astype(np.uint8), for values in "
             "0..255 x.round().astype(np.uint8)")
  kind = jnp.dtype(x.dtype).kind
  floating = jnp.issubdtype(x.dtype, jnp.floating)  # bfloat16 too
  if isinstance(x, jax.core.Tracer) or x.size == 0 or not (floating or kind in "iub"):
    return general
  if kind == "b":
    return "a boolean mask? pass x.astype(np.uint8) * 255"
  values = np.asarray(x, np.float64) if floating else np.asarray(x)
  if not np.all(np.isfinite(values)):
    return "its values must be finite; " + general
  low, high = values.min(), values.max()
  if floating and low >= -1 and high <= 2:  # [0, 1] images, perhaps a little past the ends
    fix = "(x * 255)" if 0 <= low and high <= 1 else "(np.clip(x, 0, 1) * 255)"
    return (f"its values span {low:g}..{high:g}, as images in [0, 1]: pass "
            f"{fix}.round().astype(np.uint8)")
  if low >= -0.5 and high < 255.5:
    return (f"its values span {low:g}..{high:g}, within 0..255: pass "
            f"{'x.round()' if floating else 'x'}.astype(np.uint8)")
  return (f"its values span {low:g}..{high:g}, outside 0..255: rescale them to 0..255 first, "
          f"then .round().astype(np.uint8)")


def _layout_fix(shape, ndim: int) -> str:
  """A hint for the common wrong layouts of images (or '')."""
  if len(shape) == ndim - 1:  # one image given for a batch, or grayscale
    if ndim == 4 and shape[-1] == 3:
      return "; one image? pass x[None]"
    if ndim == 4 and shape[0] == 3:
      return "; one channels-first image? pass x.transpose(1, 2, 0)[None]"
    return "; grayscale images? pass np.repeat(x[..., None], 3, axis=-1)"
  if len(shape) == ndim + 1 and ndim == 3:
    return ("; a batch of images? pass one image (jax.vmap over the batch), or call "
            "features.extract for HOG and hue together")
  if len(shape) != ndim:
    return ""
  if shape[-3] == 3 and shape[-1] not in (1, 4):  # (the last axis is not 3 here)
    return ("; channels first? pass " + ("x.transpose(0, 2, 3, 1)" if ndim == 4
                                           else "x.transpose(1, 2, 0)"))
  if shape[-1] == 1:
    return "; grayscale images? pass np.repeat(x, 3, axis=-1)"
  if shape[-1] == 4:
    return "; RGBA images? drop the alpha channel: x[..., :3]"
  return ""


def _grey_thousandths(image_HxWx3):
  """1,000 x the grey image, exactly: 299 r + 587 g + 114 b in int32 (at most 255,000). In
  floats two colours of the same grey could differ by a rounding, and a horizontal edge
  between them would get gx = +-1 ulp, counted in the first or last bin instead of none."""
  x = jnp.asarray(image_HxWx3).astype(jnp.int32)
  return sum(round(1000 * w) * x[..., i] for i, w in enumerate(GREY))


def hog(image_HxWx3, *, orientations: int = 9, cell: int = 8):
  """(H // cell) * (W // cell) * orientations features of a uint8 image, cell-major (the
  course's HOG: gradients that point left, up or down are in no bin; see the module's
  docstring)."""
  orientations = _checks.int_at_least(orientations, "orientations", 1)
  cell = _checks.int_at_least(cell, "cell", 1)
  g = _grey_thousandths(_pixels(image_HxWx3))
  h, w = g.shape
  if cell > min(h, w):
    raise InputError(f"cell={cell} is larger than the {h} x {w} image: no whole cell to "
                     "describe; use a cell of at most the image side", argument="cell")
  # Integer differences, exact in float32 (below 2**24): gx == 0 exactly where the greys tie.
  gx = jnp.zeros_like(g).at[:, :-1].set(jnp.diff(g, axis=1)).astype(jnp.float32)
  gy = jnp.zeros_like(g).at[:-1, :].set(jnp.diff(g, axis=0)).astype(jnp.float32)
  mag = jnp.sqrt(gx * gx + gy * gy) / 1000.0
  # atan2(gy, gx) + 90 lies in [-90, 270]; only (0, 180) is binned. (The course adds
  # 1e-15 to gx, which moves gx == 0 pixels off the edges 0 / 180 or not depending
  # on float rounding; the exact atan2 keeps them on the edges, out of every bin.)
  ori = jnp.degrees(jnp.arctan2(gy, gx)) + 90.0
  width = 180.0 / orientations
  bins = jnp.arange(orientations, dtype=jnp.float32)
  o = ori[..., None]
  in_bin = (o >= width * bins) & (o < width * (bins + 1)) & (o > 0)
  per_bin = jnp.where(in_bin, mag[..., None], 0.0)  # (H, W, O)
  ch, cw = h // cell, w // cell
  cells = per_bin[:ch * cell, :cw * cell].reshape(ch, cell, cw, cell, orientations)
  return cells.mean(axis=(1, 3)).reshape(-1)


def _hue_sixths(image_HxWx3):
  """(t, delta) int32 (H, W): the hue is exactly t / (6 delta) (0 where delta = 0), from the
  uint8 values in integers. matplotlib's rgb_to_hsv: with delta = max - min of (r, g, b),
  hue * 6 = (g - b) / delta where r is the max, 2 + (b - r) / delta where g is, 4 +
  (r - g) / delta where b is (where two channels tie for the max, both formulas agree),
  taken mod 6."""
  x = jnp.asarray(_pixels(image_HxWx3)).astype(jnp.int32)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  mx, mn = x.max(-1), x.min(-1)
  delta = mx - mn
  t = jnp.where(mx == r, g - b, jnp.where(mx == g, 2 * delta + b - r, 4 * delta + r - g))
  return jnp.where(t < 0, t + 6 * delta, t), delta  # t in [0, 6 delta)


def hue(image_HxWx3):
  """Hue (H, W) in [0, 1) of HSV, from uint8 RGB (matplotlib's rgb_to_hsv convention): the
  float32 nearest the exact hue (one rounding, of a quotient of integers) on a CPU, whose
  float32 division is IEEE's; XLA's on a GPU may be up to two units in the last place
  off, and a TPU's is not promised to be IEEE's. ``hue_histogram`` bins in integers,
  the same on every device (its normalisation divides in float32)."""
  t, delta = _hue_sixths(image_HxWx3)
  return jnp.where(delta > 0, t.astype(jnp.float32) / jnp.maximum(6 * delta, 1).astype(
      jnp.float32), 0.0)


MAX_BINS = 2 ** 31 // (6 * 255)  # t * bins stays an int32 in hue_histogram


def hue_histogram(image_HxWx3, *, bins: int = 10):
  """Normalised histogram (sums to 1) of hue over ``bins`` equal bins of [0, 1].

  Each pixel's bin is floor(hue * bins) in exact integer arithmetic: a hue on an edge
  between two bins (common in images: 0.2 for (196, 197, 192), 0.7 for (216, 215, 220))
  goes to the upper bin, as exact arithmetic puts it, not where float rounding happens to
  (float32 put 0.7 in bin 6 of 10). bins: 1 to ``MAX_BINS``.
  """
  bins = _checks.int_at_least(bins, "bins", 1)
  if bins > MAX_BINS:
    raise InputError(f"bins must be at most {MAX_BINS}, got {bins}", argument="bins")
  if min(np.shape(image_HxWx3)[:2], default=0) < 1:
    raise InputError(f"image_HxWx3 has no pixels (shape {np.shape(image_HxWx3)})",
                     argument="image_HxWx3")
  t, delta = _hue_sixths(image_HxWx3)
  idx = jnp.where(delta > 0, (t * bins) // jnp.maximum(6 * delta, 1), 0)  # in [0, bins)
  counts = jnp.bincount(idx.reshape(-1), length=bins)  # (not one-hot: pixels x bins)
  return counts.astype(jnp.float32) / idx.size


@functools.partial(jax.jit, static_argnames=("orientations", "cell", "bins"))
def _extract_batch(images_BxHxWx3, *, orientations, cell, bins):
  one = lambda im: jnp.concatenate([hog(im, orientations=orientations, cell=cell),
                                    hue_histogram(im, bins=bins)])
  return jax.vmap(one)(images_BxHxWx3)


def extract(images_NxHxWx3, *, orientations: int = 9, cell: int = 8, bins: int = 10,
            batch_size: int = 1000, callback=None):
  """HOG and hue-histogram features (N, F) float32 of uint8 images (N, H, W, 3), in batches.

  F = (H // cell) * (W // cell) * orientations + bins. callback(done, N) after each batch.
  No images (N = 0) give (0, F).
  """
  for name, value in (("orientations", orientations), ("cell", cell), ("bins", bins),
                      ("batch_size", batch_size)):
    _checks.int_at_least(value, name, 1)
  _checks.callback(callback, "callback(done, total)", images_NxHxWx3)
  images = jnp.asarray(_pixels(images_NxHxWx3, "images_NxHxWx3", ndim=4))
  n = images.shape[0]
  if n == 0:  # (0, F): e.g. a process of a multi-host run that holds no rows of a split
    one = jax.eval_shape(lambda im: _extract_batch(im, orientations=orientations, cell=cell,
                                                   bins=bins),
                         jax.ShapeDtypeStruct((1,) + images.shape[1:], images.dtype))
    return jnp.zeros((0,) + one.shape[1:], one.dtype)
  out = []
  for start in range(0, n, batch_size):
    batch = images[start:start + batch_size]
    valid = batch.shape[0]
    if valid < batch_size and n > batch_size:  # pad: one compiled shape for every batch
      batch = jnp.pad(batch, ((0, batch_size - valid), (0, 0), (0, 0), (0, 0)))
    out.append(_extract_batch(batch, orientations=orientations, cell=cell, bins=bins)[:valid])
    if callback is not None:
      out[-1].block_until_ready()
      callback(start + valid, n)
  return jnp.concatenate(out)


def standardise(train_NxF, *others, stats=None):
  """(x - mean) / std with training statistics (std of a constant feature: 1).

  stats: (mean, std) computed elsewhere, e.g. over the rows of every process.

  Integers are computed in float32 (float64 under jax_enable_x64 for 32- and
  64-bit ones). Where float32 would round a concrete 32-bit training array's
  values (beyond 2**24, e.g. timestamps), every concrete integer input is
  first shifted by the training column minimum in int64 arithmetic, so the
  statistics see the exact spread, and the returned mean adds the shift back
  (rounded to float32: ``stats=`` of such a mean would round the data again,
  so integers beyond the float are refused there, as are 64-bit integers
  beyond 2**53, and traced inputs are cast as they are). float64 numpy inputs
  without jax_enable_x64 (which JAX would round to float32 before the statistics
  see them: 1e8 + noise would be constant) are standardised by numpy in float64:
  the features come back as float32, and (mean, std) as float64 numpy arrays, so that
  ``stats=`` gives other rows the same features.
  """
  def rows(x, name, ndims=(2,)):
    x = _checks.jax_exact(x, name)
    x = x if _checks.narrowed(x) else jnp.asarray(x)
    if x.ndim not in ndims:
      raise InputError(f"{name} must be 2-D (rows, features), got shape {x.shape}",
                       argument=name)
    return x
  def as_float(x, name, shift):  # ints and float16: float32 or wider, no overflow
    integers = jnp.issubdtype(x.dtype, jnp.integer)
    if integers and shift is not None and not _checks.is_traced(x):  # exact in int64
      return jnp.asarray((np.asarray(x, np.int64) - shift).astype(_checks.float_for(x.dtype)))
    if integers:
      dtype = _checks.float_for(x.dtype)
      if shift is None:
        _checks.exact_ints(x, name, dtype, "subtract a reference value first (e.g. the "
                           "column minimum, from the data and from a mean given as stats)"
                           + ("" if dtype == "float64" else ", or enable jax_enable_x64"))
      x = x.astype(dtype)
    elif jnp.finfo(x.dtype).bits < 32:  # float16, bfloat16
      x = x.astype(jnp.float32)
    if shift is not None:
      x = x - shift.astype(x.dtype)
    _checks.finite(x, name, "standardised features would be NaN")
    return x
  train = rows(train_NxF, "train_NxF")
  others = tuple(rows(x, f"others[{i}]", (1, 2)) for i, x in enumerate(others))  # or one row
  f = train.shape[1]
  for i, x in enumerate(others):
    if x.shape[-1] != f:
      raise InputError(f"others[{i}] has {x.shape[-1]} features, train_NxF {f}",
                       argument=f"others[{i}]")
  if stats is None and train.shape[0] == 0:
    raise InputError("train_NxF is empty: no rows for the statistics", argument="train_NxF")
  traced = _checks.is_traced(stats) or any(map(_checks.is_traced, (train,) + others + (
      tuple(stats) if isinstance(stats, (tuple, list)) else ())))
  if not traced and any(_checks.narrowed(x) for x in (train,) + others):
    return _standardised_host(train, others, stats)
  train, others = jnp.asarray(train), tuple(map(jnp.asarray, others))  # beside traced ones
  shift = _integer_shift(train) if stats is None else None
  train = as_float(train, "train_NxF", shift)
  others = tuple(as_float(x, f"others[{i}]", shift) for i, x in enumerate(others))
  if stats is None:
    mean, std = _moments(train)
  else:
    mean, std = (v.astype(train.dtype) for v in _checked_stats(stats, f))
  out, (mean, std) = _standardised((train,) + others, mean, std)
  return out, (mean if shift is None else mean + shift.astype(mean.dtype), std)


def _checked_stats(stats, f: int):
  """``stats`` as (mean, std), each an (f,) array (numpy or jax, as given; lists as numpy),
  finite, std >= 0; or InputError."""
  if (isinstance(stats, (str, bytes, dict)) or getattr(stats, "shape", None) == ()
      or not hasattr(stats, "__len__") or len(stats) != 2):
    raise InputError("stats must be a pair (mean, std) of (F,) arrays", argument="stats")
  mean, std = (_checks.jax_exact(v, "stats") for v in stats)
  if mean.shape != (f,) or std.shape != (f,):
    raise InputError(f"stats must be (mean, std) of shape ({f},) each, got {mean.shape} and "
                     f"{std.shape}", argument="stats")
  _checks.finite(mean, "stats", "the features would be NaN")
  _checks.finite(std, "stats", "the features would be NaN")
  if not _checks.is_traced(std) and bool(np.any(np.asarray(std) < 0)):
    raise InputError("stats: std must be >= 0", argument="stats")
  return mean, std


def _standardised_host(train, others, stats):
  """``standardise`` by numpy in float64 (for float64 numpy inputs without jax_enable_x64):
  the features as float32 jax arrays, (mean, std) as float64 numpy arrays (rounded to
  float32, a mean of 1e8 + 3 would shift rows given it as stats by 3)."""
  xs = [np.asarray(x, np.float64) for x in (train,) + others]
  for x, name in zip(xs, ["train_NxF"] + [f"others[{i}]" for i in range(len(others))]):
    _checks.finite(x, name, "standardised features would be NaN")
  if stats is None:
    lows, highs = xs[0].min(axis=0), xs[0].max(axis=0)
    constant = lows == highs  # as pin_constant_columns: (that value, 0)
    mean = np.where(constant, lows, xs[0].mean(axis=0))
    std = np.where(constant, 0.0, xs[0].std(axis=0))
  else:
    mean, std = (np.asarray(v, np.float64) for v in _checked_stats(stats, xs[0].shape[1]))
  std = np.where(std > 0, std, 1.0)
  out = tuple(jnp.asarray(((x - mean) / std).astype(np.float32)) for x in xs)
  return out, (mean, std)


def _huge_unit(size_F):
  """Per column, the unit the statistics work in: 2**96 where ``size_F`` passes 2**60
  (dividing by a power of two is exact; entries below 2**-30 of such a column become
  subnormal, flushed to 0 on CPUs: nothing against it), else 1."""
  return jnp.where(size_F > 2.0 ** 60, 2.0 ** 96, 1.0).astype(size_F.dtype)


@jax.jit
def _moments(train_NxF):
  # The squares of float32 values beyond 1.8e19 overflow: std came out inf (every
  # feature 0). Scaled, they lie below 2**32.
  scale = _huge_unit(jnp.max(jnp.abs(train_NxF), axis=0))
  x = train_NxF / scale
  return pin_constant_columns(jnp.mean(x, axis=0) * scale, jnp.std(x, axis=0) * scale,
                              jnp.min(train_NxF, axis=0), jnp.max(train_NxF, axis=0))


def pin_constant_columns(mean_F, std_F, lowest_F, highest_F):
  """(mean, std) with every column whose lowest and highest training values are equal set
  to (that value, 0).

  The float mean of a constant column need not be the constant (0.1 summed in float32),
  and its std then comes out near 1e-8, not 0: standardising would divide other rows'
  values by it (0.11 would become 6.7e5).
  """
  constant = lowest_F == highest_F
  return (jnp.where(constant, lowest_F, mean_F),
          jnp.where(constant, jnp.zeros_like(std_F), std_F))


def _integer_shift(train_NxF):
  """The training column minima (int64, numpy) when the float the integer ``train_NxF`` is
  computed in would round its values; else None (floats, traced or empty arrays)."""
  x = train_NxF
  if (_checks.is_traced(x) or x.size == 0 or not jnp.issubdtype(x.dtype, jnp.integer)
      or x.dtype.itemsize > 4 or _checks.float_for(x.dtype) != "float32"):
    return None  # 64-bit integers: float64, exact to 2**53 (beyond: refused)
  lo, hi = _checks.value_range(x)
  if max(-lo, hi) <= 1 << 24:
    return None
  return np.asarray(x, np.int64).min(axis=0)


@jax.jit  # one program for every array, not one per operation
def _standardised(xs, mean, std):
  std = jnp.where(std > 0, std, 1.0)
  # XLA divides by multiplying with 1 / std, which beyond 8.5e37 is subnormal and flushed
  # to 0 on CPUs (every feature 0), and x - mean could overflow.
  scale = _huge_unit(std)
  return tuple((x / scale - mean / scale) / (std / scale) for x in xs), (mean, std)


def _source_key() -> bytes | None:
  """A hash of this module's source as imported (a zip install too), or None if the source
  is not available: then nothing is cached (a key that misses a code change is stale)."""
  try:
    source = __loader__.get_source(__name__)
  except (ImportError, OSError, AttributeError):
    source = None
  return None if source is None else hashlib.blake2b(source.encode(), digest_size=16).digest()


_CODE_KEY = _source_key()  # at import: the code that runs, even if the file changes later


def _code_key() -> bytes | None:
  return _CODE_KEY


def _read_features(path: str, n: int):
  """The (n, F) float32 features of a cache entry, or None when it is unreadable or corrupt
  (not its shape, or not its CRC-32): then they are computed again and the entry rewritten."""
  try:
    with np.load(path) as entry:
      out, crc = entry["features"], entry["crc32"]
    if (out.dtype == np.float32 and out.ndim == 2 and out.shape[0] == n and crc.shape == ()
        and files.crc32(out) == int(crc)):
      return out
  except MemoryError:  # not damage: rebuilding would fail too, and overwrite a good entry
    raise
  except Exception:  # pylint: disable=broad-except  # any damage: a miss, rebuilt
    # (numpy and zipfile raise whatever a damaged archive makes them raise: BadZipFile, and
    # zipfile's errors for an "encrypted" flag or an unknown compression method among them)
    pass
  return None


def cached_extract(images_NxHxWx3, *, cache_dir: str | None, callback=None, **settings):
  """``extract`` with an on-disk cache keyed by the image bytes and the settings.

  Repeated runs on the same images reuse the saved features; ``cache_dir``
  None disables the cache (``~`` is expanded). The key includes this module's
  source, so features saved by an earlier version of the code are not reused.
  Files are written atomically, with the user's umask, with a CRC-32 of the
  features: an entry that does not match it (or their shape) is computed again.
  A cache_dir that cannot be made or written to raises InputError before any
  work; a write that fails later (a full disk) is a warning, and the features
  are returned all the same.
  """
  if not cache_dir or _code_key() is None:
    return extract(images_NxHxWx3, callback=callback, **settings)
  cache_dir = os.path.expanduser(cache_dir)
  images = np.ascontiguousarray(_pixels(images_NxHxWx3, "images_NxHxWx3", ndim=4))
  h = hashlib.blake2b(digest_size=16)
  h.update(_code_key())
  h.update(repr((images.shape, str(images.dtype), sorted(settings.items()))).encode())
  h.update(images.data)
  path = os.path.join(cache_dir, f"features-{h.hexdigest()}.npz")
  if os.path.exists(path):
    cached = _read_features(path, len(images))
    if cached is not None:
      return jnp.asarray(cached)
  try:  # before the work, not after it
    os.makedirs(cache_dir, exist_ok=True)
    if not os.access(cache_dir, os.W_OK | os.X_OK):
      raise PermissionError(13, "Permission denied", cache_dir)
  except OSError as e:
    raise InputError(f"cannot write the feature cache in {cache_dir}: {e.strerror or e}; pass "
                     "a writable cache_dir, or None for no cache", argument="cache_dir") from None
  out = extract(images, callback=callback, **settings)
  host = np.asarray(out)
  try:
    files.atomic_write(path, lambda f: np.savez(f, features=host,
                                                crc32=np.uint32(files.crc32(host))))
  except OSError as e:  # the features are here: a cache that cannot keep them costs later runs
    warnings.warn(f"the feature cache in {cache_dir} could not keep these features "
                  f"({e.strerror or e}); they are computed again next time", stacklevel=2)
  return out
