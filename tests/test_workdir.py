"""A workdir never loses a finished run: staging, commit, lock, kind, interrupts."""
import fcntl
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from experiments import knn as knn_exp
from experiments import linear as linear_exp
from experiments.workdir import Workdir
from jaxlin import files
from experiments.config import ConfigError
from jaxlin.errors import DataError
from tests.conftest import make_image_folder

# Module fixtures build one shared run: keep this file on one test worker.
pytestmark = pytest.mark.xdist_group("test_workdir")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNN = dict(num_train=30, num_test=6, num_val=6, k=[1], metric=["l2"], cv_folds=0,
           num_neighbor_rows=2)


def test_this_files_tests_share_one_worker(request):
  """Under ``--dist loadgroup`` (setup.cfg) the module fixtures below are built once: the
  node ids of this file's tests carry their group (pytest 9.2 broke that for pytest-xdist
  3.8: every worker then built them)."""
  if getattr(request.config.option, "loadgroup", False):
    assert request.node.nodeid.endswith("@test_workdir"), (
        "pytest-xdist did not group this file's tests; install the test extra's pytest "
        "(pip install -e '.[test]')")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("wd_images") / "images")
  make_image_folder(root, per_class_train=12, per_class_test=2)
  return root


@pytest.fixture(scope="module")
def finished(folder, tmp_path_factory):
  """A workdir holding one finished kNN run; tests copy it."""
  wd = tmp_path_factory.mktemp("finished") / "wd"
  knn_exp.run(dict(dataset=f"folder:{folder}", **KNN), str(wd))
  return wd


def _snapshot(wd):
  return {os.path.relpath(p, wd): open(p, "rb").read()
          for p in glob.glob(f"{wd}/**/*", recursive=True) if os.path.isfile(p)}


def _copy(src, dst):
  subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
  return dst


def test_a_failed_first_run_leaves_no_folder_and_a_given_folder_stays(folder, tmp_path):
  # Found only once the data is read (the workdir open): more folds than training images.
  bad = dict(KNN, dataset=f"folder:{folder}", num_train=0, k=[1, 3], cv_folds=1000)
  with pytest.raises(ConfigError):
    knn_exp.run(bad, str(tmp_path / "new" / "wd"))
  assert not (tmp_path / "new").exists()  # it made both folders: empty ones were left
  (tmp_path / "mine").mkdir()
  with pytest.raises(ConfigError):
    knn_exp.run(bad, str(tmp_path / "mine"))
  assert (tmp_path / "mine").is_dir() and not os.listdir(tmp_path / "mine")  # the user's


def test_a_failed_rerun_keeps_the_previous_run(finished, tmp_path):
  wd = _copy(finished, tmp_path / "wd")
  before = _snapshot(wd)
  assert {"config.json", "results.json", "plots/neighbors.png"} <= set(before)
  with pytest.raises(DataError, match="does not exist"):
    knn_exp.run(dict(dataset=f"folder:{tmp_path}/missing", **KNN), str(wd))
  assert _snapshot(wd) == before
  assert sorted(os.listdir(wd)) == sorted(os.listdir(finished))  # no staging, no lock left


def test_a_new_run_replaces_every_file_of_the_previous_one(finished, folder, tmp_path):
  wd = _copy(finished, tmp_path / "wd")
  (wd / "plots" / "old_figure.png").write_bytes(b"from an earlier run")  # one the run wrote:
  manifest = json.loads((wd / ".run-files.json").read_text())  # a figure this one does not
  manifest["tree"].append("plots/old_figure.png")
  (wd / ".run-files.json").write_text(json.dumps(manifest))
  res = knn_exp.run(dict(dataset=f"folder:{folder}", **dict(KNN, metric=["l1"])), str(wd))
  assert res["chosen"]["metric"] == "l1"
  assert not (wd / "plots" / "old_figure.png").exists()
  assert json.loads((wd / "config.json").read_text())["metric"] == ["l1"]
  assert json.loads((wd / "results.json").read_text())["chosen"]["metric"] == "l1"
  assert sorted(os.listdir(wd)) == [".run-files.json", "config.json", "plots", "results.json"]
  assert json.loads((wd / ".run-files.json").read_text())["files"] == ["config.json", "plots",
                                                               "results.json"]


def test_a_workdir_in_use_is_refused(finished, folder, tmp_path):
  wd = _copy(finished, tmp_path / "wd")
  with Workdir(str(wd), "knn"):  # another run holds the lock
    with pytest.raises(ConfigError, match="is in use by another run .*knn, process"):
      knn_exp.run(dict(dataset=f"folder:{folder}", **KNN), str(wd))
  knn_exp.run(dict(dataset=f"folder:{folder}", **KNN), str(wd))  # free again


