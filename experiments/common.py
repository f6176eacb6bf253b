"""What every entry point shares: the shared config fields, the launch options, the
run's files (staged in the workdir, committed on success), error handling and
exit codes."""
from __future__ import annotations

import _thread
import dataclasses
import errno
import os
import re
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Mapping

from absl import logging
import numpy as np

from experiments import config as cfg
from experiments import supervisor
from experiments.config import option, require
from jaxlin import files
from jaxlin.errors import JaxlinError

SHARD_MODES = ("auto", "none", "queries", "database")
EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = cfg.EXIT_USAGE, 1, 130


@dataclasses.dataclass(frozen=True)
class DataConfig(cfg.BaseConfig):
  """The fields every experiment has: which data, how much of it, the seed, the devices."""
  dataset: str = option("cifar10", "cifar10 (through tfds) or folder:PATH "
                        "(PATH/{train,test}/<class>/*.png|jpg)")
  data_dir: str | None = option(None, "tfds data_dir (default: tfds's own)")
  seed: int = option(0, "seed of every random stream (subsets, folds, init, minibatches, ...)")
  num_train: int | None = option(0, "training images (0 = all)")
  num_val: int = option(1000, "val images, the last of the training split")
  num_test: int | None = option(0, "test images (0 = all)")
  shard: str = option("auto", "many devices: auto (split the queries / the batch when there are "
                      "several devices), none, queries, or database (kNN: split the database)")
  cache_dir: str = option(os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "jaxlin"),
                          "cache of decoded image folders and of image features ('' = none)")


def validate_data(c: DataConfig) -> DataConfig:
  """Checks of the shared fields; sizes of 0 mean all. (The dataset is checked by the run.)"""
  require(isinstance(c.seed, int) and c.seed >= 0, "seed", f"--seed must be >= 0, got {c.seed}")
  for name in ("num_train", "num_test"):
    value = getattr(c, name)
    require(value is None or value >= 0, name, f"--{name} must be >= 0 (0 = all), got {value}")
  require(c.num_val >= 0, "num_val", f"--num_val must be >= 0, got {c.num_val}")
  require(c.shard in SHARD_MODES, "shard",
          f"unknown --shard {c.shard!r}; choose from {', '.join(SHARD_MODES)}")
  if c.dataset.startswith("folder:"):  # its decoded images are cached
    check_cache_dir(c)
  return c.replace(num_train=c.num_train or 0, num_test=c.num_test or 0)


def check_cache_dir(c: DataConfig) -> None:
  """--cache_dir ('' = none) is a folder this process can write, else one line now: a cache
  that cannot be written would be skipped without a word, and every run decode again."""
  if not c.cache_dir:
    return
  folder = os.path.expanduser(c.cache_dir)
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
      pass
  except OSError as e:
    require(False, "cache_dir", f"--cache_dir={c.cache_dir} is not a writable folder "
            f"({e.strerror or e}); choose another, or '' for no cache")


@dataclasses.dataclass(frozen=True)
class Launch(cfg.BaseConfig):
  """How a program runs, not what it computes: where it writes and who its peers are."""
  workdir: str | None = option(None, "folder for config, results, plots and models")
  overwrite: bool = option(False, "replace another experiment's run in the workdir, or write "
                           "beside files that are not a jaxlin run (they are kept)")
  coordinator_address: str | None = option(
      None, "multi-host: host:port of process 0 (with --num_processes, --process_id)")
  num_processes: int | None = option(None, "multi-host: number of processes")
  process_id: int | None = option(None, "multi-host: this process's id, 0 .. num_processes-1")
  distributed: bool = option(False, "multi-host on a managed cluster (TPU pods, SLURM): "
                             "discover the processes")
  host_timeout: float = option(60.0, "multi-host: seconds to wait for the other processes "
                               "(to start, to agree, to answer) before stopping")

  @property
  def multi_host(self) -> bool:
    return bool(self.distributed or self.coordinator_address or self.num_processes)


MAX_HOST_TIMEOUT = 86400  # JAX's own timeouts, set from it, are C ints of seconds


