import errno
import json
import math
import os
import re
import subprocess
import sys
import types
import urllib.error

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import common
from experiments import linear as linear_exp
from experiments import predict
from jaxlin import checkpoint, data, linear, train
from experiments.config import ConfigError
from jaxlin.errors import DataError, DivergenceError
from tests.conftest import make_image_folder

# Module fixtures build one shared run: keep this file on one test worker.
pytestmark = pytest.mark.xdist_group("test_linear_experiment")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_val=6, learning_rate=[1e-3, 1e-2], reg=[0.0, 0.1], batch_size=8, num_epochs=8)


def _strict(text):
  def refuse(name):
    raise ValueError(f"not strict JSON: {name}")
  return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("linear") / "images")
  return root, make_image_folder(root)


@pytest.fixture(scope="module")
def softmax_run(folder, tmp_path_factory):
  """One run shared by the checks below: a 3 x 2 grid whose (lr=1e6, reg=0.1) member
  diverges, written under a umask of 027."""
  root, _ = folder
  wd = tmp_path_factory.mktemp("softmax") / "wd"
  old = os.umask(0o027)
  try:
    res = linear_exp.run(dict(SMALL, dataset=f"folder:{root}", loss="softmax",
                              learning_rate=[1e-3, 1e-2, 1e6]), str(wd))
  finally:
    os.umask(old)
  return res, wd


def test_run_end_to_end_and_reloaded_model_predicts_the_same(folder, softmax_run):
  root, _ = folder
  res, wd = softmax_run
  for f in ("config.json", "metrics.jsonl", "results.json", "model.npz", "plots/weights.png",
            "plots/loss.png", "plots/grid.png", "plots/confusion.png"):
    assert (wd / f).stat().st_size > 0, f
  assert len(res["grid"]) == 6 and res["compiles"] == 1
  best = max(g["val_accuracy"] for g in res["grid"] if g["val_accuracy"] is not None)
  assert res["chosen"]["val_accuracy"] == best
  assert res["test_accuracy"] > 0.9  # the generated classes differ by colour
  lines = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert len(lines) == 6 * 8  # 6 settings x 8 epochs (one log per epoch)
  assert {"step", "loss", "train_accuracy", "val_accuracy", "learning_rate", "reg"} <= set(lines[0])

  # The saved model (numpy only) reproduces the run's test predictions.
  model = checkpoint.load(str(wd / "model.npz"))
  assert model.kind == "linear" and model.loss == "softmax" and model.image_shape == (8, 8, 3)
  ds = data.load(f"folder:{root}", num_val=6)
  pred_np = model.scores(ds.test.images).argmax(1)
  params = {k: jnp.asarray(v) for k, v in model.params.items()}
  x = (data.preprocess(ds.test.images, jnp.asarray(model.mean_image)) / model.scale)
  np.testing.assert_array_equal(pred_np, np.asarray(linear.scores(params, x).argmax(1)))
  assert np.mean(pred_np == ds.test.labels) == pytest.approx(res["test_accuracy"])


def test_a_member_diverged_with_a_finite_last_loss_has_no_final_loss():
  """A member that diverged keeps its last finite parameters, so its later losses can be
  finite: results.json gave it a plausible final_loss (1.95, the review's lr=3e38 run)."""
  fit = types.SimpleNamespace(steps=4, compile_count=1, diverged_at=np.array([-1, 1]),
                              history=[{"epoch": 1.0, "loss": np.array([0.7, 1.95])}])
  ds = types.SimpleNamespace(train=types.SimpleNamespace(total=8), val=types.SimpleNamespace(
      total=2), test=types.SimpleNamespace(total=2), class_names=("a", "b"))
  c = linear_exp.Config(dataset="folder:x", learning_rate=(1e-3, 3e38), reg=(0.1,))
  res = linear_exp._results(c, ds, 3, [(1e-3, 0.1), (3e38, 0.1)], fit, 0,  # pylint: disable=protected-access
                            np.array([0.5, np.nan]), np.eye(2, dtype=int), 1.0)
  assert [g["final_loss"] for g in res["grid"]] == [0.7, None]
  assert [g["diverged_at_step"] for g in res["grid"]] == [None, 1]


