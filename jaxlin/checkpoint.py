"""Save and load a trained classifier with its preprocessing, in one .npz file.

Loading and pixel models need numpy only (no TensorFlow, no JAX): a saved
model can be used anywhere; models on HOG + hue features compute their
features with jaxlin.features (JAX). The file holds the parameters
(``param/<name>``), the training mean image, the input scale, the class names
and a small JSON header (model kind, loss, image shape, version). ``load``
checks all of it and says in one line what is wrong with a file.
"""
from __future__ import annotations

import collections
import collections.abc
import dataclasses
import json
import os
import re
from typing import Mapping, Sequence

import numpy as np

from jaxlin import files
from jaxlin.errors import DataError, InputError

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SavedModel:
  """A trained classifier as ``save`` writes it and ``load`` reads it back (numpy only).

  ``preprocess`` / ``scores`` / ``probabilities`` take uint8 images (N, H, W, C) of the
  training shape and apply the run's own preprocessing (mean image and scale, or HOG and
  hue features standardised with the training statistics).
  """
  params: dict             # name -> np.ndarray ("W", "b", or "W1", "b1", "W2", "b2")
  mean_image: np.ndarray   # (H, W, C) float32
  scale: float             # inputs are (pixels - mean_image) / scale
  class_names: tuple
  kind: str                # "linear" or "mlp"
  loss: str                # "svm" or "softmax"
  image_shape: tuple
  features: str = "pixels"  # or "hog_hsv"
  feature_mean: np.ndarray | None = None  # (F,) standardisation of hog_hsv features
  feature_std: np.ndarray | None = None
  # hog_hsv: features.extract's settings (orientations, cell, bins) the model was trained with
  feature_settings: dict = dataclasses.field(default_factory=dict)

  def preprocess(self, images_uint8_NxHxWxC) -> np.ndarray:
    """The model's input rows: scaled centred pixels, or standardised HOG + hue features.

    Raises InputError unless the images are (N, *image_shape) 8-bit pixels (uint8, or
    integers in [0, 255]): floats such as [0, 1] images would be silently wrong.
    """
    images_uint8_NxHxWxC = self._check_images(images_uint8_NxHxWxC)
    if self.features == "hog_hsv" and len(images_uint8_NxHxWxC) == 0:
      return np.zeros((0, len(self.feature_mean)), np.float32)
    if self.features == "hog_hsv":
      # needs JAX, not TensorFlow
      from jaxlin import features  # pylint: disable=import-outside-toplevel
      f = np.asarray(features.extract(np.asarray(images_uint8_NxHxWxC, np.uint8),
                                      **self.feature_settings))
      return (f - self.feature_mean) / self.feature_std
    x = np.asarray(images_uint8_NxHxWxC, np.float32) - self.mean_image
    return (x / self.scale).reshape(len(x), int(np.prod(x.shape[1:])))

  def _check_images(self, images) -> np.ndarray:
    images = np.asarray(images)
    if images.shape[1:] != tuple(self.image_shape) or images.ndim != 4:
      raise InputError(f"images must be (N, {', '.join(map(str, self.image_shape))}) for this "
                       f"model, got {images.shape}", argument="images")
    if images.dtype == np.uint8:
      return images
    if not np.issubdtype(images.dtype, np.integer):
      raise InputError(f"images must be uint8 pixels in [0, 255], got {images.dtype} (for "
                       "[0, 1] floats: (x * 255).round().astype(np.uint8))", argument="images")
    if images.size and (images.min() < 0 or images.max() > 255):
      raise InputError(f"images must be 8-bit pixels in [0, 255], got values in "
                       f"[{images.min()}, {images.max()}]", argument="images")
    return images.astype(np.uint8)

  def scores(self, images_uint8_NxHxWxC) -> np.ndarray:
    """Class scores (N, C) in numpy, the same function as training used."""
    x = self.preprocess(images_uint8_NxHxWxC)
    p = self.params
    if self.kind == "linear":
      return x @ p["W"] + p["b"]
    if self.kind == "mlp":
      return np.maximum(x @ p["W1"] + p["b1"], 0.0) @ p["W2"] + p["b2"]
    raise ValueError(f"unknown model kind {self.kind!r}")

  def probabilities(self, images_uint8_NxHxWxC) -> np.ndarray:
    """Softmax of ``scores`` (N, C): class probabilities for a softmax model; for an SVM
    only an ordering of the classes (its scores are margins, not log-probabilities)."""
    s = self.scores(images_uint8_NxHxWxC)
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def save(path: str, *, params: Mapping[str, np.ndarray], mean_image, scale: float,
         class_names: Sequence[str], kind: str, loss: str, features: str = "pixels",
         feature_mean=None, feature_std=None, feature_settings=None) -> str:
  """Write atomically (temporary file renamed into place), with the user's umask.

  features "hog_hsv": ``feature_settings`` are ``features.extract``'s keyword arguments
  the features were made with ({"orientations", "cell", "bins"}; default: its defaults);
  feature_mean and feature_std must have their length.

  Checked first as ``load`` checks a file (InputError naming what is wrong, nothing
  written): a model ``save`` writes is one ``load`` reads. Arrays are stored as float32,
  as the experiments train them: float64 params are rounded (scores then agree with the
  float64 model to float32 precision).
  """
  path = _checked_path(path)
  if isinstance(class_names, str):
    raise InputError(f"class_names must be a sequence of names, got the string {class_names!r}",
                     argument="class_names")
  if isinstance(class_names, (collections.abc.Set, Mapping)):  # no order, or keys not names
    raise InputError(f"class_names must be an ordered sequence of names (a list or tuple, "
                     f"one per class in label order), got a value of type "
                     f"{type(class_names).__name__}",
                     argument="class_names")
  def as_float32(name, v):
    try:
      with np.errstate(over="ignore"):  # beyond float32: inf, refused below
        return np.asarray(v, np.float32)
    except (TypeError, ValueError):
      raise InputError(f"{name} must be an array of numbers, got {type(v).__name__}",
                       argument=name) from None
  if not isinstance(params, Mapping):
    raise InputError(f"params must be a dict of arrays (as init_params returns), got "
                     f"{type(params).__name__}", argument="params")
  if features != "pixels" and (feature_mean is None or feature_std is None):
    raise InputError(f"features={features!r} needs feature_mean and feature_std (the "
                     "standardisation the model was trained with)", argument="feature_mean")
  mean_image = as_float32("mean_image", mean_image)
  if mean_image.ndim != 3 or not all(mean_image.shape):
    raise InputError(f"mean_image must be the training images' mean image, (H, W, C) (a "
                     f"features model keeps it too: its shape is the shape of the images it "
                     f"classifies), got shape {mean_image.shape}", argument="mean_image")
  if (isinstance(scale, (bool, np.bool_, str, bytes))
      or as_float32("scale", scale).ndim != 0):
    raise InputError(f"scale must be a finite number > 0 (the pixels' scale), got {scale!r}",
                     argument="scale")
  header = {"format_version": FORMAT_VERSION, "kind": kind, "loss": loss,
            "scale": float(np.float64(scale)),  # stored exactly (float64), checked below
            "image_shape": list(mean_image.shape), "features": features}
  if features == "hog_hsv":
    header["feature_settings"] = _feature_settings(feature_settings)
  elif feature_settings is not None:
    raise InputError(f"feature_settings apply to features='hog_hsv', not {features!r}",
                     argument="feature_settings")
  if kind in KINDS:
    extra = sorted(set(map(str, params)) - {n for n, _ in KINDS[kind]})
    if extra:
      raise InputError(f"params has {', '.join(map(repr, extra))}, which a {kind!r} model "
                       f"does not have (its params: {', '.join(n for n, _ in KINDS[kind])}); "
                       "load would drop them", argument="params")
  arrays = {f"param/{k}": as_float32(f"params[{k!r}]", v) for k, v in params.items()}
  if features != "pixels":
    arrays.update(feature_mean=as_float32("feature_mean", feature_mean),
                  feature_std=as_float32("feature_std", feature_std))
  arrays.update(mean_image=mean_image, class_names=np.asarray(list(class_names), dtype=str))
  try:
    _validated(path, dict(arrays), header)
  except ModelFileError as e:
    why = re.sub(r"param/(\w+)", r"params['\1']", e.reason)  # the caller's names
    argument = _argument_of(why)
    first = params.get(KINDS[kind][0][0]) if kind in KINDS else None
    if (features == "pixels" and np.ndim(first) == 2 and mean_image.ndim == 3
        and np.shape(first)[0] != mean_image.size):
      why += (f" (one row per value of mean_image, of shape {mean_image.shape}: the two must "
              "come from the same images)")
    raise InputError(f"cannot save this model: {why}", argument=argument) from None
  arrays["header"] = np.asarray(json.dumps(header))
  try:
    return files.atomic_write(path, lambda f: np.savez(f, **arrays))
  except OSError as e:
    raise InputError(f"cannot write the model to {path}: {e.strerror or e}; pass a path in a "
                     "writable folder", argument="path") from e


