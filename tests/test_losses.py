import dataclasses
import re
import functools
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlin import linear, losses, metrics, mlp, train
from jaxlin.errors import InputError

# The lecture's table: three training images (cat, car, frog), scores for (cat, car, frog).
SCORES = np.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]], np.float32)
LABELS = np.array([0, 1, 2])


def test_svm_lecture_numbers():
  l = losses.multiclass_svm(SCORES, LABELS)
  np.testing.assert_allclose(l, [2.9, 0.0, 12.9], rtol=1e-5, atol=1e-5)
  assert float(jnp.mean(l)) == pytest.approx(5.27, abs=0.005)


def test_svm_squared_and_margin():
  np.testing.assert_allclose(losses.multiclass_svm(SCORES, LABELS, squared=True),
                             [2.9 ** 2, 0.0, 6.3 ** 2 + 6.6 ** 2], rtol=1e-5)
  np.testing.assert_allclose(losses.multiclass_svm(SCORES, LABELS, margin=0.0), [1.9, 0.0, 10.9],
                             rtol=1e-5)


def test_svm_gradient_at_a_margin_of_zero_is_the_courses():
  """Scores 2, 1, 3 for label 0: class 1's margin is exactly 0 (1 - 2 + 1), class 2's 2.
  The course's gradient counts only margins above 0; jnp.maximum's gradient gave class 1
  half a count (0.5) and the correct class -1.5."""
  g = jax.grad(lambda s: losses.multiclass_svm(s, np.array([0]))[0])(
      jnp.array([[2.0, 1.0, 3.0]]))
  np.testing.assert_array_equal(g, [[-1.0, 0.0, 1.0]])
  # A NaN score stays a NaN loss (a where(m > 0, m, 0) made it 0: no divergence was seen).
  np.testing.assert_array_equal(
      losses.multiclass_svm(np.array([[np.nan, 1, 2], [1, 2, 3]]), np.array([0, 1])),
      [np.nan, 2.0])


def test_softmax_lecture_numbers():
  p = jax.nn.softmax(jnp.array([3.2, 5.1, -1.7]))
  np.testing.assert_allclose(p, [0.13, 0.87, 0.00], atol=0.005)
  np.testing.assert_allclose(losses.softmax_cross_entropy(SCORES[:1], LABELS[:1]), [-np.log(p[0])],
                             rtol=1e-5)


def test_float64_scores_keep_their_differences_without_x64():
  """JAX rounds float64 to float32, where 1e8 + (0, 2, 3) are one value: the SVM loss came
  out 2 (of 7) and softmax log 3. Each row is shifted by its largest score first, in
  float64: neither loss changes."""
  s = [[1e8, 1e8 + 2, 1e8 + 3], [np.inf, 0.0, 1.0]]
  y = np.array([0, 1])
  svm, ce = losses.multiclass_svm(s, y), losses.softmax_cross_entropy(np.array(s), y)
  np.testing.assert_allclose(svm[0], 7.0)
  np.testing.assert_allclose(ce[0], 3 + np.log1p(np.exp(-1) + np.exp(-3)), rtol=1e-6)
  assert np.asarray(svm)[1] == np.inf and np.asarray(ce)[1] == np.inf  # as without a shift
  # A row spanning more than float32's range is not shifted (its shifted scores were -inf,
  # and the SVM's -inf - -inf NaN).
  wide = np.array([[3e38, -2e38, -2.5e38]])
  assert np.asarray(losses.multiclass_svm(wide, np.array([2])))[0] == np.inf


def test_softmax_is_stable_for_huge_scores():
  s = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], np.float32)
  l = losses.softmax_cross_entropy(s, np.array([1, 0]))
  assert np.all(np.isfinite(l))
  np.testing.assert_allclose(l, [2e4, np.log(3)], rtol=1e-6)
  # A correct class of score -inf has probability 0: the loss is +inf, not NaN.
  l = losses.softmax_cross_entropy(np.array([[1.0, -np.inf], [-np.inf, 2.0]], np.float32),
                                   np.array([1, 1]))
  assert np.asarray(l)[0] == np.inf and np.asarray(l)[1] == 0.0


