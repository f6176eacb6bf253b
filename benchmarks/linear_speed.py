r"""Linear classifiers: jaxlin training vs scikit-learn, and the vmapped grid vs a loop.

  python -m benchmarks.linear_speed --dataset=folder:/data/cifar10-jpeg --out=runs/bench_linear

1. Softmax regression on the full data (49,000 train, 10,000 test): jaxlin
   (momentum, cosine schedule, the experiment's preprocessing) against
   scikit-learn LogisticRegression (lbfgs) and SGDClassifier (log loss), wall
   time (jaxlin's includes its compilation) and test accuracy for each.
2. A 5 x 5 (learning rate x reg) grid trained at once with vmap against the
   same 25 settings trained one after another (same steps, same batches).
"""
from __future__ import annotations

import itertools
import sys
import warnings

from absl import app
from absl import flags
import numpy as np

from benchmarks import common

_EPOCHS = flags.DEFINE_float("epochs", 5.0, "jaxlin epochs")
_GRID_EPOCHS = flags.DEFINE_float("grid_epochs", 1.0, "epochs for the grid comparison")
_SKIP_SKLEARN = flags.DEFINE_bool("skip_sklearn", False, "only run jaxlin")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxlin import linear, losses, train  # pylint: disable=g-import-not-at-top
  out, arrays = common.prepare("linear_speed")
  tx, ty, ex, ey = (arrays[n] for n in ("train_x", "train_y", "test_x", "test_y"))
  tx, ty = tx[:-1000], ty[:-1000]  # the course's 49,000 (the last 1,000 are val)
  rows = []

  # Preprocessing shared by all methods: mean image subtracted, one global scale.
  mean = tx.mean(0, dtype=np.float64).astype(np.float32)
  scale = float(np.std(tx.astype(np.float32) - mean))
  xtr = (tx.astype(np.float32) - mean) / scale
  xte = (ex.astype(np.float32) - mean) / scale

  # ---- 1. jaxlin softmax vs scikit-learn ----
  d, c = xtr.shape[1], 10
  model = train.Model(init=lambda k: linear.init_params(k, d, c), apply=linear.scores)
  steps = int(_EPOCHS.value * (len(ty) // 200))

  def jaxlin_fit(lrs, regs, steps, seed=0):
    t = train.Trainer(model, losses.softmax_cross_entropy, optimizer="momentum",
                      schedule="cosine", total_steps=steps)
    return t, t.fit(jax.random.key(seed), xtr_j, ytr_j, learning_rates=lrs, regs=regs,
                    batch_size=200, num_steps=steps)

  xtr_j, ytr_j = jnp.asarray(xtr), jnp.asarray(ty)
  with common.Stopwatch() as sw:
    t, res = jaxlin_fit([3e-3], [1e-2], steps)
    jax.block_until_ready(res.params)
  acc = float(t.accuracy(res.params, jnp.asarray(xte), jnp.asarray(ey))[0])
  rows.append({"task": "softmax, full data", "method": "jaxlin (momentum, 5 epochs)",
               "seconds": sw.seconds, "test_accuracy": acc})
  print(rows[-1], file=sys.stderr, flush=True)
  if not _SKIP_SKLEARN.value:
    from sklearn.linear_model import LogisticRegression, SGDClassifier  # pylint: disable=g-import-not-at-top
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      for name, clf in (("scikit-learn LogisticRegression (lbfgs)", LogisticRegression(max_iter=100)),
                        ("scikit-learn SGDClassifier (log loss)",
                         SGDClassifier(loss="log_loss", alpha=1e-3, max_iter=5, tol=None, random_state=0))):
        with common.Stopwatch() as sw:
          clf.fit(xtr, ty)
        rows.append({"task": "softmax, full data", "method": name, "seconds": sw.seconds,
                     "test_accuracy": float(clf.score(xte, ey))})
        print(rows[-1], file=sys.stderr, flush=True)
  base = rows[0]["seconds"]
  for r in rows:
    r["jaxlin_x_faster"] = r["seconds"] / base

  # ---- 2. the vmapped 5 x 5 grid vs 25 sequential runs ----
  grid = list(itertools.product([1e-4, 3e-4, 1e-3, 3e-3, 1e-2], [1e-3, 1e-2, 1e-1, 1.0, 10.0]))
  gsteps = int(_GRID_EPOCHS.value * (len(ty) // 200))
  with common.Stopwatch() as sw_grid:
    _, res = jaxlin_fit([g[0] for g in grid], [g[1] for g in grid], gsteps)
    jax.block_until_ready(res.params)
  with common.Stopwatch() as sw_seq:
    for lr, reg in grid:
      _, r1 = jaxlin_fit([lr], [reg], gsteps)
      jax.block_until_ready(r1.params)
  rows.append({"task": "5x5 grid, 1 epoch each", "method": "jaxlin vmapped grid (one program)",
               "seconds": sw_grid.seconds, "jaxlin_x_faster": 1.0})
  rows.append({"task": "5x5 grid, 1 epoch each", "method": "25 sequential jaxlin runs",
               "seconds": sw_seq.seconds, "jaxlin_x_faster": sw_seq.seconds / sw_grid.seconds})
  common.report(out, "linear_speed", rows,
                ["task", "method", "seconds", "test_accuracy", "jaxlin_x_faster"])


if __name__ == "__main__":
  app.run(main)
