r"""Linear classifiers (multiclass SVM or softmax) and a two-layer network on CIFAR-10,
on raw pixels or HOG + colour features, with a vectorised grid search.

  python -m experiments.linear --dataset=folder:/data/cifar10-jpeg --workdir=runs/softmax
  python -m experiments.linear --dataset=folder:/data/cifar10-jpeg --workdir=runs/mlp --model=mlp
  python -m experiments.linear --dataset=... --workdir=runs/svm_feat --loss=svm --features=hog_hsv

Every (learning rate x reg) pair of the grid is trained at once (vmap, one
compiled program) on the training split, the best on the val split is chosen,
and the test split is used once. Writes config.json, metrics.jsonl, TensorBoard
event files (tensorboard/), results.json, plots/ and model.npz into --workdir.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from experiments import common, hosts as hosts_lib, tensorboard
from experiments import config as cfg
from experiments.config import option, require
from jaxlin import checkpoint, data, features, linear, losses, metrics, mlp, train
from experiments.config import ConfigError
from jaxlin.errors import DataError, DivergenceError, InputError

MODELS = ("linear", "mlp")
FEATURES = ("pixels", "hog_hsv")
# Defaults that depend on (model, features), used where the config leaves them None.
# Chosen on the val split of CIFAR-10 (see WORKSPACE.md).
MODEL_DEFAULTS = {
    ("linear", "pixels"): dict(learning_rate=(3e-4, 1e-3, 3e-3), reg=(1e-2, 1e-1, 1.0),
                               num_epochs=5.0),
    ("linear", "hog_hsv"): dict(learning_rate=(1e-3, 3e-3, 1e-2), reg=(1e-4, 1e-3, 1e-2),
                                num_epochs=10.0),
    ("mlp", "pixels"): dict(learning_rate=(3e-3, 1e-2), reg=(1e-3, 3e-3), num_epochs=15.0),
    ("mlp", "hog_hsv"): dict(learning_rate=(1e-2, 3e-2), reg=(1e-4, 1e-3), num_epochs=20.0),
}
LBFGS_STEPS = 50  # --optimizer=lbfgs's default length: full-batch steps
# The defaults of flags that only some runs use: a run that cannot use one refuses it when
# given (even at its default value), and records None (lbfgs's schedule: "constant", which it
# takes, as earlier runs recorded it).
BATCH_SIZE, HIDDEN_SIZE, MARGIN, SCHEDULE = 200, 500, 1.0, "cosine"
# Library arguments -> the flags that set them (for error messages).
FLAGS_OF_ARGUMENTS = {"learning_rates": "learning_rate", "regs": "reg"}


@dataclasses.dataclass(frozen=True)
class Config(common.DataConfig):
  model: str = option("linear", "linear (xW + b) or mlp (two-layer network)")
  features: str = option("pixels", "pixels or hog_hsv (HOG + hue histogram)")
  hidden_size: int | None = option(None, "hidden units of --model=mlp (default 500)")
  loss: str = option("softmax", "svm (multiclass hinge, sum form) or softmax")
  margin: float | None = option(None, "margin of --loss=svm (default 1)")
  optimizer: str = option("momentum", "sgd, momentum, adam or lbfgs")
  learning_rate: tuple[float, ...] | None = option(
      None, "learning rates (a list makes a grid; not for lbfgs, whose line search sets the "
      "step; default per --model and --features)")
  reg: tuple[float, ...] | None = option(
      None, "L2 strengths (a list makes a grid; default per --model and --features)")
  batch_size: int | None = option(None, "minibatch size (default 200; lbfgs: full batch)")
  num_epochs: float | None = option(None, "epochs when --num_steps=0 (default per --model and "
                                    "--features; lbfgs: 50 steps, one per epoch)")
  num_steps: int = option(0, "steps (0 = from --num_epochs)")
  schedule: str | None = option(None, "learning-rate schedule: constant, cosine (the "
                                "default), step (lbfgs: constant only, its line search sets "
                                "the step)")
  log_every: int = option(0, "steps between logs (0 = each epoch; lbfgs: every 10 steps)")
  init_scale: float | None = option(None, "std of the initial weights (default: 1e-3 for "
                                    "linear, He initialisation for mlp)")


def _choice(value, name: str, choices) -> None:
  require(value in choices, name, f"unknown --{name} {value!r}; choose from {', '.join(choices)}")


def validate(config) -> Config:
  """Checks every value before any data is read; returns the normalised config."""
  c = common.validate_data(Config.make(config))
  c = c.replace(**{name: getattr(c, name).strip().lower()  # as --metric: --loss=SVM is svm
                   for name in ("model", "features", "loss", "optimizer", "schedule")
                   if isinstance(getattr(c, name), str)})
  _choice(c.model, "model", MODELS)
  _choice(c.features, "features", FEATURES)
  given = c.learning_rate
  require(c.optimizer != "lbfgs" or given is None or list(cfg.floats(given, "learning_rate"))
          == [1.0], "learning_rate",  # [1.0]: what earlier runs recorded for lbfgs
          "--learning_rate has no effect with --optimizer=lbfgs (its line search sets the "
          "step); leave the flag out")
  if c.num_steps > 0 and c.num_epochs not in (None, 0):  # steps won; the epochs were recorded
    raise ConfigError(f"--num_steps={c.num_steps} and --num_epochs={c.num_epochs:g} both set "
                      "how long to train; give one of them", argument="num_steps")
  if c.optimizer == "lbfgs" and not c.num_steps and c.num_epochs is None:
    # Its epoch is one full-batch step: the per-model epochs would be 5 steps (35.0 % test
    # on CIFAR-10's pixels against 41.1 % after 50, in 5.9 s against 15.7 s of training;
    # WORKSPACE.md, 2026-12-05).
    c = c.replace(num_steps=LBFGS_STEPS)
  c = c.replace(**{k: v for k, v in MODEL_DEFAULTS[(c.model, c.features)].items()
                   if getattr(c, k) is None})
  if c.num_steps > 0:  # steps decide: no epochs recorded
    c = c.replace(num_epochs=None)
  require(c.model == "mlp" or c.hidden_size is None, "hidden_size",
          f"--hidden_size is the network's; --model={c.model} has no hidden layer. Leave "
          "--hidden_size out, or use --model=mlp")
  if c.model == "mlp":
    c = c.replace(hidden_size=HIDDEN_SIZE if c.hidden_size is None else c.hidden_size)
    require(c.hidden_size >= 1, "hidden_size",
            f"--hidden_size must be >= 1, got {c.hidden_size}")
  _choice(c.loss, "loss", tuple(losses.LOSSES))
  _choice(c.optimizer, "optimizer", train.OPTIMIZERS)
  if c.schedule is not None:
    _choice(c.schedule, "schedule", train.SCHEDULES)
  require(c.optimizer != "lbfgs" or c.schedule in (None, "constant"), "schedule",
          "--schedule has no effect with --optimizer=lbfgs (its line search sets the step); "
          "leave the flag out")  # constant: what lbfgs does, as its config.json records
  require(c.optimizer != "lbfgs" or c.batch_size is None, "batch_size",
          "--batch_size has no effect with --optimizer=lbfgs (every step uses the whole "
          "training set); leave the flag out")
  if c.optimizer != "lbfgs":
    c = c.replace(batch_size=BATCH_SIZE if c.batch_size is None else c.batch_size,
                  schedule=SCHEDULE if c.schedule is None else c.schedule)
  once = lambda values: tuple(dict.fromkeys(values))  # a value given twice: one setting
  c = c.replace(reg=once(cfg.floats(c.reg, "reg")))
  if c.optimizer == "lbfgs":  # its line search sets the step: no rate, no schedule (recorded)
    c = c.replace(learning_rate=None, schedule="constant")  # constant: as earlier runs recorded
  else:
    c = c.replace(learning_rate=once(cfg.floats(c.learning_rate, "learning_rate")))
    require(bool(c.learning_rate) and all(np.isfinite(v) and v > 0 for v in c.learning_rate),
            "learning_rate", f"--learning_rate values must be finite numbers > 0, "
            f"got {list(c.learning_rate)}")
  require(bool(c.reg) and all(np.isfinite(v) and v >= 0 for v in c.reg), "reg",
          f"--reg values must be finite numbers >= 0, got {list(c.reg)}")
  for name in ("learning_rate", "reg"):  # the files and figures name settings by %g
    values = getattr(c, name) or ()
    for a, b in ((a, b) for i, a in enumerate(values) for b in values[i + 1:]):
      require(f"{a:g}" != f"{b:g}", name, f"--{name} values {a!r} and {b!r} print alike "
              f"({a:g}): the logs, TensorBoard folders and figures would give two settings "
              "one name. Give values that differ in their first 6 digits")
  require(c.batch_size is None or c.batch_size >= 1, "batch_size",
          f"--batch_size must be >= 1, got {c.batch_size}")
  cfg.finite(c.num_epochs, "num_epochs")
  epochs = 0.0 if c.num_epochs is None else c.num_epochs
  require(c.num_steps >= 0, "num_steps",
          f"--num_steps must be >= 0 (0: the steps of --num_epochs), got {c.num_steps}")
  require(epochs >= 0, "num_epochs", f"--num_epochs must be >= 0, got {c.num_epochs}")
  require(c.num_steps > 0 or epochs > 0, "num_epochs",
          "give a positive --num_steps or --num_epochs")
  require(c.num_val >= 1, "num_val",
          f"--num_val must be >= 1 (the grid is chosen on it), got {c.num_val}")
  require(not c.num_train or c.batch_size is None or c.batch_size <= c.num_train,
          "batch_size", f"--batch_size={c.batch_size} exceeds --num_train={c.num_train}")
  require(c.log_every >= 0, "log_every", f"--log_every must be >= 0, got {c.log_every}")
  require(c.loss == "svm" or c.margin is None, "margin",
          f"--margin is the SVM's; --loss={c.loss} has none. Leave --margin out, or use "
          "--loss=svm")
  if c.loss == "svm":
    c = c.replace(margin=MARGIN if c.margin is None else c.margin)
    cfg.finite(c.margin, "margin")
    require(c.margin >= 0, "margin", f"--margin must be >= 0, got {c.margin}")
  cfg.finite(c.init_scale, "init_scale")
  tiny = float(np.finfo(np.float32).tiny)  # smaller: subnormal, flushed to 0 on CPUs
  require(c.init_scale is None or c.init_scale >= tiny, "init_scale",
          f"--init_scale must be at least {tiny:.3g} (float32's smallest normal number: "
          f"smaller weights are flushed to 0 and a network never learns), got "
          f"{c.init_scale}; leave it out for the default (1e-3 for linear, He's for mlp)")
  require(c.shard != "database", "shard",
          "--shard=database splits kNN's database; training splits its batches: use auto, "
          "queries or none")
  if c.features != "pixels" and not c.dataset.startswith("folder:"):  # (folders: checked)
    common.check_cache_dir(c)  # features are cached for every dataset
  return c


def run(config, workdir: str, *, overwrite: bool = False) -> dict:
  """Load, train the grid, choose on val, evaluate once on test, write."""
  c = validate(config)
  with common.Run("linear", c, workdir, overwrite=overwrite) as r:
    plan = data.split_rows(c.dataset, data_dir=c.data_dir, num_train=c.num_train or None,
                           num_val=c.num_val, num_test=c.num_test or None, seed=c.seed)
    _check_sizes(c, r.hosts, len(plan["train"][1]))
    logging.info("loading %s", c.dataset)
    ds = r.hosts.load(c, plan, hosts_lib.SPLITS)
    load_s = r.timer()
    feat_t = common.Timer()
    x_tr, x_va, x_te, prep = _inputs(c, ds, r.hosts)
    features_s = feat_t()
    logging.info("train %d, val %d, test %d images of %s, %d classes; %d features (%s)",
                 ds.train.total, ds.val.total, ds.test.total, ds.image_shape, ds.num_classes,
                 x_tr.shape[1], c.features)

    pairs = train.grid(_rates(c), c.reg)  # every (rate, reg), as the library crosses them
    grid = list(zip(pairs["learning_rates"], pairs["regs"]))
    model = _model(c, x_tr.shape[1], ds.num_classes)
    train_t = common.Timer()
    fit = _train(c, r, ds, model, grid, x_tr, x_va)
    train_s = train_t()
    val_acc = np.where(fit.diverged_at >= 0, np.nan, fit.history[-1]["val_accuracy"])
    if np.all(np.isnan(val_acc)):  # every setting that trained scores val NaN
      raise DataError("no setting scored the validation images without NaN: check the "
                      "validation images, or try a smaller --init_scale or --learning_rate")
    best = int(np.nanargmax(val_acc))
    params = {k: jnp.asarray(np.asarray(v)) for k, v in train.member(fit.params, best).items()}

    predict_t = common.Timer()  # the test split, once: each process predicts its rows
    test_pred = r.hosts.whole(ds.test, np.asarray(jnp.argmax(model.apply(params, x_te), axis=1)))
    predict_s = predict_t()
    test_y = r.hosts.whole(ds.test, ds.test.labels)
    cm = np.asarray(metrics.confusion_matrix(test_y, test_pred, ds.num_classes))

    if r.writer:
      save_model(r.file("model.npz"), params={k: np.asarray(v) for k, v in params.items()},
                 class_names=ds.class_names, kind=c.model, loss=c.loss, features=c.features,
                 **prep)
    _figures(r, c, ds, grid, fit, best, params, val_acc, cm)
    results = _results(c, ds, x_tr.shape[1], grid, fit, best, val_acc, cm,
                       float(np.trace(cm) / cm.sum()))  # exact (float64), as the CV ones
    results.update(rows_read=r.hosts.rows_read(ds), timings_s={
        "load": load_s, "features": features_s, "train_grid": train_s,
        "train_per_setting": train_s / len(grid), "predict_test": predict_s})
    results = r.finish(results)
  diverged = int(np.count_nonzero(fit.diverged_at >= 1))
  if val_acc[best] < 1.0 / ds.num_classes:  # no better than guessing: say so
    logging.warning("the best setting scores %.4f on the validation images, below chance "
                    "(1/%d = %.4f): the grid's learning rates may be too large, or training "
                    "too short", val_acc[best], ds.num_classes, 1.0 / ds.num_classes)
  logging.info("chosen lr=%s reg=%g (val %.4f); test accuracy %.4f; grid of %d trained in "
               "%.1f s%s", _rate(c, grid, best), grid[best][1], val_acc[best],
               results["test_accuracy"], len(grid), train_s,
               f"; {diverged} of {len(grid)} settings diverged" if diverged else "")
  return results


def _check_sizes(c: Config, hosts, n_train: int) -> None:
  require(c.optimizer == "lbfgs" or c.batch_size <= n_train, "batch_size",
          f"--batch_size={c.batch_size} exceeds the {n_train} training images")
  require(not (hosts.spread and c.optimizer == "lbfgs"), "optimizer",
          "--optimizer=lbfgs uses the whole training set at every step; across processes use "
          "sgd, momentum or adam, or run on one host")


def _inputs(c: Config, ds: data.Dataset, hosts):
  """(train, val, test) model inputs and the preprocessing a checkpoint keeps.

  Statistics are sums over the training rows of every process (one host: the same numbers).
  """
  mean, scale = hosts.pixel_stats(ds.train)  # one scalar scale: keeps lr / reg scales sane
  if not float(scale) > 0:
    more = ("--num_train" if c.num_train else  # every image of the split is taken already
            "a smaller --num_val: the training images are the split's others")
    raise DataError(f"the {ds.train.total} training image(s) are all the same (their pixels' "
                    "standard deviation is 0): nothing to learn from; use more, different "
                    f"training images ({more})")
  prep = dict(mean_image=np.asarray(mean), scale=scale)
  if c.features == "pixels":
    return (*(data.preprocess(s.images, mean) / scale for s in (ds.train, ds.val, ds.test)),
            prep)
  h, w = ds.train.images.shape[1:3]
  if min(h, w) < 8:  # features.extract's cells of 8 x 8 pixels
    error = ConfigError(f"--features=hog_hsv describes cells of 8 x 8 pixels, but the images "
                        f"are {h} x {w}; use --features=pixels, or larger images",
                        argument="features")
    error.reason = (f"HOG + hue features describe cells of 8 x 8 pixels, but the images are "
                    f"{h} x {w}")  # without the flag: the study words its own advice
    raise error
  cache = os.path.expanduser(c.cache_dir) if c.cache_dir else None
  with common.progress("HOG + hue features", None, "img") as bar:
    raw = [features.cached_extract(s.images, cache_dir=cache, callback=common.tile_callback(bar))
           for s in (ds.train, ds.val, ds.test)]
  stats = hosts.feature_stats(raw[0], ds.train.total)
  (x_tr, x_va, x_te), (f_mean, f_std) = features.standardise(*raw, stats=stats)
  prep.update(feature_mean=np.asarray(f_mean), feature_std=np.asarray(f_std))
  return x_tr, x_va, x_te, prep


def _model(c: Config, d: int, n_cls: int) -> train.Model:
  if c.model == "linear":
    return train.Model(init=lambda k: linear.init_params(k, d, n_cls,
                                                         scale=c.init_scale or 1e-3),
                       apply=linear.scores)
  return train.Model(init=lambda k: mlp.init_params(k, d, c.hidden_size, n_cls,
                                                    scale=c.init_scale), apply=mlp.scores)


def _num_steps(c: Config, n_train: int) -> int:
  if c.num_steps:
    return c.num_steps
  per_epoch = 1 if c.optimizer == "lbfgs" else max(n_train // c.batch_size, 1)
  steps = c.num_epochs * per_epoch
  if steps > train.MAX_STEPS:  # 1e308 epochs overflowed int() (a traceback)
    raise ConfigError(f"--num_epochs={c.num_epochs:g} makes {steps:.3g} steps of {per_epoch} per "
                      f"epoch; at most {train.MAX_STEPS} steps (use fewer epochs)",
                      argument="num_epochs")
  return max(int(round(steps)), 1)


def loss_function(c: Config):
  """The data loss of --loss (with --margin for svm): scores, labels -> per-example losses."""
  if c.loss == "svm" and c.margin != MARGIN:
    return lambda scores, labels: losses.multiclass_svm(scores, labels, margin=c.margin)
  return losses.LOSSES[c.loss]


def _train(c: Config, r, ds: data.Dataset, model, grid, x_tr, x_va) -> train.FitResult:
  """Trains every grid member at once; logs each to metrics.jsonl and TensorBoard."""
  n_tr, steps = ds.train.total, _num_steps(c, ds.train.total)
  loss_fn = loss_function(c)
  line_search = c.optimizer == "lbfgs"  # its line search sets the step: no rate, no schedule
  trainer = train.Trainer(model, loss_fn, optimizer=c.optimizer,
                          schedule=None if line_search else c.schedule, mesh=r.hosts.mesh)
  # Compiled once: the logged rate is one program, not one per operation of the schedule.
  multiplier = jax.jit(train.make_schedule("constant" if line_search else c.schedule, steps))
  y_tr, y_va = jnp.asarray(ds.train.labels), jnp.asarray(ds.val.labels)
  if r.hosts.spread:  # rows of every process, as global arrays laid along the mesh
    x_tr, y_tr = (r.hosts.global_rows(ds.train, a) for a in (x_tr, y_tr))
    val_set = (r.hosts.global_rows(ds.val, x_va), r.hosts.global_rows(ds.val, y_va), ds.val.total)
  else:
    val_set = (x_va, y_va)
  sub = cfg.rng(c.seed, "train_sample").permutation(n_tr)[:1000]
  writer = common.MetricsWriter(r)
  board = tensorboard.ScalarWriter(r.file(tensorboard.FOLDER))
  what = f"training {len(grid)} setting{'s' if len(grid) > 1 else ''}"
  with common.progress(what, steps, "step") as bar:
    last_line = [-math.inf]  # where no bar is drawn (a log file), a line every 10 s at most

    def log(record):
      bar.update(record["step"] - bar.n)
      if bar.disable and time.monotonic() - last_line[0] >= 10.0:
        last_line[0] = time.monotonic()
        live = [float(v) for v, at in zip(record["val_accuracy"], record["diverged_at"])
                if at < 1 and not math.isnan(v)]
        logging.info("%s: step %d of %d (epoch %.2f)%s", what, record["step"], steps,
                     record["epoch"], f", best val accuracy {max(live):.4f}" if live else "")
      for g, (lr, reg) in enumerate(grid):
        at = int(record["diverged_at"][g])  # >= 1: no figures of it, as results.json
        values = {k: None if at >= 1 else float(record[k][g])
                  for k in ("loss", "train_accuracy", "val_accuracy")}
        rate = _recorded_rate(c, lr)
        if not line_search:
          values["scheduled_learning_rate"] = lr * float(multiplier(record["step"] - 1))
        writer.write(step=record["step"], epoch=round(record["epoch"], 4), learning_rate=rate,
                     reg=reg, **values, **({"diverged_at_step": at} if at >= 1 else {}))
        board.write(tensorboard.member_name(rate, reg), record["step"],  # null: NaN, a gap
                    {k: np.nan if v is None else v for k, v in values.items()})
    try:
      fit = trainer.fit(jax.random.key(c.seed), x_tr, y_tr,
                        learning_rates=None if line_search else [g[0] for g in grid],
                        regs=[g[1] for g in grid],
                        batch_size=None if line_search else c.batch_size, num_steps=steps,
                        log_every=c.log_every or None, num_examples=n_tr,
                        eval_sets={"train": _take_rows((x_tr, y_tr), sub), "val": val_set},
                        callback=log)
      jax.block_until_ready(fit.params)
    except BaseException as e:
      board.close(quiet=True)  # an error of its own (a full disk, again) would hide this one
      if isinstance(e, DivergenceError):
        raise _divergence_in_flags(e, line_search, grid) from e
      raise
    board.close()
  return fit


def _divergence_in_flags(e: DivergenceError, line_search: bool, grid=()) -> DivergenceError:
  """The library's divergence error with advice this command line can act on: lbfgs has
  no learning rate to lower, at the first step the starting weights may be to blame, and
  where a setting's learning rate x reg is 1 or more the penalty alone makes SGD's steps
  grow (its step multiplies the weights by 1 - 2 lr reg)."""
  overshoot = max((lr * reg for lr, reg in grid), default=0.0)
  if not line_search and overshoot >= 1 and e.advice:
    e = DivergenceError(e.what, advice=f"{e.advice}, or a smaller --reg (learning rate x reg "
                        f"reaches {overshoot:g}: at 1 or more the penalty alone makes SGD's "
                        "steps grow)", argument=e.argument, step=e.step,
                        library_hint=e.library_hint)
  if line_search:
    if e.step == 1:
      return DivergenceError(e.what, advice="try a smaller --init_scale (the loss at the "
                             "starting weights may not be finite)", argument="init_scale",
                             step=1)
    return DivergenceError(e.what, advice="try --optimizer=momentum (or sgd, adam) with its "
                           "--learning_rate", argument="optimizer", step=e.step)
  if e.step == 1:
    scale = "a smaller --init_scale (the starting weights may be to blame)"
    return DivergenceError(e.what, advice=f"{e.advice}, or {scale}" if e.advice else
                           f"try {scale}", argument=e.argument, step=1)
  return e


def _rates(c: Config) -> tuple[float, ...]:
  """The grid's learning rates: lbfgs has none (its line search sets the step), so its
  members train with the rate 1 of an optimizer without one."""
  return (1.0,) if c.optimizer == "lbfgs" else c.learning_rate


def _recorded_rate(c: Config, lr: float) -> float | None:
  """The learning rate the written files record: None (null) for lbfgs."""
  return None if c.optimizer == "lbfgs" else lr


def _rate(c: Config, grid, g: int) -> str:
  """Setting g's learning rate as the log and figures name it."""
  return "line search" if c.optimizer == "lbfgs" else f"{grid[g][0]:g}"