def validate_launch(launch: Launch) -> Launch:
  require(bool(launch.workdir), "workdir",
          "--workdir is required: the folder where results and plots are written")
  cfg.finite(launch.host_timeout, "host_timeout")
  require(0 < launch.host_timeout <= MAX_HOST_TIMEOUT, "host_timeout",
          f"--host_timeout must be > 0 and at most {MAX_HOST_TIMEOUT} seconds (a day), got "
          f"{launch.host_timeout}")
  if (launch.coordinator_address or launch.num_processes is not None
      or launch.process_id is not None):
    require(launch.coordinator_address is not None and launch.num_processes is not None
            and launch.process_id is not None, "coordinator_address",
            "a multi-host run needs all of --coordinator_address, --num_processes and "
            "--process_id")
    host, _, port = launch.coordinator_address.rpartition(":")
    ipv6_bare = ":" in host and "/" not in host and not host.startswith("[")  # "::1": no port
    require(bool(host.strip(" []")) and not ipv6_bare and port.isascii() and port.isdecimal()
            and 1 <= int(port) <= 65535,
            "coordinator_address", f"--coordinator_address must be HOST:PORT with a port from 1 "
            f"to 65535 (e.g. 10.0.0.1:1234 or [fe80::1]:1234, process 0's host), got "
            f"{launch.coordinator_address!r}")
    require(launch.num_processes >= 1, "num_processes",
            f"--num_processes must be >= 1, got {launch.num_processes}")
    require(0 <= launch.process_id < launch.num_processes, "process_id",
            f"--process_id must be in [0, {launch.num_processes - 1}] "
            f"(--num_processes={launch.num_processes}), got {launch.process_id}")
  return launch


