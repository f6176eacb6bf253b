r"""The matrix product under exact L2 search, by dtype, on this machine.

  python -m benchmarks.matmul_speed --out=runs/bench_matmul

Exact L2 on uint8 pixels is an int8 x int8 product accumulated in int32
(jaxlin.distances.l2_squared_pixels). Whether that beats float32 depends on
the chip (int8 matrix instructions) and on XLA's backend: this prints the
rate of one (4096 x 3072) . (3072 x 2048) product in float32, bfloat16 -> float32
and int8 -> int32 (XLA's, and jaxlin's native kernel where this CPU takes it:
jaxlin.native), the shapes of one search tile, and checks that each gives
the exact integer answer on pixel-range values. No dataset needed. Its "kernel"
column names the library that XLA's compiled program hands the product to
(on CPUs YNNPACK, whose int8 products run on AVX-512 VNNI, not on Intel's AMX
units: WORKSPACE.md, 2026-12-05, evening), or "XLA" for XLA's own code.
"""
from __future__ import annotations

import sys

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common

_SHAPE = flags.DEFINE_list("shape", ["4096", "3072", "2048"], "M, K, N of (M x K) . (K x N)")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed repeats (best)")


def _product(dtype, out_dtype):
  contract = (((1,), (1,)), ((), ()))  # (M, K) . (N, K)^T, as the search computes it
  return jax.jit(lambda a, b: jax.lax.dot_general(a.astype(dtype), b.astype(dtype), contract,
                                                  preferred_element_type=out_dtype))


_KERNELS = (("__ynn_fusion", "YNNPACK"), ("__xnn_fusion", "XNNPACK"), ("onednn", "oneDNN"),
            ("cublas", "cuBLAS"), ("triton", "Triton"), ("jaxlin_int8_products", "jaxlin native"))


def kernel_name(compiled_text: str) -> str:
  """The library a compiled program's text hands its product to, or "XLA"."""
  text = compiled_text.lower()
  return next((name for key, name in _KERNELS if key.lower() in text), "XLA")


def main(argv):
  del argv
  m, k, n = common.positive_ints(_SHAPE.value, "--shape must be three integers >= 1 (M,K,N), "
                                 f"got {','.join(_SHAPE.value)}", count=3)
  common.check_repeats(_REPEATS.value)
  out = common.out_dir("bench_matmul")
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.integers(-128, 128, (m, k), dtype=np.int8))
  b = jnp.asarray(rng.integers(-128, 128, (n, k), dtype=np.int8))
  exact = np.asarray(a, np.float64) @ np.asarray(b, np.float64).T  # integers below 2**53
  from jaxlin import native  # pylint: disable=import-outside-toplevel
  products = [(name, _product(dtype, out_dtype)) for name, dtype, out_dtype in (
      ("float32", jnp.float32, jnp.float32), ("bfloat16 -> float32", jnp.bfloat16, jnp.float32),
      ("int8 -> int32", jnp.int8, jnp.int32))]
  if jax.default_backend() == "cpu" and native.available():
    products.append(("int8 -> int32, jaxlin's kernel", jax.jit(native.int8_products)))
  rows = []
  for name, f in products:
    result = np.asarray(f(a, b), np.float64)
    times = []
    for _ in range(_REPEATS.value):
      with common.Stopwatch() as sw:
        jax.block_until_ready(f(a, b))
      times.append(sw.seconds)
    best = min(times)
    rows.append({"product": name, "ms": best * 1e3, "GOP/s": 2 * m * k * n / best / 1e9,
                 "exact": bool(np.array_equal(result, exact)),
                 "kernel": kernel_name(f.lower(a, b).compile().as_text())})
    print(rows[-1], file=sys.stderr, flush=True)
  base = rows[0]["ms"]
  for r in rows:
    r["x faster than float32"] = base / r["ms"]
  common.report(out, "matmul_speed", rows, list(rows[0]), uses_dataset=False,
                shape=f"{m}x{k} . {k}x{n}", backend=jax.default_backend(),
                times="best of the repeats")


if __name__ == "__main__":
  common.run(main)
