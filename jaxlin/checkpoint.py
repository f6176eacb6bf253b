"""Save and load a trained classifier with its preprocessing, in one .npz file.

Loading and pixel models need numpy only (no TensorFlow, no JAX): a saved
model can be used anywhere; models on HOG + hue features compute their
features with jaxlin.features (JAX). The file holds the parameters (``param/<name>``), the training mean
image, the input scale, the class names and a small JSON header (model kind,
loss, image shape, version).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Sequence

import numpy as np

from jaxlin import files

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SavedModel:
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

  def preprocess(self, images_uint8_NxHxWxC) -> np.ndarray:
    """The model's input rows: scaled centred pixels, or standardised HOG + hue features."""
    if self.features == "hog_hsv":
      from jaxlin import features  # pylint: disable=g-import-not-at-top  (needs JAX, not TensorFlow)
      f = np.asarray(features.extract(np.asarray(images_uint8_NxHxWxC, np.uint8)))
      return (f - self.feature_mean) / self.feature_std
    x = np.asarray(images_uint8_NxHxWxC, np.float32) - self.mean_image
    return (x / self.scale).reshape(len(x), -1)

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
    s = self.scores(images_uint8_NxHxWxC)
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def save(path: str, *, params: Mapping[str, np.ndarray], mean_image, scale: float,
         class_names: Sequence[str], kind: str, loss: str, features: str = "pixels",
         feature_mean=None, feature_std=None) -> str:
  """Write atomically (temporary file renamed into place), with the user's umask."""
  mean_image = np.asarray(mean_image, np.float32)
  header = {"format_version": FORMAT_VERSION, "kind": kind, "loss": loss, "scale": float(scale),
            "image_shape": list(mean_image.shape), "features": features}
  arrays = {f"param/{k}": np.asarray(v, np.float32) for k, v in params.items()}
  if features != "pixels":
    arrays.update(feature_mean=np.asarray(feature_mean, np.float32),
                  feature_std=np.asarray(feature_std, np.float32))
  arrays.update(mean_image=mean_image, class_names=np.asarray(list(class_names), dtype=str),
                header=np.asarray(json.dumps(header)))
  return files.atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path: str) -> SavedModel:
  """Read a model written by ``save``; a clear error for anything else."""
  try:
    with np.load(path, allow_pickle=False) as f:
      header = json.loads(str(f["header"]))
      params = {k[len("param/"):]: f[k] for k in f.files if k.startswith("param/")}
      mean_image, class_names = f["mean_image"], tuple(str(c) for c in f["class_names"])
      feature_stats = {k: f[k] for k in ("feature_mean", "feature_std") if k in f.files}
  except FileNotFoundError:
    raise ValueError(f"model file {path} does not exist") from None
  except (OSError, KeyError, ValueError) as e:
    raise ValueError(f"{path} is not a jaxlin model file ({e})") from None
  if header.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{path} has model format {header.get('format_version')}; "
                     f"this jaxlin reads format {FORMAT_VERSION}")
  return SavedModel(params=params, mean_image=mean_image, scale=header["scale"],
                    class_names=class_names, kind=header["kind"], loss=header["loss"],
                    image_shape=tuple(header["image_shape"]),
                    features=header.get("features", "pixels"), **feature_stats)