# ---- the files of one run --------------------------------------------------------------------
class Run:
  """One run of an experiment: its hosts, its staged workdir, its timer.

  Process 0 writes; the others compute the same and write nothing. Files go to
  the staging folder; ``finish`` writes results.json and commits them, so the
  workdir shows the previous run's files until this one has succeeded.
  """

  def __init__(self, kind: str, c: cfg.BaseConfig, workdir: str, *, overwrite: bool = False):
    from experiments import hosts  # pylint: disable=import-outside-toplevel
    self.kind, self.config = kind, c
    self.hosts = hosts.Hosts(getattr(c, "shard", "auto"))
    self.writer = self.hosts.writer
    self.workdir = None
    if self.writer:
      from experiments.workdir import Workdir  # pylint: disable=import-outside-toplevel
      self.workdir = Workdir(workdir, kind, overwrite=overwrite)
    self.timer = Timer()
    self.started = time.strftime("%Y-%m-%d %H:%M:%S")
    self._environment = None

  def environment(self, data: bool = False) -> dict | None:
    """``provenance.describe`` of this run (process 0; the others write nothing), once for
    a study and its stages (the same command, code, machine and data), taken at the start
    of the outermost run; ``data``: with the dataset's digest, taken once the data is loaded
    (a tfds dataset's split sizes are known once it is prepared)."""
    if not self.writer:
      return None
    from experiments import provenance  # pylint: disable=import-outside-toplevel
    root = _RUNS[0] if _RUNS else self
    if root._environment is None:  # pylint: disable=protected-access
      root._environment = provenance.describe(self.config, digest=False)  # pylint: disable=protected-access
    env = root._environment  # pylint: disable=protected-access
    if data and env["data_files"] is None:
      env["data_files"] = provenance.data_digest(self.config)
    return env

  def __enter__(self) -> "Run":
    if not _RUNS:
      _committed.clear()
    _RUNS.append(self)  # a study's stages run inside it
    try:
      if self.workdir is not None:
        self.workdir.open()
        self.write_json("config.json", {"experiment": self.kind, **self.config.asdict()})
        self.environment()  # its date_utc: the run's start
    except BaseException:  # (a full disk): the workdir unlocked, its staging folder gone
      self.__exit__()
      raise
    return self

  def __exit__(self, *exc):
    if self in _RUNS:
      _RUNS.remove(self)
    if self.workdir is not None:
      self.workdir.close()
    return False

  def file(self, name: str) -> str | None:
    """Path of ``name`` in this run's staging folder (None on processes that do not write)."""
    return self.workdir.file(name) if self.writer else None

  def write_json(self, name: str, obj: Any) -> None:
    if self.writer:
      path = self.file(name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      files.write_json(path, obj)

  def plot(self, name: str, function: str, *args, **kwargs) -> None:
    """plots.<function>(...) written to plots/<name> (process 0 only)."""
    if self.writer:
      path = self.file(os.path.join("plots", name))
      os.makedirs(os.path.dirname(path), exist_ok=True)
      from jaxlin import plots  # pylint: disable=import-outside-toplevel  # matplotlib: 1 s
      plots.save(getattr(plots, function)(*args, **kwargs), path)

  def finish(self, results: dict) -> dict:
    """Writes results.json and replaces the previous run's files with this run's."""
    results = dict(results, processes=self.hosts.count, devices=self.hosts.devices,
                   date=self.started, environment=self.environment(data=True))
    results.setdefault("timings_s", {})["total"] = self.timer()
    if _interrupted.is_set():  # its KeyboardInterrupt was dropped (a callback of JAX's does)
      _redeliver.clear()  # raised here: not again from _unraisable's timer
      raise KeyboardInterrupt
    self.write_json("results.json", results)
    if self.workdir is not None:
      try:
        self.workdir.commit()
      except BaseException as e:
        if _late_interrupt.is_set():  # a Ctrl-C came while the commit failed: it stops now
          _late_interrupt.clear()
          raise KeyboardInterrupt from e
        raise
      if _RUNS and _RUNS[0] is self:
        _committed.set()  # a later interrupt: the run's files are written all the same
      if _late_interrupt.is_set():
        if _RUNS and _RUNS[0] is not self:  # a study's stage: the study stops now
          _late_interrupt.clear()
          raise KeyboardInterrupt
        logging.warning("interrupted while this finished run's files were being written: "
                        "they were all written, and the run is complete")
    return results


def per_class_accuracy(confusion, class_names) -> dict:
  """{class: recall} from a confusion matrix (true class by row), in float64 for results.json
  (9/17 is 0.5294117647058824, not float32's 0.529411792755127); None for an absent class."""
  cm = np.asarray(confusion, np.float64)
  totals = cm.sum(axis=1)
  return {name: float(cm[i, i] / totals[i]) if totals[i] else None
          for i, name in enumerate(class_names)}


class MetricsWriter:
  """Appends one strict-JSON object per logged step to metrics.jsonl (process 0 only)."""

  def __init__(self, run: Run):
    self.path = run.file("metrics.jsonl")
    if self.path:
      open(self.path, "w").close()

  def write(self, **record):
    if self.path:
      with open(self.path, "a") as f:
        f.write(files.to_json(record) + "\n")


# ---- progress and timing -------------------------------------------------------------------
def progress(desc: str, total: int | None = None, unit: str = "it"):
  """A tqdm progress bar on stderr when it is a terminal: not in a log file, where each frame
  would be a line of carriage returns; off when JAXLIN_NO_PROGRESS is set (but to 0)."""
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  off = os.environ.get("JAXLIN_NO_PROGRESS", "") not in ("", "0")
  try:
    terminal = sys.stderr.isatty()
  except (AttributeError, ValueError):  # replaced by an object without it, or closed
    terminal = False
  return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False,
              disable=off or not terminal)


def tile_callback(bar) -> Callable[[int, int], None]:
  """Adapts a tqdm bar to the (done, total) callbacks of jaxlin's long loops."""
  def cb(done, total):
    bar.total = total
    bar.n = done
    bar.refresh()
  return cb


class Timer:
  def __init__(self):
    self.t0 = time.perf_counter()

  def __call__(self) -> float:
    return time.perf_counter() - self.t0


# ---- errors and exit codes -----------------------------------------------------------------
def flag_message(error: JaxlinError, flags: Mapping[str, str] | None = None,
                 known=None) -> str:
  """The error's message in the words of the command line.

  ``flags`` maps a library argument or config field (``learning_rates``) to the flag that sets
  it (``learning_rate``). A ``--name`` in the message that ``flags`` renames (the study's
  ``--hidden_size`` -> ``--mlp_hidden_size``) is renamed too. ``known``: the program's flag
  names, when given: an argument that no flag sets (``y``, read from a file) stays as the
  library names it, rather than become a flag the program does not have.
  """
  # The library's hint for code a caller controls (its loss, its optimizer) is left out:
  # a command line's inputs are its own.
  message, flags = getattr(error, "message", str(error)), dict(flags or {})
  for name, flag in flags.items():
    message = re.sub(rf"(?<![\w-])--{re.escape(name)}(?![\w-])", f"--{flag}", message)
  argument = getattr(error, "argument", None)
  if known is not None and flags.get(argument, argument) not in known:
    return message
  if argument and argument in flags or argument and f"--{argument}" not in message:
    flag = flags.get(argument, argument)
    if f"--{flag}" not in message:
      renamed = re.sub(rf"(?<![\w-]){re.escape(argument)}(?![\w-])", f"--{flag}", message, 1)
      message = renamed if renamed != message else f"--{flag}: {message}"
  return message


