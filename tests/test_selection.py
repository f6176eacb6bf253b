import jax
import numpy as np
import pytest

from jaxlin import knn, metrics, selection, topk
from jaxlin.errors import InputError


def test_kfold_indices_without_shuffle_are_contiguous_like_array_split():
  folds = selection.kfold_indices(10, 3, shuffle=False)
  assert [list(v) for _, v in folds] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
  assert list(folds[1][0]) == [0, 1, 2, 3, 7, 8, 9]
  with pytest.raises(InputError, match="at least 2") as e:
    selection.kfold_indices(10, 1)
  assert e.value.argument == "num_folds"
  with pytest.raises(InputError, match="cannot split 3"):
    selection.kfold_indices(3, 5)


def test_shuffled_folds_are_literal_for_a_seed_and_follow_the_permuted_data():
  folds = selection.kfold_indices(7, 3, seed=0)
  # np.random.default_rng(0).permutation(7) = [2, 4, 3, 6, 5, 0, 1]
  assert [v.tolist() for _, v in folds] == [[2, 4, 3], [6, 5], [0, 1]]
  assert [t.tolist() for t, _ in folds] == [[6, 5, 0, 1], [2, 4, 3, 0, 1], [2, 4, 3, 6, 5]]
  # Permuting with the same generator, then contiguous folds: the same rows.
  perm = np.random.default_rng((3, 3)).permutation(20)
  for (tr, va), (ctr, cva) in zip(selection.kfold_indices(20, 4, seed=(3, 3)),
                                  selection.kfold_indices(20, 4, shuffle=False)):
    assert tr.tolist() == perm[ctr].tolist() and va.tolist() == perm[cva].tolist()


def test_unequal_folds_are_scored_by_their_own_size():
  # 1-NN on the points 0..6, folds [0 1 2] [3 4] [5 6]: 2 of 3, 1 of 2, 2 of 2 right.
  x = np.arange(7, dtype=np.float32)[:, None]
  y = np.array([0, 0, 1, 0, 1, 1, 1])
  acc = selection.cross_validate_knn(x, y, 1, num_folds=3, num_classes=2, shuffle=False)
  assert acc.tolist() == [2 / 3, 1 / 2, 1.0]


def test_stratified_folds_deal_each_class_in_order():
  folds = selection.kfold_indices(6, 2, shuffle=False, labels=[0, 0, 0, 0, 1, 1])
  assert [v.tolist() for _, v in folds] == [[0, 2, 4], [1, 3, 5]]


def test_stratified_folds_keep_the_class_proportions():
  labels = np.repeat([0, 1, 2], [12, 6, 3])  # sorted by class
  folds = selection.kfold_indices(21, 3, labels=labels, seed=1)
  for tr, va in folds:
    assert np.bincount(labels[va], minlength=3).tolist() == [4, 2, 1]
    assert sorted(tr.tolist() + va.tolist()) == list(range(21))
  assert [len(v) for _, v in selection.kfold_indices(22, 3, labels=np.arange(22) % 4)] == [8, 7, 7]
  # Class names as strings: the same folds as their codes.
  names = np.array(["cat", "dog", "frog"])[labels]
  assert [v.tolist() for _, v in selection.kfold_indices(21, 3, labels=names, seed=1)] == [
      v.tolist() for _, v in folds]
  as_objects = names.astype(object)  # e.g. a pandas column of names
  assert [v.tolist() for _, v in selection.kfold_indices(21, 3, labels=as_objects, seed=1)] == [
      v.tolist() for _, v in folds]
  with pytest.raises(InputError, match="compare with each other"):
    selection.kfold_indices(4, 2, labels=np.array([1, "a", 2, "b"], dtype=object))
  # A NaN label has no class: refused (its row used to drop out of every fold).
  with pytest.raises(InputError, match="NaN or inf") as e:
    selection.kfold_indices(4, 2, labels=np.array([0.0, 1.0, np.nan, 1.0]))
  assert e.value.argument == "labels"


