r"""k-nearest neighbours on CIFAR-10: k and the distance chosen by cross-validation.

  python -m experiments.knn --dataset=folder:/data/cifar10-jpeg --workdir=runs/knn

Cross-validates every (metric, k) on the training images (or on a random
--cv_num_train of them, or scores it on the val split with --cv_folds=0), picks
the best mean accuracy, evaluates it once on the test subset against all
--num_train training images and writes config.json, results.json and plots/
into --workdir.
"""
from __future__ import annotations

import dataclasses

from absl import logging
import numpy as np

from experiments import common
from experiments import config as cfg
from experiments.config import option, require
from jaxlin import data, distances, knn, metrics, selection


MAX_NEIGHBORS_SHOWN = 10  # neighbours per test image in plots/neighbors.png (more: unreadable)


@dataclasses.dataclass(frozen=True)
class Config(common.DataConfig):
  num_train: int | None = option(5000, "training images (0 = all)")
  num_test: int | None = option(500, "test images (0 = all)")
  k: tuple[int, ...] = option((1, 3, 5, 8, 10, 12, 15, 20, 50, 100), "values of k to compare")
  metric: tuple[str, ...] = option(("l1", "l2"), "distances to compare: l1, l2, cosine")
  cv_folds: int = option(5, "cross-validation folds (0 = choose on the val split)")
  cv_num_train: int = option(0, "training images cross-validation uses, a seeded random "
                             "subset (0 = all of them); the test split is still searched "
                             "against all --num_train training images")
  tie_break: str = option("smallest_label", f"how a tied vote is decided: "
                          f"{', '.join(knn.TIE_BREAKS)}")
  search: str = option("auto", "how neighbours are found, every way exact: brute (every "
                       "distance), pruned (lower bounds rule most rows out: L2 certifies its "
                       "candidates, L1 measures every row a threshold leaves in), auto (pruned "
                       "where a cost model predicts it faster)")
  num_neighbor_rows: int = option(8, "test images shown with their neighbours in "
                                  "plots/neighbors.png")

  @property
  def single(self) -> bool:
    """One (metric, k): nothing to choose, the test split is searched once."""
    return len(self.k) == 1 and len(self.metric) == 1


def validate(config) -> Config:
  """Checks every value before any data is read; returns the normalised config."""
  c = common.validate_data(Config.make(config))
  given = cfg.ints(c.k, "k")
  k = sorted(set(given))
  require(bool(k), "k", "--k is empty; give one or more values, e.g. --k=1,5,10")
  require(min(k) >= 1, "k", f"--k values must be >= 1, got {list(given)}")
  metric = tuple(dict.fromkeys(str(m).strip().lower() for m in c.metric))  # each once, in order
  require(bool(metric), "metric", "--metric needs at least one of l1, l2, cosine")
  for m in metric:
    require(m in distances.METRICS and m != "l2_squared", "metric",
            f"unknown --metric {m!r}; choose from l1, l2, cosine")
  c = c.replace(k=k, metric=metric)
  require(c.cv_folds == 0 or c.cv_folds >= 2, "cv_folds",
          f"--cv_folds must be 0 (use the val split) or at least 2, got {c.cv_folds}")
  require(c.num_val >= (1 if c.cv_folds == 0 and not c.single else 0), "num_val",
          f"--num_val must be >= 1 when --cv_folds=0 (>= 0 otherwise), got {c.num_val}")
  require(c.search in knn.METHODS, "search",
          f"unknown --search {c.search!r}; choose from {', '.join(knn.METHODS)}")
  require(c.search != "pruned" or "cosine" not in metric, "search",
          "--search=pruned serves --metric=l1,l2 (its lower bounds), not cosine; use "
          "--search=auto or brute, or leave cosine out of --metric")
  require(c.tie_break in knn.TIE_BREAKS, "tie_break",
          f"unknown --tie_break {c.tie_break!r}; choose from {', '.join(knn.TIE_BREAKS)}")
  require(c.cv_num_train >= 0, "cv_num_train",
          f"--cv_num_train must be >= 0 (0 = all training images), got {c.cv_num_train}")
  require(not (c.single and c.cv_folds not in (0, Config.cv_folds)), "cv_folds",
          f"--cv_folds={c.cv_folds} chooses between values of --k and --metric, but this run "
          "has one of each: nothing to choose; give several, or leave --cv_folds out")
  require(c.cv_num_train == 0 or (c.cv_folds and not c.single), "cv_num_train",
          "--cv_num_train sets the images cross-validation uses, and this run "
          + ("has nothing to choose (one --k and one --metric)" if c.single else
             "chooses on the val split (--cv_folds=0)") + "; leave it at 0")
  require(c.num_neighbor_rows >= 0, "num_neighbor_rows",
          f"--num_neighbor_rows must be >= 0, got {c.num_neighbor_rows}")
  if c.num_train or c.cv_num_train:  # else: checked once the training split's size is known
    check_sizes(c, c.num_train or c.cv_num_train)
  return c


