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
                                   total_steps=20, mesh=mesh).fit(
      jax.random.key(0), x, y, learning_rates=[0.05, 0.1], regs=[1e-3, 1e-3], batch_size=32,
      num_steps=20, eval_sets={"train": (x, y)})
  one, many = fit(None), fit(sharding.make_mesh())
  np.testing.assert_allclose(many.losses, one.losses, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(many.params["W"], one.params["W"], rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(many.history[-1]["train_accuracy"], one.history[-1]["train_accuracy"])


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
