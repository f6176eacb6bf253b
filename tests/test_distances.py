import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlin import distances, knn
from jaxlin.errors import InputError

X = np.array([[0., 0.], [1., 1.]], np.float32)
Y = np.array([[3., 4.], [0., 0.], [1., 0.]], np.float32)
EXPECTED = {
    "l1": [[7, 0, 1], [5, 2, 1]],
    "l2_squared": [[25, 0, 1], [13, 2, 1]],
    "l2": [[5, 0, 1], [np.sqrt(13), np.sqrt(2), 1]],
    "cosine": [[1, 1, 1], [1 - 7 / (5 * np.sqrt(2)), 1, 1 - 1 / np.sqrt(2)]],
}


@pytest.mark.parametrize("metric", distances.METRICS)
@pytest.mark.parametrize("fn", [distances.pairwise_distances,
                                distances.pairwise_distances_reference])
def test_literal_values(metric, fn):
  d = fn(X, Y, metric=metric)
  assert d.shape == (2, 3) and d.dtype == jnp.float32
  np.testing.assert_allclose(d, EXPECTED[metric], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("metric", distances.METRICS)
def test_fast_matches_reference_on_random_floats(metric):
  kx, ky = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (13, 37)) * 3 + 1
  y = jax.random.normal(ky, (29, 37)) * 3 + 1
  np.testing.assert_allclose(distances.pairwise_distances(x, y, metric=metric),
                             distances.pairwise_distances_reference(x, y, metric=metric),
                             rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("metric", distances.METRICS)
def test_jit_matches_eager(metric):
  rng = np.random.default_rng(1)
  x, y = rng.random((5, 300), np.float32), rng.random((7, 300), np.float32)
  f = jax.jit(distances.pairwise_distances, static_argnames="metric")
  np.testing.assert_allclose(f(x, y, metric=metric),
                             distances.pairwise_distances(x, y, metric=metric),
                             rtol=1e-5, atol=1e-4)


def test_integer_l1_under_jit_is_nan_exactly_where_its_int32_sums_could_wrap():
  """The bound D * span >= 2**30 taken exactly: in float32 it flagged sums just below 2**30
  that a concrete call accepts, and under jax_enable_x64 it rounded int64 spans (values
  2 apart near 2**60 flagged, a span of 2**36 taken for 0 and its wrapped sum let through)."""
  f = jax.jit(lambda a, b: distances.pairwise_distances(a, b, metric="l1"))
  q, db = np.zeros((1, 1024), np.int32), np.full((2, 1024), 2 ** 20 - 1, np.int32)
  db[1] = -1  # with the query's 0 and its own 2**20 - 1 below: a span of 2**20, D * 2**20
  db[1, 0] = 2 ** 20 - 1  # = 2**30, which a concrete call refuses
  np.testing.assert_array_equal(f(q, db[:1]), [[2 ** 30 - 1024]])  # span 2**20 - 1: exact
  np.testing.assert_array_equal(f(q, db[:1]), distances.pairwise_distances(q, db[:1], metric="l1"))
  with pytest.raises(InputError, match="could reach"):
    distances.pairwise_distances(q, db, metric="l1")
  np.testing.assert_array_equal(f(q, db), [[2 ** 30 - 1024, np.nan]])
  with jax.enable_x64(True):
    base = 2 ** 60 + 2 ** 36
    q64 = np.full((1, 4), base + 1, np.int64)
    db64 = np.array([[base - 1] * 4, [base + 5] * 4], np.int64)
    np.testing.assert_array_equal(f(q64, db64), [[8, 16]])
    far = np.array([[2 ** 60 + 2 ** 36] * 8, [2 ** 60 + 3] * 8], np.int64)
    got = np.asarray(f(np.full((1, 8), 2 ** 60, np.int64), far))
    assert np.isnan(got[0, 0]) and got[0, 1] == 24


def test_l1_on_uint8_is_exact():
  rng = np.random.default_rng(2)
  x = rng.integers(0, 256, (9, 3072), dtype=np.uint8)
  y = rng.integers(0, 256, (11, 3072), dtype=np.uint8)
  expected = np.abs(x[:, None, :].astype(np.int64) - y[None].astype(np.int64)).sum(-1)
  got = np.asarray(distances.pairwise_distances(x, y, metric="l1"))
  np.testing.assert_array_equal(got, expected.astype(np.float32))
  np.testing.assert_array_equal(got.astype(np.int64), expected)  # < 2**24: float32 is exact


def test_l2_on_uint8_is_exact_integer_work():
  rng = np.random.default_rng(3)
  x = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
  y = rng.integers(0, 256, (9, 3072), dtype=np.uint8)
  ref = ((x[:, None].astype(np.int64) - y[None]) ** 2).sum(-1)
  pd = lambda metric: distances.pairwise_distances(x, y, metric=metric)
  np.testing.assert_allclose(pd("l2_squared"), ref, rtol=1e-7)
  np.testing.assert_allclose(pd("l2"), np.sqrt(ref), rtol=1e-6)
  xc, yc = distances.centred_pixels(x), distances.centred_pixels(y)
  np.testing.assert_array_equal(distances.l2_squared_pixels(
      xc, yc, distances.int_squared_norms(xc), distances.int_squared_norms(yc)), ref)
  # The worst case for the chunked products: every pixel at -128 (0 shifted) against -128.
  z = np.zeros((2, 3072), np.uint8)
  zc = distances.centred_pixels(z)
  zn = distances.int_squared_norms(zc)
  dot = distances.l2_squared_pixels(zc, zc, zn, zn)
  np.testing.assert_array_equal(dot, 0)


def test_l1_partial_sums_over_many_features_stay_exact():
  # 300 features of 0 against 255: int16 partial sums over more than 128 would wrap.
  d = distances.pairwise_distances(np.zeros((1, 300), np.uint8), np.full((2, 300), 255, np.uint8),
                                   metric="l1")
  assert np.asarray(d).tolist() == [[76500.0, 76500.0]]


def test_float_l2_is_clamped_at_zero_where_rounding_goes_below():
  # |x|^2 + |y|^2 - 2 x.y of the given norms is -2: clamped to 0.
  one = np.ones((1, 2), np.float32)
  assert np.asarray(distances.l2_squared_from_dot(one, one, np.float32([1.0]),
                                                  np.float32([1.0]))).tolist() == [[0.0]]
  x = (100 + 3 * np.random.default_rng(5).normal(size=(50, 64))).astype(np.float32)
  d = np.asarray(distances.pairwise_distances(x, x, metric="l2"))
  assert np.isfinite(d).all()  # unclamped: 21 NaN (square roots of negative rounding)
  assert np.diag(d).max() < 1e-3 * d.max()  # 0 up to rounding


def test_squared_distance_never_negative_for_identical_rows():
  x = np.full((4, 3072), 200.0, np.float32) + np.arange(4)[:, None]
  d = distances.pairwise_distances(x, x, metric="l2_squared")
  assert float(d.min()) >= 0.0
  np.testing.assert_allclose(np.diag(d), 0.0, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
  bad = Y.copy()
  bad[1, 0] = np.nan
  cases = [((X, Y, "l3"), "metric", "unknown metric 'l3'"),
           ((X, Y[:, :1], "l1"), "x_QxD", "feature sizes differ"),
           ((X[None], Y, "l1"), "x_QxD", "flatten images"),
           ((X, bad, "l2"), "y_NxD", "y_NxD contains 1 NaN"),
           ((np.full((1, 3), 2 ** 29, np.int32), np.zeros((1, 3), np.int32), "l1"), "y_NxD",
            "pass float arrays")]
  for (x, y, metric), argument, message in cases:
    with pytest.raises(InputError, match=message) as e:
      distances.pairwise_distances(x, y, metric=metric)
    assert e.value.argument == argument


@pytest.mark.parametrize("qd,dd,metric,name", [
    (np.uint8, np.uint8, "l1", "l1_int"), (np.int32, np.uint8, "l1", "l1_int"),
    (np.float32, np.uint8, "l1", "l1_float"), (np.uint8, np.uint8, "l2", "l2_int8"),
    (np.int8, np.int8, "l2_squared", "l2_int8"), (np.uint8, np.int8, "l2", "l2_float"),
    (np.float32, np.float32, "l2", "l2_float"), (np.uint8, np.uint8, "cosine", "cosine")])
def test_one_kernel_table_picks_by_metric_and_dtypes(qd, dd, metric, name):
  kernel = distances.kernel_for(metric, qd, dd, 3072)
  assert kernel.name == name and kernel.float_dtype == "float32"
  assert kernel.dtype == ("int32" if name in ("l1_int", "l2_int8") else "float32")
  # Pixel rows too long for exact int32 squared distances fall back to floats.
  # The boundary the docs give: 16,512 features (D * 255**2 < 2**30) are exact integer work.
  assert distances.kernel_for("l2", np.uint8, np.uint8, 16512).name == "l2_int8"
  assert distances.kernel_for("l2", np.uint8, np.uint8, 16513).name == "l2_float"


@pytest.mark.parametrize("metric", distances.METRICS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_search_returns_exactly_the_pairwise_distances(metric, dtype):
  """pairwise_distances is one tile of search: the same values (bit for bit on pixels;
  float rounding may differ by an ulp where XLA fuses the compiled search differently)."""
  rng = np.random.default_rng(3)
  x = rng.integers(0, 256, (4, 30)).astype(dtype)
  y = rng.integers(0, 256, (9, 30)).astype(dtype)
  full = np.asarray(distances.pairwise_distances(x, y, metric=metric))
  d, i = knn.search(x, y, 9, metric=metric, database_tile=9)
  tol = 0 if dtype == np.uint8 and metric != "cosine" else 1e-6
  np.testing.assert_allclose(np.asarray(d), np.take_along_axis(full, np.asarray(i), 1), rtol=tol)
  np.testing.assert_array_equal(i, np.argsort(full, axis=1, kind="stable"))


def test_float64_inputs_computed_in_float64():
  with jax.enable_x64(True):
    x = np.array([[1.0, 1.0]])
    y = 1.0 + np.array([[3e-9, 0.0], [1e-9, 0.0]])
    for metric in ("l1", "l2"):
      d = distances.pairwise_distances(x, y, metric=metric)
      assert d.dtype == jnp.float64
      np.testing.assert_allclose(d, [[3e-9, 1e-9]], rtol=1e-4)


@pytest.mark.parametrize("metric", ["l1", "l2_squared"])
def test_mixed_uint8_and_int8_inputs_are_not_mistaken_for_one_pixel_type(metric):
  rng = np.random.default_rng(9)
  x = rng.integers(0, 256, (3, 300), dtype=np.uint8)
  y = rng.integers(-128, 128, (4, 300)).astype(np.int8)
  diff = x[:, None].astype(np.int64) - y[None].astype(np.int64)
  ref = np.abs(diff).sum(-1) if metric == "l1" else (diff ** 2).sum(-1)
  np.testing.assert_allclose(distances.pairwise_distances(x, y, metric=metric), ref, rtol=1e-6)


def test_float_distances_that_would_overflow_are_refused():
  x = np.array([[3e38, 0.0]], np.float32)
  y = np.array([[-3e38, 0.0], [3e38, 0.0], [0.0, 0.0]], np.float32)
  for metric in ("l2", "l2_squared"):  # were NaN / inf distances and index -1
    with pytest.raises(InputError, match=r"values up to 3e\+38: its float32 distances") as e:
      knn.search(x, y, 3, metric=metric)
    assert e.value.argument == "queries_QxD"
  with pytest.raises(InputError, match="would overflow") as e:
    distances.pairwise_distances(x[:, :1] / 1e20, y[:, :1], metric="l2")
  assert e.value.argument == "y_NxD"
  # Large values below the limit are fine, and L1 allows far more.
  np.testing.assert_allclose(distances.pairwise_distances([[1e16, 0.0]], [[0.0, 0.0]],
                                                          metric="l2"), [[1e16]], rtol=1e-6)
  assert float(distances.pairwise_distances(x / 30, y[1:] / 30, metric="l1")[0, 0]) == 0.0


def test_float_l2_that_would_underflow_is_refused():
  x = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
  for offset in (0.0, 1e-15):  # the spread counts, after centring: were all 0, index order
    with pytest.raises(InputError, match=r"vary by at most \d\.\d+e-20 in any feature: their "
                       "float32 squared distances would underflow") as e:
      knn.search(offset + x[:2] * 1e-20, offset + x * 1e-20, 2)
    assert e.value.argument == "database_NxD"  # the larger values
  d, i = knn.search(x[:2] * 1e-17, x * 1e-17, 2)  # small, but resolved
  np.testing.assert_array_equal(i, knn.search(x[:2], x, 2)[1])
  assert float(d[0, 1]) > 0
  assert float(distances.pairwise_distances(x[:1] * 1e-30, x[:1] * 1e-30, metric="l1")[0, 0]) == 0


def test_integers_are_cast_only_to_floats_that_hold_them():
  rng = np.random.default_rng(1)
  a = rng.integers(0, 4, size=(40, 3)).astype(np.int32)  # many exact ties
  ref = ((a[:7, None, :].astype(np.int64) - a[None]) ** 2).sum(-1)
  d, i = knn.search(a[:7], a, 10, metric="l2_squared")  # integer centre: exact distances
  np.testing.assert_array_equal(i, np.argsort(ref, axis=1, kind="stable")[:, :10])
  np.testing.assert_array_equal(d, np.sort(ref, axis=1)[:, :10])
  big = np.array([[2**25, 0], [2**25 + 3, 0], [2**25 + 1, 0]], np.int32)
  for metric in ("l2", "l2_squared"):  # the identity would cancel: 0, 0, 0 before
    with pytest.raises(InputError, match=r"integers up to 33554433, beyond 2\*\*24, so "
                       "float32 arithmetic would round them: L2 is unchanged") as e:
      knn.search(big[2:], big, 3, metric=metric)
    assert e.value.argument == "queries_QxD"
  shifted = big - [2**25, 0]  # as the error says: exact
  np.testing.assert_array_equal(knn.search(shifted[2:], shifted, 3)[1], [[2, 0, 1]])
  # Cosine and L1 beside floats round large integers relatively, as floats: no refusal.
  np.testing.assert_array_equal(knn.search(big[2:], big, 3, metric="cosine")[1], [[0, 1, 2]])
  np.testing.assert_array_equal(knn.search(big[2:].astype(np.float32), big, 3, metric="l1")[1],
                                [[0, 2, 1]])
  with jax.enable_x64(True):  # 32- and 64-bit integers in float64: exact
    d, i = knn.search(big[2:].astype(np.int64) + 2**30, big.astype(np.int64) + 2**30, 3)
    assert d.dtype == jnp.float64
    np.testing.assert_array_equal(i, [[2, 0, 1]])  # were distances 0, 0, 0 in float32
    np.testing.assert_array_equal(d, [[0.0, 1.0, 2.0]])
    with pytest.raises(InputError, match=r"beyond 2\*\*53, so float64 arithmetic") as e:
      distances.pairwise_distances(np.full((1, 4), -2**62), np.full((1, 4), 2**62),
                                   metric="l2_squared")  # was inf
    assert e.value.argument == "x_QxD"


def test_float64_rows_far_from_zero_keep_their_differences_without_x64():
  """Without jax_enable_x64 JAX rounds float64 to float32 (24 bits: spacing 64 near 1e9).
  Host rows are centred in float64 first for L1 and L2, which one shift does not change:
  the same neighbours as without the offset (these were mostly ties before), and on whole
  numbers the exact distances, ties by index."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(30, 4))
  whole = rng.integers(0, 4, size=(30, 4)).astype(np.float64)  # many exact ties
  ref = ((whole[:6, None] - whole[None]) ** 2).sum(-1)
  for metric in ("l1", "l2", "l2_squared"):
    d0, i0 = knn.search(x[:6], x, 5, metric=metric)
    d1, i1 = knn.search(x[:6] + 1e9, x + 1e9, 5, metric=metric)
    np.testing.assert_array_equal(i1, i0)
    # Float L2 of a row to itself: 0 within rounding, sqrt(eps |x|^2) or so.
    np.testing.assert_allclose(d1, d0, rtol=1e-5, atol=3e-3)
  d, i = knn.search(whole[:6] + 1e9, whole + 1e9, 10, metric="l2_squared")
  np.testing.assert_array_equal(i, np.argsort(ref, axis=1, kind="stable")[:, :10])
  np.testing.assert_array_equal(d, np.sort(ref, axis=1)[:, :10])
  np.testing.assert_array_equal(
      distances.pairwise_distances(np.array([[1e9 + 0.25]]), np.array([[1e9], [1e9 + 0.5]]),
                                   metric="l2"), [[0.25, 0.25]])  # were 0 and 0
  # Cosine is not shift invariant: its rows are rounded as floats, as before.
  np.testing.assert_array_equal(knn.search(x[:2] + 1e9, x + 1e9, 3, metric="cosine")[1],
                                knn.search(np.float32(x[:2] + 1e9), np.float32(x + 1e9), 3,
                                           metric="cosine")[1])


def test_float_rows_of_whole_numbers_tie_exactly_as_integers_do():
  """Binary features as float32 get the exact distances of the same rows as uint8: an
  integer centre, so ties come by index (a rounding apart, in either order, before)."""
  rng = np.random.default_rng(4)
  a = rng.random((80, 20)) < 0.3
  ref = ((a[:16, None].astype(np.int64) - a[None]) ** 2).sum(-1)
  want = np.argsort(ref, axis=1, kind="stable")[:, :12]
  for dtype in (np.float32, np.uint8, np.int32):
    for metric in ("l2_squared", "l2"):
      d, i = knn.search(a[:16].astype(dtype), a.astype(dtype), 12, metric=metric)
      np.testing.assert_array_equal(i, want)
      np.testing.assert_allclose(d if metric == "l2_squared" else d ** 2,
                                 np.sort(ref, axis=1)[:, :12], rtol=1e-6 * (metric == "l2"))
  d, i = jax.jit(functools.partial(knn.search, k=12))(a[:16].astype(np.float32),
                                                      a.astype(np.float32))
  np.testing.assert_array_equal(i, want)


def test_cosine_of_tiny_and_huge_vectors():
  d = lambda a, b: np.asarray(distances.pairwise_distances(np.float32(a), np.float32(b),
                                                           metric="cosine"))
  assert d([[1e-25, 0]], [[1, 0]]).tolist() == [[0.0]]  # was -99999: the norm underflowed
  np.testing.assert_allclose(d([[1e-20, 1e-20]], [[1, 1]]), [[0.0]], atol=1e-7)
  np.testing.assert_allclose(d([[1e20, 1e20]], [[1, 1], [-1, -1]]), [[0.0, 2.0]], atol=1e-7)
  assert d([[0, 0]], [[1, 1]]).tolist() == [[1.0]]  # a zero vector: distance 1


def test_cosine_distances_are_never_below_zero():
  # 1 - u.u of a unit row rounds a few ulps either side of 0: a row against itself and
  # its duplicates gave -4.8e-7 (a trial of the API as a new user); now clamped at 0.
  rng = np.random.default_rng(10)
  v = rng.integers(100, 256, (20, 768), dtype=np.uint8)
  # (A row and its duplicate stay within float32 rounding of 0, 1e-7 to 4e-7 here, so they
  # may tie with or swap places with rows as close: the module's table says so.)
  d = np.asarray(distances.pairwise_distances(v, np.concatenate([v, v]), metric="cosine"))
  assert d.min() == 0.0 and np.all(np.diagonal(d) <= 1e-6)
  d, _ = knn.search(v, np.concatenate([v, v]), 3, metric="cosine")
  assert np.asarray(d).min() == 0.0 and np.all(np.asarray(d)[:, :2] <= 1e-6)


@pytest.mark.parametrize("num_features", [1, 10, 1024, 1025, 3072])
def test_int8_products_off_the_cpu_are_exact_in_float32_blocks(num_features):
  """GPUs and TPUs multiply int8 rows as float32 blocks of 1,024 features: the extremes
  (every product 2**14), an odd sum just above 2**24 (-128 in all but the last feature, 1
  there: a block of 1,025 features would round it), and random rows give the exact int32
  products, as the CPU's int8 product does."""
  lo = np.full((2, num_features), -128, np.int8)
  hi = np.full((1, num_features), 127, np.int8)
  odd = lo[:1].copy()
  odd[0, -1] = 1
  rng = np.random.default_rng(num_features)
  rand = rng.integers(-128, 128, (5, num_features)).astype(np.int8)
  for x, y, want in ((lo, lo, [[16384 * num_features] * 2] * 2),
                     (lo, hi, [[-16256 * num_features]] * 2),
                     (odd, odd, [[16384 * (num_features - 1) + 1]]),
                     (rand, rand, rand.astype(np.int64) @ rand.T.astype(np.int64))):
    # XLA's int8 product itself only where int8_products uses it (on a GPU it doubled the
    # products of 10 features).
    cpu_only = [distances._int8_products_int8] if jax.default_backend() == "cpu" else []
    for product in [distances._int8_products_float32, distances.int8_products] + cpu_only:
      got = jax.jit(product)(x, y)
      assert got.dtype == jnp.int32
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.int64))


def test_int8_products_take_int8_rows_only():
  """Uncentred uint8 pixels (products up to 255**2) would not be exact in float32 blocks:
  int8 rows only, named in the error."""
  x = np.zeros((2, 4), np.int8)
  for bad, name in ((x.astype(np.uint8), "x_AxD"), (x.astype(np.float32), "x_AxD"),
                    (x[0], "x_AxD")):
    with pytest.raises(InputError, match="2-D int8 array .*centred_pixels") as e:
      distances.int8_products(bad, x)
    assert e.value.argument == name
  with pytest.raises(InputError, match="same number of features, got 4 and 3") as e:
    distances.int8_products(x, x[:, :3])
  assert e.value.argument == "y_BxD"
  wide = jax.ShapeDtypeStruct((1, 131072), jnp.int8)
  with pytest.raises(InputError, match="at most 131071 features"):
    jax.eval_shape(distances.int8_products, wide, wide)
  assert jax.eval_shape(distances.int8_products, *[jax.ShapeDtypeStruct((1, 131071), jnp.int8)]
                        * 2).dtype == jnp.int32


def _dots(platform):
  """The operand and result types of the products in int8_products compiled for a platform
  (lowered here, without such a device)."""
  x = jnp.zeros((4, 10), jnp.int8)
  text = jax.export.export(jax.jit(distances.int8_products), platforms=[platform])(x, x)
  return [line.split(" : ")[-1] for line in text.mlir_module().splitlines()
          if "stablehlo.dot_general" in line]


def test_int8_products_pick_the_product_by_the_device_they_compile_for():
  """The CPU keeps its int8 product (fast with int8 matrix instructions); GPUs and TPUs get
  float32 blocks only (XLA's int8 product on a GPU returned wrong sums)."""
  cpu = _dots("cpu")
  assert len(cpu) == 1 and cpu[0].startswith("(tensor<4x10xi8>, tensor<4x10xi8>) -> "
                                              "tensor<4x4xi32>"), cpu
  for platform in ("cuda", "tpu"):
    dots = _dots(platform)
    assert dots and all(d.startswith("(tensor<4x10xf32>, tensor<4x10xf32>) -> tensor<4x4xf32>")
                        for d in dots), dots


def test_returned_distances_from_exact_values():
  """What a search returns from the values it compares: float32, the square root for l2,
  +inf for topk.worst (no row); an unknown metric is named."""
  from jaxlin import topk  # pylint: disable=import-outside-toplevel
  d = np.array([[0, 1, 2, 16, topk.worst(np.int32)]], np.int32)
  got = distances.returned_distances(d, "l2")
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, [[0, 1, np.float32(np.sqrt(np.float32(2))), 4, np.inf]])
  np.testing.assert_array_equal(distances.returned_distances(d, "l1"), [[0, 1, 2, 16, np.inf]])
  with pytest.raises(InputError, match="unknown metric 'l3'") as e:
    distances.returned_distances(d, "l3")
  assert e.value.argument == "metric"


