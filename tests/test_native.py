"""The native int8 product (jaxlin/native): exact against numpy's int64 product, used by
distances.int8_products where the CPU takes it, and a clear fallback where it does not."""
import os
import platform
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlin import distances, native
from jaxlin.errors import InputError


def _runs_here() -> bool:
  """Whether this machine should run the kernel; a CPU that takes it with a compiler at
  hand must have it built (a broken build fails here instead of skipping)."""
  cpu_takes_it = native.unsupported(platform.machine(), distances._cpu_flags("/proc/cpuinfo"))
  if cpu_takes_it is None and native._compiler() is not None and native.setting() == "auto":
    assert native.available(), native.reason_unavailable()
  return native.available()


needs_kernel = pytest.mark.skipif(not _runs_here(), reason="the native int8 kernel does not "
                                  "run on this machine (an x86-64 CPU with AVX-512 VNNI)")


def _rows(rng, shape, low=-128, high=128):
  return rng.integers(low, high, shape).astype(np.int8)


@needs_kernel
@pytest.mark.parametrize("m,n,d", [
    (1, 1, 1),        # one feature: padded to 4
    (8, 48, 4),       # one whole tile
    (9, 49, 7),       # one past a tile each way; features padded
    (37, 101, 300),   # several panels, a short last one
    (300, 17, 64),    # fewer rows of y than a panel: the transposed form
    (5, 3, 130),      # both sides tiny: the transposed form on rows past a tile
    (130, 200, 3072), # several blocks of rows and threads
])
def test_products_exact(m, n, d):
  rng = np.random.default_rng(m * 1000 + n)
  x, y = _rows(rng, (m, d)), _rows(rng, (n, d))
  got = np.asarray(jax.jit(native.int8_products)(x, y))
  assert got.dtype == np.int32 and got.shape == (m, n)
  np.testing.assert_array_equal(got, x.astype(np.int64) @ y.astype(np.int64).T)


@needs_kernel
def test_products_exact_where_partial_sums_wrap():
  """At the most features int32 holds (131,071 of -128 x 127), the kernel's unsigned sums
  x . (y + 128) pass 2**31 and wrap; the true products still come out exact."""
  d = native.MAX_FEATURES
  x = np.full((9, d), -128, np.int8)
  y = np.stack([np.full(d, 127, np.int8), np.full(d, -128, np.int8), np.zeros(d, np.int8)])
  got = np.asarray(jax.jit(native.int8_products)(x, y))
  np.testing.assert_array_equal(got[0], [-128 * 127 * d, 128 * 128 * d, 0])
  np.testing.assert_array_equal(got, x.astype(np.int64) @ y.astype(np.int64).T)


@needs_kernel
def test_distances_use_it_on_large_products_only():
  x = jnp.zeros((16, 12), jnp.int8)
  big = jax.jit(distances.int8_products).lower(x, x).as_text()
  small = jax.jit(distances.int8_products).lower(x[:native.MIN_ROWS - 1], x).as_text()
  assert "jaxlin_int8_products" in big and "jaxlin_int8_products" not in small


@needs_kernel
def test_vmap_and_empty():
  rng = np.random.default_rng(3)
  x, y = _rows(rng, (3, 10, 20)), _rows(rng, (3, 12, 20))
  got = jax.jit(jax.vmap(native.int8_products))(x, y)
  np.testing.assert_array_equal(got, np.einsum("bmd,bnd->bmn", x.astype(np.int64), y))
  assert jax.jit(native.int8_products)(x[0, :0], y[0]).shape == (0, 12)


@pytest.mark.parametrize("machine,flags,expected", [
    ("x86_64", {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}, None),  # AMD Zen 4
    ("x86_64", {"avx512f", "avx512bw", "avx512_vnni", "amx_int8"}, "AMX"),    # Intel, AMX
    ("x86_64", {"avx2", "fma"}, "no AVX-512 VNNI"),                          # AVX2 only
    ("aarch64", {"asimd"}, "aarch64, not x86-64"),
])
def test_which_cpus_take_it(machine, flags, expected):
  reason = native.unsupported(machine, flags)
  assert reason is None if expected is None else expected in reason