def test_another_experiment_or_foreign_files_are_refused_unless_overwrite(finished, folder,
                                                                           tmp_path):
  wd = _copy(finished, tmp_path / "wd")
  lin = dict(dataset=f"folder:{folder}", num_val=6, learning_rate=[1e-2], reg=[0.0],
             batch_size=8, num_steps=2)
  with pytest.raises(ConfigError, match="holds a knn run, not linear.*--overwrite"):
    linear_exp.run(lin, str(wd))
  foreign = tmp_path / "home"
  foreign.mkdir()
  (foreign / "thesis.tex").write_text("precious")
  with pytest.raises(ConfigError, match="not a jaxlin run .*thesis.tex.*--overwrite to write "
                     r"the run beside them \(they are kept\)"):
    knn_exp.run(dict(dataset=f"folder:{folder}", **KNN), str(foreign))
  assert (foreign / "thesis.tex").read_text() == "precious"
  linear_exp.run(lin, str(wd), overwrite=True)
  assert "model.npz" in os.listdir(wd) and "neighbors.png" not in os.listdir(wd / "plots")
  # --overwrite never deletes what a run did not write: not the user's files, not the
  # dataset the run reads (it replaced both), and later runs there keep them too.
  (foreign / "sub").mkdir()
  (foreign / "sub" / "data.csv").write_text("1,2")
  for _ in range(2):
    knn_exp.run(dict(dataset=f"folder:{folder}", **KNN), str(foreign), overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "precious"
    assert (foreign / "sub" / "data.csv").read_text() == "1,2"
    assert {"config.json", "results.json", "plots"} <= set(os.listdir(foreign))
  data_copy = _copy(folder, tmp_path / "data")
  knn_exp.run(dict(dataset=f"folder:{data_copy}", **KNN), str(data_copy), overwrite=True)
  assert sorted(os.listdir(data_copy / "train")) == sorted(os.listdir(os.path.join(folder,
                                                                                   "train")))
  knn_exp.run(dict(dataset=f"folder:{data_copy}", **KNN), str(data_copy), overwrite=True)


def _start_training(folder, wd):
  """A linear run on the command line that trains long enough to be stopped."""
  env = dict(os.environ, JAXLIN_NO_PROGRESS="1", PYTHONPATH=ROOT)
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.linear", f"--workdir={wd}", f"--dataset=folder:{folder}",
       "--num_val=6", "--learning_rate=0.001", "--reg=0", "--batch_size=2", "--num_epochs=100000",
       "--log_every=1", "--overwrite"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _wait_for_training(proc, wd, timeout=120):
  t0 = time.time()
  while not glob.glob(f"{wd}/.staging-*/metrics.jsonl") or not any(
      os.path.getsize(p) for p in glob.glob(f"{wd}/.staging-*/metrics.jsonl")):
    assert proc.poll() is None, proc.communicate()
    assert time.time() - t0 < timeout, "training did not start"
    time.sleep(0.2)


def test_runs_stopped_during_training_leave_the_previous_run(finished, folder, tmp_path):
  """Ctrl-C (SIGINT), SIGTERM and SIGKILL, three runs at once (one start-up cost)."""
  runs = {}
  for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
    wd = _copy(finished, tmp_path / f"wd{int(sig)}")
    runs[sig] = (wd, _snapshot(wd), _start_training(folder, wd))
  for sig, (wd, _, proc) in runs.items():
    _wait_for_training(proc, wd)
    proc.send_signal(sig)
  for sig, (wd, before, proc) in runs.items():
    _, err = proc.communicate(timeout=60)
    assert _snapshot(wd) == before  # results.json and plots of the finished run, untouched
    if sig != signal.SIGKILL:  # Ctrl-C or `kill`: one line, exit 130, nothing staged left
      assert proc.returncode == 130
      assert err.strip().splitlines()[-1].startswith("interrupted; no results were written")
      assert "Traceback" not in err
      assert sorted(os.listdir(wd)) == sorted(os.listdir(finished))
    else:  # killed: its lock died with it; the next run takes the workdir and cleans up
      assert proc.returncode == -signal.SIGKILL
      knn_exp.run(dict(dataset=f"folder:{folder}", **KNN), str(wd))
      assert sorted(os.listdir(wd)) == sorted(os.listdir(finished))


def test_an_interrupt_during_the_imports_stops_the_run(finished, folder, tmp_path):
  """Ctrl-C while the program imports (its first seconds) landed in a callback of JAX's that
  drops exceptions: the run went on and replaced the previous one, exit code 0."""
  wd = _copy(finished, tmp_path / "wd")
  before = _snapshot(wd)
  env = dict(os.environ, JAXLIN_NO_PROGRESS="1", PYTHONPATH=ROOT)
  proc = subprocess.Popen(  # -X importtime: a line on stderr as each module is imported
      [sys.executable, "-X", "importtime", "-m", "experiments.knn", f"--workdir={wd}",
       f"--dataset=folder:{folder}", "--num_val=6", "--k=1", "--metric=l1", "--cv_folds=0"],
      cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  try:
    for line in proc.stderr:
      if line.rstrip().endswith("| jax"):  # past the package's start, still importing
        proc.send_signal(signal.SIGINT)
        break
    err = proc.stderr.read()
    proc.wait(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 130, err[-2000:]
  assert err.strip().splitlines()[-1] == "interrupted before the run began; nothing was written"
  assert _snapshot(wd) == before


_AS_ENTRY_POINT = ("import atexit, os, signal, sys, time\n"
                   "sys.orig_argv, sys.argv = [sys.executable, '-m', 'experiments.x'], ['-m']\n"
                   "import experiments\n")  # as `python -m experiments.x` starts


@pytest.mark.parametrize("then, code, out", [
    # The early stop without a stderr to write its line to: it raised OSError in the handler,
    # and the run went on.
    ("os.close(2)\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(30)\n", 130, ""),
    # After the exit handlers (the last ignores interrupts), Python's finalisation restored
    # SIGINT's default action: a finished run killed without a word.
    ("atexit._run_exitfuncs()\nos.kill(os.getpid(), signal.SIGINT)\nprint('alive')\n", 0,
     "alive\n"),
])
def test_an_entry_points_own_signal_handlers(then, code, out):
  done = subprocess.run([sys.executable, "-c", _AS_ENTRY_POINT + then], cwd=ROOT, text=True,
                        capture_output=True, timeout=60, check=False)
  assert (done.returncode, done.stdout) == (code, out), done.stderr


def test_an_interrupt_in_a_garbage_collectors_callback_is_raised_again():
  """Ctrl-C arriving while a __del__ (or a weak reference's callback) ran: Python printed
  "Exception ignored in ... KeyboardInterrupt" and the run went on to the 10 s backstop."""
  script = ("import os, signal, sys\n"
            "from experiments import common\n"
            "signal.signal(signal.SIGINT, common._on_interrupt)\n"
            "sys.unraisablehook = common._unraisable\n"
            "class Held:\n"
            "  def __del__(self):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    for _ in range(100000): pass\n"
            "try:\n"
            "  held = Held()\n"
            "  del held\n"
            "  for _ in range(10 ** 7): pass\n"
            "  print('went on')\n"
            "except KeyboardInterrupt:\n"
            "  print('interrupted')\n")
  done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, text=True,
                        capture_output=True, timeout=60, check=False)
  assert (done.stdout, done.stderr) == ("interrupted\n", "")

def test_an_interrupt_that_was_dropped_stops_the_run_before_its_commit(finished, folder, tmp_path,
                                                                     monkeypatch):
  """Ctrl-C mid-run whose KeyboardInterrupt a callback of JAX's dropped: the run committed and
  exited 0 (its handler had recorded the interrupt, and nothing read the record)."""
  from experiments import common, workdir  # pylint: disable=import-outside-toplevel
  wd = _copy(finished, tmp_path / "wd")
  before = _snapshot(wd)
  interrupted = threading.Event()
  interrupted.set()  # as _on_interrupt leaves it
  monkeypatch.setattr(common, "_interrupted", interrupted)
  with pytest.raises(KeyboardInterrupt):
    knn_exp.run(dict(dataset=f"folder:{folder}", **KNN), str(wd))
  assert _snapshot(wd) == before and not workdir.OPEN
  assert sorted(os.listdir(wd)) == sorted(os.listdir(finished))  # no staging folder left


@pytest.mark.parametrize("committed", [True, False])
def test_an_interrupt_while_a_finished_run_exits_says_its_files_are_written(committed):
  """It raised KeyboardInterrupt inside JAX's exit handlers: a traceback and exit code 0.
  A process that writes nothing (a multi-host run's process 1) commits nothing: it said "no
  results were written" while process 0 wrote them."""
  from experiments import common  # pylint: disable=import-outside-toplevel
  script = ("import os, signal, time\nfrom experiments import common\n"
            + ("common._committed.set()\n" if committed else "")
            + "common._stop_at_interrupts(0)\nos.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(30)\n")
  done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                        text=True, timeout=60, check=False)
  assert done.returncode == 130 and done.stderr.strip() == (
      common.INTERRUPTED_AFTER_COMMIT if committed else common.INTERRUPTED_AFTER_PART)


def test_atomic_write_names_the_users_path_and_writes_through_links(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"No such file or directory: '.*/no/a.bin'$"):
    files.atomic_write(str(tmp_path / "no" / "a.bin"), lambda f: f.write(b"x"))
  with pytest.raises(IsADirectoryError, match="a file path is needed"):
    files.atomic_write(str(tmp_path), lambda f: f.write(b"x"))
  long_name = tmp_path / ("a" * 250)  # a valid name: the temporary one must fit too
  assert files.atomic_write(long_name, lambda f: f.write(b"x")) == str(long_name)
  (tmp_path / "real").write_text("old")
  (tmp_path / "link").symlink_to(tmp_path / "real")
  files.atomic_write(str(tmp_path / "link").encode(), lambda f: f.write(b"new"))  # bytes path
  assert (tmp_path / "link").is_symlink() and (tmp_path / "real").read_text() == "new"
  assert sorted(os.listdir(tmp_path)) == sorted(["a" * 250, "link", "real"])


def test_json_refuses_keys_that_would_collide(tmp_path):
  assert files.to_json({1: 2, "2": 3, "x": float("nan")}) == '{"1": 2, "2": 3, "x": null}'
  with pytest.raises(ValueError, match="both written as '1'"):
    files.write_json(str(tmp_path / "r.json"), {1: "a", "1": "b"})
  assert not os.listdir(tmp_path)  # nothing written


# ---- the workdir on its own: kinds, leftovers, commit order -----------------------------------
def test_config_json_names_the_experiment(finished):
  assert json.loads((finished / "config.json").read_text())["experiment"] == "knn"


DATA = dict(dataset="cifar10", data_dir=None, seed=0, num_val=1000, num_train=0, num_test=0)
NOT_OURS = r"holds config.json, which a \w+ run writes, but not from a jaxlin run"


@pytest.mark.parametrize("config, opened_as, message", [
    ({"experiment": "study", "k": [1]}, "knn", "holds a study run, not knn"),  # the name wins
    (dict(DATA, k=[1]), "linear", "holds a knn run, not linear"),  # older runs: by their keys
    (dict(DATA, loss="svm"), "knn", "holds a linear run, not knn"),
    (dict(DATA, stages=["knn"], k=[1]), "linear", "holds a study run, not linear"),
    ([], "knn", NOT_OURS),
    ({"epochs": 3}, "knn", NOT_OURS),
    # Another program's config.json with a key of the same name, or another "experiment":
    # not taken for a jaxlin run, so its files are never replaced (they were, before).
    ({"model": "resnet18", "loss": "cross_entropy"}, "linear", NOT_OURS),
    ({"k": 5, "stages": 3}, "knn", NOT_OURS),
    (dict(DATA, experiment="baseline"), "knn", NOT_OURS),
])
def test_the_experiment_of_a_workdir_is_read_from_its_config(tmp_path, config, opened_as,
                                                             message):
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ConfigError, match=message):
    Workdir(str(tmp_path), opened_as).open()
  assert os.listdir(tmp_path) == ["config.json"]  # no lock, no staging left
  if "jaxlin run" in message:  # another tool's config.json: never replaced, --overwrite or not
    with pytest.raises(ConfigError, match=message):
      Workdir(str(tmp_path), opened_as, overwrite=True).open()
    return
  with Workdir(str(tmp_path), opened_as, overwrite=True) as w:  # taken; replaced on commit
    assert sorted(os.listdir(tmp_path)) == sorted([".jaxlin-lock", "config.json",
                                                   os.path.basename(w.staging)])


