"""Pruned search equals brute force on adversarial data; the bounds never exceed distances."""
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlin import bounds, distances, knn, selection, sharding
from jaxlin.errors import InputError

SHAPE = (8, 8, 3)
D = 8 * 8 * 3


def smooth_images(rng, n):
  """Low-frequency images (where the bounds are tight) plus a little noise."""
  coarse = rng.integers(0, 256, (n, 2, 2, 3)).astype(np.float64)
  img = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2) + rng.normal(0, 6, (n, 8, 8, 3))
  return np.clip(img, 0, 255).astype(np.uint8).reshape(n, -1)


def checkerboards(rng, n):
  """Images that differ only in high frequencies: every 2x2 block has the same sum."""
  base = rng.integers(60, 196, (n, 1, 1, 3))
  sign = (np.indices((8, 8)).sum(0) % 2 * 2 - 1)[None, :, :, None]
  amp = rng.integers(0, 60, (n, 1, 1, 1))
  return (base + sign * amp).astype(np.uint8).reshape(n, -1)


def adversarial(seed=0):
  """(queries, database): smooth images, checkerboards, constant images, duplicates, and
  queries equal to database rows."""
  rng = np.random.default_rng(seed)
  db = np.concatenate([smooth_images(rng, 150), checkerboards(rng, 60),
                       np.full((10, D), 7, np.uint8), np.full((5, D), 255, np.uint8),
                       np.zeros((5, D), np.uint8)])
  db = np.concatenate([db, db[:20], db[150:160]])  # duplicates, later indices
  q = np.concatenate([smooth_images(rng, 12), checkerboards(rng, 8), db[[0, 150, 212, 220]],
                      np.full((2, D), 7, np.uint8)])
  return q, db


def assert_same_as_brute(q, db, k, metric, result):
  d, i, stats = result
  bd, bi = knn.search(q, db, k, metric=metric)
  np.testing.assert_array_equal(np.asarray(i), np.asarray(bi))
  np.testing.assert_array_equal(np.asarray(d), np.asarray(bd))
  assert d.dtype == jnp.float32 and i.dtype == jnp.int32
  assert stats["first_round"] + stats["second_round"] + stats["brute_force"] == len(q)
  return stats


# Candidates picked on the host, on the device; the bound's product in either dtype.
@pytest.mark.parametrize("host, dtype", [(True, "float32"), (True, "bfloat16"),
                                         (False, "float32"), (False, "bfloat16")])
def test_adversarial_data_same_as_brute_force_at_every_level(monkeypatch, host, dtype):
  monkeypatch.setattr(bounds, "_host_selects", lambda index: host)
  q, db = adversarial()  # l2_squared: below
  index = bounds.build_index(db, metric="l2", image_shape=SHAPE, pool=2, components=12,
                             bound_dtype=dtype)
  assert index.bound_rows.dtype == dtype
  seen = {"first_round": 0, "second_round": 0, "brute_force": 0}
  for k, c, c2 in ((1, 8, 24), (12, 12, 0)):
    stats = assert_same_as_brute(q, db, k, "l2",
                                 bounds.search(q, index, k, candidates=c, second_candidates=c2))
    for key in seen:
      seen[key] += stats[key]
  assert all(v > 0 for v in seen.values()), seen  # every level engaged and exact


@pytest.mark.parametrize("dtype", bounds.BOUND_DTYPES)
def test_a_staged_round_settles_what_one_round_settles(monkeypatch, dtype):
  # The host's round refines the first 3 c / 10 candidates, then, for the queries left, the
  # rest whose bound is at most the k-th distance found (in widths of 32, 64, ...): the same
  # answers and certificates as one round of c, with both stages at work.
  rng = np.random.default_rng(5)
  db = np.concatenate([smooth_images(rng, 600), checkerboards(rng, 100)])
  q = np.concatenate([smooth_images(rng, 90), checkerboards(rng, 10), db[:4],
                      rng.integers(0, 256, (6, D)).astype(np.uint8)])  # noise: no certificate
  index = bounds.build_index(db, metric="l2", image_shape=SHAPE, components=12,
                             bound_dtype=dtype)
  k, c = 5, 60
  assert bounds._stage_cut(k, c) == 18 and bounds._stage_cut(3, 7) == 3
  assert bounds._stage_cut(10, 160) == 48
  assert bounds._stage_cut(5, 5) is None and bounds._stage_cut(12, 12) is None
  np.testing.assert_array_equal(bounds._later_widths(84), [32, 64, 84])
  np.testing.assert_array_equal(bounds._later_widths(20), [20])
  widths, settle = [], bounds._l2_settle

  def spy(*args, **kwargs):
    if "prev" in kwargs:  # a second stage
      widths.append(args[1].shape[1])
    return settle(*args, **kwargs)
  monkeypatch.setattr(bounds, "_l2_settle", spy)
  d1, i1, ok1 = bounds._run_round(q, index, k, c, 32)
  d2, i2, ok2 = bounds._run_round(q, index, k, c, 16, staged=True)  # widths of 16 queries
  _, _, ok_cut = bounds._run_round(q, index, k, 18, 32)
  np.testing.assert_array_equal(ok2, ok1)
  # 72 settled by the first stage, 32 by the second, 6 by neither (seen when written, in
  # bfloat16; in float32 78, 26 and 6)
  assert ok_cut.sum() > 40 and (ok1 & ~ok_cut).sum() > 10 and (~ok1).sum() > 3
  assert min(widths) == 32 < 42 == max(widths)  # candidates skipped, and all taken
  np.testing.assert_array_equal(d2[ok2], d1[ok1])
  np.testing.assert_array_equal(i2[ok2], i1[ok1])
  bd, bi = knn.search(q[ok2], db, k, metric="l2_squared")
  np.testing.assert_array_equal(i2[ok2], np.asarray(bi))
  np.testing.assert_array_equal(d2[ok2], np.asarray(bd).astype(np.int64))


