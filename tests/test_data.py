import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxlin import data
from jaxlin.errors import DataError, InputError
from tests.conftest import CLASSES, make_image_folder


def test_folder_loads_exact_pixels_labels_and_class_names(image_folder):
  root, arrays = image_folder
  images, labels, classes = data.load_split(f"folder:{root}", "train")
  assert classes == CLASSES
  assert images.shape == (60, 8, 8, 3) and images.dtype == np.uint8 and labels.dtype == np.int32
  assert np.bincount(labels).tolist() == [20, 20, 20]
  # Every loaded image is one of the files of its class, pixel for pixel (PNG is lossless).
  by_class = {c: [a for p, a in arrays.items() if f"/train/{c}/" in p] for c in CLASSES}
  for img, lab in zip(images, labels):
    assert any(np.array_equal(img, a) for a in by_class[CLASSES[lab]])


def test_splits_sizes_and_seeded_random_subsets(image_folder):
  root, _ = image_folder
  full = data.load(f"folder:{root}", num_val=6)
  assert (len(full.train), len(full.val), len(full.test)) == (54, 6, 18)
  a = data.load(f"folder:{root}", num_val=6, num_train=10, num_test=5, seed=3)
  b = data.load(f"folder:{root}", num_val=6, num_train=10, num_test=5, seed=3)
  c = data.load(f"folder:{root}", num_val=6, num_train=10, num_test=5, seed=4)
  np.testing.assert_array_equal(a.train.images, b.train.images)
  assert not np.array_equal(a.train.images, c.train.images)
  assert not np.array_equal(a.train.images, full.train.images[:10])  # never the first N
  np.testing.assert_array_equal(a.val.images, full.val.images)  # val: the last num_val, fixed
  assert a.num_classes == 3 and a.image_shape == (8, 8, 3)
  with pytest.raises(InputError, match=r"num_train=100 must be in \[1, 54\]"):
    data.load(f"folder:{root}", num_val=6, num_train=100)
  # Counts and seeds are integers: a float, bool or string is refused, naming the argument,
  # rather than rounded (num_val=10.5 took 11 images) or failing inside numpy.
  for bad in (dict(num_val=1.5), dict(num_train=True), dict(num_train=10.0), dict(num_test=2.5),
              dict(num_train="10"), dict(seed=1.5), dict(seed=-1), dict(num_val=-1),
              dict(num_val=60)):
    with pytest.raises(InputError) as e:
      data.load(f"folder:{root}", **{"num_val": 6, **bad})
    assert e.value.argument == next(iter(bad)), (bad, e.value)


def test_folder_order_is_tfds_image_folders_order(image_folder):
  root, _ = image_folder
  for split in ("train", "test"):
    ref = tfds.ImageFolder(root).as_dataset(split=split, shuffle_files=False, as_supervised=True)
    ref_x, ref_y = map(np.stack, zip(*tfds.as_numpy(ref)))
    x, y, _ = data.load_split(f"folder:{root}", split)
    np.testing.assert_array_equal(x, ref_x)
    np.testing.assert_array_equal(y, ref_y)
  assert data.split_size(f"folder:{root}", "train") == 60


def test_subsets_keep_source_order(image_folder):
  root, _ = image_folder
  (_, train_idx), (_, val_idx), (_, test_idx) = data.split_rows(
      f"folder:{root}", num_val=6, num_train=10, num_test=5, seed=3).values()
  assert len(train_idx) == 10 and np.all(np.diff(train_idx) > 0) and train_idx.max() < 54
  assert val_idx.tolist() == list(range(54, 60))
  assert len(test_idx) == 5 and np.all(np.diff(test_idx) > 0)
  x, y, _ = data.load_split(f"folder:{root}", "train")
  ds = data.load(f"folder:{root}", num_val=6, num_train=10, num_test=5, seed=3)
  np.testing.assert_array_equal(ds.train.images, x[train_idx])
  np.testing.assert_array_equal(ds.train.labels, y[train_idx])


