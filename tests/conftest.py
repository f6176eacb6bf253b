"""Shared fixtures: small generated data only (no network, no real dataset)."""
import os

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ.setdefault("JAXLIN_NO_PROGRESS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The experiments' default caches (decoded images, features) go to a folder of this session's,
# not the user's ~/.cache (subprocesses inherit it).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="jaxlin-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)
# One persistent XLA compilation cache for the session, every program in it: the test
# workers and the processes the tests start compile many of the same small programs (the
# suite spends about a fifth of its CPU time less). Set before jax is imported; made once,
# by the first process (pytest's controller), and inherited by the rest.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxlin-test-xla-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

# Figures: the tests check that they are written, not how they look. A matplotlibrc of the
# session's (inherited by the processes the tests start) saves them at 40 dpi, which
# plots.save takes from matplotlib's savefig.dpi (tests/test_study.py and
# tests/test_knn_experiment.py took 41-44 s of CPU against 45 s at the default 110 dpi).
if "MATPLOTLIBRC" not in os.environ:
  _rc_dir = tempfile.mkdtemp(prefix="jaxlin-test-mplrc-")
  atexit.register(shutil.rmtree, _rc_dir, True)
  with open(os.path.join(_rc_dir, "matplotlibrc"), "w") as _rc:
    _rc.write("savefig.dpi: 40\n")
  os.environ["MATPLOTLIBRC"] = _rc_dir

# The suite compiles hundreds of small programs and runs each on tiny data, so most of its
# time is XLA's compiler (about 85 % of a worker's CPU time: 2026-12-05). Its cheaper LLVM
# settings change how fast the generated code runs, not what it computes (XLA keeps
# floating-point order: no fast-math); they take about a fifth off the suite's CPU time.
# XLA's classic CPU emitters, instead of its newer MLIR fusion emitters, halve the rest of
# the compile time (the whole suite: 176 s against 240 s); they compute the same operations,
# but may sum floats in another order (a rounding apart), which the suite's float checks
# allow for (its exact checks are on integers). The flag is passed only where a probe
# process accepts it: XLA stops a process on an unknown flag. Benchmarks and experiments
# keep XLA's defaults (L1's kernels run 10x slower with the classic emitters). The
# processes the tests start inherit the settings. JAXLIN_TEST_XLA_DEFAULTS=1 runs the
# suite with XLA's defaults instead (303 s against 178 s, 2026-12-05).
def _xla_accepts(flag: str) -> bool:
  """Whether a process with ``flag`` in XLA_FLAGS starts JAX's CPU backend (XLA stops a
  process at an unknown flag, and keeps retired flags' names in its library): one probe,
  about a second, by the first process of the session only."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}",
             JAX_PLATFORMS="cpu")
  try:
    return subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                          capture_output=True, timeout=120, check=False).returncode == 0
  except (OSError, subprocess.TimeoutExpired):
    return False


if (os.environ.get("JAXLIN_TEST_XLA_DEFAULTS") != "1"
    and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")):
  _FAST_COMPILE = ["--xla_backend_optimization_level=0",
                   "--xla_llvm_disable_expensive_passes=true"]
  _EMITTERS = "--xla_cpu_use_fusion_emitters=false"
  if ("xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", "")
      and _xla_accepts(_EMITTERS)):
    _FAST_COMPILE.append(_EMITTERS)
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *_FAST_COMPILE]).strip()

# jaxlin's native int8 kernel (jaxlin/native) is built by the first process that needs it
# into $XDG_CACHE_HOME/jaxlin/native, and every process of the suite has a cache folder of
# its own. Built here once, by the first process, and that folder linked into every later
# process's cache: else each worker and each process the tests start would build it again
# (3 s of CPU each). Where it cannot be built, the processes say so themselves.
_NATIVE = os.path.join("jaxlin", "native")
_SHARED = os.environ.get("JAXLIN_TEST_NATIVE_DIR", "")
if _SHARED and os.path.isdir(_SHARED):
  os.makedirs(os.path.join(os.environ["XDG_CACHE_HOME"], "jaxlin"), exist_ok=True)
  os.symlink(_SHARED, os.path.join(os.environ["XDG_CACHE_HOME"], _NATIVE))
else:  # the first process (or one whose first process is gone): build here and share it
  import platform  # noqa: E402  pylint: disable=wrong-import-position
  from jaxlin import distances as _distances, native as _native  # noqa: E402
  if (_native.setting() != "xla" and _native.unsupported(
      platform.machine(), _distances._cpu_flags("/proc/cpuinfo")) is None):
    try:
      _native._build()
      os.environ["JAXLIN_TEST_NATIVE_DIR"] = os.path.join(os.environ["XDG_CACHE_HOME"], _NATIVE)
    except Exception:  # pylint: disable=broad-except  # the processes say why themselves
      pass

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

CLASSES = ("cat", "dog", "frog")


def pytest_collection_modifyitems(items):
  """Tests marked ``long`` (tens of seconds: processes started by the test) go first, in
  their order, so that the two workers share them instead of one running the last of them
  while the other waits."""
  items.sort(key=lambda item: item.get_closest_marker("long") is None)


def make_image_folder(root, *, per_class_train=20, per_class_test=6, size=8, seed=0,
                      classes=CLASSES, noise=40.0):
  """PNG image folder (lossless, so pixel values are known) whose classes differ in colour.

  noise: std of the Gaussian pixel noise around each class's colour (larger: harder).
  """
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in (("train", per_class_train), ("test", per_class_test)):
    for c, name in enumerate(classes):
      d = os.path.join(root, split, name)
      os.makedirs(d, exist_ok=True)
      base = np.zeros(3)
      base[c % 3] = 180
      for i in range(n):
        img = np.clip(base + rng.normal(0, noise, (size, size, 3)), 0, 255).astype(np.uint8)
        path = os.path.join(d, f"{i:04d}.png")
        Image.fromarray(img).save(path)
        arrays[path] = img
  return arrays


@pytest.fixture
def image_folder(tmp_path):
  root = tmp_path / "images"
  arrays = make_image_folder(str(root))
  return str(root), arrays


@pytest.fixture(scope="session")
def cli():
  """Runs `python -m MODULE ARGS...` in forks of one prepared process (tests/cli.py):
  cli.run("experiments.knn", "--k=0") -> returncode, stdout, stderr."""
  from tests import cli as cli_module  # pylint: disable=import-outside-toplevel
  runner = cli_module.Runner()
  yield runner
  runner.close()
