"""Multi-host runs: the processes join, agree on what they run, or stop, all within a bound.

* ``start`` joins the other processes (``jax.distributed.initialize``). A watchdog thread
  bounds the wait: when a peer does not come within ``--host_timeout`` seconds, this process
  prints one line and exits (JAX's own timeout would abort with a C++ stack dump).
* Then every process publishes a fingerprint of its config and data plan in the
  coordination service's key-value store; process 0 compares them all and publishes a
  verdict. On any difference every process prints one line naming the differing keys and
  exits with code 2 (a different --seed would otherwise give wrong results silently, a
  different --num_train hang, a different --k abort in C++).
* During the run each process's watchdog beats a heartbeat and watches the others'; a peer
  silent for ``--host_timeout`` seconds (killed, hung, its host gone) or a lost coordinator
  ends the process with one line (exit code 1). JAX's own heartbeat timeout is set longer,
  so that it never fires first.
* ``finish`` stops the watchdog and shuts the distributed runtime down within the bound.
* A lost process 0 (which hosts the coordination service) makes JAX abort the others from a
  C++ thread before this module can act; ``experiments.supervisor`` turns that into one line.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

EXIT_MISMATCH, EXIT_LOST = 2, 1
_PREFIX = "jaxlin"
# May differ between hosts without changing any result (the data's files are compared by
# their digest, data_files).
_LOCAL_KEYS = ("cache_dir", "data_dir")
_state: dict[str, Any] = {}


def started() -> bool:
  """Whether this process joined a multi-host run."""
  return bool(_state.get("started"))


def _die(message: str, code: int) -> None:
  """One line on stderr, then exit now: no shutdown barrier that waits for lost peers."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(code)  # pylint: disable=protected-access


class _Deadline:
  """Calls _die(message) unless ``cancel`` comes within ``seconds`` (runs while C++ blocks)."""

  def __init__(self, seconds: float, message: str, code: int = EXIT_LOST):
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._wait, args=(seconds, message, code),
                                    daemon=True)
    self._thread.start()

  def _wait(self, seconds, message, code):
    if not self._done.wait(seconds):
      _die(message, code)

  def cancel(self):
    self._done.set()


def fingerprint(kind: str, c) -> dict:
  """What every process must agree on: the experiment, its config and its data plan."""
  import hashlib  # pylint: disable=import-outside-toplevel
  from jaxlin import data  # pylint: disable=import-outside-toplevel
  out = {"experiment": kind, **{k: json.dumps(v, sort_keys=True) if isinstance(v, (list, dict))
                                else v for k, v in c.asdict().items()
                                if k not in _LOCAL_KEYS}}
  if str(out.get("dataset", "")).startswith("folder:"):  # a host's own path to its copy
    out["dataset"] = "folder:"
  try:
    plan = data.split_rows(c.dataset, data_dir=c.data_dir, num_train=c.num_train or None,
                           num_val=c.num_val, num_test=c.num_test or None, seed=c.seed)
    h = hashlib.sha256()
    for split, (source, idx) in sorted(plan.items()):
      h.update(f"{split}:{source}:{len(idx)}:".encode())
      h.update(idx.astype("int64").tobytes())
    out["data_plan"] = h.hexdigest()[:16]
    # The same flags may read different data: a folder at one path, different on each host.
    out["data_files"] = data.source_digest(c.dataset, data_dir=c.data_dir)
  except Exception as e:  # compared; the run reports it; pylint: disable=broad-except
    out["data_plan"] = f"unreadable ({type(e).__name__})"
  return out


def differences(mine: dict, theirs: dict) -> list[str]:
  return sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))


