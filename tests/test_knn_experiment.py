import json
import os
import re

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import common
from experiments import config as cfg
from experiments import knn as knn_exp
from experiments import linear as linear_exp
from jaxlin import data, selection
from experiments.config import ConfigError
from jaxlin.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _brute_accuracy(ds, metric, k):
  tr = ds.train.images.reshape(len(ds.train), -1).astype(np.float64)
  te = ds.test.images.reshape(len(ds.test), -1).astype(np.float64)
  diff = te[:, None] - tr[None]
  d = np.abs(diff).sum(-1) if metric == "l1" else (diff ** 2).sum(-1)
  idx = np.argsort(d, 1, kind="stable")[:, :k]
  pred = np.array([np.bincount(ds.train.labels[r], minlength=ds.num_classes).argmax() for r in idx])
  return np.mean(pred == ds.test.labels)


def test_run_end_to_end_on_an_image_folder(image_folder, tmp_path):
  root, _ = image_folder
  config = dict(dataset=f"folder:{root}", num_train=40, num_test=12, num_val=6, k=[1, 3, 5],
                metric=["l1", "l2"], cv_folds=4, cv_num_train=24, seed=1, num_neighbor_rows=3)
  res = knn_exp.run(config, str(tmp_path / "wd"))
  wd = tmp_path / "wd"
  for f in ("config.json", "results.json", "plots/cross_validation.png", "plots/neighbors.png",
            "plots/confusion.png"):
    assert (wd / f).stat().st_size > 0, f
  on_disk = json.loads((wd / "results.json").read_text())
  assert on_disk["chosen"] == res["chosen"]
  assert on_disk["sizes"] == {"train": 40, "val": 6, "test": 12, "cross_validation": 24}
  assert (on_disk["processes"], on_disk["devices"]) == (1, jax.device_count())
  assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", on_disk["date"])  # the start
  # What it ran with, so that a run on other code, another machine or other data tells.
  env = on_disk["environment"]
  assert set(env) == {"command", "date_utc", "jaxlin", "commit", "versions", "cpu", "cores",
                      "int8_product", "devices", "data_files"}
  from jaxlin import native  # pylint: disable=import-outside-toplevel
  assert env["int8_product"] == ("native" if native.available() else
                                 f"xla: {native.reason_unavailable()}")
  assert env["data_files"] == data.source_digest(f"folder:{root}") and env["cores"] >= 1
  assert env["versions"]["jax"] == jax.__version__ and env["date_utc"].endswith("+00:00")
  assert env["devices"] == [f"cpu: {jax.devices()[0].device_kind}"]
  # Cross-validation on a seeded subset of 24 of the 40 training images, in their order.
  ds = data.load(f"folder:{root}", num_train=40, num_test=12, num_val=6, seed=1)
  rows = np.sort(cfg.rng(1, "cv_subset").permutation(40)[:24])
  for metric in ("l1", "l2"):
    expect = selection.cross_validate_knn(
        ds.train.images.reshape(40, -1)[rows], ds.train.labels[rows], [1, 3, 5], num_folds=4,
        metric=metric, num_classes=3, seed=(1, cfg.SEEDS["folds"]))
    np.testing.assert_array_equal(on_disk["accuracy"][metric]["per_fold"], expect)
  # The chosen setting has the best mean CV accuracy.
  best = max(max(v["mean"]) for v in on_disk["accuracy"].values())
  assert res["chosen"]["selection_accuracy"] == pytest.approx(best)
  # Test accuracy equals a float64 brute-force kNN against all 40 training images.
  assert res["test_accuracy"] == pytest.approx(_brute_accuracy(ds, res["chosen"]["metric"],
                                                               res["chosen"]["k"]))
  assert res["test_accuracy"] > 0.9  # colours separate the generated classes
  assert np.array(res["confusion_matrix"]).sum() == 12


