"""A multi-host process runs under a small supervisor, so that a lost coordinator ends it with
one line.

When process 0 (which hosts JAX's coordination service) dies, JAX ends every other process
from one of its own threads: ``LOG(FATAL)`` with a C++ stack dump and an abort, before any
Python code can react. So on Linux a multi-host run of an entry point (``python -m
experiments.X`` with ``--coordinator_address``, ``--num_processes`` > 1 or ``--distributed``)
starts itself again as a child of a supervisor that imports only the standard library:

* the child's stdout is the supervisor's own; its stderr passes through as it comes
  (progress bars included) until JAX's report of a lost coordination service begins; that
  report and what follows it (stack dumps) are held back;
* when the child then ends with an error, the supervisor prints one line naming the cause
  (a lost coordinator, or the coordinator's refusal of this process as it joined), removes
  the child's staging folder and exits with code 1. A child killed by SIGKILL (the
  out-of-memory killer, ``kill -9``), which says nothing itself, gets one line too, its
  staging folder removed, and exit code 137. Any other crash passes through untouched,
  and the child's exit code (or signal) becomes the supervisor's;
* the child runs in its own process group: SIGINT (Ctrl-C), SIGTERM and SIGHUP reach it once,
  through the supervisor, as SIGINT (JAX's preemption notifier would swallow a SIGTERM), so the
  run stops cleanly with exit code 130; the kernel kills the child if the supervisor dies
  (``PR_SET_PDEATHSIG``).
"""
from __future__ import annotations

import atexit
import fcntl
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading

ENV = "JAXLIN_SUPERVISED"
# JAX's report when the coordination service is lost (client.h); held back from here on.
_LOST_MARK = b"Terminating process because the JAX distributed service detected fatal errors"
_LOST = ("lost contact with the other processes: JAX's coordination service reported a fatal "
         "error (process 0, the coordinator, or a peer stopped, or its host is gone); stopping "
         "this process too")
EXIT_LOST, EXIT_INTERRUPTED = 1, 130
INTERRUPTED = ("interrupted; no results were written (the workdir keeps its previous run, "
               "if it had one)")
INTERRUPTED_EARLY = "interrupted before the run began; nothing was written"
# The coordinator's refusal of a process as it joins (a --process_id taken or out of its
# --num_processes, or the port held by another run), in the held report.
_REFUSED_MARK = b"CoordinationService/RegisterTask"
_REFUSED = ("the coordinator refused this process as it joined: give every process its own "
            "--process_id in [0, --num_processes) and the same --num_processes (or the "
            "coordinator's port belongs to another run: choose another)")
_FATAL_LINE = re.compile(rb"F(\d{0,3}$|\d{4})")  # (the start of) an absl FATAL log line
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


_VALUED = ("num_processes", "coordinator_address", "workdir")  # the valued flags read here


def _flag_values(argv: list[str], depth: int = 0) -> dict[str, str]:
  """The values of ``_VALUED`` flags, ``distributed`` and ``help`` / ``helpfull`` on a command
  line, read as absl reads it: ``--name=value``, ``--name value``, one dash or two,
  ``--noname`` for a false boolean, ``--flagfile=FILE`` (its lines; ``~`` expanded), and
  nothing after ``--``."""
  values: dict[str, str] = {}
  i = 0
  while i < len(argv):
    arg = argv[i]
    i += 1
    if arg == "--":
      break
    if not arg.startswith("-") or arg == "-":
      continue
    name, eq, value = arg.lstrip("-").partition("=")
    if name == "flagfile" and depth < 10:
      if not eq and i < len(argv):
        value, i = argv[i], i + 1
      try:
        with open(os.path.expanduser(value.strip()), encoding="utf-8") as f:
          lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
      except OSError:
        continue  # absl reports it
      values.update(_flag_values(lines, depth + 1))
    elif name == "distributed":
      values[name] = value if eq else "true"
    elif name == "nodistributed" and not eq:
      values["distributed"] = "false"
    elif name in _VALUED:
      if not eq and i < len(argv):
        value, i = argv[i], i + 1  # absl takes the next item as the value
      values[name] = value
    elif name in ("help", "helpfull", "helpshort"):
      values[name] = value
  return values