def test_default_cross_validation_on_class_sorted_data_is_sensible():
  rng = np.random.default_rng(2)
  y = np.repeat(np.arange(5), 8)  # sorted by class: each contiguous fold is a whole class
  x = (y[:, None] * 10 + rng.integers(0, 3, (40, 6))).astype(np.uint8)
  cv = lambda **kw: selection.cross_validate_knn(x, y, [1], num_classes=5, metric="l1", **kw)
  assert cv().mean() == 1.0 and cv(stratify=True).mean() == 1.0
  assert cv(shuffle=False).mean() == 0.0  # the class of each fold is never in its training rows
  bad = y.copy()
  bad[0] = 4
  with pytest.raises(InputError, match=r"y must lie in \[0, num_classes\)") as e:
    selection.cross_validate_knn(x, bad, [1], num_classes=4)
  nan = x.astype(np.float32)
  nan[3, 2] = np.nan
  with pytest.raises(InputError, match="x contains 1 NaN"):
    selection.cross_validate_knn(nan, y, [1], num_classes=5)
  assert e.value.argument == "y"


def _plain_knn_accuracy(xtr, ytr, xva, yva, k):
  d = np.abs(xva[:, None, :].astype(np.int64) - xtr[None].astype(np.int64)).sum(-1)
  idx = np.argsort(d, axis=1, kind="stable")[:, :k]
  pred = np.array([np.bincount(ytr[r], minlength=4).argmax() for r in idx])
  return np.mean(pred == yva)


def test_cross_validation_matches_a_plain_loop_over_folds():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 8, (50, 12), dtype=np.uint8)
  y = rng.integers(0, 4, 50)
  ks = [1, 2, 5, 9]
  acc = selection.cross_validate_knn(x, y, ks, num_folds=5, metric="l1", num_classes=4, seed=7)
  assert acc.shape == (5, 4)
  folds = np.array_split(np.random.default_rng(7).permutation(50), 5)
  for f in range(5):
    tr = np.concatenate(folds[:f] + folds[f + 1:])
    for j, k in enumerate(ks):
      va = folds[f]
      assert acc[f, j] == _plain_knn_accuracy(x[tr], y[tr], x[va], y[va], k)  # exact fractions
  single = selection.cross_validate_knn(x, y, 5, num_folds=5, metric="l1", num_classes=4, seed=7)
  np.testing.assert_array_equal(single, acc[:, 2])  # an int k: (folds,)