def _argument_of(why: str) -> str:
  """The argument of ``save`` that ``_validated``'s reason ``why`` is about."""
  for prefix, argument in (("unknown kind", "kind"), ("unknown loss", "loss"),
                           ("unknown features", "features"), ("scale", "scale"),
                           ("image_shape", "mean_image"), ("mean_image", "mean_image"),
                           ("feature_mean", "feature_mean"), ("feature_std", "feature_std"),
                           ("feature_settings", "feature_settings"),
                           ("class_names", "class_names"), ("no class names", "class_names"),
                           ("class name ", "class_names")):
    if why.startswith(prefix):
      return argument
  return "class_names" if "class names for" in why else "params"


_FEATURE_DEFAULTS = {"orientations": 9, "cell": 8, "bins": 10}  # features.extract's


def _feature_settings(settings) -> dict:
  """features.extract's settings in full: ``settings`` over its defaults."""
  if settings is None:
    return dict(_FEATURE_DEFAULTS)
  if not isinstance(settings, Mapping) or set(settings) - set(_FEATURE_DEFAULTS):
    raise InputError(f"feature_settings must be a dict with keys among "
                     f"{', '.join(_FEATURE_DEFAULTS)}, got {settings!r}",
                     argument="feature_settings")
  out = {**_FEATURE_DEFAULTS, **settings}
  for k, v in out.items():
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
      raise InputError(f"feature_settings[{k!r}] must be a positive int, got {v!r}",
                       argument="feature_settings")
  return {k: int(v) for k, v in out.items()}


