"""Shared helpers: data cached as .npy for child processes, timing, tables."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time

from absl import flags
import numpy as np

# Flags every benchmark shares (defined once, so the modules can be imported together).
DATASET = flags.DEFINE_string("dataset", "cifar10", "cifar10 or folder:PATH")
DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir")
OUT = flags.DEFINE_string("out", None, "folder for the cached arrays and the report "
                          "(default runs/<benchmark>)")


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()}"


def cache_dir(out: str, dataset: str | None = None, data_dir: str | None = None) -> str:
  """The folder under ``out`` that caches one dataset's arrays: keyed by the dataset and
  its data_dir (default: the --dataset and --data_dir flags), so a run on another dataset
  never reuses them."""
  dataset = DATASET.value if dataset is None else dataset
  data_dir = DATA_DIR.value if data_dir is None else data_dir
  key = json.dumps({"dataset": dataset, "data_dir": data_dir}, sort_keys=True)
  name = "".join(c if c.isalnum() else "_" for c in dataset)[:40]
  return os.path.join(out, f"data_{name}_{hashlib.sha1(key.encode()).hexdigest()[:10]}")


def array_paths(out: str) -> dict:
  """Paths of the cached train/test arrays for the --dataset flag's dataset."""
  folder = cache_dir(out)
  return {n: os.path.join(folder, f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y")}


def cached_arrays(dataset: str, out_dir: str, data_dir=None) -> dict:
  """Whole train and test splits as uint8 .npy files, loaded once by jaxlin.data and
  cached in ``cache_dir(out_dir, dataset, data_dir)``."""
  folder = cache_dir(out_dir, dataset, data_dir)
  paths = {n: os.path.join(folder, f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y")}
  if not all(os.path.exists(p) for p in paths.values()):
    from jaxlin import data  # pylint: disable=import-outside-toplevel
    os.makedirs(folder, exist_ok=True)
    tx, ty, _ = data.load_split(dataset, "train", data_dir=data_dir)
    ex, ey, _ = data.load_split(dataset, "test", data_dir=data_dir)
    for n, a in zip(paths, (tx.reshape(len(tx), -1), ty, ex.reshape(len(ex), -1), ey)):
      np.save(paths[n], a)
    with open(os.path.join(folder, "source.json"), "w") as f:
      json.dump({"dataset": dataset, "data_dir": data_dir}, f)
  return paths


def data_flags() -> list[str]:
  """The dataset flags to pass on to a child process (it finds the same cache)."""
  out = [f"--dataset={DATASET.value}"]
  return out + ([f"--data_dir={DATA_DIR.value}"] if DATA_DIR.value else [])


def out_dir(name: str) -> str:
  path = os.path.abspath(OUT.value or os.path.join("runs", name))
  os.makedirs(path, exist_ok=True)
  return path


def prepare(name: str) -> tuple[str, dict]:
  """The output folder and the data, loaded once and cached there: (out_dir, {name: array})."""
  out = out_dir(name)
  paths = cached_arrays(DATASET.value, out, DATA_DIR.value)
  return out, {n: np.load(p) for n, p in paths.items()}


def peak_rss_mb() -> float:
  """This process's peak resident memory in MB.

  Linux's VmHWM, which starts afresh at exec: ``ru_maxrss`` keeps the peak of the
  process before exec, so a child started by a large parent would report the
  parent's memory.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_child(module: str, args: list[str], timeout: float | None = None,
              env: dict | None = None) -> dict:
  """Run `python -m module args` (extra environment `env`) and return the JSON it prints last."""
  proc = subprocess.run([sys.executable, "-m", module] + args, capture_output=True, text=True,
                        timeout=timeout, env={**os.environ, **(env or {})})
  if proc.returncode != 0:
    raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown_table(rows: list[dict], columns: list[str]) -> str:
  def fmt(v):
    if isinstance(v, float):
      return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def report(out: str, name: str, rows: list[dict], columns: list[str], **info) -> str:
  """Print the table and save it (name.md, name.json) with the date, machine and command."""
  table = markdown_table(rows, columns)
  header = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
            "dataset": DATASET.value, **info,
            "command": f"python -m benchmarks.{name} " + " ".join(sys.argv[1:])}
  with open(os.path.join(out, f"{name}.json"), "w") as f:
    json.dump({**header, "rows": rows}, f, indent=2)
  path = os.path.join(out, f"{name}.md")
  with open(path, "w") as f:
    f.write("\n".join(f"- {k}: {v}" for k, v in header.items()) + "\n\n" + table + "\n")
  print(table)
  print(f"saved {path}")
  return path


class Stopwatch:
  def __enter__(self):
    self.t0 = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self.t0