def test_a_run_of_its_own_where_a_study_writes_a_stage_is_named_as_one(tmp_path):
  # A softmax stage a study had dropped, then given to a linear run: "holds softmax, which
  # a run writes, but not from a jaxlin run" (it is one), and --overwrite could not help.
  (tmp_path / "softmax").mkdir()
  (tmp_path / "softmax" / "config.json").write_text(json.dumps({"experiment": "linear"}))
  for overwrite in (False, True):
    with pytest.raises(ConfigError, match=r"holds softmax/, a linear run of its own, where this "
                       r"study writes its softmax stage; move that run elsewhere"):
      Workdir(str(tmp_path), "study", overwrite=overwrite).open()
  assert os.listdir(tmp_path) == ["softmax"]
  (tmp_path / "softmax").rename(tmp_path / "config.json")  # a name a kNN run writes
  with pytest.raises(ConfigError, match=r"holds config.json/, a linear run; give this run a "
                     r"folder of its own \(e.g. --workdir=.*/NAME\)"):
    Workdir(str(tmp_path), "knn", overwrite=True).open()
  # A name a kNN run never writes: another run beside which it may write, and keep.
  (tmp_path / "config.json").rename(tmp_path / "knn")
  with pytest.raises(ConfigError, match=r"holds files that are not a jaxlin run \(knn\); choose "
                     r"an empty folder, or pass --overwrite to write the run beside them"):
    Workdir(str(tmp_path), "knn").open()
  with Workdir(str(tmp_path), "knn", overwrite=True) as w:
    with open(w.file("config.json"), "w") as f:
      f.write('{"experiment": "knn"}')
    w.commit()
  assert sorted(os.listdir(tmp_path / "knn")) == ["config.json"]


def test_foreign_files_are_named_three_at_most(tmp_path):
  for name in ("a", "b", "c"):
    (tmp_path / name).write_text("x")
  with pytest.raises(ConfigError, match=r"not a jaxlin run \(a, b, c\); choose"):
    Workdir(str(tmp_path), "knn").open()
  (tmp_path / "d").write_text("x")
  with pytest.raises(ConfigError, match=r"not a jaxlin run \(a, b, c \.\.\.\); choose"):
    Workdir(str(tmp_path), "knn").open()


def test_leftovers_of_runs_that_died_are_not_files_of_a_run_and_are_removed(tmp_path):
  from experiments import workdir  # pylint: disable=import-outside-toplevel
  for leftover in (".previous-999", ".staging-998"):
    (tmp_path / leftover).mkdir()
    (tmp_path / leftover / "results.json").write_text("{}")
  w = Workdir(str(tmp_path), "knn").open()
  try:
    assert sorted(os.listdir(tmp_path)) == [".jaxlin-lock", f".staging-{os.getpid()}"]
    assert w in workdir.OPEN
  finally:
    w.close()
  assert w not in workdir.OPEN and os.listdir(tmp_path) == []


def test_commit_moves_results_json_out_first_and_in_last(tmp_path, monkeypatch):
  """A reader that sees results.json sees the files of the same run beside it."""
  (tmp_path / "config.json").write_text('{"experiment": "knn"}')
  (tmp_path / "results.json").write_text("{}")
  (tmp_path / "zz.png").write_text("old")
  (tmp_path / ".run-files.json").write_text('["config.json", "results.json", "zz.png"]')
  w = Workdir(str(tmp_path), "knn").open()
  for name in ("a.png", "config.json", "results.json"):
    with open(w.file(name), "w") as f:
      f.write("new")
  moves, replace = [], os.replace
  monkeypatch.setattr(os, "replace", lambda src, dst: (moves.append(  # the run's files (not
      (os.path.basename(os.path.dirname(dst)), os.path.basename(src))) if not os.path.basename(
          src).startswith(".") else None, replace(src, dst)))  # the journal's and manifest's)
  try:
    w.commit()
  finally:
    w.close()
  into = [name for folder, name in moves if folder == tmp_path.name]
  out = [name for folder, name in moves if folder != tmp_path.name]
  assert moves[:len(out)] == [m for m in moves if m[0] != tmp_path.name]  # all out, then in
  assert (out[0], sorted(out)) == ("results.json", ["config.json", "results.json", "zz.png"])
  assert (into[-1], sorted(into)) == ("results.json", ["a.png", "config.json", "results.json"])
  assert sorted(os.listdir(tmp_path)) == [".run-files.json", "a.png", "config.json",
                                          "results.json"]


