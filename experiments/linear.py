r"""Linear classifiers (multiclass SVM or softmax) and a two-layer network on CIFAR-10,
on raw pixels or HOG + colour features, with a vectorised grid search.

  python -m experiments.linear --dataset=folder:/data/cifar10-jpeg --workdir=runs/softmax --loss=softmax
  python -m experiments.linear --dataset=folder:/data/cifar10-jpeg --workdir=runs/mlp --model=mlp
  python -m experiments.linear --dataset=... --workdir=runs/svm_feat --loss=svm --features=hog_hsv

Every (learning rate x reg) pair of the grid is trained at once (vmap, one
compiled program) on the training split, the best on the val split is chosen,
and the test split is used once. Writes config.json, metrics.jsonl,
results.json, plots/ and model.npz into --workdir.
"""
from __future__ import annotations

import itertools
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from jaxlin import checkpoint, data, features, linear, losses, metrics, mlp, plots, sharding, train
from jaxlin.errors import ConfigError, DivergenceError

DEFAULTS = dict(
    dataset="cifar10", data_dir=None, seed=0, model="linear", features="pixels", hidden_size=500,
    loss="softmax", optimizer="momentum", learning_rate=None, reg=None, batch_size=200,
    num_epochs=None, num_steps=0, schedule="cosine", num_train=0, num_val=1000, num_test=0,
    log_every=0, init_scale=None, margin=1.0, shard="auto", cache_dir=os.path.join("~", ".cache", "jaxlin"))
MODELS = ("linear", "mlp")
FEATURES = ("pixels", "hog_hsv")
# Defaults that depend on (model, features), used where the config leaves them None.
# Chosen on the val split of CIFAR-10 (see WORKSPACE.md).
MODEL_DEFAULTS = {
    ("linear", "pixels"): dict(learning_rate=[3e-4, 1e-3, 3e-3], reg=[1e-2, 1e-1, 1.0], num_epochs=5.0),
    ("linear", "hog_hsv"): dict(learning_rate=[1e-3, 3e-3, 1e-2], reg=[1e-4, 1e-3, 1e-2], num_epochs=10.0),
    ("mlp", "pixels"): dict(learning_rate=[3e-3, 1e-2], reg=[1e-3, 3e-3], num_epochs=15.0),
    ("mlp", "hog_hsv"): dict(learning_rate=[1e-2, 3e-2], reg=[1e-4, 1e-3], num_epochs=20.0),
}

_MODEL = flags.DEFINE_string("model", DEFAULTS["model"], "linear (xW + b) or mlp (two-layer network)")
_FEATURES = flags.DEFINE_string("features", DEFAULTS["features"], "pixels or hog_hsv (HOG + hue histogram)")
_HIDDEN = flags.DEFINE_integer("hidden_size", DEFAULTS["hidden_size"], "hidden units of --model=mlp")
_CACHE = flags.DEFINE_string("cache_dir", DEFAULTS["cache_dir"], "feature cache ('' = none)")
_LOSS = flags.DEFINE_string("loss", DEFAULTS["loss"], "svm (multiclass hinge, sum form) or softmax")
_OPTIMIZER = flags.DEFINE_string("optimizer", DEFAULTS["optimizer"], "sgd, momentum, adam or lbfgs")
_LR = flags.DEFINE_list("learning_rate", None,
                        "learning rates (a list makes a grid; ignored by lbfgs; default per --model/--features)")
_REG = flags.DEFINE_list("reg", None, "L2 strengths (a list makes a grid; default per --model/--features)")
_BATCH = flags.DEFINE_integer("batch_size", DEFAULTS["batch_size"], "minibatch size (lbfgs: full batch)")
_EPOCHS = flags.DEFINE_float("num_epochs", None, "epochs when --num_steps=0 (default per --model/--features)")
_STEPS = flags.DEFINE_integer("num_steps", DEFAULTS["num_steps"], "steps (0 = from --num_epochs)")
_SCHEDULE = flags.DEFINE_string("schedule", DEFAULTS["schedule"], "learning-rate schedule: constant, cosine, step")
_LOG_EVERY = flags.DEFINE_integer("log_every", DEFAULTS["log_every"], "steps between logs (0 = each epoch)")


