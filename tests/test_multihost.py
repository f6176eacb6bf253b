"""Two processes on localhost (CPU collectives) run one experiment together."""
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import make_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two_processes(module, args, tmp_path):
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXLIN_NO_PROGRESS="1")
  procs = [subprocess.Popen(
      [sys.executable, "-m", module, f"--workdir={tmp_path / f'wd{p}'}", *args,
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={p}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for p in (0, 1)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=240)[0])  # bounded: a hung peer fails the test
  finally:
    for p in procs:
      p.kill()
  assert all(p.returncode == 0 for p in procs), outs
  # The summary line without its wall time: the same choice and accuracies on both processes.
  summaries = [next(l for l in o.splitlines() if "test accuracy" in l).split("] ", 1)[1].rsplit(";", 1)[0]
               for o in outs]
  assert summaries[0] == summaries[1]
  assert not (tmp_path / "wd1").exists()  # only process 0 writes
  return json.loads((tmp_path / "wd0" / "results.json").read_text()), outs


def _run_one_process(module, args, tmp_path, devices=2):
  """The same experiment in one process with `devices` simulated CPU devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXLIN_NO_PROGRESS="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  out = subprocess.run([sys.executable, "-m", module, f"--workdir={tmp_path / 'single'}", *args],
                       cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=240)
  assert out.returncode == 0, out.stdout
  return json.loads((tmp_path / "single" / "results.json").read_text())


@pytest.fixture
def folder(tmp_path):
  root = str(tmp_path / "images")
  make_image_folder(root)
  return root


def test_knn_database_split_with_cv_on_two_processes(tmp_path, folder):
  results, outs = _run_two_processes("experiments.knn", [
      f"--dataset=folder:{folder}", "--num_train=40", "--num_test=12", "--num_val=6", "--k=1,3",
      "--cv_folds=4", "--shard=database"], tmp_path)
  assert results["processes"] == 2 and results["devices"] == 2
  whole = {"train": [0, 40], "val": [0, 6], "test": [0, 12]}
  assert results["rows_read"] == [whole, whole]  # CV folds need the whole training split


def test_knn_database_split_on_two_processes_reads_its_rows(tmp_path, folder):
  args = [f"--dataset=folder:{folder}", "--num_train=41", "--num_test=13", "--num_val=7",
          "--k=1,3,5", "--metric=l1,l2", "--cv_folds=0", "--shard=database"]
  results, outs = _run_two_processes("experiments.knn", args, tmp_path)
  assert results["processes"] == 2 and results["devices"] == 2
  # Each process read only its own rows of the database (the training split) ...
  assert results["rows_read"] == [{"train": [0, 21], "val": [0, 7], "test": [0, 13]},
                                  {"train": [21, 41], "val": [0, 7], "test": [0, 13]}]
  assert (tmp_path / "wd0" / "plots" / "neighbors.png").exists()  # neighbours from both hosts
  # ... and the run equals one process holding everything.
  single = _run_one_process("experiments.knn", args, tmp_path)
  for key in ("accuracy", "chosen", "test_accuracy", "confusion_matrix", "sizes"):
    assert results[key] == single[key], key


@pytest.mark.parametrize("cv_folds", [0, 3])
def test_knn_queries_split_on_two_processes(tmp_path, folder, cv_folds):
  args = [f"--dataset=folder:{folder}", "--num_train=41", "--num_test=13", "--num_val=7",
          "--k=1,3,5", "--metric=l1,l2", f"--cv_folds={cv_folds}", "--shard=queries"]
  results, outs = _run_two_processes("experiments.knn", args, tmp_path)
  assert results["processes"] == 2 and results["devices"] == 2
  # Each process read only its own rows of the query splits ...
  assert results["rows_read"] == [{"train": [0, 41], "val": [0, 4], "test": [0, 7]},
                                  {"train": [0, 41], "val": [4, 7], "test": [7, 13]}]
  # ... and the run equals one process holding everything.
  single = _run_one_process("experiments.knn", args, tmp_path)
  for key in ("accuracy", "chosen", "test_accuracy", "confusion_matrix", "sizes"):
    assert results[key] == single[key], key


@pytest.mark.parametrize("features", ["pixels", "hog_hsv"])
def test_linear_training_on_two_processes(tmp_path, folder, features):
  args = [f"--dataset=folder:{folder}", "--num_val=7", "--num_train=45", "--learning_rate=0.001,0.01",
          "--reg=0.1", "--batch_size=8", "--num_epochs=3", f"--features={features}", "--cache_dir="]
  results, outs = _run_two_processes("experiments.linear", args, tmp_path)
  assert results["devices"] == 2 and results["processes"] == 2 and results["test_accuracy"] > 0.5
  assert (tmp_path / "wd0" / "model.npz").exists()
  # Each process read only its own rows: two halves of every split (odd sizes: 23 + 22, ...).
  assert results["rows_read"] == [{"train": [0, 23], "val": [0, 4], "test": [0, 9]},
                                  {"train": [23, 45], "val": [4, 7], "test": [9, 18]}]
  # ... and the run equals one process holding everything on two devices.
  single = _run_one_process("experiments.linear", args, tmp_path)
  assert single["processes"] == 1 and single["devices"] == 2
  assert results["test_accuracy"] == single["test_accuracy"]
  assert results["confusion_matrix"] == single["confusion_matrix"]
  for a, b in zip(results["grid"], single["grid"]):
    assert a["val_accuracy"] == pytest.approx(b["val_accuracy"])
    assert a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-4)
