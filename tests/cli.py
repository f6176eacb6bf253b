"""Command lines run as `python -m MODULE ARGS...` would run them, for the tests of one-line
errors on bad flags, without paying the interpreter's start and JAX's import for each.

A server process imports what every entry point imports (JAX, absl, jaxlin, the experiments'
common module; no device is started, and no module that defines flags is imported), then
forks once per command line. The child runs the module as ``__main__`` with
runpy, as ``python -m`` does, with its stdout and stderr in files, and ends with the module's
exit code (atexit handlers run, as at the interpreter's exit; a command line still running
after its timeout is killed and raises subprocess.TimeoutExpired). Tests that set their own
environment (read when JAX is imported) start real processes instead.
"""
import json
import os
import subprocess
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SERVER = r"""
import atexit, ctypes, json, os, runpy, signal, sys, tempfile, time, traceback
import jax, numpy, absl.app, absl.flags  # what every entry point imports; no device started
import experiments.common  # noqa: F401  (benchmarks.common defines flags: not here)
from jaxlin import data, distances, knn, selection, train  # noqa: F401
print("ready", flush=True)
for line in sys.stdin:
  request = json.loads(line)
  out, err = (tempfile.mkstemp(prefix="jaxlin-cli-")[1] for _ in range(2))
  pid = os.fork()
  if pid == 0:
    code = 1
    try:
      ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: ends with the server
      if request["file_size_limit"] is not None:  # as `ulimit -f`: writes beyond fail (EFBIG)
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (request["file_size_limit"],) * 2)
      os.chdir(request["cwd"])
      for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY), fd)
      sys.argv = [request["module"], *request["args"]]
      try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
      except SystemExit as e:  # as the interpreter ends: a message goes to stderr, code 1
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
          print(e.code, file=sys.stderr)
      except BaseException:  # pylint: disable=broad-except
        traceback.print_exc()
        code = 1
      atexit._run_exitfuncs()  # as the interpreter's exit runs them (errors printed there)
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      os._exit(code)
  deadline, timed_out = time.monotonic() + request["timeout"], False
  while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      break
    if time.monotonic() > deadline and not timed_out:
      os.kill(pid, signal.SIGKILL)
      timed_out = True
    time.sleep(0.005)
  texts = []
  for path in (out, err):
    with open(path, encoding="utf-8", errors="replace") as f:
      texts.append(f.read())
    os.remove(path)
  print(json.dumps({"returncode": os.waitstatus_to_exitcode(status), "stdout": texts[0],
                    "stderr": texts[1], "timed_out": timed_out}), flush=True)
"""


class Result:
  """What a finished command line left: its exit code, stdout and stderr (as subprocess's)."""

  def __init__(self, returncode, stdout, stderr):
    self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


class Runner:
  """Runs command lines one at a time in forks of one prepared server process."""

  def __init__(self):
    self._proc = subprocess.Popen([sys.executable, "-c", _SERVER], cwd=ROOT,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self._lock = threading.Lock()
    ready = self._proc.stdout.readline()
    assert ready == "ready\n", ready

  def run(self, module, *args, cwd=ROOT, timeout: float = 60.0,
          file_size_limit: int | None = None):
    """`python -m module args...` in cwd; returns a Result. A command line still running
    after ``timeout`` seconds is killed, and subprocess.TimeoutExpired raised (with what it
    had written), as subprocess.run(timeout=...) does. ``file_size_limit``: the largest
    file (bytes) it may write, as `ulimit -f` sets it."""
    argv = [module, *map(str, args)]
    with self._lock:
      self._proc.stdin.write(json.dumps({"module": module, "args": argv[1:], "cwd": str(cwd),
                                         "timeout": timeout,
                                         "file_size_limit": file_size_limit}) + "\n")
      self._proc.stdin.flush()
      line = self._proc.stdout.readline()
    assert line, "the command-line server ended"
    out = json.loads(line)
    if out.pop("timed_out"):
      raise subprocess.TimeoutExpired(argv, timeout, out["stdout"], out["stderr"])
    return Result(**out)

  def close(self):
    self._proc.stdin.close()
    try:
      self._proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      self._proc.kill()  # (its children end with it: PR_SET_PDEATHSIG)
