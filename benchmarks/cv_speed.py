r"""Cross-validation over many k costs one search per fold.

  python -m benchmarks.cv_speed --dataset=folder:/data/cifar10-jpeg --out=runs/bench_cv

5-fold cross-validation of kNN over 10 values of k on 5,000 random training
images, against the same 5 folds evaluated for a single k: the ratio should
be close to 1 (target <= 1.2), since every k is voted from one search.
"""
from __future__ import annotations

import sys

from absl import app
from absl import flags
import numpy as np

from benchmarks import common

_NUM_TRAIN = flags.DEFINE_integer("num_train", 5000, "training images")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repeats (median)")

KS = [1, 3, 5, 8, 10, 12, 15, 20, 50, 100]


def main(argv):
  del argv
  from jaxlin import selection  # pylint: disable=import-outside-toplevel
  common.usage(_NUM_TRAIN.value >= 5, f"--num_train must be >= 5 (5 folds), got "
               f"{_NUM_TRAIN.value}")
  common.check_repeats(_REPEATS.value)
  out, arrays = common.prepare("cv_speed")
  tx, ty = arrays["train_x"], arrays["train_y"]
  classes = common.num_classes(arrays)
  idx = np.random.default_rng(0).permutation(len(ty))[:_NUM_TRAIN.value]
  x, y = tx[idx], ty[idx]
  common.usage(len(y) >= 5, f"the dataset has {len(y)} training images; 5 folds need 5")
  fit = len(y) - -(-len(y) // 5)  # training rows of a fold: k above it cannot run
  many = [k for k in KS if k <= fit]
  rows = []
  for metric in ("l2", "l1"):
    times = {}
    for name, ks in (("one k", [many[-1]]), ("all k", many)):
      selection.cross_validate_knn(x, y, ks, metric=metric, num_classes=classes)  # compile
      runs = []
      for _ in range(_REPEATS.value):
        with common.Stopwatch() as sw:
          selection.cross_validate_knn(x, y, ks, metric=metric, num_classes=classes)
        runs.append(sw.seconds)
      times[name] = float(np.median(runs))
    rows.append({"metric": metric, f"5 folds, one k (k={many[-1]}) (s)": times["one k"],
                 f"5 folds, {len(many)} k (s)": times["all k"],
                 "ratio": times["all k"] / times["one k"]})
    print(rows[-1], file=sys.stderr, flush=True)
  common.report(out, "cv_speed", rows, list(rows[0]),
                num_train=len(y), ks=many)


if __name__ == "__main__":
  app.run(main)
