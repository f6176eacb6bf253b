"""Two processes on localhost (CPU collectives) run one experiment together."""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import typing

import pytest

from experiments import config as cfg
from experiments import knn as knn_exp
from experiments import linear as linear_exp
from jaxlin import bounds, data
from tests.conftest import make_image_folder

pytestmark = pytest.mark.long  # every test starts processes

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
  summaries = [next(l for l in o.splitlines() if "test accuracy" in l)
               .split("] ", 1)[1].rsplit(";", 1)[0]
               for o in outs]
  assert summaries[0] == summaries[1]
  assert not (tmp_path / "wd1").exists()  # only process 0 writes
  return json.loads((tmp_path / "wd0" / "results.json").read_text()), outs


def _run_one_process(module, args, tmp_path):
  """The same experiment in this test's process (one device), from the same flags."""
  lists = {"k", "metric", "learning_rate", "reg", "stages"}
  config = {}
  for arg in args:
    name, value = arg[2:].split("=", 1)
    config[name] = value.split(",") if name in lists else value
  c = module.Config.make({k: v if k in lists else _typed(module.Config, k, v)
                          for k, v in config.items()})
  return module.run(c, str(tmp_path / "single"))


def _typed(cls, name, value):
  kind, _ = cfg._base_type(typing.get_type_hints(cls)[name])  # pylint: disable=protected-access
  if kind is bool:
    return value.lower() in ("1", "true")
  return kind(value) if kind in (int, float) else value


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("multihost") / "images")
  make_image_folder(root)
  return root


@pytest.fixture(scope="module")
def cache(folder, tmp_path_factory):
  """The folder decoded once, here: the processes read their rows without TensorFlow."""
  path = str(tmp_path_factory.mktemp("cache"))
  for split in ("train", "test"):
    data.load_split(f"folder:{folder}", split, cache_dir=path)
  return path


def test_knn_database_split_on_two_processes_reads_its_rows(tmp_path, folder, cache):
  args = [f"--dataset=folder:{folder}", "--num_train=41", "--num_test=13", "--num_val=7",
          "--k=1,3,5", "--metric=l2", "--cv_folds=0", "--shard=database",
          f"--cache_dir={cache}"]
  results, _ = _run_two_processes("experiments.knn", args, tmp_path)
  assert results["processes"] == 2 and results["devices"] == 2
  # Each process read only its own rows of the database (the training split) ...
  assert results["rows_read"] == [{"train": [0, 21], "val": [0, 7], "test": [0, 13]},
                                  {"train": [21, 41], "val": [0, 7], "test": [0, 13]}]
  assert (tmp_path / "wd0" / "plots" / "neighbors.png").exists()  # neighbours from both hosts
  # ... and the run equals one process holding everything.
  single = _run_one_process(knn_exp, args, tmp_path)
  for key in ("accuracy", "chosen", "test_accuracy", "confusion_matrix", "sizes"):
    assert results[key] == single[key], key


def test_knn_queries_split_on_two_processes(tmp_path, folder, cache):
  # One val image: process 1 holds none of it (its search of no rows was a traceback).
  args = [f"--dataset=folder:{folder}", "--num_train=41", "--num_test=13", "--num_val=1",
          "--k=1,3,5", "--metric=l1", "--cv_folds=0", "--shard=queries", "--search=pruned",
          f"--cache_dir={cache}"]
  results, _ = _run_two_processes("experiments.knn", args, tmp_path)
  assert results["processes"] == 2 and results["devices"] == 2
  # The search's counts are the two processes' together (41 rows: too few for a round).
  test = results["search"]["test"]
  assert (test["method"], test["processes"], test["queries"], test["brute_force"]) == (
      "pruned", 2, 13, 13)
  # Each process read only its own rows of the query splits ...
  assert results["rows_read"] == [{"train": [0, 41], "val": [0, 1], "test": [0, 7]},
                                  {"train": [0, 41], "val": [1, 1], "test": [7, 13]}]
  # ... and the run equals one process holding everything.
  single = _run_one_process(knn_exp, args, tmp_path)
  for key in ("accuracy", "chosen", "test_accuracy", "confusion_matrix", "sizes"):
    assert results[key] == single[key], key
  # So are L1's row counts (they were process 0's own).
  for key in bounds.count_keys("l1"):
    assert test[key] == single["search"]["test"][key], (key, test, single["search"]["test"])