def test_run_with_tfds_mock_data_and_the_val_split(tmp_path):
  with tfds.testing.mock_data(num_examples=50):
    res = knn_exp.run(dict(dataset="cifar10", num_train=30, num_test=10, num_val=10, k=[1, 2],
                           metric=["l2"], cv_folds=0, num_neighbor_rows=0, search="pruned"),
                      str(tmp_path))
  assert res["selection"] == "val split"
  assert res["sizes"] == {"train": 30, "val": 10, "test": 10, "cross_validation": 0}
  # How each search went: the cascade (here every query falls to its brute-force level: 30
  # rows are fewer than its candidates, so neither round can run: 0 candidates).
  assert set(res["search"]) == {"val_l2", "test"}
  assert res["search"]["test"] == {"method": "pruned", "queries": 10, "first_round": 0,
                                   "second_round": 0, "brute_force": 10, "candidates": [0, 0]}
  assert np.array(res["accuracy"]["l2"]["per_fold"]).shape == (1, 2)
  assert (tmp_path / "plots" / "cross_validation.png").exists()
  assert not (tmp_path / "plots" / "neighbors.png").exists()  # --num_neighbor_rows=0


@pytest.mark.parametrize("override, message", [
    (dict(k=[0, 3]), "--k values must be >= 1"),
    (dict(k=["x"]), "comma-separated list of integers"),
    (dict(k=[2.5, 3]), r"--k must be a comma-separated list of integers, got '2.5,3'$"),
    (dict(k=[True]), "comma-separated list of integers, got 'True'"),  # was k=1
    (dict(k=[float("inf")]), "comma-separated list of integers, got 'inf'"),
    (dict(k=[1e300]), r"comma-separated list of integers, got '1e\+300'"),
    (dict(k=[]), r"--k is empty; give one or more values, e.g. --k=1,5,10"),
    (dict(metric=["l3"]), "unknown --metric 'l3'"),
    (dict(cv_folds=1), "--cv_folds must be 0"),
    (dict(search="fast"), "unknown --search 'fast'"),
    (dict(num_train=50, k=[45]), "--k=45 is larger than the 40 training images"),
    (dict(num_train=-2), "--num_train must be >= 0"),
    (dict(cv_num_train=-1), "--cv_num_train must be >= 0"),
    (dict(cv_num_train=10, cv_folds=0, num_val=5), r"chooses on the val split \(--cv_folds=0\)"),
    (dict(cv_num_train=10, k=[1], metric=["l1"]), "has nothing to choose"),
    (dict(num_train=20, cv_num_train=30), "--cv_num_train=30 is more than the 20 training"),
    (dict(num_train=50, cv_num_train=10, k=[9]),
     "--k=9 is larger than the 8 training images of each of 5 folds"),
    (dict(num_train=0, cv_num_train=10, k=[9]), r"use smaller k, more --cv_folds \(each fold "
                                                r"then trains on more\) or more --cv_num_train"),
    (dict(num_train=50, cv_num_train=11, k=[9]),  # folds of 3, 2, 2, 2, 2: 8 to train on
     "--k=9 is larger than the 8 training images of each of 5 folds"),
    (dict(num_train=50, cv_num_train=3), "--cv_folds=5 is more than the 3 training images of "
                                         "--cv_num_train"),
    (dict(search="pruned", metric=["l1", "cosine"]), "--search=pruned serves --metric=l1,l2"),
    (dict(k=[3], metric=["l1"], cv_folds=7),  # was silently unused
     r"--cv_folds=7 chooses between values of --k and --metric, but this run has one of each"),
])
def test_bad_config_is_rejected_before_any_work(override, message, tmp_path):
  with pytest.raises(ConfigError, match=message):
    knn_exp.run(dict(dataset="folder:/does/not/matter", **override), str(tmp_path))
  assert not (tmp_path / "config.json").exists()


def test_cv_folds_with_nothing_to_choose_is_refused_from_the_command_line_too():
  config = knn_exp.Config.make(dict(k=[3], metric=["l1"], cv_folds=7))  # as flags give it
  with pytest.raises(ConfigError, match="--cv_folds=7 chooses between values"):
    knn_exp.validate(config)
  knn_exp.validate(knn_exp.Config.make(dict(k=[3], metric=["l1"])))  # the default: fine