def rename_flags(error: JaxlinError, flags: Mapping[str, str]) -> JaxlinError:
  """The same error, its message and argument in the words of another program's flags
  (a command line's words: without the library's hint, as ``flag_message``)."""
  out = type(error)(flag_message(error, flags), argument=flags.get(error.argument,
                                                                   error.argument))
  if hasattr(error, "step"):  # DivergenceError's
    out.step = error.step
  return out


def run_main(kind: str, config_cls, validate: Callable, run: Callable[..., dict], *,
             flags: Mapping[str, str] | None = None,
             exit_code: Callable[[dict], int] = lambda results: 0) -> None:
  """The program: flags -> config checked by ``validate`` (config -> config) and launch ->
  run -> one line per error, exit code.

  Exit codes: 0 done, 1 done but something failed (``exit_code``), 2 a usage or data error
  (or out of memory, or the disk's error), 130 interrupted (Ctrl-C or SIGTERM; no results written).
  """
  for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, `kill`, a scheduler's stop
    signal.signal(sig, _on_interrupt)
  sys.unraisablehook = _unraisable
  launch = None
  try:
    launch = validate_launch(Launch.make(cfg.from_flags(Launch)))
    c = config_cls.make(cfg.from_flags(config_cls))
    c = validate(c)
    if launch.multi_host:
      from experiments import multihost  # pylint: disable=import-outside-toplevel
      multihost.start(launch, kind, c)
    results = run(c, launch.workdir, overwrite=launch.overwrite)
  except JaxlinError as e:
    # jaxlin.data names the dataset argument "name"; the experiments' flag is --dataset.
    known = {f.name for cls in (config_cls, Launch) for f in dataclasses.fields(cls)}
    message = flag_message(e, {'name': 'dataset', **(flags or {})}, known)
    if e.argument in ("num_train", "num_test") and "the split has" in e.message:  # a default too
      message += f" (--{e.argument}=0 takes them all)"
    print(f"error: {message}", file=sys.stderr)
    _exit(getattr(e, "exit_code", EXIT_USAGE))  # 2: a bad flag or dataset (a study: 1)
  except KeyboardInterrupt:
    print(INTERRUPTED_AFTER_COMMIT if _committed.is_set() else INTERRUPTED, file=sys.stderr)
    # The run's workdir is closed. Python's shutdown can crash while XLA's threads still
    # compile (a segmentation fault, exit 139: 4 of 39 interrupts a reviewer timed near a
    # program's first compilation; WORKSPACE.md, 2026-12-06): end without it.
    _exit(EXIT_INTERRUPTED, at_once=True)
  except Exception as e:  # pylint: disable=broad-except
    if file_error(e):
      print(f"error: {os_error_line(e, getattr(launch, 'workdir', None), _committed.is_set())}",
            file=sys.stderr)
      _exit(EXIT_USAGE)
    memory = out_of_memory(e, MEMORY_ADVICE.get(kind, "less work"))
    if memory:  # the flags asked for more than the machine has: not a bug
      print(f"error: {memory}", file=sys.stderr)
      _exit(EXIT_USAGE)
    multihost = sys.modules.get("experiments.multihost")
    if multihost is None or not multihost.started():
      raise  # a bug: the traceback helps
    # Across hosts a failing collective usually means a peer was lost: one line, exit now.
    first = (str(e).strip().splitlines() or [""])[0][:300]
    print(f"error: this process failed while working with the others ({type(e).__name__}: "
          f"{first}); another process may have stopped", file=sys.stderr)
    _exit(EXIT_FAILED)
  code = exit_code(results)
  _stop_at_interrupts(code)
  multihost = sys.modules.get("experiments.multihost")
  if multihost is not None:
    multihost.finish()
  _exit(code)


