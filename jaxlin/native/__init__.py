"""Native CPU kernels: an exact int8 matrix product for x86-64 CPUs with AVX-512 VNNI.

XLA's CPU int8 product runs at about a third of what AVX-512 VNNI can do on CPUs without
Intel's AMX (an AMD EPYC, Zen 4: 323 GOP/s against 864 GOP/s for this kernel on a
1,000 x 4,000 x 3,072 product, ``benchmarks.matmul_speed``; 1.9-3.1x XLA's on the shapes
measured, one tall shape with 32 rows on its short side excepted at 0.86x; WORKSPACE.md,
2026-12-06). ``int8_products.cc`` is an XLA FFI handler with the same contract as XLA's
int8 dot with int32 output (exact wherever the true sums fit in int32), built with the
machine's C++ compiler the first time a process needs it (about 3 s) into
``$XDG_CACHE_HOME/jaxlin/native`` (``~/.cache/jaxlin/native``) and kept there, one file
per source, compiler command, and jax and jaxlib version.

``distances.int8_products`` uses it on CPUs that list ``avx512f``, ``avx512bw`` and
``avx512_vnni`` and no ``amx_int8``, where the default device is a CPU, for products of at
least ``MIN_ROWS`` rows on each side. On the Intel Xeons
with AMX measured here XLA's own int8 product ran 7-16x float32 (WORKSPACE.md, 2026-12-05);
the kernel has not been timed against it there, so those CPUs keep XLA's. CPUs with AVX2
only have no VNNI: XLA's product too. Everything else, a failed build included, takes XLA's
product: the results are the same, only the speed differs. A failed build says why once
per process (a warning). ``JAXLIN_INT8_PRODUCT`` in the environment chooses: ``auto`` (the
default, as above), ``xla`` (never the kernel) or ``native`` (the kernel where it would be
taken, and a RuntimeError that says why wherever it cannot run, whatever the shapes: for
benchmarks and tests); another value is an InputError. The choice is made when a program is traced:
a program already compiled keeps its product.

Limits: a program that holds the kernel cannot be serialized by ``jax.export`` (XLA keeps
no compatibility promise for custom calls); under ``jax.jit`` with inputs sharded over
several devices (GSPMD), XLA gathers them and each device computes the whole product
(``jaxlin.knn`` splits its work with ``shard_map``, which this does not affect). Set
``JAXLIN_INT8_PRODUCT=xla`` for either.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings

import jax
import numpy as np

from jaxlin.errors import InputError

__all__ = ["MAX_FEATURES", "MIN_ROWS", "SETTINGS", "available", "check_rows", "check_setting",
           "int8_products", "reason_unavailable", "setting", "unsupported"]

_SOURCE = os.path.join(os.path.dirname(__file__), "int8_products.cc")
_TARGET = "jaxlin_int8_products"
# Rows on each side from which the kernel is used (its tile is 8 x 48 rows; below that,
# e.g. a matrix-vector product, most of its lanes would be idle).
MIN_ROWS = 8
MAX_FEATURES = 2 ** 31 // 2 ** 14 - 1  # 131,071: every true product below 2**31
_lock = threading.Lock()


def _cpu_flags() -> set:
  from jaxlin import distances  # pylint: disable=import-outside-toplevel
  return distances._cpu_flags("/proc/cpuinfo")  # pylint: disable=protected-access


def _cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "jaxlin", "native")


def _compiler() -> list[str] | None:
  """The C++ compiler's command: ``CXX`` (which may hold a wrapper and flags, e.g. "ccache
  g++"), else the first of c++, g++ and clang++ on the PATH; None where there is none."""
  if os.environ.get("CXX", "").strip():
    cmd = shlex.split(os.environ["CXX"])
    if shutil.which(cmd[0]):
      return [shutil.which(cmd[0])] + cmd[1:]
    raise RuntimeError(f"CXX={os.environ['CXX']!r} names no program on the PATH; set CXX to "
                       "a C++ compiler, or unset it")
  for name in ("c++", "g++", "clang++"):
    if shutil.which(name):
      return [shutil.which(name)]
  return None