def test_cross_validation_of_floats_far_from_zero_and_of_binary_floats():
  """float64 rows near 1e9 (without jax_enable_x64) score as the same rows near 0; binary
  features as float32 score as the same features as uint8 (exact ties, by index)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 3))
  y = (x[:, 0] > 0).astype(int)
  for metric in ("l1", "l2"):
    near = selection.cross_validate_knn(x, y, [1, 3], num_folds=4, num_classes=2, metric=metric)
    far = selection.cross_validate_knn(x + 1e9, y, [1, 3], num_folds=4, num_classes=2,
                                       metric=metric)
    np.testing.assert_array_equal(far, near)
  b = rng.random((200, 20)) < 0.3
  y = (b[:, :3].sum(1) + rng.integers(0, 2, 200)) % 3
  as_float = selection.cross_validate_knn(b.astype(np.float32), y, [1, 5, 15], num_folds=5,
                                          num_classes=3)
  as_ints = selection.cross_validate_knn(b.astype(np.uint8), y, [1, 5, 15], num_folds=5,
                                         num_classes=3)
  np.testing.assert_array_equal(as_float, as_ints)


@pytest.mark.parametrize("dtype, metric", [(np.uint8, "l1"), (np.int8, "l2"),
                                           (np.uint8, "l2_squared")])
def test_pixels_share_each_pair_of_folds_with_the_answers_of_one_search_per_fold(
    dtype, metric, monkeypatch):
  """uint8 / int8 rows compute each pair of folds once (the distances of fold g to fold f are
  those of f to g, transposed): the same accuracies as one brute-force search per fold, on
  data with many ties, unequal and stratified folds, both tie-breaks."""
  rng = np.random.default_rng(1)
  x = rng.integers(0, 3, (47, 10)).astype(dtype)  # values 0..2: ties everywhere
  y = rng.integers(0, 4, 47)
  ks = [1, 2, 5, 9]
  searched = []
  search = knn._search
  monkeypatch.setattr(knn, "_search", lambda *a, **kw: searched.append(1) or search(*a, **kw))
  selection.cross_validate_knn(x, y, ks, metric=metric, num_classes=4)
  assert len(searched) == 5  # blocks this small are not worth sharing: a search per fold
  searched.clear()
  monkeypatch.setattr(selection, "_SHARED_MIN_WORK", 0)
  monkeypatch.setattr(selection, "_BLOCK_TILE", 8)  # blocks of several tiles
  for folds, stratify, tie_break in ((5, False, "smallest_label"), (4, True, "nearest")):
    want = _one_search_per_fold(x, y, ks, folds, metric, tie_break, stratify)
    searched.clear()
    for whole in (True, False):  # whole rows, then streamed
      monkeypatch.setattr(selection, "_fits_whole_rows", lambda num_folds, size, w=whole: w)
      acc = selection.cross_validate_knn(x, y, ks, num_folds=folds, metric=metric,
                                         num_classes=4, stratify=stratify, tie_break=tie_break)
      assert not searched  # the shared blocks ran, not a search per fold
      np.testing.assert_array_equal(acc, want)
  selection.cross_validate_knn(x, y, ks, num_folds=3, metric=metric, num_classes=4,
                               method="pruned", image_shape=(1, 10, 1) if metric == "l1" else None)
  assert len(searched) == 3  # the cascade asked for: a search per fold
  searched.clear()
  monkeypatch.setattr(selection, "_WHOLE_ROWS_BYTES", 1)  # not even the running bests fit
  np.testing.assert_array_equal(selection.cross_validate_knn(
      x, y, ks, num_folds=4, metric=metric, num_classes=4, stratify=True, tie_break="nearest"),
                                want)
  assert len(searched) == 4  # a search per fold


def _one_search_per_fold(x, y, ks, folds, metric, tie_break="smallest_label", stratify=False):
  want = []
  for tr, va in selection.kfold_indices(len(x), folds, labels=y if stratify else None):
    preds = knn.predict(x[tr], y[tr], x[va], k=ks, metric=metric, num_classes=4,
                        tie_break=tie_break, method="brute")
    want.append([np.count_nonzero(np.asarray(p) == y[va]) / len(va) for p in preds])
  return np.array(want)


@pytest.mark.parametrize("whole, metric", [(True, "l2"), (False, "l1")])
def test_folds_select_on_the_device_off_the_cpu(whole, metric, monkeypatch):
  """Off the CPU each fold selects (whole rows) or merges (streamed) with smallest_k on the
  device, not on the host: the same answers."""
  rng = np.random.default_rng(4)
  x = rng.integers(0, 3, (61, 10)).astype(np.uint8)
  y = rng.integers(0, 4, 61)
  ks = [1, 3, 12]
  monkeypatch.setattr(selection, "_SHARED_MIN_WORK", 0)
  monkeypatch.setattr(selection, "_fits_whole_rows", lambda num_folds, size: whole)
  want = _one_search_per_fold(x, y, ks, 5, metric)
  monkeypatch.setattr(knn, "_platform", lambda mesh, database: "gpu")
  monkeypatch.setattr(topk, "smallest_k_host", lambda *a: pytest.fail("selected on the host"))
  monkeypatch.setattr(selection, "_merge_on_host",
                      lambda *a, **kw: pytest.fail("merged on the host"))
  np.testing.assert_array_equal(
      selection.cross_validate_knn(x, y, ks, metric=metric, num_classes=4), want)


@pytest.mark.parametrize("dtype, metric, folds, stratify", [(np.uint8, "l1", 2, False),
                                                            (np.int8, "l2", 3, True)])
def test_streamed_folds_in_several_chunks_give_the_answers_of_one_search_per_fold(
    dtype, metric, folds, stratify, monkeypatch):
  """Folds too large to keep whole are streamed in chunks of rows (here 2 per fold, of one
  query tile each), each updating the running best of both folds of the pair; k may pass
  a chunk's rows."""
  monkeypatch.setattr(selection, "_SHARED_MIN_WORK", 0)
  monkeypatch.setattr(selection, "_WHOLE_ROWS_BYTES", 2 ** 40)
  monkeypatch.setattr(selection, "_fits_whole_rows", lambda num_folds, size: False)
  monkeypatch.setattr(selection, "_CHUNK_BYTES", 1)  # the smallest chunk: one query tile
  monkeypatch.setattr(selection, "_BLOCK_TILE", 200)  # tiles of 176 rows: 2 per fold
  rng = np.random.default_rng(2)
  n = 350 * folds + 1  # folds of 350 or 351 rows: more than one query tile
  x = (rng.integers(0, 3, (n, 6)) - (1 if dtype == np.int8 else 0)).astype(dtype)
  y = rng.integers(0, 4, n)
  ks = [1, 4, 30, 200]
  acc = selection.cross_validate_knn(x, y, ks, num_folds=folds, metric=metric, num_classes=4,
                                     stratify=stratify)
  np.testing.assert_array_equal(acc, _one_search_per_fold(x, y, ks, folds, metric,
                                                          stratify=stratify))


