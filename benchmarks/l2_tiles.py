r"""Which tiles an L2 search should take: brute-force L2 search by (queries, rows) per tile.

  python -m benchmarks.l2_tiles --dataset=folder:/data/cifar10-jpeg --out=runs/bench_l2_tiles

Exact L2 search of the first test images against every training image (k = 10,
``method="brute"``) with the tiles ``jaxlin.knn`` chooses on this machine
(``knn.product_tiles``, split evenly over the queries and rows: "default") and with
each ``--tiles`` pair QUERIESxROWS, for uint8 pixels
(``--queries``, default 10,000) and for the same pixels as float32
(``--float_queries``, default 2,048: float32 products are slower). The settings run
in turn within each repeat, so each repeat compares them under the same load; the
table gives each setting's median time and its median speed-up over the first pair
(the default on CPUs without AMX), and compares every setting's neighbours with the
first pair's: the same on uint8 (exact integer distances), and nearly the same on
float32, whose rounding depends on the product's blocks.
"""
from __future__ import annotations

import sys

from absl import flags
import jax
import numpy as np

from benchmarks import common
from jaxlin import distances, knn

_QUERIES = flags.DEFINE_integer("queries", 10000, "test images used as uint8 queries")
_FLOAT_QUERIES = flags.DEFINE_integer("float_queries", 2048, "test images used as float32 "
                                      "queries")
_TILES = flags.DEFINE_list("tiles", ["256x65536", "512x5120", "512x10240", "1024x10240"],
                           "QUERIESxROWS per tile")
_DTYPES = flags.DEFINE_list("dtypes", ["uint8", "float32"], "input dtypes to time")
_K = flags.DEFINE_integer("k", 10, "neighbours")
_REPEATS = flags.DEFINE_integer("repeats", 2, "timed repeats (each runs every pair)")


def _pairs(values) -> list[tuple[int, int]]:
  message = f"--tiles takes distinct QUERIESxROWS pairs of integers >= 1, got {','.join(values)}"
  try:
    pairs = [tuple(int(n) for n in v.lower().split("x")) for v in values]
  except ValueError:
    pairs = []
  common.usage(bool(pairs) and all(len(p) == 2 and min(p) >= 1 for p in pairs)
               and len(set(pairs)) == len(pairs), message)
  return pairs


def main(argv):
  del argv
  pairs = _pairs(_TILES.value)
  common.check_methods(_DTYPES.value, ("uint8", "float32"), "dtypes")
  common.check_repeats(_REPEATS.value)
  common.usage(min(_QUERIES.value, _FLOAT_QUERIES.value, _K.value) >= 1,
               "--queries, --float_queries and --k must be >= 1")
  out, arrays = common.prepare("bench_l2_tiles")
  db = arrays["train_x"]
  common.check_k(_K.value, len(db))
  print(f"AMX: {distances.cpu_has_amx()}", file=sys.stderr, flush=True)
  rows = []
  for dtype in _DTYPES.value:
    count = _QUERIES.value if dtype == "uint8" else _FLOAT_QUERIES.value
    q = arrays["test_x"][:count].astype(dtype)
    base = jax.device_put(db.astype(dtype))
    settings = [(None, None)] + pairs  # (None, None): the tiles jaxlin chooses

    def run(pair, q=q, base=base):
      return np.asarray(jax.block_until_ready(knn.search(
          q, base, _K.value, metric="l2", method="brute", query_tile=pair[0],
          database_tile=pair[1]))[1])
    times, answers = common.time_in_turn(run, settings, _REPEATS.value)
    ref = np.array(times[pairs[0]])
    used = knn._tile_sizes(  # pylint: disable=protected-access
        "l2", len(q), len(db), platform=jax.default_backend(), exact=dtype == "uint8")
    for p in settings:
      rows.append({"dtype": dtype, "queries": len(q),
                   "tile": f"default ({used[0]}x{used[1]})" if p[0] is None else
                           f"{p[0]}x{p[1]}",
                   "median (s)": float(np.median(times[p])), "best (s)": min(times[p]),
                   f"x faster than {pairs[0][0]}x{pairs[0][1]}":
                       float(np.median(ref / np.array(times[p]))),
                   "neighbours as the first pair": float(np.mean(answers[p] ==
                                                                 answers[pairs[0]]))})
      print(rows[-1], file=sys.stderr, flush=True)
  common.report(out, "l2_tiles", rows, list(rows[0]), database=len(db), k=_K.value,
                amx=distances.cpu_has_amx(), backend=jax.default_backend())
  common.fail_on([f"{r['dtype']} tile {r['tile']}: neighbours as the first pair's for "  # exact
                  f"{r['neighbours as the first pair']!r}" for r in rows  # (floats: nearly)
                  if r["dtype"] == "uint8" and r["neighbours as the first pair"] != 1.0])


if __name__ == "__main__":
  common.run(main)
