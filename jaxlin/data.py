"""Datasets: CIFAR-10 through tfds, or a local image folder through tfds.ImageFolder.

The only module that imports tensorflow / tensorflow_datasets (lazily, so that
``import jaxlin`` stays light and TensorFlow never sees a GPU).

Splits follow the course: train = the first ``M - num_val`` examples of the
source's training split, val = its last ``num_val``, test = the test split.
Subsets (``num_train``, ``num_test``) are drawn at random with the run's seed,
never the first N, and kept in source order. tfds's CIFAR-10 training split is
already shuffled, and image folders are read in tfds.ImageFolder's order
(shuffled with a fixed seed per split), so the val split is a fixed,
class-mixed set for a given source.

Many hosts: ``load(..., rows=...)`` reads only the given rows of each split;
since subsets keep source order, a process's rows are one contiguous range of
the source (a tfds slice such as ``train[12500:25000]``, or a range of an image
folder's files), so each process decodes only its own shard.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import os
import random
import shutil
import socket
import sys
import threading
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxlin import _checks
from jaxlin.errors import DataError, InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # what tfds.ImageFolder reads
_DOWNLOAD_HOST = ("www.cs.toronto.edu", 443)  # where tfds fetches CIFAR-10


@dataclasses.dataclass(frozen=True)
class Split:
  """One split's uint8 images and int32 labels (or a process's rows of it, in a multi-host
  run: rows [start, start + N) of a split of ``total`` rows)."""
  images: np.ndarray  # (N, H, W, C) uint8
  labels: np.ndarray  # (N,) int32
  start: int = 0      # these are rows [start, start + N) of the whole split ...
  total: int = -1     # ... which has `total` rows (-1: N, the split is whole)

  def __post_init__(self):
    if np.shape(self.images)[:1] != np.shape(self.labels)[:1] or np.ndim(self.labels) != 1:
      raise InputError(f"a Split needs one label per image: images {np.shape(self.images)}, "
                       f"labels {np.shape(self.labels)}", argument="labels")
    if self.total < 0:
      object.__setattr__(self, "total", len(self.labels))

  def __len__(self):
    return len(self.labels)

  @property
  def is_whole(self) -> bool:
    return len(self.labels) == self.total

  @property
  def rows(self) -> np.ndarray:
    """The images as (N, H * W * C) rows (uint8 still), N = 0 too."""
    return self.images.reshape(len(self.labels), int(np.prod(np.shape(self.images)[1:])))


@dataclasses.dataclass(frozen=True)
class Dataset:
  """The train, val and test splits ``load`` returns, and the class names (their order is
  the labels' order)."""
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
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # already initialised; devices were hidden the first time
    pass
  return tf


def _tfds():
  _tf()
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds


# --------------------------------------------------------------------------
# Names.
# --------------------------------------------------------------------------
def parse_name(name: str) -> tuple[str, str]:
  """("folder", PATH) for "folder:PATH", else ("tfds", name)."""
  if not isinstance(name, str) or not name.strip():
    raise DataError("name is empty; give a dataset: cifar10 or folder:PATH", argument="name")
  if name.startswith("folder:"):
    path = name[len("folder:"):]
    if not path:
      raise DataError("name 'folder:' needs a path, e.g. folder:/data/cifar10",
                      argument="name")
    return "folder", os.path.abspath(os.path.expanduser(path))
  return "tfds", name


# --------------------------------------------------------------------------
# Image folders.
# --------------------------------------------------------------------------
# Hidden names (".ipynb_checkpoints", ".thumbnails", macOS's "._x.png") are no classes or
# images: a hidden folder of images would otherwise take label 0 and shift every other label.
def _images_in(path: str) -> list[str]:
  return sorted(os.path.join(path, f) for f in _listed(path)
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def _subdirs(path: str) -> list[str]:
  return sorted(d for d in _listed(path)
                if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))


def _listed(path: str) -> list[str]:
  """The names in a folder of the dataset, or DataError where it cannot be read."""
  try:
    return os.listdir(path)
  except OSError as e:
    raise DataError(f"dataset folder {path} cannot be read ({e.strerror or e}); make it "
                    "readable, or give another dataset") from None


def check_folder(root: str) -> tuple[str, ...]:
  """Validate PATH/{train,test}/<class>/images; return the class names: train's class
  folders, sorted as strings (folders 0 to 11 give '0', '1', '10', '11', '2', ..., as
  tfds.ImageFolder and torchvision sort them; ``class_names[label]`` names each label).
  Hidden names (starting with ".") are skipped."""
  layout = "expected PATH/train/<class>/*.jpg and PATH/test/<class>/*.jpg"
  if os.path.exists(root) and not os.path.isdir(root):
    raise DataError(f"dataset folder {root} is a file, not a folder ({layout})")
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
  """Name the first file that does not decode, or the odd one out of two shapes: decoded
  until a shape is seen twice beside another (the first file may be the odd one)."""
  tf = _tf()
  first, count = {}, collections.Counter()  # shape -> its first file, its files
  for p in paths:
    try:
      with _quiet_native_stderr():
        shape = tuple(_tf_decoded(tf, tf.io.read_file(p)).shape)
    except Exception as e:  # pylint: disable=broad-except
      return f"cannot decode image {p} ({type(e).__name__}); remove or replace the file"
    first.setdefault(shape, p)
    count[shape] += 1
    norm = [s for s in count if count[s] > 1]
    if len(count) > 1 and norm:
      odd = next(s for s in first if s != norm[0])
      return (f"image {first[odd]} has shape {odd} but others have {norm[0]}; resize all "
              "images of the dataset to one size")
  if len(first) > 1:
    (a, pa), (b, pb) = list(first.items())[:2]
    return (f"images {pa} and {pb} have different shapes, {a} and {b}; resize all images "
            "of the dataset to one size")
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


def _check_folder_split(root: str, split: str, classes: tuple[str, ...]) -> None:
  """InputError unless PATH/split is a folder of images in train's ``classes`` (train and
  test: ``check_folder``; another split folder, e.g. val/, is read the same way)."""
  plain = (isinstance(split, str) and split and not split.startswith(".")
           and os.sep not in split and (os.altsep or os.sep) not in split)
  if not plain or not os.path.isdir(os.path.join(root, split)):
    have = ", ".join(d for d in _subdirs(root)) or "none"
    raise InputError(f"{root} has no split folder {split!r} (its split folders: {have}; "
                     "load's val split is the last num_val images of train)", argument="split")
  if split in ("train", "test"):
    return
  names = _subdirs(os.path.join(root, split))
  extra = sorted(set(names) - set(classes))
  if not names or extra:
    raise DataError(f"{os.path.join(root, split)} has " + (
        f"classes not in train/: {extra}" if extra else "no class folders"))


def folder_examples(root: str, split: str) -> tuple[list[str], np.ndarray]:
  """(image paths, labels) of a folder split in tfds.ImageFolder's order (hidden names
  skipped, see ``check_folder``).

  That order: classes sorted, paths sorted within a class, then the whole list
  shuffled by ``random.Random(split)`` (a fixed seed per split). Reading the
  list ourselves lets a process decode just a range of it; a test checks the
  order against tfds.ImageFolder's own.
  """
  classes = _subdirs(os.path.join(root, "train"))
  examples = []
  for c in _subdirs(os.path.join(root, split)):
    examples += [(p, classes.index(c)) for p in _images_in(os.path.join(root, split, c))]
  random.Random(split).shuffle(examples)
  return [p for p, _ in examples], np.array([c for _, c in examples], np.int32)


def _tf_decoded(tf, encoded):
  """(H, W, 3) uint8 tensor of one encoded file: tfds.features.Image's decode call
  (``tf.image.decode_image``, 3 channels, uint8), first frame of an animation."""
  return tf.image.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)