@pytest.mark.parametrize("num_train", [None, 17])
def test_rows_read_a_processes_shard_equal_to_the_slices_of_the_whole(image_folder, num_train):
  root, _ = image_folder
  name = f"folder:{root}"
  whole = data.load(name, num_val=6, num_train=num_train, seed=1)
  rows = {"train": (3, 11), "val": (2, 6), "test": (17, 18)}
  part = data.load(name, num_val=6, num_train=num_train, seed=1, rows=rows)
  for which, (lo, hi) in rows.items():
    w, p = getattr(whole, which), getattr(part, which)
    np.testing.assert_array_equal(p.images, w.images[lo:hi])
    np.testing.assert_array_equal(p.labels, w.labels[lo:hi])
    assert (p.start, p.total, len(p), p.is_whole) == (lo, len(w), hi - lo, False)
  empty = data.load(name, num_val=6, seed=1, rows={"test": (5, 5)})
  assert empty.test.images.shape == (0, 8, 8, 3) and empty.test.total == 18
  with pytest.raises(InputError, match="outside"):
    data.load(name, num_val=6, rows={"val": (0, 7)})
  for rows, message in [  # a misspelt split was read whole (every process holding it all)
      ({"Train": (0, 3)}, "rows names unknown split.*'Train'; the splits are train, val and test"),
      ({"train": 3}, r"rows\['train'\] must be a pair \(lo, hi\) of integers, got 3"),
      ({"train": (0, 2.0)}, r"rows\['train'\] must be a pair .*got \(0, 2.0\)"),
      ([("train", (0, 1))], r"rows must be a dict \{split: \(lo, hi\)\}, got list"),
      ({"train": range(0, 2)}, r"rows\['train'\] must be a pair"),  # was rows 0 and 1
      ({"train": ("0", 2)}, r"rows\['train'\] must be a pair"),
  ]:
    with pytest.raises(InputError, match=message) as e:
      data.load(name, num_val=6, rows=rows)
    assert e.value.argument == "rows"
  for kw, argument, message in [
      (dict(split="val"), "split", r"has no split folder 'val' \(its split folders: test, "
                                   r"train; load's val split is the last num_val"),
      (dict(start=1.5), "start", "start must be an integer, got 1.5"),
      (dict(stop=2.0), "stop", "stop must be an integer"),
  ]:
    with pytest.raises(InputError, match=message) as e:
      data.load_split(name, **{"split": "train", **kw})
    assert e.value.argument == argument
  with pytest.raises(InputError, match="has no split folder 'val'") as e:
    data.split_size(name, "val")  # was a FileNotFoundError
  for split in ("train/", "", "../images/train", "./train", ".hidden"):  # names, not paths
    with pytest.raises(InputError, match=f"has no split folder {split!r}") as e:
      data.load_split(name, split)
    assert e.value.argument == "split"
  part = data.load(name, num_val=6, rows={"train": jnp.array([0, 2])})  # a jax pair
  assert len(part.train) == 2
  # A split folder of its own (e.g. val/) is read as train and test are, with train's classes.
  shutil.copytree(os.path.join(root, "test"), os.path.join(root, "val"))
  x, y, classes = data.load_split(name, "val")
  test_x, test_y, _ = data.load_split(name, "test")
  row = {p: i for i, p in enumerate(data.folder_examples(root, "test")[0])}
  at = [row[p.replace(f"{os.sep}val{os.sep}", f"{os.sep}test{os.sep}")]
        for p in data.folder_examples(root, "val")[0]]
  np.testing.assert_array_equal(x, test_x[at])
  np.testing.assert_array_equal(y, test_y[at])
  assert data.split_size(name, "val") == len(y) == len(test_y) and classes == CLASSES