def _first_error(output: str) -> str:
  """The compiler's first line that names an error, else its last line."""
  lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
  errors = [line for line in lines if "error" in line.lower()]
  return (errors or lines or ["no output"])[0 if errors else -1]


def _build() -> str:
  """The path of the built library (built now if this source, compiler and jaxlib have no
  build in the cache yet). Raises RuntimeError with the reason where it cannot be built."""
  cxx = _compiler()
  if cxx is None:
    raise RuntimeError("no C++ compiler found (set CXX, or install g++ or clang++)")
  if not hasattr(jax, "ffi"):
    raise RuntimeError(f"jax {jax.__version__} has no jax.ffi: upgrade to jax 0.5 or newer")
  include = jax.ffi.include_dir()
  with open(_SOURCE, "rb") as f:
    source = f.read()
  import jaxlib  # pylint: disable=import-outside-toplevel
  key = hashlib.sha256(b"\0".join([source, " ".join(cxx).encode(), jax.__version__.encode(),
                                   getattr(jaxlib, "__version__", "").encode(),
                                   include.encode(), platform.machine().encode()]))
  folder = _cache_dir()
  path = os.path.join(folder, f"int8_products-{key.hexdigest()[:16]}.so")
  if os.path.exists(path):
    return path
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
  except OSError as e:
    raise RuntimeError(f"the cache folder {folder} cannot be written ({e.strerror}); set "
                       "XDG_CACHE_HOME to a writable folder") from None
  try:
    cmd = cxx + ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-w", "-I", include,
                 _SOURCE, "-o", tmp]
    name = os.path.basename(cxx[0])
    try:
      done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
      raise RuntimeError(f"{name} took more than 300 s; the command was: "
                         f"{shlex.join(cmd)}") from None
    except OSError as e:
      raise RuntimeError(f"{name} failed to start: {e}") from None
    if done.returncode != 0:
      raise RuntimeError(f"{name} failed (exit {done.returncode}): "
                         f"{_first_error(done.stderr + done.stdout)}; the command was: "
                         f"{shlex.join(cmd)}")
    os.replace(tmp, path)  # atomic: another process may be building the same file
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


SETTINGS = ("auto", "xla", "native")


def setting() -> str:
  """``JAXLIN_INT8_PRODUCT`` from the environment: "auto" (the default), "xla" or "native"."""
  value = os.environ.get("JAXLIN_INT8_PRODUCT", "auto").strip().lower() or "auto"
  if value not in SETTINGS:
    raise InputError(f"JAXLIN_INT8_PRODUCT must be one of {', '.join(SETTINGS)}, got "
                     f"{os.environ['JAXLIN_INT8_PRODUCT']!r}", argument="JAXLIN_INT8_PRODUCT")
  return value


def unsupported(machine: str, flags: set) -> str | None:
  """Why a CPU of this ``machine`` (``platform.machine()``) and Linux CPU ``flags`` does not
  take the kernel; None where it does."""
  if machine.lower() not in ("x86_64", "amd64"):
    return f"the CPU is {machine or 'unknown'}, not x86-64"
  if not {"avx512f", "avx512bw", "avx512_vnni"} <= flags:
    return "the CPU lists no AVX-512 VNNI (avx512_vnni with avx512bw)"
  if "amx_int8" in flags:
    return "the CPU has AMX, where XLA's own int8 product was measured fast"
  return None


@functools.lru_cache(maxsize=None)
def _registered() -> str | None:
  """Builds the kernel and registers it with XLA, once per process: None, or why not."""
  try:
    import ctypes  # pylint: disable=import-outside-toplevel
    lib = ctypes.CDLL(_build())
    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.JaxlinInt8Products),
                                platform="cpu")
  except (RuntimeError, OSError, AttributeError, ValueError) as e:
    return f"it was not built ({e})"
  return None


