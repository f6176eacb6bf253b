import contextlib
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlin import distances, knn, metrics, selection, topk
from jaxlin.errors import InputError

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
  """A list that gets one entry per XLA compilation inside the block (jax.monitoring)."""
  events = []

  def listener(name, secs, **kwargs):
    del secs, kwargs
    if name == _COMPILE_EVENT:
      events.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def brute_force(q, db, k, metric):
  """float64 reference with ties broken by lower index (stable sort): a loop over queries
  (no (Q, N, D) array)."""
  dbf = np.asarray(db, np.float64)
  diffs = (dbf - np.asarray(row, np.float64) for row in q)
  d = np.array([np.abs(x).sum(-1) if metric == "l1" else (x ** 2).sum(-1) for x in diffs])
  d = d.reshape(len(q), len(db))
  idx = np.argsort(d, axis=1, kind="stable")[:, :k]
  dist = np.take_along_axis(d, idx, 1)
  return (dist if metric != "l2" else np.sqrt(dist)), idx


def test_literal_search_with_ties():
  db = np.array([[0.], [10.], [2.], [2.], [5.]], np.float32)
  d, i = knn.search(np.array([[2.]], np.float32), db, 3, metric="l1")
  np.testing.assert_array_equal(i, [[2, 3, 0]])  # distances 2, 8, 0, 0, 3
  np.testing.assert_allclose(d, [[0, 0, 2]])


@pytest.mark.parametrize("db_tile", [1, 2, 3, 5])
def test_ties_across_tile_boundaries_go_to_lower_index(db_tile):
  db = np.array([[5.], [1.], [9.], [1.], [1.], [1.]], np.float32)
  d, i = knn.search(np.array([[0.]], np.float32), db, 3, metric="l2", database_tile=db_tile)
  np.testing.assert_array_equal(i, [[1, 3, 4]])
  np.testing.assert_allclose(d, [[1, 1, 1]])


@pytest.mark.parametrize("metric", ["l1", "l2", "l2_squared"])
def test_sizes_not_multiples_of_tiles(metric):
  rng = np.random.default_rng(0)
  q = rng.normal(size=(37, 20)).astype(np.float32)
  db = rng.normal(size=(101, 20)).astype(np.float32)
  d, i = knn.search(q, db, 7, metric=metric, query_tile=8, database_tile=16)
  ref_d, ref_i = brute_force(q, db, 7, "l2" if metric == "l2" else metric)
  assert d.shape == i.shape == (37, 7)
  np.testing.assert_array_equal(i, ref_i)
  np.testing.assert_allclose(d, ref_d, rtol=1e-4, atol=1e-4)


def test_cosine_matches_reference_order():
  rng = np.random.default_rng(4)
  q, db = rng.normal(size=(10, 16)), rng.normal(size=(50, 16))
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  dbn = db / np.linalg.norm(db, axis=1, keepdims=True)
  ref = 1 - qn @ dbn.T
  _, i = knn.search(q.astype(np.float32), db.astype(np.float32), 5, metric="cosine",
                    database_tile=7)
  np.testing.assert_array_equal(i, np.argsort(ref, 1, kind="stable")[:, :5])


def test_l1_uint8_exact_neighbour_for_neighbour():
  rng = np.random.default_rng(5)
  # Few grey levels make many exact ties: the tie rule is checked too.
  q = rng.integers(0, 4, (45, 48), dtype=np.uint8)
  db = rng.integers(0, 4, (300, 48), dtype=np.uint8)
  d, i = knn.search(q, db, 20, metric="l1", query_tile=16, database_tile=64)
  ref_d, ref_i = brute_force(q, db, 20, "l1")
  np.testing.assert_array_equal(i, ref_i)
  np.testing.assert_array_equal(d, ref_d)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_l1_tiles_of_256_queries_give_the_reference_answer(dtype):
  # The tile size jaxlin picks on a CPU with 1 MiB of L2 (and the default, whatever it is
  # here), with a database that ends inside a tile: the unrolled feature loop and padding.
  rng = np.random.default_rng(15)
  q = rng.integers(0, 4, (300, 40), dtype=np.uint8).astype(dtype)
  db = rng.integers(0, 4, (1100, 40), dtype=np.uint8).astype(dtype)
  ref_d, ref_i = brute_force(q, db, 5, "l1")
  for tile in (256, None):
    d, i = knn.search(q, db, 5, metric="l1", method="brute", query_tile=tile)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_array_equal(d, ref_d)


def test_product_tiles_follow_intels_amx(monkeypatch):
  """L2 and cosine tiles: (512, 5120) on CPUs with AMX for more than 256 queries (measured
  faster there), else (256, 65536); off the CPU and across processes (platform "") the
  latter."""
  assert knn.product_tiles(True, "cpu", 257) == (512, 5120)
  assert knn.product_tiles(True, "cpu", 256) == (256, 65536)  # few queries: long rows
  # Float products round by the database tile: the same tiles for any number of queries.
  assert knn.product_tiles(True, "cpu", 1, exact=False) == (512, 5120)
  assert knn.product_tiles(False, "cpu", 10000) == (256, 65536)
  assert (knn.product_tiles(True, "gpu", 10000) == knn.product_tiles(True, "", 10000)
          == (256, 65536))
  monkeypatch.setattr(distances, "cpu_has_amx", lambda: True)
  assert knn._tile_sizes("l2", 10000, 50000, platform="cpu") == (504, 5008)  # even splits
  assert knn._tile_sizes("cosine", 1000, 700, platform="cpu") == (504, 700)
  assert knn._tile_sizes("l2", 100, 50000, platform="cpu") == (100, 50000)
  assert knn._tile_sizes("l2", 100, 50000, platform="cpu", exact=False) == (100, 5008)
  # Searches on such a CPU: on uint8 the AMX tiles and norms by products give the answer of
  # any other tiles, ties included; float rows round alike whatever the number of queries.
  rng = np.random.default_rng(5)
  db = rng.integers(0, 4, (6000, 12)).astype(np.uint8)
  q = rng.integers(0, 4, (300, 12)).astype(np.uint8)
  d, i = knn.search(q, db, 7, query_tile=8, database_tile=480)
  np.testing.assert_array_equal(knn.search(q, db, 7)[1], i)
  np.testing.assert_array_equal(knn.search(q, db, 7)[0], d)
  qf, dbf = q / np.float32(3), db / np.float32(3)
  d, i = knn.search(qf, dbf, 7)
  np.testing.assert_array_equal(knn.search(qf[:100], dbf, 7)[0], d[:100])
  np.testing.assert_array_equal(knn.search(qf[:100], dbf, 7)[1], i[:100])
  assert knn._tile_sizes("l1", 1000, 50000, platform="cpu")[1] == 1024  # L1: its own rule


