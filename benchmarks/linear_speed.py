r"""Linear classifiers: jaxlin training vs scikit-learn, and the vmapped grid vs a loop.

  python -m benchmarks.linear_speed --dataset=folder:/data/cifar10-jpeg --out=runs/bench_linear

1. Softmax regression on the full data (49,000 train, 10,000 test): jaxlin
   (momentum, cosine schedule, the experiment's preprocessing) against
   scikit-learn LogisticRegression (lbfgs; a row that did not converge in its
   100 iterations says so) and SGDClassifier (log loss, --epochs rounded to
   whole epochs, on every core), wall time (jaxlin's includes its
   compilation) and test accuracy for each.
2. A 5 x 5 (learning rate x reg) grid trained at once with vmap against the
   same 25 settings trained one after another (same steps, same batches).
   Both sides compile one program each, once: the sequential runs reuse one
   Trainer (its program for a single setting), so the comparison is of run
   times, and each side's compile time (its first call minus a later,
   compiled call) is reported apart.

Smoke test on tiny data: --dataset=folder:PATH --num_val=10 --batch_size=8
--epochs=1 --skip_sklearn.
"""
from __future__ import annotations

import itertools
import sys
import warnings

from absl import flags
import numpy as np

from benchmarks import common

_EPOCHS = flags.DEFINE_float("epochs", 5.0, "jaxlin epochs")
_GRID_EPOCHS = flags.DEFINE_float("grid_epochs", 1.0, "epochs for the grid comparison")
_SKIP_SKLEARN = flags.DEFINE_bool("skip_sklearn", False, "only run jaxlin")
_NUM_VAL = flags.DEFINE_integer("num_val", 1000, "last training rows held out (the course's 1,000)")
_BATCH = flags.DEFINE_integer("batch_size", 200, "minibatch size")


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jaxlin import linear, losses, train  # pylint: disable=import-outside-toplevel
  common.usage(_NUM_VAL.value >= 0, f"--num_val must be >= 0, got {_NUM_VAL.value}")
  common.usage(_BATCH.value >= 1, f"--batch_size must be >= 1, got {_BATCH.value}")
  common.usage(_EPOCHS.value > 0 and _GRID_EPOCHS.value > 0, "--epochs and --grid_epochs must "
               "be > 0")
  if not _SKIP_SKLEARN.value:
    common.need("sklearn", "scikit-learn", " (or --skip_sklearn)")
  out, arrays = common.prepare("linear_speed")
  tx, ty, ex, ey = (arrays[n] for n in ("train_x", "train_y", "test_x", "test_y"))
  n_train = len(tx) - _NUM_VAL.value  # the course's 49,000 (the last 1,000: val)
  common.usage(n_train >= _BATCH.value, f"--num_val={_NUM_VAL.value} leaves {max(n_train, 0)} "
               f"of the {len(tx)} training images, fewer than --batch_size={_BATCH.value}")
  tx, ty = tx[:n_train], ty[:n_train]
  batch = _BATCH.value
  rows = []

  # Preprocessing shared by all methods: mean image subtracted, one global scale.
  mean = tx.mean(0, dtype=np.float64).astype(np.float32)
  scale = float(np.std(tx.astype(np.float32) - mean))
  xtr = (tx.astype(np.float32) - mean) / scale
  xte = (ex.astype(np.float32) - mean) / scale

  # ---- 1. jaxlin softmax vs scikit-learn ----
  d, c = xtr.shape[1], common.num_classes(arrays)
  model = train.Model(init=lambda k: linear.init_params(k, d, c), apply=linear.scores)
  steps = max(int(_EPOCHS.value * (len(ty) // batch)), 1)

  def new_trainer():
    return train.Trainer(model, losses.softmax_cross_entropy, optimizer="momentum",
                         schedule="cosine")

  def timed_fit(t, lrs, regs, steps, seed=0):
    with common.Stopwatch() as sw:
      res = t.fit(jax.random.key(seed), xtr_j, ytr_j, learning_rates=lrs, regs=regs,
                  batch_size=batch, num_steps=steps)
      jax.block_until_ready(res.params)
    return sw.seconds, res

  xtr_j, ytr_j = jnp.asarray(xtr), jnp.asarray(ty)
  t = new_trainer()
  seconds, res = timed_fit(t, [3e-3], [1e-2], steps)  # a fresh program: compile included
  acc = float(t.accuracy(res.params, jnp.asarray(xte), jnp.asarray(ey))[0])
  rows.append({"task": "softmax, full data",
               "method": f"jaxlin (momentum, {_EPOCHS.value:g} epochs, compile included)",
               "seconds": seconds, "test_accuracy": acc})
  print(rows[-1], file=sys.stderr, flush=True)
  if not _SKIP_SKLEARN.value:
    # pylint: disable-next=import-outside-toplevel
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    sgd_epochs = max(int(round(_EPOCHS.value)), 1)  # SGDClassifier's epochs are whole
    for name, clf in (("scikit-learn LogisticRegression (lbfgs, 100 iterations at most)",
                       LogisticRegression(max_iter=100)),
                      (f"scikit-learn SGDClassifier (log loss one-vs-rest, not softmax; alpha "
                       f"1e-3; {sgd_epochs} epochs, every core)",
                       SGDClassifier(loss="log_loss", alpha=1e-3, max_iter=sgd_epochs, tol=None,
                                     random_state=0, n_jobs=-1))):
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with common.Stopwatch() as sw:
          clf.fit(xtr, ty)
      converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
      # (SGD stops after its epochs by design, tol=None: its warning says so, no failure)
      rows.append({"task": "softmax, full data",
                   "method": name + ("" if converged or "SGD" in name else ", not converged"),
                   "seconds": sw.seconds, "test_accuracy": float(clf.score(xte, ey))})
      print(rows[-1], file=sys.stderr, flush=True)
  base = rows[0]["seconds"]
  for r in rows:
    r["jaxlin_x_faster"] = r["seconds"] / base

  # ---- 2. the vmapped 5 x 5 grid vs 25 sequential runs ----
  grid = list(itertools.product([1e-4, 3e-4, 1e-3, 3e-3, 1e-2], [1e-3, 1e-2, 1e-1, 1.0, 10.0]))
  gsteps = max(int(_GRID_EPOCHS.value * (len(ty) // batch)), 1)
  task = f"5x5 grid, {_GRID_EPOCHS.value:g} epoch each"
  lrs, regs = [g[0] for g in grid], [g[1] for g in grid]
  grid_t = new_trainer()  # one program for the 25-member grid
  grid_first, _ = timed_fit(grid_t, lrs, regs, gsteps)  # compile + run
  grid_run, _ = timed_fit(grid_t, lrs, regs, gsteps)  # the compiled program again
  seq_t = new_trainer()  # one program for a single setting, reused for all 25
  seq_first, _ = timed_fit(seq_t, lrs[:1], regs[:1], gsteps)  # compile + run of setting 0
  seq_runs = [timed_fit(seq_t, [lr], [reg], gsteps)[0] for lr, reg in grid]
  assert grid_t.trace_count == 1 and seq_t.trace_count == 1, "a program was compiled twice"
  seq_run = float(np.sum(seq_runs))
  rows.append({"task": task, "method": "jaxlin vmapped grid (one program)",
               "seconds": grid_run, "compile_seconds": max(grid_first - grid_run, 0.0),
               "jaxlin_x_faster": 1.0})
  rows.append({"task": task, "method": "25 sequential jaxlin runs (one compiled program reused)",
               "seconds": seq_run, "compile_seconds": max(seq_first - seq_runs[0], 0.0),
               "jaxlin_x_faster": seq_run / grid_run})
  common.report(out, "linear_speed", rows,
                ["task", "method", "seconds", "compile_seconds", "test_accuracy",
                 "jaxlin_x_faster"],
                note="grid rows: run times of compiled programs; compile_seconds = first call "
                     "minus a compiled call of the same program")


if __name__ == "__main__":
  common.run(main)
