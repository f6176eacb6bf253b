import errno
import json
import os
import re

import pytest

from experiments import knn as knn_exp
from experiments import linear as linear_exp
from experiments import study
from experiments.config import ConfigError
from jaxlin.errors import DataError, DivergenceError, InputError
from tests.conftest import make_image_folder

pytestmark = pytest.mark.long  # a tiny study first

TINY = dict(num_val=6, mlp_hidden_size=8, mlp_epochs=2, cache_dir="")
# (chosen, val accuracy, test accuracy) of a deterministic tiny study (seed 0; the folder
# below; every linear stage 2 epochs of batches of 8). If these move, so would the
# published numbers: find out why before changing them.
EXPECTED = {
    "knn": ("l1, k=1", 1.0, 1.0),
    "softmax": ("lr=0.0003, reg=0.01", 1.0, 1.0),
    "svm_features": ("lr=0.001, reg=0.0001", 1.0, 1.0),
    "mlp": ("lr=0.01, reg=0.001, hidden=8", 0.5, 0.5),
    "mlp_features": ("lr=0.03, reg=0.0001, hidden=8", 5 / 6, 5 / 6),
}


@pytest.fixture
def tiny_study(tmp_path_factory):
  """One study on 16x16 images with a failing stage, shared by the checks below."""
  tmp = tmp_path_factory.mktemp("study")
  root = str(tmp / "images")
  make_image_folder(root, per_class_train=14, per_class_test=4, size=16, noise=200)
  real_run = linear_exp.run

  def run_or_fail(cfg, workdir, **kw):
    if cfg.get("loss") == "svm" and cfg.get("features", "pixels") == "pixels":
      raise RuntimeError("simulated | failure")
    return real_run(dict(cfg, batch_size=8, num_epochs=2), workdir, **kw)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(linear_exp, "run", run_or_fail)
    mp.setattr(study, "MINIBATCH", 8)
    res = study.run(dict(dataset=f"folder:{root}", **TINY), str(tmp / "wd"))
  return res, tmp / "wd"


def test_tiny_study(tiny_study):
  """Both checks of the one shared study in one test: pytest-xdist's groups did not keep
  two tests on one worker here, and each worker built the study again."""
  _check_reports_every_stage_and_the_failed_one(tiny_study)
  _check_numbers_equal_a_known_tiny_run(tiny_study)


def _check_reports_every_stage_and_the_failed_one(tiny_study):
  res, wd = tiny_study
  report = (wd / "report.md").read_text()
  assert json.loads((wd / "results.json").read_text())["stages"].keys() == set(study.STAGES)
  assert res["failed_stages"] == ["svm"] and study.exit_code(res) == 1
  assert "**1 of 6 stages failed: svm.**" in report
  assert res["stages"]["svm"]["error"] == "RuntimeError: simulated / failure"
  assert "| svm | **failed**: RuntimeError: simulated / failure |" in report
  assert "![kNN: accuracy vs k by cross-validation](knn/plots/cross_validation.png)" in report
  assert (wd / "knn" / "plots" / "cross_validation.png").exists()
  assert "svm/plots/weights.png" not in report  # the failed stage shows no figures
  assert not (wd / "svm").exists()
  assert not (wd / "plots").exists()  # the study's figures are its stages'; no empty folder
  # A kNN run into the study's kNN stage replaced it, and the report described another run.
  with pytest.raises(ConfigError, match=r"is the knn stage of the study in .*: a run here "
                     r"would leave that study's report.md describing another run"):
    knn_exp.run(dict(dataset=f"folder:{wd.parent / 'images'}", k=[3]), str(wd / "knn"))
  (wd.parent / "link").symlink_to(wd / "knn")  # through a link too
  with pytest.raises(ConfigError, match=r"is the knn stage of the study"):
    knn_exp.run(dict(dataset=f"folder:{wd.parent / 'images'}", k=[3]), str(wd.parent / "link"))
  assert json.loads((wd / "knn" / "results.json").read_text())["chosen"]["k"] == 1


def _check_numbers_equal_a_known_tiny_run(tiny_study):
  res, _ = tiny_study
  # fewer training images than the default --knn_num_train=5000: kNN used all 36
  assert res["stages"]["knn"]["train_size"] == 36
  for stage, (chosen, val, test) in EXPECTED.items():
    row = res["stages"][stage]
    assert row["chosen"] == chosen, stage
    assert (row["val_accuracy"], row["test_accuracy"]) == pytest.approx((val, test), abs=1e-6)