def test_l1_query_tile_follows_the_level_2_cache(tmp_path, monkeypatch):
  assert knn.l1_query_tile(1 << 20, "cpu") == 256  # 512 KiB of int16 partial sums
  assert knn.l1_query_tile(2 << 20, "cpu") == 256
  assert knn.l1_query_tile(512 << 10, "cpu") == 128
  assert knn.l1_query_tile((512 << 10) - 1, "cpu") == 64
  assert knn.l1_query_tile(256 << 10, "cpu") == 64
  assert knn.l1_query_tile(0, "cpu") == 64  # unknown
  assert knn.l1_query_tile(2 << 20, "gpu") == 64
  assert knn.l1_query_tile(2 << 20, "cpu", exact=True) == 1024  # integer pixels, 2 MiB
  assert knn.l1_query_tile((2 << 20) - 1, "cpu", exact=True) == 256
  assert knn.l1_query_tile(2 << 20, "gpu", exact=True) == 64
  # The search's tiles follow it on a CPU; other platforms, and processes that must agree
  # on their tiles (platform ""), keep 64.
  monkeypatch.setattr(knn, "l2_cache_bytes", lambda: 1 << 20)
  assert knn._tile_sizes("l1", 1000, 50000, platform="cpu") == (256, 1024)
  assert knn._tile_sizes("l1", 1000, 50000, platform="gpu")[0] == 64
  assert knn._tile_sizes("l1", 1000, 50000, platform="")[0] == 64
  monkeypatch.setattr(distances, "cpu_has_amx", lambda: False)
  assert knn._tile_sizes("l2", 1000, 50000, platform="cpu") == (256, 50000)  # not the cache
  assert knn._platform(None, np.zeros(3)) == jax.default_backend()
  assert knn._platform(None, jnp.zeros(3)) == jax.devices()[0].platform
  monkeypatch.undo()

  def describe(name, level, kind, size):
    (tmp_path / name).mkdir()
    for field, value in (("level", level), ("type", kind), ("size", size)):
      if value is not None:
        (tmp_path / name / field).write_text(f"{value}\n")
  describe("index0", 1, "Data", "48K")
  describe("index1", 1, "Instruction", "32K")
  describe("index2", 2, None, None)  # unreadable: skipped, not the end of the search
  describe("index3", 2, "Instruction", "64K")
  describe("index4", 2, "Data", "1024K")
  describe("index5", 3, "Unified", "32768K")
  (tmp_path / "uevent").write_text("")
  assert knn.l2_cache_bytes(str(tmp_path)) == 1 << 20
  (tmp_path / "index4" / "type").write_text("Unified\n")
  (tmp_path / "index4" / "size").write_text("2M\n")
  knn.l2_cache_bytes.cache_clear()
  assert knn.l2_cache_bytes(str(tmp_path)) == 2 << 20
  (tmp_path / "index4" / "size").write_text("big\n")
  knn.l2_cache_bytes.cache_clear()
  assert knn.l2_cache_bytes(str(tmp_path)) == 0
  assert knn.l2_cache_bytes(str(tmp_path / "missing")) == 0
  knn.l2_cache_bytes.cache_clear()


def test_l1_search_of_a_traced_database_inside_a_callers_jit():
  rng = np.random.default_rng(16)
  q = rng.integers(0, 4, (20, 12), dtype=np.uint8)
  db = rng.integers(0, 4, (50, 12), dtype=np.uint8)
  d, i = jax.jit(lambda a, b: knn.search(a, b, 3, metric="l1"))(q, db)
  ref_d, ref_i = brute_force(q, db, 3, "l1")
  np.testing.assert_array_equal(i, ref_i)
  np.testing.assert_array_equal(d, ref_d)


@pytest.mark.parametrize("metric", ["l2", "l2_squared"])
def test_l2_uint8_exact_neighbour_for_neighbour(metric):
  rng = np.random.default_rng(6)
  q = rng.integers(0, 3, (45, 3072), dtype=np.uint8) * 120  # few levels: many exact ties
  db = rng.integers(0, 3, (300, 3072), dtype=np.uint8) * 120
  db[7] = db[200] = q[0]  # duplicates: distance 0 twice
  d, i = knn.search(q, db, 15, metric=metric, query_tile=16, database_tile=64)
  ref_d, ref_i = brute_force(q, db, 15, metric)
  np.testing.assert_array_equal(i, ref_i)
  np.testing.assert_allclose(d, ref_d, rtol=1e-6)
  assert list(np.asarray(i[0, :2])) == [7, 200]


@pytest.mark.parametrize("dtype", [np.int32, np.float32])
@pytest.mark.parametrize("n,k", [(64, 1), (333, 5), (1000, 3), (2000, 31)])
def test_smallest_k_is_the_stable_top_k(dtype, n, k):
  """Chunked selection (long rows) and plain top_k (short rows) give the same
  positions as a stable sort, ties by position, with padding and worst keys."""
  rng = np.random.default_rng(n + k)
  v = rng.integers(0, 6, (23, n)).astype(dtype)  # six levels: ties everywhere
  v[3] = topk.worst(dtype)  # a row of worst keys only
  v[4, ::7] = 0
  pos = np.asarray(topk.smallest_k(jnp.asarray(v), k))
  np.testing.assert_array_equal(pos, np.argsort(v, axis=1, kind="stable")[:, :k])


def test_smallest_k_orders_tied_candidates_by_position_across_chunks():
  # The chunk holding 1 is picked first, the one holding the first 2 (position 5) second:
  # its 2 must still come before the later chunk's 2 at 101.
  v = np.full((1, 128), 10, np.int32)
  v[0, 100], v[0, 5], v[0, 101] = 1, 2, 2
  assert np.asarray(topk.smallest_k(jnp.asarray(v), 2)).tolist() == [[100, 5]]


def test_smallest_k_orders_float64_host_values_as_float64():
  """Without jax_enable_x64 JAX rounds float64 to float32, where these five are two values:
  the order was [3 4 0 1 2]."""
  v = np.array([[1.0 + 1e-9, 1.0, 1.0 + 2e-9, 0.5 + 1e-12, 0.5]])
  assert np.asarray(topk.smallest_k(v, 5)).tolist() == [[4, 3, 1, 0, 2]]
  assert np.asarray(topk.smallest_k(v.tolist(), 1)).tolist() == [[4]]
  with pytest.raises(InputError, match="holds NaN"):
    topk.smallest_k(np.array([[np.nan, 1.0]]), 1)