def test_shared_folds_check_their_inputs_as_a_search_does(monkeypatch):
  monkeypatch.setattr(selection, "_SHARED_MIN_WORK", 0)
  x = np.zeros((4, 4_300_000), np.uint8)  # int32 L1 sums could pass 2**30
  with pytest.raises(InputError, match=r"could reach 4300000 \* 255 >= 2\*\*30") as e:
    selection.cross_validate_knn(x, np.array([0, 1, 0, 1]), 1, num_folds=2, metric="l1",
                                 num_classes=2)
  assert e.value.argument == "x"


def test_cross_validation_checks_its_arguments_before_any_fold(monkeypatch):
  def no_search(*args, **kwargs):
    raise AssertionError("a fold ran before the arguments were checked")
  monkeypatch.setattr(knn, "_search", no_search)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 8, (20, 12), dtype=np.uint8)
  y = rng.integers(0, 4, 20)
  cv = lambda x=x, y=y, **kw: selection.cross_validate_knn(x, y, kw.pop("ks", [1]), num_classes=4,
                                                           **kw)
  for kw, argument, message in [
      (dict(callback=5), "callback", "callback must be callable"),
      (dict(callback=lambda a, b, c: None), "callback", "missing a required argument: 'c'"),
      (dict(ks=[]), "ks", "non-empty"),
      (dict(ks=[1, 0]), "ks", "must be positive"),
      (dict(ks=2.5), "ks", "must be an integer"),
      (dict(x=x[:0], y=y[:0]), "x", "x is empty"),
      (dict(x=x[:, :0]), "x", r"x has no features \(shape \(20, 0\)\)"),  # was a fold's
      (dict(stratify="no"), "stratify", "True or False"),  # "no" stratified
      (dict(layout="rows"), "layout", "unknown layout 'rows'"),
      (dict(image_shape=(2, 2, 2)), "image_shape", "has 8 values, but rows have 12"),
      (dict(tie_break="first"), "tie_break", "unknown tie_break 'first'"),
  ]:
    with pytest.raises(InputError, match=message) as e:
      cv(**kw)
    assert e.value.argument == argument, kw
  monkeypatch.undo()
  with pytest.raises(InputError, match=r"needs x uint8 or int8 \(pixels, .* got float32") as e:
    cv(x=x.astype(np.float32), method="pruned")  # checked by the first fold's search
  assert e.value.argument == "method"


def test_kfold_indices_name_the_argument_that_is_wrong():
  for args, kw, argument, message in [
      ((0, 2), {}, "n", "n=0 examples cannot make folds"),  # blamed num_folds
      ((-3, 2), {}, "n", "integer >= 0"),
      ((10, 12), {}, "num_folds", "use num_folds <= 10"),
      ((10, 2), dict(shuffle="no"), "shuffle", "True or False"),  # "no" shuffled
  ]:
    with pytest.raises(InputError, match=message) as e:
      selection.kfold_indices(*args, **kw)
    assert e.value.argument == argument


def test_metrics_literal_values():
  y = np.array([0, 0, 1, 1, 2, 2])
  p = np.array([0, 1, 1, 1, 0, 2])
  assert float(metrics.accuracy(y, p)) == pytest.approx(4 / 6)
  # 153 of 500: the count over N as numpy rounds it (jnp.mean, and a jitted division by the
  # constant N, multiplied by 1/N: 0.30600002)
  y5, p5 = np.zeros(500, np.int32), np.repeat(np.int32([0, 1]), [153, 347])
  for fn in (metrics.accuracy, jax.jit(metrics.accuracy)):
    assert fn(y5, p5).dtype == np.float32 and float(fn(y5, p5)) == np.float32(153) / 500
  cm = metrics.confusion_matrix(y, p, 4)
  np.testing.assert_array_equal(cm, [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
  pca = np.asarray(metrics.per_class_accuracy(cm))
  np.testing.assert_allclose(pca[:3], [0.5, 1.0, 0.5])
  assert np.isnan(pca[3])
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.accuracy(y, p[:3])