_OS_ERROR_FIX = {
    errno.ENOSPC: "free some space on that disk, or choose a --workdir on another",
    errno.EDQUOT: "free some of your disk quota, or choose a --workdir on another disk",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f); raise that limit",
    errno.ENOENT: "a folder was removed while the run used it; run again",
    errno.EROFS: "choose a writable --workdir",
    errno.EACCES: "make it writable, or choose another --workdir",
    errno.EPERM: "make it writable, or choose another --workdir",
}


def file_error(e: BaseException) -> bool:
  """Whether ``e`` is a file's error (the disk full, a size limit, a folder removed
  meanwhile, permissions: ``os_error_line`` says it): an OSError naming a file or with one
  of the disk's codes; not a network's (urllib's URLError, with neither)."""
  return isinstance(e, OSError) and bool(e.filename or e.errno in _OS_ERROR_FIX)


def os_error_line(e: OSError, workdir: str | None = None, committed: bool = False) -> str:
  """One line for an error of the disk (full, a size limit, a folder removed meanwhile):
  what, where (the run's final path, not its staging folder's) and the fix, a workdir's
  where the file lies in ``workdir`` (or no file is named, or no workdir given). Before
  the commit (not ``committed``) the workdir keeps its previous run (the staged files go)."""
  where = re.sub(r"[/\\]\.staging-\d+(?=[/\\]|$)", "", str(e.filename)) if e.filename else ""
  wd = os.path.abspath(os.path.expanduser(workdir)) if workdir else None
  inside = not where or wd is None or os.path.commonpath([os.path.abspath(where), wd]) == wd
  fix = (_OS_ERROR_FIX.get(e.errno, "check the disk and the path, then run again") if inside
         else "the run could not use that path: check it (its permissions, the disk), then run "
              "again")
  kept = ("this run's files are in place" if committed else
          "nothing of this run was written, and the workdir keeps its previous run")
  return f"{e.strerror or e}{f' ({where})' if where else ''}: {fix}; {kept}"


MEMORY_ADVICE = {  # what each program can ask less of
    "knn": "fewer images (--num_train, --num_test, --cv_num_train)",
    "linear": "a smaller model or batch (--hidden_size, --batch_size), fewer settings "
              "(--learning_rate x --reg) or images (--num_train)",
    "study": "fewer images (--num_train, --knn_num_train) or a smaller network "
             "(--mlp_hidden_size)",
}


