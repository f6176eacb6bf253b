import jax
import numpy as np
import pytest

from jaxlin import knn


def brute_force(q, db, k, metric):
  """float64 / int64 reference with ties broken by lower index (stable sort)."""
  diff = q[:, None, :].astype(np.float64) - db[None].astype(np.float64)
  d = np.abs(diff).sum(-1) if metric == "l1" else (diff ** 2).sum(-1)
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
  d, i = knn.search(q.astype(np.float32), db.astype(np.float32), 5, metric="cosine", database_tile=7)
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
@pytest.mark.parametrize("n,k", [(64, 1), (333, 5), (1000, 3), (2000, 31), (90, 7)])
def test_smallest_k_is_the_stable_top_k(dtype, n, k):
  """Chunked selection (long rows) and plain top_k (short rows) give the same
  positions as a stable sort, ties by position, with padding and worst keys."""
  rng = np.random.default_rng(n + k)
  v = rng.integers(0, 6, (23, n)).astype(dtype)  # six levels: ties everywhere
  v[3] = knn._worst(dtype)  # a row of worst keys only
  v[4, ::7] = 0
  pos = np.asarray(knn.smallest_k(jax.numpy.asarray(v), k))
  np.testing.assert_array_equal(pos, np.argsort(v, axis=1, kind="stable")[:, :k])


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
  np.testing.assert_allclose(d, [[s, s + 1, s + 4, s + 9]], rtol=1e-7)  # float32 of the exact values


def test_l2_on_float_pixels_agrees_with_float64_reference():
  rng = np.random.default_rng(7)
  # Pixel-like floats (uncentred, 0..255): the float path centres to avoid cancellation.
  base = rng.integers(0, 256, (700, 3072)).astype(np.float64)
  pix = np.clip(base * 0.5 + rng.integers(0, 128, (700, 3072)), 0, 255).astype(np.float32)
  q, db = pix[:100], pix[100:]
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
  with pytest.raises(ValueError, match="unknown tie_break"):
    knn.vote(labels, 4, tie_break="random")


def test_predict_many_k_from_one_search_equals_single_k():
  rng = np.random.default_rng(7)
  x, y = rng.normal(size=(60, 5)).astype(np.float32), rng.integers(0, 3, 60)
  q = rng.normal(size=(11, 5)).astype(np.float32)
  many = knn.predict(x, y, q, k=[1, 3, 7], metric="l1", num_classes=3)
  assert many.shape == (3, 11)
  for row, k in zip(many, [1, 3, 7]):
    single = knn.predict(x, y, q, k=k, metric="l1", num_classes=3)
    assert single.shape == (11,)
    np.testing.assert_array_equal(row, single)
  _, ref_i = brute_force(q, x, 7, "l1")
  ref = [np.bincount(y[r[:3]], minlength=3).argmax() for r in ref_i]
  np.testing.assert_array_equal(many[1], ref)


def test_search_compiles_once_for_all_query_tiles():
  rng = np.random.default_rng(8)
  db = rng.normal(size=(40, 6)).astype(np.float32)
  knn._search_tile.clear_cache()
  calls = []
  knn.search(rng.normal(size=(50, 6)).astype(np.float32), db, 3, query_tile=8,
             callback=lambda done, total: calls.append((done, total)))
  assert knn._search_tile._cache_size() == 1  # 7 tiles (the last one padded), one program
  assert calls[-1] == (50, 50) and len(calls) == 7
