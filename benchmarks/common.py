"""Shared helpers: data cached as .npy for child processes, timing, tables."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from experiments import provenance

# Flags every benchmark shares (defined once, so the modules can be imported together).
DATASET = flags.DEFINE_string("dataset", "cifar10", "cifar10 or folder:PATH")
DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir")
OUT = flags.DEFINE_string("out", None, "folder for the cached arrays and the report "
                          "(default runs/<benchmark>)")


machine, cpu = provenance.machine, provenance.cpu  # the CPU beside every figure


def software() -> str:
  """The versions the figures depend on, this checkout's commit and the environment
  variables that change how XLA and the baselines run."""
  found = provenance.versions(("jax", "jaxlib", "numpy", "faiss-cpu", "scikit-learn"))
  parts = [f"{name} {version}" for name, version in found.items()]
  # The code's own folders, untracked modules included (a docs edit is no change)
  head = provenance.commit(("jaxlin", "benchmarks"))
  parts.append(f"commit {head}" if head else "commit unknown (not a git checkout)")
  env = [f"{k}={os.environ[k]}" for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "JAX_PLATFORMS",
                                          "JAXLIN_INT8_PRODUCT") if os.environ.get(k)]
  return ", ".join(parts + env)


_SOFTWARE: list = []  # read when the run starts: the code that ran, not the code at its end


def run(main) -> None:
  """``app.run(main)`` with a bad flag (absl's parsing, or ``usage``) or a bad input
  (jaxlin's errors about the data) as one line, ``error: ...``, and exit code 2, as the
  experiments do, not absl's page of usage or a traceback; a crash keeps its traceback
  and exit code 1."""
  from experiments import config  # pylint: disable=import-outside-toplevel
  from jaxlin.errors import JaxlinError  # pylint: disable=import-outside-toplevel

  def checked(argv):
    if not ("child" in flags.FLAGS and flags.FLAGS["child"].value):  # a child reports nothing
      _SOFTWARE.append(software())
    try:
      return main(argv)
    except (app.UsageError, JaxlinError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(config.EXIT_USAGE)
  app.run(checked, flags_parser=config.parse_flags)


def usage(ok: bool, message: str) -> None:
  """A flag check: one usage error naming the flag and the fix, before any work."""
  if not ok:
    raise app.UsageError(message)


def need(module: str, what: str, skip: str = "") -> None:
  """A baseline's package is installed, or one usage error saying how to get it."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  try:
    found = importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):  # ValueError: a module whose __spec__ is None
    found = False
  usage(found, f"{what} is not installed: pip install -e '.[bench]'{skip}")


def check_methods(methods, known, flag: str = "methods") -> list[str]:
  """The --methods list: known names, each once, at least one."""
  methods = list(methods)
  unknown = [m for m in methods if m not in known]
  usage(not unknown and methods and len(set(methods)) == len(methods),
        f"--{flag} takes {', '.join(known)} (each once), got {','.join(methods) or 'none'}")
  return methods


def positive_ints(values, message: str, *, distinct: bool = False, count: int | None = None,
                  at_most: int | None = None) -> list[int]:
  """A list flag's integers, each >= 1 (and each once with ``distinct``, ``count`` of
  them, none above ``at_most``), or one usage error with ``message``."""
  try:
    out = [int(v) for v in values]
  except ValueError:
    out = []
  usage(bool(out) and min(out) >= 1 and (not distinct or len(set(out)) == len(out))
        and (count is None or len(out) == count) and (at_most is None or max(out) <= at_most),
        message)
  return out


def check_k(k: int, num_database: int) -> None:
  usage(k <= num_database, f"--k={k} is more than the {num_database} training images")


def check_repeats(repeats: int) -> int:
  usage(repeats >= 1, f"--repeats must be >= 1, got {repeats}")
  return repeats


def num_classes(arrays: dict) -> int:
  """The classes of the cached splits: one more than the largest label."""
  return int(max(arrays["train_y"].max(), arrays["test_y"].max())) + 1


def query_rows(queries: int, num_test: int) -> np.ndarray:
  """The test rows searched: ``queries`` of them at random (seeded; a folder's files come
  sorted by class), in increasing order; all of them when ``queries >= num_test``."""
  return np.sort(np.random.default_rng(0).permutation(num_test)[:queries])


def image_shape(num_features: int):
  """(side, side, 3) when rows of ``num_features`` are flattened square RGB images, else
  None (the pruned L1 bound then sums runs of features: looser, the same answer)."""
  side = int(round((num_features / 3) ** 0.5))
  return (side, side, 3) if side * side * 3 == num_features else None


def folder_stamp(dataset: str) -> str | None:
  """A hash of an image folder's file names, sizes and modification times (None for a
  tfds dataset): the cached arrays of a folder that changed are read again."""
  if not dataset.startswith("folder:"):
    return None
  root = dataset[len("folder:"):]
  h = hashlib.sha256()
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):  # as the loader
    dirnames.sort()
    for name in sorted(filenames):
      path = os.path.join(dirpath, name)
      try:
        st = os.stat(path)
      except OSError:
        continue
      h.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
  return h.hexdigest()[:16]


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
  source = {"dataset": dataset, "data_dir": data_dir, "files": folder_stamp(dataset)}
  try:
    with open(os.path.join(folder, "source.json")) as f:
      fresh = json.load(f) == source and all(os.path.exists(p) for p in paths.values())
  except (OSError, ValueError):
    fresh = False
  if not fresh:
    from jaxlin import data  # pylint: disable=import-outside-toplevel
    from jaxlin.errors import JaxlinError  # pylint: disable=import-outside-toplevel
    try:
      tx, ty, _ = data.load_split(dataset, "train", data_dir=data_dir)
      ex, ey, _ = data.load_split(dataset, "test", data_dir=data_dir)
    except JaxlinError as e:  # a missing or corrupt dataset: its one line, nothing written
      raise app.UsageError(f"--dataset={dataset}: {e}") from None
    os.makedirs(folder, exist_ok=True)
    stamp = os.path.join(folder, "source.json")
    if os.path.exists(stamp):  # arrays being rewritten are not fresh until it is back
      os.remove(stamp)
    for n, a in zip(paths, (tx.reshape(len(tx), -1), ty, ex.reshape(len(ex), -1), ey)):
      np.save(paths[n], a)
    with open(stamp + ".tmp", "w") as f:
      json.dump(source, f)
    os.replace(stamp + ".tmp", stamp)  # written last: a killed run leaves no fresh stamp
  return paths


