r"""Cross-validation: many k for the price of one, each pair of folds computed once.

  python -m benchmarks.cv_speed --dataset=folder:/data/cifar10-jpeg --out=runs/bench_cv
  python -m benchmarks.cv_speed --dataset=folder:/data/cifar10-jpeg --out=runs/bench_cv \
    --baseline_src=../jaxlin-old   # e.g. made by: git worktree add ../jaxlin-old <commit>

5-fold cross-validation of kNN over 10 values of k on 5,000 random training
images (uint8 pixels), timed (median of ``--repeats``, after a first call
that compiles) three ways in one run:

* ``selection.cross_validate_knn`` for one k and for all 10: the ratio should
  be close to 1, since every k is voted from the same neighbours;
* one ``knn.predict`` per fold (brute force, or with ``--per_fold_method=auto``
  what ``knn.search`` chooses: the L2 cascade on large folds), as it ran before
  each pair of folds was shared: ``cross_validate_knn`` computes the distances
  of each pair of folds once, so it should take about half the distance work
  (the column "pairs of folds shared" says whether it did: not where a pair is
  little work);
* with ``--baseline_src``, ``cross_validate_knn`` of another jaxlin checkout
  (an older commit), in a child process on the same images. The two take turns
  (``--rounds``: jaxlin's median of ``--repeats``, then the baseline's), so a
  machine that slows for a while slows both; the ratio is the median of the
  rounds' ratios, and the table gives their range too.

Every way must give the same accuracies (the same folds, exact integer
distances, the same ties; an older checkout's, computed in float32, within
its rounding), or the run fails.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import numpy as np

from benchmarks import common

_NUM_TRAIN = flags.DEFINE_integer("num_train", 5000, "training images")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repeats (median)")
_BASELINE_SRC = flags.DEFINE_string(
    "baseline_src", None, "a folder holding another jaxlin checkout (its jaxlin/ package) to "
    "time on the same images, e.g. an older commit")

_ROUNDS = flags.DEFINE_integer(
    "rounds", 3, "with --baseline_src: rounds in which jaxlin and the baseline take turns")
_METRICS = flags.DEFINE_list("metrics", ["l2", "l1"], "distances to time: l2, l1")
_PER_FOLD_METHOD = flags.DEFINE_enum(
    "per_fold_method", "brute", ["brute", "auto"], "the method of the one-search-per-fold "
    "baseline: brute force, or what knn.search chooses (the L2 cascade on large folds)")

KS = [1, 3, 5, 8, 10, 12, 15, 20, 50, 100]

# Run in the baseline checkout: compile its cross_validate_knn (argv: x.npy y.npy metric ks
# repeats classes) and print {"accuracy": [[...]]}; then, for each line read, time it and
# print {"seconds": median of repeats}.
_CHILD = """
import json, sys, time
import numpy as np
from jaxlin import selection
x, y = np.load(sys.argv[1]), np.load(sys.argv[2])
metric, ks, repeats = sys.argv[3], [int(k) for k in sys.argv[4].split(",")], int(sys.argv[5])
cv = lambda: selection.cross_validate_knn(x, y, ks, metric=metric, num_classes=int(sys.argv[6]))
print(json.dumps({"accuracy": np.asarray(cv()).tolist()}), flush=True)
for _ in sys.stdin:
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    cv()
    runs.append(time.perf_counter() - t0)
  print(json.dumps({"seconds": float(np.median(runs))}), flush=True)
