"""Writing files: atomically, with the user's umask, and strict JSON.

The one place where jaxlin creates files (checkpoints, figures, feature
caches, the experiments' results). A file appears whole or not at all: it is
written to a temporary file in the same folder and renamed into place. Its
mode is what ``open()`` would give (0o666 less the process umask, typically
0o644), not the 0o600 of a bare temporary file, so colleagues sharing a
machine can read results.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import zlib
from typing import Any, Callable, IO

from jaxlin.errors import InputError

__all__ = ["atomic_write", "write_json", "to_json", "json_safe", "file_mode", "sync_tree"]


def file_mode() -> int:
  """The mode a new file gets from ``open()``: 0o666 less the current umask (read from
  Linux's process status where it can be: setting the umask to read it would give a
  file another thread creates meanwhile the mode 0o666)."""
  try:
    with open("/proc/self/status", encoding="ascii", errors="replace") as f:
      for line in f:
        if line.startswith("Umask:"):
          return 0o666 & ~int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0)
  os.umask(mask)
  return 0o666 & ~mask


def _sync_folder(directory: str) -> None:
  """fsync a folder: the names created or renamed in it reach the disk."""
  try:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:  # some file systems cannot sync a folder: their renames are what they are
    pass
  finally:
    os.close(fd)


def sync_tree(path: str) -> None:
  """fsync every file and folder under ``path`` (symbolic links not followed): what was
  written there is on the disk, not only in the page cache."""
  for root, _, names in os.walk(path):
    for name in names:
      full = os.path.join(root, name)
      if os.path.islink(full) or not os.path.isfile(full):
        continue
      fd = os.open(full, os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)
    _sync_folder(root)


def atomic_write(path: str, write: Callable[[IO], None], *, binary: bool = True,
                 durable: bool = False) -> str:
  """Create or replace ``path`` with what ``write(f)`` writes to an open file.

  The temporary file lies beside ``path`` and is removed if ``write`` raises
  (KeyboardInterrupt included): a reader sees the old file or the new one,
  never a part. A symbolic link is written through (its target replaced). An
  OSError (a missing or unwritable folder, a folder at ``path``, a full disk) names
  ``path``.
  ``durable``: the file's contents and its name reach the disk (fsync) before this
  returns, so that a power loss leaves the old file or the new one too.
  """
  path = os.fsdecode(path)
  target = os.path.realpath(path) if os.path.islink(path) else path  # a link: write through
  directory = os.path.dirname(os.path.abspath(target))
  if os.path.isdir(target):
    raise IsADirectoryError(21, "Is a directory (a file path is needed)", path)
  try:  # a short prefix: a temporary name within the limit whenever the name itself is
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)[:40]}.",
                               suffix=".tmp")
  except OSError as e:  # name the user's path, not the temporary file's
    raise type(e)(e.errno, e.strerror, path) from None
  try:
    with os.fdopen(fd, "wb" if binary else "w") as f:
      write(f)
      if durable:
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, file_mode())
    os.replace(tmp, target)
    if durable:
      _sync_folder(directory)
  except BaseException as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError) and e.filename in (None, tmp):  # e.g. a full disk: name path
      raise type(e)(e.errno, e.strerror, path) from None
    raise
  return path


def json_safe(obj: Any) -> Any:
  """``obj`` with numpy / jax values as Python ones and non-finite floats as None.

  Strict JSON has no NaN or Infinity; a non-finite number (a diverged loss, an
  accuracy that was never measured) is written as null.
  """
  if isinstance(obj, dict):
    out = {}
    for k, v in obj.items():
      if str(k) in out:  # e.g. 1 and "1": one would silently replace the other
        raise InputError(f"two keys are both written as {str(k)!r} in JSON; make them "
                         "distinct", argument="obj")
      out[str(k)] = json_safe(v)
    return out
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy / jax arrays, scalars
    return json_safe(obj.tolist())
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def to_json(obj: Any, **kwargs) -> str:
  """Strict JSON text of ``obj`` (see json_safe); raises on anything unserialisable."""
  return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def write_json(path: str, obj: Any, *, durable: bool = False) -> str:
  """Write ``obj`` as indented strict JSON, atomically (``durable``: see atomic_write)."""
  text = to_json(obj, indent=2) + "\n"
  return atomic_write(path, lambda f: f.write(text), binary=False, durable=durable)


def crc32(array) -> int:
  """CRC-32 of an array's bytes (in C order): the check of a cache entry."""
  import numpy as np  # pylint: disable=import-outside-toplevel  # files imports no numpy
  return zlib.crc32(np.ascontiguousarray(array).data)