def out_of_memory(e: BaseException, advice: str) -> str | None:
  """The line for an error that says memory ran out (Python's MemoryError, or XLA's: a
  JaxRuntimeError whose status is RESOURCE_EXHAUSTED, or "Out of memory"), else None;
  ``advice``: what the program can ask less of."""
  if not isinstance(e, MemoryError) and not (
      type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError")
      and ("RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e))):
    return None
  size = re.search(r"allocating (\d+) bytes", str(e))
  what = (f"{int(size.group(1)) / 2 ** 30:.1f} GiB could not be allocated" if size
          else (str(e).strip().splitlines() or [type(e).__name__])[0][:200])
  return f"out of memory ({what}); ask for {advice}, or use a machine with more memory"


INTERRUPTED = supervisor.INTERRUPTED  # one wording, with or without a supervisor
INTERRUPTED_AFTER_COMMIT = ("interrupted after the run had finished: its files were written, "
                            "and the workdir holds this run")
INTERRUPTED_AFTER_PART = ("interrupted after this process had done its part of the run; "
                          "process 0 writes the files")
INTERRUPT_GRACE_S = 10.0
_interrupted = threading.Event()
_redeliver = threading.Event()  # an interrupt Python swallowed, raised again
_late_interrupt = threading.Event()  # one that came while a finished run's files moved in
_committed = threading.Event()  # the outermost run's files are in its workdir
_RUNS: list = []  # the runs open in this process, outermost first


def inside_another_run() -> bool:
  """Whether the innermost open run is a stage of another (a study's)."""
  return len(_RUNS) > 1


def _on_interrupt(signum, frame):  # pylint: disable=unused-argument
  """Ctrl-C or SIGTERM: KeyboardInterrupt in the main thread, and a stop that cannot be lost.

  Native code (XLA, TensorFlow) can hold or swallow the KeyboardInterrupt; if the run has
  not ended INTERRUPT_GRACE_S seconds later (or at a second Ctrl-C), a thread removes the
  run's staging folder, releases its lock and ends the process with exit code 130.
  """
  from experiments import workdir  # pylint: disable=import-outside-toplevel
  if workdir.committing():  # the run has finished: its files are moving into place
    _late_interrupt.set()
    _redeliver.clear()  # (a swallowed one: recorded as late, like any other)
    return
  if _redeliver.is_set():  # the first one, raised again where it is not swallowed
    _redeliver.clear()
    raise KeyboardInterrupt
  if _interrupted.is_set():
    _force_stop()
  _interrupted.set()
  backstop = threading.Timer(INTERRUPT_GRACE_S, _force_stop)
  backstop.daemon = True  # a run that ends by itself does not wait for it
  backstop.start()
  raise KeyboardInterrupt


def _unraisable(hook_args) -> None:
  """``sys.unraisablehook`` of a run: the KeyboardInterrupt of a Ctrl-C that arrived in a
  garbage collector's callback (a weak reference's, a ``__del__``), where Python prints it
  ("Exception ignored in ...") and goes on, is raised again in the main thread instead;
  anything else goes to Python's own hook."""
  if (issubclass(hook_args.exc_type, KeyboardInterrupt) and _interrupted.is_set()
      and threading.current_thread() is threading.main_thread()):
    _redeliver.set()  # _on_interrupt runs again, from another thread: once this hook and
    again = threading.Timer(0.01, _redeliver_now)  # the callback have returned (swallowed
    again.daemon = True  # again there: back here, and again)
    again.start()
    return
  sys.__unraisablehook__(hook_args)


def _redeliver_now() -> None:
  """The swallowed interrupt, raised in the main thread: unless it was raised meanwhile (by
  ``Run.finish``, which reads the record), or one Ctrl-C would stop the run twice (the
  second in its clean-up)."""
  if _redeliver.is_set():
    _thread.interrupt_main()


def _force_stop() -> None:
  from experiments import workdir  # pylint: disable=import-outside-toplevel
  open_workdirs = list(workdir.OPEN)
  for w in open_workdirs:
    w.close()  # waits for a commit in progress
  # Every open workdir committed (a study's too, not only a stage's): the run is complete.
  # None open: the run had closed its workdir, committed or not.
  done = all(w.committed for w in open_workdirs) if open_workdirs else _committed.is_set()
  print(INTERRUPTED_AFTER_COMMIT if done else INTERRUPTED, file=sys.stderr)
  sys.stderr.flush()
  os._exit(EXIT_INTERRUPTED)  # pylint: disable=protected-access


def _stop_at_interrupts(code: int) -> None:
  """From here on, the program is ending with ``code``: an interrupt ends it at once (it
  raised KeyboardInterrupt inside JAX's exit handlers: a traceback, and code 0), after a
  finished run with the line that says its files were written and code 130."""
  def stop(signum, frame):  # pylint: disable=unused-argument
    if _committed.is_set():
      line = INTERRUPTED_AFTER_COMMIT
    elif not code:  # done, nothing committed: a process that writes nothing
      line = INTERRUPTED_AFTER_PART
    else:  # an error's line is out: its code stands
      os._exit(code)  # pylint: disable=protected-access
    print(line, file=sys.stderr)
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)  # pylint: disable=protected-access
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, stop)


def _exit(code: int, at_once: bool = False) -> None:
  """Exits; a failed multi-host process exits at once (no shutdown barrier waiting for
  peers), and so does an interrupted one (``at_once``: no interpreter shutdown)."""
  _stop_at_interrupts(code)
  sys.stdout.flush()
  sys.stderr.flush()
  multihost = sys.modules.get("experiments.multihost")
  if at_once or (code and multihost is not None and multihost.started()):
    logging.flush()
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def main(kind: str, config_cls, validate, run, **kwargs) -> None:
  """Defines the program's flags (its config's and the launch options) and runs it."""
  from absl import app  # pylint: disable=import-outside-toplevel
  cfg.quiet_backend_search()
  cfg.define_flags(config_cls)
  cfg.define_flags(Launch)

  def _main(argv):
    if len(argv) > 1:
      cfg.usage_error(f"unexpected arguments {' '.join(argv[1:])!r}: every value goes in a "
                      "flag, lists comma-separated without spaces (e.g. --k=1,3 "
                      "--metric=l1,l2)")
    run_main(kind, config_cls, validate, run, **kwargs)

  app.run(_main, flags_parser=cfg.parse_flags)
