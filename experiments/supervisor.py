"""A multi-host process runs under a small supervisor, so that a lost peer ends it with one line.

When process 0 (which hosts JAX's coordination service) dies, JAX ends every other process
from one of its own threads: ``LOG(FATAL)`` with a C++ stack dump and an abort, before any
Python code can react. So a multi-host run of an entry point (``python -m experiments.X``
with ``--coordinator_address``, ``--num_processes`` or ``--distributed``) starts itself
again as a child of a supervisor that imports only the standard library:

* the child's stdout and stderr pass through as they come (progress bars included), until
  JAX's fatal report begins; from there on the report is held back;
* when the child ends that way (or by a signal it did not ask for), the supervisor prints
  one line naming the cause, removes the child's staging folder, and exits with code 1;
* otherwise it exits with the child's code. Ctrl-C reaches the child through the terminal
  (the supervisor ignores it and waits); SIGTERM and SIGHUP are passed on; the child is
  killed by the kernel if the supervisor dies (``PR_SET_PDEATHSIG``; elsewhere it polls).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading

ENV = "JAXLIN_SUPERVISED"
_MULTI_HOST = ("--coordinator_address", "--num_processes", "--distributed")
# How JAX's (and absl's, and Python's) fatal reports begin; everything from there is held back.
_FATAL = (b"Terminating process because the JAX distributed service detected fatal errors",
          b"*** Check failure stack trace", b"Fatal Python error", b"terminate called after")
_LOST = ("lost contact with the other processes: JAX's coordination service reported a fatal "
         "error (process 0, the coordinator, or a peer stopped, or its host is gone); stopping "
         "this process too")
EXIT_LOST = 1


def wanted(argv: list[str]) -> bool:
  """Whether this command line runs an entry point on several hosts, not yet supervised."""
  flags = {a.split("=", 1)[0] for a in argv}
  return (not os.environ.get(ENV) and sys.platform != "win32" and bool(flags & set(_MULTI_HOST))
          and not flags & {"--help", "--helpfull"})


def _die_with_parent() -> None:  # runs in the child between fork and exec
  try:
    import ctypes  # pylint: disable=import-outside-toplevel
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def _pump(src, dst, fatal: list) -> None:
  """Copies ``src`` to ``dst`` as it comes, up to the start of a fatal report."""
  held = False
  while chunk := os.read(src.fileno(), 65536):
    if held:
      continue
    cut = min((chunk.find(m) for m in _FATAL if m in chunk), default=-1)
    if cut >= 0:
      fatal.append(chunk[cut:cut + 200])
      chunk, held = chunk[:chunk.rfind(b"\n", 0, cut) + 1], True
    dst.write(chunk)
    dst.flush()


def _workdir(argv: list[str]) -> str | None:
  for i, a in enumerate(argv):
    if a.startswith("--workdir="):
      return a.split("=", 1)[1]
    if a == "--workdir" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def run(argv: list[str]) -> int:
  """Runs ``python <argv>`` as a supervised child; returns the exit code for this process."""
  env = dict(os.environ, **{ENV: "1"})
  child = subprocess.Popen(  # pylint: disable=subprocess-popen-preexec-fn
      [sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
  for sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, lambda s, _: child.send_signal(s))
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal sends it to the child too
  fatal: list = []
  pumps = [threading.Thread(target=_pump, args=(src, dst.buffer, fatal), daemon=True)
           for src, dst in ((child.stdout, sys.stdout), (child.stderr, sys.stderr))]
  for p in pumps:
    p.start()
  code = child.wait()
  for p in pumps:
    p.join(timeout=5)
  if not fatal and code >= 0:
    return code
  if not fatal and -code in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    return 128 - code
  workdir = _workdir(argv)
  if workdir:
    shutil.rmtree(os.path.join(workdir, f".staging-{child.pid}"), ignore_errors=True)
  if fatal and b"JAX distributed service" in fatal[0]:
    cause = _LOST
  elif fatal:
    first = fatal[0].splitlines()[0].decode(errors="replace")
    cause = f"this process crashed ({first}); another process may have stopped"
  else:
    cause = f"this process was ended by signal {-code}"
  print(f"error: {cause}", file=sys.stderr, flush=True)
  return EXIT_LOST


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
