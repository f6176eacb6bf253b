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
  return json.loads((tmp_path / "wd0" / "results.json").read_text())


@pytest.fixture
def folder(tmp_path):
  root = str(tmp_path / "images")
  make_image_folder(root)
  return root


def test_knn_on_two_processes(tmp_path, folder):
  results = _run_two_processes("experiments.knn", [
      f"--dataset=folder:{folder}", "--num_train=40", "--num_test=12", "--num_val=6", "--k=1,3",
      "--cv_folds=4", "--shard=database"], tmp_path)
  assert results["processes"] == 2 and results["devices"] == 2


def test_linear_training_on_two_processes(tmp_path, folder):
  results = _run_two_processes("experiments.linear", [
      f"--dataset=folder:{folder}", "--num_val=6", "--learning_rate=0.001,0.01", "--reg=0.1",
      "--batch_size=8", "--num_epochs=3"], tmp_path)
  assert results["devices"] == 2 and results["test_accuracy"] > 0.5
  assert (tmp_path / "wd0" / "model.npz").exists()