def check_sizes(c: Config, num_train: int) -> None:
  """The folds and the largest k fit ``num_train`` training images (or the
  --cv_num_train of them that cross-validation uses)."""
  folds = 0 if c.single else c.cv_folds
  require(c.cv_num_train <= num_train, "cv_num_train",
          f"--cv_num_train={c.cv_num_train} is more than the {num_train} training images; "
          "use at most that many (0 = all)")
  num_train = c.cv_num_train or num_train
  images = (f"the {num_train} training images of --cv_num_train" if c.cv_num_train
            else f"the {num_train} training images")
  require(folds <= num_train, "cv_folds", f"--cv_folds={folds} is more than {images}")
  fit = num_train - -(-num_train // folds) if folds else num_train
  where = (f"the {fit} training images of each of {folds} folds" if folds
           else f"the {fit} training images")
  more = ("more --cv_num_train" if c.cv_num_train else
          "more --num_train" if c.num_train else  # all already: --num_val holds the others
          "a smaller --num_val (the images it holds out)" if c.num_val else "more images")
  require(max(c.k) <= fit, "k",
          f"--k={max(c.k)} is larger than {where}; use smaller k"
          + (", more --cv_folds (each fold then trains on more)" if folds else "")
          + f" or {more}")


def run(config, workdir: str, *, overwrite: bool = False) -> dict:
  """Load, select (metric, k) on training data, evaluate once on test, write."""
  c = validate(config)
  with common.Run("knn", c, workdir, overwrite=overwrite) as r:
    plan = data.split_rows(c.dataset, data_dir=c.data_dir, num_train=c.num_train or None,
                           num_val=c.num_val, num_test=c.num_test or None, seed=c.seed)
    check_sizes(c, len(plan["train"][1]))
    logging.info("loading %s", c.dataset)
    ds = r.hosts.load(c, plan, _split_in_parts(c, r.hosts))
    db = _Database(ds, r.hosts, c.search)
    load_s = r.timer()
    logging.info("train %d, val %d, test %d images of %s, %d classes", db.n, ds.val.total,
                 ds.test.total, ds.image_shape, ds.num_classes)
    if (ds.val.total and not c.num_train and (c.cv_folds or c.single)  # they could join
        and not common.inside_another_run()):
      # (A study holds them out for its linear stages, which choose on them.)
      logging.warning("the %d val images (--num_val) are held out of the training images "
                      "and not used: %s; --num_val=0 puts them back", ds.val.total,
                      "there is one setting" if c.single else "cross-validation chooses")

    select_t = common.Timer()
    cv_rows = _cv_rows(c, db.n)
    accuracies = {m: _select(c, ds, db, m, cv_rows) for m in ([] if c.single else c.metric)}
    best_metric, best_k = _choose(c, accuracies)
    select_s = select_t()

    test_t = common.Timer()  # the test split, touched once
    with common.progress(f"test, {best_metric} k={best_k}", ds.test.total, "img") as bar:
      idx = db.neighbours("test", ds.test, best_metric,
                          min(max(best_k, MAX_NEIGHBORS_SHOWN), db.n), bar)
    test_pred = np.asarray(knn.vote(db.y[idx[:, :best_k]], ds.num_classes,
                                    tie_break=c.tie_break))
    test_s = test_t()
    test_y = r.hosts.whole(ds.test, ds.test.labels)
    cm = np.asarray(metrics.confusion_matrix(test_y, test_pred, ds.num_classes))

    _figures(r, c, ds, db, accuracies, (best_metric, best_k), idx, test_y, test_pred, cm)
    results = _results(c, ds, accuracies, best_metric, best_k, cm,
                       float(np.trace(cm) / cm.sum()))  # exact (float64), as the CV ones
    results["sizes"]["cross_validation"] = (len(cv_rows) if c.cv_folds and not c.single
                                            else 0)
    results.update(rows_read=r.hosts.rows_read(ds), search=db.stats,
                   timings_s={"load": load_s, "selection": select_s, "test": test_s})
    results = r.finish(results)
  chosen_acc = results["chosen"]["selection_accuracy"]
  logging.info("%s %s k=%d%s; test accuracy %.4f on %d images; %.1f s",
               "the one setting," if chosen_acc is None else "chosen", best_metric, best_k,
               "" if chosen_acc is None else f" (selection accuracy {chosen_acc:.4f})",
               results["test_accuracy"], ds.test.total, results["timings_s"]["total"])
  return results


def _split_in_parts(c: Config, hosts) -> tuple[str, ...]:
  """Across hosts each process reads only its own rows of what is split: with
  --shard=queries the query splits (val, test); with --shard=database and no CV the database
  (the training split). CV folds come from the training split: with CV it is read whole."""
  if not hosts.spread:
    return ()
  if hosts.layout == "queries":
    return ("val", "test")
  return ("train",) if c.single or not c.cv_folds else ()


class _Database:
  """The training split as the kNN database: rows (laid along the mesh when read in parts)
  and the labels of every row on every process."""

  def __init__(self, ds: data.Dataset, hosts, method: str):
    self.hosts, self.n, self.method = hosts, ds.train.total, method
    self.stats: dict[str, dict] = {}  # split name -> how its search went
    self.x = ds.train.rows  # uint8: L1 stays exact integer work
    if hosts.in_parts(ds.train):
      self.x = hosts.global_rows(ds.train, self.x)
    self.y = hosts.whole(ds.train, ds.train.labels)

  def neighbours(self, name: str, split: data.Split, metric: str, k: int, bar) -> np.ndarray:
    """(split.total, k) database indices of every row of ``split`` (called ``name`` in the
    stats), on every process."""
    idx, self.stats[name] = self.hosts.search(
        split, self.x, metric, k, num_database=self.n, callback=common.tile_callback(bar),
        method=self.method)
    return idx


def _cv_rows(c: Config, n: int) -> np.ndarray:
  """The training rows cross-validation uses: all, or a seeded random --cv_num_train of them
  (in increasing order)."""
  if not c.cv_num_train or c.cv_num_train >= n:
    return np.arange(n)
  return np.sort(cfg.rng(c.seed, "cv_subset").permutation(n)[:c.cv_num_train])


def _select(c: Config, ds: data.Dataset, db: _Database, metric: str,
            cv_rows: np.ndarray) -> np.ndarray:
  """(folds, len(k)) accuracies of every k for one metric: one set of neighbours per fold
  (or the val split) serves every k."""
  ks = list(c.k)
  if c.cv_folds:
    whole = len(cv_rows) == db.n  # no copy of the database
    with common.progress(f"{c.cv_folds}-fold CV, {metric}", c.cv_folds, "fold") as bar:
      acc = selection.cross_validate_knn(
          db.x if whole else db.x[cv_rows], db.y if whole else db.y[cv_rows], ks,
          num_folds=c.cv_folds, metric=metric, num_classes=ds.num_classes,
          tie_break=c.tie_break, callback=common.tile_callback(bar), mesh=db.hosts.mesh,
          layout=db.hosts.layout, shuffle=True, seed=(c.seed, cfg.SEEDS["folds"]),
          method=c.search, image_shape=ds.image_shape)
  else:
    with common.progress(f"val split, {metric}", ds.val.total, "img") as bar:
      idx = db.neighbours(f"val_{metric}", ds.val, metric, max(ks), bar)  # serves every k
    val_y = db.hosts.whole(ds.val, ds.val.labels)
    acc = np.array([[np.count_nonzero(np.asarray(knn.vote(
        db.y[idx[:, :k]], ds.num_classes, tie_break=c.tie_break)) == val_y) / len(val_y)
                     for k in ks]])  # exact fractions (float64), as cross_validate_knn
  logging.info("%s: %s by k %s", metric,
               f"mean {c.cv_folds}-fold CV accuracy" if c.cv_folds else "validation accuracy",
               {k: round(float(a), 4) for k, a in zip(ks, acc.mean(0))})
  return acc


def _choose(c: Config, accuracies: dict) -> tuple[str, int]:
  """Best mean accuracy; ties go to the first metric given, then the smallest k."""
  if c.single:
    return c.metric[0], c.k[0]
  m, j = max(((m, j) for m in c.metric for j in range(len(c.k))),
             key=lambda mj: (accuracies[mj[0]][:, mj[1]].mean(), -c.metric.index(mj[0]), -mj[1]))
  return m, c.k[j]


def _figures(r, c: Config, ds, db: _Database, accuracies, chosen, idx, test_y, test_pred,
             cm) -> None:
  metric, k = chosen
  if accuracies:
    r.plot("cross_validation.png", "cross_validation", list(c.k), accuracies, chosen=chosen)
  shown = cfg.rng(c.seed, "shown_images").permutation(ds.test.total)[:c.num_neighbor_rows]
  if len(shown):  # --num_neighbor_rows=0: no neighbours figure
    near = idx[shown, :min(k, MAX_NEIGHBORS_SHOWN)]
    shown_images = r.hosts.rows_at(ds.test, shown)  # every process takes part
    near_images = r.hosts.rows_at(ds.train, near.ravel()).reshape(near.shape + ds.image_shape)
    which = (f"the first {near.shape[1]} of their k={k} nearest training images"
             if near.shape[1] < k else f"their k={k} nearest training images" if k > 1
             else "their nearest training image (k=1)")
    r.plot("neighbors.png", "neighbors", shown_images, test_y[shown], near_images, db.y[near],
           ds.class_names, predicted_labels=test_pred[shown],
           title=f"test images (left) and {which}, {metric} distance")
  r.plot("confusion.png", "confusion", cm, ds.class_names, title=f"kNN {metric} k={k}, test")


def _results(c: Config, ds, accuracies, best_metric, best_k, cm, test_acc) -> dict:
  single = "none (a single setting)"
  return {
      "dataset": c.dataset,
      "sizes": {"train": ds.train.total, "val": ds.val.total, "test": ds.test.total},
      "class_names": list(ds.class_names),
      "selection": (single if c.single else "val split" if not c.cv_folds
                    else f"{c.cv_folds}-fold cross-validation"),
      "k": list(c.k),
      "accuracy": {m: {"per_fold": a.tolist(), "mean": a.mean(0).tolist(),
                       "std": a.std(0).tolist()} for m, a in accuracies.items()},
      "chosen": {"metric": best_metric, "k": best_k,
                 "selection_accuracy": None if c.single else float(
                     accuracies[best_metric][:, c.k.index(best_k)].mean())},
      "test_accuracy": test_acc,
      "per_class_test_accuracy": common.per_class_accuracy(cm, ds.class_names),
      "confusion_matrix": cm.tolist(),
  }


if __name__ == "__main__":
  common.main("knn", Config, validate, run)