def _verdict(mine: dict, problems: dict) -> str:
  """"ok", or the line that stops every process: ``problems`` maps each fingerprint key that
  differs to [(process, its value), ...]."""
  if not problems:
    return "ok"
  flag = lambda k: (k if k in ("experiment", "data_plan", "data_files")
                    else "devices per process" if k == "local_devices" else f"--{k}")
  detail = "; ".join(f"{flag(k)}: process 0 has {mine.get(k)}, " + ", ".join(
      f"process {p} has {v}" for p, v in others) for k, others in sorted(problems.items()))
  if set(problems) == {"local_devices"}:
    return (f"the processes have different numbers of devices ({detail}); give every process "
            "the same number (the same XLA_FLAGS, CUDA_VISIBLE_DEVICES or TPU slice)")
  if "data_files" in problems and set(problems) <= {"data_files", "data_plan"}:
    at = ("--dataset's folders" if mine.get("dataset") == "folder:"
          else f"--dataset={mine.get('dataset')}")
    return (f"the processes read different data at {at} ({detail}: "
            "the files' names, classes, sizes or contents differ); give every host the same "
            "copy")
  return (f"the processes were started with different settings ({detail}); start every "
          "process with the same flags")


def start(launch, kind: str, c) -> None:
  """Joins the other processes, checks that they all run the same, starts the watchdog."""
  import jax  # pylint: disable=import-outside-toplevel
  try:  # CPU-only processes need a collectives backend to talk to each other
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, KeyError, ValueError):
    pass
  try:  # its SIGTERM handler would swallow a `kill` (it waits for a sync point never reached)
    jax.config.update("jax_enable_preemption_service", False)
  except (AttributeError, KeyError, ValueError):
    pass
  if launch.process_id == 0 and launch.coordinator_address:
    _check_port_free(launch.coordinator_address)
  t = float(launch.host_timeout)
  where = launch.coordinator_address or "the cluster's coordinator"
  deadline = _Deadline(t, f"the {launch.num_processes or 'other'} processes did not all join "
                       f"{where} within {t:g} s (--host_timeout); start every process with the "
                       "same --coordinator_address and --num_processes")
  # JAX's own timeouts abort with a C++ dump: they are set to fire after ours.
  bound = dict(initialization_timeout=int(t) + 30, heartbeat_timeout_seconds=int(2 * t) + 30,
               shutdown_timeout_seconds=int(10 * t) + 30)
  if launch.distributed and not launch.coordinator_address:
    try:
      jax.distributed.initialize(**bound)
    except ValueError as e:  # JAX found no cluster to read the processes from
      _die(f"--distributed found no cluster to join ({e}): on a TPU pod, SLURM or another "
           "cluster JAX detects, run it there; elsewhere give --coordinator_address, "
           "--num_processes and --process_id instead", EXIT_MISMATCH)
  else:
    jax.distributed.initialize(coordinator_address=launch.coordinator_address,
                               num_processes=launch.num_processes, process_id=launch.process_id,
                               **bound)
  deadline.cancel()
  _state.update(started=True, timeout=t)
  mine = fingerprint(kind, c)
  # process_allgather needs as many devices on every process; --num_processes is not in c
  mine.update(local_devices=jax.local_device_count(),
              num_processes=launch.num_processes or jax.process_count())
  _agree(jax, mine, t)
  _Watchdog(jax, t).start()


def _check_port_free(address: str) -> None:
  """Process 0 hosts the coordination service at ``address``'s port: one line (exit 2) where
  something listens there already. (gRPC would fail to bind it and crash the process, or,
  with a port another run's coordinator shares, take over that run.)"""
  import errno  # pylint: disable=import-outside-toplevel
  import socket  # pylint: disable=import-outside-toplevel
  port = int(address.rpartition(":")[2])
  for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
    try:
      sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # no IPv6 on this host
      continue
    try:
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed run's TIME_WAIT
      sock.bind((host, port))
      return  # free (the service binds it again in a moment)
    except OSError as e:
      if e.errno == errno.EADDRINUSE:
        _die(f"port {port} of --coordinator_address={address} is in use on this host (another "
             "program, another run's coordinator, or a second process given --process_id=0): "
             "choose a free port for every process, and one --process_id=0",
             EXIT_MISMATCH)
      if family == socket.AF_INET6:
        continue  # IPv6 not usable here: try IPv4
      return  # cannot tell (e.g. not allowed): JAX reports what it finds
    finally:
      sock.close()


def _client():
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  return distributed.global_state.client


