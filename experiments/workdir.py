"""A workdir never loses a finished run, nor files that are not a run's.

A run writes into a staging folder inside the workdir (``.staging-<pid>``) and
only when it succeeds replaces the previous run's files with its own
(``commit``); a run that fails, is interrupted or killed leaves the previous
run's files as they were. While a run is in progress it holds an exclusive
lock on ``<workdir>/.jaxlin-lock`` (``fcntl.flock``: the kernel releases it when the
process dies, so a crashed run never blocks the workdir).

The commit replaces only the previous run's files (``.run-files.json`` lists
them, and every file inside its folders; for a run without it, written before it
existed or copied without it, the files its experiment writes: ``KIND_NAMES``,
``FIGURES``, TensorBoard's event files) and the names this run writes; any other
file stays. A file put inside one of the run's folders (plots/, a study's stage)
is refused, even with ``overwrite``: the next run replaces those folders whole;
so is a workdir inside them. A workdir that holds
another experiment's run, or files that are not a jaxlin run, is refused unless
``overwrite`` (which replaces the other run, and writes beside the other files,
keeping them). The commit is
journaled (``.commit-<pid>.json``): an error during it puts the previous run back,
and a process killed during it leaves the journal, which the next run on the
workdir completes first (or undoes, where the staged files are gone). Writing
the manifest is the commit point: nothing after it is undone. The staged files,
the journal and the manifest reach the disk (fsync) before the step that needs
them, so a power loss keeps one whole run too. The workdir's own names are
exact (``.staging-<pid>``, ``.previous-<pid>``, ...): a user's file of a similar
name is never taken for one. An interrupt
(Ctrl-C, SIGTERM) during the commit waits until it is done (``committing``).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import threading
import time

from jaxlin import files
from experiments.config import ConfigError

LOCK = ".jaxlin-lock"
_OLD_LOCK = ".lock"  # the lock's name before 2026-12-06: a crashed run's is removed
STAGING = ".staging-"
PREVIOUS = ".previous-"
JOURNAL = ".commit-"
MANIFEST = ".run-files.json"  # the names the run in the workdir wrote, and its folders' files
KIND_KEY = "experiment"  # config.json names the experiment that wrote the workdir
OPEN: set = set()  # the workdirs of this process's runs in progress (for a forced stop)
# The folders of a study's stages (experiments.study.STAGES), each a run of its own.
STAGE_NAMES = frozenset({"knn", "svm", "softmax", "svm_features", "mlp", "mlp_features"})
# What each experiment writes in its workdir: what a run of it without a manifest (written
# before MANIFEST existed, or copied without it) may have written, and the names a run of it
# would replace.
KIND_NAMES = {
    "knn": frozenset({"config.json", "results.json", "plots"}),
    "linear": frozenset({"config.json", "results.json", "metrics.jsonl", "model.npz", "plots",
                         "tensorboard"}),
    "study": frozenset({"config.json", "results.json", "report.md"}) | STAGE_NAMES}
RUN_NAMES = frozenset().union(*KIND_NAMES.values())  # any experiment's
# The figures runs write in plots/ (a run without a manifest: nothing else there is a run's).
FIGURES = frozenset({"cross_validation.png", "neighbors.png", "confusion.png", "weights.png",
                     "loss.png", "accuracy.png", "grid.png"})
# Held while files move, or a workdir closes: a forced stop from another thread waits for it,
# and one from a signal handler in the thread that holds it goes on (re-entrant).
_COMMITTING = threading.RLock()
_MOVING = threading.Event()  # set while a commit moves files (not while a workdir closes)


def committing() -> bool:
  """Whether a commit is moving files now (an interrupt then waits for it to end)."""
  return _MOVING.is_set()


# Staging and trash folders, journals, and the temporary files of the journal's and the
# manifest's atomic writes (files.atomic_write: "." + name + "." + random + ".tmp").
_CONTROL = re.compile(r"\.(staging|previous)-\d+|\.commit-\d+\.json"
                      r"|\.(\.commit-\d+\.json|\.run-files\.json)\.\w+\.tmp")


def _control(name: str) -> bool:
  """The workdir's own bookkeeping: the lock, the manifest, staging, trash and journal
  folders and files, and the temporary files of their atomic writes (exact names: a user's
  ``.staging-notes`` is the user's)."""
  return name in (LOCK, MANIFEST) or bool(_CONTROL.fullmatch(name))


def _is_old_lock(path: str) -> bool:
  """Whether ``path`` is a lock file a run wrote (its holder's JSON), not a user's file."""
  try:
    if os.path.islink(path) or os.path.getsize(path) > 4096:
      return False
    with open(path) as f:
      info = json.load(f)
    return isinstance(info, dict) and set(info) == {"pid", "host", "experiment", "started"}
  except (OSError, ValueError):
    return False


def _held(path: str) -> bool:
  """Whether a process holds the flock of ``path`` now."""
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return False
  except OSError as e:
    return e.errno in (errno.EAGAIN, errno.EACCES)
  finally:
    os.close(fd)


KINDS = ("knn", "linear", "study")  # the experiments that write a workdir
# Every jaxlin run's config.json has these (the data flags), from the first runs on: a
# config.json without "experiment" is taken for an older run's only with them.
_DATA_KEYS = frozenset({"dataset", "data_dir", "seed", "num_val", "num_train", "num_test"})


def _legacy_kind(config: dict) -> str | None:
  """The experiment of a jaxlin config.json written before it named one: the data flags
  and the experiment's own key; None for another program's config.json."""
  if not _DATA_KEYS <= set(config):
    return None
  for key, kind in (("stages", "study"), ("k", "knn"), ("loss", "linear")):
    if key in config:
      return kind
  return None


def _run_files(path: str) -> list[str]:
  return sorted(e for e in os.listdir(path) if not _control(e) and not _litter(e))


# Files a desktop's file browser leaves in the folders it shows, by name and the bytes they
# start with (macOS's .DS_Store and the AppleDouble "._" files it writes beside others on
# some disks; Windows' thumbnails): not a user's work. In the workdir they are left alone;
# inside a run's folders they go with the folder, where their first bytes say they are one.
# (Windows' desktop.ini is plain text, as a user's file of that name could be: not litter.)
_LITTER = {".DS_Store": b"\x00\x00\x00\x01Bud1", "Thumbs.db": b"\xd0\xcf\x11\xe0"}
_APPLE_DOUBLE = b"\x00\x05\x16\x07"


def _litter(name: str, path: str | None = None) -> bool:
  """Whether ``name`` is a file browser's; with ``path``, where its first bytes say so too."""
  magic = _APPLE_DOUBLE if name.startswith("._") else _LITTER.get(name)
  if magic is None:
    return False
  if path is None:
    return True
  try:
    with open(path, "rb") as f:
      return not os.path.islink(path) and f.read(len(magic)) == magic
  except OSError:
    return False


def _workdir_kind(path: str) -> str | None:
  """The experiment whose jaxlin config.json is in ``path``, or None (none, or another
  program's)."""
  try:
    with open(os.path.join(path, "config.json")) as f:
      config = json.load(f)
    if not isinstance(config, dict):
      return None
    if KIND_KEY in config:  # written since the experiments name themselves
      return config[KIND_KEY] if config[KIND_KEY] in KINDS else None
    return _legacy_kind(config)
  except (OSError, ValueError):
    return None


def _previous_run(path: str) -> set[str]:
  """The names of the files the run in ``path`` wrote, among those there: its manifest's;
  for a run without one (a jaxlin config.json: written before manifests, or copied without
  its hidden manifest) the names its experiment writes; nothing where no jaxlin run is."""
  return set(_run_files(path)) & _run_in(path)


def _run_in(folder: str) -> set[str]:
  """The names the run in ``folder`` claims (its manifest's, else its experiment's), there
  or not, without listing the folder (a folder above a workdir may be one a user can enter
  but not read, e.g. mode 711); nothing where no run is."""
  manifest = _manifest(folder)
  if manifest is not None:
    return set(manifest["files"])
  kind = _workdir_kind(folder)
  return set(KIND_NAMES[kind]) if kind else set()


def _manifest(path: str) -> dict | None:
  """The workdir's manifest {"files": the run's names, "tree": the paths of every file
  inside its folders (None in manifests written before 2026-12-06), "commit": the commit
  that wrote it}, or None."""
  try:
    with open(os.path.join(path, MANIFEST)) as f:
      manifest = json.load(f)
    if isinstance(manifest, list):  # the first manifests: the names alone
      manifest = {"files": manifest, "commit": None}
    if isinstance(manifest, dict) and isinstance(manifest.get("files"), list) and all(
        isinstance(n, str) for n in manifest["files"]):
      tree = manifest.get("tree")
      ok = isinstance(tree, list) and all(isinstance(n, str) for n in tree)
      return {**manifest, "tree": tree if ok else None}
  except (OSError, ValueError):
    pass
  return None


def _tree(path: str, names) -> list[str]:
  """The paths, relative to ``path``, of every file (or link, never followed) inside the
  folders among ``names``."""
  out = []
  for name in names:
    top = os.path.join(path, name)
    if not os.path.isdir(top) or os.path.islink(top):
      continue
    for folder, dirs, found in os.walk(top):
      rel = os.path.relpath(folder, path)
      out += [os.path.join(rel, f) for f in found]
      out += [os.path.join(rel, d) for d in dirs if os.path.islink(os.path.join(folder, d))]
  return sorted(out)


def _foreign_inside(path: str) -> list[str]:
  """The files inside the previous run's folders that are not a run's (a user's notes in
  plots/, say), which a commit would take away with the folders. A run's files there:
  those the manifest lists, and those ``_written_by_a_run`` vouches for; where the manifest
  has no list of them (or there is none: a run written before manifests, or copied
  without its own), those its experiment writes (``_writes``)."""
  manifest = _manifest(path)
  inside = _tree(path, _previous_run(path))
  if manifest is not None and manifest["tree"] is not None:
    listed = set(manifest["tree"])
    return sorted(rel for rel in inside if rel not in listed and not _written_by_a_run(path, rel))
  kind = _workdir_kind(path)
  return sorted(rel for rel in inside if not _written_by_a_run(path, rel)
                and not _writes(path, kind, rel.split(os.sep)))


def _writes(path: str, kind: str | None, parts: list[str]) -> bool:
  """Whether a run of ``kind`` in ``path`` writes the file at ``parts`` inside its folders:
  its figures in plots/, TensorBoard's event files, and a study's stages (runs of their own,
  whose bookkeeping and files are checked the same way)."""
  if kind is None or len(parts) < 2 or parts[0] not in KIND_NAMES[kind]:
    return False
  if parts[0] == "plots":
    return len(parts) == 2 and parts[1] in FIGURES
  if parts[0] == "tensorboard":
    return len(parts) == 3 and parts[2].startswith("events.out.tfevents.")
  if kind != "study":
    return False
  stage = os.path.join(path, parts[0])
  if len(parts) == 2 and (_control(parts[1]) or (parts[1] == _OLD_LOCK and _is_old_lock(
      os.path.join(stage, _OLD_LOCK)))):
    return True
  inner = _workdir_kind(stage)
  if inner not in ("knn", "linear"):
    return False
  return parts[1] in KIND_NAMES[inner] if len(parts) == 2 else _writes(stage, inner, parts[1:])


def _written_by_a_run(path: str, rel: str) -> bool:
  """Whether the file at ``rel`` (inside ``path``, in a folder of the previous run) is a
  run's though the workdir's manifest does not list it: a file browser's litter, or in a
  study's stage folder (run again alone), the bookkeeping of a run there or a file its
  manifest lists (with its tree: a manifest without one vouches for nothing). Nowhere
  else: a run of the user's inside plots/, or a copy of one, is the user's."""
  parts = rel.split(os.sep)
  if _litter(parts[-1], os.path.join(path, rel)):
    return True
  if len(parts) < 2 or parts[0] not in STAGE_NAMES or _workdir_kind(path) != "study":
    return False
  stage = os.path.join(path, parts[0])
  inner = _manifest(stage)
  if parts[1] == _OLD_LOCK and len(parts) == 2:  # a stage run by jaxlin before 2026-12-06
    return _is_old_lock(os.path.join(stage, _OLD_LOCK))
  if _control(parts[1]):
    return inner is not None or _workdir_kind(stage) is not None
  return (inner is not None and inner["tree"] is not None and parts[1] in inner["files"]
          and (len(parts) == 2 or os.path.join(*parts[1:]) in inner["tree"]))


def _refuse_foreign_inside(path: str, during_run: bool = False) -> None:
  inside = _foreign_inside(path)
  if inside:
    raise ConfigError(f"workdir {path} {'gained during the run' if during_run else 'holds'} "
                      f"files inside the previous run's folders that are not that run's "
                      f"({', '.join(inside[:3])}{' ...' if len(inside) > 3 else ''}); a new "
                      "run replaces those folders whole"
                      f"{', so this run wrote nothing' if during_run else ''}: move the files "
                      "out of them (beside them they are kept), then run again (--overwrite "
                      "never deletes files that runs did not write)", argument="workdir")


def _remove(path: str, ignore_errors: bool = False) -> None:
  """Removes a file, link or folder at ``path`` (nothing if there is none); a link is
  removed, never followed. ``ignore_errors``: what of a folder cannot be removed stays."""
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=ignore_errors)
  elif os.path.lexists(path):
    os.remove(path)


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
    self.committed = False  # the run's files are in place
    self._lock_fd: int | None = None
    self._made: list[str] = []  # folders this run made, deepest first: a failed first run
    # removes them again (the workdir, and parents such as runs/ that did not exist)

  # ---- opening ---------------------------------------------------------------------------
  def open(self) -> "Workdir":
    if os.path.islink(self.path) and not os.path.exists(self.path):
      raise ConfigError(f"workdir {self.path} is a link to {os.readlink(self.path)}, which does "
                        "not exist; create that folder, or choose another --workdir",
                        argument="workdir")
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise ConfigError(f"workdir {self.path} is a file, not a folder; choose another "
                        "--workdir", argument="workdir")
    self._check_nested_runs()
    self._check_inside_a_run()
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
      old_lock = os.path.join(self.path, _OLD_LOCK)
      if _is_old_lock(old_lock):  # a run of jaxlin before 2026-12-06 (it names its lock .lock)
        if _held(old_lock):
          raise ConfigError(f"workdir {self.path} is in use by another run "
                            f"({self._holder(old_lock)}); wait for it or choose another "
                            "--workdir", argument="workdir")
        os.remove(old_lock)  # left by one that died
      for e in sorted(os.listdir(self.path)):  # a commit that a killed process left half done
        if _CONTROL.fullmatch(e) and e.startswith(JOURNAL):
          self._finish_commit(os.path.join(self.path, e))
      for e in os.listdir(self.path):  # left by runs that died (we hold the lock)
        if _control(e) and e not in (LOCK, MANIFEST):
          _remove(os.path.join(self.path, e), ignore_errors=True)
      self._check_kind()
      self.staging = os.path.join(self.path, f"{STAGING}{os.getpid()}")
      os.makedirs(self.staging)  # plots/ appears with the first figure
      OPEN.add(self)
    except BaseException:
      self._unlock()
      raise
    return self

  def _check_nested_runs(self) -> None:
    """Refuses a workdir inside the workdir of a run in progress in another process (a
    study's stage folder while the study runs: the study would find it there at its end and
    write nothing), or one holding such a run's workdir in a subfolder (a study started
    over a stage folder that a run is writing). This process's own runs (a study and its
    stages) are not in the way."""
    own = {w.path for w in OPEN}
    folder = os.path.dirname(self.path)
    while folder not in own:
      lock = os.path.join(folder, LOCK)
      if _held(lock):
        raise ConfigError(f"workdir {self.path} is inside the workdir {folder} of a run in "
                          f"progress ({self._holder(lock)}), which "
                          "replaces its folders when it ends; wait for it or choose another "
                          "--workdir", argument="workdir")
      if os.path.dirname(folder) == folder:
        break
      folder = os.path.dirname(folder)
    try:
      entries = sorted(os.listdir(self.path))
    except OSError:  # none yet, or unreadable: open() says so
      return
    for e in entries:
      lock = os.path.join(self.path, e, LOCK)
      if not _control(e) and _held(lock):
        raise ConfigError(f"workdir {self.path} holds the workdir {e} of a run in progress "
                          f"({self._holder(lock)}); wait for it or choose another --workdir",
                          argument="workdir")

  def _check_inside_a_run(self) -> None:
    """Refuses a workdir inside a finished run's folders (its plots/, or a stage's): the
    next run there replaces them whole, so it would refuse to take this run away, or take
    it. A study's stage folder itself is a run of its own (``_check_kind`` says more)."""
    for path in dict.fromkeys((self.path, os.path.realpath(self.path))):  # a link's target too
      child, folder = path, os.path.dirname(path)
      while folder != child:
        name = os.path.basename(child)
        stage = child == path and name in STAGE_NAMES  # a stage: _check_kind says more
        if not stage and name in _run_in(folder):
          kind = _workdir_kind(folder)
          raise ConfigError(f"workdir {self.path} is {'' if child == path else 'inside '}"
                            f"{name}/ of the {kind or 'jaxlin'} run in {folder}, which its next "
                            f"run replaces whole; choose a folder outside it (e.g. --workdir="
                            f"{os.path.join(os.path.dirname(folder), 'NAME')})",
                            argument="workdir")
        child, folder = folder, os.path.dirname(folder)

  def _lock(self) -> None:
    path = os.path.join(self.path, LOCK)
    while True:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, files.file_mode())
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
    _refuse_foreign_inside(self.path)
    present = _run_files(self.path)
    foreign = sorted(set(present) - _previous_run(self.path))
    clash = [name for name in foreign if name in KIND_NAMES[self.kind]]  # this run replaces
    for name in clash:  # a run's own folder, e.g. a stage a study had dropped, given to a run
      kind = _workdir_kind(os.path.join(self.path, name))
      if kind is None:
        continue
      if self.kind == "study":
        raise ConfigError(f"workdir {self.path} holds {name}/, a {kind} run of its own, where "
                          f"this study writes its {name} stage; move that run elsewhere, or "
                          "choose another --workdir (--overwrite never replaces another run's "
                          "folder)", argument="workdir")
      raise ConfigError(f"workdir {self.path} holds {name}/, a {kind} run; give this run a "
                        f"folder of its own (e.g. --workdir={os.path.join(self.path, 'NAME')})",
                        argument="workdir")
    if clash:
      raise ConfigError(f"workdir {self.path} holds {', '.join(clash[:3])}"
                        f"{' ...' if len(clash) > 3 else ''}, which a {self.kind} run "
                        "writes, but not from a jaxlin run; choose another --workdir "
                        "(--overwrite never replaces files that runs did not write)",
                        argument="workdir")
    if foreign and not self.overwrite:
      kind = _workdir_kind(self.path)
      raise ConfigError(f"workdir {self.path} holds files that "
                        f"{f'its {kind} run did not write' if kind else 'are not a jaxlin run'} "
                        f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); "
                        "choose an empty folder, or pass --overwrite to write the run beside "
                        "them (they are kept)", argument="workdir")
    if not present or self.overwrite:
      return
    parent, name = os.path.split(os.path.realpath(self.path))
    if _workdir_kind(parent) == "study" and name in _previous_run(parent):
      raise ConfigError(f"workdir {self.path} is the {name} stage of the study in {parent}: a "
                        "run here would leave that study's report.md describing another run; "
                        "choose another --workdir, or pass --overwrite", argument="workdir")
    kind = _workdir_kind(self.path)
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
    """Replaces the previous run's files, and any file of a name this run writes, with this
    run's (results.json out first, in last); other files stay. Journaled, so that a process
    killed midway leaves a commit the next run completes."""
    _MOVING.set()  # until the end: an interrupt waits (a second Ctrl-C's stop too)
    try:
      with _COMMITTING:
        if self.staging is None:  # closed meanwhile (a forced stop): nothing to commit
          raise RuntimeError("the run's workdir was closed before its files were committed")
        previous = _previous_run(self.path)
        new = _run_files(self.staging)
        clash = sorted(set(new) & set(_run_files(self.path)) - previous)
        if clash:  # files runs did not write: kept, so the run cannot take their names
          raise ConfigError(f"workdir {self.path} gained {', '.join(clash)} during the run, "
                            "which the run writes; its files were not written",
                            argument="workdir")
        _refuse_foreign_inside(self.path, during_run=True)
        journal = os.path.join(self.path, f"{JOURNAL}{os.getpid()}.json")
        plan = {"old": sorted(previous), "new": new, "staging": os.path.basename(self.staging),
                "trash": f"{PREVIOUS}{os.getpid()}", "commit": f"{os.getpid()}-{time.time_ns()}",
                "tree": _tree(self.staging, new)}
        files.sync_tree(self.staging)  # the new run's files on disk before the journal
        files.write_json(journal, plan, durable=True)
        try:
          self._finish_commit(journal)
        except BaseException as e:
          if os.path.exists(journal):
            self._roll_back(journal)  # before the commit point: the previous run comes back
          if isinstance(e, OSError):  # e.g. a folder of the previous run made read-only
            where = f" ({e.filename})" if e.filename else ""
            raise ConfigError(f"workdir {self.path}: the previous run's files could not be "
                              f"replaced: {e.strerror or e}{where}; this run's files were not "
                              "written and the previous run stays. Make the workdir and its "
                              "folders writable, or choose another --workdir",
                              argument="workdir") from None
          raise
        self.staging = None
        self.committed = True
    finally:
      _MOVING.clear()

  def _finish_commit(self, journal: str) -> None:
    """Carries out (or completes) the commit that ``journal`` describes: every old file
    still in the workdir out to the trash, every new one still staged in, the manifest
    written (the commit point), then the journal, the trash and the staging folder
    removed; undone instead where the staging folder is gone."""
    plan = self._plan(journal)
    if plan is None:
      return
    old, new, staging, trash, commit, tree = plan
    if not os.path.isdir(staging):  # the new run is gone: the previous one goes back
      self._roll_back(journal)
      return
    order = lambda names: sorted(names, key=lambda n: n != "results.json")
    os.makedirs(trash, exist_ok=True)
    for name in order(old):
      here, staged = os.path.join(self.path, name), os.path.join(staging, name)
      # A name in both lists whose staged file is gone was moved in already: it stays.
      if os.path.lexists(here) and (name not in new or os.path.lexists(staged)):
        target = os.path.join(trash, name)
        _remove(target, ignore_errors=True)  # (a file there too, not only a folder)
        os.replace(here, target)
    for name in reversed(order(new)):
      if os.path.lexists(os.path.join(staging, name)):
        os.replace(os.path.join(staging, name), os.path.join(self.path, name))
    files.write_json(os.path.join(self.path, MANIFEST),
                     {"files": sorted(new), "tree": tree, "commit": commit},
                     durable=True)  # the commit point: from here the new run stands
    try:  # clean-up: what is left over, the next open removes
      os.remove(journal)
    except OSError:
      pass
    shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)

  def _plan(self, journal: str):
    """(old names, new names, staging folder, trash folder, commit id, the new run's files
    inside its folders) of a journal, or None
    (and the journal removed) where its commit is past its commit point (the manifest it
    writes is in place: the new run stands, and only the clean-up was left), or where it
    cannot be read (it is written atomically and synced, so only a damaged disk leaves
    one): then the previous run comes back, the one the manifest lists. Every file in
    the trash goes back, over a file of the same name (the new run's, moved in after the
    old one went out); the new run's other files moved in (names runs write that the
    manifest does not list) go."""
    try:
      with open(journal) as f:
        plan = json.load(f)
      out = (list(plan["old"]), list(plan["new"]),
             os.path.join(self.path, os.path.basename(plan["staging"])),
             os.path.join(self.path, os.path.basename(plan["trash"])), str(plan["commit"]),
             plan.get("tree"))  # (journals written before 2026-12-06 have none)
    except (OSError, ValueError, KeyError, TypeError):
      self._salvage(journal)
      return None
    manifest = _manifest(self.path)
    if manifest is not None and manifest.get("commit") == out[4]:
      os.remove(journal)
      return None
    return out

  def _salvage(self, journal: str) -> None:
    """The previous run back, from a commit whose journal cannot be read (see ``_plan``)."""
    pid = os.path.basename(journal)[len(JOURNAL):-len(".json")]
    trash = os.path.join(self.path, f"{PREVIOUS}{pid}")
    for name in os.listdir(trash) if os.path.isdir(trash) else ():
      _remove(os.path.join(self.path, name))
      os.replace(os.path.join(trash, name), os.path.join(self.path, name))
    manifest = _manifest(self.path)  # the previous run's: the new one's comes after the journal
    if manifest is not None:
      for name in set(_run_files(self.path)) & RUN_NAMES - set(manifest["files"]):
        _remove(os.path.join(self.path, name))  # (a user's file of such a name is refused)
    os.remove(journal)

  def _roll_back(self, journal: str) -> None:
    """Undoes a commit in progress: every new file moved in goes back to the staging
    folder (where it still exists), every old file back from the trash; the journal goes."""
    plan = self._plan(journal)
    if plan is None:
      return
    old, new, staging, trash = plan[:4]
    for name in new:
      here, staged = os.path.join(self.path, name), os.path.join(staging, name)
      moved_in = not os.path.lexists(staged) and (
          name not in old or os.path.lexists(os.path.join(trash, name)))
      if os.path.lexists(here) and moved_in:
        if os.path.isdir(staging):
          os.replace(here, staged)
        else:
          _remove(here)
    for name in old:
      kept = os.path.join(trash, name)
      if os.path.lexists(kept) and not os.path.lexists(os.path.join(self.path, name)):
        os.replace(kept, os.path.join(self.path, name))
    shutil.rmtree(trash, ignore_errors=True)
    os.remove(journal)

  def close(self) -> None:
    """Removes the staging folder (if not committed) and releases the lock; waits for a
    commit in progress (in another thread) to end."""
    with _COMMITTING:
      self._close()

  def _close(self) -> None:
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