def test_a_diverged_member_is_strict_json_and_files_get_the_users_umask(softmax_run):
  res, wd = softmax_run
  diverged, = [g for g in res["grid"] if (g["learning_rate"], g["reg"]) == (1e6, 0.1)]
  assert diverged["diverged_at_step"] is not None and diverged["val_accuracy"] is None
  on_disk = _strict((wd / "results.json").read_text())
  assert on_disk["grid"][res["grid"].index(diverged)]["final_loss"] is None
  lines = [_strict(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert any(l["loss"] is None for l in lines)
  # From the logged step whose interval holds the divergence on, the setting's line has no
  # figures (not the accuracies of its frozen parameters), as results.json (steps from 1).
  mine = [l for l in lines if (l["learning_rate"], l["reg"]) == (1e6, 0.1)]
  at = diverged["diverged_at_step"]
  for l in mine:
    figures = [l["loss"], l["train_accuracy"], l["val_accuracy"]]
    if l["step"] >= at:
      assert figures == [None] * 3 and l["diverged_at_step"] == at, l
    else:
      assert None not in figures and "diverged_at_step" not in l, l
  assert any(l["step"] >= at for l in mine)
  _strict((wd / "config.json").read_text())
  for dirpath, _, names in os.walk(wd):
    for name in names:
      assert oct(os.stat(os.path.join(dirpath, name)).st_mode & 0o777) == oct(0o640), name


def test_tensorboard_curves_equal_metrics_jsonl(softmax_run):
  _, wd = softmax_run
  tf = data._tf()  # pylint: disable=protected-access
  lines = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  members = sorted(os.listdir(wd / "tensorboard"))
  assert len(members) == 6 and "lr=0.01,reg=0.1" in members
  for member in members:
    lr, reg = (float(v.split("=")[1]) for v in member.split(","))
    curves = {}
    for path in (wd / "tensorboard" / member).iterdir():
      for event in tf.compat.v1.train.summary_iterator(str(path)):
        for v in event.summary.value:
          assert v.metadata.plugin_data.plugin_name == "scalars"
          curves.setdefault(v.tag, []).append((event.step, float(tf.make_ndarray(v.tensor))))
    mine = [l for l in lines if (l["learning_rate"], l["reg"]) == (lr, reg)]
    assert len(mine) == 8
    for tag in ("loss", "train_accuracy", "val_accuracy", "scheduled_learning_rate"):
      assert [s for s, _ in curves[tag]] == [l["step"] for l in mine], tag
      expected = [np.nan if l[tag] is None else l[tag] for l in mine]  # null in JSON: NaN here
      np.testing.assert_allclose([v for _, v in curves[tag]], expected, rtol=1e-6)
  rates = [l["scheduled_learning_rate"] for l in lines if l["learning_rate"] == 1e-2]
  assert rates[0] > rates[3] > rates[7] > 0  # cosine decay


def test_tensorboard_folders_versions_and_metadata(tmp_path, monkeypatch):
  from experiments import tensorboard  # pylint: disable=import-outside-toplevel
  assert tensorboard.member_name(1e-3, 0.0) == "lr=0.001,reg=0"
  assert tensorboard.member_name(0.000125, 2.5e-5) == "lr=0.000125,reg=2.5e-05"
  assert tensorboard.member_name(None, 1.0) == "line_search,reg=1"
  assert tensorboard.member_name(1.0, 0.5) == "lr=1,reg=0.5"
  tf = data._tf()  # pylint: disable=protected-access
  monkeypatch.setattr(tensorboard, "time", types.SimpleNamespace(time=lambda: 1.7e9))
  writers = [tensorboard.ScalarWriter(str(tmp_path)) for _ in range(2)]
  try:
    for w in writers:  # two writers of one member in the same second: two files
      w.write("m", 127, {"loss": 1e39})  # the largest one-byte varint, a value beyond float32
    paths = sorted((tmp_path / "m").iterdir())
    assert len(paths) == 2 and all(".1700000000." in p.name for p in paths)
    # flushed at each step: TensorBoard shows a run in progress
    events = list(tf.compat.v1.train.summary_iterator(str(paths[0])))
  finally:
    for w in writers:
      w.close()
  assert events[0].file_version == "brain.Event:2" and events[0].wall_time == 1.7e9
  assert events[1].step == 127
  (value,) = events[1].summary.value
  assert (value.tag, value.metadata.data_class) == ("loss", 1)  # DATA_CLASS_SCALAR
  assert float(tf.make_ndarray(value.tensor)) == np.inf


def test_tensorboard_close_closes_every_file_then_raises_the_first_error():
  from experiments import tensorboard  # pylint: disable=import-outside-toplevel

  class File:
    def __init__(self, error):
      self.error, self.closed = error, False

    def close(self):
      self.closed = True
      if self.error:
        raise self.error

  w = tensorboard.ScalarWriter("unused")
  files = [File(OSError("disk full")), File(None), File(OSError("quota"))]
  w._files = dict(zip("abc", files))  # pylint: disable=protected-access
  with pytest.raises(OSError, match="disk full"):
    w.close()
  assert all(f.closed for f in files)
  w.close()  # closed once: nothing left to close
  w._files = {"a": File(OSError("again"))}  # pylint: disable=protected-access
  w.close(quiet=True)  # while another error is on its way: that one is the one to see


def test_a_full_disk_while_saving_the_model_is_the_disks_error(tmp_path, monkeypatch):
  """checkpoint.save's InputError named its path (the run's staging folder) and a fix of the
  library's ("pass a path in a writable folder"); the run raises the disk's own error, which
  the command line says in one line, naming the workdir's model.npz."""
  from jaxlin import files  # pylint: disable=import-outside-toplevel
  real = files.atomic_write

  def full(path, write, **kw):
    def fail(f):
      raise OSError(errno.ENOSPC, "No space left on device")  # as a write on a full disk
    return real(path, fail, **kw)

  monkeypatch.setattr(files, "atomic_write", full)
  staged = tmp_path / "wd" / ".staging-123"
  staged.mkdir(parents=True)
  with pytest.raises(OSError, match="No space left") as e:
    linear_exp.save_model(str(staged / "model.npz"), params={"W": np.zeros((4, 2), np.float32),
                                                             "b": np.zeros(2, np.float32)},
                          class_names=("a", "b"), kind="linear", loss="svm", features="pixels",
                          mean_image=np.zeros((2, 2, 1), np.float32), scale=1.0)
  assert not list(staged.iterdir())
  line = common.os_error_line(e.value, str(tmp_path / "wd"))
  assert line == (f"No space left on device ({tmp_path}/wd/model.npz): free some space on that "
                  "disk, or choose a --workdir on another; nothing of this run was written, "
                  "and the workdir keeps its previous run")
  assert common.file_error(e.value) and common.file_error(OSError(errno.EFBIG, "too large"))
  assert not common.file_error(urllib.error.URLError("unreachable"))  # no file's: a traceback
  # A path outside the workdir (the dataset's, a cache's): no advice about the workdir.
  assert common.os_error_line(PermissionError(13, "Permission denied", "/data/x.png"),
                              str(tmp_path / "wd")) == (
      "Permission denied (/data/x.png): the run could not use that path: check it (its "
      "permissions, the disk), then run again; nothing of this run was written, and the "
      "workdir keeps its previous run")


def test_predict_script_classifies_files_and_reports_bad_ones(folder, softmax_run, tmp_path,
                                                             cli):
  _, arrays = folder
  _, wd = softmax_run
  frog = next(p for p in arrays if "/test/frog/" in p)
  big = tmp_path / "big_frog.jpg"  # other size and format: resized to the model's 8x8
  Image.fromarray(arrays[frog]).resize((64, 48), Image.NEAREST).save(big, quality=95)
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"not an image")
  model = checkpoint.load(str(wd / "model.npz"))
  out = predict.classify(model, [frog, str(bad), str(big)], top=2)
  assert out[0][1][0][0] == "frog" and out[2][1][0][0] == "frog"
  assert sum(v for _, v in out[0][1]) <= 1.0 + 1e-6
  assert out[1][1] is None and "cannot read" in out[1][2]
  # The command line on the same pixels as a TIFF (read by Pillow: the decoder above is
  # TensorFlow's, whose import would take most of this test's time).
  tiff = str(tmp_path / "frog.tif")
  Image.fromarray(arrays[frog]).save(tiff)
  proc = cli.run("experiments.predict", f"--model={wd}/model.npz", tiff, bad)
  assert proc.returncode == 1
  assert proc.stdout.startswith(f"{tiff}: frog ")
  assert proc.stderr.strip() == f"error: cannot read {bad}: not an image file"


def test_model_loads_without_tensorflow(softmax_run):
  _, wd = softmax_run
  code = ("import sys, numpy as np; from jaxlin import checkpoint; "
          f"m = checkpoint.load({str(wd / 'model.npz')!r}); "
          "m.scores(np.zeros((2, 8, 8, 3), np.uint8)); "
          "assert 'tensorflow' not in sys.modules and 'jax' not in sys.modules, 'imported'")
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60,
                 env=dict(os.environ, PYTHONPATH=ROOT))