def _checked_path(path) -> str:
  """A file path (str or os.PathLike), not a file descriptor or another object."""
  if not isinstance(path, (str, bytes, os.PathLike)):
    raise InputError(f"path must be a file path (str, bytes or os.PathLike), got {path!r}",
                     argument="path")
  return os.fsdecode(path)


class ModelFileError(DataError, ValueError):
  """A model file is missing, unreadable or not a valid jaxlin model."""

  def __init__(self, message: str, *, argument: str | None = None, reason: str | None = None):
    super().__init__(message, argument=argument)
    self.reason = reason or message


KINDS = {"linear": (("W", 2), ("b", 1)), "mlp": (("W1", 2), ("b1", 1), ("W2", 2), ("b2", 1))}
LOSSES = ("svm", "softmax")
FEATURES = ("pixels", "hog_hsv")
_ZIP, _NPY = b"PK\x03\x04", b"\x93NUMPY"


def load(path: str) -> SavedModel:
  """Read a model written by ``save`` and check it whole.

  Raises ModelFileError (one line: what is wrong, and with which file) for a missing,
  empty, truncated or foreign file, missing or mis-shaped arrays, non-finite weights, a
  non-positive scale, too few class names, an unknown kind, loss or features, or a HOG model
  without its feature statistics.
  """
  path = _checked_path(path)
  arrays, header = _read(path)
  return _validated(path, arrays, header)