def test_a_stop_that_cannot_be_lost_closes_the_run_and_exits_130(tmp_path, monkeypatch, capsys):
  """Ctrl-C raises KeyboardInterrupt; if native code holds it, a daemon timer (or a second
  Ctrl-C) removes the staging folder, releases the lock and ends the process."""
  import types  # pylint: disable=import-outside-toplevel
  from experiments import common, workdir  # pylint: disable=import-outside-toplevel
  timers, stops = [], []

  class Timer:  # records what the handler schedules; nothing runs on its own
    def __init__(self, interval, function):
      self.interval, self.function, self.daemon, self.started = interval, function, None, False
      timers.append(self)

    def start(self):
      self.started = True

  monkeypatch.setattr(common, "threading", types.SimpleNamespace(Timer=Timer))
  monkeypatch.setattr(common, "_interrupted", threading.Event())
  monkeypatch.setattr(common, "_force_stop", lambda: stops.append("stop"))
  with pytest.raises(KeyboardInterrupt):
    common._on_interrupt(signal.SIGINT, None)  # pylint: disable=protected-access
  (timer,) = timers
  assert (timer.interval, timer.daemon, timer.started, stops) == (10.0, True, True, [])
  timer.function()  # the run did not end within the grace: the timer stops it
  assert stops == ["stop"]
  with pytest.raises(KeyboardInterrupt):
    common._on_interrupt(signal.SIGINT, None)  # pylint: disable=protected-access
  assert stops == ["stop", "stop"]  # a second Ctrl-C stops it at once
  monkeypatch.undo()

  class Exited(Exception):
    pass

  def fake_exit(code):
    raise Exited(code)

  monkeypatch.setattr(workdir, "OPEN", set())  # only this test's workdir
  (tmp_path / "config.json").write_text('{"experiment": "knn"}')
  w = Workdir(str(tmp_path), "knn").open()
  monkeypatch.setattr(os, "_exit", fake_exit)
  try:
    with pytest.raises(Exited) as e:
      common._force_stop()  # pylint: disable=protected-access
  finally:
    w.close()
  assert e.value.args == (130,)
  assert os.listdir(tmp_path) == ["config.json"]  # no staging folder, no lock
  assert capsys.readouterr().err.strip() == common.INTERRUPTED


def _staged_run(path, names=("a.png", "config.json", "results.json")):
  """A workdir holding a previous knn run (zz.png among its files) and an open Workdir whose
  staged run writes ``names``."""
  (path / "config.json").write_text('{"experiment": "knn"}')
  (path / "results.json").write_text('"old"')
  (path / "zz.png").write_text("old")
  (path / ".run-files.json").write_text('["config.json", "results.json", "zz.png"]')
  (path / "notes.txt").write_text("mine")  # not the run's: kept whatever happens
  w = Workdir(str(path), "knn", overwrite=True).open()
  for name in names:
    with open(w.file(name), "w") as f:
      f.write("new")
  return w


@pytest.mark.parametrize("moves_before_death", [0, 1, 2, 3, 4, 5])
def test_a_commit_cut_short_by_a_kill_is_completed_by_the_next_run(tmp_path, monkeypatch,
                                                                   moves_before_death):
  w = _staged_run(tmp_path)
  replace, done = os.replace, []

  def dies(src, dst):
    if not os.path.basename(src).startswith("."):
      if len(done) == moves_before_death:
        raise SystemExit("killed")  # as a kill: nothing after this line runs
      done.append(src)
    replace(src, dst)
  monkeypatch.setattr(os, "replace", dies)
  monkeypatch.setattr(Workdir, "_roll_back", lambda self, journal: None)  # killed: no undo
  with pytest.raises(SystemExit):
    w.commit()
  monkeypatch.setattr(os, "replace", replace)
  monkeypatch.undo()
  os.close(w._lock_fd)  # pylint: disable=protected-access  # the process is gone
  assert any(n.startswith(".commit-") for n in os.listdir(tmp_path))
  with Workdir(str(tmp_path), "knn", overwrite=True):  # the next run completes the commit first
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".")) == [
        "a.png", "config.json", "notes.txt", "results.json"]
    assert (tmp_path / "results.json").read_text() == "new"
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / ".run-files.json").read_text())["files"] == [
        "a.png", "config.json", "results.json"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith((".commit-", ".previous-"))]


def test_an_interrupt_during_the_commit_waits_for_it_and_the_run_is_complete(
    tmp_path, monkeypatch, caplog):
  from experiments import common  # pylint: disable=import-outside-toplevel
  w = _staged_run(tmp_path)
  replace, seen = os.replace, []

  def interrupted(src, dst):
    if not seen:
      seen.append(src)
      common._on_interrupt(2, None)  # pylint: disable=protected-access  # Ctrl-C now: no raise
    replace(src, dst)
  monkeypatch.setattr(os, "replace", interrupted)
  monkeypatch.setattr(common, "_late_interrupt", threading.Event())
  try:
    w.commit()
  finally:
    w.close()
  assert seen and common._late_interrupt.is_set()  # pylint: disable=protected-access
  assert not common._interrupted.is_set()  # pylint: disable=protected-access  # no stop begun
  assert (tmp_path / "results.json").read_text() == "new"
  assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".")) == [
      "a.png", "config.json", "notes.txt", "results.json"]


@pytest.mark.parametrize("moves_before_error", [0, 1, 2, 3, 4, 5])
def test_an_error_during_the_commit_puts_the_previous_run_back(tmp_path, monkeypatch,
                                                              moves_before_error):
  # An error midway (a folder that cannot be renamed, Ctrl-C in a caller's own Python) left
  # the journal, whose completion by the next run, without the staging folder the failed run
  # had removed, deleted the previous run's files.
  w = _staged_run(tmp_path)
  before = {n: (tmp_path / n).read_text() for n in ("config.json", "results.json", "zz.png")}
  replace, done = os.replace, []

  def fails(src, dst):  # the run's files' moves: 3 out, 3 in; the n-th fails
    if not os.path.basename(src).startswith("."):
      if len(done) == moves_before_error:
        monkeypatch.setattr(os, "replace", replace)  # the undo's own moves succeed
        raise PermissionError(13, "Permission denied")
      done.append(src)
    replace(src, dst)
  monkeypatch.setattr(os, "replace", fails)
  try:
    with pytest.raises(ConfigError, match=r"the previous run's files could not be replaced: "
                       r"Permission denied; this run's files were not written and the "
                       r"previous run stays"):
      w.commit()
  finally:
    monkeypatch.setattr(os, "replace", replace)
    w.close()
  assert {n: (tmp_path / n).read_text() for n in before} == before
  assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".")) == [
      "config.json", "notes.txt", "results.json", "zz.png"]
  assert os.listdir(tmp_path) == [n for n in os.listdir(tmp_path) if n == ".run-files.json" or
                                  not n.startswith(".")]  # no journal, trash or staging left
  with Workdir(str(tmp_path), "knn", overwrite=True):  # and the next run finds it so
    assert {n: (tmp_path / n).read_text() for n in before} == before


def test_a_commit_after_a_forced_stop_closed_the_workdir_commits_nothing(tmp_path):
  w = _staged_run(tmp_path)
  w.close()  # the forced stop's thread, before the main thread's commit
  with pytest.raises(RuntimeError, match="closed before its files were committed"):
    w.commit()
  assert (tmp_path / "results.json").read_text() == '"old"'


