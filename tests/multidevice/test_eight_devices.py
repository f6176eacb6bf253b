"""Sharded paths on 8 devices; run by tests/test_sharding.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (skipped in a 1-device process)."""
import jax
import numpy as np
import pytest

from jaxlin import knn, linear, losses, selection, sharding, train
from jaxlin.errors import InputError
from tests.test_knn import count_compiles

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


@pytest.mark.parametrize("metric", ["l1", "l2", "cosine"])
def test_sharded_search_equals_single_device_ties_included(metric):
  """Both layouts, and a database handed over already laid along the mesh (as each
  host reads its rows), give the one-device answer."""
  rng = np.random.default_rng(0)
  q = rng.integers(0, 3, (37, 48), dtype=np.uint8)  # few levels: many ties
  db = rng.integers(0, 3, (203, 48), dtype=np.uint8)  # 203 rows: 26 per device, the last 21
  if metric == "cosine":
    q, db = q.astype(np.float32) + 1, db.astype(np.float32) + 1
  mesh = sharding.make_mesh()
  laid = sharding.rows_to_global(db, 203, mesh)
  d0, i0 = knn.search(q, db, 9, metric=metric, query_tile=4, database_tile=8)
  for layout, database, n in (("queries", db, None), ("database", db, None),
                              ("database", laid, 203)):
    calls = []
    d, i = knn.search(q, database, 9, metric=metric, mesh=mesh, layout=layout, num_database=n,
                      query_tile=4, database_tile=8, callback=lambda *a: calls.append(a))
    np.testing.assert_array_equal(i, i0)
    np.testing.assert_allclose(d, d0, rtol=1e-6)
    assert calls[-1] == (37, 37)


def test_inputs_committed_to_one_device_search_on_a_mesh():
  """Rows put on one device (jax.device_put(x, device), as a GPU user's often are) met
  JAX's incompatible-devices error inside the mesh's programs; on two devices without a
  mesh, they get one line naming both."""
  rng = np.random.default_rng(2)
  db = rng.integers(0, 4, (64, 12), dtype=np.uint8)
  q = db[:10]
  devs = jax.devices()
  i0 = knn.search(q, db, 3)[1]
  # Laid along a mesh of the same devices in another order: jit compares them in order.
  reverse = jax.sharding.Mesh(np.array(devs[:4][::-1]), ("data",))
  laid = jax.device_put(q[:8], jax.sharding.NamedSharding(reverse,
                                                          jax.sharding.PartitionSpec("data")))
  placed = ((q, jax.device_put(db, devs[6])), (jax.device_put(q, devs[1]), db),
            (jax.device_put(q, devs[0]), jax.device_put(db, devs[0])), (laid, db))
  # Every placement on the mesh of all devices; on a mesh of 4, the rows laid in reverse.
  for mesh, cases in ((sharding.make_mesh(), placed), (sharding.make_mesh(devs[:4]),
                                                       placed[-1:])):
    for qq, dd in cases:
      for layout in knn.LAYOUTS:
        np.testing.assert_array_equal(knn.search(qq, dd, 3, mesh=mesh, layout=layout)[1],
                                      i0[:len(qq)])
  with pytest.raises(InputError, match=r"queries_QxD is on device\(s\) \[1\] and "
                     r"database_NxD on \[0\]: put both on one device") as e:
    knn.search(jax.device_put(q, devs[1]), jax.device_put(db, devs[0]), 3)
  assert e.value.argument == "queries_QxD"
  np.testing.assert_array_equal(
      knn.search(jax.device_put(q, devs[5]), jax.device_put(db, devs[5]), 3)[1], i0)


@pytest.mark.parametrize("layout", ["queries", "database"])
def test_sharded_l2_order_is_exact_beyond_float32_integers(layout):
  db = np.full((16, 3072), 255, np.uint8)
  db[:, 0] = np.arange(16)[::-1]  # |db_i|^2 = S + (15 - i)^2: nearest is the last row
  q = np.zeros((3, 3072), np.uint8)
  _, i = knn.search(q, db, 16, mesh=sharding.make_mesh(), metric="l2", layout=layout)
  np.testing.assert_array_equal(i, np.tile(np.arange(16)[::-1], (3, 1)))


def test_search_with_mesh_argument_and_predict():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(90, 6)).astype(np.float32), rng.integers(0, 3, 90)
  q = rng.normal(size=(13, 6)).astype(np.float32)
  mesh = sharding.make_mesh()
  np.testing.assert_array_equal(
      knn.predict(x, y, q, k=[1, 5], metric="l2", num_classes=3, mesh=mesh, layout="database"),
      knn.predict(x, y, q, k=[1, 5], metric="l2", num_classes=3))
  d, i = knn.search(q[:0], x, 4, mesh=mesh)
  assert d.shape == i.shape == (0, 4)