def test_int8_squared_norms_are_the_exact_sums():
  """The exact sums of squares: several row counts, the -128 extreme, no features."""
  rng = np.random.default_rng(4)
  for form in (distances._norms_by_sum, distances.int_squared_norms):
    for n in (0, 1, 63, 64, 65, 200):
      x = rng.integers(-128, 128, (n, 37)).astype(np.int8)
      x[:1] = -128
      got = jax.jit(form)(x)
      assert got.dtype == jnp.int32 and got.shape == (n,)
      np.testing.assert_array_equal(got, (x.astype(np.int64) ** 2).sum(1))
    assert list(form(np.array([[-128] * 3072], np.int8))) == [50331648]
  assert list(distances.int_squared_norms(np.zeros((2, 0), np.int8))) == [0, 0]


def test_squared_norms_are_exact_where_float32_blocks_sum_them():
  """int_squared_norms sums int8 / uint8 squares in float32 column blocks whose partial sums
  stay at or below 2**24: exact for the largest values, at every block boundary, up to
  the most features a search allows (numpy int64 as the reference)."""
  rng = np.random.default_rng(0)
  for dtype, lo, hi in ((np.int8, -128, 127), (np.uint8, 0, 255)):
    for d in (1, 255, 257, 258, 259, 516, 1023, 1024, 1025, 2048, 3072, 16512):
      rows = np.stack([np.full(d, lo), np.full(d, hi), rng.integers(lo, hi + 1, d)]).astype(dtype)
      want = (rows.astype(np.int64) ** 2).sum(1)
      np.testing.assert_array_equal(distances.int_squared_norms(jnp.asarray(rows)), want)
  x = np.full((2, 33025), -255, np.int32)  # the widest rows whose sums stay below 2**31
  x[1, ::2] = 255
  np.testing.assert_array_equal(distances._exact_square_sums(jnp.asarray(x), 255),
                                (x.astype(np.int64) ** 2).sum(1))
  with pytest.raises(InputError, match="2-D rows"):
    distances.int_squared_norms(jnp.zeros((2, 3, 4), jnp.int8))