def test_files_of_the_same_names_as_a_runs_are_never_replaced(tmp_path):
  # A folder that is not a run's, holding names a run writes: --overwrite deleted them.
  (tmp_path / "plots").mkdir()
  (tmp_path / "plots" / "fig1.png").write_text("mine")
  (tmp_path / "config.json").write_text('{"tool": "other"}')
  with pytest.raises(ConfigError, match=r"holds config.json, plots, which a linear run writes, "
                     r"but not from a jaxlin run; choose another --workdir"):
    Workdir(str(tmp_path), "linear", overwrite=True).open()
  assert (tmp_path / "plots" / "fig1.png").read_text() == "mine"
  # Left behind by a process killed while writing its journal or manifest: not a user's
  # file, removed (the next run was refused).
  (tmp_path / "plots" / "fig1.png").unlink()
  (tmp_path / "plots").rmdir()
  (tmp_path / "config.json").unlink()
  (tmp_path / "..run-files.json.k2j3.tmp").write_text("[")
  (tmp_path / "..commit-12.json.ab.tmp").write_text("{")
  with Workdir(str(tmp_path), "knn"):
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_an_interrupt_during_a_stages_commit_stops_the_study(tmp_path, monkeypatch, capsys):
  # It was kept for after the stage's commit, and then forgotten: the study ran on and
  # exited 0 (a scheduler's one SIGTERM lost).
  from experiments import common  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(common, "_late_interrupt", threading.Event())
  monkeypatch.setattr(common, "_interrupted", threading.Event())
  config = knn_exp.Config.make({"dataset": "folder:/x"})
  replace, seen = os.replace, []

  def interrupted(src, dst):
    if not seen and not os.path.basename(src).startswith("."):
      seen.append(src)
      common._on_interrupt(2, None)  # pylint: disable=protected-access
    replace(src, dst)
  with pytest.raises(KeyboardInterrupt):
    with common.Run("study", config, str(tmp_path / "wd")) as study_run:
      with common.Run("knn", config, study_run.file("knn")) as stage:
        monkeypatch.setattr(os, "replace", interrupted)
        stage.finish({})  # its files commit, then the study stops
      raise AssertionError("the study went on")
  monkeypatch.setattr(os, "replace", replace)
  assert seen and not (tmp_path / "wd").exists()  # a first study: nothing left
  # A forced stop after the run's own commit says the run is complete.
  from experiments import workdir  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(workdir, "OPEN", set())
  monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
  w = _staged_run(tmp_path / "done" if (tmp_path / "done").mkdir() is None else None)
  w.commit()
  with pytest.raises(SystemExit):
    common._force_stop()  # pylint: disable=protected-access
  assert capsys.readouterr().err.strip() == common.INTERRUPTED_AFTER_COMMIT
  assert (tmp_path / "done" / "results.json").read_text() == "new"


@pytest.mark.parametrize("step", ["journal removal", "trash removal", "staging removal"])
@pytest.mark.parametrize("how", ["kill", "error"])
def test_past_the_manifest_the_new_run_stands(tmp_path, monkeypatch, step, how):
  # After the manifest is written (the commit point) nothing is undone: a recovery there
  # mixed both runs (the trash already gone) or left the new manifest over the old files.
  w = _staged_run(tmp_path)
  remove, rmtree = os.remove, shutil.rmtree
  stop = SystemExit("killed") if how == "kill" else KeyboardInterrupt()

  def failing_remove(path, *a, **k):
    if step == "journal removal" and os.path.basename(path).startswith(".commit-"):
      raise stop
    return remove(path, *a, **k)

  def failing_rmtree(path, *a, **k):
    if os.path.basename(path).startswith(".previous-" if step == "trash removal" else
                                         ".staging-"):
      raise stop
    return rmtree(path, *a, **k)
  monkeypatch.setattr(os, "remove", failing_remove)
  monkeypatch.setattr(shutil, "rmtree", failing_rmtree)
  if how == "kill":
    monkeypatch.setattr(Workdir, "_roll_back", lambda self, journal: None)
  with pytest.raises(type(stop)):
    w.commit()
  monkeypatch.undo()
  if how == "kill":
    os.close(w._lock_fd)  # pylint: disable=protected-access  # the process is gone
  else:
    w.close()
  with Workdir(str(tmp_path), "knn", overwrite=True):  # the next run: the new one stands
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".")) == [
        "a.png", "config.json", "notes.txt", "results.json"]
    assert (tmp_path / "results.json").read_text() == "new"
    assert not [n for n in os.listdir(tmp_path) if n.startswith((".commit-", ".previous-"))]


def test_ctrl_c_twice_during_a_commit_waits_for_it(tmp_path, monkeypatch):
  # A second Ctrl-C before the files moved called the forced stop on the thread holding the
  # commit's lock: a deadlock only kill -9 ended.
  from experiments import common  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(common, "_late_interrupt", threading.Event())
  monkeypatch.setattr(common, "_interrupted", threading.Event())
  stops = []
  monkeypatch.setattr(common, "_force_stop", lambda: stops.append("stop"))
  w = _staged_run(tmp_path)
  write = files.write_json

  def interrupted_twice(path, obj, **kwargs):
    if os.path.basename(path).startswith(".commit-"):
      common._on_interrupt(2, None)  # pylint: disable=protected-access
      common._on_interrupt(2, None)  # pylint: disable=protected-access
    return write(path, obj, **kwargs)
  monkeypatch.setattr(files, "write_json", interrupted_twice)
  try:
    w.commit()
  finally:
    w.close()
  assert stops == [] and common._late_interrupt.is_set()  # pylint: disable=protected-access
  assert (tmp_path / "results.json").read_text() == "new"


def test_names_like_the_workdirs_own_are_a_users_files(tmp_path):
  # Matched by prefix, they were deleted at open, without --overwrite; a ".lock" of the
  # user's was truncated and removed.
  mine = {".staging-notes": None, ".previous-results.json": "a", ".commit-message.json": "b",
          ".lock": "my lock"}
  for name, text in mine.items():
    if text is None:
      (tmp_path / name).mkdir()
    else:
      (tmp_path / name).write_text(text)
  with pytest.raises(ConfigError, match=r"not a jaxlin run \(\.commit-message\.json, \.lock, "):
    Workdir(str(tmp_path), "knn").open()
  with Workdir(str(tmp_path), "knn", overwrite=True) as w:
    with open(w.file("results.json"), "w") as f:
      f.write("new")
    w.commit()
  assert sorted(os.listdir(tmp_path)) == sorted([*mine, ".run-files.json", "results.json"])
  assert (tmp_path / ".lock").read_text() == "my lock"
  # A lock of the name runs used before: held by a live run of that code, the workdir is in
  # use (it was removed, and both runs went on); left by a run that died, removed.
  (tmp_path / ".lock").write_text(json.dumps(dict(pid=1, host="h", experiment="knn",
                                                  started="2026-12-01 10:00:00")))
  fd = os.open(tmp_path / ".lock", os.O_RDWR)
  fcntl.flock(fd, fcntl.LOCK_EX)
  try:
    with pytest.raises(ConfigError, match=r"in use by another run \(knn, process 1 on h"):
      Workdir(str(tmp_path), "knn", overwrite=True).open()
  finally:
    os.close(fd)
  assert (tmp_path / ".lock").exists() and not (tmp_path / ".jaxlin-lock").exists()
  with Workdir(str(tmp_path), "knn", overwrite=True):
    assert not (tmp_path / ".lock").exists()


def test_a_journal_that_cannot_be_read_gives_the_previous_run_back(tmp_path):
  # A power loss could leave an empty journal (it was not synced): the next open deleted it,
  # then the previous run's files in the trash and the new run's staging folder.
  (tmp_path / ".run-files.json").write_text('["config.json", "results.json", "zz.png"]')
  (tmp_path / "config.json").write_text('{"experiment": "knn"}')  # not moved out yet
  (tmp_path / ".previous-77").mkdir()
  (tmp_path / ".previous-77" / "results.json").write_text("old")
  (tmp_path / ".previous-77" / "zz.png").write_text("old")
  (tmp_path / ".staging-77").mkdir()
  (tmp_path / ".staging-77" / "results.json").write_text("new")
  (tmp_path / ".commit-77.json").write_text("")
  with Workdir(str(tmp_path), "knn"):
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".")) == [
        "config.json", "results.json", "zz.png"]
    assert (tmp_path / "results.json").read_text() == "old"
    assert not [n for n in os.listdir(tmp_path) if n.startswith((".commit-", ".previous-"))]