def test_folder_reads_only_its_rows(image_folder, monkeypatch):
  """A range is decoded from its own files alone: the others may even be unreadable."""
  root, _ = image_folder
  paths, _ = data.folder_examples(root, "train")
  for p in paths[:30]:
    with open(p, "wb") as f:
      f.write(b"not an image")
  x, _, _ = data.load_split(f"folder:{root}", "train", start=30, stop=60)
  assert x.shape == (30, 8, 8, 3)


def test_folder_errors_name_the_path(tmp_path, image_folder):
  with pytest.raises(DataError, match="does not exist"):
    data.load_split(f"folder:{tmp_path}/nope", "train")
  root, _ = image_folder
  os.makedirs(os.path.join(root, "train", "empty"))
  with pytest.raises(DataError, match=r"class folder .*train/empty is empty"):
    data.check_folder(root)
  os.rmdir(os.path.join(root, "train", "empty"))
  bad = os.path.join(root, "train", "dog", "9999.jpg")
  with open(bad, "wb") as f:
    f.write(b"this is not a jpeg")
  with pytest.raises(DataError, match=r"cannot decode image .*train/dog/9999.jpg"):
    data.load_split(f"folder:{root}", "train")


def test_a_class_folder_that_cannot_be_read_is_named(image_folder, monkeypatch):
  """Its PermissionError came out of os.listdir (the experiments: a traceback, then a line
  advising a writable --workdir)."""
  root, _ = image_folder
  real = os.listdir
  frog = os.path.join(root, "train", "frog")

  def listdir(path="."):
    if os.path.abspath(path) == frog:
      raise PermissionError(13, "Permission denied", path)
    return real(path)

  monkeypatch.setattr(os, "listdir", listdir)
  with pytest.raises(DataError, match=r"dataset folder .*train/frog cannot be read \(Permission "
                     r"denied\); make it readable, or give another dataset"):
    data.check_folder(root)


def test_seeded_subsets_are_literal(image_folder):
  # The rows a seed draws are part of a run's record: they must not change between versions.
  rows = data.split_rows(f"folder:{image_folder[0]}", num_val=6, num_train=10, num_test=5, seed=3)
  assert {k: (s, i.tolist()) for k, (s, i) in rows.items()} == {
      "train": ("train", [10, 12, 23, 25, 27, 28, 37, 43, 48, 49]),
      "val": ("train", [54, 55, 56, 57, 58, 59]),
      "test": ("test", [0, 2, 4, 7, 16])}


def test_test_split_missing_a_class_keeps_the_training_labels(image_folder):
  root, arrays = image_folder
  shutil.rmtree(os.path.join(root, "test", "dog"))
  ds = data.load(f"folder:{root}", num_val=6)
  assert ds.class_names == ("cat", "dog", "frog")
  frogs = [img for path, img in arrays.items() if f"{os.sep}test{os.sep}frog{os.sep}" in path]
  assert sorted(ds.test.labels.tolist()) == [0] * 6 + [2] * 6  # frog is 2, not 1
  got = {img.tobytes() for img, y in zip(ds.test.images, ds.test.labels) if y == 2}
  assert got == {img.tobytes() for img in frogs}


def test_folder_without_test_split(tmp_path):
  os.makedirs(tmp_path / "train" / "a")
  with pytest.raises(DataError, match="no test/ folder"):
    data.check_folder(str(tmp_path))


def test_tfds_cifar10_through_mock_data():
  with tfds.testing.mock_data(num_examples=40):
    ds = data.load("cifar10", num_val=8, num_test=10, seed=0)
  assert ds.train.images.shape == (32, 32, 32, 3) and ds.train.images.dtype == np.uint8
  assert (len(ds.val), len(ds.test)) == (8, 10)
  # mock data carries no label metadata, so names are the label numbers
  assert ds.class_names == tuple(str(i) for i in range(10)) and ds.num_classes == 10
  with tfds.testing.mock_data(num_examples=40):  # a shard: rows 5..12 of the test split
    part = data.load("cifar10", num_val=8, num_test=10, seed=0, rows={"test": (5, 9)})
    whole = data.load_split("cifar10", "test")[0]
    np.testing.assert_array_equal(data.load_split("cifar10", "test", start=5)[0],
                                  whole[5:])  # was a TypeError (stop None)
    with pytest.raises(InputError, match="start=40 is outside the test split's 40") as e:
      data.load_split("cifar10", "test", start=40)  # as for a folder (was no rows)
    assert e.value.argument == "start"
  np.testing.assert_array_equal(part.test.images, ds.test.images[5:9])


