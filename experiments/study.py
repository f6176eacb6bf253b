r"""The lecture's whole study on one dataset, side by side, with a report.

  python -m experiments.study --dataset=folder:/data/cifar10-jpeg --workdir=runs/study

Stages (each in its own subfolder of --workdir, each chosen on validation
data and evaluated once on test):

  knn           kNN, L1 and L2, k by 5-fold cross-validation on a training subset,
                then tested against all training images
  svm           linear multiclass SVM on pixels, grid on the val split
  softmax       linear softmax on pixels, grid on the val split
  svm_features  linear SVM on HOG + hue-histogram features
  mlp           two-layer network on pixels
  mlp_features  two-layer network on HOG + hue-histogram features

Writes report.md (a table and the key figures) and results.json. A stage that
fails is reported in the table with its error; the others still run.
"""
from __future__ import annotations

import dataclasses
import os
import traceback

from absl import logging

from experiments import common
from experiments import config as cfg
from experiments import knn as knn_exp
from experiments import linear as linear_exp
from experiments.config import option, require
from jaxlin import data, files
from experiments.config import ConfigError
from jaxlin.errors import DataError, DivergenceError, InputError, JaxlinError

STAGES = ("knn", "svm", "softmax", "svm_features", "mlp", "mlp_features")
KNN_FOLDS = 5  # the kNN stage's cross-validation folds
# A stage's own flags -> the study's flags that set them (for error messages).
STAGE_FLAGS = {
    "knn": {"cv_num_train": "knn_num_train"},
    "mlp": {"hidden_size": "mlp_hidden_size", "num_epochs": "mlp_epochs"},
    "mlp_features": {"hidden_size": "mlp_hidden_size", "num_epochs": "mlp_epochs"},
}


@dataclasses.dataclass(frozen=True)
class Config(common.DataConfig):
  stages: tuple[str, ...] = option(STAGES, f"stages to run, from {', '.join(STAGES)}")
  knn_num_train: int = option(5000, "training images kNN's cross-validation chooses k and "
                              "the distance on (0 = all; fewer when there are fewer); the "
                              "choice is then tested against all training images")
  mlp_hidden_size: int = option(500, "hidden units of both networks")
  mlp_epochs: float | None = option(None, "epochs of both networks (default: 10 on pixels, "
                                    "20 on HOG + hue)")