def wanted(argv: list[str]) -> bool:
  """Whether this command line runs an entry point on several hosts, not yet supervised."""
  if os.environ.get(ENV) or not sys.platform.startswith("linux"):
    return False
  values = _flag_values(argv)
  if {"help", "helpfull", "helpshort"} & set(values):
    return False
  several = values.get("num_processes", "") not in ("", "0", "1")
  cluster = values.get("distributed", "false").lower() not in ("false", "f", "0")  # absl's
  return several or cluster or bool(values.get("coordinator_address"))


class _Stderr:
  """Copies the child's stderr to ours as it comes, up to JAX's lost-service report."""

  def __init__(self, src, dst):
    self.src, self.dst = src, dst
    self.held = b""  # the report and what follows it
    self.child_error = False  # the child printed its own one-line error
    self.interrupted = False  # ... or its line for an interrupted run
    self._tail = b""  # the unfinished last line, written once it ends or output pauses
    self._dst_ok = True

  def _write(self, data: bytes) -> None:
    if not data or not self._dst_ok:
      return
    self.child_error |= data.startswith(b"error: ") or b"\nerror: " in data
    self.interrupted |= INTERRUPTED.encode() in data
    try:
      self.dst.write(data)
      self.dst.flush()
    except (OSError, ValueError):  # our stderr is gone: keep draining the child's
      self._dst_ok = False

  def run(self) -> None:
    fd = self.src.fileno()
    while True:
      if (self._tail and not _FATAL_LINE.match(self._tail)
          and not select.select([fd], [], [], 0.2)[0]):
        self._write(self._tail)  # a progress bar, or a line without its end yet
        self._tail = b""
      chunk = os.read(fd, 65536)
      if not chunk:
        break
      if self.held:
        self.held += chunk[:1 << 20]
        continue
      data, self._tail = self._tail + chunk, b""
      cut = data.find(_LOST_MARK)
      if cut >= 0:
        start = data.rfind(b"\n", 0, cut) + 1  # from the start of the report's line
        self._write(data[:start])
        self.held = data[start:]
        continue
      end = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
      self._write(data[:end])
      self._tail = data[end:]
    if not self.held:
      self._write(self._tail)


def _preexec():
  """The child's own process group (signals reach it once, through the supervisor), and a
  SIGKILL from the kernel when the supervisor dies (``PR_SET_PDEATHSIG``)."""
  import ctypes  # pylint: disable=import-outside-toplevel
  try:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
  except (OSError, AttributeError):
    prctl = None
  parent = os.getpid()

  def preexec():
    os.setpgid(0, 0)
    if prctl is not None:
      prctl(1, signal.SIGKILL)
    if os.getppid() != parent:  # the supervisor died before the call
      os._exit(1)  # pylint: disable=protected-access
  return preexec


def _staging(argv: list[str]) -> str | None:
  workdir = _flag_values(argv).get("workdir")
  return os.path.expanduser(workdir) if workdir else None


LOCK, STAGING, JOURNAL = ".jaxlin-lock", ".staging-", ".commit-"  # experiments.workdir's names


def remove_staging(workdir: str, pid: int) -> bool:
  """Removes the staging folder of a dead run (process ``pid``) in ``workdir``, holding the
  workdir's lock as a run does; returns whether it did. Left alone where another run holds
  the lock (it removes what dead runs left when it opens the workdir) and where the dead run
  was committing (its journal: the next run completes the commit)."""
  staging = os.path.join(workdir, f"{STAGING}{pid}")
  if not os.path.isdir(staging) or os.path.lexists(os.path.join(workdir, f"{JOURNAL}{pid}.json")):
    return False
  path = os.path.join(workdir, LOCK)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if os.stat(path).st_ino != os.fstat(fd).st_ino:  # removed by its holder meanwhile
      return False
    shutil.rmtree(staging, ignore_errors=True)
    os.remove(path)  # unlocked, as a run unlocks
    return True
  except OSError:
    return False
  finally:
    os.close(fd)