def test_offline_without_prepared_data_fails_fast_with_the_fix(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(data, "_reachable", lambda *a, **k: False)
  t = time.time()
  expected = r"not prepared in .* network is unreachable.*folder:PATH"
  with caplog.at_level("INFO"), pytest.raises(DataError, match=expected) as e:
    data.load("cifar10", data_dir=str(tmp_path))
  assert e.value.argument == "data_dir" and "--" not in str(e.value)
  assert time.time() - t < 20
  # tfds's notes before it fails ("Constructing tf.data.Dataset cifar10 ... from DATA_DIR",
  # which says the opposite of the error; "Failed to load ... from files") are not shown
  with caplog.at_level("INFO"), pytest.raises(DataError, match="unknown dataset 'no_such_x'"):
    data.load("no_such_x")
  assert "Constructing" not in caplog.text and "Failed to load" not in caplog.text, caplog.text
  assert not logging.getLogger("absl").filters  # and only while jaxlin asked tfds


def test_unknown_dataset_name():
  with pytest.raises(DataError, match="unknown dataset 'cifar11'"):
    data.load("cifar11")
  with pytest.raises(DataError, match="needs a path") as e:
    data.load("folder:")
  assert e.value.argument == "name" and "--" not in str(e.value)
  with pytest.raises(DataError, match="write folder:/data/x \\(in lower case\\)"):
    data.load("FOLDER:/data/x")  # was "write folder:FOLDER:/data/x"


def test_preprocess_subtracts_the_mean_image():
  imgs = np.array([[[[0, 10, 20]]], [[[2, 30, 40]]]], np.uint8)  # (2, 1, 1, 3)
  mu = data.mean_image(imgs)
  np.testing.assert_allclose(mu, [[[1, 20, 30]]])
  np.testing.assert_allclose(data.preprocess(imgs, mu), [[-1, -10, -10], [1, 10, 10]])
  for f in (data.mean_image, lambda x: data.preprocess(x, mu)):
    with pytest.raises(InputError, match="uint8 pixels") as e:
      f(imgs / 255.0)
    assert e.value.argument == "images_NxHxWxC"
  with pytest.raises(InputError, match="empty"):
    data.mean_image(imgs[:0])
  with pytest.raises(InputError, match="mean_HxWxC"):
    data.preprocess(imgs, mu[0])
  # Lists are arrays too; a NaN in the mean would make every row NaN.
  lists = imgs.tolist()
  with pytest.raises(InputError, match="uint8 pixels"):
    data.mean_image(lists)  # Python ints are not pixels of a known range
  np.testing.assert_allclose(data.preprocess(imgs, np.asarray(mu).tolist()),
                             [[-1, -10, -10], [1, 10, 10]])
  with jax.enable_x64(True):  # float32 rows, as documented, from a float64 mean
    assert data.preprocess(imgs, np.asarray(mu, np.float64)).dtype == jnp.float32
  with pytest.raises(InputError, match="NaN") as e:
    data.preprocess(imgs, np.where(np.arange(3) == 1, np.nan, mu))
  assert e.value.argument == "mean_HxWxC"
  np.testing.assert_allclose(data.pixel_sums(imgs), [[[2, 40, 60]]])
  # Inside a caller's jit or map, with the mean captured (concrete): no value check, no error.
  np.testing.assert_allclose(jax.jit(lambda x: data.preprocess(x, mu))(imgs),
                             [[-1, -10, -10], [1, 10, 10]])
  np.testing.assert_allclose(jax.lax.map(lambda x: data.preprocess(x[None], mu)[0], imgs),
                             [[-1, -10, -10], [1, 10, 10]])


def test_images_of_different_sizes_are_named(image_folder):
  from PIL import Image
  root, _ = image_folder
  odd = os.path.join(root, "test", "cat", "0999.png")
  Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(odd)
  with pytest.raises(DataError, match=r"image .*test/cat/0999.png has shape \(5, 7, 3\) but others "
                                      r"have \(8, 8, 3\); resize"):
    data.load_split(f"folder:{root}", "test")
  # The odd one first in the decoding order: named all the same (was the next, normal file).
  first = data.folder_examples(root, "train")[0][0]
  Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(first)
  with pytest.raises(DataError, match=f"image {first} has shape \\(5, 7, 3\\) but others"):
    data.load_split(f"folder:{root}", "train")


def test_decoded_folder_cache_serves_any_rows_and_follows_the_files(image_folder, tmp_path,
                                                                    monkeypatch):
  root, _ = image_folder
  cache = str(tmp_path / "cache")
  name = f"folder:{root}"
  x, y, _ = data.load_split(name, "train", cache_dir=cache)  # decodes, writes the entries
  data.load_split(name, "test", cache_dir=cache)
  assert sorted(f.split("-", 2)[:2] for f in os.listdir(cache)) == [
      ["checks", "test"], ["checks", "train"], ["images", "test"], ["images", "train"],
      ["labels", "test"], ["labels", "train"]]
  decoded = data._load_folder_split  # pylint: disable=protected-access

  def no_decoding(*args):
    raise AssertionError(f"decoded {args}")
  monkeypatch.setattr(data, "_load_folder_split", no_decoding)
  data._load_split_cached.cache_clear()  # pylint: disable=protected-access
  x2, y2, classes = data.load_split(name, "train", cache_dir=cache)
  np.testing.assert_array_equal(x2, x)
  np.testing.assert_array_equal(y2, y)
  assert classes == CLASSES
  part, labels, _ = data.load_split(name, "train", start=7, stop=31, cache_dir=cache)
  np.testing.assert_array_equal(part, x[7:31])
  np.testing.assert_array_equal(labels, y[7:31])
  ds = data.load(name, num_val=6, num_train=10, seed=1, cache_dir=cache)
  assert len(ds.train) == 10
  # A changed file changes the key: decoded again (and the new pixels are read).
  monkeypatch.setattr(data, "_load_folder_split", decoded)
  first = data.folder_examples(root, "train")[0][0]
  from PIL import Image  # pylint: disable=import-outside-toplevel
  Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(first)
  data._load_split_cached.cache_clear()  # pylint: disable=protected-access
  x3, _, _ = data.load_split(name, "train", cache_dir=cache)
  assert (x3[0] == 7).all() and np.array_equal(x3[1:], x[1:])
  # Rows beyond the split: the same error with or without the cache.
  for cached in (cache, None):
    with pytest.raises(InputError, match="start=65 is outside the train split's 60") as e:
      data.load_split(name, "train", start=len(x) + 5, cache_dir=cached)
    assert e.value.argument == "start"
  # A rewrite that keeps the size and the modification time still changes the key.
  st = os.stat(first)
  Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(first)
  assert os.stat(first).st_size == st.st_size
  os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
  data._load_split_cached.cache_clear()  # pylint: disable=protected-access
  x3, _, _ = data.load_split(name, "train", cache_dir=cache)
  assert (x3[0] == 9).all()
  # An unreadable entry is decoded again, not trusted.
  for f in os.listdir(cache):
    if f.startswith("images-"):
      with open(os.path.join(cache, f), "wb") as fh:
        fh.write(b"\x93NUMPY broken")
  data._load_split_cached.cache_clear()  # pylint: disable=protected-access
  x4, _, _ = data.load_split(name, "train", cache_dir=cache)
  np.testing.assert_array_equal(x4, x3)
  # A corrupt entry of the right shape is decoded again, not trusted: pixels changed (rows
  # swapped: before, used silently) or a label out of range (before: an error about "y").
  paths, labels = data.folder_examples(root, "train")
  images_path, labels_path, _ = data._decoded_entry(  # pylint: disable=protected-access
      root, "train", paths, labels, cache)
  entry = {"images": images_path, "labels": labels_path}
  for which, spoil in (("images", lambda a: a[::-1]), ("labels", lambda a: a * 0 + 7)):
    good = np.load(entry[which])
    np.save(entry[which], spoil(good))
    for start, stop in ((0, None), (7, 31)):
      data._load_split_cached.cache_clear()  # pylint: disable=protected-access
      x5, y5, _ = data.load_split(name, "train", start=start, stop=stop, cache_dir=cache)
      np.testing.assert_array_equal(x5, x3[start:stop])
      np.testing.assert_array_equal(y5, y[start:stop])
    np.testing.assert_array_equal(np.load(entry[which]), good)  # the whole read rewrote it
  # A damaged header (its length byte changed) made numpy raise tokenize's TokenError, which
  # failed this run and every later one; now it is a miss, and the entry is written again.
  for path in (images_path, labels_path, data._checks_path(images_path)):  # pylint: disable=protected-access
    f = os.path.basename(path)
    whole = open(path, "rb").read()
    with open(path, "wb") as fh:
      fh.write(whole[:8] + bytes([whole[8] ^ 0x55]) + whole[9:])
    data._load_split_cached.cache_clear()  # pylint: disable=protected-access
    x6, y6, _ = data.load_split(name, "train", cache_dir=cache)
    np.testing.assert_array_equal(x6, x3)
    np.testing.assert_array_equal(y6, y)
    assert open(path, "rb").read() == whole, f  # written again


def test_decoded_cache_names_a_broken_file_as_the_decoder_does(image_folder, tmp_path):
  root, _ = image_folder
  os.symlink(str(tmp_path / "gone.png"), os.path.join(root, "train", CLASSES[0], "zz.png"))
  with pytest.raises(DataError, match="zz.png"):
    data.load_split(f"folder:{root}", "train", cache_dir=str(tmp_path / "cache"))


def test_array_helpers_refuse_counts_and_shapes_that_cannot_be_right():
  ims = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
  sums = data.pixel_sums(ims)
  np.testing.assert_array_equal(np.asarray(data.mean_from_sums(sums, 6)),
                                np.asarray(data.mean_image(ims)))  # bit for bit
  for count, message in [(0, ">= 1"), (6.5, "must be an integer")]:
    with pytest.raises(InputError, match=message) as e:
      data.mean_from_sums(sums, count)  # 0 gave inf, 6.5 a wrong mean
    assert e.value.argument == "count"
  with pytest.raises(InputError, match="one label per image"):
    data.Split(ims, np.zeros(3, np.int32))  # len() said 3
  assert data.preprocess(ims[:0], data.mean_image(ims)).shape == (0, 48)


def test_reads_kept_in_memory_follow_the_folder(tmp_path, monkeypatch):
  """The same relative name in two working folders, a rewritten file, an added file: each
  read returns what is on disk now (the in-memory reads are keyed by the folder's state)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  for where, colour in (("a", 10), ("b", 20)):
    make_image_folder(str(tmp_path / where / "ds"), per_class_train=2, per_class_test=1)
    for p in data.folder_examples(str(tmp_path / where / "ds"), "train")[0]:
      Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(p)
  monkeypatch.chdir(tmp_path / "a")
  assert (data.load_split("folder:ds", "train")[0] == 10).all()
  monkeypatch.chdir(tmp_path / "b")
  assert (data.load_split("folder:ds", "train")[0] == 20).all()
  first = data.folder_examples("ds", "train")[0][0]
  Image.fromarray(np.full((8, 8, 3), 30, np.uint8)).save(first)
  images, _, _ = data.load_split("folder:ds", "train")
  assert (images[0] == 30).all() and (images[1:] == 20).all()
  Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save("ds/train/cat/9999.png")
  ds = data.load("folder:ds", num_val=2)
  assert len(ds.train) + len(ds.val) == 7
  # A class only in train/ changes the class names, not the test split's files: the test
  # read from memory gave the old names (2 names, labels up to 2).
  os.makedirs("ds/train/zebra")
  Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save("ds/train/zebra/0.png")
  ds = data.load("folder:ds", num_val=2)
  assert ds.class_names == CLASSES + ("zebra",) and ds.num_classes == len(CLASSES) + 1
  assert data.load_split("folder:ds", "test")[2] == ds.class_names


def test_hidden_folders_and_files_are_no_classes_or_images(image_folder):
  """".ipynb_checkpoints" with images took label 0 and shifted the others; macOS's
  "._0000.png" failed to decode."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  root, _ = image_folder
  before = data.load(f"folder:{root}", num_val=4)
  for split in ("train", "test"):
    os.makedirs(os.path.join(root, split, ".ipynb_checkpoints"))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
        os.path.join(root, split, ".ipynb_checkpoints", "x.png"))
    with open(os.path.join(root, split, CLASSES[0], "._0000.png"), "wb") as f:
      f.write(b"\x00\x05\x16\x07 AppleDouble")
  assert data.check_folder(root) == CLASSES
  after = data.load(f"folder:{root}", num_val=4)
  for which in ("train", "val", "test"):
    np.testing.assert_array_equal(getattr(after, which).labels, getattr(before, which).labels)
    np.testing.assert_array_equal(getattr(after, which).images, getattr(before, which).images)