def test_an_unreadable_journal_after_new_files_moved_in_gives_the_previous_run_back(tmp_path):
  # The new run's results.json and metrics.jsonl had moved in: they stayed beside the old
  # run's files, and metrics.jsonl, not in the manifest, then made every open refuse the
  # workdir (--overwrite too).
  (tmp_path / ".run-files.json").write_text('["config.json", "model.npz", "results.json"]')
  (tmp_path / "config.json").write_text('{"experiment": "linear"}')
  (tmp_path / "results.json").write_text("new")
  (tmp_path / "metrics.jsonl").write_text("new")
  (tmp_path / "notes.txt").write_text("mine")
  (tmp_path / ".previous-77").mkdir()
  (tmp_path / ".previous-77" / "results.json").write_text("old")
  (tmp_path / ".previous-77" / "model.npz").write_text("old")
  (tmp_path / ".staging-77").mkdir()
  (tmp_path / ".staging-77" / "config.json").write_text('{"experiment": "linear"}')
  (tmp_path / ".commit-77.json").write_text('{"old": ["config.js')  # cut short
  with Workdir(str(tmp_path), "linear", overwrite=True):
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".")) == [
        "config.json", "model.npz", "notes.txt", "results.json"]
    assert (tmp_path / "results.json").read_text() == "old"
  with Workdir(str(tmp_path), "linear", overwrite=True):  # and the next open is no different
    pass


def test_a_commit_syncs_the_staged_files_the_journal_and_the_manifest(tmp_path, monkeypatch):
  """On the disk before the step that needs them: a power loss keeps one whole run."""
  w = _staged_run(tmp_path)
  fsync, synced = os.fsync, set()

  def recording(fd):
    synced.add(os.fstat(fd).st_ino)
    return fsync(fd)
  monkeypatch.setattr(os, "fsync", recording)
  try:
    w.commit()
  finally:
    w.close()
  for name in ("a.png", "config.json", "results.json", ".run-files.json", "."):
    assert os.stat(tmp_path / name).st_ino in synced, name


def test_an_error_past_the_commit_point_is_no_failure(tmp_path, monkeypatch):
  # A journal that could not be removed after the manifest was written: commit raised, and
  # the run, whose files were in place, was reported as failed.
  w = _staged_run(tmp_path)
  remove = os.remove

  def failing(path, *a, **k):
    if os.path.basename(path).startswith(".commit-"):
      raise PermissionError(13, "Permission denied", path)
    return remove(path, *a, **k)
  monkeypatch.setattr(os, "remove", failing)
  try:
    w.commit()
  finally:
    w.close()
  monkeypatch.undo()
  assert w.committed and (tmp_path / "results.json").read_text() == "new"
  with Workdir(str(tmp_path), "knn", overwrite=True):  # the next open removes what was left
    assert not [n for n in os.listdir(tmp_path) if n.startswith((".commit-", ".previous-"))]
    assert (tmp_path / "results.json").read_text() == "new"


def test_a_second_interrupt_while_a_stage_closes_stops_at_once(tmp_path, monkeypatch, capsys):
  # The forced stop waited for a lock its own thread held (closing the stage's workdir):
  # only SIGKILL ended the process.
  from experiments import common, workdir  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(workdir, "OPEN", set())
  study = Workdir(str(tmp_path / "study"), "study").open()
  stage = Workdir(study.file("knn"), "knn").open()
  rmtree, stops = shutil.rmtree, []

  def interrupted(path, *a, **k):
    if not stops and os.path.basename(path).startswith(".staging-"):
      stops.append(path)
      common._force_stop()  # pylint: disable=protected-access  # as the handler calls it
    return rmtree(path, *a, **k)

  def fake_exit(code):
    raise SystemExit(code)
  monkeypatch.setattr(shutil, "rmtree", interrupted)
  monkeypatch.setattr(os, "_exit", fake_exit)
  codes = []

  def close():
    try:
      stage.close()
    except SystemExit as e:
      codes.append(e.code)
  thread = threading.Thread(target=close, daemon=True)
  thread.start()
  thread.join(30)
  assert not thread.is_alive() and codes == [130]
  assert capsys.readouterr().err.strip() == common.INTERRUPTED
  assert not (tmp_path / "study").exists()  # a first study: its folder gone with the stop


def test_the_run_reports_an_interrupt_after_its_commit_and_a_commit_that_failed(
    tmp_path, monkeypatch, capsys):
  from experiments import common, workdir  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(common, "_late_interrupt", threading.Event())
  monkeypatch.setattr(common, "_committed", threading.Event())
  monkeypatch.setattr(workdir, "OPEN", set())
  config = knn_exp.Config.make({"dataset": "folder:/x"})
  # A Ctrl-C while the commit failed (a full disk) was kept for the next stage's commit.
  commit = Workdir.commit

  def interrupted_and_failing(self):
    common._late_interrupt.set()  # pylint: disable=protected-access
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(Workdir, "commit", interrupted_and_failing)
  with pytest.raises(KeyboardInterrupt):
    with common.Run("knn", config, str(tmp_path / "a")) as run:
      run.finish({})
  assert not (tmp_path / "a").exists()
  # A Ctrl-C after the run's files were written (its workdir closed): they were.
  monkeypatch.setattr(Workdir, "commit", commit)
  with common.Run("knn", config, str(tmp_path / "b")) as run:
    run.finish({})
  assert common._committed.is_set()  # pylint: disable=protected-access
  monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
  with pytest.raises(SystemExit):
    common._force_stop()  # pylint: disable=protected-access
  assert capsys.readouterr().err.strip() == common.INTERRUPTED_AFTER_COMMIT
  assert json.loads((tmp_path / "b" / "results.json").read_text())["processes"] == 1
  # A run whose config.json cannot be written (a full disk) leaves no lock, staging folder
  # or open run: before, its workdir stayed locked and open.
  write = files.write_json

  def full(path, obj, **kwargs):
    if os.path.basename(path) == "config.json":
      raise OSError(28, "No space left on device", path)
    return write(path, obj, **kwargs)
  monkeypatch.setattr(files, "write_json", full)
  with pytest.raises(OSError, match="No space"):
    with common.Run("knn", config, str(tmp_path / "c")):
      raise AssertionError("the run began")
  assert not (tmp_path / "c").exists() and not workdir.OPEN
  assert not common._RUNS  # pylint: disable=protected-access


def _hold_lock(folder):
  """The workdir lock of ``folder`` held as another process's run would hold it (a lock of
  its own, not one of this process's open workdirs)."""
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, ".jaxlin-lock")
  fd = os.open(path, os.O_RDWR | os.O_CREAT)
  fcntl.flock(fd, fcntl.LOCK_EX)
  os.write(fd, json.dumps(dict(pid=4242, host="h", experiment="study",
                               started="2026-12-05 18:00:00")).encode())
  return fd


def test_a_run_inside_or_around_a_run_in_progress_is_refused(folder, tmp_path):
  """A run into a study's stage folder while the study runs was accepted; the study then
  found the folder at its end and wrote nothing. The reverse (a study over a stage folder a
  run is writing) too."""
  study_dir = tmp_path / "study"
  fd = _hold_lock(study_dir)
  try:
    with pytest.raises(ConfigError, match=r"inside the workdir .*study of a run in progress "
                       r"\(study, process 4242 on h"):
      knn_exp.run(dict(dataset=f"folder:{folder}", **KNN), str(study_dir / "knn"))
    assert not (study_dir / "knn").exists()
  finally:
    os.close(fd)
  knn_exp.run(dict(dataset=f"folder:{folder}", **KNN), str(study_dir / "knn"))  # free again
  fd = _hold_lock(tmp_path / "outer" / "knn")
  try:
    with pytest.raises(ConfigError, match="holds the workdir knn of a run in progress"):
      knn_exp.run(dict(dataset=f"folder:{folder}", **KNN), str(tmp_path / "outer"))
  finally:
    os.close(fd)