def test_setting_from_the_environment(monkeypatch):
  monkeypatch.setenv("JAXLIN_INT8_PRODUCT", " XLA ")
  assert native.setting() == "xla" and native.reason_unavailable() == "JAXLIN_INT8_PRODUCT=xla"
  monkeypatch.setenv("JAXLIN_INT8_PRODUCT", "fast")
  with pytest.raises(InputError, match="JAXLIN_INT8_PRODUCT must be one of auto, xla, "
                     "native, got 'fast'"):
    native.available()
  for rows in (0, 3, 9):  # whatever the shapes (small ones never reach the kernel)
    with pytest.raises(InputError, match="JAXLIN_INT8_PRODUCT must be one of"):
      distances.int8_products(jnp.zeros((rows, 5), jnp.int8), jnp.zeros((10, 5), jnp.int8))


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
  monkeypatch.setattr(native, "unsupported", lambda machine, flags: None)
  monkeypatch.setattr(native, "_registered", lambda: "it was not built (no C++ compiler)")
  monkeypatch.setattr(native, "_warned", [])
  monkeypatch.setenv("JAXLIN_INT8_PRODUCT", "auto")
  with pytest.warns(RuntimeWarning, match=r"not built \(no C\+\+ compiler\); XLA's int8 "
                    "product is used instead"):
    assert not native.available()
  assert not native.available()  # no second warning (pytest's error filter would raise)
  x = jnp.ones((9, 5), jnp.int8)
  assert "jaxlin_int8_products" not in jax.jit(distances._int8_products_int8).lower(
      x, x).as_text()
  monkeypatch.setenv("JAXLIN_INT8_PRODUCT", "native")
  # "native" raises wherever the kernel cannot run, whatever the shapes; the reason is
  # still returned by the functions that ask for it.
  assert native.reason_unavailable() == "it was not built (no C++ compiler)"
  for rows in (9, native.MIN_ROWS - 1, 0):
    with pytest.raises(RuntimeError, match="JAXLIN_INT8_PRODUCT=native, but jaxlin's int8 "
                       r"kernel cannot run here: it was not built \(no C\+\+ compiler\)\. "
                       "Unset JAXLIN_INT8_PRODUCT"):
      distances.int8_products(x[:rows], x)
  with pytest.raises(RuntimeError, match="JAXLIN_INT8_PRODUCT=native, but"):
    native.int8_products(x, x)


def _script(folder, body: str) -> str:
  path = os.path.join(folder, "fake-cxx")
  with open(path, "w", encoding="utf-8") as f:
    f.write("#!/bin/sh\n" + body + "\n")
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
  return path


def test_build_errors_name_the_cause(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.setenv("CXX", _script(tmp_path, "printf 'In file included from a.h\\nint8_"
                                               "products.cc:1: error: boom\\nnote: see a.h\\n"
                                               "compilation terminated.\\n' >&2; exit 3"))
  with pytest.raises(RuntimeError, match=r"fake-cxx failed \(exit 3\): "
                     "int8_products.cc:1: error: boom; the command was: .*fake-cxx -O3"):
    native._build()
  assert os.listdir(tmp_path / "cache" / "jaxlin" / "native") == []  # no half-built file
  blocked = tmp_path / "a-file"
  blocked.write_text("")
  monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
  with pytest.raises(RuntimeError, match="cannot be written .*set XDG_CACHE_HOME"):
    native._build()
  monkeypatch.setenv("CXX", "no-such-compiler -O2")
  with pytest.raises(RuntimeError, match="CXX='no-such-compiler -O2' names no program on the "
                     "PATH; set CXX to a C\\+\\+ compiler, or unset it"):
    native._build()
  monkeypatch.delenv("CXX")
  monkeypatch.setenv("PATH", str(tmp_path / "empty"))
  with pytest.raises(RuntimeError, match="no C\\+\\+ compiler found"):
    native._build()


@pytest.mark.parametrize("x,y,message", [
    (np.zeros((8, 4), np.int32), np.zeros((8, 4), np.int8), "x_AxD must be a 2-D int8 array, "
     "got int32 of shape \\(8, 4\\)"),
    (np.zeros((8, 4), np.int8), np.zeros(4, np.int8), "y_BxD must be a 2-D int8 array"),
    (np.zeros((8, 4), np.int8), np.zeros((8, 5), np.int8), "the same number of features, "
     "got 4 and 5"),
    (np.zeros((1, 131072), np.int8), np.zeros((1, 131072), np.int8), "at most 131071 "
     "features"),
])
def test_bad_inputs_are_refused_before_the_kernel(x, y, message):
  with pytest.raises(InputError, match=message):
    native.int8_products(x, y)