def _load(chosen: str) -> str | None:
  """None where the kernel runs (built and registered); else why it is not used."""
  if chosen == "xla":
    return "JAXLIN_INT8_PRODUCT=xla"
  reason = unsupported(platform.machine(), _cpu_flags()) or _registered()
  if (reason is not None and reason.startswith("it was not built") and chosen == "auto"
      and not _warned):
    _warned.append(reason)
    warnings.warn(f"jaxlin's int8 kernel for this CPU: {reason}; XLA's int8 product is "
                  "used instead (the same results, slower on this CPU); "
                  "JAXLIN_INT8_PRODUCT=xla uses it without this warning", RuntimeWarning,
                  stacklevel=2)
  return reason


_warned: list = []  # the build's failure, once warned about


def reason_unavailable() -> str | None:
  """Why the native int8 product cannot run in this process; None where it can (built on
  the first call). Raises InputError for a ``JAXLIN_INT8_PRODUCT`` other than auto, xla or
  native."""
  chosen = setting()
  with _lock:
    return _load(chosen)


def available() -> bool:
  """Whether the kernel can run here (built on the first call): on this CPU, with this
  setting. ``distances.int8_products`` takes it where the default device is a CPU and
  both sides have at least ``MIN_ROWS`` rows."""
  return reason_unavailable() is None


def check_setting() -> None:
  """``JAXLIN_INT8_PRODUCT`` checked: InputError for an unknown value; with "native" and a
  CPU as the default device, RuntimeError where the kernel cannot run, naming why."""
  if setting() != "native" or jax.default_backend() != "cpu":
    return
  reason = reason_unavailable()
  if reason is not None:
    raise RuntimeError(f"JAXLIN_INT8_PRODUCT=native, but jaxlin's int8 kernel cannot run "
                       f"here: {reason}. Unset JAXLIN_INT8_PRODUCT (or set it to auto or "
                       "xla) to use XLA's int8 product")


def check_rows(x_AxD, y_BxD, what: str = "") -> None:
  """InputError unless x and y are 2-D int8 arrays with the same number of features, at
  most ``MAX_FEATURES`` (``what``: words after "int8 array" in the message)."""
  for name, a in (("x_AxD", x_AxD), ("y_BxD", y_BxD)):
    if getattr(a, "dtype", None) != np.int8 or getattr(a, "ndim", None) != 2:
      raise InputError(f"{name} must be a 2-D int8 array{what}, got "
                       f"{getattr(a, 'dtype', type(a).__name__)} of shape "
                       f"{getattr(a, 'shape', None)}", argument=name)
  if x_AxD.shape[1] != y_BxD.shape[1]:
    raise InputError(f"x_AxD and y_BxD must have the same number of features, got "
                     f"{x_AxD.shape[1]} and {y_BxD.shape[1]}", argument="y_BxD")
  if x_AxD.shape[1] > MAX_FEATURES:
    raise InputError(f"at most {MAX_FEATURES} features (int32 sums), got "
                     f"{x_AxD.shape[1]}", argument="x_AxD")


def int8_products(x_AxD, y_BxD):
  """x . y^T in int32 for 2-D int8 x (A, D) and y (B, D), by the native kernel (traceable).
  Exact where the true sums fit in int32. Raises RuntimeError where ``available()`` is
  False (``distances.int8_products`` picks this kernel or XLA's product by itself)."""
  check_rows(x_AxD, y_BxD)
  check_setting()
  reason = reason_unavailable()
  if reason is not None:
    raise RuntimeError(f"the native int8 product is not available here: {reason}; use "
                       "jaxlin.distances.int8_products, which falls back to XLA's")
  out = jax.ShapeDtypeStruct((x_AxD.shape[0], y_BxD.shape[0]), np.int32)
  return jax.ffi.ffi_call(_TARGET, out, vmap_method="sequential")(x_AxD, y_BxD)