def test_a_users_file_inside_a_runs_folder_is_refused_and_kept(tmp_path):
  """A rerun replaces the previous run's folders whole: a file put in plots/ (or a study's
  stage) was deleted with them. It is refused, --overwrite too, before and during a run."""
  def run(*names, overwrite=False):
    with Workdir(str(tmp_path), "knn", overwrite=overwrite) as w:
      for name in names:
        os.makedirs(os.path.dirname(w.file(name)), exist_ok=True)
        with open(w.file(name), "w") as f:
          f.write('{"experiment": "knn"}' if name == "config.json" else "run")
      w.commit()
  run("config.json", "plots/a.png", "plots/deep/b.png")
  manifest = json.loads((tmp_path / ".run-files.json").read_text())
  assert manifest["tree"] == ["plots/a.png", "plots/deep/b.png"]
  run("config.json", "plots/a.png")  # the run's own files: replaced
  assert sorted(os.listdir(tmp_path / "plots")) == ["a.png"]
  (tmp_path / "plots" / "notes.txt").write_text("mine")
  for overwrite in (False, True):
    with pytest.raises(ConfigError, match=r"holds files inside the previous run's folders that "
                       r"are not that run's \(plots/notes.txt\); a new run replaces"):
      run("config.json", "plots/a.png", overwrite=overwrite)
    assert (tmp_path / "plots" / "notes.txt").read_text() == "mine"
  (tmp_path / "plots" / "notes.txt").unlink()
  # Gained during the run: the commit refuses, and the previous run stays.
  with pytest.raises(ConfigError, match=r"gained during the run files inside the previous "
                     r"run's folders .*\(plots/new.txt\); a new run replaces those folders "
                     r"whole, so this run wrote nothing: move the files"):
    with Workdir(str(tmp_path), "knn") as w:
      with open(w.file("config.json"), "w") as f:
        f.write('{"experiment": "knn"}')
      (tmp_path / "plots" / "new.txt").write_text("mine")
      w.commit()
  assert (tmp_path / "plots" / "new.txt").read_text() == "mine"
  assert (tmp_path / "plots" / "a.png").read_text() == "run"
  # A manifest written before the tree, or none (a run written before manifests, or copied
  # without its hidden one: `cp -r run/* copy/`): the figures runs write are the run's, any
  # other file is refused (a user's figure in a copy's plots/ was deleted).
  (tmp_path / "plots" / "new.txt").unlink()
  for manifest in ('{"files": ["config.json", "plots"], "commit": null}', None):
    if manifest is None:
      (tmp_path / ".run-files.json").unlink()
    else:
      (tmp_path / ".run-files.json").write_text(manifest)
    (tmp_path / "plots" / "confusion.png").write_text("an old run's")
    (tmp_path / "plots" / "annotated.png").write_text("mine")
    with pytest.raises(ConfigError, match=r"not that run's \(plots/a.png, plots/annotated.png\)"):
      run("config.json", "plots/a.png", overwrite=True)
    for name in ("a.png", "annotated.png"):
      (tmp_path / "plots" / name).unlink()
    run("config.json", "plots/a.png")
    assert sorted(os.listdir(tmp_path / "plots")) == ["a.png"]


def test_a_study_without_manifests_keeps_a_users_file_in_its_stages(tmp_path):
  """A study written before manifests, or copied without them: its stages' files are those
  their experiments write (and a stage's old lock); a user's figure among them is refused,
  and kept."""
  files = {"config.json": {"experiment": "study"}, "report.md": "r",
           "knn/config.json": {"experiment": "knn"}, "knn/results.json": {},
           "knn/plots/confusion.png": "f",
           "knn/.lock": dict(pid=1, host="h", experiment="knn", started="s"),
           "svm/config.json": {"experiment": "linear"}, "svm/model.npz": "m",
           "svm/tensorboard/lr=0.1/events.out.tfevents.1.h.2.0.v2": "e"}
  for rel, value in files.items():
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(value if isinstance(value, str) else json.dumps(value))
  for mine in ("knn/plots/mine.png", "svm/notes.txt", "svm/tensorboard/notes.txt"):
    (tmp_path / mine).write_text("mine")
    with pytest.raises(ConfigError, match=re.escape(f"not that run's ({mine})")):
      Workdir(str(tmp_path), "study", overwrite=True).open()
    assert (tmp_path / mine).read_text() == "mine"
    (tmp_path / mine).unlink()
  with Workdir(str(tmp_path), "study") as w:  # the study's own files only: taken
    with open(w.file("config.json"), "w") as f:
      f.write('{"experiment": "study"}')
    w.commit()
  assert sorted(os.listdir(tmp_path)) == [".run-files.json", "config.json"]


def test_a_dangling_link_as_workdir_is_named(tmp_path):
  (tmp_path / "w").symlink_to(tmp_path / "gone")  # was "not writable (File exists)"
  with pytest.raises(ConfigError, match=rf"workdir {tmp_path}/w is a link to {tmp_path}/gone, "
                     r"which does not exist; create that folder"):
    Workdir(str(tmp_path / "w"), "knn").open()