def _validated(path: str, arrays: dict, header: dict) -> SavedModel:
  """The SavedModel of a file's arrays and header, or ModelFileError saying what is wrong."""
  bad = lambda why: ModelFileError(f"{path} is not a valid jaxlin model: {why}",
                                   argument="path", reason=why)
  version = header.get("format_version")
  if isinstance(version, bool) or not isinstance(version, int):  # "1" and True were let by
    raise bad(f"its header's format_version is {version!r}, not a format number")
  if version != FORMAT_VERSION:
    raise ModelFileError(f"{path} has model format {version}; this jaxlin reads format "
                         f"{FORMAT_VERSION}", argument="path")
  kind, loss = header.get("kind"), header.get("loss")
  features = header.get("features", "pixels")
  for name, value, known in (("kind", kind, tuple(KINDS)), ("loss", loss, LOSSES),
                             ("features", features, FEATURES)):
    if value not in known:
      raise bad(f"unknown {name} {value!r} (known: {', '.join(known)})")
  try:
    image_shape, scale = header["image_shape"], header["scale"]
  except KeyError as e:
    raise bad(f"header lacks a valid {e}") from None
  if (not isinstance(image_shape, (list, tuple)) or len(image_shape) != 3
      or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in image_shape)):
    shown = tuple(image_shape) if isinstance(image_shape, (list, tuple)) else image_shape
    raise bad(f"image_shape {shown!r} is not (H, W, C) of positive integers")
  image_shape = tuple(image_shape)
  # The pixels are divided by scale in float32: it must be a normal float32 number.
  f32 = np.finfo(np.float32)
  lo, hi = float(f32.tiny), float(f32.max)  # compared as Python floats (no float32 overflow)
  try:
    ok = not isinstance(scale, bool) and isinstance(scale, (int, float)) and (
        lo <= float(scale) <= hi)
  except OverflowError:  # an int beyond float64
    ok = False
  if not ok:
    raise bad(f"scale must be a finite number > 0 within float32's normal range "
              f"({lo:.3g} to {hi:.3g}), got {scale!r}")
  scale = float(scale)
  needed = ["mean_image", "class_names"] + [f"param/{n}" for n, _ in KINDS[kind]]
  if features == "hog_hsv":
    needed += ["feature_mean", "feature_std"]
  missing = [n for n in needed if n not in arrays]
  if missing:
    raise bad(f"missing {', '.join(missing)}")
  extra = sorted(n for n in arrays if n.startswith("param/")
                 and n[len("param/"):] not in {m for m, _ in KINDS[kind]})
  if extra:  # (save refuses them: a model of this kind would not use them)
    raise bad(f"{', '.join(extra)} is not a parameter of a {kind!r} model (its: "
              f"{', '.join(f'param/{m}' for m, _ in KINDS[kind])})")
  params = {n: arrays[f"param/{n}"] for n, _ in KINDS[kind]}
  names = arrays["class_names"]
  if names.ndim != 1 or names.dtype.kind != "U":
    raise bad(f"class_names must be a 1-D array of strings, got {names.dtype} of shape "
              f"{names.shape}")
  class_names = tuple(str(c) for c in names)
  if not class_names:
    raise bad("no class names: a model has at least one class")
  repeated = sorted(c for c, count in collections.Counter(class_names).items() if count > 1)
  if repeated:
    raise bad(f"class name {repeated[0]!r} appears more than once: predictions would not say "
              "which class they mean")
  shapes = _expected_shapes(kind, params, image_shape, features, arrays, bad)
  for name, expected in shapes.items():
    got = arrays[name].shape
    if got != expected:
      raise bad(f"{name} has shape {got}, expected {expected}")
    if not np.issubdtype(arrays[name].dtype, np.floating):
      raise bad(f"{name} has dtype {arrays[name].dtype}, expected float")
    if not np.all(np.isfinite(arrays[name])):
      raise bad(f"{name} holds inf or NaN (or values beyond float32)")
  n_classes = params["b" if kind == "linear" else "b2"].shape[0]
  if len(class_names) != n_classes:
    raise bad(f"{len(class_names)} class names for {n_classes} classes")
  stats = {}
  if features == "hog_hsv":
    if not np.all(arrays["feature_std"] > 0):
      raise bad("feature_std must be > 0 (1 for a constant feature, as "
                "features.standardise gives it)")
    stats = {k: arrays[k] for k in ("feature_mean", "feature_std")}
    try:
      settings = _feature_settings(header.get("feature_settings"))  # older files: defaults
    except InputError as e:
      raise bad(str(e)) from None
    h, w, _ = image_shape
    if settings["cell"] > min(h, w):
      raise bad(f"feature_settings cell={settings['cell']} is larger than the {h}x{w} images")
    size = (h // settings["cell"]) * (w // settings["cell"]) * settings["orientations"] + (
        settings["bins"])
    if len(arrays["feature_mean"]) != size:
      raise bad(f"feature_mean has {len(arrays['feature_mean'])} values, but the HOG + hue "
                f"features of {h}x{w} images with {settings} have {size}")
    stats["feature_settings"] = settings
  return SavedModel(params=params, mean_image=arrays["mean_image"], scale=scale,
                    class_names=class_names, kind=kind, loss=loss, image_shape=image_shape,
                    features=features, **stats)