def stage_configs(c: Config, available_train: int | None = None) -> dict:
  """The configs each stage's experiment runs with.

  kNN uses at most ``available_train`` training images (the images there are, when known)
  and compares the lecture's k values that fit the training images of a fold.
  """
  shared = dict(dataset=c.dataset, data_dir=c.data_dir, seed=c.seed, num_val=c.num_val,
                num_test=c.num_test, shard=c.shard, cache_dir=c.cache_dir)
  # Training splits its batches over the devices; --shard=database is kNN's
  lin = dict(shared, num_train=c.num_train,
             shard="queries" if c.shard == "database" else c.shard)
  feat = dict(lin, features="hog_hsv")
  n_knn = c.knn_num_train or c.num_train or available_train
  for limit in (c.num_train, available_train):
    if n_knn and limit:
      n_knn = min(n_knn, limit)
  ks = knn_exp.Config.k
  if n_knn:
    ks = [k for k in ks if k <= n_knn - -(-n_knn // KNN_FOLDS)] or [1]
  mlp = dict(model="mlp", hidden_size=c.mlp_hidden_size)
  return {
      "knn": (knn_exp, dict(shared, num_train=c.num_train,
                            cv_num_train=n_knn if c.knn_num_train else 0,
                            metric=["l1", "l2"], cv_folds=KNN_FOLDS, k=ks)),
      "svm": (linear_exp, dict(lin, loss="svm")),
      "softmax": (linear_exp, dict(lin, loss="softmax")),
      "svm_features": (linear_exp, dict(feat, loss="svm")),
      "mlp": (linear_exp, dict(lin, **mlp, num_epochs=c.mlp_epochs or 10.0,
                               learning_rate=[1e-2], reg=[1e-3, 3e-3])),
      "mlp_features": (linear_exp, dict(feat, **mlp, num_epochs=c.mlp_epochs)),
  }


class StudyFailed(JaxlinError):
  """Every stage of a study failed (each is logged with its reason): exit code 1."""
  exit_code = 1


def validate(config) -> Config:
  """The study's own checks, then every stage's, in the study's flags."""
  c = common.validate_data(Config.make(config))
  unknown = [s for s in c.stages if s not in STAGES]
  require(bool(c.stages), "stages", f"--stages is empty; choose from {', '.join(STAGES)}")
  require(not unknown, "stages",
          f"unknown --stages {', '.join(unknown)}; choose from {', '.join(STAGES)}")
  twice = sorted({s for s in c.stages if c.stages.count(s) > 1})
  require(not twice, "stages", f"--stages names {', '.join(twice)} more than once")
  require(c.knn_num_train == 0 or c.knn_num_train >= KNN_FOLDS, "knn_num_train",
          f"--knn_num_train must be 0 (all) or at least {KNN_FOLDS} (kNN's {KNN_FOLDS} folds), "
          f"got {c.knn_num_train}")
  require("knn" not in c.stages or c.num_train == 0 or c.num_train >= KNN_FOLDS, "num_train",
          f"--num_train must be 0 (all) or at least {KNN_FOLDS} (kNN's {KNN_FOLDS} folds), got "
          f"{c.num_train}")
  require(c.mlp_hidden_size >= 1, "mlp_hidden_size",
          f"--mlp_hidden_size must be >= 1, got {c.mlp_hidden_size}")
  cfg.finite(c.mlp_epochs, "mlp_epochs")
  require(c.mlp_epochs is None or c.mlp_epochs > 0, "mlp_epochs",
          f"--mlp_epochs must be > 0, got {c.mlp_epochs}")
  _check_minibatch(c)
  configs = stage_configs(c)
  for s in c.stages:  # every stage's own checks, before any heavy work
    module, stage_config = configs[s]
    try:
      module.validate(stage_config)
    except JaxlinError as e:
      raise common.rename_flags(e, STAGE_FLAGS.get(s, {})) from None
  return c


MINIBATCH = linear_exp.BATCH_SIZE  # the linear stages' minibatch size


def _check_minibatch(c: Config, available_train: int | None = None) -> None:
  """The linear stages train on minibatches of the linear experiment's default size: a
  ConfigError naming --num_train when it asks for fewer training images than that, or
  naming the dataset when it has fewer (``available_train``: its training split less the
  val images)."""
  batch, num_train = MINIBATCH, c.num_train
  linear = [s for s in c.stages if s != "knn"]
  require(not linear or not num_train or num_train >= batch, "num_train",
          f"the study's linear stages ({', '.join(linear)}) train on minibatches of {batch} "
          f"images, but --num_train={num_train}; use --num_train of at least {batch} (0 = "
          f"all), or --stages=knn")
  if available_train is None:
    return
  require(available_train >= 1, "num_val",
          f"--num_val={c.num_val} leaves no training images of the "
          f"{available_train + c.num_val} in {c.dataset}; use a smaller --num_val")
  require("knn" not in c.stages or available_train >= KNN_FOLDS, "num_val",
          f"the kNN stage cross-validates over {KNN_FOLDS} folds, but {c.dataset} has "
          f"{available_train} training image(s) besides the --num_val={c.num_val} val images; "
          "use a smaller --num_val or a larger dataset")
  require(not linear or min(num_train or available_train, available_train) >= batch,
          "dataset", f"the study's linear stages ({', '.join(linear)}) train on minibatches "
          f"of {batch} images, but {c.dataset} has {available_train} training images besides "
          f"the --num_val={c.num_val} val images; use a larger dataset, a smaller --num_val, "
          "or --stages=knn")


def _row(stage: str, r: dict) -> dict:
  n_test = r["sizes"]["test"]
  if stage == "knn":
    cv = r["sizes"].get("cross_validation") or r["sizes"]["train"]
    return {"method": f"kNN ({KNN_FOLDS}-fold CV on {cv:,} train images)",
            "chosen": f"{r['chosen']['metric']}, k={r['chosen']['k']}",
            "val_accuracy": r["chosen"]["selection_accuracy"], "test_accuracy": r["test_accuracy"],
            "train_s": 0.0, "select_s": r["timings_s"]["selection"],
            "predict_ms_per_image": 1000 * r["timings_s"]["test"] / n_test,
            "train_size": r["sizes"]["train"], "val_size": None, "test_size": n_test}
  name = {"svm": "linear SVM, pixels", "softmax": "softmax, pixels",
          "svm_features": "linear SVM, HOG + hue", "mlp": "two-layer net, pixels",
          "mlp_features": "two-layer net, HOG + hue"}[stage]
  chosen = f"lr={r['chosen']['learning_rate']:g}, reg={r['chosen']['reg']:g}"
  if r.get("hidden_size"):
    chosen += f", hidden={r['hidden_size']}"
  return {"method": name, "chosen": chosen, "val_accuracy": r["chosen"]["val_accuracy"],
          "test_accuracy": r["test_accuracy"], "train_s": r["timings_s"]["train_grid"],
          "select_s": r["timings_s"]["train_grid"],
          "predict_ms_per_image": 1000 * r["timings_s"]["predict_test"] / n_test,
          "train_size": r["sizes"]["train"], "val_size": r["sizes"]["val"], "test_size": n_test,
          "grid_size": len(r["grid"])}


def _pct(v):
  return "—" if v is None else f"{100 * v:.1f} %"


def write_report(path: str, c: Config, rows: dict, started: str, total_s: float,
                 environment: dict | None = None) -> str:
  """report.md: the table, which stages failed, the key figures, and what ran them."""
  failed = [s for s in c.stages if "error" in rows[s]]
  lines = [f"# jaxlin study: {c.dataset}", "",
           f"Run {started}, {total_s:.0f} s in all. kNN is chosen by {KNN_FOLDS}-fold "
           "cross-validation on training images, the other methods on validation data (the "
           f"last {c.num_val:,} images of the training split, in the dataset's own order, "
           f"whatever the seed); each is evaluated once on the test split. Seed {c.seed} drives "
           "the other random streams (subsets, folds, initial weights, minibatches).", ""]
  if failed:
    lines += [("**Every stage failed.**" if len(failed) == len(c.stages) else
               f"**{len(failed)} of {len(c.stages)} stages failed: {', '.join(failed)}.**"), ""]
  lines += ["| method | chosen | val accuracy | test accuracy | train time (grid) | "
            "predict time / image | train images | val images | test images |",
            "|---|---|---|---|---|---|---|---|---|"]
  for stage in c.stages:
    r = rows[stage]
    if "error" in r:
      lines.append(f"| {stage} | **failed**: {r['error']} | | | | | | | |")
      continue
    grid = f" ({r['grid_size']} settings)" if r.get("grid_size") else ""
    train = "none (lazy)" if stage == "knn" else f"{r['train_s']:.1f} s{grid}"
    val = "CV" if r.get("val_size") is None else f"{r['val_size']:,}"
    lines.append(f"| {r['method']} | {r['chosen']} | {_pct(r['val_accuracy'])} | "
                 f"**{_pct(r['test_accuracy'])}** | {train} | "
                 f"{r['predict_ms_per_image']:.3f} ms | {r['train_size']:,} | {val} | "
                 f"{r['test_size']:,} |")
  lines += ["", f"kNN's validation figure is the mean {KNN_FOLDS}-fold cross-validation "
            "accuracy; kNN does its work at test time, the others at training time. Times are "
            "wall clock and include JIT compilation, which the first stage of a kind pays for the "
            "programs later stages reuse"
            + (" (the linear SVM's for softmax)" if {"svm", "softmax"} <= set(c.stages)
               else "")
            + ": compare them across stages with care, above all on small data.", ""]
  figures = [("knn", "cross_validation.png", "kNN: accuracy vs k by cross-validation"),
             ("knn", "neighbors.png", "kNN: test images and their nearest training images"),
             ("softmax", "weights.png", "Softmax: each class's learned template"),
             ("svm", "weights.png", "SVM: each class's learned template"),
             ("mlp", "weights.png", "Two-layer network: first-layer weights")]
  figures += [(s, "confusion.png", f"{s}: test confusion matrix") for s in c.stages]
  folder = os.path.dirname(path)
  for stage, name, caption in figures:
    figure = os.path.join(stage, "plots", name)
    if (stage in c.stages and "error" not in rows[stage]
        and os.path.exists(os.path.join(folder, figure))):
      lines += [f"## {caption}", "", f"![{caption}]({figure})", ""]
  if environment:
    versions = ", ".join(f"{k} {v}" for k, v in environment["versions"].items())
    lines += ["## How this was run", "",
              f"- command: `{environment['command']}` ({environment['date_utc']})",
              f"- jaxlin {environment['jaxlin']}, commit {environment['commit'] or 'unknown'}; "
              f"{versions}",
              f"- CPU: {environment['cpu']}, {environment['cores']} cores; int8 product: "
              f"{environment.get('int8_product', 'unknown')}; devices: "
              f"{', '.join(environment['devices'])}",
              f"- data files digest: {environment['data_files']}", ""]
  text = "\n".join(lines) + "\n"
  return files.atomic_write(path, lambda f: f.write(text), binary=False)


def run(config, workdir: str, *, overwrite: bool = False) -> dict:
  """Every stage in its own subfolder, then report.md and results.json.

  A stage that fails is reported (``failed_stages``); the others still run. A missing
  dataset, or one too small for the linear stages' minibatches, stops the study before
  its first stage; an unreadable one (a DataError), or one with fewer images than a
  stage's num_train or num_test, where a stage finds it.
  """
  c = validate(config)
  with common.Run("study", c, workdir, overwrite=overwrite) as r:
    pool = data.split_size(c.dataset, "train", data_dir=c.data_dir) - c.num_val
    _check_minibatch(c, pool)
    configs, rows = stage_configs(c, pool), {}
    for i, stage in enumerate(c.stages, 1):
      module, stage_config = configs[stage]
      logging.info("[%d/%d] %s", i, len(c.stages), stage)
      stage_t = common.Timer()
      stage_dir = r.file(stage) or os.path.join(workdir, stage)  # processes > 0 write nothing
      try:
        rows[stage] = _row(stage, module.run(stage_config, stage_dir))
      except (DataError, OSError):  # the dataset itself (unreadable, corrupt), or the disk
        raise  # (full, a size limit): every stage would fail
      except Exception as e:  # reported; the rest runs; pylint: disable=broad-except
        if isinstance(e, InputError) and e.argument in ("num_train", "num_val", "num_test"):
          raise  # the dataset's size (too few images): every stage would fail
        if isinstance(e, DivergenceError):  # its advice names the linear experiment's flags
          e = DivergenceError(e.what, advice="the study's settings for this stage are fixed: "
                              "choose others with experiments.linear", step=e.step)
        elif isinstance(e, ConfigError) and hasattr(e, "reason"):  # it named linear's flag
          e = ConfigError(f"{e.reason}; leave {stage} out of --stages, or use larger images",
                          argument="stages")
        elif isinstance(e, JaxlinError):  # an error the stage explains: its line, no traceback
          e = common.rename_flags(e, STAGE_FLAGS.get(stage, {}))
        if isinstance(e, JaxlinError):
          logging.error("stage %s failed: %s", stage, e)
        else:
          logging.error("stage %s failed:\n%s", stage, traceback.format_exc())
        rows[stage] = {"error": f"{type(e).__name__}: {e}".replace("|", "/").replace("\n", " ")}
      row = rows[stage]
      logging.info("[%d/%d] %s done in %.1f s: %s", i, len(c.stages), stage, stage_t(),
                   "failed" if "error" in row else
                   f"{row['chosen']}, test accuracy {_pct(row['test_accuracy'])}")
    failed = [s for s in c.stages if "error" in rows[s]]
    if len(failed) == len(c.stages):  # nothing to report: the previous study stays
      reasons = "; ".join(f"{stage}: {rows[stage]['error']}" for stage in failed)
      raise StudyFailed(f"every stage failed ({reasons}); nothing was written, and the "
                        "workdir keeps its previous run")
    if r.writer:
      write_report(r.file("report.md"), c, rows, r.started, r.timer(), r.environment(data=True))
    results = r.finish({"dataset": c.dataset, "stages": rows, "failed_stages": failed,
                        "report": os.path.join(os.path.abspath(os.path.expanduser(workdir)),
                                               "report.md")})
  logging.info("study done in %.0f s; report: %s%s", results["timings_s"]["total"],
               results["report"], f"; failed stages: {', '.join(failed)}" if failed else "")
  return results


def exit_code(results: dict) -> int:
  """1 when any stage failed (the report says which), else 0."""
  return common.EXIT_FAILED if results["failed_stages"] else 0


if __name__ == "__main__":
  common.main("study", Config, validate, run, exit_code=exit_code)
