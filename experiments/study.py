r"""The lecture's whole study on one dataset, side by side, with a report.

  python -m experiments.study --dataset=folder:/data/cifar10-jpeg --workdir=runs/study

Stages (each in its own subfolder of --workdir, each chosen on validation
data and evaluated once on test):

  knn           kNN, L1 and L2, k by 5-fold cross-validation on a training subset
  svm           linear multiclass SVM on pixels, grid on the val split
  softmax       linear softmax on pixels, grid on the val split
  svm_features  linear SVM on HOG + hue-histogram features
  mlp           two-layer network on pixels
  mlp_features  two-layer network on HOG + hue-histogram features

Writes report.md (a table and the key figures) and results.json. A stage that
fails is reported in the table with its error; the others still run.
"""
from __future__ import annotations

import os
import time
import traceback

from absl import app
from absl import flags
from absl import logging

from experiments import common
from experiments import knn as knn_exp
from experiments import linear as linear_exp
from jaxlin import data
from jaxlin.errors import ConfigError, DataError

STAGES = ("knn", "svm", "softmax", "svm_features", "mlp", "mlp_features")
DEFAULTS = dict(dataset="cifar10", data_dir=None, seed=0, num_train=0, num_val=1000, num_test=0,
                knn_num_train=5000, stages=list(STAGES), mlp_hidden_size=500, mlp_epochs=10.0,
                shard="auto")

_STAGES = flags.DEFINE_list("stages", DEFAULTS["stages"], f"stages to run, from {', '.join(STAGES)}")
_KNN_TRAIN = flags.DEFINE_integer("knn_num_train", DEFAULTS["knn_num_train"],
                                  "training images for kNN cross-validation (0 = all)")
_MLP_HIDDEN = flags.DEFINE_integer("mlp_hidden_size", DEFAULTS["mlp_hidden_size"], "hidden units")
_MLP_EPOCHS = flags.DEFINE_float("mlp_epochs", DEFAULTS["mlp_epochs"], "epochs for the networks")