def test_values_given_twice_are_one_setting():
  c = knn_exp.validate(dict(k=[5, 3, 5], metric=["l1", "L1", "l2"], num_train=100))
  assert (tuple(c.k), c.metric) == ((3, 5), ("l1", "l2"))  # l1 ran twice, recorded twice
  c = linear_exp.validate(dict(learning_rate=[1e-3, 1e-3, 1e-2], reg=[0.1, 0.1]))
  assert (c.learning_rate, c.reg) == ((1e-3, 1e-2), (0.1,))  # was 3 x 2 settings, 4 alike


def test_unwritable_workdir_and_missing_dataset(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(ConfigError, match="is not writable"):
    knn_exp.run(dict(dataset="cifar10"), str(blocker / "wd"))
  with pytest.raises(ConfigError, match=r"workdir .*/file is a file, not a folder; choose "):
    knn_exp.run(dict(dataset="cifar10"), str(blocker))
  assert blocker.read_text() == "x"
  with pytest.raises(DataError, match="does not exist"):
    knn_exp.run(dict(dataset=f"folder:{tmp_path}/missing"), str(tmp_path / "wd"))
  with pytest.raises(DataError, match=r"dataset folder .*/file is a file, not a folder"):
    knn_exp.run(dict(dataset=f"folder:{blocker}"), str(tmp_path / "wd"))  # "does not exist"
  # tfds's own message lists every dataset it has (460 lines): its first line only; a path
  # without folder: gets the hint.
  for name, end in (("foo_bar", "use cifar10 or folder:PATH"),
                    (str(tmp_path), f"for a local image folder write folder:{tmp_path}")):
    with pytest.raises(DataError) as e:
      knn_exp.run(dict(dataset=name), str(tmp_path / "wd"))
    assert "\n" not in str(e.value) and str(e.value).endswith(end), str(e.value)
  with pytest.raises(DataError) as e:
    knn_exp.run(dict(dataset=""), str(tmp_path / "wd"))
  assert common.flag_message(e.value, {"name": "dataset"}) == (
      "--dataset is empty; give a dataset: cifar10 or folder:PATH")
  assert not (tmp_path / "wd" / "results.json").exists()


@pytest.mark.parametrize("flag, error", [
    ("--k=0", "error: --k values must be >= 1, got [0]"),
    # absl's own parsing: the same one line, exit 2, in the programs' words
    ("--cv_num_train=2.5", "error: --cv_num_train must be an integer, got '2.5'"),
    ("--overwrite=maybe", "error: --overwrite must be true or false, got 'maybe'"),
    ("3", "error: unexpected arguments '3': every value goes in a flag, lists comma-separated "
          "without spaces (e.g. --k=1,3 --metric=l1,l2)"),  # `--k 1 3`: was absl's whole help
])
def test_command_line_error_is_one_line(tmp_path, flag, error, cli):
  proc = cli.run("experiments.knn", flag, f"--workdir={tmp_path}")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == error
  assert "Traceback" not in proc.stderr and "FATAL" not in proc.stderr


def test_a_file_the_disk_refuses_is_one_line_and_writes_nothing(image_folder, tmp_path, cli):
  """A full disk, a quota or a file size limit: a traceback (exit 1) before."""
  root, _ = image_folder
  proc = cli.run("experiments.knn", f"--dataset=folder:{root}", "--num_val=6", "--k=1",
                 "--metric=l2", "--num_train=0", "--num_test=0", "--cache_dir=",
                 f"--workdir={tmp_path}/wd", file_size_limit=4096)
  assert proc.returncode == 2, proc.stderr
  assert re.fullmatch(
      rf"error: File too large \({re.escape(str(tmp_path))}/wd/plots/\w+\.png\): the file is "
      r"larger than this process may write \(ulimit -f\); raise that limit; nothing of this "
      r"run was written, and the workdir keeps its previous run",
      proc.stderr.strip().splitlines()[-1]), proc.stderr
  assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "wd")


