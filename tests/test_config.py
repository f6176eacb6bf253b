"""Configs: one source per experiment, flags from its fields, every value checked before data."""
import dataclasses
import json
import math
import os
import pathlib
import re
import stat
import subprocess
import sys

from absl import flags
import jax
import numpy as np
import pytest

from experiments import common
from experiments import config as cfg
from experiments import knn as knn_exp
from experiments import linear as linear_exp
from experiments import study
from jaxlin import files
from experiments.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module", [knn_exp, linear_exp, study])
def test_every_config_key_is_a_flag_with_the_same_default(module):
  fv = flags.FlagValues()
  cfg.define_flags(module.Config, fv)
  cfg.define_flags(common.Launch, fv)  # the launch options do not collide with any config key
  for f in dataclasses.fields(module.Config):
    value = fv[f.name].default
    expected = f.default
    if isinstance(expected, tuple):
      value = tuple(type(expected[0])(v) for v in value)
    assert value == expected, f.name
  fv(["prog"])
  assert module.Config.make(cfg.from_flags(module.Config, fv)) == module.Config()


def test_flags_reach_the_config():
  fv = flags.FlagValues()
  cfg.define_flags(linear_exp.Config, fv)
  fv(["prog", "--loss=svm", "--margin=2", "--init_scale=0.01", "--learning_rate=0.1,0.2",
      "--seed=3"])
  c = linear_exp.validate(cfg.from_flags(linear_exp.Config, fv))
  assert (c.margin, c.init_scale, c.learning_rate, c.seed) == (2.0, 0.01, (0.1, 0.2), 3)
  fv = flags.FlagValues()
  cfg.define_flags(knn_exp.Config, fv)
  fv(["prog", "--num_neighbor_rows=2", "--k=5,1"])
  c = knn_exp.validate(cfg.from_flags(knn_exp.Config, fv))
  assert (c.num_neighbor_rows, c.k) == (2, (1, 5))


def test_study_mlp_flags_reach_both_networks():
  c = study.validate(dict(mlp_epochs=3.0, mlp_hidden_size=7))
  configs = study.stage_configs(c, available_train=100)
  for stage in ("mlp", "mlp_features"):
    assert configs[stage][1]["num_epochs"] == 3.0 and configs[stage][1]["hidden_size"] == 7
  default = study.stage_configs(study.validate({}), available_train=100)
  assert default["mlp"][1]["num_epochs"] == 10.0  # the published defaults
  assert linear_exp.validate(default["mlp_features"][1]).num_epochs == 20.0
  # fewer training images than --knn_num_train: kNN cross-validates on what there is, and
  # tests against all training images
  knn_config = default["knn"][1]
  assert knn_config["cv_num_train"] == 100 and knn_config["num_train"] == 0
  assert max(knn_config["k"]) <= 80
  small = study.stage_configs(study.validate(dict(num_train=600)), available_train=1000)["knn"][1]
  assert small["cv_num_train"] == 600 and small["num_train"] == 600


@pytest.mark.parametrize("override, message", [
    (dict(cv_num_train="30"), r"--cv_num_train must be an integer, got '30' \(str\)"),
    (dict(cv_num_train=30.0), r"--cv_num_train must be an integer, got 30.0 \(float\)"),
    (dict(cv_folds=True), r"--cv_folds must be an integer, got True \(bool\)"),
    (dict(num_train=[5]), r"--num_train must be an integer, got \[5\] \(list\)"),
    (dict(cv_num_train=None), r"--cv_num_train must be an integer, got None"),
    (dict(tie_break=1), r"--tie_break must be a string, got 1 \(int\)"),
])
def test_python_config_values_of_the_wrong_type_are_refused(override, message):
  with pytest.raises(ConfigError, match=message) as e:
    knn_exp.Config.make(override)
  assert e.value.argument == next(iter(override))