def test_a_study_where_every_stage_failed_says_so(tmp_path, monkeypatch):
  root = str(tmp_path / "images")
  make_image_folder(root, per_class_train=4, per_class_test=1)

  def fail(cfg, workdir, **kw):
    raise RuntimeError("boom")

  monkeypatch.setattr(study, "MINIBATCH", 8)  # the tiny folder's 10 images
  config = dict(dataset=f"folder:{root}", num_val=2, stages=["knn"], cache_dir="")
  study.run(config, str(tmp_path / "wd"))  # a finished study, which a failed one must keep
  before = (tmp_path / "wd" / "report.md").read_text()
  monkeypatch.setattr(linear_exp, "run", fail)
  monkeypatch.setattr(knn_exp, "run", fail)
  # Every stage failed: nothing to report, so the previous study stays (it was replaced by
  # a report saying "Every stage failed").
  with pytest.raises(study.StudyFailed, match=r"every stage failed \(knn: RuntimeError: boom; "
                     r"softmax: RuntimeError: boom\); nothing was written") as e:
    study.run(dict(config, stages=["knn", "softmax"]), str(tmp_path / "wd"))
  assert e.value.exit_code == 1
  assert (tmp_path / "wd" / "report.md").read_text() == before
  # Too few images for kNN's 5 folds: refused before any work (it failed the stage, and the
  # study with it, naming --cv_folds, which the study does not have).
  with pytest.raises(ConfigError, match=re.escape(
      f"the kNN stage cross-validates over 5 folds, but folder:{root} has 3 training image(s) "
      "besides the --num_val=9 val images; use a smaller --num_val or a larger dataset")):
    study.run(dict(config, num_val=9), str(tmp_path / "wd"))
  assert (tmp_path / "wd" / "report.md").read_text() == before


def test_study_rejects_bad_values_and_missing_data_at_once(tmp_path):
  with pytest.raises(ConfigError, match="^unknown --stages cnn; choose from knn, svm, "):
    study.run(dict(stages=["knn", "cnn"]), str(tmp_path))
  with pytest.raises(ConfigError, match="^--stages names knn more than once$"):
    study.run(dict(stages=["knn", "svm", "knn"]), str(tmp_path))
  with pytest.raises(ConfigError, match="--stages is empty; choose from knn, svm"):
    study.run(dict(stages=[]), str(tmp_path))
  with pytest.raises(DataError, match="does not exist"):
    study.run(dict(dataset=f"folder:{tmp_path}/none"), str(tmp_path / "wd"))
  assert not (tmp_path / "wd" / "report.md").exists()