def test_corrupt_model_file(tmp_path):
  bad = tmp_path / "m.npz"
  bad.write_bytes(b"junk")
  with pytest.raises(ValueError, match="is not a jaxlin model file"):
    checkpoint.load(str(bad))
  with pytest.raises(ValueError, match="does not exist"):
    checkpoint.load(str(tmp_path / "none.npz"))


@pytest.mark.parametrize("override, message", [
    (dict(loss="hinge"), "unknown --loss 'hinge'"),
    (dict(optimizer="rmsprop"), "unknown --optimizer 'rmsprop'"),
    (dict(optimizer="lbfgs", learning_rate=[0.5]),
     r"--learning_rate has no effect with --optimizer=lbfgs \(its line search"),
    (dict(learning_rate=[-1.0]), "must be finite numbers > 0"),
    (dict(reg=["a"]), "comma-separated list of numbers"),
    (dict(learning_rate=[True, 0.1]), "list of numbers, got 'True,0.1'"),  # was 1.0
    (dict(batch_size=0), "--batch_size must be >= 1"),
    (dict(num_epochs=0, num_steps=0), "positive --num_steps or --num_epochs"),
    (dict(schedule="linear"), "unknown --schedule"),
    (dict(loss="softmax", margin=2.0), r"--margin is the SVM's; --loss=softmax has none"),
    (dict(optimizer="lbfgs", schedule="step"),
     r"--schedule has no effect with --optimizer=lbfgs \(its line search sets the step\)"),
    (dict(optimizer="lbfgs", batch_size=50),
     r"--batch_size has no effect with --optimizer=lbfgs \(every step uses the whole"),
    (dict(hidden_size=10), r"--hidden_size is the network's; --model=linear has no hidden"),
    # Given at their defaults, these had no effect and were taken without a word.
    (dict(hidden_size=500), r"--hidden_size is the network's; --model=linear has no hidden"),
    (dict(loss="softmax", margin=1.0), r"--margin is the SVM's; --loss=softmax has none"),
    (dict(optimizer="lbfgs", schedule="cosine"), r"--schedule has no effect with --optimizer"),
    (dict(optimizer="lbfgs", batch_size=200), r"--batch_size has no effect with --optimizer"),
    # Training splits its batches; a split database is kNN's (it was taken as queries).
    (dict(shard="database"), r"--shard=database splits kNN's database; training splits its "
     "batches: use auto, queries or none"),
    # Weights of exactly 0 (linear), or the library's words for a flag (mlp).
    (dict(init_scale=1e-50), r"--init_scale must be at least 1.18e-38 \(float32's smallest "
     r"normal number: smaller weights are flushed to 0"),
    (dict(model="mlp", init_scale=1e-40), r"--init_scale must be at least 1.18e-38"),
    (dict(reg=[math.inf]), r"--reg values must be finite numbers >= 0, got \[inf\]"),
    # Both were logged, and drawn, as lr=0.001: one TensorBoard folder, one loss curve.
    (dict(learning_rate=[1e-3, 0.0010000001]),
     r"--learning_rate values 0.001 and 0.0010000001 print alike \(0.001\)"),
    (dict(reg=[0.1, 0.10000001]), r"--reg values 0.1 and 0.10000001 print alike"),
    # Steps won, and config.json recorded the 3 epochs that were not trained.
    (dict(num_steps=7, num_epochs=3.0),
     r"--num_steps=7 and --num_epochs=3 both set how long to train; give one of them"),
])
def test_bad_config_rejected_before_work(override, message, tmp_path):
  with pytest.raises(ConfigError, match=message):
    linear_exp.run(dict(dataset="folder:/nowhere", **override), str(tmp_path))
  assert not (tmp_path / "config.json").exists()