@pytest.mark.parametrize("layout", ["queries", "database"])
def test_cross_validation_compiles_once_for_all_folds_and_new_data(layout):
  """Folds of equal shapes reuse the sharded programs: only the first fold compiles,
  and a second call with other data of the same shapes compiles nothing."""
  rng = np.random.default_rng(5)
  x, y = rng.integers(0, 4, (40, 12), dtype=np.uint8), rng.integers(0, 3, 40)
  mesh = sharding.make_mesh()
  marks = []
  with count_compiles() as events:
    acc = selection.cross_validate_knn(
        x, y, [1, 3], num_classes=3, metric="l2", mesh=mesh, layout=layout,
        callback=lambda f, n: marks.append(len(events)))
    second = len(events)
    selection.cross_validate_knn(x[::-1].copy(), y[::-1].copy(), [1, 3], num_classes=3,
                                 metric="l2", mesh=mesh, layout=layout, seed=1)
  assert marks[0] > 0 and marks == [marks[0]] * 5, marks  # folds 2..5: no compile
  assert len(events) == second, (second, len(events))  # new data, same shapes: no compile
  np.testing.assert_array_equal(
      acc, selection.cross_validate_knn(x, y, [1, 3], num_classes=3, metric="l2"))

def test_data_parallel_training_matches_single_device():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(160, 12)).astype(np.float32)
  y = rng.integers(0, 4, 160)
  model = train.Model(init=lambda k: linear.init_params(k, 12, 4), apply=linear.scores)
  fit = lambda mesh: train.Trainer(model, losses.softmax_cross_entropy, optimizer="momentum",
                                   mesh=mesh).fit(
      jax.random.key(0), x, y, learning_rates=[0.05, 0.1], regs=[1e-3, 1e-3], batch_size=32,
      num_steps=20, eval_sets={"train": (x, y)})
  # Any 1-D mesh, whatever its axis is called.
  one, many = fit(None), fit(jax.sharding.Mesh(np.array(jax.devices()), ("batch",)))
  np.testing.assert_allclose(many.losses, one.losses, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(many.params["W"], one.params["W"], rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(many.history[-1]["train_accuracy"],
                                one.history[-1]["train_accuracy"])


def test_rows_laid_along_the_mesh_padded_with_zeros():
  mesh = sharding.make_mesh()
  x = np.arange(13 * 3, dtype=np.float32).reshape(13, 3)
  assert sharding.padded_rows(13, mesh) == 16 and sharding.process_rows(13, mesh) == (0, 13)
  g = sharding.rows_to_global(x, 13, mesh)
  assert g.shape == (16, 3) and len(g.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(g), np.concatenate([x, np.zeros((3, 3), np.float32)]))
  with pytest.raises(ValueError,
                     match=r"holds rows \[0, 13\) of the 13, but local has shape \(12, 3\)"):
    sharding.rows_to_global(x[:12], 13, mesh)


def test_a_laid_float64_database_keeps_its_padding_rows_zero():
  """float64 host rows are centred on the host only where no padding rows are among them:
  a database laid along the mesh (num_database) is searched as its float32 rows are (its
  padding rows centred too gave distances 0.25 for 0.0014, and wrong neighbours)."""
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(1)
  n = 9
  db = 1e3 + rng.random((n, 2))
  q = db[[4, 7]] + 1e-3
  laid = np.zeros((sharding.padded_rows(n, mesh), 2))
  laid[:n] = db
  want = knn.search(np.float32(q), np.float32(db), 3)
  for got in (knn.search(q, laid, 3, mesh=mesh, layout="database", num_database=n),
              knn.search(q, sharding.rows_to_global(laid[:n], n, mesh), 3, mesh=mesh,
                         layout="database", num_database=n)):
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)  # centres summed in other orders
  # Without padding the rows are centred in float64 first: the exact neighbours.
  exact = np.argsort(((q[:, None] - db[None]) ** 2).sum(-1), axis=1)[:, :3]
  np.testing.assert_array_equal(knn.search(q, db, 3, mesh=mesh, layout="database")[1], exact)


def test_database_laid_along_the_mesh_with_default_tiles_and_errors():
  """Default tiles pad each device's rows (26 -> 32); errors name the argument."""
  rng = np.random.default_rng(4)
  q = rng.integers(0, 3, (29, 48), dtype=np.uint8)
  db = rng.integers(0, 3, (203, 48), dtype=np.uint8)
  mesh = sharding.make_mesh()
  laid = sharding.rows_to_global(db, 203, mesh)
  d0, i0 = knn.search(q, db, 9, metric="l2")
  d, i = knn.search(q, laid, 9, mesh=mesh, metric="l2", layout="database", num_database=203)
  np.testing.assert_array_equal(i, i0)
  np.testing.assert_allclose(d, d0, rtol=1e-6)
  with pytest.raises(InputError, match="needs layout='database'"):
    knn.search(q, laid, 9, mesh=mesh, num_database=203)
  with pytest.raises(InputError, match=r"k must be an integer in \[1, 203\]"):
    knn.search(q, laid, 204, mesh=mesh, layout="database", num_database=203)
  with pytest.raises(InputError, match="num_database=200 real rows") as e:
    knn.search(q, laid, 9, mesh=mesh, layout="database", num_database=200)
  assert e.value.argument == "num_database"
  nan = db.astype(np.float32)
  nan[150, 3] = np.nan
  with pytest.raises(InputError, match="database_NxD contains 1 NaN"):
    knn.search(q, sharding.rows_to_global(nan, 203, mesh), 9, mesh=mesh, layout="database",
               num_database=203)


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
  # Full batch (every step sees all rows): the padding rows are left out too.
  full = lambda m: train.Trainer(model, losses.multiclass_svm, optimizer="sgd", mesh=m,
                                 full_batch=True)
  kw = dict(learning_rates=[0.05], regs=[1e-3], num_steps=3)
  one = full(None).fit(jax.random.key(1), x, y, **kw)
  many = full(mesh).fit(jax.random.key(1), gx, gy, num_examples=75, **kw)
  np.testing.assert_allclose(many.losses, one.losses, rtol=1e-5, atol=1e-6)


def test_knn_experiment_on_eight_devices(tmp_path):
  import os  # pylint: disable=import-outside-toplevel
  from experiments import knn as knn_exp
  from tests.conftest import make_image_folder
  # A folder decoded by the calling test (tests/test_sharding.py), else one made here.
  root = os.environ.get("JAXLIN_TEST_FOLDER")
  cache = os.environ.get("JAXLIN_TEST_CACHE", str(tmp_path / "cache"))
  if not root:
    root = str(tmp_path / "images")
    make_image_folder(root)
  cfg = dict(dataset=f"folder:{root}", num_train=40, num_test=12, num_val=6, k=[1, 3], cv_folds=0,
             metric=["l2"], cache_dir=cache)  # CV on a mesh: test_cross_validation_compiles_...
  many = knn_exp.run(dict(cfg, shard="database"), str(tmp_path / "a"))
  one = knn_exp.run(dict(cfg, shard="none"), str(tmp_path / "b"))
  assert many["accuracy"] == one["accuracy"] and many["test_accuracy"] == one["test_accuracy"]
  assert many["devices"] == 8 and one["devices"] == 1


def test_pruned_search_on_a_mesh_equals_one_device():
  """The cascade on each device (its rows, or its queries), merged by (distance, global
  index): the one-device brute-force answer, ties and duplicates across devices included.
  On two devices (every device compiles its own programs: few devices keep the test short):
  400 rows each run the cascade's rounds (L2 and L1); a laid database with fewer rows per
  device than k goes to brute force on each device."""
  from tests.test_bounds import SHAPE, adversarial, smooth_images  # pylint: disable=import-outside-toplevel
  q, db = adversarial()
  db = np.concatenate([db, smooth_images(np.random.default_rng(1), 560), db[:40]])  # 800 rows
  two = sharding.make_mesh(jax.devices()[:2])
  for metric, layout in (("l2", "database"), ("l2", "queries"), ("l1", "queries")):
    d0, i0 = knn.search(q, db, 7, metric=metric, method="brute")
    calls = []
    d, i, stats = knn.search(q, db, 7, metric=metric, mesh=two, layout=layout, method="pruned",
                             return_stats=True, callback=lambda *a: calls.append(a),
                             image_shape=SHAPE)
    np.testing.assert_array_equal(i, i0)
    np.testing.assert_array_equal(d, d0)
    assert stats["method"] == "pruned" and len(stats["per_device"]) == 2
    assert stats["queries"] == len(q) * (2 if layout == "database" else 1)
    assert stats["first_round"] + stats["second_round"] > 0 and calls[-1] == (len(q), len(q))
  small = db[:203]  # 102 rows on the first device, 101 on the second: fewer than k
  d0, i0 = knn.search(q, small, 102, metric="l2", method="brute")
  laid = sharding.rows_to_global(small, 203, two)
  d, i, stats = knn.search(q, laid, 102, metric="l2", mesh=two, layout="database",
                           num_database=203, method="pruned", return_stats=True)
  np.testing.assert_array_equal(i, i0)
  np.testing.assert_array_equal(d, d0)
  assert stats["brute_force"] == 2 * len(q)  # 8 k candidates: more than a device's rows


def test_an_index_searches_on_the_device_it_was_built_on():
  """An index is committed to the device it was built on: searched outside that device's
  default_device context, its programs still run there (its bounds were computed on the
  default device before), with the one-device brute-force answer."""
  from jaxlin import bounds  # pylint: disable=import-outside-toplevel
  from tests.test_bounds import SHAPE, adversarial  # pylint: disable=import-outside-toplevel
  q, db = adversarial()
  there = jax.devices()[3]
  for metric in ("l2", "l1"):
    with jax.default_device(there):
      index = bounds.build_index(db, metric=metric, image_shape=SHAPE)
    d, i, _ = bounds.search(q, index, 5)  # the default device is jax.devices()[0] again
    d0, i0 = knn.search(q, db, 5, metric=metric, method="brute")
    np.testing.assert_array_equal(i, i0)
    np.testing.assert_array_equal(d, d0)
    assert index.database.devices() == {there}
  with jax.default_device(jax.devices()[5]):
    index = bounds.build_index(db, metric="l2", image_shape=SHAPE, bound_dtype="float32")
  b, _, _ = bounds._l2_bounds(q[:8], index.bound_rows, index.params)
  assert b.devices() == {jax.devices()[5]}