def test_decoded_cache_is_keyed_by_the_decoders_version(image_folder, monkeypatch):
  """A new TensorFlow may decode JPEGs a rounding apart: its reads are not served from the
  entries an older one wrote."""
  root, _ = image_folder
  paths, labels = data.folder_examples(root, "test")
  before = data._files_stamp(root, paths, labels)  # pylint: disable=protected-access
  assert data._decoder_version().startswith(b", tensorflow")  # pylint: disable=protected-access
  monkeypatch.setattr(data, "_decoder_version", lambda: b", tensorflow 99.0")
  assert data._files_stamp(root, paths, labels) != before  # pylint: disable=protected-access


def test_test_images_of_another_size_name_the_fix(tmp_path):
  root = str(tmp_path / "images")
  make_image_folder(root, per_class_train=2, per_class_test=1, size=8)
  make_image_folder(str(tmp_path / "big"), per_class_train=1, per_class_test=1, size=10)
  shutil.rmtree(os.path.join(root, "test"))
  shutil.copytree(tmp_path / "big" / "test", os.path.join(root, "test"))
  with pytest.raises(DataError, match=r"train images are \(8, 8, 3\) but test images are "
                     r"\(10, 10, 3\) \(height, width, channels\) in folder:.*: every image of "
                     r"a dataset must have one size; resize the test images"):
    data.load(f"folder:{root}", num_val=1)


def test_a_cache_dir_no_folder_can_have_is_refused_before_decoding(tmp_path):
  root = str(tmp_path / "images")
  make_image_folder(root, per_class_train=1, per_class_test=1)
  # A NUL: a ValueError from os.makedirs after the whole split was decoded.
  for bad, message in (("a\0b", "holds a NUL character"), (7, "must be a folder's path")):
    with pytest.raises(InputError, match=message) as e:
      data.load_split(f"folder:{root}", "train", cache_dir=bad)
    assert e.value.argument == "cache_dir"