def test_steps_record_no_epochs():
  # config.json recorded the model's 5 default epochs for a run that --num_steps decided.
  for epochs in (None, 0.0):
    assert linear_exp.validate(dict(dataset="folder:x", num_steps=7,
                                    num_epochs=epochs)).num_epochs is None
  assert linear_exp.validate(dict(dataset="folder:x")).num_epochs == 5.0


def test_lbfgs_takes_fifty_steps_unless_told():
  # An lbfgs epoch is one full-batch step: the model's 5 epochs were 5 steps (35 % on
  # CIFAR-10 where 50 steps reach 41 %).
  c = linear_exp.validate(dict(dataset="folder:x", optimizer="lbfgs"))
  assert (c.num_steps, c.num_epochs) == (50, None)
  c = linear_exp.validate(dict(dataset="folder:x", optimizer="lbfgs", num_epochs=3.0))
  assert (c.num_steps, c.num_epochs) == (0, 3.0)
  c = linear_exp.validate(dict(dataset="folder:x", optimizer="lbfgs", num_steps=7))
  assert c.num_steps == 7


def test_divergence_leaves_no_results(folder, tmp_path):
  root, _ = folder
  with pytest.raises(DivergenceError, match="smaller learning_rates") as raised:
    linear_exp.run(dict(dataset=f"folder:{root}", num_val=6, optimizer="sgd", learning_rate=[1e4],
                        reg=[10.0], batch_size=8, num_epochs=2), str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()  # the folder this first run made is gone too
  # The library names its argument; the command line names the flag that sets it.
  line = common.flag_message(raised.value, linear_exp.FLAGS_OF_ARGUMENTS)
  assert "try smaller --learning_rate" in line and "learning_rates" not in line
  # lr x reg = 1e5: the penalty alone diverges, so the advice names --reg too.
  assert line.endswith("try smaller --learning_rate, or a smaller --reg (learning rate x reg "
                       "reaches 100000: at 1 or more the penalty alone makes SGD's steps grow)")
  # Advice for library callers (their loss, their optimizer) is not the command line's.
  assert "apply_if_finite" not in line
  assert str(raised.value).endswith("(optax.apply_if_finite)")


def test_divergence_advice_names_what_the_command_line_can_set():
  base = "training diverged: the loss or the parameters became inf or NaN at step {} for " \
         "every setting"
  lbfgs = lambda step: DivergenceError(  # as the library raises it without a learning rate
      base.format(step), advice="try a smaller learning rate in the optimizer",
      argument="optimizer", library_hint="(optax.apply_if_finite)", step=step)
  late = linear_exp._divergence_in_flags(lbfgs(7), line_search=True)
  assert common.flag_message(late) == base.format(7) + (
      "; try --optimizer=momentum (or sgd, adam) with its --learning_rate")
  first = linear_exp._divergence_in_flags(lbfgs(1), line_search=True)
  assert common.flag_message(first) == base.format(1) + (
      "; try a smaller --init_scale (the loss at the starting weights may not be finite)")
  sgd = lambda step: DivergenceError(base.format(step) + " (largest learning rate 10)",
                                     advice="try smaller learning_rates",
                                     argument="learning_rates", library_hint="hint", step=step)
  flags = linear_exp.FLAGS_OF_ARGUMENTS
  assert linear_exp._divergence_in_flags(sgd(3), line_search=False).step == 3
  assert common.flag_message(linear_exp._divergence_in_flags(sgd(3), False), flags) == (
      base.format(3) + " (largest learning rate 10); try smaller --learning_rate")
  assert common.flag_message(linear_exp._divergence_in_flags(sgd(1), False), flags) == (
      base.format(1) + " (largest learning rate 10); try smaller --learning_rate, or a "
      "smaller --init_scale (the starting weights may be to blame)")


def test_one_training_image_is_one_error_before_training(folder, tmp_path):
  """One image has no pixel spread to scale by: it used to fail after training (a NaN
  scale in the evaluation, or a model that could not be saved)."""
  root, _ = folder
  with pytest.raises(DataError, match=r"are all the same .* nothing to learn from; use more, "
                     r"different training images \(--num_train\)"):
    linear_exp.run(dict(dataset=f"folder:{root}", num_train=1, num_val=1, num_test=2,
                        batch_size=1, num_steps=2), str(tmp_path / "wd"))
  assert not (tmp_path / "wd" / "results.json").exists()
  # Every image taken already (--num_train=0): more --num_train cannot help, --num_val can.
  n = data.split_size(f"folder:{root}", "train")
  with pytest.raises(DataError, match=r"\(a smaller --num_val: the training images are the "
                     r"split's others\)"):
    linear_exp.run(dict(dataset=f"folder:{root}", num_train=0, num_val=n - 1, num_test=2,
                        batch_size=1, num_steps=2), str(tmp_path / "wd"))


def test_hog_on_images_smaller_than_a_cell_names_the_flags(tmp_path):
  make_image_folder(str(tmp_path / "tiny"), per_class_train=4, per_class_test=2, size=4)
  with pytest.raises(ConfigError, match=r"cells of 8 x 8 pixels, but the images are 4 x 4; use "
                                        r"--features=pixels"):  # named a --cell flag
    linear_exp.run(dict(dataset=f"folder:{tmp_path / 'tiny'}", num_val=2, batch_size=2,
                        num_steps=1, features="hog_hsv"), str(tmp_path / "wd"))


def test_epochs_beyond_the_step_counter_are_one_error(folder, tmp_path):
  # --num_epochs=1e308 overflowed int() with a traceback; 1e300 would never have ended.
  with pytest.raises(ConfigError, match=r"--num_epochs=1e\+308 makes .* steps of .*; at most "
                     r"2147483647 steps") as e:
    linear_exp.run(dict(dataset=f"folder:{folder[0]}", num_val=6, batch_size=8, num_epochs=1e308),
                   str(tmp_path / "wd"))
  assert e.value.argument == "num_epochs" and not (tmp_path / "wd").exists()


@pytest.fixture(scope="module")
def folder16(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("linear16") / "images")
  make_image_folder(root, size=16)  # 16x16: 2x2 HOG cells
  return root


@pytest.mark.parametrize("model, feats, loss, optimizer", [("mlp", "pixels", "softmax", None),
                                                          ("linear", "hog_hsv", "svm", "lbfgs"),
                                                          ("mlp", "hog_hsv", "svm", None)])
def test_network_and_feature_runs_end_to_end(folder16, tmp_path, model, feats, loss, optimizer):
  root = folder16
  wd = tmp_path / "wd"
  cache = tmp_path / "cache"
  cfg = dict(dataset=f"folder:{root}", model=model, features=feats, loss=loss,
             num_val=6, reg=[1e-3], batch_size=8, num_epochs=10, cache_dir=str(cache))
  if model == "mlp":
    cfg.update(hidden_size=16)
  if optimizer == "lbfgs":  # full batch: --batch_size is refused
    del cfg["batch_size"]
    cfg.update(optimizer="lbfgs", reg=[1e-3, 1e-2])
  else:
    cfg.update(learning_rate=[1e-2, 3e-2])
  res = linear_exp.run(cfg, str(wd))
  assert res["model"] == model and res["features"] == feats
  if optimizer == "lbfgs":  # no learning rate: its line search sets the step (recorded as 1.0)
    config = json.loads((wd / "config.json").read_text())
    assert config["learning_rate"] is None and config["schedule"] == "constant"
    assert res["chosen"]["learning_rate"] is None
    assert {g["learning_rate"] for g in res["grid"]} == {None}
    lines = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
    assert {l["learning_rate"] for l in lines} == {None}
    assert not any("scheduled_learning_rate" in l for l in lines)
    assert sorted(os.listdir(wd / "tensorboard")) == ["line_search,reg=0.001",
                                                      "line_search,reg=0.01"]
  assert res["input_dim"] == (16 * 16 * 3 if feats == "pixels" else 2 * 2 * 9 + 10)
  assert res["test_accuracy"] > 0.8
  for f in ("plots/loss.png", "plots/accuracy.png", "plots/confusion.png", "model.npz"):
    assert (wd / f).exists(), f
  assert (wd / "plots" / "weights.png").exists() == (feats == "pixels")
  saved = checkpoint.load(str(wd / "model.npz"))
  assert saved.kind == model and saved.features == feats
  ds = data.load(f"folder:{root}", num_val=6)
  accuracy = np.mean(saved.scores(ds.test.images).argmax(1) == ds.test.labels)
  assert accuracy == pytest.approx(res["test_accuracy"])
  if feats == "hog_hsv":  # standardised by the training features' mean and std (ddof 0)
    from jaxlin import features  # pylint: disable=import-outside-toplevel
    raw = np.asarray(features.extract(ds.train.images), np.float64)
    np.testing.assert_allclose(saved.feature_mean, raw.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(saved.feature_std, raw.std(0), rtol=1e-4, atol=1e-6)
  if feats == "hog_hsv":  # features were cached (and the decoded images); a second run reuses them
    files = sorted(os.listdir(cache))
    assert [f.split("-")[0] for f in files].count("features") == 3
    assert [f.split("-")[0] for f in files].count("images") == 2  # train, test
    res2 = linear_exp.run(cfg, str(tmp_path / "wd2"))
    assert sorted(os.listdir(cache)) == files
    assert res2["test_accuracy"] == res["test_accuracy"]


def test_unknown_model_and_features(tmp_path):
  with pytest.raises(ConfigError, match="unknown --model 'cnn'"):
    linear_exp.run(dict(dataset="folder:/x", model="cnn"), str(tmp_path))
  with pytest.raises(ConfigError, match="unknown --features 'sift'"):
    linear_exp.run(dict(dataset="folder:/x", features="sift"), str(tmp_path))


# ---- a grid where the choice matters ---------------------------------------------------------
# Which member wins depends on float32 training, so the run's own validation accuracies are
# checked against the members' parameters, and then replaced by fixed ones (a tie for the
# best, values no split of 15 or 30 images can score) to check what the run does with them.
FIXED_VAL = [0.123, 0.456, 0.789, 0.789, 0.1, 0.5]  # lr x reg = 2 x 3; best: 2 (first of 2, 3)


def test_a_grid_run_chooses_draws_tests_and_saves_the_best_member(tmp_path, monkeypatch):
  root = str(tmp_path / "images")
  make_image_folder(root, per_class_train=20, per_class_test=10, size=2, seed=0, noise=250.0)
  from jaxlin import plots  # pylint: disable=import-outside-toplevel
  seen = {}
  real_fit, real_init, real_grid = train.Trainer.fit, train.Trainer.__init__, plots.grid

  def fit(self, *args, **kwargs):
    out = real_fit(self, *args, **kwargs)
    seen.update(params=out.params, val=np.array(out.history[-1]["val_accuracy"]))
    out.history[-1]["val_accuracy"] = np.array(FIXED_VAL)
    return out

  def init(self, model, loss_fn, **kwargs):
    seen["loss_fn"] = loss_fn
    real_init(self, model, loss_fn, **kwargs)

  def grid(values, rates, regs, **kw):
    seen.update(drawn=np.asarray(values), rates=list(rates), regs=list(regs), chosen=kw["chosen"])
    return real_grid(values, rates, regs, **kw)

  monkeypatch.setattr(train.Trainer, "fit", fit)
  monkeypatch.setattr(train.Trainer, "__init__", init)
  monkeypatch.setattr(plots, "grid", grid)
  lrs, regs = [1e-2, 1e-1], [0.0, 0.3, 3.0]
  # Subsets of both splits; the batch of 9 fits the 40 training images, not the 8 test ones.
  res = linear_exp.run(dict(dataset=f"folder:{root}", num_train=40, num_val=15, num_test=8,
                            learning_rate=lrs, reg=regs, batch_size=9, num_epochs=4, loss="svm",
                            margin=0.25, seed=0), str(tmp_path / "wd"))
  ds = data.load(f"folder:{root}", num_train=40, num_val=15, num_test=8, seed=0)
  model = checkpoint.load(str(tmp_path / "wd" / "model.npz"))
  # The run's validation accuracies are each member's on the val split.
  x_val = jnp.asarray(model.preprocess(ds.val.images))
  for g in range(6):
    pred = np.asarray(linear.scores(train.member(seen["params"], g), x_val).argmax(1))
    assert seen["val"][g] == pytest.approx(np.mean(pred == ds.val.labels)), g
  # --margin reaches the loss the members train on.
  s, y = jnp.array([[0.0, 0.5, -0.25]]), jnp.array([0])
  assert float(seen["loss_fn"](s, y)[0]) == pytest.approx(0.75)  # 0.75 + max(0, 0): margin 0.25
  # The choice: the first of the best, in the grid's order (lr-major).
  assert [(g["learning_rate"], g["reg"], g["val_accuracy"]) for g in res["grid"]] == [
      (lr, reg, v) for (lr, reg), v in zip([(lr, reg) for lr in lrs for reg in regs], FIXED_VAL)]
  assert res["chosen"] == {"learning_rate": 1e-2, "reg": 3.0, "val_accuracy": 0.789}
  # The grid figure: learning rates down, regs across, the chosen cell (0, 2) marked.
  np.testing.assert_array_equal(seen["drawn"], np.reshape(FIXED_VAL, (2, 3)))
  assert (seen["rates"], seen["regs"], seen["chosen"]) == (lrs, regs, (0, 2))
  # The saved model is member 2, with the training split's statistics; the test split is
  # scored with it once (its confusion matrix, per class by true class).
  for name, value in train.member(seen["params"], 2).items():
    np.testing.assert_array_equal(model.params[name], np.asarray(value))
  x = ds.train.images.reshape(len(ds.train), -1).astype(np.float64)
  np.testing.assert_allclose(model.mean_image.reshape(-1), x.mean(0), rtol=1e-6)
  assert model.scale == pytest.approx(np.sqrt(((x - x.mean(0)) ** 2).mean()), rel=1e-5)
  pred = model.scores(ds.test.images).argmax(1)
  cm = np.zeros((3, 3), int)
  np.add.at(cm, (ds.test.labels, pred), 1)
  assert res["confusion_matrix"] == cm.tolist()
  assert res["test_accuracy"] == pytest.approx(np.mean(pred == ds.test.labels))
  assert list(res["per_class_test_accuracy"].values()) == pytest.approx(np.diag(cm) / cm.sum(1))
  # Steps and epochs: 4 epochs of 40 // 9 = 4 minibatches, of 40 of the 45 training images.
  assert (res["steps"], res["epochs"], res["sizes"]) == (16, 4.0, {"train": 40, "val": 15,
                                                                   "test": 8})
  t = res["timings_s"]
  assert t["train_per_setting"] == pytest.approx(t["train_grid"] / 6)


def test_the_svm_margin_reaches_the_loss():
  scores, labels = jnp.array([[0.0, 0.5, -0.25]]), jnp.array([0])
  for margin, expect in ((1.0, 1.5 + 0.75), (0.25, 0.75 + 0.0), (2.0, 2.5 + 1.75)):
    c = linear_exp.validate(dict(dataset="cifar10", loss="svm", margin=margin))
    assert float(linear_exp.loss_function(c)(scores, labels)[0]) == pytest.approx(expect)
  c = linear_exp.validate(dict(dataset="cifar10", loss="softmax"))
  assert float(linear_exp.loss_function(c)(scores, labels)[0]) == pytest.approx(
      -np.log(1 / (1 + np.exp(0.5) + np.exp(-0.25))))


def test_no_setting_with_a_validation_accuracy_is_one_error(folder, tmp_path, monkeypatch):
  """Members whose validation scores hold NaN have no accuracy (NaN); when no setting
  has one, the run stops with one error, not numpy's All-NaN ValueError, and writes
  nothing."""
  root, _ = folder
  real = train.Trainer._checked_accuracy
  monkeypatch.setattr(train.Trainer, "_checked_accuracy",
                      lambda self, *a, **kw: real(self, *a, **kw) * np.nan)
  with pytest.raises(DataError, match="no setting scored the validation images without NaN"):
    linear_exp.run(dict(SMALL, dataset=f"folder:{root}", num_epochs=1), str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()


def test_a_run_without_a_terminal_logs_its_training_and_warns_below_chance(
    folder, tmp_path, caplog, monkeypatch):
  """Output to a file draws no progress bar: training says where it is in log lines. A
  chosen setting below chance is named (it was chosen without a word)."""
  root, _ = folder
  run = lambda wd: linear_exp.run(dict(SMALL, dataset=f"folder:{root}", num_epochs=1,
                                       learning_rate=[1e-2], reg=[0.0]), str(tmp_path / wd))
  with caplog.at_level("INFO"):
    run("wd")
  assert re.search(r"training 1 setting: step \d+ of \d+ \(epoch [\d.]+\), best val "
                   r"accuracy [\d.]+", caplog.text)
  assert "below chance" not in caplog.text  # this folder's classes are easy: 1.0
  real = train.Trainer._checked_accuracy
  monkeypatch.setattr(train.Trainer, "_checked_accuracy",
                      lambda self, *a, **kw: real(self, *a, **kw) * 0.2)
  caplog.clear()
  with caplog.at_level("INFO"):
    run("wd2")
  assert re.search(r"scores 0.2000 on the validation images, below chance \(1/3", caplog.text)