def test_pruned_search_on_a_mesh_across_two_processes():
  """tests/multihost_search.py on two processes: the cascade on each process's device (a
  database laid along the mesh, each process holding only its rows; or host queries split
  along it), the answers exchanged: the one-device brute-force answer on both; failures,
  different queries and a mesh without this process's device raise on every process, none
  left waiting."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-m", "tests.multihost_search", str(port), str(p)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for p in (0, 1)]
  try:
    outs = [p.communicate(timeout=240) for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in outs]
  stats = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  for layout in ("database", "queries"):  # process 1 failed; both raised, neither waits
    assert stats[0].pop(f"failure {layout}") == (
        "RuntimeError: the pruned search failed on process(es) 1; see its error")
    assert stats[1].pop(f"failure {layout}") == "MemoryError: no memory"  # its own error
  assert stats[0].pop("mesh of process 0") == "ok"
  assert stats[0].pop("rows of process 0's mesh") == "ok"  # it holds every row
  assert stats[0].pop("laid on process 0's mesh").startswith("InputError: this process holds "
                                                             "rows [0, 1160)")
  for key in ("rows of process 0's mesh", "laid on process 0's mesh"):  # were IndexErrors
    assert stats[1].pop(key) == ("InputError: mesh has none of this process's devices (process "
                                 "1): lay rows along a mesh that holds some of them")
  assert stats[1].pop("mesh of process 0") == ("InputError: mesh has none of this process's "
                                               "devices (process 1): search on a mesh that "
                                               "holds some of them")
  assert stats[0] == stats[1]
  assert stats[0]["other queries"] == ("InputError: queries_QxD differs between processes; on "
                                       "a mesh across processes every process passes the "
                                       "same queries")
  for metric in ("l2", "l1"):  # every query searched in both processes' rows, or in one
    assert stats[0][f"{metric} database"]["per_device"] == [26, 26]
    assert stats[0][f"{metric} queries"]["per_device"] == [13, 13]
    for layout in ("database", "queries"):
      assert stats[0][f"{metric} {layout}"]["first_round"] > 0  # the cascade's rounds ran


def test_linear_training_on_two_processes(tmp_path, folder, cache):
  """HOG features: both statistics paths (pixels and features) summed over processes; one
  val image, so that process 1 extracts the features of none (it stopped with exit 2)."""
  features = "hog_hsv"
  args = [f"--dataset=folder:{folder}", "--num_val=1", "--num_train=45",
          "--learning_rate=0.001,0.01",
          "--reg=0.1", "--batch_size=8", "--num_epochs=3", f"--features={features}",
          f"--cache_dir={cache}"]
  results, _ = _run_two_processes("experiments.linear", args, tmp_path)
  assert results["devices"] == 2 and results["processes"] == 2 and results["test_accuracy"] > 0.5
  assert (tmp_path / "wd0" / "model.npz").exists()
  # Each process read only its own rows: two halves of every split (odd sizes: 23 + 22, ...).
  assert results["rows_read"] == [{"train": [0, 23], "val": [0, 1], "test": [0, 9]},
                                  {"train": [23, 45], "val": [1, 1], "test": [9, 18]}]
  # ... and the run equals one process holding everything on two devices.
  single = _run_one_process(linear_exp, args, tmp_path)
  assert results["test_accuracy"] == single["test_accuracy"]
  assert results["confusion_matrix"] == single["confusion_matrix"]
  for a, b in zip(results["grid"], single["grid"]):
    assert a["val_accuracy"] == pytest.approx(b["val_accuracy"])
    assert a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-4)


def _start(module, args, tmp_path, process_ids, port, timeout_s):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXLIN_NO_PROGRESS="1", PYTHONPATH=ROOT)
  return [subprocess.Popen(
      [sys.executable, "-m", module, f"--workdir={tmp_path / f'wd{p}'}", *args[p],
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={p}",
       f"--host_timeout={timeout_s}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for p in process_ids]


def _one_error_line(err):
  """The last line is the error; it is the only one; no traceback or C++ stack dump."""
  errors = [l for l in err.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
  for sign in ("Traceback", "Check failed", "*** ", " @ 0x", "Aborted"):
    assert sign not in err, err
  return errors[0]


def test_processes_with_different_flags_stop_with_one_line(tmp_path, folder, cache):
  base = [f"--dataset=folder:{folder}", "--num_val=7", "--num_train=30", "--learning_rate=0.01",
          "--reg=0.1", "--batch_size=8", "--num_steps=2", f"--cache_dir={cache}"]
  t0 = time.time()
  procs = _start("experiments.linear", {0: base + ["--seed=0"], 1: base + ["--seed=1"]},
                 tmp_path, (0, 1), _free_port(), 45)
  try:
    outs = [p.communicate(timeout=90) for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert time.time() - t0 < 60
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 2, err
    line = _one_error_line(err)
    assert "--seed: process 0 has 0, process 1 has 1" in line, line
  assert not (tmp_path / "wd0" / "results.json").exists()


def test_a_missing_peer_ends_the_process_within_the_host_timeout(tmp_path, folder):
  t0 = time.time()
  proc, = _start("experiments.linear", {0: [f"--dataset=folder:{folder}", "--num_val=7"]},
                 tmp_path, (0,), _free_port(), 3)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 1 and time.time() - t0 < 30
  assert "did not all join 127.0.0.1:" in _one_error_line(err)


@pytest.mark.parametrize("lost", [1, 0])  # a peer (stopped by SIGTERM); the coordinator (killed)
def test_a_peer_lost_during_training_ends_the_other_within_the_host_timeout(tmp_path, folder,
                                                                             cache, lost):
  args = [f"--dataset=folder:{folder}", "--num_val=7", "--num_train=30", "--learning_rate=0.001",
          "--reg=0", "--batch_size=2", "--num_epochs=100000", "--log_every=1",
          f"--cache_dir={cache}"]
  procs = _start("experiments.linear", {0: args, 1: args}, tmp_path, (0, 1), _free_port(), 5)
  try:
    t0 = time.time()
    staged = f"{tmp_path}/wd0/.staging-*/metrics.jsonl"
    while not any(os.path.getsize(p) for p in glob.glob(staged)):
      assert procs[0].poll() is None and time.time() - t0 < 120, procs[0].communicate()
      time.sleep(0.2)
    t1 = time.time()
    if lost == 1:  # as `kill` or a scheduler would: it stops cleanly, exit code 130
      # SIGTERM to the supervised child (the process top shows): JAX's preemption notifier
      # took it over and the run went on. (The supervisor forwards its own: the test below.)
      with open(f"/proc/{procs[1].pid}/task/{procs[1].pid}/children", encoding="ascii") as f:
        os.kill(int(f.read().split()[0]), signal.SIGTERM)
      _, err = procs[1].communicate(timeout=60)
      assert procs[1].returncode == 130, err
      assert err.strip().splitlines()[-1].startswith("interrupted; no results"), err
    else:  # the coordinator, without a chance to clean up
      procs[0].kill()
    survivor = procs[1 - lost]
    _, err = survivor.communicate(timeout=60)
    assert time.time() - t1 < 30
    assert survivor.returncode == 1, err
    line = _one_error_line(err)
    assert any(s in line for s in (f"process {lost}", "another process may have stopped",
                                   "lost contact")), line
    assert not (tmp_path / "wd0" / "results.json").exists()
  finally:
    for p in procs:
      p.kill()


def test_supervisor_passes_stderr_until_jax_reports_a_lost_service(tmp_path):
  from experiments import supervisor  # pylint: disable=import-outside-toplevel
  assert supervisor.wanted(["--num_processes=2", "--workdir=w"])
  assert supervisor.wanted(["--coordinator_address=h:1", "--num_processes=2"])
  assert not supervisor.wanted(["--num_processes=1"])
  assert not supervisor.wanted(["--workdir=w", "--k=1"])
  assert not supervisor.wanted(["--num_processes=2", "--help"])
  # absl's other forms: a value in the next item (a lost coordinator then aborted the peer
  # with a C++ stack dump, and SIGTERM left it running), one dash, a flag file, "--".
  assert supervisor.wanted(["--coordinator_address", "h:1", "--num_processes", "2"])
  assert supervisor.wanted(["-num_processes", "2"]) and not supervisor.wanted(["--nodistributed"])
  assert not supervisor.wanted(["--distributed=f"]) and not supervisor.wanted(["--distributed=F"])
  assert not supervisor.wanted(["--num_processes", "1", "--workdir", "w"])
  assert not supervisor.wanted(["--", "--num_processes=2"])
  flags = tmp_path / "flags.txt"
  flags.write_text("# a flag file\n--num_processes=2\n")
  assert supervisor.wanted(["--flagfile", str(flags)])
  assert supervisor.wanted([f"--flagfile={flags}", "--workdir=w"])
  home = os.environ.get("HOME")
  os.environ["HOME"] = str(tmp_path)  # absl expands ~ in a flag file's path
  try:
    assert supervisor.wanted(["--flagfile=~/flags.txt"])
  finally:
    os.environ["HOME"] = home
  flags.write_text("--num_processes=2\n--workdir=~/wd\n")
  for argv in ([f"--flagfile={flags}"], ["-workdir", "~/wd"], ["--workdir=~/wd"]):
    assert supervisor._staging(argv) == os.path.expanduser("~/wd"), argv  # pylint: disable=protected-access
  report = (b"F1202 client.h:80] Terminating process because the JAX distributed service "
            b"detected fatal errors.\n*** Check failure stack trace: ***\n")
  pieces = [b"step 1\rstep 2", b"\nI1202 ok\nF12", report[3:40], report[40:]]
  r, w = os.pipe()

  def write():
    for piece in pieces:  # separate reads: a line and the report split across them
      os.write(w, piece)
      time.sleep(0.3)
    os.close(w)

  class Sink:
    data = b""
    def write(self, b):
      Sink.data += b
    def flush(self):
      pass

  writer = threading.Thread(target=write)
  writer.start()
  with os.fdopen(r, "rb") as src:
    err = supervisor._Stderr(src, Sink())  # pylint: disable=protected-access
    err.run()
  writer.join()
  assert Sink.data == b"step 1\rstep 2\nI1202 ok\n"
  assert err.held.startswith(b"F1202 client.h:80] Terminating") and not err.child_error


def test_supervisor_ends_a_lost_child_with_one_line_and_passes_other_endings(tmp_path):
  """Children that print JAX's lost-service report: one that then fails gets the supervisor's
  line (and its staging folder removed); one with its own error line or exit code 0 does not.
  The supervisor runs in a process of its own, as it does for a run (this one holds threads)."""
  from experiments import supervisor  # pylint: disable=import-outside-toplevel
  assert supervisor.wanted(["--distributed"]) and supervisor.wanted(["--distributed=true"])
  assert not supervisor.wanted(["--distributed=false"])
  assert not supervisor.wanted(["--distributed=0"])
  report = ("F1202 client.h:80] Terminating process because the JAX distributed service "
            "detected fatal errors.\n*** Check failure stack trace: ***\n")
  supervise = ("import sys\nfrom experiments import supervisor\n"
               "sys.exit(supervisor.run(['-c', sys.argv[1], '--workdir', sys.argv[2]]))")

  def child(before, code, after=""):
    """(exit code, stderr) of a supervisor whose child writes ``before``, the report and
    ``after``."""
    script = ("import os, sys\nos.makedirs(os.path.join(sys.argv[2], f'.staging-{os.getpid()}'))"
              f"\nos.write(2, b{before + report + after!r})\nsys.exit({code})")
    proc = subprocess.run([sys.executable, "-c", supervise, script, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    return proc.returncode, proc.stderr

  lost = supervisor._LOST  # pylint: disable=protected-access
  assert child("I1202 ok\n", 1) == (supervisor.EXIT_LOST, f"I1202 ok\nerror: {lost}\n")
  assert os.listdir(tmp_path) == []  # the child's staging folder is gone
  # its own line (after another in the same read) and its code
  assert child("I1202 ok\nerror: --k must be >= 1\n", 2) == (
      2, "I1202 ok\nerror: --k must be >= 1\n")
  assert child("", 0) == (0, report)  # not an ending: shown after all
  # The names it uses are the workdir's. It removes a dead run's staging folder only holding
  # the workdir's lock, and leaves a commit's staged files to the next run.
  from experiments import workdir  # pylint: disable=import-outside-toplevel
  assert (supervisor.LOCK, supervisor.STAGING, supervisor.JOURNAL) == (
      workdir.LOCK, workdir.STAGING, workdir.JOURNAL)
  with workdir.Workdir(str(tmp_path), "knn"):  # another run holds the lock
    (tmp_path / ".staging-7").mkdir()
    assert not supervisor.remove_staging(str(tmp_path), 7)
    assert (tmp_path / ".staging-7").is_dir()
  (tmp_path / ".commit-7.json").write_text("{}")
  assert not supervisor.remove_staging(str(tmp_path), 7)
  (tmp_path / ".commit-7.json").unlink()
  assert supervisor.remove_staging(str(tmp_path), 7) and os.listdir(tmp_path) == []
  # The coordinator refused the process as it joined (a --process_id taken or out of range).
  refused = "RPC: /xla.coordination.CoordinationService/RegisterTask [...]\n"
  assert child("", 1, refused) == (supervisor.EXIT_LOST, f"error: {supervisor._REFUSED}\n")  # pylint: disable=protected-access
  # Killed (the out-of-memory killer, kill -9): a traceback of the supervisor's own, exit 1,
  # and the staging folder left. Now one line, 137, and nothing left.
  script = ("import os, signal, sys\nos.makedirs(os.path.join(sys.argv[2], "
            "f'.staging-{os.getpid()}'))\nos.kill(os.getpid(), signal.SIGKILL)")
  proc = subprocess.run([sys.executable, "-c", supervise, script, str(tmp_path)], cwd=ROOT,
                        capture_output=True, text=True, timeout=60,
                        env=dict(os.environ, PYTHONPATH=ROOT))
  assert (proc.returncode, proc.stderr) == (137, "error: this process's run was killed (SIGKILL: "
                                            "out of memory, or kill -9); no results were written\n")
  assert os.listdir(tmp_path) == []
  # SIGTERM to the supervisor reaches the child once, as SIGINT.
  script = ("import signal, sys, time\nsignal.signal(signal.SIGINT, lambda *a: sys.exit(130))\n"
            "print('ready', flush=True)\ntime.sleep(60)")
  proc = subprocess.Popen([sys.executable, "-c", supervise, script, str(tmp_path)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.stdout.readline() == "ready\n"
  proc.terminate()
  assert proc.wait(timeout=30) == 130