def _agree(jax, mine: dict, t: float) -> None:
  """Every process compares its fingerprint with process 0's; any difference stops them all."""
  client, me, n = _client(), jax.process_index(), jax.process_count()
  deadline = _Deadline(t, f"the other processes did not answer within {t:g} s (--host_timeout) "
                       "while comparing their flags")
  client.key_value_set(f"{_PREFIX}/fingerprint/{me}", json.dumps(mine, default=str))
  ms = int(t * 1000)
  if me == 0:
    problems = {}
    for p in range(1, n):
      theirs = json.loads(client.blocking_key_value_get(f"{_PREFIX}/fingerprint/{p}", ms))
      for key in differences(mine, theirs):
        problems.setdefault(key, []).append((p, theirs.get(key)))
    verdict = _verdict(mine, problems)
    client.key_value_set(f"{_PREFIX}/verdict", verdict)
  else:
    verdict = client.blocking_key_value_get(f"{_PREFIX}/verdict", ms)
  deadline.cancel()
  if verdict != "ok":
    # Leave together, through JAX's shutdown barrier: a process still connected when process 0
    # (the coordination service) exits would be aborted by JAX with a C++ stack dump.
    _Deadline(t, verdict, EXIT_MISMATCH)
    try:
      jax.distributed.shutdown()
    except Exception:  # a peer left first: the verdict still stands; pylint: disable=broad-except
      pass
    _die(verdict, EXIT_MISMATCH)


class _Watchdog(threading.Thread):
  """Beats this process's heartbeat; ends the process when a peer stays silent too long."""

  def __init__(self, jax, timeout: float):
    super().__init__(daemon=True, name="jaxlin-host-watchdog")
    self.me, self.n, self.timeout = jax.process_index(), jax.process_count(), timeout
    self.period = min(1.0, timeout / 4)
    self.stop = threading.Event()
    self.finishing = threading.Event()  # this process is done; peers that are done are fine

  def run(self):
    client, beat = _client(), 0
    last = {p: (None, time.monotonic()) for p in range(self.n) if p != self.me}
    while not self.stop.wait(self.period):
      beat += 1
      try:
        client.key_value_set(f"{_PREFIX}/alive/{self.me}", str(beat), allow_overwrite=True)
        now = time.monotonic()
        for p, (value, since) in last.items():
          try:
            seen = client.key_value_try_get(f"{_PREFIX}/alive/{p}")
          except Exception:  # not written yet; pylint: disable=broad-except
            seen = None
          if seen != value:
            last[p] = (seen, now)
          elif (now - since > self.timeout and not self.stop.is_set()
                and not _is_done(client, p)):
            _die(f"process {p} stopped answering for {self.timeout:g} s (--host_timeout): "
                 "it was killed, hung or lost its host; stopping this process too", EXIT_LOST)
      except Exception:  # the coordination service is gone; pylint: disable=broad-except
        if self.finishing.is_set():  # at the end, process 0 may simply have finished first
          return
        if not self.stop.is_set():
          _die("lost contact with process 0 (the coordinator): it stopped or its host is "
               "gone; stopping this process too", EXIT_LOST)


def _is_done(client, p: int) -> bool:
  try:
    return client.key_value_try_get(f"{_PREFIX}/done/{p}") == "1"
  except Exception:  # not done; pylint: disable=broad-except
    return False


def _watchdogs():
  return [t for t in threading.enumerate() if isinstance(t, _Watchdog)]


def finish() -> None:
  """Leaves the distributed runtime after every process is done.

  The watchdog keeps watching the peers that are still working (a slow process 0 writing
  its figures is fine; a lost one is not); a backstop bounds the whole.
  """
  if not started():
    return
  import jax  # pylint: disable=import-outside-toplevel
  t = _state["timeout"]
  _client().key_value_set(f"{_PREFIX}/done/{jax.process_index()}", "1")
  for w in _watchdogs():
    w.finishing.set()
  deadline = _Deadline(10 * t, f"the other processes did not finish within {10 * t:g} s "
                       "(10 x --host_timeout) of this one")
  jax.distributed.shutdown()
  for w in _watchdogs():
    w.stop.set()
  deadline.cancel()
  _state["started"] = False
