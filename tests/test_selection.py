import numpy as np
import pytest

from jaxlin import metrics, selection


def test_kfold_indices_are_contiguous_like_array_split():
  folds = selection.kfold_indices(10, 3)
  assert [list(v) for _, v in folds] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
  assert list(folds[1][0]) == [0, 1, 2, 3, 7, 8, 9]
  with pytest.raises(ValueError, match="at least 2"):
    selection.kfold_indices(10, 1)
  with pytest.raises(ValueError, match="cannot split 3"):
    selection.kfold_indices(3, 5)


def _plain_knn_accuracy(xtr, ytr, xva, yva, k):
  d = np.abs(xva[:, None, :].astype(np.int64) - xtr[None].astype(np.int64)).sum(-1)
  idx = np.argsort(d, axis=1, kind="stable")[:, :k]
  pred = np.array([np.bincount(ytr[r], minlength=4).argmax() for r in idx])
  return np.mean(pred == yva)


def test_cross_validation_matches_a_plain_loop_over_folds():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 8, (53, 12), dtype=np.uint8)
  y = rng.integers(0, 4, 53)
  ks = [1, 2, 5, 9]
  acc = selection.cross_validate_knn(x, y, ks, num_folds=5, metric="l1", num_classes=4)
  assert acc.shape == (5, 4)
  folds = np.array_split(np.arange(53), 5)
  for f in range(5):
    tr = np.concatenate(folds[:f] + folds[f + 1:])
    for j, k in enumerate(ks):
      assert acc[f, j] == pytest.approx(_plain_knn_accuracy(x[tr], y[tr], x[folds[f]], y[folds[f]], k))


def test_metrics_literal_values():
  y = np.array([0, 0, 1, 1, 2, 2])
  p = np.array([0, 1, 1, 1, 0, 2])
  assert float(metrics.accuracy(y, p)) == pytest.approx(4 / 6)
  cm = metrics.confusion_matrix(y, p, 4)
  np.testing.assert_array_equal(cm, [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
  pca = np.asarray(metrics.per_class_accuracy(cm))
  np.testing.assert_allclose(pca[:3], [0.5, 1.0, 0.5])
  assert np.isnan(pca[3])
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.accuracy(y, p[:3])