def validate(config: dict) -> dict:
  c = common.merge_config(DEFAULTS, config)
  if c["model"] not in MODELS:
    raise ConfigError(f"unknown --model {c['model']!r}; choose from {', '.join(MODELS)}")
  if c["features"] not in FEATURES:
    raise ConfigError(f"unknown --features {c['features']!r}; choose from {', '.join(FEATURES)}")
  for name, value in MODEL_DEFAULTS[(c["model"], c["features"])].items():
    if c[name] is None:
      c[name] = value
  if c["model"] == "mlp" and c["hidden_size"] < 1:
    raise ConfigError(f"--hidden_size must be >= 1, got {c['hidden_size']}")
  if c["loss"] not in losses.LOSSES:
    raise ConfigError(f"unknown --loss {c['loss']!r}; choose from {', '.join(losses.LOSSES)}")
  if c["optimizer"] not in train.OPTIMIZERS:
    raise ConfigError(f"unknown --optimizer {c['optimizer']!r}; choose from {', '.join(train.OPTIMIZERS)}")
  if c["schedule"] not in train.SCHEDULES:
    raise ConfigError(f"unknown --schedule {c['schedule']!r}; choose from {', '.join(train.SCHEDULES)}")
  c["learning_rate"] = common.parse_floats(c["learning_rate"], "learning_rate")
  c["reg"] = common.parse_floats(c["reg"], "reg")
  if c["optimizer"] == "lbfgs":
    c["learning_rate"] = [1.0]  # the line search sets the step
  if not c["learning_rate"] or not all(np.isfinite(v) and v > 0 for v in c["learning_rate"]):
    raise ConfigError(f"--learning_rate values must be positive numbers, got {c['learning_rate']}")
  if not c["reg"] or not all(np.isfinite(v) and v >= 0 for v in c["reg"]):
    raise ConfigError(f"--reg values must be numbers >= 0, got {c['reg']}")
  if c["batch_size"] < 1:
    raise ConfigError(f"--batch_size must be >= 1, got {c['batch_size']}")
  if c["num_steps"] < 0 or c["num_epochs"] < 0 or (c["num_steps"] == 0 and c["num_epochs"] <= 0):
    raise ConfigError("give a positive --num_steps or --num_epochs")
  for name in ("num_train", "num_test"):
    if c[name] < 0:
      raise ConfigError(f"--{name} must be >= 0 (0 = all), got {c[name]}")
  if c["num_val"] < 1:
    raise ConfigError(f"--num_val must be >= 1 (the grid is chosen on it), got {c['num_val']}")
  if c["num_train"] and c["optimizer"] != "lbfgs" and c["batch_size"] > c["num_train"]:
    raise ConfigError(f"--batch_size={c['batch_size']} exceeds --num_train={c['num_train']}")
  common.check_shard(c["shard"])
  if c["log_every"] < 0:
    raise ConfigError(f"--log_every must be >= 0, got {c['log_every']}")
  return c


def _pixel_stats(local_images, n):
  """(mean image, std of the centred pixels) over the n training images of every process."""
  mean = data.mean_from_sums(sharding.process_sum(data.pixel_sums(local_images)), n)
  centred = local_images.astype(np.float32) - mean
  size = n * centred[0].size
  shift = sharding.process_sum(jnp.sum(centred)) / np.float32(size)
  var = sharding.process_sum(jnp.sum((centred - shift) ** 2)) / np.float32(size)
  return mean, float(np.sqrt(var))


def _feature_stats(local_NxF, n):
  """(mean, std) of each feature over the n training rows of every process."""
  mean = sharding.process_sum(jnp.sum(local_NxF, axis=0)) / np.float32(n)
  var = sharding.process_sum(jnp.sum((local_NxF - mean) ** 2, axis=0)) / np.float32(n)
  return jnp.asarray(mean), jnp.asarray(np.sqrt(var))


