r"""kNN search and training on 1, 2, 4 and 8 devices (simulated CPU devices by default).

  python -m benchmarks.scaling --dataset=folder:/data/cifar10-jpeg --out=runs/scaling

Each device count runs in a child process started with
XLA_FLAGS=--xla_force_host_platform_device_count=N (on a GPU or TPU host,
pass --real_devices to use the real ones instead), so the figures show the
cost of the sharded code paths, not a speed-up: simulated CPU devices share
the same cores. Every run is checked against the single-device answer.
Every time is of compiled programs (a first, untimed call of the same shapes
compiles them); training's compilation is reported on a row of its own.
"""
from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import common

_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "device counts")
_QUERIES = flags.DEFINE_integer("queries", 2000, "test images searched")
_K = flags.DEFINE_integer("k", 10, "neighbours")
_REAL = flags.DEFINE_bool("real_devices", False, "use the host's real devices (first N)")
_CHILD = flags.DEFINE_integer("child", 0, "internal: device count of this child")


def child(n: int, out: str):
  import jax  # pylint: disable=import-outside-toplevel
  from jaxlin import knn, linear, losses, sharding, train  # pylint: disable=import-outside-toplevel
  paths = common.array_paths(out)
  arrays = {k: np.load(paths[k]) for k in ("train_x", "train_y", "test_x", "test_y")}
  db, q = arrays["train_x"], arrays["test_x"][:_QUERIES.value]
  if len(jax.devices()) < n:  # checked here: a parent holding the devices would starve us
    how = ("--real_devices: this host has" if _REAL.value else
           "the simulated CPU devices are not there (XLA_FLAGS set elsewhere?):")
    raise SystemExit(f"--devices: {n} devices asked for; {how} {len(jax.devices())}")
  mesh = sharding.make_mesh(jax.devices()[:n])
  rows = {}
  for metric in ("l2", "l1"):
    for mode in knn.LAYOUTS:
      search = lambda qq: knn.search(qq, db, _K.value, metric=metric, mesh=mesh, layout=mode)
      search(q)  # the same shapes as the timed call: it compiles, the timed call does not
      t0 = time.perf_counter()
      _, idx = search(q)
      idx = np.asarray(idx)  # (gathered to the host: part of the search)
      rows[f"knn {metric}, split {mode}"] = time.perf_counter() - t0
      np.save(os.path.join(out, f"idx_{n}_{metric}_{mode}.npy"), idx)
  x = (db[:20000].astype(np.float32) - 128.0) / 64.0
  y = arrays["train_y"][:20000]
  classes = common.num_classes(arrays)
  model = train.Model(init=lambda key: linear.init_params(key, x.shape[1], classes),
                      apply=linear.scores)
  trainer = train.Trainer(model, losses.softmax_cross_entropy, optimizer="momentum", mesh=mesh)
  times = []
  for _ in range(2):  # the first fit compiles (as the searches' untimed first calls do)
    t0 = time.perf_counter()
    fit = trainer.fit(jax.random.key(0), x, y, learning_rates=[1e-3, 3e-3], regs=[0.01, 0.01],
                      batch_size=min(200, len(x)), num_steps=200)
    jax.block_until_ready(fit.params)
    times.append(time.perf_counter() - t0)
  rows["softmax training, 200 steps x 2 settings"] = times[1]
  rows["its compilation (first fit minus second)"] = max(times[0] - times[1], 0.0)
  rows["final losses"] = np.asarray(fit.losses[-1]).tolist()
  print(json.dumps(rows))


def main(argv):
  del argv
  if _CHILD.value:
    child(_CHILD.value, common.out_dir("scaling"))
    return
  counts = common.positive_ints(_DEVICES.value, "--devices must be distinct device counts >= 1, "
                                f"got {','.join(_DEVICES.value)}", distinct=True)
  common.usage(_QUERIES.value >= 1 and _K.value >= 1, "--queries and --k must be >= 1")
  out, arrays = common.prepare("scaling")
  common.check_k(_K.value, len(arrays["train_x"]))
  queries = min(_QUERIES.value, len(arrays["test_x"]))
  results = {}
  for n in counts:
    env = {} if _REAL.value else {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
    print(f"{n} device(s) ...", file=sys.stderr, flush=True)
    try:
      results[n] = common.run_child("benchmarks.scaling", [
          f"--child={n}", f"--out={out}", f"--queries={_QUERIES.value}", f"--k={_K.value}",
          f"--real_devices={_REAL.value}"] + common.data_flags(), env=env)
    except RuntimeError as e:  # too few real devices: the child's one line
      last = str(e).strip().splitlines()[-1]
      if last.startswith("--devices:"):
        raise app.UsageError(last) from None
      raise
  base = min(results)
  rows = []
  for task in [t for t in results[base] if t != "final losses"]:
    row = {"task": task}
    for n in results:
      row[f"{n} dev (s)"] = results[n][task]
    if len(results) == 1:
      row["same answer"] = "(one device count: nothing compared)"
    elif task.startswith("knn"):
      metric, mode = task.split()[1].rstrip(","), task.split()[-1]
      ref = np.load(os.path.join(out, f"idx_{base}_{metric}_{mode}.npy"))
      idx = lambda n: np.load(os.path.join(out, f"idx_{n}_{metric}_{mode}.npy"))
      row["same answer"] = all(np.array_equal(idx(n), ref) for n in results)
    elif task.startswith("its compilation"):
      row["same answer"] = ""
    else:
      losses_of = lambda n: results[n]["final losses"]
      row["same answer"] = all(np.allclose(losses_of(n), losses_of(base), rtol=1e-4)
                               for n in results)
    rows.append(row)
  common.report(out, "scaling", rows, list(rows[0]), queries=queries, k=_K.value,
                devices="real" if _REAL.value else "simulated CPU devices")


if __name__ == "__main__":
  common.run(main)