def _expected_shapes(kind, params, image_shape, features, arrays, bad) -> dict:
  """{array name: shape} the arrays must have, from the first layer's output sizes."""
  d = (int(np.prod(image_shape)) if features == "pixels"
       else (arrays["feature_mean"].shape or (0,))[0])
  for name, ndim in KINDS[kind]:
    if params[name].ndim != ndim:
      grid = (" (params stacked over a grid, as Trainer.fit returns them? save one member: "
              "train.member(fit.params, g))" if params[name].ndim == ndim + 1 else "")
      raise bad(f"param/{name} has shape {params[name].shape}, expected {ndim} "
                f"dimensions{grid}")
  shapes = {"mean_image": image_shape}
  if kind == "linear":
    c = params["W"].shape[1]
    shapes.update({"param/W": (d, c), "param/b": (c,)})
  else:
    h, c = params["W1"].shape[1], params["W2"].shape[1]
    shapes.update({"param/W1": (d, h), "param/b1": (h,), "param/W2": (h, c), "param/b2": (c,)})
  if features == "hog_hsv":
    shapes.update(feature_mean=(d,), feature_std=(d,))
  return shapes


def _read(path: str) -> tuple[dict, dict]:
  """(arrays, header) of a model file, or ModelFileError naming what the file is instead."""
  not_model = lambda why: ModelFileError(f"{path} is not a jaxlin model file ({why})",
                                         argument="path")
  try:
    with open(path, "rb") as f:
      magic = f.read(8)
  except FileNotFoundError:
    raise ModelFileError(f"model file {path} does not exist", argument="path") from None
  except IsADirectoryError:
    inside = os.path.join(path, "model.npz")  # a run's workdir: its model is in it
    raise not_model("it is a folder" + (f"; the model a run saved there is {inside}"
                                        if os.path.isfile(inside) else "")) from None
  except OSError as e:
    raise ModelFileError(f"cannot read model file {path}: {e.strerror or e}",
                         argument="path") from None
  if not magic:
    raise not_model("the file is empty")
  if magic.startswith(_NPY):
    raise not_model("it is a single .npy array; a model is the .npz an experiment writes")
  if not magic.startswith(_ZIP):
    raise not_model("not an .npz archive")
  try:
    with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:  # closed on errors too
      arrays = {k: f[k] for k in f.files}
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # a damaged zip directory raises
    # zipfile's errors for a flag it reads as "encrypted" or an unknown compression method too
    if "Object arrays cannot be loaded" in str(e):
      raise not_model("it holds an object array (pickled Python objects), which a model "
                      "file never does") from None
    raise not_model(f"truncated or corrupt: {e}") from None
  raw = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
  if raw:  # numpy gives a member that is not an .npy array as its bytes
    raise not_model(f"its member {raw[0]!r} is not a numpy array")
  if "header" not in arrays:
    raise not_model("no header")
  try:
    header = json.loads(str(arrays.pop("header")))
    if not isinstance(header, dict):
      raise ValueError("not an object")
  except ValueError as e:
    raise not_model(f"unreadable header: {e}") from None
  return arrays, header
