"""Datasets: CIFAR-10 through tfds, or a local image folder through tfds.ImageFolder.

The only module that imports tensorflow / tensorflow_datasets (lazily, so that
``import jaxlin`` stays light and TensorFlow never sees a GPU).

Splits follow the course: train = the first ``M - num_val`` examples of the
source's training split, val = its last ``num_val``, test = the test split.
Subsets (``num_train``, ``num_test``) are drawn at random with the run's seed,
never the first N. tfds's CIFAR-10 training split is already shuffled, and
tfds.ImageFolder shuffles each split with a fixed seed, so the val split is
a fixed, class-mixed set for a given source.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import socket
import sys
import threading
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_DOWNLOAD_HOST = ("www.cs.toronto.edu", 443)  # where tfds fetches CIFAR-10


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # (N, H, W, C) uint8
  labels: np.ndarray  # (N,) int32

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  train: Split
  val: Split
  test: Split
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.train.images.shape[1:])


def _tf():
  # TensorFlow only decodes images here: keep its C++ info and warning lines out of
  # the user's terminal (errors still show; set TF_CPP_MIN_LOG_LEVEL=0 to see all).
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  with _quiet_native_stderr():  # its import-time notices (oneDNN, logging set-up)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # already initialised; devices were hidden the first time
    pass
  return tf


def _tfds():
  _tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


# --------------------------------------------------------------------------
# Names.
# --------------------------------------------------------------------------
def parse_name(name: str) -> tuple[str, str]:
  """("folder", PATH) for "folder:PATH", else ("tfds", name)."""
  if not isinstance(name, str) or not name.strip():
    raise DataError("--dataset is empty; use cifar10 or folder:PATH")
  if name.startswith("folder:"):
    path = name[len("folder:"):]
    if not path:
      raise DataError("--dataset=folder: needs a path, e.g. --dataset=folder:/data/cifar10")
    return "folder", os.path.abspath(os.path.expanduser(path))
  return "tfds", name


def check_name(name: str) -> None:
  """Cheap validation of a dataset name (no loading); raises DataError."""
  kind, value = parse_name(name)
  if kind == "folder":
    check_folder(value)
    return
  tfds = _tfds()
  if value.split(":")[0].split("/")[0] not in tfds.list_builders(with_community_datasets=False):
    raise DataError(f"unknown dataset {value!r}; use cifar10 (through tfds) or folder:PATH "
                    "(a local image folder with PATH/train/<class>/*.jpg and PATH/test/<class>/*)")


# --------------------------------------------------------------------------
# Image folders.
# --------------------------------------------------------------------------
def _images_in(path: str) -> list[str]:
  return sorted(os.path.join(path, f) for f in os.listdir(path)
                if f.lower().endswith(IMAGE_EXTENSIONS))


def _subdirs(path: str) -> list[str]:
  return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


def check_folder(root: str) -> tuple[str, ...]:
  """Validate PATH/{train,test}/<class>/images; return the class names."""
  layout = "expected PATH/train/<class>/*.jpg and PATH/test/<class>/*.jpg"
  if not os.path.isdir(root):
    raise DataError(f"dataset folder {root} does not exist ({layout})")
  for split in ("train", "test"):
    if not os.path.isdir(os.path.join(root, split)):
      raise DataError(f"dataset folder {root} has no {split}/ folder ({layout})")
  classes = None
  for split in ("train", "test"):
    split_dir = os.path.join(root, split)
    names = _subdirs(split_dir)
    if not names:
      raise DataError(f"{split_dir} has no class folders ({layout})")
    for c in names:
      if not _images_in(os.path.join(split_dir, c)):
        raise DataError(f"class folder {os.path.join(split_dir, c)} is empty: it has no "
                        f"{'/'.join(IMAGE_EXTENSIONS)} images; add images or remove the folder")
    if classes is None:
      classes = tuple(names)
    elif set(names) - set(classes):
      raise DataError(f"{split_dir} has classes not in train/: {sorted(set(names) - set(classes))}")
  return classes


def _find_bad_image(paths: Iterable[str]) -> str:
  """Name the first file that does not decode, or whose shape differs."""
  tf = _tf()
  first_shape = None
  for p in paths:
    try:
      with _quiet_native_stderr():
        img = tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
    except Exception as e:  # pylint: disable=broad-except
      return f"cannot decode image {p} ({type(e).__name__}); remove or replace the file"
    if first_shape is None:
      first_shape = tuple(img.shape)
    elif tuple(img.shape) != first_shape:
      return (f"image {p} has shape {tuple(img.shape)} but others have {first_shape}; "
              "resize all images of the dataset to one size")
  return "could not read the image folder; check its files"


@contextlib.contextmanager
def _quiet_native_stderr():
  """Silence what native code (TensorFlow's C++ logging) writes to stderr meanwhile.

  A bad image makes tf.data log several lines of C++ warnings before Python
  sees the error; callers turn that error into one clear line instead.
  (Recent TensorFlow ignores TF_CPP_MIN_LOG_LEVEL for these.)
  """
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as devnull:
      os.dup2(devnull.fileno(), 2)
      yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def _numpy_split(ds):
  """Iterate a tf.data dataset of (image, label) into two numpy arrays."""
  tfds = _tfds()
  imgs, labels = [], []
  with _quiet_native_stderr():
    for x, y in tfds.as_numpy(ds.batch(2048)):
      imgs.append(x)
      labels.append(y)
  if not imgs:
    raise DataError("the dataset split is empty")
  return np.concatenate(imgs).astype(np.uint8), np.concatenate(labels).astype(np.int32)


def _load_folder_split(root: str, split: str):
  tfds, tf = _tfds(), _tf()
  builder = tfds.ImageFolder(root)
  ds = builder.as_dataset(split=split, shuffle_files=False, as_supervised=True)
  try:
    return _numpy_split(ds)
  except (tf.errors.OpError, ValueError) as e:
    split_dir = os.path.join(root, split)
    paths = [p for c in _subdirs(split_dir) for p in _images_in(os.path.join(split_dir, c))]
    raise DataError(_find_bad_image(paths)) from e


# --------------------------------------------------------------------------
# tfds datasets.
# --------------------------------------------------------------------------
def _reachable(address, timeout: float = 3.0) -> bool:
  """Whether a TCP connection opens within `timeout` s (DNS included)."""
  result = []

  def attempt():
    try:
      socket.create_connection(address, timeout=timeout).close()
      result.append(True)
    except OSError:
      result.append(False)

  t = threading.Thread(target=attempt, daemon=True)
  t.start()
  t.join(timeout + 1.0)
  return bool(result and result[0])


def _tfds_builder(name: str, data_dir: str | None):
  tfds = _tfds()
  try:
    return tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends
    raise DataError(f"unknown dataset {name!r} ({e}); use cifar10 or folder:PATH") from e


def _load_tfds_split(name: str, split: str, data_dir: str | None):
  builder = _tfds_builder(name, data_dir)
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False, as_supervised=True)
  except AssertionError:  # not prepared in data_dir
    where = data_dir or "the default tfds data_dir (~/tensorflow_datasets)"
    if not _reachable(_DOWNLOAD_HOST):
      raise DataError(
          f"{name} is not prepared in {where} and the network is unreachable. Fix: run once "
          "with network access (tfds downloads it), pass --data_dir where it is prepared, or "
          "point at a local copy with --dataset=folder:PATH (PATH/train/<class>/*.jpg, "
          "PATH/test/<class>/*.jpg)") from None
    builder.download_and_prepare()
    ds = builder.as_dataset(split=split, shuffle_files=False, as_supervised=True)
  return _numpy_split(ds)


def _class_names_tfds(name, data_dir, labels):
  """Names from the dataset's label feature; numbers if it has none."""
  try:
    return tuple(_tfds_builder(name, data_dir).info.features["label"].names)
  except (KeyError, AttributeError):
    return tuple(str(i) for i in range(int(labels.max()) + 1))


def load_split(name: str, split: str, *, data_dir: str | None = None):
  """Whole split as (images uint8 (N, H, W, C), labels int32 (N,), class_names).

  The last few splits loaded stay in memory (read-only arrays), so a process
  that runs several experiments on one dataset decodes it once.
  """
  return _load_split_cached(name, split, data_dir)


@functools.lru_cache(maxsize=4)
def _load_split_cached(name, split, data_dir):
  images, labels, classes = _load_split(name, split, data_dir)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels, classes


def _load_split(name, split, data_dir):
  kind, value = parse_name(name)
  if kind == "folder":
    classes = check_folder(value)
    images, labels = _load_folder_split(value, split)
    return images, labels, classes
  images, labels = _load_tfds_split(value, split, data_dir)
  return images, labels, _class_names_tfds(value, data_dir, labels)


def load(name: str, *, data_dir: str | None = None, num_train: int | None = None,
         num_val: int = 1000, num_test: int | None = None, seed: int = 0) -> Dataset:
  """Train / val / test splits as uint8 arrays.

  val = the last ``num_val`` of the training split, train = a random subset of
  ``num_train`` of the rest (all, in source order, when None), test = a random
  subset of ``num_test`` of the test split (all when None), drawn with ``seed``.
  """
  train_x, train_y, classes = load_split(name, "train", data_dir=data_dir)
  test_x, test_y, _ = load_split(name, "test", data_dir=data_dir)
  if not 0 <= num_val < len(train_y):
    raise DataError(f"num_val={num_val} must be in [0, {len(train_y) - 1}] "
                    f"(the training split has {len(train_y)} examples)")
  pool = len(train_y) - num_val
  val = Split(train_x[pool:], train_y[pool:])
  rng_train, rng_test = (np.random.default_rng([seed, i]) for i in (1, 2))
  train = Split(*_subset(train_x[:pool], train_y[:pool], num_train, rng_train, "num_train"))
  test = Split(*_subset(test_x, test_y, num_test, rng_test, "num_test"))
  image_shape = train.images.shape[1:]
  if test.images.shape[1:] != image_shape:
    raise DataError(f"train images are {image_shape} but test images are {test.images.shape[1:]}")
  return Dataset(train=train, val=val, test=test, class_names=tuple(classes))


def _subset(x, y, num, rng, what):
  if num is None:
    return x, y
  if not 1 <= num <= len(y):
    raise DataError(f"{what}={num} must be in [1, {len(y)}] (examples available)")
  idx = rng.permutation(len(y))[:num]
  return x[idx], y[idx]


# --------------------------------------------------------------------------
# Preprocessing (pure jnp, runs on device).
# --------------------------------------------------------------------------
@jax.jit
def mean_image(images_NxHxWxC):
  """Per-pixel mean of the training images, float32 (H, W, C)."""
  return jnp.mean(jnp.asarray(images_NxHxWxC).astype(jnp.float32), axis=0)


@jax.jit
def preprocess(images_NxHxWxC, mean_HxWxC):
  """uint8 images -> float32 (N, D) rows with the training mean image subtracted."""
  x = jnp.asarray(images_NxHxWxC).astype(jnp.float32) - mean_HxWxC
  return x.reshape(x.shape[0], -1)