def run(argv: list[str]) -> int:
  """Runs ``python <argv>`` as a supervised child; returns this process's exit code (or ends
  it by the child's signal)."""
  env = dict(os.environ, **{ENV: "1"})
  child = subprocess.Popen(  # pylint: disable=subprocess-popen-preexec-fn
      [sys.executable, *argv], env=env, stderr=subprocess.PIPE, preexec_fn=_preexec())
  forwarded = set()

  def forward(sig, _):
    # As SIGINT: the child stops cleanly (exit 130). JAX's preemption notifier catches a
    # multi-host process's SIGTERM and waits for a sync point that these programs never reach.
    if sig not in forwarded:
      forwarded.add(sig)
      child.send_signal(signal.SIGINT)
  for sig in _FORWARDED:
    signal.signal(sig, forward)
  err = _Stderr(child.stderr, sys.stderr.buffer)
  pump = threading.Thread(target=err.run, daemon=True)
  # The signals go to this (main) thread, where their handler runs: the pump thread starts
  # with them blocked.
  signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
  pump.start()
  signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
  while True:
    try:
      code = child.wait(timeout=0.5)
      break
    except subprocess.TimeoutExpired:
      pass
  pump.join(timeout=5)
  if err.held and code != 0 and not err.child_error:
    workdir = _staging(argv)
    if workdir:
      remove_staging(workdir, child.pid)
    if forwarded:  # stopped on request; the others (asked too) may simply have ended first
      if not err.interrupted:
        print(INTERRUPTED, file=sys.stderr, flush=True)
      return EXIT_INTERRUPTED
    print(f"error: {_REFUSED if _REFUSED_MARK in err.held else _LOST}", file=sys.stderr,
          flush=True)
    return EXIT_LOST
  if err.held and code == 0:  # not an ending after all: show what was held back
    err._write(err.held)  # pylint: disable=protected-access
  if code == -signal.SIGKILL:  # the child says nothing: the out-of-memory killer, kill -9
    workdir = _staging(argv)
    committing = bool(workdir) and os.path.lexists(
        os.path.join(workdir, f"{JOURNAL}{child.pid}.json"))
    if workdir:
      remove_staging(workdir, child.pid)
    print("error: this process's run was killed (SIGKILL: out of memory, or kill -9); "
          + ("it was writing its results: the next run in the workdir completes them"
             if committing else "no results were written"), file=sys.stderr, flush=True)
    return 128 + signal.SIGKILL
  if code < 0:  # end as the child did
    try:
      signal.signal(-code, signal.SIG_DFL)
      os.kill(os.getpid(), -code)
    except (OSError, ValueError):  # a signal whose action cannot be set (SIGSTOP)
      pass
  return code if code >= 0 else 128 - code


def main_if_wanted() -> None:
  """Called while ``python -m experiments.X`` imports this package: supervises a multi-host
  run and exits with its code; does nothing otherwise (and for any other import)."""
  orig = getattr(sys, "orig_argv", None)
  if not orig or sys.argv[:1] != ["-m"] or "-m" not in orig:
    return
  i = orig.index("-m")
  if i + 1 >= len(orig) or not orig[i + 1].startswith("experiments."):
    return
  if wanted(orig[i + 2:]):
    sys.exit(run(orig[1:]))
  # Until the program installs its own handlers: an interrupt during the imports (seconds)
  # landed in a callback of JAX's that drops exceptions, and the run went on to replace the
  # previous one. Nothing is written yet, so it ends here.
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, _stop_early)
  atexit.register(_ignore_interrupts)  # runs last: exit handlers run in reverse order


def _stop_early(signum, frame):  # pylint: disable=unused-argument
  try:
    os.write(2, f"{INTERRUPTED_EARLY}\n".encode())
  except OSError:  # no stderr (its reader has gone): the stop matters more than the line
    pass
  os._exit(EXIT_INTERRUPTED)  # pylint: disable=protected-access


def _ignore_interrupts() -> None:
  """The last exit handler (registered before JAX's): Python's finalisation restores the
  default action of SIGINT, so an interrupt then killed a finished run without a word."""
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, signal.SIG_IGN)
