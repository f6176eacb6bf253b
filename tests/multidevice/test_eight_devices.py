"""Sharded paths on 8 devices; run by tests/test_sharding.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (skipped in a 1-device process)."""
import jax
import numpy as np
import pytest

from jaxlin import knn, linear, losses, sharding, train

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


@pytest.mark.parametrize("metric", ["l1", "l2", "cosine"])
@pytest.mark.parametrize("mode", ["queries", "database"])
def test_sharded_search_equals_single_device_ties_included(metric, mode):
  rng = np.random.default_rng(0)
  q = rng.integers(0, 3, (37, 48), dtype=np.uint8)  # few levels: many ties
  db = rng.integers(0, 3, (203, 48), dtype=np.uint8)  # 203 rows over 8 devices
  if metric == "cosine":
    q, db = q.astype(np.float32) + 1, db.astype(np.float32) + 1
  d0, i0 = knn.search(q, db, 9, metric=metric, query_tile=4, database_tile=8)
  d, i = sharding.search(q, db, 9, mesh=sharding.make_mesh(), metric=metric, mode=mode,
                         query_tile=4, database_tile=8)
  np.testing.assert_array_equal(i, i0)
  np.testing.assert_allclose(d, d0, rtol=1e-6)


@pytest.mark.parametrize("mode", ["queries", "database"])
def test_sharded_l2_order_is_exact_beyond_float32_integers(mode):
  db = np.full((16, 3072), 255, np.uint8)
  db[:, 0] = np.arange(16)[::-1]  # |db_i|^2 = S + (15 - i)^2: nearest is the last row
  q = np.zeros((3, 3072), np.uint8)
  _, i = sharding.search(q, db, 16, mesh=sharding.make_mesh(), metric="l2", mode=mode)
  np.testing.assert_array_equal(i, np.tile(np.arange(16)[::-1], (3, 1)))


def test_search_with_mesh_argument_and_predict():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(90, 6)).astype(np.float32), rng.integers(0, 3, 90)
  q = rng.normal(size=(13, 6)).astype(np.float32)
  mesh = sharding.make_mesh()
  np.testing.assert_array_equal(
      knn.predict(x, y, q, k=[1, 5], metric="l2", num_classes=3, mesh=mesh, shard="database"),
      knn.predict(x, y, q, k=[1, 5], metric="l2", num_classes=3))


def test_data_parallel_training_matches_single_device():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(160, 12)).astype(np.float32)
  y = rng.integers(0, 4, 160)
  model = train.Model(init=lambda k: linear.init_params(k, 12, 4), apply=linear.scores)
  fit = lambda mesh: train.Trainer(model, losses.softmax_cross_entropy, optimizer="momentum",
                                   mesh=mesh).fit(
      jax.random.key(0), x, y, learning_rates=[0.05, 0.1], regs=[1e-3, 1e-3], batch_size=32,
      num_steps=20, eval_sets={"train": (x, y)})
  one, many = fit(None), fit(sharding.make_mesh())
  np.testing.assert_allclose(many.losses, one.losses, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(many.params["W"], one.params["W"], rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(many.history[-1]["train_accuracy"], one.history[-1]["train_accuracy"])


def test_rows_laid_along_the_mesh_padded_with_zeros():
  mesh = sharding.make_mesh()
  x = np.arange(13 * 3, dtype=np.float32).reshape(13, 3)
  assert sharding.padded_rows(13, mesh) == 16 and sharding.process_rows(13, mesh) == (0, 13)
  g = sharding.rows_to_global(x, 13, mesh)
  assert g.shape == (16, 3) and len(g.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(g), np.concatenate([x, np.zeros((3, 3), np.float32)]))
  with pytest.raises(ValueError, match=r"holds rows \[0, 13\) but got 12 rows"):
    sharding.rows_to_global(x[:12], 13, mesh)


@pytest.mark.parametrize("metric", ["l1", "l2", "cosine"])
def test_database_laid_along_the_mesh_equals_single_device(metric):
  """A database handed over already split across devices (as each host reads its rows)."""
  rng = np.random.default_rng(4)
  q = rng.integers(0, 3, (29, 48), dtype=np.uint8)
  db = rng.integers(0, 3, (203, 48), dtype=np.uint8)  # 203 rows: 26 per device, the last 21
  if metric == "cosine":
    q, db = q.astype(np.float32) + 1, db.astype(np.float32) + 1
  mesh = sharding.make_mesh()
  laid = sharding.rows_to_global(db, 203, mesh)
  # Float cosine: the same tile shapes on both sides, so that rounding agrees at near-ties.
  for tile in ((8,) if metric == "cosine" else (None, 8)):
    d0, i0 = knn.search(q, db, 9, metric=metric, database_tile=tile)
    d, i = sharding.search(q, laid, 9, mesh=mesh, metric=metric, mode="database",
                           num_database=203, database_tile=tile)
    np.testing.assert_array_equal(i, i0)
    np.testing.assert_allclose(d, d0, rtol=1e-6)
  with pytest.raises(ValueError, match="needs mode='database'"):
    sharding.search(q, laid, 9, mesh=mesh, metric=metric, num_database=203)
  with pytest.raises(ValueError, match=r"k must be an integer in \[1, 203\]"):
    sharding.search(q, laid, 204, mesh=mesh, metric=metric, mode="database", num_database=203)


def test_training_on_rows_split_along_the_mesh_matches_single_device():
  """Padding rows of a row-split training set are never drawn; eval masks them."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(75, 12)).astype(np.float32)  # 75 rows: 5 padding rows on 8 devices
  y = rng.integers(0, 4, 75).astype(np.int32)
  model = train.Model(init=lambda k: linear.init_params(k, 12, 4), apply=linear.scores)
  mesh = sharding.make_mesh()
  trainer = lambda m: train.Trainer(model, losses.multiclass_svm, optimizer="sgd",
                                    mesh=m)
  kw = dict(learning_rates=[0.05], regs=[1e-3], batch_size=16, num_steps=12, log_every=4)
  one = trainer(None).fit(jax.random.key(1), x, y, eval_sets={"val": (x, y)}, **kw)
  gx, gy = sharding.rows_to_global(x, 75, mesh), sharding.rows_to_global(y, 75, mesh)
  many = trainer(mesh).fit(jax.random.key(1), gx, gy, num_examples=75,
                           eval_sets={"val": (gx, gy, 75)}, **kw)
  np.testing.assert_allclose(many.losses, one.losses, rtol=1e-5, atol=1e-6)
  assert [h["val_accuracy"].tolist() for h in many.history] == [
      h["val_accuracy"].tolist() for h in one.history]


def test_knn_experiment_on_eight_devices(tmp_path):
  from experiments import knn as knn_exp
  from tests.conftest import make_image_folder
  root = str(tmp_path / "images")
  make_image_folder(root)
  cfg = dict(dataset=f"folder:{root}", num_train=40, num_test=12, num_val=6, k=[1, 3], cv_folds=4)
  many = knn_exp.run(dict(cfg, shard="database"), str(tmp_path / "a"))
  one = knn_exp.run(dict(cfg, shard="none"), str(tmp_path / "b"))
  assert many["accuracy"] == one["accuracy"] and many["test_accuracy"] == one["test_accuracy"]
  assert many["devices"] == 8 and one["devices"] == 1