def _np_svm(s, y, margin=1.0, squared=False):
  out = []
  for i in range(len(y)):
    total = 0.0
    for j in range(s.shape[1]):
      if j != y[i]:
        m = max(0.0, s[i, j] - s[i, y[i]] + margin)
        total += m * m if squared else m
    out.append(total)
  return np.array(out)


def _np_softmax(s, y):
  out = []
  for i in range(len(y)):
    z = s[i] - s[i].max()
    out.append(-(z[y[i]] - np.log(np.exp(z).sum())))
  return np.array(out)


@pytest.mark.parametrize("squared", [False, True])
def test_losses_match_naive_loops_on_random_data(squared):
  rng = np.random.default_rng(0)
  s, y = rng.normal(size=(50, 7)) * 3, rng.integers(0, 7, 50)
  np.testing.assert_allclose(losses.multiclass_svm(s.astype(np.float32), y, squared=squared),
                             _np_svm(s, y, squared=squared), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(losses.softmax_cross_entropy(s.astype(np.float32), y),
                             _np_softmax(s, y),
                             rtol=1e-5, atol=1e-5)


def test_initial_loss_is_about_c_minus_1_and_log_c():
  x = np.random.default_rng(1).normal(size=(500, 100)).astype(np.float32)
  y = np.random.default_rng(2).integers(0, 10, 500)
  p = linear.init_params(jax.random.key(0), 100, 10, scale=1e-4)
  s = linear.scores(p, x)
  assert float(jnp.mean(losses.multiclass_svm(s, y))) == pytest.approx(9.0, abs=0.05)
  assert float(jnp.mean(losses.softmax_cross_entropy(s, y))) == pytest.approx(np.log(10), abs=0.01)


def test_initial_params_have_the_documented_scales_and_zero_biases():
  p = linear.init_params(jax.random.key(0), 400, 50, scale=1e-3)
  assert np.asarray(p["b"]).tolist() == [0.0] * 50
  assert float(jnp.std(p["W"])) == pytest.approx(1e-3, rel=0.02)
  q = mlp.init_params(jax.random.key(0), 800, 200, 10)
  assert not np.asarray(q["b1"]).any() and not np.asarray(q["b2"]).any()
  assert float(jnp.std(q["W1"])) == pytest.approx((2 / 800) ** 0.5, rel=0.02)  # He
  assert float(jnp.std(q["W2"])) == pytest.approx((2 / 200) ** 0.5, rel=0.05)


def test_l2_penalty_skips_biases():
  p = {"W": jnp.array([[1.0, 2.0]]), "b": jnp.array([10.0, 10.0])}
  assert float(losses.l2_penalty(p)) == 5.0


def test_l2_penalty_over_any_pytree():
  w, b = jnp.array([[1.0, 2.0]]), jnp.array([10.0, 10.0])
  flax_style = {"params": {"Dense_0": {"kernel": w, "bias": b}, "Dense_1": {"kernel": 2 * w}}}
  assert float(losses.l2_penalty(flax_style)) == 25.0
  assert float(losses.l2_penalty({"w1": w, "b1": b})) == 5.0
  layers = {"layers": [{"w": w, "b": b}, {"w": w, "b": b}]}  # a list of layers
  assert float(losses.l2_penalty(layers)) == 10.0
  assert float(losses.l2_penalty(layers, mask=lambda path, v: path == "layers/1/w")) == 5.0
  mask = {"layers": [{"w": True, "b": True}, {"w": False, "b": False}]}
  assert float(losses.l2_penalty(layers, mask=mask)) == 205.0
  assert float(losses.l2_penalty({"b": b})) == 0.0  # nothing penalised
  # A matrix as nested lists is a tree of scalars: its penalty would silently be 0, also
  # under jit (the tree's structure is static). Scalars and flat lists are not weights.
  @jax.tree_util.register_dataclass
  @dataclasses.dataclass
  class Layer:
    w: typing.Any

  for bad, where in (([[1.0, 2.0], [3.0, 4.0]], "its top level"),
                     ({"W": [[1.0, 2.0]], "b": b}, "'W'"), ({"W": ((1, 2), (3, 4))}, "'W'"),
                     ({"W": [(1.0, 2.0), (3.0, 4.0)]}, "'W'"),
                     ([Layer([[1.0, 2.0]])], "'0/w'")):  # inside any pytree node
    for f in (losses.l2_penalty, jax.jit(losses.l2_penalty)):
      with pytest.raises(InputError, match=f"nested list of numbers at {where}") as e:
        f(bad)
      assert e.value.argument == "params"
  assert float(losses.l2_penalty({"W": w, "scale": 1.0, "t": [1.0, 2.0]})) == 5.0
  # A layer as a tuple with scalars in it, or a list of such tuples, is no matrix.
  for params in ([(w, b, jnp.array(0.5))], [(w, 2.0)], {"W": w, "x": [[None, None]]}):
    assert float(losses.l2_penalty(params)) == 5.0
  assert float(losses.l2_penalty({"W": [[1.0, 2.0]]}, mask={"W": [[True, False]]})) == 1.0
  with pytest.raises(InputError, match="structure of params") as e:
    losses.l2_penalty(layers, mask={"layers": True})
  assert e.value.argument == "mask"
  p = {"W": jnp.ones((2, 2)), "b": jnp.ones(2)}
  for call, message in [  # were TracerBoolConversionError, and 2 (a count, not a choice)
      (lambda: jax.jit(lambda on: losses.l2_penalty(p, mask={"W": on, "b": False}))(True),
       "mask's leaves must be concrete bools: .*build it outside jax.jit"),
      (lambda: losses.l2_penalty(p, mask={"W": 2, "b": False}),
       "mask's leaves must be True or False, got 2")]:
    with pytest.raises(InputError, match=message) as e:
      call()
    assert e.value.argument == "mask"
  assert float(losses.l2_penalty(p, mask={"W": np.bool_(True), "b": False})) == 4.0
  with pytest.raises(InputError, match=r"params\['W'\] is a list: pass an array") as e:
    linear.scores({"W": [[1.0, 2.0]], "b": [0.0, 0.0]}, np.ones((1, 1)))  # was a TypeError
  assert e.value.argument == "params"


@pytest.mark.parametrize("loss", ["svm", "softmax"])
def test_gradient_matches_numerical_gradient(loss):
  """Sparse gradient check as in the course: centred differences of a float64 numpy objective."""
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(20, 8)), rng.integers(0, 4, 20)
  w, b, reg = rng.normal(size=(8, 4)) * 0.5, rng.normal(size=4) * 0.1, 0.3
  np_loss = _np_svm if loss == "svm" else _np_softmax

  def f_np(w_, b_):
    return np_loss(x @ w_ + b_, y).mean() + reg * np.sum(w_ * w_)

  params = {"W": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
  grad = jax.grad(lambda p: train.objective(p, jnp.asarray(x, jnp.float32), y, reg,
                                            apply_fn=linear.scores,
                                            loss_fn=losses.LOSSES[loss])[0])(params)
  h = 1e-5
  for _ in range(12):
    i, j = rng.integers(0, 8), rng.integers(0, 4)
    wp, wm = w.copy(), w.copy()
    wp[i, j] += h
    wm[i, j] -= h
    numeric = (f_np(wp, b) - f_np(wm, b)) / (2 * h)
    assert float(grad["W"][i, j]) == pytest.approx(numeric, rel=2e-3, abs=2e-4)
  for j in range(4):
    bp, bm = b.copy(), b.copy()
    bp[j] += h
    bm[j] -= h
    numeric = (f_np(w, bp) - f_np(w, bm)) / (2 * h)
    assert float(grad["b"][j]) == pytest.approx(numeric, rel=2e-3, abs=2e-4)


@pytest.mark.parametrize("loss", ["svm", "softmax"])
def test_jit_equals_eager(loss):
  rng = np.random.default_rng(4)
  s, y = rng.normal(size=(9, 5)).astype(np.float32), rng.integers(0, 5, 9)
  f = losses.LOSSES[loss]
  np.testing.assert_allclose(jax.jit(f)(s, y), f(s, y), rtol=1e-6)


def test_shape_and_dtype_errors():
  with pytest.raises(ValueError, match="expected scores"):
    losses.softmax_cross_entropy(SCORES, LABELS[:2])
  with pytest.raises(ValueError, match="labels must be integers"):
    losses.multiclass_svm(SCORES, LABELS.astype(np.float32))
  for f in (losses.multiclass_svm, losses.softmax_cross_entropy):
    for bad in ([0, 1, 3], [0, -1, 2]):
      with pytest.raises(InputError, match=r"labels must lie in \[0, 3\)") as e:
        f(SCORES, np.array(bad))
      assert e.value.argument == "labels_N"
      # Under jit labels cannot be checked: their losses are NaN, not a clipped class's.
      loss = np.asarray(jax.jit(f)(SCORES, np.array(bad)))
      assert np.isnan(loss[np.array(bad) != np.array([0, 1, 2])]).all()
      assert np.isfinite(loss[np.array(bad) == np.array([0, 1, 2])]).all()
  with pytest.raises(InputError, match=r"scores_NxC must be 2-D \(N, C\), got shape \(3,\)") as e:
    losses.multiclass_svm(SCORES[0], LABELS[0])  # was blamed on the labels
  assert e.value.argument == "scores_NxC"
  with pytest.raises(InputError, match="margin must be a finite number"):
    losses.multiclass_svm(SCORES, LABELS, margin=np.array([1.0, 2.0, 3.0]))  # was per class
  # A correct score of +inf alone: probability 1, loss 0 (was NaN); two +inf: undefined.
  inf = np.inf
  np.testing.assert_array_equal(
      losses.softmax_cross_entropy(np.array([[inf, 0, 0], [inf, inf, 0], [0, inf, 0]]),
                                   np.array([0, 0, 0])), [0.0, np.nan, inf])
  with pytest.raises(ValueError, match=r"expected \(N, 3\)"):
    linear.scores(linear.init_params(jax.random.key(0), 3, 2), np.zeros((4, 5), np.float32))


def test_values_jax_would_change_are_refused_and_integer_weights_do_not_wrap():
  big = np.array([2 ** 32, 0, 1], np.int64)  # without jax_enable_x64 JAX wraps it to class 0
  for f in (losses.multiclass_svm, losses.softmax_cross_entropy):
    with pytest.raises(InputError, match=r"beyond int32 \(4294967296\)") as e:
      f(SCORES, big)
    assert e.value.argument == "labels_N"
  with pytest.raises(InputError, match="squared must be True or False") as e:
    losses.multiclass_svm(SCORES, LABELS, squared="no")
  for margin in ("1", None, float("nan")):
    with pytest.raises(InputError, match="margin must be a finite number") as e:
      losses.multiclass_svm(SCORES, LABELS, margin=margin)
    assert e.value.argument == "margin"
  with pytest.raises(InputError, match="integers or real floats, got dtype complex64"):
    losses.softmax_cross_entropy(SCORES.astype(np.complex64), LABELS)  # was a complex loss
  # Integer scores are scores: the same losses as their float values.
  ints = np.round(SCORES).astype(np.int32)
  np.testing.assert_array_equal(np.asarray(losses.multiclass_svm(ints, LABELS)),
                                np.asarray(losses.multiclass_svm(ints.astype(np.float32),
                                                                 LABELS)))
  # Integers beyond what float32 holds: refused, or in float64 under jax_enable_x64.
  wide = np.array([[2 ** 30, 2 ** 30 + 3]], np.int32)
  with pytest.raises(InputError, match=r"scores_NxC holds integers up to 1073741827, beyond "
                     r"2\*\*24") as e:
    losses.multiclass_svm(wide, np.array([0]))  # was 1.0: both scores rounded to 2**30
  with jax.enable_x64(True):
    assert float(losses.multiclass_svm(wide.astype(np.int64) << 10, np.array([0]))[0]) == 3073.0
  # int8 weights: 4 * 100**2, not the int8 wrap-around.
  assert float(losses.l2_penalty({"W": np.full((2, 2), 100, np.int8)})) == 40000.0


def test_metrics_refuse_what_they_cannot_count():
  with pytest.raises(InputError, match="labels_N must hold integer class labels") as e:
    metrics.confusion_matrix(np.array([1.7]), np.array([1]), 3)  # was counted as class 1
  with pytest.raises(InputError, match="num_classes must be an integer, got 3.0"):
    metrics.confusion_matrix(np.array([1]), np.array([1]), 3.0)
  with pytest.raises(InputError, match=r"beyond int32 \(4294967296\)"):
    metrics.accuracy(np.array([2 ** 32], np.int64), np.array([0]))  # was 1.0
  with pytest.raises(InputError, match=r"square \(C, C\) matrix, got shape \(2, 3\)") as e:
    metrics.per_class_accuracy(np.array([[3, 1, 0], [0, 2, 5]]))
  assert e.value.argument == "confusion_CxC"
  with pytest.raises(InputError, match="negative counts"):
    metrics.per_class_accuracy(np.array([[3, -1], [0, 2]]))
  with pytest.raises(InputError, match="NaN or inf"):  # was a recall of NaN
    metrics.per_class_accuracy(np.array([[np.nan, 1.0], [0.0, 2.0]]))
  assert float(metrics.accuracy([1, 2, 3, 4], [1, 2, 0, 0])) == 0.5
  for labels in (np.eye(2, dtype=int), np.array([[0, 1]])):  # one-hot rows, a row vector
    with pytest.raises(InputError, match=r"labels_N must be 1-D \(one class label per "
                       r"example\), got shape .*; for one-hot rows pass their argmax"):
      metrics.accuracy(labels, labels)  # was 2.0: every element counted, divided by N
  # Valid labels of other dtypes still count: bools, and floats for accuracy (exact equality).
  assert float(metrics.accuracy(np.array([True, False]), np.array([True, True]))) == 0.5
  assert float(metrics.accuracy(np.array([0.0, 1.0, 2.0, 2.0]), np.array([0, 1, 1, 2]))) == 0.75
  assert float(metrics.accuracy([0.5, 1.0], [0, 1])) == 0.5  # 0.5 is not class 0
  with pytest.raises(InputError, match=r"labels_N holds integers up to 1073741825, beyond "
                     r"2\*\*24") as e:  # compared in float32: was 1.0
    metrics.accuracy(np.array([2 ** 30 + 1]), np.array([2 ** 30], np.float32))
  assert e.value.argument == "labels_N"
  assert float(metrics.accuracy(np.array([1000, 3000]), np.array([1000, 3000], np.float16))) == 1
  with pytest.raises(InputError, match="holds float128, which JAX has no type for"):
    metrics.accuracy(np.array([1.0], np.longdouble), np.array([1]))  # was JAX's TypeError
  with pytest.raises(InputError, match="preds_N contains 1 NaN or infinite value") as e:
    metrics.accuracy(np.array([0, 1]), np.array([np.nan, 1.0]))  # was 0.5
  assert e.value.argument == "preds_N"
  assert metrics.confusion_matrix(np.array([True, False]), np.array([True, True]),
                                  2).tolist() == [[0, 1], [0, 1]]


def test_metrics_count_without_overflow_or_wrapping():
  """float16 counts whose row overflows float16, int32 counts whose row wraps, and uint32
  labels beyond int32 against int32 predictions (JAX compares them in int32 without x64,
  where 3e9 equals 3e9 - 2**32)."""
  np.testing.assert_allclose(metrics.per_class_accuracy(
      np.array([[40000, 30000], [0, 10]], np.float16)), [4 / 7, 1.0], rtol=1e-6)  # was 0
  np.testing.assert_allclose(metrics.per_class_accuracy(
      np.array([[1_500_000_000, 1_500_000_000], [0, 1]], np.int64)), [0.5, 1.0])  # was NaN
  with jax.enable_x64(True):  # float64 recalls stay float64 (they were summed in float32)
    assert metrics.per_class_accuracy(np.array([[100000001, 3], [0, 1]]))[0] == 100000001 / (
        100000004)
  labels = jnp.asarray(np.array([3_000_000_000, 7], np.uint32))
  preds = jnp.asarray(np.array([-1_294_967_296, 7], np.int32))
  for accuracy in (metrics.accuracy, jax.jit(metrics.accuracy)):
    assert float(accuracy(labels, preds)) == 0.5  # was 1.0
    assert float(accuracy(preds, labels)) == 0.5


def test_confusion_matrix_under_jit_leaves_out_of_range_pairs_out():
  """Traced labels cannot be checked: a pair outside [0, C) is not counted (it used to be
  clipped into class 0 or spill into the next row's cells)."""
  cm = jax.jit(metrics.confusion_matrix, static_argnums=2)
  assert cm(jnp.array([-1, 0]), jnp.array([1, 0]), 3).tolist() == [[1, 0, 0], [0, 0, 0],
                                                                   [0, 0, 0]]
  assert cm(jnp.array([0, 2, 1]), jnp.array([5, 2, 1]), 3).tolist() == [[0, 0, 0], [0, 1, 0],
                                                                        [0, 0, 1]]
  assert cm(jnp.array([0, 1, 1]), jnp.array([0, 1, 0]), 2).tolist() == [[1, 0], [1, 1]]
  assert metrics.confusion_matrix([], [], 3).tolist() == [[0] * 3] * 3  # empty lists


def test_narrow_label_dtypes_are_compared_without_wrapping():
  """uint8 labels with 256 classes (255 < 256 must not wrap to 255 < 0)."""
  scores = np.zeros((2, 256), np.float32)
  labels = np.array([255, 3], np.uint8)
  for f in (losses.softmax_cross_entropy, jax.jit(losses.softmax_cross_entropy)):
    np.testing.assert_allclose(f(scores, labels), [np.log(256)] * 2, rtol=1e-6)
  for f in (metrics.confusion_matrix, jax.jit(metrics.confusion_matrix, static_argnums=2)):
    assert int(f(labels, labels, 256).sum()) == 2
    assert int(f(np.array([127], np.int8), np.array([1], np.int8), 200)[127, 1]) == 1


def test_softmax_keeps_small_losses_and_matches_float64():
  # A confident prediction: log(1 + 2 e^-20) = 4.1e-9, which log(sum(exp)) rounded to 0.
  l = losses.softmax_cross_entropy(np.array([[20.0, 0.0, 0.0]], np.float32), np.array([0]))
  np.testing.assert_allclose(l, [np.log1p(2 * np.exp(-20.0))], rtol=1e-6)
  rng = np.random.default_rng(3)
  s, y = (rng.normal(size=(200, 5)) * 8).astype(np.float32), rng.integers(0, 5, 200)
  ref = _np_softmax(s.astype(np.float64), y)
  np.testing.assert_allclose(losses.softmax_cross_entropy(s, y), ref, rtol=2e-6, atol=1e-30)
  g = jax.grad(lambda s: losses.softmax_cross_entropy(s, y).sum())(s)
  want = np.exp(s - s.max(1, keepdims=True))
  want = want / want.sum(1, keepdims=True) - np.eye(5)[y]
  np.testing.assert_allclose(g, want, atol=1e-6)
  # One class: no other score, loss 0; another score +inf: loss +inf.
  assert float(losses.softmax_cross_entropy(np.array([[3.0]]), np.array([0]))[0]) == 0.0
  l = losses.softmax_cross_entropy(np.array([[1.0, np.inf, 0.0]], np.float32), np.array([0]))
  assert float(l[0]) == np.inf


@pytest.mark.parametrize("loss", [
    losses.softmax_cross_entropy, losses.multiclass_svm,
    functools.partial(losses.multiclass_svm, squared=True)])  # squared: NaN * NaN's gradient
def test_a_padding_label_masked_with_where_has_a_zero_gradient(loss):
  """The module's advice: mask padding labels (here 3 = C, and -4) with jnp.where. The
  masked rows must get a zero gradient, not NaN (a gather past the classes gave NaN, and
  0 * NaN is NaN in the backward pass)."""
  y = jnp.array([2, 3, -4, 1])
  f = lambda s, y: jnp.where((y >= 0) & (y < 3), loss(s, y), 0.0).sum()
  s = jnp.array([[1.0, 0.0, -1.0]] * 4)
  g = np.asarray(jax.jit(jax.grad(f))(s, y))
  assert np.all(np.isfinite(g)) and np.all(g[1:3] == 0)
  assert np.any(g[0] != 0) and np.any(g[3] != 0)
  assert np.isnan(np.asarray(jax.jit(loss)(s, y))[1])  # unmasked: still NaN, as documented


def test_float64_labels_that_float32_would_round_are_refused():
  # 16777217.0 and 16777216 differ, but both are 16777216 in float32 (JAX's float without
  # jax_enable_x64): the "exact" comparison would count them equal.
  with pytest.raises(InputError, match="would round \\(e.g. 16777217\\)") as e:
    metrics.accuracy(np.array([16777217.0]), np.array([16777216]))
  assert e.value.argument == "labels_N"
  assert float(metrics.accuracy(np.array([3.0, 16777216.0]), np.array([3, 16777216]))) == 1.0
  with pytest.raises(InputError, match="would round"):  # 0.1 and 0.1 + 1e-12: one float32
    metrics.accuracy(np.array([0.1, 2.0]), np.array([0.1 + 1e-12, 2.0]))
  assert float(metrics.accuracy(np.array([0.5, 2.0]), np.array([0.5, 1.0]))) == 0.5


def test_softmax_gradient_where_score_differences_overflow_is_softmax_minus_onehot():
  # 3e38 - (-3e38) overflows float32: the loss is +inf as before, and the gradient was NaN.
  s = jnp.array([[3e38, -3e38, 0.0], [1.0, 2.0, 3.0]])
  y = jnp.array([1, 0])
  loss = losses.softmax_cross_entropy(s, y)
  assert loss[0] == np.inf
  np.testing.assert_allclose(loss[1], np.log(np.exp([0.0, 1.0, 2.0]).sum()), rtol=1e-6)
  g = jax.grad(lambda s: losses.softmax_cross_entropy(s, y).sum())(s)
  p = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
  np.testing.assert_allclose(g, [[1.0, -1.0, 0.0], p - [1.0, 0.0, 0.0]], rtol=1e-6, atol=1e-7)


def test_softmax_rows_of_inf_or_nan_scores_leave_masked_gradients_finite():
  """A row whose loss is ruled (a +inf or NaN score, a correct score of -inf) had NaN
  gradients from its inf - inf even where the caller masks its loss with jnp.where: every
  other row's gradient became NaN in the sum. A row whose differences overflow beside a
  -inf score had a NaN gradient too (softmax - onehot now)."""
  inf, nan = np.inf, np.nan
  s = jnp.array([[inf, 0.0, 1.0], [0.0, inf, 1.0], [nan, 0.0, 1.0], [-inf, 0.0, 1.0],
                 [-3e38, -inf, 3e38], [1.0, 2.0, 3.0]])
  y = jnp.array([0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(losses.softmax_cross_entropy(s, y)[:5],
                                [0.0, inf, nan, inf, inf])
  # One class with a NaN score: NaN (was 0, the loss of one finite class).
  assert np.isnan(losses.softmax_cross_entropy(jnp.array([[nan]]), jnp.array([0]))[0])
  keep = jnp.array([False, False, False, False, True, True])
  g = jax.grad(lambda s: jnp.where(keep, losses.softmax_cross_entropy(s, y), 0.0).sum())(s)
  p = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
  np.testing.assert_allclose(g, [[0, 0, 0]] * 4 + [[-1.0, 0.0, 1.0], p - [1.0, 0.0, 0.0]],
                             rtol=1e-6, atol=1e-7)


def test_a_penalty_mask_must_be_a_concrete_predicate_of_path_and_leaf():
  params = {"W": jnp.ones((2, 3)), "b": jnp.ones(3)}
  assert float(losses.l2_penalty(params, mask=lambda path, leaf: path == "b")) == 3.0
  with pytest.raises(InputError, match=r"mask must be a predicate \(path, leaf\) -> bool") as e:
    losses.l2_penalty(params, mask=lambda ps: jax.tree.map(lambda a: a.ndim > 1, ps))  # optax's
  assert e.value.argument == "mask"
  with pytest.raises(InputError, match="mask's result must be concrete") as e:
    jax.jit(lambda p: losses.l2_penalty(p, mask=lambda path, leaf: jnp.all(leaf > 0)))(params)
  assert e.value.argument == "mask"
  with pytest.raises(InputError, match=r"mask's result must be true or false, got Array\(\["):
    losses.l2_penalty(params, mask=lambda path, leaf: leaf > 0)  # every value: no choice
  # Anything Python takes as true or false chooses: a match, a count, None.
  assert float(losses.l2_penalty(params, mask=lambda path, leaf: re.fullmatch("W", path))) == 6
  assert float(losses.l2_penalty(params, mask=lambda path, leaf: leaf.ndim - 1)) == 6
