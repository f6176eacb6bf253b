r"""k-nearest neighbours on CIFAR-10: k and the distance chosen by cross-validation.

  python -m experiments.knn --dataset=folder:/data/cifar10-jpeg --workdir=runs/knn

Cross-validates every (metric, k) on the training subset (or scores it on the
val split with --cv_folds=0), picks the best mean accuracy, evaluates it once
on the test subset and writes config.json, results.json and plots/ into
--workdir.
"""
from __future__ import annotations

import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from experiments import common
from jaxlin import data, distances, knn, metrics, plots, selection, sharding
from jaxlin.errors import ConfigError

DEFAULTS = dict(
    dataset="cifar10", data_dir=None, seed=0, num_train=5000, num_test=500, num_val=1000,
    k=[1, 3, 5, 8, 10, 12, 15, 20, 50, 100], metric=["l1", "l2"], cv_folds=5,
    tie_break="smallest_label", num_neighbor_rows=8, shard="auto")

_K = flags.DEFINE_list("k", [str(k) for k in DEFAULTS["k"]], "values of k to compare")
_METRIC = flags.DEFINE_list("metric", DEFAULTS["metric"], "distances to compare: l1, l2, cosine")
_CV_FOLDS = flags.DEFINE_integer("cv_folds", DEFAULTS["cv_folds"], "folds (0 = use the val split)")
_TIE_BREAK = flags.DEFINE_enum("tie_break", DEFAULTS["tie_break"], list(knn.TIE_BREAKS),
                               "how a tied vote is decided")


def validate(config: dict) -> dict:
  """Checks every value before any heavy work; returns a normalised config."""
  c = common.merge_config(DEFAULTS, config)
  c["k"] = common.parse_ints(c["k"], "k")
  if not c["k"] or min(c["k"]) < 1:
    raise ConfigError(f"--k values must be >= 1, got {c['k']}")
  c["k"] = sorted(set(c["k"]))
  c["metric"] = [str(m).strip().lower() for m in c["metric"]]
  for m in c["metric"]:
    if m not in distances.METRICS or m == "l2_squared":
      raise ConfigError(f"unknown --metric {m!r}; choose from l1, l2, cosine")
  if not c["metric"]:
    raise ConfigError("--metric needs at least one of l1, l2, cosine")
  if c["cv_folds"] == 1 or c["cv_folds"] < 0:
    raise ConfigError(f"--cv_folds must be 0 (use the val split) or at least 2, got {c['cv_folds']}")
  for name in ("num_train", "num_test"):
    if c[name] is not None and c[name] < 0:
      raise ConfigError(f"--{name} must be >= 0 (0 = all), got {c[name]}")
    if c[name] == 0:
      c[name] = None
  single = len(c["k"]) == 1 and len(c["metric"]) == 1
  if c["num_val"] < 0 or (c["cv_folds"] == 0 and c["num_val"] < 1 and not single):
    raise ConfigError(f"--num_val must be >= 1 when --cv_folds=0 (>= 0 otherwise), got {c['num_val']}")
  if c["num_train"] is not None:
    _check_k_fits(c, c["num_train"], single)
  common.check_shard(c["shard"])
  if c["tie_break"] not in knn.TIE_BREAKS:
    raise ConfigError(f"unknown --tie_break {c['tie_break']!r}; choose from {knn.TIE_BREAKS}")
  return c