def test_the_second_stage_skips_only_candidates_beyond_the_kth_distance():
  # _l2_finish's count: the later candidates past it lie strictly farther than the k-th
  # distance of the first stage (so than the true k-th), and it does skip some.
  rng = np.random.default_rng(9)
  db = np.concatenate([smooth_images(rng, 400), checkerboards(rng, 50)])
  q = np.concatenate([smooth_images(rng, 60), checkerboards(rng, 4)])
  index = bounds.build_index(db, metric="l2", image_shape=SHAPE, components=8)
  k, c, cut = 4, 60, 12
  common = {"pixels": index.database, "sq_norms": index.sq_norms, "k": k,
            "params": index.params, "m": bounds._bound_components(index.bound_rows)}
  b, a, err = bounds._l2_bounds(q, index.bound_rows, index.params)
  cand, left_cut, _ = bounds._host_candidates(b, c, cut)
  rest = cand[:, cut:]
  d1, _, _, need = (np.asarray(v) for v in bounds._l2_settle(
      q, cand[:, :cut], left_cut, a, err,
      rest_b=np.take_along_axis(np.asarray(b), rest, axis=1), **common))
  true = ((q.astype(np.int64)[:, None] - db[None].astype(np.int64)) ** 2).sum(-1)
  closer = 0  # later candidates closer than the first stage's k-th: the count must keep them
  for j in range(len(q)):
    assert np.all(true[j, rest[j, need[j]:]] > d1[j, k - 1])
    assert np.sort(true[j])[k - 1] <= d1[j, k - 1]
    closer += np.sum(true[j, rest[j]] <= d1[j, k - 1])
  # Seen when written: 19 of the 64 queries skip some (a count of 0 to 48), 323 closer rows.
  assert (need < c - cut).sum() > 10 and closer > 20


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_l1_levels_same_as_brute_force_on_adversarial_data(monkeypatch, dtype):
  """Small database tiles (several, the last partly padding), small pair blocks (many
  merges), tiles of queries with padding, estimates from strided columns and (more
  estimate rows than columns) from whole rows, every pooling; ties among duplicates and
  constant images."""
  monkeypatch.setattr(bounds, "L1_TILE", 64)
  monkeypatch.setattr(bounds, "_PAIR_BLOCK", 256)
  monkeypatch.setattr(bounds, "_L1_GIVE_UP", 1)  # the levels, whatever passes (test below)
  monkeypatch.setattr(bounds, "_MERGE_PAIRS", 100)  # merges as the batches come
  q, db = adversarial()
  if dtype == np.int8:
    q, db = ((x.astype(np.int16) - 128).astype(np.int8) for x in (q, db))
  n = len(db)
  for pool in (1, 2, 4):
    index = bounds.build_index(db, metric="l1", image_shape=SHAPE, pool=pool)
    assert index.bound_rows.shape == (-(-n // 64), 3 * (-(-8 // pool)) ** 2, 64)
    for k, c, tile in ((1, None, None), (12, 12, 8), (40, 100, 16), (n, None, None)):
      stats = assert_same_as_brute(q, db, k, "l1",
                                   bounds.search(q, index, k, candidates=c, query_tile=tile))
      assert stats["candidates"] == [min(n, max(k, c or max(32, 2 * k))), 0]
      assert stats["first_round"] == len(q)
      assert k * len(q) <= stats["exact_rows"] <= stats["fine_rows"] <= n * len(q)
      if pool > 1 and k == 1:  # the bounds leave most rows out
        assert stats["exact_rows"] < 0.2 * n * len(q), stats


def test_l1_pools_past_the_image_and_thresholds_past_the_rows():
  """A pool larger than the image is the image's size (no overflow for any pool); a
  threshold of more than 1 / 8 of the rows goes to brute force; a large tile is bounded."""
  q, db = adversarial(3)
  index = bounds.build_index(db, metric="l1", image_shape=SHAPE, pool=2 ** 70)
  assert index.bound_rows.shape[1] == 3  # one block per channel
  for c in (None, len(db) // 8 + 1):
    stats = assert_same_as_brute(q, db, 2, "l1",
                                 bounds.search(q, index, 2, candidates=c, query_tile=10 ** 9))
    if c is not None:
      assert stats["brute_force"] == len(q)
  bounds.build_index(db, metric="l1", pool=2 ** 40)  # runs of features: one group


@pytest.mark.parametrize("pool, dtype", [(2, np.uint16), (1, np.int32)])
def test_l1_coarse_sums_in_uint16_up_to_256_and_int32_beyond(monkeypatch, pool, dtype):
  monkeypatch.setattr(bounds, "_L1_GIVE_UP", 1)  # the levels, whatever passes
  rng = np.random.default_rng(11)
  coarse = rng.integers(0, 256, (90, 3, 3, 3)).astype(np.float64)  # 12 x 12 x 3 images
  img = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2) + rng.normal(0, 9, (90, 12, 12, 3))
  x = np.clip(img, 0, 255).astype(np.uint8).reshape(90, -1)
  q, db = x[:10], np.concatenate([x[10:], x[10:20]])  # duplicates: ties
  index = bounds.build_index(db, metric="l1", image_shape=(12, 12, 3), pool=pool)
  assert index.bound_rows.shape[1] == 432 // pool ** 2
  raw, _ = bounds._l1_coarse_step(jnp.asarray(q), index.params["coarse_table"],
                                  index.bound_rows, n=len(db), sub=len(q))
  assert raw.dtype == dtype
  stats = assert_same_as_brute(q, db, 4, "l1", bounds.search(q, index, 4))
  assert stats["first_round"] == len(q)


def test_l1_noise_goes_to_brute_force():
  """Pixel noise: pooled sums all near the mean, the bounds far below every distance."""
  rng = np.random.default_rng(9)
  db = rng.integers(0, 256, (300, D), dtype=np.uint8)
  q = np.concatenate([rng.integers(0, 256, (6, D), dtype=np.uint8), smooth_images(rng, 2)])
  index = bounds.build_index(db, metric="l1", image_shape=SHAPE)
  stats = assert_same_as_brute(q, db, 3, "l1", bounds.search(q, index, 3, query_tile=4))
  assert stats["brute_force"] >= 4 and stats["first_round"] + stats["brute_force"] == len(q)


def test_l1_bounds_never_exceed_the_distance():
  rng = np.random.default_rng(4)
  db = np.concatenate([smooth_images(rng, 30), checkerboards(rng, 30),
                       rng.integers(0, 256, (30, D), dtype=np.uint8),
                       np.zeros((1, D), np.uint8), np.full((1, D), 255, np.uint8)])
  true = np.abs(db[:, None].astype(np.int64) - db[None].astype(np.int64)).sum(-1)
  index = bounds.build_index(db, metric="l1", image_shape=SHAPE, pool=4)
  table, fine_table = index.params["coarse_table"], index.params["fine_table"]
  s, g = table.shape[1], table.shape[0]
  raw, _ = bounds._l1_coarse_step(jnp.asarray(db), table, index.bound_rows, n=len(db), sub=len(db))
  raw = np.asarray(raw).transpose(1, 0, 2).reshape(len(db), -1)[:, :len(db)]
  coarse = s * raw.astype(np.int64) - (s - 1) * g
  qi, ri = (a.reshape(-1) for a in np.indices((len(db), len(db))))
  fine_q = bounds._fine(jnp.asarray(db), fine_table, index.params["fine_rows"].shape[1])
  fine = bounds._pairs_l1(fine_q, qi, ri, index.params["fine_rows"],
                          255 * fine_table.shape[1]).reshape(len(db), len(db))
  assert np.all(coarse <= fine) and np.all(fine <= true)  # 4 x 4 blocks hold 2 x 2 ones
  # Literal: 0 against 255 everywhere, 192 features: 48,960. Fine (2 x 2 sums of 0 and
  # 1,020, 48 of them) is exact; coarse loses 15 per 4 x 4 block: 16 * 255 * 12 - 15 * 12.
  assert true[-2, -1] == fine[-2, -1] == 48960 and coarse[-2, -1] == 48780
  assert np.all(np.diag(coarse) <= 0) and np.all(np.diag(fine) == 0)
  exact = bounds._pairs_l1(jnp.asarray(db), qi, ri, index.database).reshape(len(db), len(db))
  np.testing.assert_array_equal(exact, true)


def test_k_above_distinct_values_ties_by_index():
  rng = np.random.default_rng(1)
  rows = smooth_images(rng, 3)
  db = rows[rng.integers(0, 3, 60)]  # 3 distinct rows, 60 of them
  q = np.concatenate([rows, smooth_images(rng, 2)])
  # The (distance, index) merge is shared by both metrics; L1 ties are covered above.
  index = bounds.build_index(db, metric="l2", components=4)
  assert_same_as_brute(q, db, 25, "l2", bounds.search(q, index, 25, candidates=30))


def test_int8_rows_and_defaults_fall_back_on_small_databases():
  rng = np.random.default_rng(2)
  db = (smooth_images(rng, 40).astype(np.int16) - 128).astype(np.int8)
  q = (smooth_images(rng, 5).astype(np.int16) - 128).astype(np.int8)
  index = bounds.build_index(db, metric="l2", components=8)
  stats = assert_same_as_brute(q, db, 3, "l2", bounds.search(q, index, 3))
  assert stats["brute_force"] == 5  # 256 candidates > 40 rows: brute force directly


@pytest.mark.parametrize("dtype", bounds.BOUND_DTYPES)
@pytest.mark.parametrize("image_shape", [None, SHAPE])  # principal components, the DCT
def test_l2_certified_bound_never_exceeds_the_distance(image_shape, dtype):
  rng = np.random.default_rng(3)
  db = np.concatenate([smooth_images(rng, 100), checkerboards(rng, 50),
                       rng.integers(0, 256, (50, D), dtype=np.uint8),
                       np.zeros((1, D), np.uint8), np.full((1, D), 255, np.uint8)])
  q = jnp.asarray(np.concatenate([db[::7], 255 - db[:20]]))
  index = bounds.build_index(db, metric="l2", components=16, image_shape=image_shape,
                             bound_dtype=dtype)
  assert ("dct_h" in index.params) == (image_shape is not None)
  p = index.params
  ux, a, err = bounds._l2_query_rows(q, p, str(index.bound_rows.dtype))
  b = np.asarray(bounds._bound_product(ux, index.bound_rows[:len(db)]))
  low = np.asarray(bounds._l2_certified_bound(jnp.asarray(b), a[:, None], err[:, None],
                                              p["a_max"], p["err_max"], 16))
  true = ((np.asarray(q, np.int64)[:, None] - db[None].astype(np.int64)) ** 2).sum(-1)
  assert np.all(low <= true)
  assert np.mean(low[:, :150] > 0.5 * true[:, :150]) > 0.5  # and it is a useful bound


def test_l2_certified_bound_takes_off_every_margin():
  bound = lambda b, a_x, e_x, a_y, e_y: int(bounds._l2_certified_bound(
      *(jnp.float32(v) for v in (b, a_x, e_x, a_y, e_y)), 2))
  assert bound(100.0, 10.0, 0.0, 10.0, 0.0) == 99  # (1 - 1e-5) and -1 off 100
  assert bound(100.0, 10.0, 1.0, 10.0, 1.0) == 63  # (10 - 1 - 1)^2 = 64, less the same
  assert bound(1e4, 1.0, 0.0, 1.0, 0.0) == 9999
  assert bound(1e4, 1e4, 0.0, 1e4, 0.0) == 9710  # the rounding: 1.01 gamma_12 (2e4)^2 = 289


def _orthonormal_basis(rng, m, d):
  return np.linalg.qr(rng.normal(size=(d, m)))[0].T  # (m, d), orthonormal rows


@pytest.mark.parametrize("stretch", [1.0, 1.01])  # 1.01: a basis 2 % off orthonormal
def test_l2_row_errors_cover_the_computed_projection(stretch):
  # err bounds |(z, rho) - (Q x_c, |x_c - Q^T Q x_c|)| for the orthonormal Q nearest the basis.
  rng = np.random.default_rng(7)
  q = _orthonormal_basis(rng, 6, D)
  params = bounds._l2_params(stretch * q, np.full(D, 128))
  x = np.concatenate([rng.integers(0, 256, (40, D)), np.zeros((1, D)), np.full((1, D), 255),
                      smooth_images(rng, 10)]).astype(np.uint8)
  z, _, rho, _, err = (np.asarray(v, np.float64) for v in bounds._l2_rows(jnp.asarray(x), params))
  xc = x.astype(np.float64) - 128
  uz = xc @ q.T
  urho = np.linalg.norm(xc - uz @ q, axis=1)
  gap = np.sqrt(((z - uz) ** 2).sum(1) + (rho - urho) ** 2)
  assert np.all(gap <= err)
  if stretch == 1:  # and not vacuous: about 2.5e-5 of the rows' norms (1,100) here
    assert err.max() < 1e-4 * np.linalg.norm(xc, axis=1).max()


@pytest.mark.parametrize("dtype", bounds.BOUND_DTYPES)
@pytest.mark.parametrize("image_shape", [None, SHAPE])
def test_l2_bound_is_exact_where_residuals_are_parallel(image_shape, dtype):
  # y - c = 2 (x - c): the residuals are parallel, the bound meets the distance, and any
  # error the margins do not cover (a residual norm 1 % large, say) would exceed it.
  rng = np.random.default_rng(8)
  db = rng.integers(0, 256, (300, D), dtype=np.uint8)
  index = bounds.build_index(db, metric="l2", components=2, image_shape=image_shape,
                             bound_dtype=dtype)
  p = index.params
  c = np.asarray(p["centre"]).astype(np.int64)
  dx = rng.integers(-50, 51, (50, D))
  assert np.all((c + 2 * dx >= 0) & (c + 2 * dx <= 255))  # no wrap in uint8
  x, y = (c + dx).astype(np.uint8), (c + 2 * dx).astype(np.uint8)
  ux, a_x, err_x = bounds._l2_query_rows(jnp.asarray(x), p, dtype)
  rows, a_y, err_y = bounds._l2_layout(*bounds._l2_rows(jnp.asarray(y), p), dtype=dtype,
                                       query=False)
  # The layout's values are exact in its dtype (the caller converts them).
  np.testing.assert_array_equal(rows, rows.astype(dtype).astype(jnp.float32))
  b = jnp.sum(ux.astype(jnp.float32) * rows, axis=1)
  low = np.asarray(bounds._l2_certified_bound(b, a_x, err_x, a_y, err_y, 2)).astype(np.int64)
  true = ((x.astype(np.int64) - y) ** 2).sum(1)
  assert np.all(low <= true)
  # Tight: so a bound too large by 1 % shows (bfloat16: within its measured rounding).
  assert np.all(low >= (0.99 if dtype == "float32" else 0.98) * true)


def test_dct_matrix_is_the_orthonormal_dct():
  r2, r3, r6 = np.sqrt(2), np.sqrt(3), np.sqrt(6)
  np.testing.assert_allclose(bounds._dct_matrix(1), [[1.0]])
  np.testing.assert_allclose(bounds._dct_matrix(2), [[1 / r2, 1 / r2], [1 / r2, -1 / r2]])
  np.testing.assert_allclose(bounds._dct_matrix(3), [[1 / r3, 1 / r3, 1 / r3],
                                                     [1 / r2, 0, -1 / r2],
                                                     [1 / r6, -2 / r6, 1 / r6]], atol=1e-15)
  c = bounds._dct_matrix(32)
  np.testing.assert_allclose(c @ c.T, np.eye(32), atol=1e-13)


@pytest.mark.parametrize("shape", [(8, 8, 3), (5, 3, 1), (2, 6, 4), (32, 32, 3)])
def test_dct_row_errors_cover_the_computed_coefficients(shape):
  # err bounds |(z^_S, rho^) - (z_S, |z_R|)| for the exact coefficients z of the
  # orthonormal DCT (float64 here), on extreme and random rows.
  h, w, c = shape
  d = h * w * c
  rng = np.random.default_rng(11)
  board = (np.indices((h, w)).sum(0) % 2 * 255)[:, :, None].repeat(c, axis=2).reshape(-1)
  x = np.concatenate([rng.integers(0, 256, (30, d)), np.zeros((1, d)), np.full((1, d), 255),
                      board[None], 255 - board[None]]).astype(np.uint8)
  centre = np.full(d, 128) if d > 100 else rng.integers(0, 256, d)
  m = min(7, d)
  params = bounds._dct_params(shape, x, centre, m)
  z, _, rho, a, err = (np.asarray(v, np.float64) for v in bounds._l2_rows(jnp.asarray(x), params))
  basis = np.einsum("kh,lw,ec->klehwc", bounds._dct_matrix(h), bounds._dct_matrix(w),
                    bounds._dct_matrix(c)).reshape(d, d)
  exact = (x.astype(np.float64) - centre) @ basis.T
  keep = np.asarray(params["keep"])
  rest = np.setdiff1d(np.arange(d), keep)
  gap = np.sqrt(((z - exact[:, keep]) ** 2).sum(1)
                + (rho - np.linalg.norm(exact[:, rest], axis=1)) ** 2)
  assert np.all(gap <= err)
  assert np.all(a >= np.sqrt((z ** 2).sum(1) + rho ** 2) * (1 - 1e-6))
  xnorm = np.linalg.norm(x.astype(np.float64) - centre, axis=1)
  assert err.max() < 5e-4 * xnorm.max()  # and not vacuous (about 3.6e-4 at 32 x 32 x 3)
  # The m coefficients kept are those of largest variance over the rows.
  var = exact.var(axis=0)
  assert var[keep].min() >= np.sort(var)[::-1][m - 1] * (1 - 1e-4)


def test_images_with_a_long_axis_take_principal_components():
  # One stage of the DCT would sum hundreds of terms: a loose bound (and a costly build).
  rng = np.random.default_rng(13)
  for shape, dct in (((1, 85, 3), True), ((1, 86, 3), False), ((257, 1, 1), False),
                     ((256, 1, 1), True)):
    db = rng.integers(0, 256, (20, int(np.prod(shape))), dtype=np.uint8)
    index = bounds.build_index(db, metric="l2", image_shape=shape, components=4)
    assert ("dct_h" in index.params) == dct, shape
  assert_same_as_brute(db[:3], db, 2, "l2", bounds.search(db[:3], index, 2))  # the last


@pytest.mark.parametrize("shape", [(6, 4, 1), (4, 4, 4), (3, 5, 2)])
def test_l2_cascade_on_images_of_any_shape_same_as_brute_force(shape):
  rng = np.random.default_rng(12)
  d = int(np.prod(shape))
  low = rng.integers(0, 256, (60, 1, 1, shape[2]))
  smooth = np.clip(low + rng.normal(0, 8, (60,) + shape), 0, 255).astype(np.uint8)
  db = np.concatenate([smooth.reshape(60, d), rng.integers(0, 256, (40, d), dtype=np.uint8),
                       np.zeros((3, d), np.uint8), smooth.reshape(60, d)[:5]])
  q = np.concatenate([db[[0, 1, 61, 100]], rng.integers(0, 256, (6, d), dtype=np.uint8)])
  for metric in ("l2",) if shape[2] == 1 else ("l2", "l2_squared"):
    index = bounds.build_index(db, metric=metric, image_shape=shape, components=min(5, d))
    stats = assert_same_as_brute(q, db, 4, metric, bounds.search(q, index, 4, candidates=8))
    assert stats["first_round"] > 0
    d_knn, i_knn, how = knn.search(q, db, 4, metric=metric, method="pruned", image_shape=shape,
                                   return_stats=True)
    assert how["method"] == "pruned"
    assert_same_as_brute(q, db, 4, metric, (d_knn, i_knn, how))


def test_merged_answers_tie_by_index():
  d, i = bounds._merged(np.array([[[1, 2]], [[1, 2]]]), np.array([[[5, 6]], [[2, 3]]]), 2)
  assert d.tolist() == [[1, 1]] and i.tolist() == [[2, 5]]


def test_bad_inputs_raise():
  db = np.zeros((10, D), np.uint8)
  with pytest.raises(InputError):
    bounds.build_index(db.astype(np.float32), metric="l2")
  with pytest.raises(InputError):
    bounds.build_index(db, metric="cosine")
  index = bounds.build_index(db, metric="l1", image_shape=SHAPE)
  with pytest.raises(InputError):
    bounds.search(db.astype(np.int8), index, 1)
  with pytest.raises(InputError):
    bounds.search(db, index, 11)
  assert bounds.supports(db, db, "l2") and not bounds.supports(db, db, "cosine")
  assert not bounds.supports(db.astype(np.float32), db.astype(np.float32), "l1")


@pytest.mark.parametrize("n, sample", [(1, 5000), (20, 5000), (20, 1)])
def test_l2_sample_without_spread_still_builds_an_exact_index(n, sample):
  """Equal sample rows (or one row) have no principal components: any orthonormal basis
  is still a valid bound."""
  db = np.full((n, D), 9, np.uint8)  # all equal
  if sample == 1:
    db[n // 2:] = 200  # rows differ, but a sample of one row sees no spread
  q = np.concatenate([db[:1], np.full((1, D), 100, np.uint8), np.zeros((1, D), np.uint8)])
  index = bounds.build_index(db, metric="l2", components=5, sample=sample)
  assert_same_as_brute(q, db, 1, "l2", bounds.search(q, index, 1, candidates=min(8, n - 1) or 1))


BAD_SEARCH = [("candidates", 10.5), ("candidates", "a"), ("candidates", -5),
              ("candidates", True), ("second_candidates", -1), ("query_tile", 0),
              ("query_tile", 2.5), ("callback", 3),
              ("callback", lambda: None)]
BAD_BUILD = [("sample", 0), ("sample", 2.5), ("seed", 1.5), ("seed", 2 ** 70), ("pool", 0),
             ("components", 0), ("bound_dtype", "float16"), ("bound_dtype", "int8"),
             ("bound_dtype", 3),
             ("image_shape", (8, 8)), ("image_shape", (8, 8, 2)), ("image_shape", (8, -8, -3)),
             ("image_shape", 5)]


@pytest.mark.parametrize("name, value", BAD_SEARCH + BAD_BUILD)
def test_bad_arguments_name_themselves(name, value):
  db = smooth_images(np.random.default_rng(6), 40)
  with pytest.raises(InputError) as e:
    if (name, value) in BAD_BUILD:  # each checked by the metric that uses it
      metric = "l1" if name in ("pool", "image_shape") else "l2"
      bounds.build_index(db, metric=metric, **{name: value})
    else:
      bounds.search(db[:3], bounds.build_index(db, metric="l1", image_shape=SHAPE), 2,
                    **{name: value})
  assert e.value.argument == name


def test_index_and_features_must_be_usable():
  with pytest.raises(InputError, match="bounds.build_index"):
    bounds.search(np.zeros((1, D), np.uint8), "index", 1)
  q, db = adversarial()
  with pytest.raises(InputError, match=r"is a bounds.Index: search it with jaxlin.bounds.search") \
      as e:
    knn.search(q, bounds.build_index(db, metric="l1"), 1)
  assert e.value.argument == "database_NxD"
  index = bounds.build_index(db, metric="l2")
  with pytest.raises(InputError, match="is a bounds.Index") as e:
    knn.predict(index, np.zeros(len(db), int), q, k=1, num_classes=1)
  assert e.value.argument == "train_x"
  with pytest.raises(InputError, match="is a bounds.Index") as e:
    selection.cross_validate_knn(index, np.zeros(len(db), int), [1], num_classes=1)
  assert e.value.argument == "x"
  with pytest.raises(InputError, match="features"):
    bounds.build_index(np.zeros((3, 0), np.uint8), metric="l1")


@pytest.mark.parametrize("metric", ["l2", "l1"])
def test_knn_search_methods_agree_and_report_how(metric):
  q, db = adversarial(5)
  bd, bi, bs = knn.search(q, db, 3, metric=metric, method="brute", return_stats=True)
  pd, pi, ps = knn.search(q, db, 3, metric=metric, method="pruned", return_stats=True)
  np.testing.assert_array_equal(np.asarray(pi), np.asarray(bi))
  np.testing.assert_array_equal(np.asarray(pd), np.asarray(bd))
  assert bs == {"method": "brute"}
  assert ps["method"] == "pruned" and ps["queries"] == len(q)
  # L1 without image_shape: runs of consecutive features bound these images too loosely
  # (more than 1 / 8 of the pairs pass the coarse level), so brute force answers.
  assert ps["first_round"] > 0 if metric == "l2" else ps["brute_force"] == len(q)
  assert ps["first_round"] + ps["second_round"] + ps["brute_force"] == len(q)
  if metric == "l1":  # the pixel-block bound of images: the same answer
    sd, si = knn.search(q, db, 3, metric=metric, method="pruned", image_shape=SHAPE)
    np.testing.assert_array_equal(np.asarray(si), np.asarray(bi))
    np.testing.assert_array_equal(np.asarray(sd), np.asarray(bd))
  with pytest.raises(InputError) as e:
    knn.search(q, db, 3, metric=metric, image_shape=(8, 8, 2))  # 128 values for 192 features
  assert e.value.argument == "image_shape"
  _, _, none = knn.search(q[:0], db, 3, metric=metric, method="pruned", return_stats=True)
  assert none == {**ps, "queries": 0, "first_round": 0, "second_round": 0, "brute_force": 0,
                  **{key: 0 for key in bounds.L1_KEYS if key in ps}}
  # auto: brute force below 10,000 rows (nothing timed), the same answer.
  ad, _, stats = knn.search(q, db, 3, metric=metric, return_stats=True)
  assert stats == {"method": "brute"} and np.array_equal(np.asarray(ad), np.asarray(bd))
  preds = knn.predict(db, np.arange(len(db)) % 3, q, k=[1, 3], metric=metric, num_classes=3,
                      method="pruned", image_shape=SHAPE)
  np.testing.assert_array_equal(np.asarray(preds), np.asarray(knn.predict(
      db, np.arange(len(db)) % 3, q, k=[1, 3], metric=metric, num_classes=3, method="brute")))


def test_auto_rule_follows_the_cost_model():
  """The cascade where it was measured faster with its build (AMD EPYC, int8 1.6x float32,
  fresh processes: 10,000 CIFAR-10 queries 4.9 s against brute force's 12.7 s), brute force
  where int8 products are fast (Intel AMX) or the search too small to pay for the build."""
  prefer = functools.partial(bounds.prefer_pruned, bound_dtype="float32")
  assert prefer("l2", 10000, 50000, 3072, speedup=1.62)
  assert prefer("l2", 7000, 50000, 3072, speedup=1.62)  # measured: 4.0 s against 9.0 s
  assert prefer("l2", 4000, 50000, 3072, speedup=1.62)  # measured: 3.2 s against 5.5 s
  assert prefer("l2_squared", 10000, 49000, 3072, speedup=1.4)
  # measured: 2.9-3.0 s against 3.1 s, under the margin of 1.25
  assert not prefer("l2", 2000, 50000, 3072, speedup=1.62)
  assert not prefer("l2", 10 ** 7, 50000, 3072, speedup=6.0)  # Intel AMX: brute force wins
  assert not prefer("l2", 10 ** 7, 9999, 3072, speedup=1.0)
  assert not prefer("l1", 10 ** 7, 50000, 3072, speedup=1.0)  # not images: unmeasured
  # L1 on images (Intel Xeon: 1,000 CIFAR-10 queries 0.70 s with the build, against 2.47 s;
  # 250 queries 0.87 s against 1.23 s, each with its compilation).
  assert prefer("l1", 1000, 50000, 3072, images=True)
  assert prefer("l1", 250, 50000, 3072, images=True)
  assert not prefer("l1", 100, 50000, 3072, images=True)  # the build does not pay
  assert not prefer("l1", 10 ** 6, 9999, 3072, images=True)
  assert not prefer("l1", 10 ** 6, 50000, 3072, k=101, images=True)
  # Small images: part of the cascade's cost per pair does not shrink with the features
  # (one-off, 10,000 rows: 8x8x3 brute force 2x faster, 16x16x3 the cascade 1.45x).
  assert not prefer("l1", 10 ** 5, 10000, 192, images=True)
  assert prefer("l1", 30000, 10000, 768, images=True)
  assert not prefer("l2", 0, 50000, 3072, speedup=1.0)
  # Fewer features: brute force's product shrinks, the bound's does not below 224 components
  # (AMD EPYC, 10,000 queries against 50,000 rows of CIFAR-10 made smaller, with the build
  # and compilation: 32x32x1 the cascade 3.9-4.0 s against 5.2-5.3 s; 8x8x3 2.6 s against
  # 2.2 s; 4x4x1 1.2-1.3 s against 1.5 s, under the margin of 1.25).
  assert prefer("l2", 10000, 50000, 1024, speedup=1.62)
  assert not prefer("l2", 10000, 50000, 192, speedup=1.62)
  assert not prefer("l2", 10000, 50000, 16, speedup=1.62)
  assert prefer("l2", 10000, 50000, 3072, k=100, speedup=1.62)
  assert not prefer("l2", 10 ** 6, 50000, 3072, k=101, speedup=1.0)  # unmeasured
  # More queries pay for the build at a higher int8 speedup.
  assert not prefer("l2", 5000, 50000, 3072, speedup=2.5)
  assert prefer("l2", 40000, 50000, 3072, speedup=2.5)
  # The bound in bfloat16 (AMD EPYC, fresh processes, with the build and compilation:
  # 4,000 queries 3.4-3.5 s against 5.5 s; 3,000 2.8-2.9 s against 4.3-4.4 s; 2,000 2.5-2.9 s
  # against 3.1-3.2 s, under the margin; 1,024 features 2.9-3.2 s against 5.4 s; 192
  # features 1.9-2.2 s against 2.2 s).
  bf16 = functools.partial(bounds.prefer_pruned, bound_dtype="bfloat16")
  assert bf16("l2", 10000, 50000, 3072, speedup=1.62)
  assert bf16("l2", 4000, 50000, 3072, speedup=1.62)
  assert bf16("l2", 3000, 50000, 3072, speedup=1.62)
  assert not bf16("l2", 2000, 50000, 3072, speedup=1.62)
  assert bf16("l2", 10000, 50000, 16, speedup=1.62)  # measured 1.20-1.55 s against 1.57-1.62 s
  assert bf16("l2", 10000, 50000, 1024, speedup=1.62)
  assert not bf16("l2", 10000, 50000, 192, speedup=1.62)
  assert not bf16("l2", 10 ** 7, 50000, 3072, speedup=6.0)
  # AVX-512 VNNI with the native int8 kernel (speedup about 4): measured in fresh processes,
  # 10,000 queries 4.2 s against brute force's 5.9 s; 7,000 4.4 s against 4.3 s.
  assert bf16("l2", 10000, 50000, 3072, speedup=4.1)
  assert not bf16("l2", 7000, 50000, 3072, speedup=4.1)


def test_auto_is_brute_force_on_amx_cpus_without_timing(monkeypatch):
  """On a CPU with AMX (brute force measured 2x faster than the cascade), the rule does not
  rest on a one-off timing that a busy moment could put under its cutoff."""
  def no_timing():
    raise AssertionError("int8_speedup() timed on an AMX CPU")
  monkeypatch.setattr(bounds, "int8_speedup", no_timing)
  monkeypatch.setattr(distances, "cpu_has_amx", lambda: True)
  assert not bounds.prefer_pruned("l2", 10 ** 6, 50000, 3072, bound_dtype="bfloat16")
  assert bounds.prefer_pruned("l2", 10 ** 6, 50000, 3072, bound_dtype="bfloat16", speedup=1.62)


def test_auto_takes_the_cascade_on_cpus_only(monkeypatch):
  """The cost model is the CPU's: on a GPU or TPU "auto" is brute force (one large product
  per tile: 0.5 s for 10,000 CIFAR-10 queries on an H200, the cascade 26 s), where the
  model would choose the cascade on a CPU."""
  q, db = adversarial()
  monkeypatch.setattr(bounds, "prefer_pruned", lambda *a, **kw: True)
  monkeypatch.setattr(knn, "_platform", lambda mesh, database: "cpu")  # as the suite runs on
  _, _, stats = knn.search(q, db, 3, return_stats=True)
  assert stats["method"] == "pruned"
  monkeypatch.setattr(knn, "_platform", lambda mesh, database: "gpu")
  _, _, stats = knn.search(q, db, 3, return_stats=True)
  assert stats == {"method": "brute"}
  # A database on a CPU while the cascade would run on the default device, a GPU.
  monkeypatch.setattr(knn, "_platform", lambda mesh, database: "cpu")
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  _, _, stats = knn.search(q, db, 3, return_stats=True)
  assert stats == {"method": "brute"}


def test_pruned_method_rejects_what_it_does_not_serve():
  q, db = adversarial()
  with pytest.raises(InputError, match="unknown method 'fast'") as e:
    knn.search(q, db, 1, method="fast")
  assert e.value.argument == "method"
  with pytest.raises(InputError, match="both uint8 or both int8"):
    knn.search(q.astype(np.float32), db.astype(np.float32), 1, method="pruned")
  with pytest.raises(InputError, match="metric l1, l2 or l2_squared"):
    knn.search(q, db, 1, metric="cosine", method="pruned")
  with pytest.raises(InputError, match="both uint8 or both int8"):  # checked without queries
    knn.search(q[:0].astype(np.float32), db.astype(np.float32), 1, method="pruned")
  with pytest.raises(InputError, match="at most 16512 features"):
    big = np.zeros((2, bounds.MAX_FEATURES + 1), np.uint8)
    knn.search(big, big, 1, method="pruned")  # L2
  # auto with a mesh is brute force on the mesh; pruned runs on it (tests/multidevice: many
  # devices; tests/test_multihost.py: many processes).
  _, _, stats = knn.search(q, db, 1, mesh=sharding.make_mesh(), return_stats=True)
  assert stats == {"method": "brute"}
  bd, bi = knn.search(q, db, 5)
  for layout in knn.LAYOUTS:
    d, i, stats = knn.search(q, db, 5, method="pruned", mesh=sharding.make_mesh(),
                             layout=layout, return_stats=True)
    np.testing.assert_array_equal(np.asarray(i), np.asarray(bi))
    np.testing.assert_array_equal(np.asarray(d), np.asarray(bd))
    assert stats["layout"] == layout and len(stats["per_device"]) == 1


def test_what_a_new_user_gets_wrong_is_named():
  """An index where rows go (either argument), dtypes as given, prefer_pruned's arguments,
  the candidates of rounds that cannot run, stats of no queries on a mesh."""
  q, db = adversarial()
  index = bounds.build_index(db, metric="l2")
  for call, name in ((lambda: knn.search(index, db, 3), "queries_QxD"),
                     (lambda: knn.predict(db, np.zeros(len(db), int), index, k=1,
                                          num_classes=2), "test_x"),
                     (lambda: bounds.search(index, index, 3), "queries_QxD"),
                     (lambda: bounds.build_index(index), "database_NxD")):
    with pytest.raises(InputError, match="is a bounds.Index") as e:
      call()
    assert e.value.argument == name
  with pytest.raises(InputError, match=r"x.astype\(np.uint8\).*got int64, int64 and 'l2'"):
    knn.search(q.astype(np.int64), db.astype(np.int64), 3, method="pruned")
  for bad, name in ((dict(metric="L2"), "metric"), (dict(num_queries=-1), "num_queries"),
                    (dict(k=0), "k"), (dict(num_features=0), "num_features")):
    args = {"metric": "l2", "num_queries": 10, "num_database": 50000, **bad}
    with pytest.raises(InputError) as e:
      bounds.prefer_pruned(**args, speedup=1.0)
    assert e.value.argument == name
  # 260 rows: the first round (160 candidates) runs, the second (320) cannot.
  _, _, stats = bounds.search(q, index, 3)
  assert stats["candidates"] == [160, 0]
  # A tile larger than the queries: as many as there are (was a 179 GiB allocation).
  d, i, _ = bounds.search(q[:5], index, 3, query_tile=10 ** 9)
  d0, i0 = knn.search(q[:5], db, 3, method="brute")
  np.testing.assert_array_equal(i, i0)
  np.testing.assert_array_equal(d, d0)
  with pytest.raises(InputError, match="image_shape") as e:  # as knn.search says
    bounds.build_index(db, metric="l2", image_shape=(2, 2, 2))
  assert e.value.argument == "image_shape"
  _, _, none = knn.search(q[:0], db, 3, method="pruned", mesh=sharding.make_mesh(),
                          layout="database", return_stats=True)
  assert none["layout"] == "database" and none["candidates"] == [160, 0]
  assert none["per_device"] == [bounds.empty_stats("l2", 3, len(db))]


@pytest.mark.parametrize("host", [True, False])
def test_padding_rows_never_become_neighbours(monkeypatch, host):
  monkeypatch.setattr(bounds, "_host_selects", lambda index: host)
  # 40 rows: groups of 16, the last one partly padding. The 16 far rows fill the group left
  # out, so the chosen groups hold fewer real rows than the 31 candidates asked for.
  rng = np.random.default_rng(0)
  db = rng.integers(0, 10, (40, 16)).astype(np.uint8)
  db[:16] = 255
  db[39] = 0
  q = np.zeros((2, 16), np.uint8)
  for dtype in bounds.BOUND_DTYPES:
    index = bounds.build_index(db, metric="l2", components=4, bound_dtype=dtype)
    assert_same_as_brute(q, db, 3, "l2",
                         bounds.search(q, index, 3, candidates=31, second_candidates=0))
  # Through knn.search: fewer features than the default components, and k = 21 with 180
  # rows (the last group again partly padding).
  db = rng.integers(0, 10, (180, 16)).astype(np.uint8)
  db[:16] = 255
  d, i, stats = knn.search(q, db, 21, method="pruned", return_stats=True)
  bd, bi = knn.search(q, db, 21, method="brute")
  np.testing.assert_array_equal(np.asarray(i), np.asarray(bi))
  np.testing.assert_array_equal(np.asarray(d), np.asarray(bd))
  assert stats["method"] == "pruned"


@pytest.mark.parametrize("n, k, c", [(17, 1, 15), (33, 4, 31), (47, 12, 40), (183, 21, 170)])
def test_database_sizes_around_groups(monkeypatch, n, k, c):
  """Sizes that leave the last group of 16 rows partly padding, with candidate counts close
  to every real row, on random images and on copies (ties); the candidates picked on the
  host, and for two sizes on the device (as off the CPU)."""
  monkeypatch.setattr(bounds, "_host_selects", lambda index: n not in (33, 183))
  rng = np.random.default_rng(n)
  db = np.concatenate([smooth_images(rng, n - n // 3), smooth_images(rng, 1).repeat(n // 3, 0)])
  q = np.concatenate([smooth_images(rng, 6), db[-2:]])
  metric = "l2_squared" if n % 2 else "l2"
  index = bounds.build_index(db, metric=metric, components=6,
                             bound_dtype=bounds.BOUND_DTYPES[n // 17 % 2])  # either, by size
  assert_same_as_brute(q, db, k, metric, bounds.search(q, index, k, candidates=c))


def test_progress_reaches_the_end_once():
  q, db = adversarial()
  calls = []
  bounds.search(q[:16], bounds.build_index(db, metric="l2"), 2, query_tile=1,
                callback=lambda done, total: calls.append((done, total)))
  assert calls == [(8, 16), (16, 16)]  # every 8 tiles, then once at the end


def test_what_a_new_user_gets_wrong_with_shapes_and_jit_is_named():
  rng = np.random.default_rng(14)
  db = rng.integers(0, 256, (40, D), dtype=np.uint8)
  with pytest.raises(InputError, match=r"queries_QxD.*x\.reshape\(1, -1\)"):
    knn.search(db[0], db, 3)  # one row, not a 2-D array of rows
  with pytest.raises(InputError, match=r"x\.reshape\(len\(x\), -1\)"):
    knn.search(db[:2].reshape(2, *SHAPE), db, 3)  # images, not flattened
  index = bounds.build_index(db, metric="l2", image_shape=SHAPE)
  with pytest.raises(InputError, match="bounds.search .*outside jit") as err:
    jax.jit(lambda q: bounds.search(q, index, 3)[:2])(db[:2])
  assert err.value.argument == "queries_QxD"
  with pytest.raises(InputError, match="bounds.build_index .*outside jit") as err:
    jax.jit(lambda x: bounds.build_index(x, metric="l1").database)(db)
  assert err.value.argument == "database_NxD"
  wide = np.zeros((3, bounds.MAX_FEATURES + 1), np.uint8)
  with pytest.raises(InputError, match=r"at most 16512 features for l2 .*method='brute'"):
    knn.search(wide, wide, 1, metric="l2", method="pruned")
  assert bounds.max_features("l1") == 4210752  # L1 distances of uint8 rows below 2**30


def test_l1_cascade_past_the_l2_feature_limit_same_as_brute_force():
  shape = (65, 85, 3)  # 16,575 features: above L2's 16,512
  rng = np.random.default_rng(16)
  low = rng.integers(0, 240, (120, 5, 5, 3)).repeat(13, axis=1).repeat(17, axis=2)
  smooth = (low + rng.integers(0, 8, (120,) + shape)).astype(np.uint8).reshape(120, -1)
  db = np.concatenate([smooth, rng.integers(0, 256, (10, smooth.shape[1]), dtype=np.uint8),
                       smooth[:3]])
  q = np.concatenate([db[[0, 130]], smooth[5:8]])  # 130: a duplicate
  d, i, stats = knn.search(q, db, 4, metric="l1", method="pruned", image_shape=shape,
                           return_stats=True)
  assert stats["method"] == "pruned"
  assert_same_as_brute(q, db, 4, "l1", (d, i, stats))
  index = bounds.build_index(db, metric="l1", image_shape=shape)  # 1,105 coarse sums: int32
  # k = 1: each query's nearest row is a copy, so the bounds rule the others out.
  stats = assert_same_as_brute(q, db, 1, "l1", bounds.search(q, index, 1, candidates=2))
  assert stats["first_round"] == len(q) and stats["exact_rows"] > 0  # the levels, not brute


def test_the_bound_takes_bfloat16_where_the_cpu_has_its_products(monkeypatch):
  db = smooth_images(np.random.default_rng(1), 40)
  for has, want in ((True, jnp.bfloat16), (False, jnp.float32)):
    monkeypatch.setattr(distances, "cpu_has_bf16", lambda has=has: has)
    index = bounds.build_index(db, metric="l2", components=6)
    assert index.bound_rows.shape == (48, 6 + (8 if has else 3))
    assert index.bound_rows.dtype == want
  assert bounds.build_index(db, bound_dtype=jnp.float32).bound_rows.dtype == jnp.float32
  assert bounds._bf16_sums_in_float32()  # XLA's CPU products: bfloat16 pairs summed in float32
  with pytest.raises(InputError, match="this device is a gpu") as err:
    bounds._bound_dtype("bfloat16", "gpu")
  assert bounds._bound_dtype(None, "gpu") == bounds._bound_dtype("float32", "gpu") == "float32"
  # A TPU's float32 products are bfloat16 passes, not IEEE roundings: no L2 bound there.
  tpu = type("Rows", (), {"devices": lambda self: {type("Device", (), {"platform": "tpu"})()}})
  with monkeypatch.context() as m:
    m.setattr(bounds, "_put_committed", lambda rows: tpu())  # as if the default device were one
    with pytest.raises(InputError, match="a TPU emulates with bfloat16 passes; search on the "
                       r"TPU by brute force \(knn.search\(..., method='brute'\)") as err:
      bounds.build_index(db, metric="l2")
    assert err.value.argument == "metric"
  with pytest.raises(InputError, match="bound_dtype") as err:
    bounds.prefer_pruned("l2", 5, 5, bound_dtype="x")  # checked before any early answer
  index = bounds.build_index(db, bound_dtype="bfloat16")
  monkeypatch.setattr(bounds, "_host_selects", lambda index: False)
  monkeypatch.setattr(type(index.database), "devices",  # as if copied to a GPU
                      lambda self: {type("Device", (), {"platform": "gpu"})()})
  with pytest.raises(InputError, match="hold on a CPU only") as err:
    bounds.search(db[:2], index, 1)
  assert err.value.argument == "index"
  # A device that summed bfloat16 products in less: never by default, an error when asked.
  monkeypatch.setattr(distances, "cpu_has_bf16", lambda: True)
  monkeypatch.setattr(bounds, "_bf16_sums_in_float32", lambda: False)
  assert bounds.build_index(db, components=6).bound_rows.dtype == jnp.float32
  with pytest.raises(InputError, match="summed in float32") as err:
    bounds.build_index(db, bound_dtype="bfloat16")
  assert err.value.argument == "bound_dtype"


@pytest.mark.parametrize("arithmetic, passes", [("float32", True), ("bfloat16 sums", False),
                                                ("bfloat16 products", False),
                                                ("truncated sums", False)])
def test_the_bfloat16_check_refuses_every_other_arithmetic(monkeypatch, arithmetic, passes):
  # The bound's proof needs exact products summed in float32, rounded to nearest: the check
  # passes that (as sums in any order would) and fails each other way of summing.
  def rounded(x):
    if arithmetic == "bfloat16 sums":
      return x.astype(np.float32).astype(jnp.bfloat16).astype(np.float64)
    f = x.astype(np.float32)
    if arithmetic == "truncated sums":
      f = np.where(np.abs(f) > np.abs(x), np.nextafter(f, np.float32(0)), f)
    return f.astype(np.float64)

  def product(a, b):  # term by term, in order
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = np.zeros((a.shape[0], b.shape[0]))
    for t in range(a.shape[1]):
      p = a[:, t, None] * b[None, :, t]
      if arithmetic == "bfloat16 products":
        p = p.astype(np.float32).astype(jnp.bfloat16).astype(np.float64)
      out = rounded(out + p)
    return out
  monkeypatch.setattr(bounds, "_bf16_probe", product)
  assert bounds._bf16_sums_in_float32.__wrapped__() is passes


def test_the_cpu_programs_take_classic_emitters_and_the_same_index(monkeypatch):
  # On a CPU the L2 programs are compiled with XLA's classic emitters (they compile
  # faster): the same operations (float sums perhaps in another order: the bound's error
  # terms hold for any order), so the same index; where jax or XLA do not take the option,
  # with XLA's defaults. (The suite compiles every program with the classic emitters, so
  # the comparison below is that of two emitters only with JAXLIN_TEST_XLA_DEFAULTS=1.)
  db = np.random.default_rng(16).integers(0, 256, (45, D), dtype=np.uint8)
  x = jax.device_put(db)
  params = bounds.build_index(db, metric="l2", image_shape=SHAPE, components=9).params
  params = {key: v for key, v in params.items() if key not in ("a_max", "err_max")}
  takes = "compiler_options" in inspect.signature(jax.jit).parameters
  # The option where this XLA has it (jax 0.10.2's does), else none.
  assert bounds._cpu_compiler_options() in (
      ({"xla_cpu_use_fusion_emitters": False}, {}) if takes else ({},))
  for dtype in bounds.BOUND_DTYPES:
    got = bounds._l2_build_on_cpu(x, params, block=16, dtype=dtype)
    want = bounds._l2_build(x, params, block=16, dtype=dtype)
    for g, w in zip(got, want):
      assert g.dtype == w.dtype
      np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64),
                                 rtol=1e-6)
  # The options reach the compiler: an unknown one is refused there.
  monkeypatch.setattr(bounds, "_cpu_compiler_options", lambda: {"xla_cpu_no_such_option": 0})
  if takes:
    with pytest.raises(jax.errors.JaxRuntimeError, match="xla_cpu_no_such_option"):
      bounds._cpu_jit(lambda a: a * 2)(np.int32(4))
  monkeypatch.undo()
  monkeypatch.setattr(bounds, "_CLASSIC_EMITTERS", {"xla_cpu_no_such_option": False})
  bounds._cpu_compiler_options.cache_clear()
  try:
    assert not bounds._cpu_compiler_options()  # XLA without the option: the defaults
    assert bounds._cpu_jit(lambda a: a * 2)(np.int32(4)) == 8
  finally:
    bounds._cpu_compiler_options.cache_clear()


def test_an_index_is_committed_to_its_device():
  # Its search runs where it lives, whatever the default device then (tests/multidevice
  # searches an index built under another default device).
  db = np.random.default_rng(17).integers(0, 256, (40, D), dtype=np.uint8)
  for metric, rows in (("l2", db), ("l1", db), ("l1", jnp.asarray(db))):
    index = bounds.build_index(rows, metric=metric, image_shape=SHAPE)
    assert index.database.committed and index.bound_rows.committed
  assert bounds.build_index(db, metric="l2").bound_rows.committed  # principal components


def test_a_new_users_mistakes_with_an_index_are_named():
  # Found by a trial of the API as a new user: each gets one message naming the argument.
  db = np.random.default_rng(18).integers(0, 256, (60, D), dtype=np.uint8)
  index = bounds.build_index(db, metric="l2", image_shape=SHAPE)
  for other in ("l1", "cosine"):  # an Index changed after build_index
    with pytest.raises(InputError, match="bounds of another metric") as err:
      bounds.search(db[:2], index._replace(metric=other), 1)
    assert err.value.argument == "index"
  for queries, fix in ((db[0], r"x\.reshape\(1, -1\)"),
                       (db[:2].reshape(2, *SHAPE), r"x\.reshape\(len\(x\), -1\)"),
                       (db[:2, :100], f"the index's rows have {D}"),
                       (db[:2].tolist(), r"np\.asarray\(queries, np\.uint8\)")):
    with pytest.raises(InputError, match=fix) as err:
      bounds.search(queries, index, 1)
    assert err.value.argument == "queries_QxD"
  # The L2 bound's arguments are checked for L1 too, where they are unused.
  for kwargs in ({"components": 0}, {"bound_dtype": "float16"}, {"sample": 0}, {"pool": 0}):
    with pytest.raises(InputError) as err:
      bounds.build_index(db, metric="l1", **kwargs)
    assert err.value.argument == next(iter(kwargs))
  with pytest.raises(InputError, match="vmap") as err:
    jax.vmap(lambda q: bounds.search(q[None], index, 1)[0])(jnp.asarray(db[:2]))


def test_an_index_prints_briefly_and_flags_are_booleans():
  db = np.random.default_rng(15).integers(0, 256, (30, D), dtype=np.uint8)
  assert repr(bounds.build_index(db, metric="l2", image_shape=SHAPE,
                                  bound_dtype="bfloat16")) == (
      "Index(metric='l2', rows=30, features=192, dtype='uint8', basis='dct', "
      "bound_dtype='bfloat16')")
  assert repr(bounds.build_index(db, metric="l2_squared", bound_dtype="float32")).endswith(
      "basis='pca', bound_dtype='float32')")
  assert repr(bounds.build_index(db, metric="l1")) == (
      "Index(metric='l1', rows=30, features=192, dtype='uint8')")
  with pytest.raises(InputError, match="return_stats must be True or False") as err:
    knn.search(db[:2], db, 1, return_stats="yes")
  assert err.value.argument == "return_stats"


@pytest.mark.parametrize("host", [True, False])
def test_rounds_need_groups_only_off_the_cpu(monkeypatch, host):
  # 170 rows and the default 160 candidates: the host picks them among all rows; the
  # device's two steps need 161 rows in 160 of the 11 groups, which cannot be.
  monkeypatch.setattr(bounds, "_host_selects", lambda index: host)
  rng = np.random.default_rng(5)
  db = smooth_images(rng, 170)
  q = np.concatenate([smooth_images(rng, 6), db[:2]])
  stats = assert_same_as_brute(q, db, 5, "l2", bounds.search(q, bounds.build_index(db), 5))
  assert stats["candidates"] == ([160, 0] if host else [0, 0])  # 320 + 1 rows: none
  assert (stats["first_round"] > 0) == host
  assert bounds.empty_stats("l2", 5, 170, host=host)["candidates"] == stats["candidates"]


def test_query_tiles_keep_their_bounds_under_256_mb():
  assert [bounds._memory_tile(n) for n in (50_000, 10 ** 6, 10 ** 8)] == [1024, 64, 8]
  assert bounds._query_tile("l2", 10 ** 6, 10 ** 5) == 64
  assert bounds._query_tile("l2", 50_000, 10 ** 5, second=True) == 64
  assert bounds._query_tile("l1", 50_000, 10 ** 5) == 1024
  assert bounds._query_tile("l2", 50_000, 5) == 8


def test_a_users_query_tile_bounds_every_step(monkeypatch):
  # The first round, its second stage, the second round and brute force: no step takes
  # more queries than the user's tile.
  seen = {}
  for name in ("_l2_bounds", "_l2_settle", "_l2_all"):
    def spy(q, *args, _name=name, _fn=getattr(bounds, name), **kwargs):
      seen.setdefault(_name, []).append(q.shape[0])
      return _fn(q, *args, **kwargs)
    monkeypatch.setattr(bounds, name, spy)
  q, db = adversarial()
  index = bounds.build_index(db, metric="l2", image_shape=SHAPE, pool=2, components=12)
  levels = {"second_round": 0, "brute_force": 0}
  for k, c, c2 in ((1, 8, 24), (12, 12, 0)):
    stats = assert_same_as_brute(q, db, k, "l2", bounds.search(
        q, index, k, candidates=c, second_candidates=c2, query_tile=4))
    levels = {key: v + stats[key] for key, v in levels.items()}
  assert all(levels.values()), levels
  assert {max(v) for v in seen.values()} == {4} and len(seen) == 3, seen


@pytest.mark.parametrize("shape, pool", [((8, 8, 3), 4), ((8, 8, 3), 2), ((4, 12, 2), 2),
                                         ((6, 6, 1), 1)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_whole_block_sums_by_reshape_equal_the_gathered_sums(shape, pool, dtype):
  rng = np.random.default_rng(11)
  x = jnp.asarray(rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max + 1,
                               (5, int(np.prod(shape)))).astype(dtype))
  table = jnp.asarray(bounds._pool_table(bounds._groups(x.shape[1], shape, pool)))
  assert bounds._whole_blocks(shape, pool, max(1, pool // 2)) == shape
  for dt in (jnp.int32, jnp.int16):
    np.testing.assert_array_equal(np.asarray(bounds._pooled_sums(x, table, dt, shape)),
                                  np.asarray(bounds._pooled_sums(x, table, dt)))
  assert bounds._whole_blocks((6, 6, 3), 4) is None and bounds._whole_blocks(None, 2) is None