FLAGS = "fpu sse2 avx2 avx512f avx512_vnni amx_tile arch_lbr"


@pytest.mark.parametrize("reader, flag, other", [
    (distances.cpu_has_amx, "amx_int8", None),  # Intel's AMX int8 products
    (distances.cpu_has_bf16, "avx512_bf16", "amx_bf16"),  # bfloat16 dot products: either
])
def test_cpu_flags_are_read_from_the_cpu_description(tmp_path, reader, flag, other):
  cases = [(f"processor\t: 0\nflags\t\t: {FLAGS} {flag}\n", True),
           (f"processor\t: 0\nflags\t\t: {FLAGS}\n", False),
           ("processor\t: 0\nvendor_id\t: AuthenticAMD\n", False)]
  if other:
    cases.append((f"flags\t\t: {FLAGS} {other}\n", True))
  for j, (text, want) in enumerate(cases):
    path = tmp_path / f"cpuinfo{j}"
    path.write_text(text)
    assert reader(str(path)) is want
  assert reader(str(tmp_path / "missing")) is False  # unreadable: no


def test_building_blocks_refuse_what_they_would_compute_wrong():
  """The public building blocks wrapped int32, truncated floats, reused a feature, or gave
  JAX's tracer error for numpy inputs; what they serve stays exact."""
  x = np.array([[50000, 0], [3, 4]], np.int32)
  with pytest.raises(InputError, match="could square-sum beyond int32") as e:
    distances.int_squared_norms(x)
  assert e.value.argument == "x_NxD"
  with pytest.raises(InputError, match="must hold integers"):
    distances.int_squared_norms(np.array([[0.5, 0.5]], np.float32))
  np.testing.assert_array_equal(distances.int_squared_norms(np.array([[300, 4]], np.int32)),
                                [90016])
  np.testing.assert_array_equal(distances.int_squared_norms(np.full((1, 3072), 255, np.uint8)),
                                [3072 * 255 ** 2])
  with pytest.raises(InputError, match="could sum beyond int32"):
    distances.l1_transposed(np.array([[2_000_000_000]], np.int32),
                            np.array([[-2_000_000_000]], np.int32))
  with pytest.raises(InputError, match=r"shapes \(3, 1\) and \(1, 1\)"):
    distances.l1_transposed(np.ones((3, 1), np.float32), np.zeros((1, 1), np.float32))
  np.testing.assert_array_equal(  # numpy inputs, feature-major: (D, Q) and (D, N)
      distances.l1_transposed(np.array([[1, 5]], np.int32), np.array([[4]], np.int32)),
      [[3], [1]])
