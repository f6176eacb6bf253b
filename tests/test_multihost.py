"""Two processes on localhost (CPU collectives) run one kNN experiment together."""
import json
import os
import socket
import subprocess
import sys

from tests.conftest import make_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree_and_only_process_0_writes(tmp_path):
  root = str(tmp_path / "images")
  make_image_folder(root)
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXLIN_NO_PROGRESS="1")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "experiments.knn", f"--dataset=folder:{root}",
       f"--workdir={tmp_path / f'wd{p}'}", "--num_train=40", "--num_test=12", "--num_val=6",
       "--k=1,3", "--cv_folds=4", "--shard=database", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={p}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for p in (0, 1)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=240)[0])
  finally:
    for p in procs:
      p.kill()
  assert all(p.returncode == 0 for p in procs), outs
  # The summary line without its wall time: the same choice and accuracies on both processes.
  summaries = [next(l for l in o.splitlines() if "test accuracy" in l).split("] ", 1)[1].rsplit(";", 1)[0]
               for o in outs]
  assert summaries[0] == summaries[1]
  results = json.loads((tmp_path / "wd0" / "results.json").read_text())
  assert results["processes"] == 2 and results["devices"] == 2
  assert not (tmp_path / "wd1").exists()