def test_a_stage_run_again_alone_and_a_killed_ones_leftovers_are_a_runs_files(tmp_path):
  """A study's stage run again on its own (--overwrite, as the refusal invites) writes files
  of new names, listed by the stage's own manifest; a stage run killed there leaves its lock
  and staging folder; a file browser leaves .DS_Store: none of them a user's, and the study
  was refused over them."""
  def write(w, name, text="x"):
    os.makedirs(os.path.dirname(w.file(name)), exist_ok=True)
    with open(w.file(name), "w") as f:
      f.write(text)

  def stage(path, kind, event, overwrite=False):
    with Workdir(path, kind, overwrite=overwrite) as s:
      write(s, "config.json", json.dumps({"experiment": kind}))
      write(s, f"tensorboard/lr/events.{event}")
      s.commit()

  def study():
    with Workdir(str(tmp_path), "study") as w:
      write(w, "config.json", json.dumps({"experiment": "study"}))
      stage(w.file("svm"), "linear", time.time_ns())
      w.commit()
  study()
  stage(str(tmp_path / "svm"), "linear", "alone", overwrite=True)
  (tmp_path / "svm" / ".staging-999999").mkdir()
  (tmp_path / "svm" / ".staging-999999" / "results.json").write_text("{}")
  (tmp_path / "svm" / ".jaxlin-lock").write_text("")
  (tmp_path / "svm" / "tensorboard" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1...")
  study()  # was refused, naming svm/tensorboard/lr/events.alone
  assert sorted(os.listdir(tmp_path / "svm")) == [".run-files.json", "config.json",
                                                  "tensorboard"]
  (tmp_path / "svm" / "tensorboard" / "mine.txt").write_text("mine")  # a user's: refused
  with pytest.raises(ConfigError, match=r"\(svm/tensorboard/mine.txt\)"):
    study()


def test_a_redelivered_interrupt_is_not_raised_twice(monkeypatch):
  """The timer that raises a swallowed interrupt again must not fire once the run has raised
  it itself (Run.finish reads the record): a second KeyboardInterrupt landed in the run's
  clean-up and left its staging folder."""
  from experiments import common  # pylint: disable=import-outside-toplevel
  calls = []
  monkeypatch.setattr(common._thread, "interrupt_main", lambda: calls.append(1))
  for name in ("_interrupted", "_redeliver"):
    monkeypatch.setattr(common, name, threading.Event())
  common._interrupted.set()
  swallowed = type("Args", (), {"exc_type": KeyboardInterrupt})()
  common._unraisable(swallowed)
  time.sleep(0.2)
  assert calls == [1]  # raised again
  common._unraisable(swallowed)
  common._redeliver.clear()  # as Run.finish does when it raises the interrupt itself
  time.sleep(0.2)
  assert calls == [1]


@pytest.mark.parametrize("name", [
    "svm/k3/config.json",  # a finished run of the user's inside a stage: its manifest is deeper
    "plots/old/config.json",  # a copy of a run kept in plots/
    "plots/.staging-12/notes.txt",  # bookkeeping names outside a stage folder: the user's
    "plots/.jaxlin-lock/data.csv",
    "plots/mine/notes.txt",  # beside a manifest the user wrote (below)
    "svm/tensorboard/notes.txt",  # in a stage whose manifest has no tree (below)
])
def test_only_a_stage_folders_own_manifest_and_bookkeeping_vouch_for_files(tmp_path, name):
  """Trusting a manifest or a bookkeeping name at any depth deleted the user's files (each
  of these was taken for a run's)."""
  def write(w, rel, text="x"):
    os.makedirs(os.path.dirname(w.file(rel)), exist_ok=True)
    with open(w.file(rel), "w") as f:
      f.write(text)

  with Workdir(str(tmp_path), "study") as w:
    write(w, "config.json", json.dumps({"experiment": "study"}))
    write(w, "plots/a.png")
    write(w, "svm/config.json", json.dumps({"experiment": "linear"}))
    write(w, "svm/tensorboard/events.1")
    w.commit()
  inner = os.path.join(os.path.dirname(str(tmp_path / name)), ".run-files.json")
  if name.startswith(("svm/k3", "plots/old")):
    os.makedirs(os.path.dirname(inner), exist_ok=True)
    with open(inner, "w") as f:
      json.dump({"files": ["config.json"], "tree": [], "commit": "1"}, f)
  elif name == "plots/mine/notes.txt":
    os.makedirs(os.path.dirname(inner), exist_ok=True)
    with open(inner, "w") as f:
      json.dump({"files": ["notes.txt"], "tree": [], "commit": None}, f)
  elif name == "svm/tensorboard/notes.txt":
    (tmp_path / "svm" / ".run-files.json").write_text('["config.json", "tensorboard"]')
  os.makedirs(os.path.dirname(str(tmp_path / name)), exist_ok=True)
  (tmp_path / name).write_text("mine")
  for overwrite in (False, True):
    with pytest.raises(ConfigError, match=re.escape(name)):
      Workdir(str(tmp_path), "study", overwrite=overwrite).open()
  assert (tmp_path / name).read_text() == "mine"


def test_a_file_browsers_litter_is_no_users_file(tmp_path):
  with Workdir(str(tmp_path), "knn") as w:
    os.makedirs(os.path.dirname(w.file("plots/a.png")))
    for rel, text in (("config.json", '{"experiment": "knn"}'), ("plots/a.png", "x")):
      with open(w.file(rel), "w") as f:
        f.write(text)
    w.commit()
  for rel, start in ((".DS_Store", b""), ("plots/.DS_Store", b"\x00\x00\x00\x01Bud1"),
                     ("plots/._a.png", b"\x00\x05\x16\x07"),
                     ("plots/Thumbs.db", b"\xd0\xcf\x11\xe0")):
    (tmp_path / rel).write_bytes(start + b"...")
  with Workdir(str(tmp_path), "knn") as w:  # was refused: "not a jaxlin run (.DS_Store)"
    pass
  assert (tmp_path / ".DS_Store").exists()  # the workdir's own: left alone
  for rel in ("plots/._notes", "plots/.DS_Store", "plots/desktop.ini"):  # names, not bytes
    (tmp_path / rel).write_text("mine")
    with pytest.raises(ConfigError, match=re.escape(rel)):
      Workdir(str(tmp_path), "knn").open()
    (tmp_path / rel).unlink()


def test_a_run_of_the_users_inside_a_runs_plots_is_the_users(tmp_path):
  """Only a study's stage folders vouch for their files: a run the user made in plots/
  (--overwrite writes beside what is there) vouched for itself, and the rerun deleted it."""
  def run(path, kind, overwrite=False):
    with Workdir(str(path), kind, overwrite=overwrite) as w:
      os.makedirs(os.path.dirname(w.file("plots/a.png")))
      for rel, text in (("config.json", json.dumps({"experiment": kind})), ("plots/a.png", "x")):
        with open(w.file(rel), "w") as f:
          f.write(text)
      w.commit()
  run(tmp_path, "linear")
  # A run inside the run's plots/ (--overwrite wrote beside the figures; the parent's next run
  # was then refused): refused at once, naming the folder to write outside.
  for overwrite in (False, True):
    with pytest.raises(ConfigError, match=r"plots is plots/ of the linear run in .*, which its "
                       r"next run replaces whole; choose a folder outside it"):
      run(tmp_path / "plots", "linear", overwrite=overwrite)
  # One copied there is the user's: refused, and kept.
  for name in (".run-files.json", "config.json"):
    (tmp_path / "plots" / name).write_text(json.dumps({"experiment": "linear", "files": []}))
  with pytest.raises(ConfigError, match=r"plots/.run-files.json, plots/config.json"):
    run(tmp_path, "linear")
  assert json.loads((tmp_path / "plots" / "config.json").read_text())["experiment"] == "linear"
  with pytest.raises(ConfigError, match=r"plots/deeper is inside plots/ of the linear run"):
    run(tmp_path / "plots" / "deeper", "linear")
  (tmp_path.parent / f"{tmp_path.name}-figs").symlink_to(tmp_path / "plots")  # through a link
  with pytest.raises(ConfigError, match=r"figs/x is inside plots/ of the linear run in "):
    run(tmp_path.parent / f"{tmp_path.name}-figs" / "x", "linear")
  # Folders above are not listed (one may be entered, not read: mode 711): the run's
  # manifest says what it holds.
  real = os.listdir

  def listdir(path="."):
    if os.path.abspath(path) == str(tmp_path):
      raise PermissionError(13, "Permission denied", path)
    return real(path)

  with pytest.MonkeyPatch.context() as m:
    m.setattr(os, "listdir", listdir)
    with pytest.raises(ConfigError, match=r"plots/deeper is inside plots/ of the linear run"):
      run(tmp_path / "plots" / "deeper", "linear")
    run(tmp_path / "notes" / "wd", "linear")  # (was: Permission denied, with a --workdir fix)
  shutil.rmtree(tmp_path / "notes")
  # A run whose config.json is gone, its manifest kept: "the jaxlin run"; a stage folder
  # of it is a run's own folder (_check_kind decides), not one inside the run.
  shutil.rmtree(tmp_path / "plots")
  run(tmp_path, "linear")
  (tmp_path / "config.json").unlink()
  with pytest.raises(ConfigError, match=r"plots is plots/ of the jaxlin run in"):
    run(tmp_path / "plots", "linear")
  (tmp_path / ".run-files.json").write_text(json.dumps({"files": ["knn"], "tree": []}))
  run(tmp_path / "knn", "knn", overwrite=True)


def test_the_stage_folders_are_the_studys_stages():
  from experiments import study, workdir  # pylint: disable=import-outside-toplevel
  assert workdir.STAGE_NAMES == set(study.STAGES)