FOLDER_FORMATS = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")  # JPEG, PNG, GIF, BMP


def decode_image(encoded: bytes) -> np.ndarray:
  """(H, W, 3) uint8 pixels of one encoded JPEG, PNG, GIF or BMP file, decoded exactly as
  an image folder's files are (tfds.features.Image's decoder: TensorFlow's, its JPEG
  DCT, alpha dropped, 16-bit PNG to 8 bits as TensorFlow does), so that a model applied
  to the file sees what it was trained and tested on.

  Raises:
    DataError: not one of those formats, or a file that does not decode.
  """
  if not encoded.startswith(FOLDER_FORMATS):
    raise DataError("not a JPEG, PNG, GIF or BMP file (the formats an image folder holds)")
  tf = _tf()
  try:
    with _quiet_native_stderr():
      image = _tf_decoded(tf, tf.constant(encoded))
  except tf.errors.OpError as e:
    raise DataError(f"cannot decode this image, truncated or corrupt? "
                    f"({type(e).__name__})") from None
  return image.numpy()


def _load_folder_split(paths: list[str], labels: np.ndarray):
  """Decodes these files (rows of ``folder_examples``) as tfds.ImageFolder does."""
  tfds, tf = _tfds(), _tf()
  image = tfds.features.Image()  # decodes as tfds.ImageFolder does
  ds = tf.data.Dataset.from_tensor_slices((paths, labels)).map(
      lambda p, y: (image.decode_example(tf.io.read_file(p)), y),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  try:
    return _numpy_split(ds)
  except (tf.errors.OpError, ValueError) as e:
    raise DataError(_find_bad_image(paths)) from e


_DECODED_FORMAT = b"jaxlin decoded image folder, tfds.features.Image decoder, v2"
_CHECK_ROWS = 1024  # images per CRC-32 of a cache entry: a shard's read checks its own blocks


def _decoded_entry(root: str, split: str, paths: list[str], labels: np.ndarray,
                   cache_dir: str, stamp: str | None = None) -> tuple[str, str, int] | None:
  """(images path, labels path, rows) of the entry in the decoded cache of a split's files
  (``folder_examples``); None when a file cannot be read (the decoder then names it).

  The key covers each file's path, label, size, modification and change times and inode:
  a rewritten file changes its change time, which ``touch`` or ``cp -p`` cannot set back.
  """
  stamp = stamp or _files_stamp(root, paths, labels)
  if stamp is None:
    return None
  key = f"{split}-{stamp}"
  return (os.path.join(cache_dir, f"images-{key}.npy"),
          os.path.join(cache_dir, f"labels-{key}.npy"), len(paths))


def _block_checks(images) -> np.ndarray:
  """CRC-32 (uint32) of each block of ``_CHECK_ROWS`` rows of ``images``."""
  from jaxlin import files  # pylint: disable=import-outside-toplevel
  return np.array([files.crc32(images[i:i + _CHECK_ROWS])
                   for i in range(0, len(images), _CHECK_ROWS)], np.uint32)


def _checks_path(images_path: str) -> str:
  """checks-<key>.npy beside images-<key>.npy: the CRC-32 of its blocks of rows."""
  folder, name = os.path.split(images_path)
  return os.path.join(folder, "checks-" + name[len("images-"):])


@functools.lru_cache(maxsize=1)
def _decoder_version() -> bytes:
  """The installed TensorFlow's version (read without importing it): a new JPEG decoder may
  round pixels differently, so its reads are not served from an older one's cache."""
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  dists = sorted(metadata.packages_distributions().get("tensorflow", []))  # -cpu, -intel, ...
  try:
    return "".join(f", {d} {metadata.version(d)}" for d in dists).encode()
  except metadata.PackageNotFoundError:
    return b""


def _relative(root: str, paths: list[str]) -> Iterable[str]:
  """Each of ``paths`` relative to ``root`` (a prefix cut where it is one: the fast path)."""
  prefix = root.rstrip(os.sep) + os.sep
  return (p[len(prefix):] if p.startswith(prefix) else os.path.relpath(p, root) for p in paths)


def _files_stamp(root: str, paths: list[str], labels: np.ndarray) -> str | None:
  """A hash of each file's path (relative to ``root``), label, size, modification and change
  times and inode; None when a file cannot be read."""
  import hashlib  # pylint: disable=import-outside-toplevel
  h = hashlib.sha256(_DECODED_FORMAT + _decoder_version())
  for p, rel, y in zip(paths, _relative(root, paths), labels):
    try:
      st = os.stat(p)
    except OSError:
      return None
    h.update(f"\0{rel}\0{y}\0{st.st_size}\0{st.st_mtime_ns}"
             f"\0{st.st_ctime_ns}\0{st.st_ino}".encode())
  return h.hexdigest()[:32]


def _read_decoded(entry, start: int, stop: int | None, expected_labels: np.ndarray):
  """Rows [start, stop) from a cache entry, or None when it is missing, unreadable or
  corrupt: its labels must be the folder's (``expected_labels``, rows [start, stop)) and
  each block of rows read must have its CRC-32."""
  images_path, labels_path, n = entry
  try:
    images = np.load(images_path, mmap_mode="r")
    labels = np.load(labels_path, mmap_mode="r")
    checks = np.load(_checks_path(images_path))
    if (not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray)
        or images.dtype != np.uint8 or images.ndim != 4 or len(images) != n
        or labels.dtype != np.int32 or labels.shape != (n,)
        or checks.dtype != np.uint32 or checks.shape != (-(-n // _CHECK_ROWS),)):
      return None
    stop = n if stop is None else min(stop, n)
    first = start // _CHECK_ROWS * _CHECK_ROWS  # whole blocks around the rows read
    last = min(n, -(-stop // _CHECK_ROWS) * _CHECK_ROWS)
    block = np.array(images[first:last])
    out_labels = np.array(labels[start:stop])
    if (not np.array_equal(_block_checks(block), checks[first // _CHECK_ROWS:
                                                         -(-last // _CHECK_ROWS)])
        or not np.array_equal(out_labels, expected_labels)):
      return None
    if (start, stop) == (first, last):  # whole blocks: the array read is the answer
      return block, out_labels
    return block[start - first:stop - first].copy(), out_labels
  except MemoryError:  # not damage: rebuilding would fail too, and overwrite a good entry
    raise
  except Exception:  # pylint: disable=broad-except  # any damage: a miss, rebuilt
    # (numpy raises whatever a damaged header makes it raise, tokenize.TokenError and
    # SyntaxError among them)
    return None


def _write_decoded(entry, images, labels) -> None:
  """Writes a cache entry (atomically, with the user's umask); a cache that cannot be
  written only costs the next run a decode."""
  from jaxlin import files  # pylint: disable=import-outside-toplevel
  images_path, labels_path, _ = entry
  try:
    folder = os.path.dirname(images_path)
    os.makedirs(folder, exist_ok=True)
    if shutil.disk_usage(folder).free < 2 * images.nbytes:  # never fill the disk with it
      return
    files.atomic_write(labels_path, lambda f: np.save(f, labels))
    files.atomic_write(_checks_path(images_path), lambda f: np.save(f, _block_checks(images)))
    files.atomic_write(images_path, lambda f: np.save(f, images))
  except OSError:
    pass


def _folder_size(root: str, split: str) -> int:
  return sum(len(_images_in(os.path.join(root, split, c)))
             for c in _subdirs(os.path.join(root, split)))


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
    with _without_tfds_notes():
      return tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    # tfds's message lists every dataset it knows (hundreds of lines): its first line only.
    raise DataError(f"unknown dataset {name!r} ({first.rstrip('.')}); use cifar10 or "
                    f"folder:PATH{_folder_hint(name)}") from e


def _folder_hint(name: str) -> str:
  """A hint for a dataset name that looks like a folder but lacks "folder:"."""
  if name[:len("folder:")].lower() == "folder:":
    return f"; for a local image folder write folder:{name[len('folder:'):]} (in lower case)"
  if os.sep in name or os.path.isdir(os.path.expanduser(name)):
    return f"; for a local image folder write folder:{name}"
  return ""


class _DropTfdsNotes(logging.Filter):
  """Drops tfds's INFO notes that come before an error jaxlin explains better: "Constructing
  tf.data.Dataset NAME ... from DATA_DIR" before it finds that folder missing (a line that
  says the opposite), and "Failed to load dataset NAME, builder_kwargs ..." before an
  unknown name. The experiments log what they load, and its sizes."""

  PREFIXES = ("Constructing tf.data.Dataset", "Failed to load %s from files")

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.PREFIXES)


@contextlib.contextmanager
def _without_tfds_notes():
  quiet, absl_logger = _DropTfdsNotes(), logging.getLogger("absl")
  absl_logger.addFilter(quiet)
  try:
    yield
  finally:
    absl_logger.removeFilter(quiet)


def _tfds_dataset(name: str, split: str, data_dir: str | None):
  builder = _tfds_builder(name, data_dir)
  try:
    with _without_tfds_notes():
      return builder.as_dataset(split=split, shuffle_files=False, as_supervised=True)
  except AssertionError:  # not prepared in data_dir
    where = data_dir or "tfds's default folder (~/tensorflow_datasets)"
    if not _reachable(_DOWNLOAD_HOST):
      raise DataError(
          f"{name} is not prepared in {where} and the network is unreachable. Fix: run once "
          "with network access (tfds downloads it), pass data_dir where it is prepared, or "
          "point at a local copy with the dataset name folder:PATH (PATH/train/<class>/*.jpg, "
          "PATH/test/<class>/*.jpg)", argument="data_dir") from None
    builder.download_and_prepare()
    return builder.as_dataset(split=split, shuffle_files=False, as_supervised=True)


def _load_tfds_split(name: str, split: str, data_dir: str | None, start: int, stop: int | None):
  if start == 0 and stop is None:
    return _numpy_split(_tfds_dataset(name, split, data_dir))
  size = _tfds_size(name, split, data_dir)
  if not 0 <= start < size:  # as for a folder (tfds would give no rows)
    raise InputError(f"start={start} is outside the {split} split's {size} examples "
                     f"(rows 0 to {size - 1})", argument="start")
  stop = size if stop is None else min(stop, size)  # the length below checks the slice
  # A tfds slice reads only the files and records it needs.
  images, labels = _numpy_split(_tfds_dataset(name, f"{split}[{start}:{stop}]", data_dir))
  if len(labels) != stop - start:  # a source without slicing (tfds's mock data): cut it here
    images, labels, _ = load_split(name, split, data_dir=data_dir)
    images, labels = images[start:stop], labels[start:stop]
  return images, labels


def _tfds_size(name: str, split: str, data_dir: str | None) -> int:
  splits = _tfds_builder(name, data_dir).info.splits
  if split in splits and splits[split].num_examples:
    return int(splits[split].num_examples)
  return len(load_split(name, split, data_dir=data_dir)[1])  # unknown until read


def _class_names_tfds(name, data_dir, labels):
  """Names from the dataset's label feature; numbers if it has none (up to its number of
  classes, else to the largest label read: a shard of a dataset without either may see
  fewer classes than the whole)."""
  try:
    label = _tfds_builder(name, data_dir).info.features["label"]
  except (KeyError, AttributeError):
    label = None
  try:
    return tuple(label.names)
  except (KeyError, AttributeError, TypeError):
    pass
  count = getattr(label, "num_classes", None) or (int(labels.max()) + 1 if len(labels) else 0)
  return tuple(str(i) for i in range(count))


def load_split(name: str, split: str, *, data_dir: str | None = None, start: int = 0,
               stop: int | None = None, cache_dir: str | None = None):
  """Rows [start, stop) of a source split (all by default) as
  (images uint8 (N, H, W, C), labels int32 (N,), class_names). An image folder's
  splits are its subfolders, by name: "train", "test", and any other (e.g. "val")
  with train's classes (``load`` takes its val split from train).

  Only those rows are read and decoded. The last few reads stay in memory
  (read-only arrays), so a process that runs several experiments on one
  dataset decodes it once; for an image folder they are keyed by its absolute
  path and its files' names, labels, sizes, times and inodes (listed on every
  call), so a changed folder is read again.

  cache_dir: for image folders, a folder of decoded splits (``.npy``, keyed by
  the split's file names, labels, sizes, times and inodes). Reading a whole split
  writes it there; later reads of any of its rows, by any process, load them
  without decoding (CIFAR-10's 50,000 training JPEGs: about 20 s to decode with
  TensorFlow's import, under 1 s from the cache). A changed file changes the
  key; an unreadable entry is decoded again. None: no cache.
  """
  if cache_dir:
    try:
      cache_dir = os.path.expanduser(os.fsdecode(cache_dir))
    except TypeError:
      raise InputError(f"cache_dir must be a folder's path or None, got {cache_dir!r}",
                       argument="cache_dir") from None
    if "\0" in cache_dir:  # os raised a ValueError only after the whole split was decoded
      raise InputError(f"cache_dir {cache_dir!r} holds a NUL character: no folder has such a "
                       "name", argument="cache_dir")
  else:
    cache_dir = None
  start = _checks.concrete_int(start, "start")
  stop = None if stop is None else _checks.concrete_int(stop, "stop")
  kind, value = parse_name(name)
  if kind != "folder":
    return _load_split_cached(name, split, data_dir, start, stop, cache_dir)
  classes = check_folder(value)
  _check_folder_split(value, split, classes)
  root = os.path.abspath(value)
  paths, labels = folder_examples(root, split)
  stamp = _files_stamp(root, paths, labels)
  if stamp is None:  # a file that cannot be read: the decoder names it
    return _load_split_cached.__wrapped__(f"folder:{root}", split, data_dir, start, stop,
                                          cache_dir)
  # The stamp keys the split's files and labels; the class names are train's folders (a
  # class only in train/ changes them, not this split's files): today's, not the memory's.
  images, labels, _ = _load_split_cached(f"folder:{root}", split, data_dir, start, stop,
                                         cache_dir, stamp)
  return images, labels, classes


def split_size(name: str, split: str, *, data_dir: str | None = None) -> int:
  """Examples in a source split, without decoding it where the source knows."""
  kind, value = parse_name(name)
  if kind == "folder":
    _check_folder_split(value, split, check_folder(value))
    return _folder_size(value, split)
  return _tfds_size(value, split, data_dir)


@functools.lru_cache(maxsize=8)
def _load_split_cached(name, split, data_dir, start, stop, cache_dir=None, stamp=None):
  """``load_split``; ``stamp`` (a folder's ``_files_stamp``) only keys the memory."""
  kind, value = parse_name(name)
  if stop is not None and start >= stop:  # no rows: read one for the image shape
    images, labels, classes = _load_split_cached(name, split, data_dir, 0, 1, cache_dir, stamp)
    return images[:0], labels[:0], classes
  if kind == "folder":
    classes = check_folder(value)
    paths, all_labels = folder_examples(value, split)  # listed once for all below
    size = len(paths)
    if not 0 <= start < size:
      raise InputError(f"start={start} is outside the {split} split's {size} examples "
                       f"(rows 0 to {size - 1})", argument="start")
    entry = (_decoded_entry(value, split, paths, all_labels, cache_dir, stamp) if cache_dir
             else None)
    hit = _read_decoded(entry, start, stop, all_labels[start:stop]) if entry else None
    if hit is not None:
      images, labels = hit
    else:
      images, labels = _load_folder_split(paths[start:stop], all_labels[start:stop])
      if entry and start == 0 and (stop is None or stop >= size):
        _write_decoded(entry, images, labels)
  else:
    images, labels = _load_tfds_split(value, split, data_dir, start, stop)
    classes = _class_names_tfds(value, data_dir, labels)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels, classes


def source_digest(name: str, *, data_dir: str | None = None) -> str:
  """A short hash of what ``name`` holds, the same for copies of it on different machines:
  a folder's class names, each file's path (relative to the folder), label and size, and
  the bytes of 256 files spread over each split (all of a smaller split); a tfds dataset's
  name, version and split sizes. Nothing is decoded."""
  import hashlib  # pylint: disable=import-outside-toplevel
  kind, value = parse_name(name)
  h = hashlib.sha256(f"{kind}\0".encode())
  if kind == "folder":
    h.update("\0".join(check_folder(value)).encode())
    for split in ("train", "test"):
      paths, labels = folder_examples(value, split)
      for p, rel, y in zip(paths, _relative(value, paths), labels):
        h.update(f"\0{split}\0{rel}\0{y}\0{os.stat(p).st_size}".encode())
      for i in np.unique(np.linspace(0, len(paths) - 1, min(len(paths), 256)).astype(int)):
        p = paths[i]  # files of one size may differ within
        with open(p, "rb") as f:
          h.update(hashlib.sha256(f.read()).digest())
  else:
    info = _tfds_builder(value, data_dir).info
    h.update(f"{info.full_name}\0{sorted((k, v.num_examples) for k, v in info.splits.items())}"
             .encode())
  return h.hexdigest()[:16]


def split_rows(name: str, *, data_dir: str | None = None, num_train: int | None = None,
               num_val: int = 1000, num_test: int | None = None, seed: int = 0) -> dict:
  """Which source rows make up each split of ``load``: {split: (source split, indices)}.

  Indices are increasing (subsets keep source order); nothing is decoded.
  """
  num_val = _checks.concrete_int(num_val, "num_val")
  num_train, num_test = (None if v is None else _checks.concrete_int(v, what)
                         for v, what in ((num_train, "num_train"), (num_test, "num_test")))
  seed = _checks.concrete_int(seed, "seed")
  if not 0 <= seed < 2 ** 63:
    raise InputError(f"seed must be an integer in [0, 2**63), got {seed}", argument="seed")
  m = split_size(name, "train", data_dir=data_dir)
  if not 0 <= num_val < m:
    raise InputError(f"num_val={num_val} must be in [0, {m - 1}] "
                     f"(the training split has {m} examples)", argument="num_val")
  pool = m - num_val
  rng_train, rng_test = (np.random.default_rng([seed, i]) for i in (1, 2))
  return {"train": ("train", _subset(pool, num_train, rng_train, "num_train")),
          "val": ("train", np.arange(pool, m)),
          "test": ("test", _subset(split_size(name, "test", data_dir=data_dir), num_test, rng_test,
                                   "num_test"))}


def _subset(size, num, rng, what) -> np.ndarray:
  if num is None:
    return np.arange(size)
  if not 1 <= num <= size:
    raise InputError(f"{what}={num} must be in [1, {size}]: the split has {size} images",
                     argument=what)
  return np.sort(rng.permutation(size)[:num])


def load(name: str, *, data_dir: str | None = None, num_train: int | None = None,
         num_val: int = 1000, num_test: int | None = None, seed: int = 0,
         rows: dict | None = None, cache_dir: str | None = None) -> Dataset:
  """Train / val / test splits as uint8 arrays.

  val = the last ``num_val`` of the training split, train = a random subset of
  ``num_train`` of the rest (all when None), test = a random subset of
  ``num_test`` of the test split (all when None), drawn with ``seed``; subsets
  keep source order.

  rows: {"train" | "val" | "test": (lo, hi)} reads only rows [lo, hi) of that
  split (a process's own shard); the split's ``start`` and ``total`` say where
  they sit. Splits not named are read whole.

  cache_dir: decoded image folders (see ``load_split``).
  """
  rows = _checked_rows(rows)
  plan = split_rows(name, data_dir=data_dir, num_train=num_train, num_val=num_val,
                    num_test=num_test, seed=seed)
  splits, classes, whole = {}, (), {}
  for which, (source, idx) in plan.items():
    lo, hi = rows.get(which, (0, len(idx)))
    if not 0 <= lo <= hi <= len(idx):
      raise InputError(f"rows {(lo, hi)} of the {which} split are outside [0, {len(idx)}]",
                       argument="rows")
    if which not in rows:  # a whole split: one read of its source serves all
      if source not in whole:  # (train and val share one: listed and read once)
        whole[source] = load_split(name, source, data_dir=data_dir, cache_dir=cache_dir)
      x, y, classes = whole[source]
      x, y = (x, y) if len(idx) == len(y) else (x[idx], y[idx])
    else:
      part = idx[lo:hi]
      first, last = (int(part[0]), int(part[-1]) + 1) if len(part) else (0, 0)
      x, y, classes = load_split(name, source, data_dir=data_dir, start=first, stop=last,
                                 cache_dir=cache_dir)
      x, y = x[part - first], y[part - first]
    splits[which] = Split(x, y, start=lo, total=len(idx))
  image_shape = splits["train"].images.shape[1:]
  if splits["test"].images.shape[1:] != image_shape:
    raise DataError(f"train images are {image_shape} but test images are "
                    f"{splits['test'].images.shape[1:]} (height, width, channels) in {name}: "
                    "every image of a dataset must have one size; resize the test images "
                    "to the training images' size")
  return Dataset(class_names=tuple(classes), **splits)


def _checked_rows(rows) -> dict:
  """``load``'s rows as {split: (lo, hi)} of ints, or an InputError naming rows: a misspelt
  split would otherwise be read whole (every process of a multi-host run holding it all)."""
  if rows is None:
    return {}
  if not isinstance(rows, Mapping):
    raise InputError(f"rows must be a dict {{split: (lo, hi)}}, got {type(rows).__name__}",
                     argument="rows")
  unknown = [k for k in rows if k not in ("train", "val", "test")]
  if unknown:
    raise InputError(f"rows names unknown split(s) {', '.join(map(repr, unknown))}; the "
                     "splits are train, val and test", argument="rows")
  out = {}
  for which, pair in rows.items():
    try:
      if not isinstance(pair, (tuple, list, np.ndarray, jax.Array)):  # range(0, 2): 0, 1
        raise TypeError("not a pair")
      lo, hi = pair
      out[which] = (_checks.concrete_int(lo, "lo"), _checks.concrete_int(hi, "hi"))
    except (TypeError, ValueError, InputError):
      raise InputError(f"rows[{which!r}] must be a pair (lo, hi) of integers, got {pair!r}",
                       argument="rows") from None
  return out


# --------------------------------------------------------------------------
# Preprocessing (pure jnp, runs on device).
# --------------------------------------------------------------------------
def _check_pixels(images_NxHxWxC):
  """uint8 (N, H, W, C) images; checked at trace time (dtype and shape are static)."""
  if images_NxHxWxC.dtype != jnp.uint8 or images_NxHxWxC.ndim != 4:
    raise InputError(f"images must be uint8 pixels (N, H, W, C), got {images_NxHxWxC.dtype} "
                     f"{images_NxHxWxC.shape}; for floats in [0, 1] pass "
                     "(x * 255).round().astype(np.uint8)", argument="images_NxHxWxC")


def _pixels(images_NxHxWxC):
  """The images as a jax or numpy array (lists converted), checked by ``_check_pixels``."""
  x = _checks.jax_exact(images_NxHxWxC, "images_NxHxWxC")
  _check_pixels(x)
  return x


def mean_image(images_NxHxWxC):
  """Per-pixel mean of the uint8 training images, float32 (H, W, C)."""
  x = _pixels(images_NxHxWxC)
  if x.shape[0] == 0:
    raise InputError("images_NxHxWxC is empty: no images to average", argument="images_NxHxWxC")
  return _mean_image(x)


@jax.jit
def _mean_image(images_NxHxWxC):
  return jnp.mean(images_NxHxWxC.astype(jnp.float32), axis=0)


def pixel_sums(images_NxHxWxC):
  """Per-pixel sums of uint8 images, float32 (H, W, C): a process's share of the mean image."""
  return _pixel_sums(_pixels(images_NxHxWxC))


@jax.jit
def _pixel_sums(images_NxHxWxC):
  return jnp.sum(images_NxHxWxC.astype(jnp.float32), axis=0)


def mean_from_sums(sums, count: int):
  """sums / count as mean_image divides (bit for bit): the mean image of rows spread
  across hosts from their pixel_sums summed over processes (or the mean of any sums)."""
  count = _checks.concrete_int(count, "count")
  if count < 1:
    raise InputError(f"count must be the number of images summed (>= 1), got {count}",
                     argument="count")
  return _divide(jnp.asarray(sums), count)


@functools.partial(jax.jit, static_argnames="count")
def _divide(sums, count: int):
  return sums / count


def preprocess(images_NxHxWxC, mean_HxWxC):
  """uint8 images (N, H, W, C) -> float32 (N, D) rows with the training mean image subtracted."""
  x = _pixels(images_NxHxWxC)
  mean = _checks.jax_exact(mean_HxWxC, "mean_HxWxC")
  if mean.shape != x.shape[1:]:
    raise InputError(f"mean_HxWxC has shape {mean.shape}; expected {x.shape[1:]} (one image)",
                     argument="mean_HxWxC")
  _checks.finite(mean, "mean_HxWxC", "every preprocessed row would be NaN or inf")
  return _preprocess(x, mean)


@jax.jit
def _preprocess(images_NxHxWxC, mean_HxWxC):
  x = images_NxHxWxC.astype(jnp.float32) - mean_HxWxC.astype(jnp.float32)  # float32 under x64
  return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # (0, D) for no images too
