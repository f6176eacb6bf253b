r"""How many queries an L1 tile should hold: brute-force L1 search by query tile.

  python -m benchmarks.l1_tiles --dataset=folder:/data/cifar10-jpeg --out=runs/bench_l1_tiles

Exact L1 search of random test images against every training image (k = 10,
``method="brute"``), with tiles of 64, 128, 256 and 512 queries against 1,024
database rows, for uint8 pixels and for the same pixels as float32. The
settings run in turn within each repeat, so each repeat compares them under the
same load; the table gives each tile's median time and its median speed-up over
64 queries per tile (the default before this benchmark). It also prints the
tile ``jaxlin.knn`` chooses on this machine for each dtype
(``knn.l1_query_tile``, from the level-2 cache size: 1,024 queries for integer
pixels where it holds at least 2 MiB) and checks that every tile gives the same
neighbours.
``--unroll`` sets the features per fused step of the kernel (``--unroll=16``: the
setting before this benchmark).
"""
from __future__ import annotations

import sys

from absl import flags
import jax
import numpy as np

from benchmarks import common
from jaxlin import distances, knn

_QUERIES = flags.DEFINE_integer("queries", 1000, "random test images used as queries")
_TILES = flags.DEFINE_list("tiles", ["64", "128", "256", "512"], "queries per tile")
_DTYPES = flags.DEFINE_list("dtypes", ["uint8", "float32"], "input dtypes to time")
_K = flags.DEFINE_integer("k", 10, "neighbours")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repeats (each runs every tile)")
_UNROLL = flags.DEFINE_integer("unroll", None, "features per fused step of the L1 kernel "
                               "(default: jaxlin.distances.L1_UNROLL)")


def main(argv):
  del argv
  tiles = common.positive_ints(_TILES.value, "--tiles must be distinct integers >= 1, got "
                               f"{','.join(_TILES.value)}", distinct=True)
  common.check_methods(_DTYPES.value, ("uint8", "float32"), "dtypes")  # int8 would wrap pixels
  common.check_repeats(_REPEATS.value)
  common.usage(_UNROLL.value is None or _UNROLL.value >= 1,
               f"--unroll must be >= 1, got {_UNROLL.value}")
  common.usage(_QUERIES.value >= 1 and _K.value >= 1, "--queries and --k must be >= 1")
  if _UNROLL.value is not None:  # before any search program is compiled
    distances.L1_UNROLL = _UNROLL.value
  out, arrays = common.prepare("bench_l1_tiles")
  db = arrays["train_x"]
  common.check_k(_K.value, len(db))
  pick = common.query_rows(_QUERIES.value, len(arrays["test_x"]))
  chosen = {dtype: knn.l1_query_tile(knn.l2_cache_bytes(), jax.default_backend(),
                                     exact=np.issubdtype(dtype, np.integer))
            for dtype in _DTYPES.value}
  print(f"level-2 cache {knn.l2_cache_bytes() >> 10} KiB: jaxlin chooses {chosen} queries "
        "per L1 tile", file=sys.stderr, flush=True)
  rows = []
  for dtype in _DTYPES.value:
    # On the device once, as l2_tiles does: a copy in every timed call pulled the ratios to 1.
    q, base = arrays["test_x"][pick].astype(dtype), jax.device_put(db.astype(dtype))

    def run(tile, q=q, base=base):
      return np.asarray(jax.block_until_ready(knn.search(
          q, base, _K.value, metric="l1", method="brute", query_tile=tile,
          database_tile=1024))[1])
    times, answers = common.time_in_turn(run, tiles, _REPEATS.value)
    ref = np.array(times[tiles[0]])
    for t in tiles:
      rows.append({"dtype": dtype, "query tile": t, "median (s)": float(np.median(times[t])),
                   "best (s)": min(times[t]),
                   f"x faster than {tiles[0]} (median of repeats)":
                       float(np.median(ref / np.array(times[t]))),
                   "chosen here": t == chosen[dtype],
                   f"same neighbours as {tiles[0]}": "(reference)" if t == tiles[0] else
                   bool(np.array_equal(answers[t], answers[tiles[0]]))})
      print(rows[-1], file=sys.stderr, flush=True)
  common.report(out, "l1_tiles", rows, list(rows[0]), queries=len(pick),
                database=len(db), k=_K.value, l2_cache_kib=knn.l2_cache_bytes() >> 10,
                chosen_tile=chosen, unroll=distances.L1_UNROLL, backend=jax.default_backend())


if __name__ == "__main__":
  common.run(main)