def test_a_default_size_above_a_small_folder_says_how_to_take_all(image_folder, tmp_path, cli):
  root, arrays = image_folder
  n_train = sum("/train/" in p for p in arrays) - 6
  proc = cli.run("experiments.knn", f"--dataset=folder:{root}", "--num_val=6", "--k=1",
                 f"--workdir={tmp_path}/wd")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [  # --num_train=5000 is kNN's default
      f"error: --num_train=5000 must be in [1, {n_train}]: the split has {n_train} images "
      "(--num_train=0 takes them all)"]



def test_a_dataset_of_one_class_is_refused(tmp_path, cli):
  """Every prediction is right with one class: the run reported 100 %."""
  from tests.conftest import make_image_folder  # pylint: disable=import-outside-toplevel
  make_image_folder(str(tmp_path / "one"), per_class_train=8, per_class_test=2, classes=("cat",))
  proc = cli.run("experiments.knn", f"--dataset=folder:{tmp_path / 'one'}", "--num_val=2",
                 "--num_train=0", "--num_test=0", "--k=1", "--metric=l2", "--cv_folds=0",
                 f"--workdir={tmp_path}/wd")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: folder:{tmp_path / 'one'} has 1 class (cat): classification needs at least 2; "
      "give a dataset with two or more classes (for an image folder: class folders in train/ "
      "and test/)")
  assert not (tmp_path / "wd").exists()

# ---- choices on data where they matter ----------------------------------------------------
# On the colour folder above every setting scores 1.0, so nothing there shows that the run
# picks by the mean over folds, votes with the chosen k or scores the val split per k. Here
# 2 x 2 images with pixel noise of std 180 around three colours: accuracies 0.4-0.9 that
# differ between k, metrics and folds (each test below first checks that they do).
NOISY = dict(per_class_train=14, per_class_test=8, size=2, seed=3, noise=180.0)


@pytest.fixture(scope="module")
def noisy_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("noisy")
  from tests.conftest import make_image_folder  # pylint: disable=import-outside-toplevel
  make_image_folder(str(root), **NOISY)
  return f"folder:{root}"


def _predict(train_x, train_y, queries, k, metric, tie_break="smallest_label"):
  """float64 brute-force kNN: neighbours in (distance, index) order, a tied vote to the
  smallest label or to the tied class whose first neighbour is nearest."""
  diff = queries[:, None].astype(np.float64) - train_x[None].astype(np.float64)
  d = np.abs(diff).sum(-1) if metric == "l1" else np.sqrt((diff ** 2).sum(-1))
  out = []
  for labels in train_y[np.argsort(d, 1, kind="stable")[:, :k]]:
    counts = np.bincount(labels, minlength=3)
    tied = np.flatnonzero(counts == counts.max())
    out.append(tied[0] if tie_break == "smallest_label" else
               min(tied, key=lambda c: list(labels).index(c)))  # pylint: disable=cell-var-from-loop
  return np.array(out)


def _flat(split):
  return split.images.reshape(len(split), -1)


