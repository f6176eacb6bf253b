"""What every entry point shares: workdir files, progress bars, error handling."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Mapping


from absl import flags

from jaxlin.errors import ConfigError, JaxlinError

# Flags every experiment shares, defined once so that entry points can import
# each other (the study runs them all). Sizes default to None: "the
# experiment's own default" (see each experiment's DEFAULTS).
DATASET = flags.DEFINE_string(
    "dataset", "cifar10", "cifar10 (through tfds) or folder:PATH (PATH/{train,test}/<class>/*.jpg)")
DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir (default: tfds's own)")
WORKDIR = flags.DEFINE_string("workdir", None, "folder for config, results, plots and models")
SEED = flags.DEFINE_integer("seed", 0, "seed for subsets, folds, init and minibatches")
NUM_TRAIN = flags.DEFINE_integer("num_train", None, "training images (0 = all; default: the experiment's)")
NUM_VAL = flags.DEFINE_integer("num_val", None, "val images, the last of the training split (default 1000)")
NUM_TEST = flags.DEFINE_integer("num_test", None, "test images (0 = all; default: the experiment's)")
SHARD = flags.DEFINE_string(
    "shard", "auto", "many devices: auto (split the queries / the batch when there are several "
    "devices), none, queries, or database (kNN: split the database rows)")
SHARD_MODES = ("auto", "none", "queries", "database")
COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "multi-host: host:port of process 0 (with --num_processes, --process_id)")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-host: this process's id, 0 .. num_processes-1")
DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "multi-host on a managed cluster (TPU pods, SLURM): discover the processes")


def init_distributed() -> None:
  """jax.distributed.initialize() from the multi-host flags (no-op when none are given)."""
  if not (DISTRIBUTED.value or COORDINATOR.value or NUM_PROCESSES.value):
    return
  import jax  # pylint: disable=g-import-not-at-top
  if COORDINATOR.value and (NUM_PROCESSES.value is None or PROCESS_ID.value is None):
    raise ConfigError("--coordinator_address needs --num_processes and --process_id")
  try:  # CPU-only processes need a collectives backend to talk to each other
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, KeyError, ValueError):
    pass
  if DISTRIBUTED.value and not COORDINATOR.value:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=COORDINATOR.value,
                               num_processes=NUM_PROCESSES.value, process_id=PROCESS_ID.value)


def is_writer() -> bool:
  """Only process 0 writes files; every process computes the same results."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


def log_rows(rows: Mapping[str, tuple[int, int]]) -> None:
  """One log line: which rows of which splits this process read."""
  import jax  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.info("process %d of %d holds rows %s", jax.process_index(), jax.process_count(),
               ", ".join(f"{s} [{lo}, {hi})" for s, (lo, hi) in rows.items()))


def check_shard(value: str) -> str:
  if value not in SHARD_MODES:
    raise ConfigError(f"unknown --shard {value!r}; choose from {', '.join(SHARD_MODES)}")
  return value


def mesh_for(shard: str):
  """(mesh or None, kNN shard mode): a mesh over all devices unless there is one or shard=none."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxlin import sharding  # pylint: disable=g-import-not-at-top
  if shard == "none" or jax.device_count() == 1:
    return None, "queries"
  return sharding.make_mesh(), ("database" if shard == "database" else "queries")


def shared_flag_config(defaults: Mapping[str, Any]) -> dict:
  """The shared flags as config entries (unset sizes take the experiment's defaults)."""
  out = dict(dataset=DATASET.value, data_dir=DATA_DIR.value, seed=SEED.value, shard=SHARD.value)
  for name, holder in (("num_train", NUM_TRAIN), ("num_val", NUM_VAL), ("num_test", NUM_TEST)):
    out[name] = defaults[name] if holder.value is None else holder.value
  return out


def merge_config(defaults: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
  unknown = set(config) - set(defaults)
  if unknown:
    raise ConfigError(f"unknown config keys {sorted(unknown)}; known: {sorted(defaults)}")
  return {**defaults, **config}


def prepare_workdir(workdir: str, stale: tuple[str, ...] = ("results.json",)) -> str:
  """Create the workdir, prove it is writable, and remove stale result files.

  A failed run must not leave an older results.json looking like its own.
  """
  if not workdir:
    raise ConfigError("--workdir is required: the folder where results and plots are written")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not is_writer():
    return workdir
  try:
    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=workdir, prefix=".write_test")
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"workdir {workdir} is not writable ({e.strerror}); "
                      "choose another --workdir") from None
  for name in stale:
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      os.remove(path)
  return workdir


def write_json(path: str, obj: Any) -> str:
  """Write JSON atomically (a temporary file renamed into place); process 0 only."""
  if not is_writer():
    return path
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
    f.write("\n")
  os.replace(tmp, path)
  return path


def _json_default(o):
  try:
    import numpy as np  # pylint: disable=g-import-not-at-top
    if isinstance(o, np.generic):
      return o.item()
    if hasattr(o, "tolist"):
      return o.tolist()
  except ImportError:
    pass
  raise TypeError(f"not JSON serialisable: {type(o)}")


class MetricsWriter:
  """Appends one JSON object per logged step to metrics.jsonl."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = is_writer()
    if self.enabled:
      open(self.path, "w").close()

  def write(self, **record):
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record, default=_json_default) + "\n")


def progress(desc: str, total: int | None = None, unit: str = "it"):
  """A tqdm progress bar on stderr (silent when stderr is not a terminal and CI is set)."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False,
              disable=bool(os.environ.get("JAXLIN_NO_PROGRESS")))


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


def parse_ints(values, name: str) -> list[int]:
  try:
    return [int(v) for v in values]
  except (TypeError, ValueError):
    raise ConfigError(f"--{name} must be a comma-separated list of integers, got {values!r}") from None


def parse_floats(values, name: str) -> list[float]:
  try:
    return [float(v) for v in values]
  except (TypeError, ValueError):
    raise ConfigError(f"--{name} must be a comma-separated list of numbers, got {values!r}") from None


def run_main(run: Callable[[dict, str], dict], config: dict, workdir: str) -> None:
  """Calls run(config, workdir); a user error becomes one line on stderr and exit code 2."""
  try:
    init_distributed()
    run(config, workdir)
  except JaxlinError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("interrupted; results.json was not written", file=sys.stderr)
    sys.exit(130)