def _num_steps(c, n_train):
  if c["num_steps"]:
    return c["num_steps"]
  per_epoch = 1 if c["optimizer"] == "lbfgs" else max(n_train // c["batch_size"], 1)
  return max(int(round(c["num_epochs"] * per_epoch)), 1)


def run(config: dict, workdir: str) -> dict:
  c = validate(config)
  workdir = common.prepare_workdir(workdir, stale=("results.json", "model.npz"))
  data.check_name(c["dataset"])
  common.write_json(os.path.join(workdir, "config.json"), c)
  timer = common.Timer()
  key = jax.random.key(c["seed"])

  mesh, _ = common.mesh_for(c["shard"])  # data parallel over every device (of every host)
  # Across hosts each process reads only its own rows of every split (see jaxlin.sharding).
  spread = mesh is not None and jax.process_count() > 1
  rows = None
  if spread:
    plan = data.split_rows(c["dataset"], data_dir=c["data_dir"], num_train=c["num_train"] or None,
                           num_val=c["num_val"], num_test=c["num_test"] or None, seed=c["seed"])
    rows = {s: sharding.process_rows(len(idx), mesh) for s, (_, idx) in plan.items()}
  ds = data.load(c["dataset"], data_dir=c["data_dir"], num_train=c["num_train"] or None,
                 num_val=c["num_val"], num_test=c["num_test"] or None, seed=c["seed"], rows=rows)
  n_tr = ds.train.total
  if c["optimizer"] != "lbfgs" and c["batch_size"] > n_tr:
    raise ConfigError(f"--batch_size={c['batch_size']} exceeds the {n_tr} training images")
  if spread and c["optimizer"] == "lbfgs":
    raise ConfigError("--optimizer=lbfgs uses the whole training set at every step; across "
                      "processes use sgd, momentum or adam, or run on one host")
  load_s = timer()
  if spread:  # statistics as sums over the rows of every process
    mean, scale = _pixel_stats(ds.train.images, n_tr)
  else:
    mean = data.mean_image(ds.train.images)
    scale = float(jnp.std(ds.train.images.astype(np.float32) - mean))  # one scalar: keeps lr/reg scales sane
  feat_t, feature_stats = common.Timer(), {}
  if c["features"] == "pixels":
    prep = lambda imgs: data.preprocess(imgs, mean) / scale
    x_tr, x_va, x_te = prep(ds.train.images), prep(ds.val.images), prep(ds.test.images)
  else:
    cache = os.path.expanduser(c["cache_dir"]) if c["cache_dir"] else None
    with common.progress("HOG + hue features", None, "img") as bar:
      raw = [features.cached_extract(s.images, cache_dir=cache, callback=common.tile_callback(bar))
             for s in (ds.train, ds.val, ds.test)]
    stats = _feature_stats(raw[0], n_tr) if spread else None
    (x_tr, x_va, x_te), (f_mean, f_std) = features.standardise(*raw, stats=stats)
    feature_stats = dict(feature_mean=np.asarray(f_mean), feature_std=np.asarray(f_std))
  features_s = feat_t()
  y_tr, y_va, y_te = (jnp.asarray(s.labels) for s in (ds.train, ds.val, ds.test))
  d, n_cls = x_tr.shape[1], ds.num_classes
  logging.info("train %d, val %d, test %d; %d features, %d classes", n_tr, ds.val.total,
               ds.test.total, d, n_cls)
  if spread:
    common.log_rows(rows)
    glob = lambda s, a: sharding.rows_to_global(a, getattr(ds, s).total, mesh)
    train_x, train_y = glob("train", x_tr), glob("train", y_tr)
    val_set = (glob("val", x_va), glob("val", y_va), ds.val.total)
  else:
    train_x, train_y, val_set = x_tr, y_tr, (x_va, y_va)

  # ---- the grid, trained at once ----
  grid = list(itertools.product(c["learning_rate"], c["reg"]))
  steps = _num_steps(c, n_tr)
  loss_fn = losses.LOSSES[c["loss"]]
  if c["loss"] == "svm" and c["margin"] != 1.0:
    loss_fn = lambda s, y: losses.multiclass_svm(s, y, margin=c["margin"])
  if c["model"] == "linear":
    model = train.Model(init=lambda k: linear.init_params(k, d, n_cls, scale=c["init_scale"] or 1e-3),
                        apply=linear.scores)
  else:
    model = train.Model(init=lambda k: mlp.init_params(k, d, c["hidden_size"], n_cls, scale=c["init_scale"]),
                        apply=mlp.scores)
  # (lbfgs's line search sets each step: no learning rate, so no schedule)
  trainer = train.Trainer(model, loss_fn, optimizer=c["optimizer"],
                          schedule=None if c["optimizer"] == "lbfgs" else c["schedule"], mesh=mesh)
  sub = np.random.default_rng([c["seed"], 5]).permutation(n_tr)[:1000]
  writer = common.MetricsWriter(workdir)
  with common.progress(f"training {len(grid)} settings", steps, "step") as bar:
    def log(record):
      bar.update(record["step"] - bar.n)
      for g, (lr, reg) in enumerate(grid):
        writer.write(step=record["step"], epoch=round(record["epoch"], 4), learning_rate=lr, reg=reg,
                     loss=float(record["loss"][g]), train_accuracy=float(record["train_accuracy"][g]),
                     val_accuracy=float(record["val_accuracy"][g]))
    fit_t = common.Timer()
    try:
      fit = trainer.fit(key, train_x, train_y,
                        learning_rates=[g[0] for g in grid] if trainer.has_learning_rate else None,
                        regs=[g[1] for g in grid], batch_size=c["batch_size"], num_steps=steps,
                        log_every=c["log_every"] or None, num_examples=n_tr,
                        eval_sets={"train": (train_x[sub], train_y[sub]), "val": val_set},
                        callback=log)
    except DivergenceError as e:  # the library names the argument; here it is a flag
      raise DivergenceError(str(e).replace("learning_rates", "--learning_rate"),
                            argument=e.argument) from None
    jax.block_until_ready(fit.params)
    train_s = fit_t()
  val_acc = np.where(fit.diverged_at >= 0, np.nan, fit.history[-1]["val_accuracy"])
  best = int(np.nanargmax(val_acc))
  params = {k: jnp.asarray(np.asarray(v)) for k, v in train.member(fit.params, best).items()}

  # ---- the test split, once ----
  pred_t = common.Timer()
  test_pred = np.asarray(jnp.argmax(model.apply(params, x_te), axis=1))
  # Every process predicts its own test rows; then all of them hold every prediction.
  test_labels = ds.test.labels
  if spread:
    test_pred = sharding.gather_rows(test_pred, ds.test.start, ds.test.total)
    test_labels = sharding.gather_rows(test_labels, ds.test.start, ds.test.total)
  predict_s = pred_t()
  test_acc = float(metrics.accuracy(test_labels, test_pred))
  cm = np.asarray(metrics.confusion_matrix(test_labels, test_pred, n_cls))

  # ---- model, figures, then results (last: its presence means the run finished) ----
  model_path = os.path.join(workdir, "model.npz")
  if common.is_writer():  # every process computed the same; process 0 writes
    checkpoint.save(model_path, params={k: np.asarray(v) for k, v in params.items()},
                    mean_image=np.asarray(mean), scale=scale,
                    class_names=ds.class_names, kind=c["model"], loss=c["loss"],
                    features=c["features"], **feature_stats)
    p = lambda name: os.path.join(workdir, "plots", name)
    setting = f"lr={grid[best][0]:g}, reg={grid[best][1]:g}"
    if c["features"] == "pixels" and c["model"] == "linear":
      plots.save(plots.templates(params["W"], ds.image_shape, ds.class_names,
                                 title=f"{c['loss']} templates ({setting})"), p("weights.png"))
    elif c["features"] == "pixels":  # first-layer weights of the network, as images
      w1 = np.asarray(params["W1"])
      show = np.argsort(-np.linalg.norm(w1, axis=0))[:30]
      plots.save(plots.templates(
          w1[:, show], ds.image_shape, [f"unit {u}" for u in show],
          title=f"first-layer weights, 30 largest of {w1.shape[1]} units ({setting})"),
          p("weights.png"))
    steps_axis = np.arange(1, fit.losses.shape[0] + 1)
    label = lambda g: f"lr={grid[g][0]:g} reg={grid[g][1]:g}" + (" (chosen)" if g == best else "")
    shown = range(len(grid)) if len(grid) <= 9 else [best]
    plots.save(plots.curves(
        {label(g): (steps_axis, fit.losses[:, g]) for g in shown},
        ylabel="training objective", logy=True, smooth=max(1, len(steps_axis) // 50),
        highlight=label(best), title=f"{c['model']} {c['loss']} loss, {c['optimizer']} "
        f"(moving average over {max(1, len(steps_axis) // 50)} steps)"), p("loss.png"))
    plots.save(plots.grid(val_acc.reshape(len(c["learning_rate"]), len(c["reg"])),
                          c["learning_rate"], c["reg"], a_label="learning rate", b_label="reg",
                          title="val accuracy over the grid"), p("grid.png"))
    plots.save(plots.confusion(cm, ds.class_names, title=f"{c['model']} {c['loss']}, test"),
               p("confusion.png"))
    epochs_axis = [h["epoch"] for h in fit.history]
    plots.save(plots.curves({
        "train (1,000 sampled)": (epochs_axis, [h["train_accuracy"][best] for h in fit.history]),
        "val": (epochs_axis, [h["val_accuracy"][best] for h in fit.history])},
        xlabel="epoch", ylabel="accuracy", title=f"chosen setting ({setting})"), p("accuracy.png"))
  results = {
      "dataset": c["dataset"], "model": c["model"], "features": c["features"],
      "hidden_size": c["hidden_size"] if c["model"] == "mlp" else None,
      "input_dim": d, "loss": c["loss"], "optimizer": c["optimizer"],
      "sizes": {"train": n_tr, "val": ds.val.total, "test": ds.test.total},
      "steps": fit.steps, "epochs": fit.history[-1]["epoch"],
      "grid": [{"learning_rate": lr, "reg": reg, "val_accuracy": None if np.isnan(val_acc[g]) else float(val_acc[g]),
                "final_loss": float(fit.history[-1]["loss"][g]),
                "diverged_at_step": int(fit.diverged_at[g]) if fit.diverged_at[g] >= 0 else None}
               for g, (lr, reg) in enumerate(grid)],
      "chosen": {"learning_rate": grid[best][0], "reg": grid[best][1],
                 "val_accuracy": float(val_acc[best])},
      "test_accuracy": test_acc,
      "per_class_test_accuracy": dict(zip(ds.class_names, np.asarray(metrics.per_class_accuracy(cm)).tolist())),
      "confusion_matrix": cm.tolist(),
      "model_file": os.path.basename(model_path),
      "timings_s": {"load": load_s, "features": features_s, "train_grid": train_s, "train_per_setting": train_s / len(grid),
                    "predict_test": predict_s, "total": timer()},
      "compiles": fit.compile_count,
      "devices": 1 if mesh is None else int(mesh.devices.size),
      "processes": jax.process_count(),
      "date": time.strftime("%Y-%m-%d %H:%M:%S"),
  }
  common.write_json(os.path.join(workdir, "results.json"), results)
  logging.info("chosen lr=%g reg=%g (val %.4f); test accuracy %.4f; grid of %d trained in %.1f s",
               grid[best][0], grid[best][1], val_acc[best], test_acc, len(grid), train_s)
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = dict(common.shared_flag_config(DEFAULTS), model=_MODEL.value, features=_FEATURES.value,
                hidden_size=_HIDDEN.value, cache_dir=_CACHE.value, loss=_LOSS.value,
                optimizer=_OPTIMIZER.value, learning_rate=_LR.value, reg=_REG.value,
                batch_size=_BATCH.value, num_epochs=_EPOCHS.value, num_steps=_STEPS.value,
                schedule=_SCHEDULE.value, log_every=_LOG_EVERY.value)
  common.run_main(run, config, common.WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