def test_smallest_k_under_jit_ranks_every_nan_last():
  """NaN cannot be refused under jit: it ranks after +inf, in position order. A NaN with its
  sign bit set (x86's default NaN: inf - inf) ranked before every number."""
  inf = np.inf
  neg_nan = np.asarray(jax.jit(lambda a: a - a)(jnp.array([inf])))[0]
  assert np.signbit(neg_nan) and np.isnan(neg_nan)
  v = np.array([[3.0, np.nan, neg_nan, 1.0, inf, 2.0]], np.float32)
  smallest = jax.jit(topk.smallest_k, static_argnums=1)
  assert np.asarray(smallest(v, 6)).tolist() == [[3, 5, 0, 4, 1, 2]]
  long = np.concatenate([np.full((1, 3000), neg_nan, np.float32),
                         np.arange(3000, dtype=np.float32)[None]], axis=1)  # in chunks
  assert np.asarray(smallest(long, 3)).tolist() == [[3000, 3001, 3002]]
  # A NaN does not hide the numbers of its chunk (chunks ranked by their least number).
  for n in (256, 70000):
    row = np.full((1, n), 5.0, np.float32)
    row[0, :3] = np.nan, 0.0, 0.5
    row[0, 40] = 1.0
    assert np.asarray(smallest(row, 2)).tolist() == [[1, 2]]  # was [[40, 16]] for 256
  # Rows padded to whole chunks: the padding never comes before a real NaN.
  assert np.asarray(smallest(np.full((1, 65), np.nan, np.float32), 1)).tolist() == [[0]]
  row = np.full((1, 129), np.nan, np.float32)
  row[0, 0] = 0.0
  assert np.asarray(smallest(row, 2)).tolist() == [[0, 1]]  # was [[0, 129]]
  rng = np.random.default_rng(0)
  for n in range(60, 200, 7):  # around the chunked path's threshold, NaN and +inf mixed
    for dtype in (np.float32, np.float16):
      row = rng.choice(np.array([np.nan, np.inf, 0.0, 1.0, -1.0], dtype), size=(3, n))
      want = np.argsort(row, axis=1, kind="stable")[:, :4]  # numpy sorts NaN last, stably
      np.testing.assert_array_equal(smallest(row, 4), want)


def test_smallest_k_host_keeps_the_first_tied_positions():
  v = np.array([[5, 3, 3, 9, 3], [7, 7, 7, 7, 7], [-4, 2**31 - 1, -2**31, 0, -4]], np.int64)
  assert topk.smallest_k_host(v, 1).tolist() == [[1], [0], [2]]
  assert topk.smallest_k_host(v, 2).tolist() == [[1, 2], [0, 1], [2, 0]]
  assert topk.smallest_k_host(v, 4).tolist() == [[1, 2, 4, 0], [0, 1, 2, 3], [2, 0, 4, 3]]
  assert topk.smallest_k_host(v, 5).dtype == np.int32


@pytest.mark.parametrize("levels", [2, 6, 2**31])
@pytest.mark.parametrize("min_groups", [256, 1])
def test_smallest_k_host_gives_the_positions_of_smallest_k(levels, min_groups, monkeypatch):
  """Many rows, ties everywhere (or hardly any), rows all tied, any k: the positions of a
  stable sort (those of smallest_k where it can order the values), from numpy or jax
  int32 and from int64 values. With fewer groups, rows of 300 take the bound of group
  minima for k <= 37 (with ties at it, or too many values under it)."""
  monkeypatch.setattr(topk, "_MIN_GROUPS", min_groups)
  rng = np.random.default_rng(levels % 97)
  v = rng.integers(0, levels, (40, 300), dtype=np.int64).astype(np.int32)
  v[3] = 5  # one value only
  v[4, ::7] = 0
  for k in (1, 2, 31, 100, 299, 300):
    want = np.argsort(v, axis=1, kind="stable")[:, :k]
    if levels < 2**30:
      np.testing.assert_array_equal(np.asarray(topk.smallest_k(jnp.asarray(v), k)), want)
    np.testing.assert_array_equal(topk.smallest_k_host(v, k), want)
    np.testing.assert_array_equal(topk.smallest_k_host(jnp.asarray(v), k), want)
    np.testing.assert_array_equal(topk.smallest_k_host(v.astype(np.int64) - 2**30, k), want)
  assert topk.smallest_k_host(np.zeros((0, 3), np.int32), 2).shape == (0, 2)


def test_smallest_k_host_splits_many_rows_over_the_cores(monkeypatch):
  """Blocks of rows on several threads: the positions of one block."""
  rng = np.random.default_rng(5)
  v = rng.integers(0, 4, (37, 50)).astype(np.int32)
  want = topk.smallest_k_host(v, 9)
  monkeypatch.setattr(topk, "_HOST_PART_VALUES", 1)
  monkeypatch.setattr(topk, "_host_cores", lambda: 3)
  np.testing.assert_array_equal(topk.smallest_k_host(v, 9), want)
  np.testing.assert_array_equal(want, np.argsort(v, axis=1, kind="stable")[:, :9])
  assert topk.smallest_k_host(v[:2], 9).shape == (2, 9)  # fewer rows than cores