def test_python_config_values_become_the_field_types():
  c = knn_exp.Config.make(dict(k=3, metric="l1", num_train=np.int64(7)))
  assert (c.k, c.metric, c.num_train) == ((3,), ("l1",), 7) and type(c.num_train) is int
  c = knn_exp.Config.make(dict(k=range(1, 4), seed=np.array(2), num_test=None,
                               cache_dir=pathlib.Path("some/cache"), metric=np.array(["l2"])))
  assert (c.k, c.seed, c.num_test, c.cache_dir, c.metric) == ((1, 2, 3), 2, None, "some/cache",
                                                               ("l2",))
  assert knn_exp.Config.make(dict(k=np.array(3))).k == (3,)
  lc = linear_exp.Config.make(dict(margin=1, learning_rate=0.1, num_epochs=None))
  assert (lc.margin, lc.learning_rate, lc.num_epochs) == (1.0, (0.1,), None)
  with pytest.raises(ConfigError, match=r"--overwrite must be True or False, got 1"):
    common.Launch.make(dict(overwrite=1))


def test_unknown_key_is_refused():
  with pytest.raises(ConfigError, match=r"unknown config keys \['kk'\]"):
    knn_exp.run(dict(kk=1), "/nowhere")


@pytest.mark.parametrize("module, override, message", [
    (knn_exp, dict(num_train=30, cv_folds=50), "--cv_folds=50 is more than the 30 training"),
    (knn_exp, dict(seed=-1), "--seed must be >= 0"),
    (linear_exp, dict(num_epochs=math.nan), "--num_epochs must be a finite number"),
    (linear_exp, dict(num_epochs=math.inf), "--num_epochs must be a finite number"),
    (linear_exp, dict(loss="svm", margin=-1.0), "--margin must be >= 0"),
    (linear_exp, dict(init_scale=0.0), r"--init_scale must be at least 1.18e-38"),
    (study, dict(mlp_hidden_size=0), "--mlp_hidden_size must be >= 1"),
    (study, dict(num_train=3, stages=["knn"]), r"--num_train must be 0 \(all\) or at least 5"),
    (study, dict(num_train=40), r"minibatches of 200 images, but --num_train=40"),  # named
    # --batch_size, which the study does not have
    (study, dict(mlp_epochs=math.nan), "--mlp_epochs must be a finite number"),
])
def test_bad_values_are_refused_before_anything_is_read(module, override, message, tmp_path):
  with pytest.raises(ConfigError, match=message):
    module.run(dict(dataset="folder:/does/not/exist", **override), str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()


def test_unwritable_cache_dir_is_refused(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(ConfigError, match="--cache_dir=.* is not a writable folder"):
    linear_exp.validate(dict(features="hog_hsv", cache_dir=str(blocker / "cache")))
  for module in (knn_exp, linear_exp, study):  # an image folder's decoded images are cached
    with pytest.raises(ConfigError, match=r"^--cache_dir=.*/file is not a writable folder"):
      module.validate(dict(dataset=f"folder:{tmp_path}", cache_dir=str(blocker)))
    module.validate(dict(dataset=f"folder:{tmp_path}", cache_dir=""))  # no cache: fine


def test_stage_errors_name_the_study_flags():
  with pytest.raises(ConfigError, match="--knn_num_train") as e:
    study.validate(dict(knn_num_train=3))  # 3 images cannot make 5 folds
  assert "--num_train" not in str(e.value)


def test_cv_folds_above_the_training_images_there_are(tmp_path):
  from tests.conftest import make_image_folder
  root = str(tmp_path / "images")
  make_image_folder(root, per_class_train=4, per_class_test=1)  # 12 images, 6 for training
  with pytest.raises(ConfigError, match="--cv_folds=10 is more than the 6 training images"):
    knn_exp.run(dict(dataset=f"folder:{root}", num_train=0, num_test=0, num_val=6, k=[1],
                     metric=["l1", "l2"],
                     cv_folds=10), str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()  # nothing staged is left, nor the folder it made


@pytest.mark.parametrize("args, message", [
    (["--process_id=2", "--num_processes=2", "--coordinator_address=127.0.0.1:1"],
     "error: --process_id must be in [0, 1] (--num_processes=2), got 2"),
    (["--num_epochs=nan"], "error: --num_epochs must be a finite number, got nan"),
    (["--num_epochs=abc"], "error: --num_epochs must be a number, got 'abc'"),
    (["--learning_rate=0.1", "--reg=1", "--num_steps=-1"],
     "error: --num_steps must be >= 0 (0: the steps of --num_epochs), got -1"),
    (["--dataset="], "error: --dataset is empty; give a dataset: cifar10 or folder:PATH"),
])
def test_command_line_errors_are_one_line_before_any_work(args, message, tmp_path, cli):
  proc = cli.run("experiments.linear", f"--workdir={tmp_path}/wd", "--dataset=folder:/nowhere",
                 *args)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [message]
  assert not (tmp_path / "wd").exists()


def test_the_command_line_runner_of_these_tests_stops_a_command_that_hangs(cli):
  # (tests/cli.py; subprocess.run(timeout=...) did this for the tests before it)
  with pytest.raises(subprocess.TimeoutExpired):
    cli.run("http.server", "0", "--bind", "127.0.0.1", timeout=1)  # serves until stopped
  assert cli.run("experiments.linear", "--num_epochs=abc").returncode == 2  # the server lives


def test_a_missing_dataset_found_once_the_devices_are_up_is_one_line(tmp_path):
  """JAX's notes on the accelerators it did not find (e.g. "Unable to initialize backend
  'tpu'") stay out of the one line: a new process, JAX looking for every kind of device."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("JAX_PLATFORMS", None)  # as for a user
  proc = subprocess.run([sys.executable, "-m", "experiments.linear", f"--workdir={tmp_path}/wd",
                         "--dataset=folder:/nowhere", "--learning_rate=0.1", "--reg=1",
                         "--num_steps=1"], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env=env)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      "error: dataset folder /nowhere does not exist (expected PATH/train/<class>/*.jpg and "
      "PATH/test/<class>/*.jpg)"]
  assert not (tmp_path / "wd").exists()


def test_strict_json_and_the_users_umask(tmp_path):
  old = os.umask(0o027)
  try:
    path = files.write_json(str(tmp_path / "x.json"), {"a": math.nan, "b": [math.inf, 1.0]})
    assert json.loads(open(path).read()) == {"a": None, "b": [None, 1.0]}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
  finally:
    os.umask(old)


def test_library_errors_are_printed_in_flag_names():
  from jaxlin.errors import InputError
  e = InputError("learning_rates must be positive, got [-1.0]", argument="learning_rates")
  assert common.flag_message(e, linear_exp.FLAGS_OF_ARGUMENTS) == (
      "--learning_rate must be positive, got [-1.0]")
  e = InputError("num_train=5000 must be in [1, 36]: the split has 36 images",
                 argument="num_train")
  assert common.flag_message(e) == "--num_train=5000 must be in [1, 36]: the split has 36 images"
  # An argument no flag sets keeps the library's name (it became "--y", a flag that no
  # program has, for labels read from a corrupt cache).
  e = InputError("y must lie in [0, num_classes) = [0, 3), found 7", argument="y")
  assert common.flag_message(e, known={"num_train", "dataset"}) == e.message
  e = InputError("num_train=5000 must be in [1, 36]", argument="num_train")
  assert common.flag_message(e, known={"num_train"}) == "--num_train=5000 must be in [1, 36]"
  e = ConfigError("--hidden_size must be >= 1, got 0", argument="hidden_size")
  renamed = common.rename_flags(e, study.STAGE_FLAGS["mlp"])
  assert str(renamed) == "--mlp_hidden_size must be >= 1, got 0"
  assert renamed.argument == "mlp_hidden_size"


def test_the_defaults_the_published_figures_were_run_with():
  """WORKSPACE.md's figures come from commands that leave these at their defaults (and every
  subset, fold and initialisation from these seed streams): changing one is a decision that
  reruns them, not an edit."""
  assert cfg.SEEDS == {"train_subset": 1, "test_subset": 2, "folds": 3, "shown_images": 4,
                       "train_sample": 5, "cv_subset": 6}
  data_defaults = dict(dataset="cifar10", seed=0, num_val=1000, shard="auto")
  for module in (knn_exp, linear_exp, study):
    c = module.Config()
    assert {k: getattr(c, k) for k in data_defaults} == data_defaults, module.__name__
    if module is not knn_exp:  # every image (kNN's are below)
      assert (c.num_train, c.num_test) == (0, 0), module.__name__
  k = knn_exp.Config()
  assert (k.num_train, k.num_test, k.k, k.metric, k.cv_folds, k.cv_num_train, k.tie_break,
          k.search) == (5000, 500, (1, 3, 5, 8, 10, 12, 15, 20, 50, 100), ("l1", "l2"), 5, 0,
                        "smallest_label", "auto")
  lin = linear_exp.Config()
  assert (lin.model, lin.features, lin.loss, lin.optimizer, lin.num_steps, lin.init_scale) == (
      "linear", "pixels", "softmax", "momentum", 0, None)
  # The defaults of flags only some runs use, filled in where they apply (None elsewhere).
  assert (linear_exp.HIDDEN_SIZE, linear_exp.MARGIN, linear_exp.BATCH_SIZE,
          linear_exp.SCHEDULE) == (500, 1.0, 200, "cosine")
  mlp_svm = linear_exp.validate(dict(model="mlp", loss="svm"))
  assert (mlp_svm.hidden_size, mlp_svm.margin, mlp_svm.batch_size, mlp_svm.schedule) == (
      500, 1.0, 200, "cosine")
  lbfgs = linear_exp.validate(dict(optimizer="lbfgs"))
  assert (lbfgs.hidden_size, lbfgs.margin, lbfgs.batch_size, lbfgs.schedule) == (
      None, None, None, "constant")
  assert linear_exp.MODEL_DEFAULTS == {
      ("linear", "pixels"): dict(learning_rate=(3e-4, 1e-3, 3e-3), reg=(1e-2, 1e-1, 1.0),
                                 num_epochs=5.0),
      ("linear", "hog_hsv"): dict(learning_rate=(1e-3, 3e-3, 1e-2), reg=(1e-4, 1e-3, 1e-2),
                                  num_epochs=10.0),
      ("mlp", "pixels"): dict(learning_rate=(3e-3, 1e-2), reg=(1e-3, 3e-3), num_epochs=15.0),
      ("mlp", "hog_hsv"): dict(learning_rate=(1e-2, 3e-2), reg=(1e-4, 1e-3), num_epochs=20.0)}
  s = study.Config()
  assert (s.stages, s.knn_num_train, s.mlp_hidden_size, s.mlp_epochs) == (
      study.STAGES, 5000, 500, None)
  assert study.STAGES == ("knn", "svm", "softmax", "svm_features", "mlp", "mlp_features")


def test_list_values_are_integers_or_numbers_exactly():
  import decimal  # pylint: disable=import-outside-toplevel
  assert cfg.ints([3, 3.0, np.float32(4), np.int64(5), "6", " 7 "], "k") == (3, 3, 4, 5, 6, 7)
  for bad in (2.5, np.float32(2.5), decimal.Decimal("2.5"), True, np.bool_(False), None, "x",
              float("nan"), float("inf"), 1e300, [1]):
    with pytest.raises(ConfigError, match="--k must be a comma-separated list of integers"):
      cfg.ints([1, bad], "k")
  assert cfg.floats((v for v in [1, "2.5", np.float32(0.5)]), "reg") == (1.0, 2.5, 0.5)
  for bad in (True, None, "x", [1.0]):
    with pytest.raises(ConfigError, match="--reg must be a comma-separated list of numbers"):
      cfg.floats([1.0, bad], "reg")


@pytest.mark.parametrize("launch, message", [
    (dict(host_timeout=0.0), r"--host_timeout must be > 0 and at most 86400 seconds "
     r"\(a day\), got 0.0"),
    (dict(host_timeout=3e9), r"--host_timeout must be > 0 and at most 86400 seconds "
     r"\(a day\), got 3000000000.0"),  # JAX's timeouts are C ints
    (dict(host_timeout=math.inf), r"--host_timeout must be a finite number, got inf"),
    (dict(coordinator_address="h:1", num_processes=2),
     r"a multi-host run needs all of --coordinator_address, --num_processes and --process_id$"),
    (dict(num_processes=2, process_id=0),
     r"a multi-host run needs all of --coordinator_address, --num_processes and --process_id$"),
    (dict(process_id=1),  # was a one-process run, the flag ignored
     r"a multi-host run needs all of --coordinator_address, --num_processes and --process_id$"),
    (dict(coordinator_address="h:1", num_processes=0, process_id=0),
     r"--num_processes must be >= 1, got 0"),
    (dict(workdir=""), r"--workdir is required"),
    # No port: a 24-line IndexError from inside JAX; a port beyond 65535: a wait for peers.
    (dict(coordinator_address="127.0.0.1", num_processes=2, process_id=0),
     r"--coordinator_address must be HOST:PORT with a port from 1 to 65535 \(e.g. "
     r"10.0.0.1:1234 or \[fe80::1\]:1234, process 0's host\), got '127.0.0.1'$"),
    (dict(coordinator_address="h:99999", num_processes=2, process_id=0), r"--coordinator_addr"),
    (dict(coordinator_address=":80", num_processes=2, process_id=0), r"--coordinator_addr"),
    (dict(coordinator_address="::1", num_processes=2, process_id=0), r"--coordinator_addr"),
    (dict(coordinator_address="h:\u00b2", num_processes=2, process_id=0),  # a ValueError
     r"--coordinator_addr"),
])
def test_launch_options_are_checked(launch, message):
  with pytest.raises(ConfigError, match=f"^{message}"):
    common.validate_launch(common.Launch.make(dict(dict(workdir="wd"), **launch)))


def test_a_run_is_multi_host_when_any_multi_host_option_is_given():
  assert not common.Launch(workdir="wd").multi_host
  for given in (dict(distributed=True), dict(coordinator_address="h:1"), dict(num_processes=2)):
    assert common.Launch(workdir="wd", **given).multi_host, given
  for address in ("h:1", "[::1]:8476", "10.0.0.1:65535", "dns:///host-a:1234", "[fe80::1%eth0]:9"):
    ok = common.Launch(workdir="wd", coordinator_address=address, num_processes=2, process_id=1)
    assert common.validate_launch(ok) is ok


def test_shared_data_fields_are_checked_and_none_sizes_mean_all():
  with pytest.raises(ConfigError, match=r"^--num_val must be >= 0, got -1$"):
    common.validate_data(common.DataConfig(num_val=-1))
  with pytest.raises(ConfigError,
                     match=r"^unknown --shard 'rows'; choose from auto, none, queries, database$"):
    common.validate_data(common.DataConfig(shard="rows"))
  c = common.validate_data(common.DataConfig(num_train=None, num_test=None))
  assert (c.num_train, c.num_test) == (0, 0)


def test_flag_messages_name_the_flag_once_and_leave_longer_names_alone():
  from jaxlin.errors import InputError
  # an argument the message does not name is put in front of it
  assert common.flag_message(InputError("values must be positive", argument="learning_rates"),
                             linear_exp.FLAGS_OF_ARGUMENTS) == (
                                 "--learning_rate: values must be positive")
  # the first mention of the argument becomes the flag, the rest of the words stay
  assert common.flag_message(InputError("k=0: every k must be >= 1", argument="k")) == (
      "--k=0: every k must be >= 1")
  # --hidden_size renamed, --hidden_sizes (another name) not
  e = ConfigError("--hidden_size must be <= --hidden_sizes", argument="hidden_size")
  assert common.flag_message(e, {"hidden_size": "mlp_hidden_size"}) == (
      "--mlp_hidden_size must be <= --hidden_sizes")


def test_progress_bars_follow_the_callbacks_on_a_terminal_only(monkeypatch):
  import io  # pylint: disable=import-outside-toplevel

  class Terminal(io.StringIO):
    def isatty(self):
      return True

  monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: no bar
  monkeypatch.delenv("JAXLIN_NO_PROGRESS", raising=False)
  assert common.progress("search").disable
  monkeypatch.setattr(sys, "stderr", Terminal())
  monkeypatch.setenv("JAXLIN_NO_PROGRESS", "1")  # off on request
  assert common.progress("search").disable
  monkeypatch.setenv("JAXLIN_NO_PROGRESS", "0")
  bar = common.progress("search", unit="tile")
  try:
    assert not bar.disable
    callback = common.tile_callback(bar)
    callback(3, 8)
    assert (bar.n, bar.total) == (3, 8)
    callback(8, 8)
    assert (bar.n, bar.total) == (8, 8)
  finally:
    bar.close()


def test_only_the_note_on_a_missing_tpu_library_is_hidden():
  import logging  # pylint: disable=import-outside-toplevel
  cfg.quiet_backend_search()
  cfg.quiet_backend_search()  # once is enough: no second filter
  logger = logging.getLogger("jax._src.xla_bridge")
  assert len([f for f in logger.filters if type(f).__name__ == "_NoMissingLibtpu"]) == 1

  def shown(level, message, *args):
    return logger.filter(logger.makeRecord(logger.name, level, __file__, 1, message, args, None))
  missing = ("INTERNAL: Failed to open libtpu.so: libtpu.so: cannot open shared object file: "
             "No such file or directory")
  assert not shown(logging.INFO, "Unable to initialize backend '%s': %s", "tpu", missing)
  assert shown(logging.INFO, "Unable to initialize backend '%s': %s", "tpu",
               "ABORTED: The TPU is already in use by process with pid 12.")  # installed, failed
  assert shown(logging.WARNING, "Unable to initialize backend '%s': %s", "tpu", missing)
  assert shown(logging.INFO, "Unable to initialize backend 'cuda': no GPU")


def test_per_class_accuracy_in_results_is_float64_and_none_for_an_absent_class():
  assert common.per_class_accuracy([[9, 8, 0], [0, 0, 0], [1, 2, 3]], ["a", "b", "c"]) == {
      "a": 9 / 17, "b": None, "c": 0.5}
  assert 9 / 17 == 0.5294117647058824  # float32 would write 0.529411792755127


def test_out_of_memory_is_one_line_naming_what_to_ask_less_of():
  # --model=mlp --hidden_size=50000000 was a 40-line JaxRuntimeError traceback, exit 1.
  xla = jax.errors.JaxRuntimeError("INTERNAL: Error dispatching computation: Out of memory "
                                   "allocating 38400000000 bytes.")
  assert common.out_of_memory(xla, common.MEMORY_ADVICE["linear"]) == (
      "out of memory (35.8 GiB could not be allocated); ask for a smaller model or batch "
      "(--hidden_size, --batch_size), fewer settings (--learning_rate x --reg) or images "
      "(--num_train), or use a machine with more memory")
  assert common.out_of_memory(MemoryError(), "less").startswith("out of memory (MemoryError)")
  assert common.out_of_memory(jax.errors.JaxRuntimeError("INVALID_ARGUMENT: x"), "") is None
  # Each program's advice names only its own flags (the knn and study have no --hidden_size).
  for kind, module in (("knn", knn_exp), ("linear", linear_exp), ("study", study)):
    fields = {f.name for f in dataclasses.fields(module.Config)}
    for flag in re.findall(r"--(\w+)", common.MEMORY_ADVICE[kind]):
      assert flag in fields, (kind, flag)
  assert common.out_of_memory(RuntimeError("Out of memory"), "") is None  # not XLA's: a bug


def test_choice_flags_take_any_case_as_metric_does():
  c = linear_exp.validate(dict(loss="SVM", optimizer="Momentum", schedule="COSINE ",
                               model="Linear", features="HOG_HSV"))
  assert (c.loss, c.optimizer, c.schedule, c.model, c.features) == (
      "svm", "momentum", "cosine", "linear", "hog_hsv")