"""


def _median_seconds(fn, repeats: int):
  """(median seconds of ``repeats`` calls after a first, untimed one; its result)."""
  result = fn()
  runs = []
  for _ in range(repeats):
    with common.Stopwatch() as sw:
      fn()
    runs.append(sw.seconds)
  return float(np.median(runs)), result


def _one_search_per_fold(x, y, ks, metric, classes):
  from jaxlin import knn, selection  # pylint: disable=import-outside-toplevel
  acc = []
  for tr, va in selection.kfold_indices(len(x), 5):
    preds = knn.predict(x[tr], y[tr], x[va], k=ks, metric=metric, num_classes=classes,
                        method=_PER_FOLD_METHOD.value)
    acc.append([np.count_nonzero(np.asarray(p) == y[va]) / len(va) for p in preds])
  return np.array(acc)


class _Baseline:
  """A child process running another checkout's cross_validate_knn on the same images:
  ``accuracy`` once compiled; ``seconds()`` times one round (the median of its repeats)."""

  def __init__(self, src: str, x, y, ks, metric, classes, repeats):
    self._src = src
    self._tmp = tempfile.TemporaryDirectory()  # pylint: disable=consider-using-with
    paths = [os.path.join(self._tmp.name, n) for n in ("x.npy", "y.npy")]
    np.save(paths[0], x)
    np.save(paths[1], y)
    self._proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-c", _CHILD, *paths, metric, ",".join(map(str, ks)), str(repeats),
         str(classes)], cwd=src, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [os.path.abspath(src)] + [p for p in [os.environ.get("PYTHONPATH")] if p])})
    self.accuracy = np.array(self._read()["accuracy"])

  def _read(self) -> dict:
    line = self._proc.stdout.readline()
    if not line:
      self._proc.wait()
      raise app.UsageError(f"--baseline_src={self._src}: its cross_validate_knn failed: "
                           f"{self._proc.stderr.read().strip().splitlines()[-1:]}")
    return json.loads(line)

  def seconds(self) -> float:
    self._proc.stdin.write("\n")
    self._proc.stdin.flush()
    return self._read()["seconds"]

  def close(self):
    self._proc.stdin.close()
    self._proc.wait()
    self._tmp.cleanup()


def main(argv):
  del argv
  from jaxlin import selection  # pylint: disable=import-outside-toplevel
  common.usage(_NUM_TRAIN.value >= 5, f"--num_train must be >= 5 (5 folds), got "
               f"{_NUM_TRAIN.value}")
  common.check_repeats(_REPEATS.value)
  common.usage(_ROUNDS.value >= 1, f"--rounds must be >= 1, got {_ROUNDS.value}")
  common.usage(_BASELINE_SRC.value or not flags.FLAGS["rounds"].present, "--rounds takes turns "
               "with the baseline: give --baseline_src too, or leave --rounds out")
  metrics = common.check_methods(_METRICS.value, ("l2", "l1"), flag="metrics")
  src = _BASELINE_SRC.value
  common.usage(src is None or os.path.isfile(os.path.join(src or "", "jaxlin", "selection.py")),
               f"--baseline_src={src} holds no jaxlin checkout (no jaxlin/selection.py there)")
  out, arrays = common.prepare("cv_speed")
  tx, ty = arrays["train_x"], arrays["train_y"]
  classes = common.num_classes(arrays)
  idx = np.random.default_rng(0).permutation(len(ty))[:_NUM_TRAIN.value]
  x, y = tx[idx], ty[idx]
  common.usage(len(y) >= 5, f"the dataset has {len(y)} training images; 5 folds need 5")
  fit = len(y) - -(-len(y) // 5)  # training rows of a fold: k above it cannot run
  many = [k for k in KS if k <= fit]
  rows = []
  folds = selection.kfold_indices(len(y), 5)
  for metric in metrics:
    shared = selection._shared_kernel(  # pylint: disable=protected-access
        x, metric, None, "auto", folds, many[-1]) is not None
    cv = lambda ks, metric=metric: selection.cross_validate_knn(x, y, ks, metric=metric,
                                                                num_classes=classes)
    one, _ = _median_seconds(lambda: cv([many[-1]]), _REPEATS.value)
    all_k, acc = _median_seconds(lambda: cv(many), _REPEATS.value)
    per_fold, acc_per_fold = _median_seconds(
        lambda metric=metric: _one_search_per_fold(x, y, many, metric, classes), _REPEATS.value)
    if not np.array_equal(acc, acc_per_fold):
      raise AssertionError(f"{metric}: one search per fold gave other accuracies: a bug")
    row = {"metric": metric, "pairs of folds shared": "yes" if shared else "no (a search per fold)",
           f"one k (k={many[-1]}) (s)": one, f"{len(many)} k (s)": all_k,
           "ratio": all_k / one,
           f"one search per fold ({_PER_FOLD_METHOD.value}), {len(many)} k (s)": per_fold,
           "x faster than a search per fold": per_fold / all_k}
    if src:
      base = _Baseline(src, x, y, many, metric, classes, _REPEATS.value)
      try:
        # Older checkouts computed accuracies in float32 (errors near 1e-8): one image of a
        # fold differs by 1 / fold size.
        if np.abs(acc - base.accuracy).max() >= 0.5 / (len(y) - fit):
          raise AssertionError(f"{metric}: the --baseline_src checkout gave other accuracies")
        turns = [(_median_seconds(lambda: cv(many), _REPEATS.value)[0], base.seconds())
                 for _ in range(_ROUNDS.value)]
      finally:
        base.close()
      ratios = [b / m for m, b in turns]
      row.update({f"{len(many)} k, in turns (s)": float(np.median([m for m, _ in turns])),
                  f"baseline checkout, {len(many)} k (s)": float(np.median([b for _, b in turns])),
                  "x faster than the baseline": float(np.median(ratios)),
                  "x, each round": ", ".join(f"{r:.2f}" for r in ratios)})
    rows.append(row)
    print(rows[-1], file=sys.stderr, flush=True)
  # The whole process's peak: the dataset loaded, and every way timed (a baseline: apart).
  common.report(out, "cv_speed", rows, list(rows[0]), num_train=len(y), ks=many,
                per_fold_method=_PER_FOLD_METHOD.value, peak_rss_mb=common.peak_rss_mb(),
                **({"baseline_src": src} if src else {}))


if __name__ == "__main__":
  common.run(main)