_FORKED_CHILD = """
import os, signal
import numpy as np
from jaxlin import topk
topk._HOST_PART_VALUES = 1
topk._host_cores = lambda: 3
v = np.random.default_rng(0).integers(0, 4, (8, 10)).astype(np.int32)
want = topk.smallest_k_host(v, 3)  # the parent's pool is started
pid = os.fork()
if pid == 0:  # the child: exit 0 if right, 1 if wrong; the alarm kills it if it hangs
    signal.alarm(20)
    os._exit(0 if np.array_equal(topk.smallest_k_host(v, 3), want) else 1)
print(os.waitpid(pid, 0)[1])
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_smallest_k_host_runs_in_a_forked_child_of_a_process_that_used_its_threads():
  """A forked child inherits the thread pool but not its threads: it must make its own
  (without, the child hung)."""
  out = subprocess.run([sys.executable, "-c", _FORKED_CHILD], capture_output=True, text=True,
                       timeout=120, check=True)
  assert out.stdout.split() == ["0"], (out.stdout, out.stderr)


def test_smallest_k_host_refuses_what_it_cannot_order():
  for values, k, argument, message in [
      (np.zeros((2, 3), np.float32), 1, "values_TxN", "2-D integer array"),
      (np.zeros(3, np.int32), 1, "values_TxN", "2-D integer array"),
      (np.zeros((2, 3), np.int32), 4, "k", r"in \[1, 3\]"),
      (np.zeros((2, 3), np.int32), 0, "k", r"in \[1, 3\]"),
      (np.full((2, 3), 2**31, np.int64), 1, "values_TxN", r"\[-2\*\*31, 2\*\*31\)"),
  ]:
    with pytest.raises(InputError, match=message) as e:
      topk.smallest_k_host(values, k)
    assert e.value.argument == argument


@pytest.mark.parametrize("metric", ["l1", "l2"])
def test_long_database_tiles_take_the_chunked_selection(metric):
  """Tiles of 1,000 rows with k = 4 go through smallest_k's chunk path."""
  rng = np.random.default_rng(11)
  q = rng.integers(0, 3, (21, 12), dtype=np.uint8)
  db = rng.integers(0, 3, (2500, 12), dtype=np.uint8)  # three levels: many ties
  d, i = knn.search(q, db, 4, metric=metric, database_tile=1000)
  ref_d, ref_i = brute_force(q, db, 4, metric)
  np.testing.assert_array_equal(i, ref_i)
  np.testing.assert_allclose(d, ref_d, rtol=1e-6)  # exact squared distances; sqrt in float32


@pytest.mark.parametrize("database_tile", [None, 2])
def test_l2_order_is_exact_beyond_float32_integers(database_tile):
  """Squared distances near 2e8 that differ by 1, 3 and 5 (float32 spacing there: 16)."""
  db = np.full((4, 3072), 255, np.uint8)
  db[:, 0] = [3, 2, 1, 0]  # |db_i|^2 = S + 9, S + 4, S + 1, S with S = 3071 * 255**2
  q = np.zeros((1, 3072), np.uint8)
  d, i = knn.search(q, db, 4, metric="l2_squared", database_tile=database_tile)
  np.testing.assert_array_equal(i, [[3, 2, 1, 0]])
  s = 3071 * 255 ** 2
  # float32 of the exact values
  np.testing.assert_allclose(d, [[s, s + 1, s + 4, s + 9]], rtol=1e-7)