def test_a_stage_error_about_its_images_fails_that_stage_and_small_datasets_stop_at_once(
    tmp_path):
  # A stage's error about its data (HOG cells larger than the images) stopped the study, lost
  # the stages already done; a dataset smaller than the minibatches failed every linear stage
  # with "--batch_size=200 exceeds ...", a flag the study does not have.
  root = str(tmp_path / "images")
  make_image_folder(root, per_class_train=70, per_class_test=1, size=6)  # 210 images
  with pytest.raises(ConfigError, match=r"minibatches of 200 images, but folder:.* has 190 "
                     r"training images besides the --num_val=20 val images"):
    study.run(dict(dataset=f"folder:{root}", num_val=20, cache_dir=""), str(tmp_path / "wd"))
  with pytest.raises(ConfigError, match=r"--num_val=300 leaves no training images of the "
                     r"210 in folder:.*; use a smaller --num_val"):  # said "has -90 images"
    study.run(dict(dataset=f"folder:{root}", num_val=300, cache_dir=""), str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()
  res = study.run(dict(dataset=f"folder:{root}", num_val=10, cache_dir="",
                       stages=["knn", "svm_features"]), str(tmp_path / "wd"))
  assert res["failed_stages"] == ["svm_features"] and "test_accuracy" in res["stages"]["knn"]
  assert res["stages"]["svm_features"]["error"].endswith(  # it named --features, no study flag
      "ConfigError: HOG + hue features describe cells of 8 x 8 pixels, but the images are 6 x 6; "
      "leave svm_features out of --stages, or use larger images")
  with open(os.path.join(root, "train", "cat", "zzz_broken.png"), "wb") as f:
    f.write(b"not an image")  # every stage would fail on it: the study stops, exit code 2
  with pytest.raises(DataError, match="zzz_broken.png"):
    study.run(dict(dataset=f"folder:{root}", num_val=10, cache_dir="", stages=["knn", "svm"]),
              str(tmp_path / "wd2"))
  # More test images asked for than the folder has: every stage would fail, the study stops.
  with pytest.raises(InputError, match=r"num_test=50 must be in \[1, 3\]") as e:
    study.run(dict(dataset=f"folder:{root}", num_val=10, num_test=50, cache_dir="",
                   stages=["knn", "svm"]), str(tmp_path / "wd3"))
  assert e.value.argument == "num_test" and not (tmp_path / "wd3").exists()


def test_a_stage_error_jaxlin_explains_is_logged_as_one_line(tmp_path, monkeypatch, caplog):
  """A stage's own error (ConfigError, DataError, ...) is its line in the log, as on the
  command line; only an unexpected exception gets a traceback."""
  root = str(tmp_path / "images")
  make_image_folder(root, per_class_train=4, per_class_test=1)

  def fail(cfg, workdir, **kw):
    if cfg["loss"] == "svm":
      return MLP_RESULT
    raise ConfigError("--batch_size=200 exceeds the 10 training images", argument="batch_size")

  monkeypatch.setattr(linear_exp, "run", fail)
  monkeypatch.setattr(study, "MINIBATCH", 8)  # the tiny folder's 10 images
  with caplog.at_level("INFO"):
    res = study.run(dict(dataset=f"folder:{root}", num_val=2, stages=["svm", "softmax"]),
                    str(tmp_path / "wd"))
  assert res["failed_stages"] == ["softmax"]
  assert "stage softmax failed: --batch_size=200 exceeds the 10" in caplog.text
  assert "Traceback" not in caplog.text
  # each stage's summary in words
  assert re.search(r"\[1/2\] svm done in [\d.]+ s: lr=0.01, reg=0.003, hidden=500, test "
                   r"accuracy 48.6 %\n", caplog.text), caplog.text
  assert re.search(r"\[2/2\] softmax done in [\d.]+ s: failed\n", caplog.text), caplog.text


def test_the_report_path_of_a_workdir_under_home_is_where_it_is(tmp_path, monkeypatch):
  """--workdir=~/st (a shell leaves ~ after = as it is): the files went to $HOME/st, but
  results.json and the log named ./~/st/report.md."""
  root = str(tmp_path / "images")
  make_image_folder(root, per_class_train=4, per_class_test=1)
  monkeypatch.setattr(linear_exp, "run", lambda cfg, workdir, **kw: MLP_RESULT)
  monkeypatch.setattr(study, "MINIBATCH", 8)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  res = study.run(dict(dataset=f"folder:{root}", num_val=2, stages=["svm"]), "~/st")
  assert res["report"] == str(tmp_path / "home" / "st" / "report.md")
  assert os.path.isfile(res["report"])


def test_a_full_disk_stops_the_study_at_its_first_stage(tmp_path, monkeypatch):
  """Every stage would fail on it (each was logged with a traceback, then the report's write
  failed too): the study stops with the disk's error, which the command line says in one
  line, and writes nothing."""
  root = str(tmp_path / "images")
  make_image_folder(root, per_class_train=4, per_class_test=1)
  calls = []

  def full(cfg, workdir, **kw):
    calls.append(cfg["loss"])
    raise OSError(errno.ENOSPC, "No space left on device", os.path.join(workdir, "model.npz"))

  monkeypatch.setattr(linear_exp, "run", full)
  monkeypatch.setattr(study, "MINIBATCH", 8)
  with pytest.raises(OSError, match="No space left"):
    study.run(dict(dataset=f"folder:{root}", num_val=2, stages=["svm", "softmax"]),
              str(tmp_path / "wd"))
  assert calls == ["svm"] and not (tmp_path / "wd").exists()


def test_a_stage_that_diverges_names_no_flag_the_study_lacks(tmp_path, monkeypatch, caplog):
  root = str(tmp_path / "images")
  make_image_folder(root, per_class_train=4, per_class_test=1)
  message = ("training diverged: the loss or the parameters became inf or NaN at step 1 for "
             "every setting (largest learning rate 0.003)")

  def fail(cfg, workdir, **kw):  # as the linear experiment raises it
    raise linear_exp._divergence_in_flags(DivergenceError(
        message, advice="try smaller learning_rates", argument="learning_rates",
        library_hint="(optax.apply_if_finite)", step=1), line_search=False)

  monkeypatch.setattr(linear_exp, "run", fail)
  monkeypatch.setattr(study, "MINIBATCH", 8)
  with caplog.at_level("INFO"):
    res = study.run(dict(dataset=f"folder:{root}", num_val=2, stages=["knn", "softmax"],
                         cache_dir=""), str(tmp_path / "wd"))  # (kNN runs: not every stage fails)
  line = (f"stage softmax failed: {message}; the study's settings for this stage are fixed: "
          "choose others with experiments.linear")
  assert line in caplog.text and "--init_scale" not in caplog.text, caplog.text
  assert res["stages"]["softmax"]["error"] == "DivergenceError: " + line.split(": ", 1)[1]


# ---- the table from stage results, and what each stage is asked to do ---------------------
KNN_RESULT = {"sizes": {"train": 49000, "val": 1000, "test": 400, "cross_validation": 5000},
              "chosen": {"metric": "l1", "k": 10, "selection_accuracy": 0.2934},
              "test_accuracy": 0.3167, "timings_s": {"selection": 12.5, "test": 2.0}}
MLP_RESULT = {"sizes": {"train": 49000, "val": 1000, "test": 400}, "hidden_size": 500,
              "chosen": {"learning_rate": 0.01, "reg": 0.003, "val_accuracy": 0.5},
              "test_accuracy": 0.4862, "timings_s": {"train_grid": 30.31, "predict_test": 0.1},
              "grid": [{}, {}]}


def test_rows_and_the_report_table_from_stage_results(tmp_path):
  knn_row, mlp_row = study._row("knn", KNN_RESULT), study._row("mlp", MLP_RESULT)
  assert knn_row == {"method": "kNN (5-fold CV on 5,000 train images)", "chosen": "l1, k=10",
                     "val_accuracy": 0.2934, "test_accuracy": 0.3167, "train_s": 0.0,
                     "select_s": 12.5, "predict_ms_per_image": 5.0, "train_size": 49000,
                     "val_size": None, "test_size": 400}
  assert mlp_row == {"method": "two-layer net, pixels", "chosen": "lr=0.01, reg=0.003, hidden=500",
                     "val_accuracy": 0.5, "test_accuracy": 0.4862, "train_s": 30.31,
                     "select_s": 30.31, "predict_ms_per_image": 0.25, "train_size": 49000,
                     "val_size": 1000, "test_size": 400, "grid_size": 2}
  c = study.Config.make(dict(dataset="cifar10", stages=["knn", "mlp", "svm"]))
  rows = {"knn": knn_row, "mlp": mlp_row, "svm": {"error": "RuntimeError: boom"}}
  environment = {"command": "python -m experiments.study --dataset=cifar10", "jaxlin": "0.1.0",
                 "date_utc": "2026-12-04T06:00:00+00:00",
                 "commit": "abc1234", "versions": {"python": "3.11.7", "jax": "0.10.2"},
                 "cpu": "AMD EPYC, family 25 model 17; avx2", "cores": 2,
                 "int8_product": "xla: the CPU lists no AVX-512 VNNI", "devices": ["cpu: cpu"],
                 "data_files": "0123456789abcdef"}
  text = open(study.write_report(str(tmp_path / "report.md"), c, rows, "2026-12-04 06:00",
                                 61.0, environment)).read()
  lines = text.splitlines()
  assert lines[:2] == ["# jaxlin study: cifar10", ""]
  assert lines[2] == ("Run 2026-12-04 06:00, 61 s in all. kNN is chosen by 5-fold "
                      "cross-validation on training images, the other methods on validation "
                      "data (the last 1,000 images of the training split, in the dataset's own "
                      "order, whatever the seed); each is evaluated once on the test split. "
                      "Seed 0 drives the other random streams (subsets, folds, initial weights, "
                      "minibatches).")
  assert "**1 of 3 stages failed: svm.**" in lines
  head = lines.index("| method | chosen | val accuracy | test accuracy | train time (grid) | "
                     "predict time / image | train images | val images | test images |")
  assert lines[head + 1:head + 5] == [
      "|---|---|---|---|---|---|---|---|---|",
      "| kNN (5-fold CV on 5,000 train images) | l1, k=10 | 29.3 % | **31.7 %** | none (lazy) | "
      "5.000 ms | 49,000 | CV | 400 |",
      "| two-layer net, pixels | lr=0.01, reg=0.003, hidden=500 | 50.0 % | **48.6 %** | "
      "30.3 s (2 settings) | 0.250 ms | 49,000 | 1,000 | 400 |",
      "| svm | **failed**: RuntimeError: boom | | | | | | | |"]
  assert lines[-7:] == [
      "## How this was run", "", "- command: `python -m experiments.study --dataset=cifar10` "
      "(2026-12-04T06:00:00+00:00)",
      "- jaxlin 0.1.0, commit abc1234; python 3.11.7, jax 0.10.2",
      "- CPU: AMD EPYC, family 25 model 17; avx2, 2 cores; int8 product: xla: the CPU lists "
      "no AVX-512 VNNI; devices: cpu: cpu",
      "- data files digest: 0123456789abcdef", ""]
  assert study._pct(None) == "—"
  assert "later stages reuse: compare them" in text  # no softmax stage: no "(the SVM's ...)"
  c = c.replace(stages=("svm", "softmax"))
  text = open(study.write_report(str(tmp_path / "r2.md"), c, {"svm": mlp_row, "softmax": mlp_row},
                                 "2026-12-04 06:00", 61.0)).read()
  assert "later stages reuse (the linear SVM's for softmax): compare them" in text


def test_stage_configs_share_the_data_flags_and_fit_k_to_the_folds():
  c = study.Config.make(dict(dataset="folder:/x", seed=7, num_val=30, num_test=40,
                             knn_num_train=5000, mlp_epochs=3.0, mlp_hidden_size=9))
  configs = study.stage_configs(c, available_train=25)
  split = study.stage_configs(c.replace(shard="database"), available_train=25)
  assert {s: cfg_["shard"] for s, (_, cfg_) in split.items()} == {  # kNN's; training: batches
      s: "database" if s == "knn" else "queries" for s in study.STAGES}
  for stage, (module, stage_config) in configs.items():
    assert module is (knn_exp if stage == "knn" else linear_exp)
    assert {k: stage_config[k] for k in ("dataset", "seed", "num_val", "num_test")} == {
        "dataset": "folder:/x", "seed": 7, "num_val": 30, "num_test": 40}, stage
  # 25 images: folds of 5, so 20 training images each; k=20 fits, 50 does not.
  assert configs["knn"][1]["k"] == [1, 3, 5, 8, 10, 12, 15, 20]
  assert configs["knn"][1]["cv_num_train"] == 25
  assert configs["knn"][1]["cv_folds"] == 5 and configs["knn"][1]["metric"] == ["l1", "l2"]
  assert {s: configs[s][1].get("features", "pixels") for s in study.STAGES} == {
      "knn": "pixels", "svm": "pixels", "softmax": "pixels", "svm_features": "hog_hsv",
      "mlp": "pixels", "mlp_features": "hog_hsv"}
  assert [configs[s][1].get("loss") for s in ("svm", "softmax", "svm_features")] == [
      "svm", "softmax", "svm"]
  for s in ("mlp", "mlp_features"):
    assert (configs[s][1]["model"], configs[s][1]["hidden_size"],
            configs[s][1]["num_epochs"]) == ("mlp", 9, 3.0)
  default_epochs = study.stage_configs(study.Config.make(dict(dataset="cifar10")))
  assert default_epochs["mlp"][1]["num_epochs"] == 10.0
  assert default_epochs["mlp_features"][1]["num_epochs"] is None  # the linear default: 20
  assert default_epochs["knn"][1]["k"] == [1, 3, 5, 8, 10, 12, 15, 20, 50, 100]


def test_the_commit_recorded_is_jaxlins_own(tmp_path, monkeypatch):
  """Installed inside another project's repository (a venv in it), the project's commit was
  recorded as jaxlin's."""
  import shutil  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  from experiments import provenance  # pylint: disable=import-outside-toplevel
  if shutil.which("git") is None:
    pytest.skip("no git here")
  git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True,
                                  text=True).stdout.strip()
  git("init", "-q")
  (tmp_path / "f").write_text("x")
  git("add", "f")
  git("-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "m")
  (tmp_path / "site").mkdir()
  monkeypatch.setattr(provenance, "ROOT", str(tmp_path / "site"))
  assert provenance.commit() is None
  monkeypatch.setattr(provenance, "ROOT", str(tmp_path))
  assert provenance.commit(("f",)) == git("rev-parse", "--short", "HEAD")
  (tmp_path / "f").write_text("y")
  assert provenance.commit(("f",)).endswith(" + changes to f")