def data_flags() -> list[str]:
  """The dataset flags to pass on to a child process (it finds the same cache)."""
  out = [f"--dataset={DATASET.value}"]
  return out + ([f"--data_dir={DATA_DIR.value}"] if DATA_DIR.value else [])


def out_dir(name: str) -> str:
  path = os.path.abspath(OUT.value or os.path.join("runs", name))
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path):
      pass
  except OSError as e:
    raise app.UsageError(f"--out={path} cannot be written ({e.strerror}); choose another "
                         "folder") from None
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
      if abs(v) >= 1000:
        return f"{v:.0f}"
      s, digits = f"{v:.3g}", 3
      # A fraction of agreement of 0.9996 is not "1" (nor 0.0004 "0"): small values never
      # round to a whole number they are not (254.469 may show as 254).
      while float(s) != v and float(s).is_integer() and abs(v) < 10 and digits < 17:
        digits += 3
        s = f"{v:.{digits}g}"
      return s
    return str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def report(out: str, name: str, rows: list[dict], columns: list[str], *,
           uses_dataset: bool = True, stem: str | None = None, **info) -> str:
  """Print the table and save it (stem.md, stem.json; the stem is the benchmark's name
  unless given) with the date, machine and command (and the dataset, for a benchmark that
  reads one)."""
  table = markdown_table(rows, columns)
  header = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(),
            "cpu": cpu(), "software": (_SOFTWARE or [software()])[0],
            # Asked at the end: at the start it would start JAX before the flags are checked.
            "int8_product": provenance.int8_product(),
            **({"dataset": DATASET.value} if uses_dataset else {}), **info,
            "command": f"python -m benchmarks.{name} " + " ".join(sys.argv[1:])}
  stem = stem or name
  with open(os.path.join(out, f"{stem}.json"), "w") as f:
    json.dump({**header, "rows": rows}, f, indent=2)
  path = os.path.join(out, f"{stem}.md")
  with open(path, "w") as f:
    f.write("\n".join(f"- {k}: {v}" for k, v in header.items()) + "\n\n" + table + "\n")
  print(table)
  print(f"saved {path}")
  return path


def fail_on(problems: list[str]) -> None:
  """After the report: a benchmark whose answers are not what its docstring promises
  (e.g. exactly brute force's) fails, naming them, so a run that measured wrong answers
  is never taken for a result."""
  if problems:
    raise AssertionError("wrong answers, a bug: " + "; ".join(problems))


def time_in_turn(run, settings, repeats: int):
  """Each setting's answer and times: ``run(s)`` once per setting first (compiling every
  program; that answer is kept), then ``repeats`` rounds that run every setting in turn,
  so that each round compares them under the same load. ({setting: [seconds]},
  {setting: answer})."""
  answers = {s: run(s) for s in settings}
  times = {s: [] for s in settings}
  for _ in range(repeats):
    for s in settings:
      with Stopwatch() as sw:
        run(s)
      times[s].append(sw.seconds)
  return times, answers


class Stopwatch:
  def __enter__(self):
    self.t0 = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self.t0


def best_seconds(fn, repeats: int) -> float:
  """The shortest of ``repeats`` timed calls of ``fn`` (each waited for), after one call
  that compiles its programs."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.block_until_ready(fn())  # compiled apart
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return min(times)