def test_one_far_off_row_leaves_the_float_l2_neighbours_of_the_others_exact():
  """The rows were centred on their mean, which one row at 1e7 moved by 1e4: every other
  row's centred norm grew with it, and all 20 queries got shuffled neighbours (query 0's
  nearest at 5.657, not 6.533). Padding rows (a small database, rows far from 0) do not
  count in the centre."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1000, 50)).astype(np.float32)
  q = rng.normal(size=(20, 50)).astype(np.float32)
  x[-1, 0] = 1e7
  d64 = np.sqrt(((q[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
  for tiles in ({}, {"database_tile": 96}):  # padding rows in the last tile
    d, i = knn.search(q, x, 5, metric="l2", **tiles)
    np.testing.assert_array_equal(i, np.argsort(d64, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(d, np.sort(d64, axis=1)[:, :5], rtol=1e-5)
  few = (1e3 + rng.normal(size=(3, 8))).astype(np.float32)  # 3 rows in a tile of zeros
  d, i = knn.search(few[:2] + np.float32(0.25), few, 3, metric="l2")
  ref = np.sqrt(((few[:2, None].astype(np.float64) + 0.25 - few[None]) ** 2).sum(-1))
  np.testing.assert_allclose(d, np.sort(ref, axis=1), rtol=1e-5)
  # Two clusters of whole numbers, 51 and 49 rows 5,000 apart: the mean of the nearer half
  # sat in the larger one and doubled the other's centred distances, beyond 2**24 in their
  # squares: 80 % of these queries got wrong neighbours. The mean keeps them exact.
  a, b = rng.integers(-3, 4, size=(51, 2)), rng.integers(-3, 4, size=(49, 2)) + [5000, 0]
  db = np.concatenate([a, b]).astype(np.float32)
  q = (rng.integers(-3, 4, size=(50, 2)) + [5000, 0]).astype(np.float32)
  ref = ((q[:, None].astype(np.float64) - db[None]) ** 2).sum(-1)
  for rows in (db, db.astype(np.int16)):
    d, i = knn.search(q.astype(rows.dtype), rows, 4, metric="l2_squared", method="brute")
    np.testing.assert_array_equal(i, np.argsort(ref, axis=1, kind="stable")[:, :4])
    np.testing.assert_array_equal(d, np.sort(ref, axis=1)[:, :4])
  # 95 and 5 whole-number rows 2,980 apart: the nearer half's mean would bring 9 in 10 rows
  # nearer, but the few rows' squares about it pass 2**24 / 2, and the mean keeps them below.
  a, b = rng.integers(-3, 4, size=(95, 2)), rng.integers(-3, 4, size=(5, 2)) + [2980, 0]
  db = np.concatenate([a, b]).astype(np.float32)
  q = (rng.integers(-3, 4, size=(40, 2)) + [2980, 0]).astype(np.float32)
  ref = ((q[:, None].astype(np.float64) - db[None]) ** 2).sum(-1)
  d, i = knn.search(q, db, 3, metric="l2_squared", method="brute")
  np.testing.assert_array_equal(i, np.argsort(ref, axis=1, kind="stable")[:, :3])
  np.testing.assert_array_equal(d, np.sort(ref, axis=1)[:, :3])
  # Float clusters of 510 and 490 rows 300 apart: the nearer half's mean sits in one and
  # doubles the other's centred norms, and its errors 4x (0.036-0.051 against 0.0094-0.0104
  # about the mean, for seeds 0-3).
  rng = np.random.default_rng(0)
  apart = np.eye(8)[0] * 300
  a, b = rng.normal(size=(510, 8)), rng.normal(size=(490, 8)) + apart
  db = np.concatenate([a, b]).astype(np.float32)
  q = (rng.normal(size=(100, 8)) + apart).astype(np.float32)
  ref = ((q[:, None].astype(np.float64) - db[None]) ** 2).sum(-1)
  d, i = knn.search(q, db, 5, metric="l2_squared", method="brute")
  assert np.abs(np.asarray(d, np.float64) - np.take_along_axis(ref, np.asarray(i), 1)).max() < 0.02
  # Whole numbers with one corrupt row: the nearer half's mean brought most rows nearer but
  # left the four rows near 2,100 fewer exact pairs (a distance of 1 came back 0).
  bulk = rng.integers(-40, 41, size=(95, 2))
  mid = np.array([[2101, 2101], [2101, 2100], [2100, 2102], [2102, 2101]])
  db = np.concatenate([bulk, mid, [[14000, 14000]]]).astype(np.int32)
  q = np.array([[2100, 2100], [2101, 2101]], np.int32)
  d, i = knn.search(q, db, 2, metric="l2_squared")
  assert np.asarray(d).tolist() == [[1, 2], [0, 1]] and np.asarray(i).tolist() == [[96, 95],
                                                                                  [95, 96]]
  # Whole numbers all within 2**23 of the mean, and queries as near: exact about the mean,
  # but 3,185 from the nearer half's mean (0), where |q|^2 + |x|^2 passed 2**24.
  db = np.array([[0]] * 90 + [[2890]] * 10, np.int32)
  q = np.array([[289 + 2896], [289 - 2896]], np.int32)
  assert np.asarray(knn.search(q, db, 1, metric="l2_squared")[0]).tolist() == [[295 ** 2],
                                                                              [2607 ** 2]]
  # Two rows: no far row among them (the centre moved onto one of them, and a query midway
  # came back in the other order).
  two = np.array([[-21.580053329467773, -4.980398654937744, 3.280200958251953],
                  [-6.092161178588867, 15.906402587890625, -11.912266731262207]], np.float32)
  mid = np.array([[-13.83610725402832, 5.4630022048950195, -4.316032886505127]], np.float32)
  # float64: 226.7360810 to row 1, 226.7360910 to row 0
  assert np.asarray(knn.search(mid, two, 2, metric="l2_squared")[1]).tolist() == [[1, 0]]
  # Real rows of zeros count as rows (left out, the one far row was the nearer half: 0.0).
  x = np.zeros((20, 3), np.float32)
  x[2] = 1e4
  np.testing.assert_allclose(knn.search(np.ones((1, 3), np.float32), x, 2)[0], [[3 ** 0.5] * 2])


def test_l2_on_float_pixels_agrees_with_float64_reference():
  rng = np.random.default_rng(7)
  # Pixel-like floats (uncentred, 0..255): the float path centres to avoid cancellation.
  base = rng.integers(0, 256, (300, 3072)).astype(np.float64)
  pix = np.clip(base * 0.5 + rng.integers(0, 128, (300, 3072)), 0, 255).astype(np.float32)
  q, db = pix[:60], pix[60:]
  _, i = knn.search(q, db, 10, metric="l2", query_tile=32, database_tile=128)
  _, ref_i = brute_force(q, db, 10, "l2")
  assert np.mean(np.asarray(i) == ref_i) >= 0.999


def test_k_out_of_range():
  db = np.zeros((5, 2), np.float32)
  with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\]"):
    knn.search(db, db, 6)
  with pytest.raises(ValueError, match="k must be"):
    knn.search(db, db, 0)


def test_vote_literal_and_tie_rules():
  labels = np.array([[1, 2, 2, 1], [2, 1, 1, 2], [0, 1, 1, 1], [2, 0, 1, 3]])
  np.testing.assert_array_equal(knn.vote(labels, 4), [1, 1, 1, 0])
  np.testing.assert_array_equal(knn.vote(labels, 4, tie_break="nearest"), [1, 2, 1, 2])
  with pytest.raises(InputError, match="no neighbours") as e:  # was class 0 for every row
    knn.vote(np.zeros((3, 0), np.int32), 4)
  assert e.value.argument == "neighbor_labels_QxK"
  # Under jit, labels out of range count for no class; a row without one in range was
  # predicted class 0, a plausible answer. Now -1, as for a query with NaN.
  bad = labels.copy()
  bad[1] += 5
  bad[3, :3] = -1
  for tie_break, want in (("smallest_label", [1, -1, 1, 3]), ("nearest", [1, -1, 1, 3])):
    got = jax.jit(lambda a, t=tie_break: knn.vote(a, 4, tie_break=t))(bad)
    np.testing.assert_array_equal(got, want)
  x = np.arange(12, dtype=np.float32).reshape(6, 2)
  predict = jax.jit(lambda y: knn.predict(x, y, x[:2], k=3, num_classes=3))
  np.testing.assert_array_equal(predict(np.arange(6) + 5), [-1, -1])


def test_predict_many_k_from_one_search_equals_single_k():
  rng = np.random.default_rng(7)
  x, y = rng.normal(size=(60, 5)).astype(np.float32), rng.integers(0, 3, 60)
  q = rng.normal(size=(11, 5)).astype(np.float32)
  many = knn.predict(x, y, q, k=[1, 3, 7], metric="l1", num_classes=3)
  assert many.shape == (3, 11)
  single = knn.predict(x, y, q, k=3, metric="l1", num_classes=3)
  assert single.shape == (11,)
  np.testing.assert_array_equal(many[1], single)
  _, ref_i = brute_force(q, x, 7, "l1")
  for row, k in zip(many, [1, 3, 7]):
    ref = [np.bincount(y[r[:k]], minlength=3).argmax() for r in ref_i]
    np.testing.assert_array_equal(row, ref)


def test_callbacks_of_every_callable_kind_are_taken():
  calls = []

  def supplying(fn):  # a decorator that supplies an argument: the wrapper takes (done, total)
    @functools.wraps(fn)
    def wrapper(*args):
      return fn("search", *args)
    return wrapper

  class Recorder:
    def __call__(self, done, total, *, unit="queries"):
      calls.append((unit, done, total))

  db = np.zeros((5, 2), np.float32)
  for cb in (supplying(lambda name, done, total: calls.append((name, done, total))), Recorder(),
             functools.partial(lambda tag, done, total: calls.append((tag, done, total)), "p")):
    knn.search(np.ones((3, 2), np.float32), db, 1, callback=cb)
  assert calls == [("search", 3, 3), ("queries", 3, 3), ("p", 3, 3)]


def test_search_compiles_once_for_all_query_tiles_and_for_new_data():
  rng = np.random.default_rng(8)
  db = rng.normal(size=(40, 6)).astype(np.float32)
  calls = []
  with count_compiles() as first:
    knn.search(rng.normal(size=(50, 6)).astype(np.float32), db, 3, query_tile=8,
               callback=lambda done, total: calls.append((done, total)))
  assert calls[-1] == (50, 50) and len(calls) == 7  # 7 tiles, the last one padded
  with count_compiles() as again:  # other data of the same shapes: nothing compiles
    knn.search(rng.normal(size=(50, 6)).astype(np.float32), db + 1, 3, query_tile=8)
  assert first and not again, (len(first), len(again))


# ---- inputs checked at the public boundary ----
def test_nan_or_inf_in_float_inputs_is_an_error_naming_the_argument():
  db = np.arange(12, dtype=np.float32).reshape(6, 2)
  q = db[:2].copy()
  bad = db.copy()
  bad[3, 1] = np.nan
  with pytest.raises(InputError, match="database_NxD contains 1 NaN") as e:
    knn.search(q, bad, 2)
  assert e.value.argument == "database_NxD"
  q[1, 0] = np.inf
  with pytest.raises(InputError, match="queries_QxD") as e:
    knn.search(q, db, 2, metric="l1")
  assert e.value.argument == "queries_QxD"
  with pytest.raises(InputError, match="train_x contains 1 NaN") as e:
    knn.predict(bad, np.zeros(6, np.int32), db, k=1, num_classes=1)
  assert e.value.argument == "train_x"


@pytest.mark.parametrize("metric", ["l1", "l2", "l2_squared", "cosine"])
def test_nan_or_inf_under_jit_gives_nan_and_minus_one_never_a_plausible_answer(metric):
  # Under jit the values cannot raise. Before: one NaN database row gave every L2 query
  # index -1 and distance inf, an inf row gave indices [0, 1, 2] with NaN distances, cosine
  # ranked an inf row nearest, and predict voted the label at index -1.
  x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
  search = jax.jit(lambda a, b: knn.search(a, b, 3, metric=metric))
  predict = jax.jit(lambda a, b: knn.predict(b, np.arange(20) % 3, a, k=[1, 3],
                                             num_classes=3, metric=metric))
  d_ok, i_ok = knn.search(x[:3], x, 3, metric=metric)
  for value in (np.nan, -np.inf):
    q = x[:3].copy()
    q[1, 2] = value  # one bad query: only its answer is NaN and -1
    d, i = search(q, x)
    assert np.isnan(np.asarray(d)[1]).all() and (np.asarray(i)[1] == -1).all()
    np.testing.assert_array_equal(np.asarray(i)[[0, 2]], np.asarray(i_ok)[[0, 2]])
    np.testing.assert_allclose(np.asarray(d)[[0, 2]], np.asarray(d_ok)[[0, 2]], rtol=1e-6)
    db = x.copy()
    db[7, 1] = -value  # one bad database row: no query's answer can be trusted
    d, i = search(x[:3], db)
    assert np.isnan(np.asarray(d)).all() and (np.asarray(i) == -1).all()
  p = np.asarray(predict(q, x))
  assert (p[:, 1] == -1).all() and (p[:, [0, 2]] >= 0).all()
  assert (np.asarray(predict(x[:3], db)) == -1).all()
  # Finite values whose distances overflow (a concrete call refuses them): -1 too, not a
  # neighbour found by NaN distances.
  big = x[:6, :] * np.float32(1e19)
  d, i = search(big[:2], big)
  if metric in ("l2", "l2_squared"):  # (squares of 1e19 pass float32; sums of them do not)
    assert np.isnan(np.asarray(d)).all() and (np.asarray(i) == -1).all()
    # Where only some distances overflow, the rows they hid made a plausible wrong answer:
    # the query is row 0 itself, and row 1 was returned (the check saw finite distances).
    db = np.array([[-11.6, -1.1, -6.2, -3.7], [-2.2, -5.8, 8.7, -2.5], [5.0, -3.1, 9.1, -6.6]],
                  np.float32) * np.float32(1e18)
    with pytest.raises(InputError, match="would overflow"):
      knn.search(db[:1], db, 1, metric=metric)
    d, i = jax.jit(lambda a, b: knn.search(a, b, 1, metric=metric))(db[:1], db)
    assert np.isnan(np.asarray(d)).all() and np.asarray(i).tolist() == [[-1]]
    # int32 beyond 2**24 (float32 arithmetic rounds them; a concrete call refuses them),
    # 2**24 + 1 too (it rounds to 2**24 when cast: compared as an integer)
    for top in (2 ** 25, 2 ** 24 + 1):
      ints = np.array([[1, 2, 3, 4], [top, 0, 0, 0]], np.int32)
      with pytest.raises(InputError, match="beyond 2"):
        knn.search(ints[:1], ints, 1, metric=metric)
      d, i = jax.jit(lambda a, b: knn.search(a, b, 1, metric=metric))(ints[:1], ints)
      assert np.asarray(i).tolist() == [[-1]]
  if metric == "l1":  # L1 sums them as floats and a concrete call answers: so does jit
    ints = np.array([[2 ** 25, 0, 0, 0]], np.int32)
    want = knn.search(ints, x[:3], 1, metric=metric)
    got = jax.jit(lambda a, b: knn.search(a, b, 1, metric=metric))(ints, x[:3])
    np.testing.assert_array_equal(got[1], want[1])
    # int32 rows whose int32 L1 sums could reach 2**30 (a concrete call refuses them): the
    # far row wrapped to a negative distance and came back nearest, predict voted its label.
    q, db = np.array([[0, 0], [5, 5]], np.int32), np.array([[10, 10], [1.5e9, 1.5e9]], np.int32)
    with pytest.raises(InputError, match="could reach"):
      knn.search(q, db, 1, metric=metric)
    d, i = jax.jit(lambda a, b: knn.search(a, b, 2, metric=metric))(q, db)
    assert np.isnan(np.asarray(d)).all() and (np.asarray(i) == -1).all()
    pair = jax.jit(lambda a, b: distances.pairwise_distances(a, b, metric=metric))(q, db)
    np.testing.assert_array_equal(pair, [[20, np.nan], [10, np.nan]])
    small = np.array([[0, 0], [3, 4]], np.int32)  # far below the bound: exact, not flagged
    np.testing.assert_array_equal(
        jax.jit(lambda a, b: knn.search(a, b, 1, metric=metric))(small, db[:1] // 2)[0],
        [[10], [3]])
  # Integer inputs hold no NaN: their answers under jit are the answers outside it.
  xi = (np.abs(x) * 40).astype(np.uint8)
  np.testing.assert_array_equal(np.asarray(search(xi[:3], xi)[1]),
                                np.asarray(knn.search(xi[:3], xi, 3, metric=metric)[1]))


@pytest.mark.parametrize("metric,order", [("l1", [1, 2, 0]), ("l2", [1, 2, 0]),
                                          ("cosine", [1, 2, 0])])
def test_float64_inputs_are_searched_in_float64(metric, order):
  """Near-duplicates that float32 cannot tell apart (all at distance 0 in float32)."""
  with jax.enable_x64(True):
    if metric == "cosine":
      q = np.array([[1.0, 0.0]])
      db = np.array([[1.0, 3e-5], [1.0, 1e-5], [1.0, 2e-5]])
    else:
      q = np.array([[1.0, 1.0]])
      db = 1.0 + np.array([[3e-9, 0.0], [1e-9, 0.0], [2e-9, 0.0]])
    d, i = knn.search(q, db, 3, metric=metric)
    assert d.dtype == jnp.float64
    np.testing.assert_array_equal(i, [order])
    ref = {"l1": [1e-9, 2e-9, 3e-9], "l2": [1e-9, 2e-9, 3e-9],
           "cosine": [0.5e-10, 2e-10, 4.5e-10]}[metric]
    np.testing.assert_allclose(d[0], ref, rtol=1e-3)
    # Pixels keep their exact integer kernel under x64.
    px = np.arange(24, dtype=np.uint8).reshape(4, 6)
    _, i = knn.search(px[:1], px, 2, metric=metric if metric != "cosine" else "l2")
    np.testing.assert_array_equal(i, [[0, 1]])



def test_empty_results_have_the_dtype_of_full_ones_under_x64():
  """Under jax_enable_x64, 32- and 64-bit integers keep L1's exact integer kernel (float32
  distances), and an empty search returns the dtype a full one does."""
  with jax.enable_x64(True):
    for dtype in (np.int32, np.int64, np.uint8, np.float32, np.float64):
      q = np.arange(12, dtype=dtype).reshape(3, 4)
      db = np.arange(20, dtype=dtype).reshape(5, 4)
      for metric in ("l1", "l2"):
        full = knn.search(q, db, 2, metric=metric)[0].dtype
        assert knn.search(q[:0], db, 2, metric=metric)[0].dtype == full, (dtype, metric)
        assert distances.pairwise_distances(q, db[:0], metric=metric).dtype == full
        assert distances.pairwise_distances(q, db, metric=metric).dtype == full


def test_labels_outside_the_classes_are_an_error():
  x = np.arange(10, dtype=np.float32).reshape(5, 2)
  for y in ([0, 1, 2, 0, 3], [0, -1, 1, 0, 1]):
    with pytest.raises(InputError, match=r"train_y must lie in \[0, num_classes\)") as e:
      knn.predict(x, np.array(y), x, k=1, num_classes=3)
    assert e.value.argument == "train_y"
  with pytest.raises(InputError, match="neighbor_labels_QxK") as e:
    knn.vote(np.array([[0, 4]]), 4)
  with pytest.raises(InputError, match="one label per row"):
    knn.predict(x, np.zeros(4, np.int32), x, k=1, num_classes=3)
  jitted = jax.jit(lambda l: knn.vote(l, 3))  # traced labels: no check, no error
  np.testing.assert_array_equal(jitted(jnp.array([[2, 2, 0]])), [2])


def test_empty_queries_give_empty_results_and_an_empty_database_is_an_error():
  db = np.arange(12, dtype=np.uint8).reshape(6, 2)
  calls = []
  d, i = knn.search(db[:0], db, 4, callback=lambda *a: calls.append(a))
  assert d.shape == i.shape == (0, 4) and d.dtype == jnp.float32 and i.dtype == jnp.int32
  p = knn.predict(db, np.zeros(6, np.int32), db[:0], k=[1, 2], num_classes=1)
  assert p.shape == (2, 0)
  with pytest.raises(InputError, match="database_NxD is empty") as e:
    knn.search(db, db[:0], 1)
  assert e.value.argument == "database_NxD"


def test_k_may_be_any_concrete_integer_but_not_bool_or_float():
  db = np.arange(12, dtype=np.float32).reshape(6, 2)
  _, ref = knn.search(db, db, 2)
  for k in (np.int64(2), jnp.int32(2), np.array(2)):
    np.testing.assert_array_equal(knn.search(db, db, k)[1], ref)
  for k in (True, 2.0, jnp.float32(2), np.array([2]), "2"):
    with pytest.raises(InputError, match="k must be") as e:
      knn.search(db, db, k)
    assert e.value.argument == "k"


def test_shapes_and_options_are_checked_with_their_names():
  db = np.zeros((5, 3), np.float32)
  cases = [
      (dict(queries_QxD=np.zeros(3, np.float32)), "queries_QxD", "must be 2-D"),
      (dict(database_NxD=np.zeros((5, 3, 1), np.float32)), "database_NxD", "flatten images"),
      (dict(queries_QxD=np.zeros((2, 4), np.float32)), "queries_QxD", "feature sizes differ"),
      (dict(metric="l3"), "metric", "unknown metric 'l3'"),
      (dict(layout="both"), "layout", "unknown layout 'both'"),
      (dict(num_database=5), "num_database", "needs layout='database'"),
      (dict(num_database=4, layout="database"), "num_database", "make 4 rows"),
      (dict(num_database=np.array([5, 5]), layout="database"), "num_database",
       "must be an integer scalar"),  # was a ValueError
      (dict(query_tile=0), "query_tile", "positive"),
      (dict(queries_QxD=np.zeros((2, 3), np.complex64)), "queries_QxD", "integers or real"),
  ]
  for kwargs, argument, message in cases:
    args = {"queries_QxD": db, "database_NxD": db, "k": 2, **kwargs}
    with pytest.raises(InputError, match=message) as e:
      knn.search(args.pop("queries_QxD"), args.pop("database_NxD"), args.pop("k"), **args)
    assert e.value.argument == argument, kwargs
  with pytest.raises(InputError, match="unknown tie_break"):
    knn.vote(np.zeros((1, 2), np.int32), 4, tie_break="random")


@pytest.mark.parametrize("queries, database, kw, argument, message", [
    # int64 beyond int32: JAX would wrap the values silently (a wrong answer, not an error).
    (np.array([[2 ** 40, 0]]), np.zeros((3, 2), np.int64), {}, "queries_QxD", "beyond int32"),
    (np.zeros((2, 0)), np.zeros((5, 0)), {}, "queries_QxD", "no features"),
    (np.zeros((2, 3)).astype(object), np.zeros((5, 3)), {}, "queries_QxD", "dtype object"),
    ([[1, 2], [3]], np.zeros((5, 2)), {}, "queries_QxD", "rectangular"),
    (np.zeros((2, 3)), np.zeros((5, 3)), {"callback": 5}, "callback", "callable"),
    # A callback of the wrong arity raised its own TypeError after the first block's work.
    (np.zeros((2, 3)), np.zeros((5, 3)), {"callback": lambda done: None}, "callback",
     r"called as callback\(queries_done, total\), but .* cannot take 2 positional"),
])
def test_inputs_jax_cannot_hold_exactly_are_refused(queries, database, kw, argument, message):
  with pytest.raises(InputError, match=message) as e:
    knn.search(queries, database, 1, **kw)
  assert e.value.argument == argument


def test_smallest_k_refuses_what_it_cannot_order_and_ties_signed_zeros():
  x = np.arange(130, dtype=np.float32)[None]
  x[0, 3] = np.nan  # long rows hid a whole chunk behind a NaN; short ones did not
  for values, k, argument, message in [
      (x, 2, "values_TxN", "holds NaN"),
      (np.full((1, 130), 2 ** 30 + 100, np.int32), 2, "values_TxN", r"\[0, 2\*\*30\]"),
      (np.array([[-5, 3]]), 1, "values_TxN", r"\[0, 2\*\*30\]"),
      (np.array([[1 + 5j, 1, 0.5]]), 1, "values_TxN", "real floats"),
      (np.zeros(4), 1, "values_TxN", "2-D"),
      (np.zeros((1, 4)), 2.0, "k", "must be an integer"),
      (np.zeros((1, 4)), 5, "k", r"\[1, 4\]"),
  ]:
    with pytest.raises(InputError, match=message) as e:
      topk.smallest_k(values, k)
    assert e.value.argument == argument
  assert np.asarray(topk.smallest_k(np.zeros((1, 4)), 2)).tolist() == [[0, 1]]  # k=2.0 before
  # -0.0 equals 0.0: the lower position first, as a stable sort.
  assert np.asarray(topk.smallest_k(np.float32([[0.0, -0.0, 0.0]]), 2)).tolist() == [[0, 1]]
  compiled = jax.jit(topk.smallest_k, static_argnums=1)  # as search runs it
  assert np.asarray(compiled(jnp.float32([[0.0, -0.0, 1.0]]), 2)).tolist() == [[0, 1]]
  zeros = np.zeros((1, 200), np.float32)
  zeros[0, ::2] = -0.0
  assert np.asarray(topk.smallest_k(zeros, 5)).tolist() == [[0, 1, 2, 3, 4]]


def test_concrete_arrays_closed_over_in_a_callers_jit():
  # The eager value checks ran their one-program helpers under the caller's trace and
  # failed on the tracers they returned (ConcretizationTypeError, TracerBoolConversionError).
  y = jnp.array([0, 1, 2, 1])
  lab = jnp.array([[0, 1, 1], [2, 2, 0]])
  v = jnp.array([[3.0, 1.0, 2.0]])
  np.testing.assert_array_equal(jax.jit(lambda p: metrics.confusion_matrix(y, p, 3))(y),
                                np.diag([1, 2, 1]))
  np.testing.assert_array_equal(jax.jit(lambda c: knn.vote(lab, 3) + c)(0), [1, 2])
  np.testing.assert_array_equal(
      jax.jit(lambda q: knn.predict(jnp.eye(4), y, q, k=1, num_classes=3))(jnp.eye(4)), y)
  np.testing.assert_array_equal(jax.jit(lambda c: topk.smallest_k(v, 1) + c)(0), [[1]])


def test_traced_inputs_get_the_checks_their_shapes_and_dtypes_allow():
  lab = jnp.array([[0, 1, 1], [2, 2, 0]])
  for call, argument, message in [
      # were [0 0], a TypeError, and labels clamped silently
      (lambda: jax.jit(lambda l: knn.vote(l, 3))(lab.astype(jnp.float32)), "neighbor_labels_QxK",
       "integer class labels"),
      (lambda: jax.jit(lambda l: knn.vote(l, 3))(lab > 0), "neighbor_labels_QxK", "bool"),
      (lambda: jax.jit(lambda t: knn.predict(jnp.eye(4), t, jnp.eye(4), k=1, num_classes=3))(
          jnp.array([0, 1])), "train_y", r"one label per row \(4\), got shape \(2,\)"),
      # the cascade needs values (was a TracerArrayConversionError)
      (lambda: jax.jit(lambda a, b: knn.search(a, b, 2, method="pruned"))(
          np.zeros((2, 4), np.uint8), np.arange(40, dtype=np.uint8).reshape(10, 4)), "method",
       "runs outside jit"),
      (lambda: jax.jit(lambda x: knn.search(x, jnp.ones((5, 2)), 1, callback=print))(
          jnp.ones((1, 2))), "callback", "pass callback=None"),
  ]:
    with pytest.raises(InputError, match=message) as e:
      call()
    assert e.value.argument == argument
  # method="auto" takes brute force for traced inputs, at any size (was the int8 timing and
  # the cascade inside the trace)
  shapes = jax.eval_shape(lambda a, b: knn.search(a, b, 10),
                          jax.ShapeDtypeStruct((10000, 3072), jnp.uint8),
                          jax.ShapeDtypeStruct((50000, 3072), jnp.uint8))
  assert [s.shape for s in shapes] == [(10000, 10), (10000, 10)]
  # ... and so do concrete arrays closed over in the caller's function
  q, db = jnp.zeros((2, 4), jnp.uint8), jnp.arange(40, dtype=jnp.uint8).reshape(10, 4)
  with pytest.raises(InputError, match="runs outside jit") as e:
    jax.eval_shape(lambda: knn.search(q, db, 2, method="pruned"))
  assert e.value.argument == "method"
  with pytest.raises(InputError, match="runs outside jit") as e:
    jax.jit(lambda c: selection.cross_validate_knn(db, jnp.arange(10) % 2, [1],
                                                   num_classes=2) + c)(0.0)
  assert e.value.argument == "x"
  cm = jnp.array([[3, 1], [0, 2]])  # was a ConcretizationTypeError
  np.testing.assert_allclose(jax.jit(lambda c: metrics.per_class_accuracy(cm) + c)(0.0),
                             [0.75, 1.0])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16])
def test_smallest_k_of_narrow_integers(dtype):
  # The padding's 2**30 wrapped to 0 in narrow dtypes: position 70 of a row of 70.
  assert np.asarray(topk.smallest_k(np.full((1, 70), 5, dtype), 1)).tolist() == [[0]]
  v = np.random.default_rng(0).integers(0, 100, (3, 200)).astype(dtype)
  np.testing.assert_array_equal(topk.smallest_k(v, 3), np.argsort(v, 1, kind="stable")[:, :3])