def test_cross_validation_picks_the_best_mean_and_tests_it_with_its_k(noisy_folder, tmp_path):
  ks, seed = [1, 3, 5, 9], 3
  res = knn_exp.run(dict(dataset=noisy_folder, num_train=36, num_val=6, num_test=0, k=ks,
                         metric=["l1", "l2"], cv_folds=3, seed=seed, num_neighbor_rows=0),
                    str(tmp_path))
  ds = data.load(noisy_folder, num_train=36, num_val=6, seed=seed)
  x, y = _flat(ds.train), ds.train.labels
  # The folds as jaxlin.selection documents them: a seeded permutation cut by array_split.
  folds = np.array_split(np.random.default_rng([seed, cfg.SEEDS["folds"]]).permutation(36), 3)
  expect = {}
  for metric in ("l1", "l2"):
    expect[metric] = np.array([[np.mean(_predict(
        x[np.concatenate(folds[:f] + folds[f + 1:])], y[np.concatenate(folds[:f] + folds[f + 1:])],
        x[folds[f]], k, metric) == y[folds[f]]) for k in ks] for f in range(3)])
    got = res["accuracy"][metric]
    np.testing.assert_allclose(got["per_fold"], expect[metric], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["mean"], expect[metric].mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["std"], expect[metric].std(0), rtol=0, atol=1e-12)
  # The data discriminate: the best mean is unique, and the best of fold 0 alone, or the best
  # single fold, would pick another setting.
  settings = [(m, j) for m in ("l1", "l2") for j in range(len(ks))]
  means = sorted((expect[m][:, j].mean() for m, j in settings), reverse=True)
  assert means[0] > means[1]
  by_mean = max(settings, key=lambda s: expect[s[0]][:, s[1]].mean())
  assert by_mean != max(settings, key=lambda s: expect[s[0]][0, s[1]])
  assert by_mean != max(settings, key=lambda s: expect[s[0]][:, s[1]].max())
  # ...and the run picks it: l1 with k=3, mean CV accuracy 22/36.
  assert by_mean == ("l1", 1)
  assert res["chosen"] == {"metric": "l1", "k": 3, "selection_accuracy": pytest.approx(22 / 36)}
  # The test split is voted on by the chosen k's neighbours (the search keeps 10 for the
  # figure; voting with all 10 would score 17/24, not 16/24).
  pred = _predict(x, y, _flat(ds.test), 3, "l1")
  assert np.mean(_predict(x, y, _flat(ds.test), 10, "l1") == ds.test.labels) == 17 / 24
  assert res["test_accuracy"] == pytest.approx(16 / 24) == pytest.approx(
      np.mean(pred == ds.test.labels))
  # The confusion matrix counts (true class, predicted class); this one is not symmetric.
  cm = np.zeros((3, 3), int)
  np.add.at(cm, (ds.test.labels, pred), 1)
  assert not np.array_equal(cm, cm.T)
  assert res["confusion_matrix"] == cm.tolist()
  assert list(res["per_class_test_accuracy"].values()) == pytest.approx(
      np.diag(cm) / cm.sum(1))  # of each true class: a row
  assert res["rows_read"] == [{"train": [0, 36], "val": [0, 6], "test": [0, 24]}]  # one process


def test_the_val_split_scores_each_k_with_its_own_neighbours(noisy_folder, tmp_path):
  ks, seed = [1, 2, 4, 6], 3
  res = knn_exp.run(dict(dataset=noisy_folder, num_train=32, num_val=10, num_test=24, k=ks,
                         metric=["l2"], cv_folds=0, seed=seed, num_neighbor_rows=0,
                         tie_break="nearest"), str(tmp_path))
  ds = data.load(noisy_folder, num_train=32, num_val=10, num_test=24, seed=seed)
  x, y = _flat(ds.train), ds.train.labels
  expect = [np.mean(_predict(x, y, _flat(ds.val), k, "l2", "nearest") == ds.val.labels)
            for k in ks]
  assert len(set(expect)) > 1  # k matters on these images...
  assert expect != [np.mean(_predict(x, y, _flat(ds.val), k, "l2") == ds.val.labels)
                    for k in ks]  # ...and so does the tie rule
  assert res["accuracy"]["l2"]["per_fold"] == [pytest.approx(expect, abs=1e-12)]
  best = int(np.argmax(expect))  # the first best: the smallest k
  assert res["chosen"] == {"metric": "l2", "k": ks[best],
                           "selection_accuracy": pytest.approx(expect[best])}
  pred = _predict(x, y, _flat(ds.test), ks[best], "l2", "nearest")
  assert res["test_accuracy"] == pytest.approx(np.mean(pred == ds.test.labels))
  assert (pred != _predict(x, y, _flat(ds.test), ks[best], "l2")).any()  # the rule matters


