"""A workdir never loses a finished run.

A run writes into a staging folder inside the workdir (``.staging-<pid>``) and
only when it succeeds replaces the previous run's files with its own
(``commit``); a run that fails, is interrupted or killed leaves the previous
run's files as they were. While a run is in progress it holds an exclusive
lock on ``<workdir>/.lock`` (``fcntl.flock``: the kernel releases it when the
process dies, so a crashed run never blocks the workdir). A workdir that holds
another experiment's run, or files that are not a jaxlin run, is refused unless
``overwrite``.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time

from jaxlin import files
from jaxlin.errors import ConfigError

LOCK = ".lock"
STAGING = ".staging-"
PREVIOUS = ".previous-"
KIND_KEY = "experiment"  # config.json names the experiment that wrote the workdir
OPEN: set = set()  # the workdirs of this process's runs in progress (for a forced stop)


def _legacy_kind(config: dict) -> str | None:
  """The experiment of a config.json written before it named one."""
  for key, kind in (("stages", "study"), ("k", "knn"), ("loss", "linear")):
    if key in config:
      return kind
  return None


def _run_files(path: str) -> list[str]:
  return sorted(e for e in os.listdir(path)
                if e != LOCK and not e.startswith((STAGING, PREVIOUS)))


class Workdir:
  """The workdir of one run: lock, staging folder, commit.

  Use as a context manager: on a clean exit ``commit()`` has to have been
  called for the run's files to appear; on any exception the staging folder is
  removed and the previous files stay.
  """

  def __init__(self, path: str, kind: str, *, overwrite: bool = False):
    if not path:
      raise ConfigError("--workdir is required: the folder where results and plots are written",
                        argument="workdir")
    self.path = os.path.abspath(os.path.expanduser(path))
    self.kind, self.overwrite = kind, overwrite
    self.staging: str | None = None
    self._lock_fd: int | None = None
    self._made: list[str] = []  # folders this run made, deepest first: a failed first run
    # removes them again (the workdir, and parents such as runs/ that did not exist)

  # ---- opening ---------------------------------------------------------------------------
  def open(self) -> "Workdir":
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise ConfigError(f"workdir {self.path} is a file, not a folder; choose another "
                        "--workdir", argument="workdir")
    try:
      folder = self.path
      while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        self._made.append(folder)
        folder = os.path.dirname(folder)
      os.makedirs(self.path, exist_ok=True)
      self._lock()
    except OSError as e:
      raise ConfigError(f"workdir {self.path} is not writable ({e.strerror or e}); "
                        "choose another --workdir", argument="workdir") from None
    try:
      self._check_kind()
      for e in os.listdir(self.path):  # left by runs that died (we hold the lock)
        if e.startswith((STAGING, PREVIOUS)):
          shutil.rmtree(os.path.join(self.path, e), ignore_errors=True)
      self.staging = os.path.join(self.path, f"{STAGING}{os.getpid()}")
      os.makedirs(self.staging)  # plots/ appears with the first figure
      OPEN.add(self)
    except BaseException:
      self._unlock()
      raise
    return self

  def _lock(self) -> None:
    path = os.path.join(self.path, LOCK)
    while True:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, files.file_mode())
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          raise
        raise ConfigError(f"workdir {self.path} is in use by another run ({self._holder(path)}); "
                          "wait for it or choose another --workdir", argument="workdir") from None
      try:  # the file we locked may have been removed by its previous holder meanwhile
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    info = dict(pid=os.getpid(), host=socket.gethostname(), experiment=self.kind,
                started=time.strftime("%Y-%m-%d %H:%M:%S"))
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(info) + "\n").encode())
    self._lock_fd = fd

  @staticmethod
  def _holder(path: str) -> str:
    try:
      with open(path) as f:
        info = json.load(f)
      return (f"{info['experiment']}, process {info['pid']} on {info['host']}, "
              f"started {info['started']}")
    except (OSError, ValueError, KeyError, TypeError):
      return "a run that is starting"

  def _check_kind(self) -> None:
    present = _run_files(self.path)
    if not present or self.overwrite:
      return
    config_path = os.path.join(self.path, "config.json")
    try:
      with open(config_path) as f:
        config = json.load(f)
      kind = config.get(KIND_KEY) or _legacy_kind(config)
    except (OSError, ValueError, AttributeError):
      kind = None
    if kind is None:
      raise ConfigError(f"workdir {self.path} holds files that are not a jaxlin run "
                        f"({', '.join(present[:3])}{' ...' if len(present) > 3 else ''}); "
                        "choose an empty folder, or pass --overwrite to replace them",
                        argument="workdir")
    if kind != self.kind:
      raise ConfigError(f"workdir {self.path} holds a {kind} run, not {self.kind}; choose "
                        "another --workdir, or pass --overwrite to replace it",
                        argument="workdir")

  # ---- while running ---------------------------------------------------------------------
  def file(self, name: str) -> str:
    """Where the run writes ``name`` (inside the staging folder)."""
    return os.path.join(self.staging, name)

  # ---- closing ---------------------------------------------------------------------------
  def commit(self) -> None:
    """Replaces the previous run's files with this run's (results.json out first, in last)."""
    old = _run_files(self.path)
    new = _run_files(self.staging)
    order = lambda names: sorted(names, key=lambda n: n != "results.json")
    trash = os.path.join(self.path, f"{PREVIOUS}{os.getpid()}")
    os.makedirs(trash, exist_ok=True)
    for name in order(old):
      os.replace(os.path.join(self.path, name), os.path.join(trash, name))
    for name in reversed(order(new)):
      os.replace(os.path.join(self.staging, name), os.path.join(self.path, name))
    shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(self.staging, ignore_errors=True)
    self.staging = None

  def close(self) -> None:
    """Removes the staging folder (if not committed) and releases the lock."""
    OPEN.discard(self)
    if self.staging:
      shutil.rmtree(self.staging, ignore_errors=True)
      self.staging = None
    self._unlock()
    for folder in self._made:  # a first run that failed leaves no empty folder behind
      try:
        os.rmdir(folder)  # only if empty: a committed run's files stay
      except OSError:
        break

  def _unlock(self) -> None:
    if self._lock_fd is not None:
      try:
        os.remove(os.path.join(self.path, LOCK))
      except OSError:
        pass
      fd, self._lock_fd = self._lock_fd, None
      try:
        os.close(fd)
      except OSError:  # closed already by a forced stop in another thread
        pass

  def __enter__(self):
    return self.open()

  def __exit__(self, *exc):
    self.close()
    return False
