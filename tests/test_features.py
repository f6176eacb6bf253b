import colorsys
import fractions
import math
import os
import stat
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import hosts
from jaxlin import features, files, linear, losses, mlp, train
from jaxlin.errors import InputError


def hog_reference(img, orientations=9, cell=8):
  """Per-pixel loops, written plainly after the course's hog_feature (its grey exact: two
  colours of the same grey give equal floats)."""
  g = (img.astype(np.int64) @ np.array([299, 587, 114])) / 1000.0
  h, w = g.shape
  gx, gy = np.zeros_like(g), np.zeros_like(g)
  for i in range(h):
    for j in range(w - 1):
      gx[i, j] = g[i, j + 1] - g[i, j]
  for i in range(h - 1):
    for j in range(w):
      gy[i, j] = g[i + 1, j] - g[i, j]
  out = np.zeros((h // cell, w // cell, orientations))
  width = 180.0 / orientations
  for ci in range(h // cell):
    for cj in range(w // cell):
      for i in range(ci * cell, ci * cell + cell):
        for j in range(cj * cell, cj * cell + cell):
          mag = np.hypot(gx[i, j], gy[i, j])
          ori = np.degrees(np.arctan2(gy[i, j], gx[i, j])) + 90.0
          for b in range(orientations):
            if width * b <= ori < width * (b + 1) and ori > 0:
              out[ci, cj, b] += mag / (cell * cell)
  return out.ravel()


def exact_hue(r, g, b):
  """The hue of one uint8 pixel as an exact fraction, matplotlib's / colorsys's formula."""
  r, g, b = int(r), int(g), int(b)
  mx, mn = max(r, g, b), min(r, g, b)
  if mx == mn:
    return fractions.Fraction(0)
  d = mx - mn
  if mx == r:
    h6 = fractions.Fraction(g - b, d)
  elif mx == g:
    h6 = 2 + fractions.Fraction(b - r, d)
  else:
    h6 = 4 + fractions.Fraction(r - g, d)
  return (h6 / 6) % 1


def hue_hist_reference(img, bins=10):
  counts = np.zeros(bins)
  for row in img:
    for r, g, b in row:
      counts[math.floor(exact_hue(r, g, b) * bins)] += 1
  return counts / (img.shape[0] * img.shape[1])


def test_hue_on_a_bin_edge_goes_to_the_upper_bin():
  # Hues exactly 0.2 and 0.7 (common in CIFAR-10): float32 put 0.7 in bin 6 of 10.
  img = np.array([[(196, 197, 192), (216, 215, 220)]], np.uint8)
  assert [exact_hue(*p) for p in img[0]] == [fractions.Fraction(1, 5), fractions.Fraction(7, 10)]
  np.testing.assert_array_equal(features.hue_histogram(img), np.eye(10)[[2, 7]].sum(0) / 2)
  # Every hue a pixel can have: the bins of 3, 7, 10 and 12 against exact fractions, and the
  # float hue the nearest float32 (colorsys, in float64, agrees away from the edges).
  rng = np.random.default_rng(5)
  many = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  many[0, :6] = [(255, 255, 0), (255, 0, 255), (0, 255, 255), (3, 3, 3), (10, 0, 5), (0, 0, 1)]
  for bins in (7, 10):
    np.testing.assert_array_equal(features.hue_histogram(many, bins=bins),
                                  hue_hist_reference(many, bins).astype(np.float32))
  h = np.asarray(features.hue(many))
  exact = np.array([[float(exact_hue(*p)) for p in row] for row in many], np.float32)
  np.testing.assert_array_equal(h, exact)
  ref = np.array([[colorsys.rgb_to_hsv(*(p / 255.0))[0] for p in row] for row in many])
  np.testing.assert_allclose(h, ref, atol=1e-6)
  with pytest.raises(InputError, match="bins must be at most"):
    features.hue_histogram(many, bins=features.MAX_BINS + 1)
  # The largest bins: counted, not one-hot over pixels x bins (34 s and 11 GB for 32 x 32).
  top = np.asarray(features.hue_histogram(many[:8, :8], bins=features.MAX_BINS))
  assert top.shape == (features.MAX_BINS,) and top.sum() == pytest.approx(1.0)


def test_hog_literal_vertical_edge():
  # Left half black, right half white: one column of horizontal gradient 255 per row,
  # orientation atan2(0, 255) + 90 = 90 degrees -> bin 4 of 9 ([80, 100)).
  img = np.zeros((8, 8, 3), np.uint8)
  img[:, 4:] = 255
  f = np.asarray(features.hog(img))
  assert f.shape == (9,)
  expected = np.zeros(9)
  expected[4] = 8 * 255.0 / 64  # 8 edge pixels of magnitude 255, averaged over the cell
  np.testing.assert_allclose(f, expected, rtol=1e-5)


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_hog_weighs_the_colours_as_grey_does(channel):
  # A black | red (green, blue) edge: gradient 255 * weight, grey = .299 R + .587 G + .114 B.
  img = np.zeros((8, 8, 3), np.uint8)
  img[:, 4:, channel] = 255
  expected = np.zeros(9)
  expected[4] = 8 * 255.0 * features.GREY[channel] / 64
  assert features.GREY == (0.299, 0.587, 0.114)
  np.testing.assert_allclose(features.hog(img), expected, rtol=1e-5)


def test_colours_of_the_same_grey_make_no_gradient():
  """299 * 139 + 587 * 143 + 114 * 239 = 299 * 157 + 587 * 155 + 114 * 130: a vertical
  edge between the two colours has gx = 0 exactly, so its pixels (gy = -60 below them) are
  in no bin. In float32 gx was +-1 ulp and the pixels were counted, in bin 0 (not in the
  mirror image)."""
  a, b = np.array([139, 143, 239]), np.array([157, 155, 130])
  assert a @ [299, 587, 114] == b @ [299, 587, 114]
  img = np.zeros((8, 8, 3), np.uint8)
  img[:4, :4], img[:4, 4:], img[4:, :4], img[4:, 4:] = a, b, a - 60, b - 60
  for x in (img, img[:, ::-1]):
    f = np.asarray(features.hog(x))
    np.testing.assert_array_equal(f, np.zeros(9))  # was 0.9375 in bin 0
    np.testing.assert_allclose(f, hog_reference(x), atol=1e-7)


def test_hue_histogram_literal_colours():
  img = np.zeros((2, 2, 3), np.uint8)
  img[0, 0] = (255, 0, 0)    # red: hue 0
  img[0, 1] = (0, 255, 0)    # green: hue 1/3
  img[1, 0] = (0, 0, 255)    # blue: hue 2/3
  img[1, 1] = (128, 128, 128)  # grey: hue 0
  np.testing.assert_allclose(features.hue_histogram(img, bins=3), [0.5, 0.25, 0.25])


@pytest.mark.parametrize("seed", [0, 1])
def test_features_match_slow_references_on_random_images(seed):
  rng = np.random.default_rng(seed)
  img = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
  np.testing.assert_allclose(features.hog(img), hog_reference(img), rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(features.hue_histogram(img), hue_hist_reference(img), atol=1e-6)


def test_extract_batches_equal_single_images_and_jit():
  rng = np.random.default_rng(2)
  imgs = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
  f = features.extract(imgs, batch_size=3)  # 7 = 3 + 3 + 1 (padded)
  assert f.shape == (7, 4 * 4 * 9 + 10)
  for i in (0, 6):
    np.testing.assert_allclose(f[i], jnp.concatenate([features.hog(imgs[i]),
                                                      features.hue_histogram(imgs[i])]), rtol=1e-5)
  with pytest.raises(ValueError, match=r"expected images_NxHxWx3 \(N, H, W, 3\)"):
    features.extract(imgs[..., 0])


def test_float_images_are_rejected_not_scaled_and_no_images_give_no_rows(tmp_path):
  img = np.random.default_rng(5).random((8, 8, 3))  # floats in [0, 1]: not pixels
  for f in (features.hog, features.hue_histogram, jax.jit(features.hog)):
    with pytest.raises(InputError, match=r"uint8 pixels .* got float") as e:
      f(img)
    assert e.value.argument == "image_HxWx3"
  with pytest.raises(InputError, match="uint8 pixels") as e:
    features.extract(img[None].astype(np.float32))
  assert e.value.argument == "images_NxHxWx3"
  with pytest.raises(InputError, match="uint8 pixels"):
    features.cached_extract(img[None] * 255, cache_dir=str(tmp_path))
  # No images: (0, F), as a process of a multi-host run that holds no test row needs (it
  # stopped the run with "empty", exit 2, as if a flag were wrong).
  for f in (features.extract, lambda x: features.cached_extract(x, cache_dir=str(tmp_path))):
    out = f(np.zeros((0, 16, 24, 3), np.uint8))
    assert out.shape == (0, 2 * 3 * 9 + 10) and out.dtype == jnp.float32


def test_wrong_pixels_are_told_the_fix_that_fits_their_values():
  # Scaling floats already in 0..255 by 255 would wrap around silently as uint8.
  u8 = np.random.default_rng(6).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  cases = [(u8.astype(np.float32), r"0\.\.255: pass x\.round\(\)\.astype\(np\.uint8\)"),
           (u8 / 255, r"\[0, 1\]: pass \(x \* 255\)\.round\(\)\.astype\(np\.uint8\)"),
           (jnp.asarray(u8 / 255, jnp.bfloat16), r"\[0, 1\]: pass \(x \* 255\)"),
           # [0, 1] images a little past the ends (jitter): clipped, not read as 0..255
           (u8 / 255 * 1.05, r"span 0\.\.1\.05, as images in \[0, 1\]: pass \(np\.clip\(x, 0, 1\)"),
           (u8 - 0.4, r"span -0\.4\.\.254\.6, within 0\.\.255: pass x\.round\(\)"),
           (u8.astype(np.int64), r"within 0\.\.255: pass x\.astype\(np\.uint8\)"),
           (u8 > 100, r"boolean mask\? pass x\.astype\(np\.uint8\) \* 255"),
           (u8 * 2.0, r"span 0\.\.510, outside 0\.\.255: rescale"),
           (np.full((2, 16, 16, 3), np.nan), "must be finite"),
           (u8[0].transpose(2, 0, 1),
            r"one channels-first image\? pass x\.transpose\(1, 2, 0\)\[None\]"),
           (u8.transpose(0, 3, 1, 2), r"channels first\? pass x\.transpose\(0, 2, 3, 1\)"),
           (u8[..., :1], r"grayscale images\? pass np\.repeat\(x, 3, axis=-1\)"),
           (u8[..., 0], r"np\.repeat\(x\[\.\.\., None\], 3, axis=-1\)"),
           (u8[0], r"one image\? pass x\[None\]"),
           (np.concatenate([u8, u8[..., :1]], axis=-1), r"RGBA images\? .* x\[\.\.\., :3\]")]
  for x, fix in cases:
    with pytest.raises(InputError, match=fix) as e:
      features.extract(x)
    assert e.value.argument == "images_NxHxWx3"
  with pytest.raises(InputError, match=r"x\.transpose\(1, 2, 0\)"):
    features.hog(u8[0].transpose(2, 0, 1))
  with pytest.raises(InputError, match=r"jax\.vmap over the batch\), or call features\.extract"):
    features.hog(u8)
  with pytest.raises(InputError, match=r"for floats in \[0, 1\] .* for values in 0\.\.255"):
    jax.jit(features.hog)(u8[0].astype(np.float32))  # values unknown under jit: both fixes


def test_cache_written_with_the_users_umask(tmp_path):
  imgs = np.random.default_rng(6).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
  old = os.umask(0o022)
  try:
    a = features.cached_extract(imgs, cache_dir=str(tmp_path))
  finally:
    os.umask(old)
  (name,) = os.listdir(tmp_path)
  assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644
  np.testing.assert_array_equal(features.cached_extract(imgs, cache_dir=str(tmp_path)), a)


def test_cache_expands_home_and_is_keyed_by_the_code(tmp_path, monkeypatch):
  # "~/c" made a literal "~" folder in the working directory; features saved by older code
  # (before a HOG fix, say) were reused by newer code.
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  imgs = np.random.default_rng(7).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
  a = features.cached_extract(imgs, cache_dir="~/c", cell=4)
  assert not (tmp_path / "~").exists()
  (name,) = os.listdir(tmp_path / "home" / "c")
  entry = str(tmp_path / "home" / "c" / name)
  zeros = np.zeros_like(np.asarray(a))
  with open(entry, "wb") as f:  # a valid entry (its CRC-32 matches): the saved entry is read
    np.savez(f, features=zeros, crc32=np.uint32(zlib.crc32(zeros.data)))
  assert float(np.abs(features.cached_extract(imgs, cache_dir="~/c", cell=4)).max()) == 0.0
  # An entry that is not what was written (rows swapped, NaN, another width, no check) is
  # computed again, not trusted: before, swapped rows were used and the others gave errors
  # about "train_NxF" or "num_examples".
  spoilt = np.asarray(a)[::-1].copy()
  for bad in (dict(features=spoilt, crc32=np.uint32(zlib.crc32(np.asarray(a).data))),
              dict(features=np.full_like(zeros, np.nan), crc32=np.uint32(0)),
              dict(features=np.asarray(a)[:, :5].copy(), crc32=np.uint32(0)),
              dict(features=np.asarray(a))):
    with open(entry, "wb") as f:
      np.savez(f, **bad)
    np.testing.assert_array_equal(features.cached_extract(imgs, cache_dir="~/c", cell=4), a)
  whole = open(entry, "rb").read()
  central = whole.rindex(b"PK\x01\x02")  # the last member's central directory record
  flag, method = central + 8, central + 10  # its "encrypted" bit; its compression method
  for broken in (whole[:len(whole) // 2], whole[:200] + bytes([whole[200] ^ 1]) + whole[201:],
                 whole[:flag] + bytes([whole[flag] | 1]) + whole[flag + 1:],
                 whole[:method] + bytes([99]) + whole[method + 1:]):
    # truncated, one bit flipped: zipfile's errors were raised; "encrypted" and an unknown
    # method: RuntimeError and NotImplementedError failed every later run
    with open(entry, "wb") as f:
      f.write(broken)
    np.testing.assert_array_equal(features.cached_extract(imgs, cache_dir="~/c", cell=4), a)
  monkeypatch.setattr(features, "_code_key", lambda: b"other code")
  np.testing.assert_array_equal(features.cached_extract(imgs, cache_dir="~/c", cell=4), a)
  assert len(os.listdir(tmp_path / "home" / "c")) == 2


def test_standardise_uses_training_statistics():
  tr = jnp.array([[0.0, 1.0], [2.0, 1.0]])
  te = jnp.array([[4.0, 3.0]])
  (a, b), _ = features.standardise(tr, te)
  np.testing.assert_allclose(a, [[-1, 0], [1, 0]])
  np.testing.assert_allclose(b, [[3, 2]])
  (a,), _ = features.standardise(np.array([[0.0], [2e-4]], np.float32))  # small, not constant
  np.testing.assert_allclose(a, [[-1], [1]], rtol=1e-5)


def test_constant_columns_stay_constant_when_their_mean_rounds():
  # The float32 mean of 100 x 0.1 is not 0.1: its std came out 1.5e-8, not 0, and a test
  # value 0.11 became 6.7e5 (the experiments' statistics, over every process, too).
  rng = np.random.default_rng(0)
  tr = np.stack([np.full(100, 0.1), rng.normal(size=100), np.full(100, 123.456)],
                1).astype(np.float32)
  te = np.array([[0.11, 0.0, 123.0]], np.float32)
  for stats in (None, hosts.Hosts("none").feature_stats(tr, len(tr))):
    (a, b), (mean, std) = features.standardise(tr, te, stats=stats)
    np.testing.assert_array_equal(np.asarray(a)[:, [0, 2]], 0)
    np.testing.assert_allclose(np.asarray(b)[0, [0, 2]], [0.01, -0.456], rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(std)[[0, 2]], 1)
    np.testing.assert_allclose(np.asarray(mean)[1], tr[:, 1].mean(), rtol=1e-5)


def test_standardise_keeps_the_spread_of_float64_host_data():
  """Without jax_enable_x64, 1e8 + N(0, 1) in float64 was rounded to float32 first: every
  column came out constant and every feature 0."""
  rng = np.random.default_rng(0)
  x = 1e8 + rng.normal(size=(200, 2))
  x[:, 1] = 1e8  # a constant column: (its value, std 1) as ever
  te = x[:3] + 0.5
  ref = (x[:, 0] - x[:, 0].mean()) / x[:, 0].std()
  (a, b), (mean, std) = features.standardise(x, te)
  assert a.dtype == b.dtype == jnp.float32 and mean.dtype == std.dtype == np.float64
  np.testing.assert_allclose(np.asarray(a)[:, 0], ref, atol=1e-5)
  np.testing.assert_allclose(np.asarray(b)[:, 0], ref[:3] + 0.5 / x[:, 0].std(), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(a)[:, 1], 0)
  assert float(std[1]) == 1.0 and float(mean[1]) == 1e8
  (c,), _ = features.standardise(x, stats=(x.mean(0), np.array([x[:, 0].std(), 1.0])))
  np.testing.assert_allclose(np.asarray(c)[:, 0], ref, atol=1e-5)
  # Its own stats give other rows the same features (a float32 mean shifted them by up to
  # 3 standard deviations at 1e8 + 3).
  (t,), _ = features.standardise(te, stats=(mean, std))
  np.testing.assert_array_equal(t, b)
  with pytest.raises(InputError, match="others\\[0\\] contains 2 NaN"):
    features.standardise(x, np.full((1, 2), np.nan))
  # Beside a traced input (a caller's jit or vmap) float64 rows are JAX's float32, as ever
  # (the numpy path was JAX's TracerArrayConversionError).
  y = rng.normal(size=(8, 3))
  y32 = y.astype(np.float32)
  want = features.standardise(y32, y32[:2])[0][1]
  np.testing.assert_allclose(jax.jit(lambda t: features.standardise(t, y[:2])[0][1])(y32),
                             want, rtol=1e-6)
  m, s = y32.mean(axis=0), y32.std(axis=0)
  np.testing.assert_allclose(jax.jit(lambda ms: features.standardise(y, stats=ms)[0][0])(
      jnp.stack([m, s])), features.standardise(y32, stats=(m, s))[0][0], rtol=1e-6)
  np.testing.assert_allclose(jax.jit(lambda m, s: features.standardise(y, stats=(m, s))[0][0])(
      m, s), features.standardise(y32, stats=(m, s))[0][0], rtol=1e-6)


def test_standardise_with_stats_traced_by_a_callers_jit():
  a = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
  f = jax.jit(lambda a, m, s: features.standardise(a, stats=(m, s))[0][0])  # was a
  np.testing.assert_allclose(f(a, a.mean(0), a.std(0)),  # TracerArrayConversionError
                             (a - a.mean(0)) / a.std(0), rtol=1e-5)
  for stats in (jnp.float32(3.0), {"a": 1, "b": 2}):
    with pytest.raises(InputError, match=r"stats must be a pair \(mean, std\)"):
      features.standardise(a, stats=stats)


def test_mlp_gradients_match_numerical_gradients():
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(10, 5)), rng.integers(0, 3, 10)
  params = mlp.init_params(jax.random.key(0), 5, 7, 3)
  params = {k: v + 0.01 for k, v in params.items()}  # biases off zero: no ReLU kinks at 0
  reg = 0.05

  def f64(p):
    h = np.maximum(x @ p["W1"] + p["b1"], 0)
    s = h @ p["W2"] + p["b2"]
    z = s - s.max(1, keepdims=True)
    data = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y])
    return data + reg * (np.sum(p["W1"] ** 2) + np.sum(p["W2"] ** 2))

  grad = jax.grad(lambda p: train.objective(p, jnp.asarray(x, jnp.float32), y, reg,
                                            apply_fn=mlp.scores,
                                            loss_fn=losses.softmax_cross_entropy)[0])(params)
  p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
  h = 1e-6
  for name in ("W1", "b1", "W2", "b2"):
    for _ in range(5):
      idx = tuple(rng.integers(0, s) for s in p64[name].shape)
      plus = {k: v.copy() for k, v in p64.items()}
      minus = {k: v.copy() for k, v in p64.items()}
      plus[name][idx] += h
      minus[name][idx] -= h
      num = (f64(plus) - f64(minus)) / (2 * h)
      assert float(grad[name][idx]) == pytest.approx(num, rel=1e-3, abs=1e-4), name


def test_mlp_shapes_and_errors():
  p = mlp.init_params(jax.random.key(1), 6, 4, 3)
  assert mlp.scores(p, jnp.ones((2, 6))).shape == (2, 3)
  expected = float(jnp.sum(p["W1"] ** 2) + jnp.sum(p["W2"] ** 2))
  assert float(losses.l2_penalty(p)) == pytest.approx(expected)
  with pytest.raises(ValueError, match=r"expected \(N, 6\)"):
    mlp.scores(p, jnp.ones((2, 5)))
  # A third layer's weights would be ignored by the scores and only shrunk by the penalty.
  with pytest.raises(InputError, match="does not use: W3, b3") as e:
    mlp.scores({**p, "W3": jnp.ones((3, 3)), "b3": jnp.zeros(3)}, jnp.ones((2, 6)))
  assert e.value.argument == "params"
  with pytest.raises(InputError, match="does not use: W1"):
    linear.scores({"W": jnp.ones((6, 3)), "b": jnp.zeros(3), "W1": jnp.ones(1)}, jnp.ones((2, 6)))
  with pytest.raises(InputError, match="params has no 'W'"):  # another model's: not "remove"
    linear.scores(p, jnp.ones((2, 6)))
  for scale in (0.0, -1.0, 1e-320):  # all-zero weights never train past the ReLU
    with pytest.raises(InputError, match="must be > 0 in float32") as e:
      mlp.init_params(jax.random.key(1), 6, 4, 3, scale=scale)
    assert e.value.argument == "scale"
  grid = jax.vmap(lambda s: mlp.init_params(jax.random.key(1), 6, 4, 3, scale=s))(
      jnp.array([0.1, 0.2]))  # a traced scale is the caller's to check
  assert grid["W1"].shape == (2, 6, 4)


def test_both_models_refuse_inputs_their_products_would_change():
  """mlp.scores took 2**32 + 5 (int64) as 5, and complex rows as complex scores; both models
  rounded int32 inputs beyond 2**24 in their float32 products."""
  nets = [(mlp.scores, mlp.init_params(jax.random.key(1), 2, 4, 3)),
          (linear.scores, linear.init_params(jax.random.key(1), 2, 3))]
  for scores, p in nets:
    for x, message in [(np.array([[2 ** 32 + 5, 0]]), r"beyond int32 \(4294967301\)"),
                       (np.array([[1 + 2j, 0]]), "real floats, got dtype complex128"),
                       ([["a", "b"]], "integers or real floats"),
                       (np.array([[2 ** 24 + 1, 0]], np.int32),
                        r"up to 16777217, beyond 2\*\*24, so float32 arithmetic would round")]:
      with pytest.raises(InputError, match=message) as e:
        scores(p, x)
      assert e.value.argument == "x_NxD"
    np.testing.assert_array_equal(scores(p, [[2 ** 24, 1]]),  # exact: still served
                                  scores(p, np.array([[2.0 ** 24, 1.0]], np.float32)))
  bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), nets[1][1])  # products in bfloat16
  with pytest.raises(InputError, match=r"up to 257, beyond 2\*\*8, so bfloat16 arithmetic"):
    linear.scores(bf16, np.array([[257, 0]], np.int16))  # was 256 (257 rounded)
  assert linear.scores(bf16, np.array([[255, 0]], np.uint8)).dtype == jnp.bfloat16
  f8 = jax.tree.map(lambda a: a.astype(jnp.float8_e4m3fn), nets[1][1])  # 4 bits: up to 16
  with pytest.raises(InputError, match=r"beyond 2\*\*4, so float8_e4m3fn"):  # was a KeyError
    linear.scores(f8, np.array([[17, 0]], np.int16))


def test_standardise_refuses_what_would_be_silently_wrong():
  rng = np.random.default_rng(0)
  big = (rng.normal(size=(50, 2)) * 1e20).astype(np.float32)  # squares beyond float32
  (z,), (_, std) = features.standardise(big)  # std was inf and every feature 0
  b64 = big.astype(np.float64)
  np.testing.assert_allclose(z, (b64 - b64.mean(0)) / b64.std(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(std, b64.std(0), rtol=1e-6)
  top = np.array([[2e38, 1.0], [1e38, 2.0], [-2e38 / 3, 3.0]], np.float32)  # 1 / std subnormal
  (z,), _ = features.standardise(top)
  t64 = top.astype(np.float64)
  np.testing.assert_allclose(z, (t64 - t64.mean(0)) / t64.std(0), rtol=1e-5)
  x = rng.normal(size=(20, 4)) * 1000
  (a,), (mean, std) = features.standardise(x.astype(np.float16))  # float16 std overflowed: 0s
  (b,), _ = features.standardise(x.astype(np.float16).astype(np.float32))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert mean.dtype == std.dtype == jnp.float32 and float(jnp.abs(a).max()) > 1
  for stats, message in [((np.zeros(4), np.full(4, np.nan)), "NaN or infinite"),
                         ((np.zeros(4), -np.ones(4)), "std must be >= 0"),
                         ((np.zeros(3), np.ones(3)), r"shape \(4,\) each"),
                         (np.zeros(4), r"a pair \(mean, std\)")]:
    with pytest.raises(InputError, match=message) as e:
      features.standardise(x, stats=stats)
    assert e.value.argument == "stats"
  with pytest.raises(InputError, match="others.0. has 1 features, train_NxF 4"):
    features.standardise(x, np.zeros((3, 1)))  # broadcast before
  with pytest.raises(InputError, match="train_NxF contains 2 NaN"):
    features.standardise(np.array([[np.nan, 1.0], [np.nan, 2.0]]))
  ints = np.array([[2 ** 30], [2 ** 30 + 1], [2 ** 30 + 2]], np.int32)  # e.g. timestamps
  (z, t), (mean, _) = features.standardise(ints, ints[:1] + 4)  # was a constant column: 0s
  np.testing.assert_allclose(np.asarray(z)[:, 0], [-1.5 ** 0.5, 0.0, 1.5 ** 0.5], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(t), [[3 * 1.5 ** 0.5]], rtol=1e-6)
  assert float(mean[0]) == 2.0 ** 30  # the shift added back (2**30 + 1 in float32)
  with pytest.raises(InputError, match=r"others.0. holds integers up to 1073741827, beyond "
                     r"2\*\*24, so float32 arithmetic would round them: subtract a reference"):
    features.standardise(np.zeros((2, 1), np.float32), ints + 1, stats=(np.zeros(1), np.ones(1)))
  (_, h), _ = features.standardise(ints, np.float16([[1.5], [-3.25]]))  # not truncated
  np.testing.assert_allclose(np.asarray(h)[:, 0], (np.float32([1.5, -3.25]) - np.float32(
      2.0 ** 30 + 1)) * 1.5 ** 0.5, rtol=1e-6)
  with pytest.raises(InputError, match="others.0. contains 1 NaN"):
    features.standardise(ints, np.float16([[np.nan]]))
  with jax.enable_x64(True):
    with pytest.raises(InputError, match=r"beyond 2\*\*53, so float64 arithmetic would round "
                       r"them: subtract a reference value first \(e.g. the column minimum, from "
                       r"the data and from a mean given as stats\)$"):  # no x64 advice: it is on
      features.standardise(np.array([[2 ** 60], [2 ** 60 + 1]], np.uint64))
    (z,), _ = features.standardise(ints.astype(np.int64))
    np.testing.assert_allclose(np.asarray(z)[:, 0], [-1.5 ** 0.5, 0.0, 1.5 ** 0.5], rtol=1e-12)


def test_feature_settings_that_describe_nothing_are_refused():
  im = np.zeros((8, 8, 3), np.uint8)
  for call, argument, message in [
      (lambda: features.hog(im, cell=16), "cell", "larger than the 8 x 8 image"),  # was (0,)
      (lambda: features.hog(im, orientations=0), "orientations", "positive int"),
      (lambda: features.hue_histogram(im, bins=0), "bins", "positive int"),  # was empty
      (lambda: features.extract(im[None], batch_size=0), "batch_size", "positive int"),
  ]:
    with pytest.raises(InputError, match=message) as e:
      call()
    assert e.value.argument == argument


def test_an_unwritable_feature_cache_is_one_error(tmp_path, monkeypatch):
  calls, real_extract = [], features.extract
  monkeypatch.setattr(features, "extract", lambda *a, **k: calls.append(1) or real_extract(*a, **k))
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(InputError, match="cannot write the feature cache") as e:
    features.cached_extract(np.zeros((1, 8, 8, 3), np.uint8), cache_dir=str(blocker / "c"),
                            cell=4)
  assert e.value.argument == "cache_dir" and calls == []  # before the work, not after it
  # A write that fails after the work (a full disk): a warning, and the features all the same.

  def full(path, *a, **k):
    raise OSError(28, "No space left on device", path)
  monkeypatch.setattr(files, "atomic_write", full)
  with pytest.warns(UserWarning, match=r"could not keep these features \(No space left"):
    out = features.cached_extract(np.zeros((1, 8, 8, 3), np.uint8),
                                  cache_dir=str(tmp_path / "c"), cell=4)
  assert calls == [1] and out.shape[0] == 1