def test_ties_between_settings_go_to_the_first_metric_given_then_the_smallest_k():
  c = knn_exp.validate(dict(dataset="folder:/x", metric=["l2", "l1"], k=[1, 3]))
  one_fold = lambda *rows: np.array([rows])  # pylint: disable=unnecessary-lambda-assignment
  assert knn_exp._choose(c, {"l2": one_fold(0.5, 0.7),  # pylint: disable=protected-access
                             "l1": one_fold(0.7, 0.6)}) == ("l2", 3)
  assert knn_exp._choose(c, {"l2": one_fold(0.5, 0.6),  # pylint: disable=protected-access
                             "l1": one_fold(0.7, 0.7)}) == ("l1", 1)


def test_each_timing_is_the_stage_it_names(noisy_folder, tmp_path, monkeypatch):
  """A clock that moves only in cross-validation (1,000 s per metric) and in the test
  split's search (10 s): results.json's timings must put each where it happened."""
  clock = [0.0]

  class FakeTimer:
    def __init__(self):
      self.t0 = clock[0]

    def __call__(self):
      return clock[0] - self.t0

  calls = []

  def ticking(function, seconds):
    def wrapped(*args, **kwargs):
      clock[0] += seconds
      calls.append(kwargs)
      return function(*args, **kwargs)
    return wrapped

  monkeypatch.setattr(common, "Timer", FakeTimer)
  monkeypatch.setattr(selection, "cross_validate_knn",
                      ticking(selection.cross_validate_knn, 1000.0))
  real_neighbours = knn_exp._Database.neighbours  # pylint: disable=protected-access
  monkeypatch.setattr(knn_exp._Database, "neighbours",  # pylint: disable=protected-access
                      lambda self, name, *a: ticking(real_neighbours, 10.0 if name == "test"
                                                     else 1e6)(self, name, *a))
  config = dict(dataset=noisy_folder, num_train=36, num_val=6, num_test=6, k=[1, 3],
                metric=["l1", "l2"], cv_folds=3, num_neighbor_rows=0, tie_break="nearest")
  res = knn_exp.run(config, str(tmp_path / "cv"))
  assert res["timings_s"] == {"load": 0.0, "selection": 2000.0, "test": 10.0, "total": 2010.0}
  assert [(kw["metric"], kw["tie_break"]) for kw in calls if "num_folds" in kw] == [
      ("l1", "nearest"), ("l2", "nearest")]  # the tie rule reaches cross-validation
  res = knn_exp.run(dict(config, cv_folds=0, metric=["l2"]), str(tmp_path / "val"))
  assert res["timings_s"] == {"load": 0.0, "selection": 1e6, "test": 10.0, "total": 1e6 + 10}


def test_size_advice_names_the_flag_that_can_help_and_unused_val_images_are_said(
    image_folder, tmp_path, caplog):
  """With --num_train=0 (every image already) the advice was "more --num_train"; the val
  images held out of a cross-validated run were dropped without a word."""
  root, _ = image_folder
  with pytest.raises(ConfigError, match=r"use smaller k, more --cv_folds \(each fold then "
                     r"trains on more\) or a smaller --num_val \(the images it holds out\)"):
    knn_exp.run(dict(dataset=f"folder:{root}", num_train=0, num_test=0, num_val=5, k=[1, 500]),
                str(tmp_path / "a"))
  with caplog.at_level("WARNING"):
    knn_exp.run(dict(dataset=f"folder:{root}", num_train=30, num_test=6, num_val=5, k=[1, 3],
                     metric=["l1"], cv_folds=3, num_neighbor_rows=0), str(tmp_path / "b"))
    assert "val images" not in caplog.text  # a subset: --num_val=0 would add nothing
    knn_exp.run(dict(dataset=f"folder:{root}", num_train=0, num_test=6, num_val=5, k=[1, 3],
                     metric=["l1"], cv_folds=3, num_neighbor_rows=0), str(tmp_path / "c"))
  assert ("the 5 val images (--num_val) are held out of the training images and not used: "
          "cross-validation chooses; --num_val=0 puts them back") in caplog.text