def _check_k_fits(c: dict, num_train: int, single: bool = False):
  folds = 0 if single else c["cv_folds"]
  fit = num_train - -(-num_train // folds) if folds else num_train
  if max(c["k"]) > fit:
    where = f"the {fit} training images of each of {folds} folds" if folds else f"the {fit} training images"
    raise ConfigError(f"--k={max(c['k'])} is larger than {where}; use smaller k or more --num_train")


def run(config: dict, workdir: str) -> dict:
  c = validate(config)
  workdir = common.prepare_workdir(workdir)
  data.check_name(c["dataset"])
  common.write_json(os.path.join(workdir, "config.json"), c)
  timer = common.Timer()
  mesh, shard = common.mesh_for(c["shard"])

  logging.info("loading %s", c["dataset"])
  # Across hosts each process reads only its own rows of what is split:
  # --shard=queries: the query splits (val, test), searched on its own devices;
  # --shard=database without CV: the database (the training split), laid along the mesh.
  # The CV folds come from the training split, so with CV every process reads it whole.
  single = len(c["metric"]) == 1 and len(c["k"]) == 1
  hosts = mesh is not None and jax.process_count() > 1
  spread = hosts and shard == "queries"
  db_spread = hosts and shard == "database" and (single or not c["cv_folds"])
  rows, query_mesh = None, mesh
  if spread or db_spread:
    plan = data.split_rows(c["dataset"], data_dir=c["data_dir"], num_train=c["num_train"],
                           num_val=c["num_val"], num_test=c["num_test"], seed=c["seed"])
    rows = {s: sharding.process_rows(len(plan[s][1]), mesh)
            for s in (("val", "test") if spread else ("train",))}
    local = jax.local_devices()
    query_mesh = sharding.make_mesh(local) if spread and len(local) > 1 else None
    common.log_rows(rows)
  ds = data.load(c["dataset"], data_dir=c["data_dir"], num_train=c["num_train"],
                 num_val=c["num_val"], num_test=c["num_test"], seed=c["seed"], rows=rows)
  n_train = ds.train.total
  _check_k_fits(c, n_train, single)
  load_s = timer()
  flat = lambda imgs: imgs.reshape(len(imgs), -1)  # uint8 rows: L1 stays exact integer work
  # A split's rows from every process, for the splits each process reads a part of.
  parts = [getattr(ds, s) for s in (rows or {})]

  def whole(split, a):
    read_in_part = any(split is p for p in parts)
    return sharding.gather_rows(a, split.start, split.total) if read_in_part else a

  if db_spread:
    train_x = sharding.rows_to_global(flat(ds.train.images), n_train, mesh)
  else:
    train_x = flat(ds.train.images)
  train_y = whole(ds.train, ds.train.labels)
  val_labels, test_labels = whole(ds.val, ds.val.labels), whole(ds.test, ds.test.labels)
  logging.info("train %d, val %d, test %d images of %s, %d classes",
               n_train, ds.val.total, ds.test.total, ds.image_shape, ds.num_classes)

  def neighbours(split, metric, k, bar):
    """(split.total, k) database indices of every image of a query split, on every process."""
    if db_spread:
      _, idx = knn.search(flat(split.images), train_x, k, metric=metric, mesh=mesh,
                          layout="database", num_database=n_train)
    else:
      _, idx = knn.search(flat(split.images), train_x, k, metric=metric, mesh=query_mesh,
                          layout=shard, callback=common.tile_callback(bar))
    return whole(split, np.asarray(idx))

  # ---- model selection: every (metric, k) from one search per fold ----
  accuracies, sel_t = {}, common.Timer()
  for m in ([] if single else c["metric"]):
    if c["cv_folds"]:
      with common.progress(f"{c['cv_folds']}-fold CV, {m}", c["cv_folds"], "fold") as bar:
        accuracies[m] = selection.cross_validate_knn(  # folds of default_rng([seed, 3])
            train_x, train_y, c["k"], num_folds=c["cv_folds"], metric=m,
            num_classes=ds.num_classes, tie_break=c["tie_break"],
            callback=common.tile_callback(bar), seed=(c["seed"], 3), mesh=mesh, layout=shard)
    else:
      with common.progress(f"val split, {m}", len(ds.val), "img") as bar:
        idx = neighbours(ds.val, m, max(c["k"]), bar)  # one search serves every k
      accuracies[m] = np.array([[float(metrics.accuracy(val_labels, knn.vote(
          train_y[idx[:, :kk]], ds.num_classes, tie_break=c["tie_break"]))) for kk in c["k"]]])
    logging.info("%s: mean accuracy by k %s", m,
                 {k: round(float(a), 4) for k, a in zip(c["k"], accuracies[m].mean(0))})
  select_s = sel_t()
  if single:  # nothing to choose: evaluate the one setting on test
    best_metric, best_k = c["metric"][0], c["k"][0]
  else:  # best mean accuracy; ties go to the first metric given, then the smallest k
    best_metric, best_j = max(((m, j) for m in c["metric"] for j in range(len(c["k"]))),
                              key=lambda mj: (accuracies[mj[0]][:, mj[1]].mean(),
                                              -c["metric"].index(mj[0]), -mj[1]))
    best_k = c["k"][best_j]

  # ---- the test split, touched once ----
  test_t = common.Timer()
  show_k = min(max(best_k, 10), n_train)
  with common.progress(f"test, {best_metric} k={best_k}", len(ds.test), "img") as bar:
    idx = neighbours(ds.test, best_metric, show_k, bar)
  test_pred = np.asarray(knn.vote(train_y[idx[:, :best_k]], ds.num_classes, tie_break=c["tie_break"]))
  test_s = test_t()
  test_acc = float(metrics.accuracy(test_labels, test_pred))
  cm = np.asarray(metrics.confusion_matrix(test_labels, test_pred, ds.num_classes))

  # ---- figures, then results (written last: its presence means the run finished) ----
  if accuracies and common.is_writer():
    plots.save(plots.cross_validation(c["k"], accuracies),
               os.path.join(workdir, "plots", "cross_validation.png"))
  shown = np.random.default_rng([c["seed"], 4]).permutation(ds.test.total)[:c["num_neighbor_rows"]]
  shown_images = _rows_at(ds.test, shown) if spread else ds.test.images[shown]
  near = idx[shown, :10]
  near_images = (_rows_at(ds.train, near.ravel()).reshape(near.shape + ds.image_shape)
                 if db_spread else ds.train.images[near])
  if common.is_writer():
    plots.save(plots.neighbors(shown_images, test_labels[shown], near_images, train_y[near],
                               ds.class_names), os.path.join(workdir, "plots", "neighbors.png"))
    plots.save(plots.confusion(cm, ds.class_names, title=f"kNN {best_metric} k={best_k}, test"),
               os.path.join(workdir, "plots", "confusion.png"))
  results = {
      "dataset": c["dataset"],
      "sizes": {"train": n_train, "val": ds.val.total, "test": ds.test.total},
      "class_names": list(ds.class_names),
      "selection": ("none (a single setting)" if single else "val split" if not c["cv_folds"]
                    else f"{c['cv_folds']}-fold cross-validation"),
      "k": c["k"],
      "accuracy": {m: {"per_fold": a.tolist(), "mean": a.mean(0).tolist(), "std": a.std(0).tolist()}
                   for m, a in accuracies.items()},
      "chosen": {"metric": best_metric, "k": best_k,
                 "selection_accuracy": None if single else float(
                     accuracies[best_metric][:, c["k"].index(best_k)].mean())},
      "test_accuracy": test_acc,
      "per_class_test_accuracy": dict(zip(ds.class_names,
                                          np.asarray(metrics.per_class_accuracy(cm)).tolist())),
      "confusion_matrix": cm.tolist(),
      "devices": 1 if mesh is None else int(mesh.devices.size),
      "processes": jax.process_count(),
      "timings_s": {"load": load_s, "selection": select_s, "test": test_s, "total": timer()},
      "date": time.strftime("%Y-%m-%d %H:%M:%S"),
  }
  common.write_json(os.path.join(workdir, "results.json"), results)
  logging.info("chosen %s k=%d (selection accuracy %s); test accuracy %.4f on %d images; %.1f s",
               best_metric, best_k, results["chosen"]["selection_accuracy"], test_acc,
               ds.test.total, timer())
  return results


def _rows_at(split, positions) -> np.ndarray:
  """Images at the given positions of a split, on every process (each adds the rows it holds)."""
  out = np.zeros((len(positions),) + split.images.shape[1:], np.int32)
  for j, r in enumerate(positions):
    if split.start <= r < split.start + len(split):
      out[j] = split.images[r - split.start]
  return sharding.process_sum(out).astype(np.uint8)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = dict(common.shared_flag_config(DEFAULTS), k=_K.value, metric=_METRIC.value,
                cv_folds=_CV_FOLDS.value, tie_break=_TIE_BREAK.value)
  common.run_main(run, config, common.WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