@jax.jit
def _take_rows(arrays, rows):  # one program for the gather, not one per operation
  return tuple(a[rows] for a in arrays)


def save_model(path: str, **fields) -> None:
  """``checkpoint.save`` of the run's model, where the disk's error (full, a size limit)
  comes out as itself, which ``common.run_main`` says in one line: checkpoint.save's
  InputError names its path (the run's staging folder, which no flag names) and a
  library caller's fix."""
  try:
    checkpoint.save(path, **fields)
  except InputError as e:
    if isinstance(e.__cause__, OSError):
      raise e.__cause__ from None
    raise


def _figures(r, c: Config, ds, grid, fit, best, params, val_acc, cm) -> None:
  if not r.writer:
    return
  setting = f"lr={_rate(c, grid, best)}, reg={grid[best][1]:g}"
  if c.features == "pixels" and c.model == "linear":
    r.plot("weights.png", "templates", params["W"], ds.image_shape, ds.class_names,
           title=f"{c.loss} templates ({setting})")
  elif c.features == "pixels":  # first-layer weights of the network, as images
    w1 = np.asarray(params["W1"])
    show = np.argsort(-np.linalg.norm(w1, axis=0))[:30]
    r.plot("weights.png", "templates", w1[:, show], ds.image_shape, [f"unit {u}" for u in show],
           title=f"first-layer weights, {len(show)} largest of {w1.shape[1]} units ({setting})"
           if len(show) < w1.shape[1] else f"first-layer weights, all {len(show)} units "
           f"({setting})")
  steps_axis = np.arange(1, fit.losses.shape[0] + 1)
  diverged = lambda g: int(fit.diverged_at[g]) >= 1
  top = lambda g: np.max(fit.losses[:, g], initial=0.0, where=np.isfinite(fit.losses[:, g]))
  # A finite run that climbs 1,000 times above the chosen one's highest loss would squash it.
  off_scale = lambda g: not diverged(g) and top(g) > 1e3 * max(top(best), 1e-12)
  label = lambda g: (f"lr={_rate(c, grid, g)} reg={grid[g][1]:g}"
                     + (" (chosen)" if g == best else "")
                     + (f" (diverged at step {int(fit.diverged_at[g])})" if diverged(g) else "")
                     + (f" (off the scale: up to {top(g):.3g})" if off_scale(g) else ""))
  shown = range(len(grid)) if len(grid) <= 9 else [best]  # more would not read
  smooth = max(1, len(steps_axis) // 50)
  on = "" if c.features == "pixels" else f" on {c.features} features"
  r.plot("loss.png", "curves", {  # a diverged setting: its finite steps, before it diverged
      label(g): (steps_axis[:fit.diverged_at[g] - 1], fit.losses[:fit.diverged_at[g] - 1, g])
      if diverged(g) else (steps_axis, fit.losses[:, g]) for g in shown},
         ylabel="training objective", logy=True, smooth=smooth, highlight=label(best),
         outliers=[label(g) for g in shown if diverged(g) or off_scale(g)],
         title=f"{c.model} {c.loss} loss{on}, {c.optimizer}"
         + (f" (moving average over {smooth} steps)" if smooth > 1 else "")
         + ("" if len(shown) == len(grid) else f"\nthe chosen one of {len(grid)} settings (all: "
            "metrics.jsonl, TensorBoard)"))
  rates = ["line search"] if c.optimizer == "lbfgs" else list(c.learning_rate)
  r.plot("grid.png", "grid", val_acc.reshape(len(rates), len(c.reg)),
         rates, list(c.reg), a_label="learning rate", b_label="reg",
         title=f"validation accuracy over the grid\n{c.model} {c.loss}{on}",
         value_label="validation accuracy", nan_text="diverged",
         chosen=divmod(best, len(c.reg)))
  r.plot("confusion.png", "confusion", cm, ds.class_names,
         title=f"{c.model} {c.loss}{on}, test")
  epochs_axis = [h["epoch"] for h in fit.history]
  r.plot("accuracy.png", "curves", {
      f"train ({min(1000, ds.train.total):,} sampled)": (
          epochs_axis, [h["train_accuracy"][best] for h in fit.history]),
      "val": (epochs_axis, [h["val_accuracy"][best] for h in fit.history])},
      xlabel="epoch", ylabel="accuracy", title=f"chosen setting ({setting})")


def _results(c: Config, ds, d, grid, fit, best, val_acc, cm, test_acc) -> dict:
  return {
      "dataset": c.dataset, "model": c.model, "features": c.features,
      "hidden_size": c.hidden_size if c.model == "mlp" else None,
      "input_dim": d, "loss": c.loss, "optimizer": c.optimizer,
      "sizes": {"train": ds.train.total, "val": ds.val.total, "test": ds.test.total},
      "steps": fit.steps, "epochs": fit.history[-1]["epoch"],
      "grid": [{"learning_rate": _recorded_rate(c, lr), "reg": reg,
                "val_accuracy": None if np.isnan(val_acc[g]) else float(val_acc[g]),
                "final_loss": None if fit.diverged_at[g] >= 1  # its last finite loss is
                else float(fit.history[-1]["loss"][g]),            # not where it ended
                "diverged_at_step": int(fit.diverged_at[g]) if fit.diverged_at[g] >= 0 else None}
               for g, (lr, reg) in enumerate(grid)],
      "chosen": {"learning_rate": _recorded_rate(c, grid[best][0]), "reg": grid[best][1],
                 "val_accuracy": float(val_acc[best])},
      "test_accuracy": test_acc,
      "per_class_test_accuracy": common.per_class_accuracy(cm, ds.class_names),
      "confusion_matrix": cm.tolist(),
      "model_file": "model.npz",
      "compiles": fit.compile_count,
  }


if __name__ == "__main__":
  common.main("linear", Config, validate, run, flags=FLAGS_OF_ARGUMENTS)
