"""What a result was computed with: the command, the code, the versions, the machine, the data.

Each run's results.json records ``describe(config)`` as its "environment", so that a run on
another machine, other code or other data can be told apart from this one; the benchmarks
name their CPU and code with the same functions.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
PACKAGES = ("jax", "jaxlib", "optax", "numpy", "tensorflow", "tensorflow-cpu",
            "tensorflow-datasets", "matplotlib")


def _cpuinfo() -> dict:
  """The first processor's fields in Linux's /proc/cpuinfo ({} where there is none)."""
  info = {}
  try:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
      for line in f:
        if not line.strip():
          break  # the first processor's block is enough
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
  except OSError:
    pass
  return info


def cores() -> int:
  """The cores this process may run on (not all the machine's, under taskset or a
  container's limits)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine() -> str:
  """The cores this process may run on and the CPU model."""
  model = _cpuinfo().get("model name") or platform.processor() or platform.machine()
  return f"{cores()} CPU cores ({model}), {platform.system()}"


def cpu() -> str:
  """The CPU as results need it named: model, family and model numbers, and the
  instruction sets that decide which kernels win (AMX, VNNI, AVX-512, AVX2)."""
  info = _cpuinfo()
  if not info:
    return platform.processor() or platform.machine()
  flags = set(info.get("flags", "").split())
  return (f"{info.get('model name', platform.machine())}, family {info.get('cpu family', '?')} "
          f"model {info.get('model', '?')}; " + (" ".join(f for f in _ISA if f in flags)
                                                 or "no AVX2"))


def commit(folders=("jaxlin", "experiments")) -> str | None:
  """This checkout's commit ("abc1234", "+ changes" where ``folders`` hold uncommitted
  changes or new files), or None outside a git checkout of jaxlin (an install inside
  another project's repository is not one)."""
  try:
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                         text=True, timeout=10, check=True, cwd=ROOT).stdout.strip()
    if os.path.realpath(top) != os.path.realpath(ROOT):  # installed inside another project
      return None
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, timeout=10, check=True, cwd=ROOT).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--", *folders],
                             capture_output=True, text=True, timeout=10, check=True,
                             cwd=ROOT).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return f"{head} + changes to {', '.join(folders)}" if changed else head


def versions(packages=PACKAGES) -> dict:
  """{package: version} of those installed, and Python's."""
  out = {"python": platform.python_version()}
  for package in packages:
    try:
      out[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def command() -> str:
  """The command line that started this process, as a shell would take it again."""
  argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
  argv[0] = os.path.basename(argv[0])
  return shlex.join(argv)


def data_digest(config) -> str | None:
  """``data.source_digest`` of ``config``'s dataset, or None where it cannot be read (the
  run reports that itself). Taken once the data is loaded: a tfds dataset's split sizes are
  known once it is prepared."""
  from jaxlin import data  # pylint: disable=import-outside-toplevel
  try:
    return data.source_digest(config.dataset, data_dir=getattr(config, "data_dir", None))
  except Exception:  # pylint: disable=broad-except
    return None


def int8_product() -> str:
  """Which int8 product exact L2 on pixels runs: "native" (jaxlin's kernel, built here if
  it is not yet) or "xla: <why not native>" (``jaxlin.native``) where the default device is
  a CPU; "float32 blocks on <platform>" elsewhere."""
  from jaxlin import native  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != "cpu":  # distances.int8_products: float32 blocks there
    return f"float32 blocks on {jax.default_backend()}"
  try:
    reason = native.reason_unavailable()
  except Exception as e:  # pylint: disable=broad-except  # a bad JAXLIN_INT8_PRODUCT
    return f"unknown: {e}"
  return "native" if reason is None else f"xla: {reason}"


def describe(config, digest: bool = True) -> dict:
  """The environment of a run of ``config`` (an experiment's Config): for results.json
  (``digest=False``: its data_files left None, to be taken later)."""
  from jaxlin import __version__  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  return {
      "command": command(),
      "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "jaxlin": __version__, "commit": commit(), "versions": versions(),
      "cpu": cpu(), "cores": cores(), "int8_product": int8_product(),
      "devices": sorted({f"{d.platform}: {d.device_kind}" for d in jax.devices()}),
      "data_files": data_digest(config) if digest else None,
  }