def stage_configs(c: dict, available_train: int | None = None) -> dict:
  """The configs each stage's experiment runs with.

  kNN compares the lecture's k values that fit the training images of a fold
  (``available_train``: the training images there are, when known).
  """
  shared = dict(dataset=c["dataset"], data_dir=c["data_dir"], seed=c["seed"], num_val=c["num_val"],
                num_test=c["num_test"], shard=c["shard"])
  lin = dict(shared, num_train=c["num_train"])
  n_knn = c["knn_num_train"] or available_train
  ks = knn_exp.DEFAULTS["k"]
  if n_knn:
    ks = [k for k in ks if k <= n_knn - -(-n_knn // 5)] or [1]
  return {
      "knn": (knn_exp, dict(shared, num_train=c["knn_num_train"], metric=["l1", "l2"], cv_folds=5,
                            k=ks)),
      "svm": (linear_exp, dict(lin, loss="svm")),
      "softmax": (linear_exp, dict(lin, loss="softmax")),
      "svm_features": (linear_exp, dict(lin, loss="svm", features="hog_hsv")),
      "mlp": (linear_exp, dict(lin, model="mlp", hidden_size=c["mlp_hidden_size"],
                               num_epochs=c["mlp_epochs"], learning_rate=[1e-2], reg=[1e-3, 3e-3])),
      "mlp_features": (linear_exp, dict(lin, model="mlp", features="hog_hsv",
                                        hidden_size=c["mlp_hidden_size"])),
  }


def validate(config: dict) -> dict:
  c = common.merge_config(DEFAULTS, config)
  unknown = [s for s in c["stages"] if s not in STAGES]
  if unknown or not c["stages"]:
    raise ConfigError(f"unknown --stages {unknown}; choose from {', '.join(STAGES)}")
  for name in ("num_train", "num_test", "knn_num_train"):
    if c[name] < 0:
      raise ConfigError(f"--{name} must be >= 0 (0 = all), got {c[name]}")
  if c["knn_num_train"] == 0:
    c["knn_num_train"] = None
  configs = stage_configs(c)
  for s in c["stages"]:  # every stage's own checks, before any heavy work
    module, cfg = configs[s]
    module.validate(cfg)
  return c


def _row(stage: str, r: dict) -> dict:
  n_test = r["sizes"]["test"]
  if stage == "knn":
    return {"method": "kNN (5-fold CV on train subset)",
            "chosen": f"{r['chosen']['metric']}, k={r['chosen']['k']}",
            "val_accuracy": r["chosen"]["selection_accuracy"], "test_accuracy": r["test_accuracy"],
            "train_s": 0.0, "select_s": r["timings_s"]["selection"],
            "predict_ms_per_image": 1000 * r["timings_s"]["test"] / n_test,
            "train_size": r["sizes"]["train"]}
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
          "train_size": r["sizes"]["train"], "grid_size": len(r["grid"])}


def _pct(v):
  return "—" if v is None else f"{100 * v:.1f} %"


def write_report(workdir: str, c: dict, rows: dict, started: str, total_s: float) -> str:
  lines = [f"# jaxlin study: {c['dataset']}", "",
           f"Run {started}, {total_s:.0f} s in all. Each method is chosen on validation data "
           "and evaluated once on the test split.", "",
           "| method | chosen | val accuracy | test accuracy | train time (grid) | predict time / image | train images |",
           "|---|---|---|---|---|---|---|"]
  for stage in c["stages"]:
    r = rows[stage]
    if "error" in r:
      lines.append(f"| {stage} | **failed**: {r['error']} | | | | | |")
      continue
    grid = f" ({r['grid_size']} settings)" if r.get("grid_size") else ""
    train = "none (lazy)" if stage == "knn" else f"{r['train_s']:.1f} s{grid}"
    lines.append(f"| {r['method']} | {r['chosen']} | {_pct(r['val_accuracy'])} | "
                 f"**{_pct(r['test_accuracy'])}** | {train} | {r['predict_ms_per_image']:.3f} ms | "
                 f"{r['train_size']} |")
  lines += ["", "kNN's validation figure is the mean 5-fold cross-validation accuracy; kNN "
            "does its work at test time, the others at training time.", ""]
  figures = [("knn", "cross_validation.png", "kNN: accuracy vs k by cross-validation"),
             ("knn", "neighbors.png", "kNN: test images and their nearest training images"),
             ("softmax", "weights.png", "Softmax: each class's learned template"),
             ("svm", "weights.png", "SVM: each class's learned template"),
             ("mlp", "weights.png", "Two-layer network: first-layer weights")]
  figures += [(s, "confusion.png", f"{s}: test confusion matrix") for s in c["stages"]]
  for stage, name, caption in figures:
    path = os.path.join(stage, "plots", name)
    if stage in c["stages"] and "error" not in rows[stage] and os.path.exists(os.path.join(workdir, path)):
      lines += [f"## {caption}", "", f"![{caption}]({path})", ""]
  path = os.path.join(workdir, "report.md")
  with open(path + ".tmp", "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(path + ".tmp", path)
  return path


def run(config: dict, workdir: str) -> dict:
  c = validate(config)
  workdir = common.prepare_workdir(workdir, stale=("results.json", "report.md"))
  common.write_json(os.path.join(workdir, "config.json"), c)
  data.check_name(c["dataset"])
  timer, started = common.Timer(), time.strftime("%Y-%m-%d %H:%M")
  # Load once up front: a missing dataset stops the study at once, and every stage reuses it.
  logging.info("loading %s", c["dataset"])
  for split in ("train", "test"):
    data.load_split(c["dataset"], split, data_dir=c["data_dir"])
  pool = len(data.load_split(c["dataset"], "train", data_dir=c["data_dir"])[1]) - c["num_val"]
  configs, rows, results = stage_configs(c, pool), {}, {}
  for i, stage in enumerate(c["stages"], 1):
    module, cfg = configs[stage]
    logging.info("[%d/%d] %s", i, len(c["stages"]), stage)
    stage_t = common.Timer()
    try:
      results[stage] = module.run(cfg, os.path.join(workdir, stage))
      rows[stage] = _row(stage, results[stage])
    except DataError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (reported in the table; the rest runs)
      logging.error("stage %s failed:\n%s", stage, traceback.format_exc())
      rows[stage] = {"error": f"{type(e).__name__}: {e}".replace("|", "/").replace("\n", " ")}
    logging.info("[%d/%d] %s done in %.1f s: %s", i, len(c["stages"]), stage, stage_t(),
                 {k: v for k, v in rows[stage].items() if k in ("chosen", "test_accuracy", "error")})
  report = os.path.join(workdir, "report.md")
  if common.is_writer():
    write_report(workdir, c, rows, started, timer())
  out = {"dataset": c["dataset"], "stages": rows, "total_s": timer(), "report": report,
         "date": started}
  common.write_json(os.path.join(workdir, "results.json"), out)
  logging.info("study done in %.0f s; report: %s", timer(), report)
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = dict(common.shared_flag_config(DEFAULTS), stages=_STAGES.value,
                knn_num_train=_KNN_TRAIN.value, mlp_hidden_size=_MLP_HIDDEN.value,
                mlp_epochs=_MLP_EPOCHS.value)
  common.run_main(run, config, common.WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
