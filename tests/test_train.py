import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlin import linear, losses, train
from jaxlin.errors import DivergenceError


def _problem(n=120, d=6, c=3, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(c, d)) * 3
  y = rng.integers(0, c, n)
  x = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y)


def _trainer(opt="sgd", loss="softmax", d=6, c=3, steps=30, schedule="constant"):
  model = train.Model(init=lambda k: linear.init_params(k, d, c), apply=linear.scores)
  return train.Trainer(model, losses.LOSSES[loss], optimizer=opt, schedule=schedule, total_steps=steps)


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_grid_member_equals_a_single_run(opt):
  x, y = _problem()
  lrs, regs = [0.01, 0.05, 0.01, 0.05], [0.0, 0.0, 0.1, 0.1]
  grid = _trainer(opt, schedule="cosine").fit(jax.random.key(1), x, y, learning_rates=lrs, regs=regs,
                                              batch_size=16, num_steps=30)
  for g in (1, 2):
    single = _trainer(opt, schedule="cosine").fit(jax.random.key(1), x, y, learning_rates=[lrs[g]],
                                                  regs=[regs[g]], batch_size=16, num_steps=30)
    np.testing.assert_allclose(train.member(grid.params, g)["W"], single.params["W"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grid.losses[:, g], single.losses[:, 0], rtol=1e-5)


def test_training_learns_and_compiles_once():
  x, y = _problem()
  t = _trainer("momentum")
  res = t.fit(jax.random.key(0), x, y, learning_rates=[0.05], regs=[1e-3], batch_size=16,
              num_steps=47, log_every=10, eval_sets={"train": (x, y)})
  assert res.steps == 47 and res.losses.shape == (47, 1)
  assert [h["step"] for h in res.history] == [10, 20, 30, 40, 47]
  assert res.compile_count == 1  # the padded last chunk reuses the same program
  assert res.losses[-5:].mean() < 0.5 * res.losses[:5].mean()
  assert res.history[-1]["train_accuracy"][0] > 0.9


def test_same_seed_same_result_other_seed_other_batches():
  x, y = _problem()
  fit = lambda seed: _trainer().fit(jax.random.key(seed), x, y, learning_rates=[0.05], regs=[0.0],
                                    batch_size=16, num_steps=10).losses
  np.testing.assert_array_equal(fit(3), fit(3))
  assert not np.array_equal(fit(3), fit(4))


def test_accuracy_counts_every_example_once():
  x, y = _problem(n=101)
  t = _trainer()
  params = jax.vmap(lambda _: linear.init_params(jax.random.key(5), 6, 3, scale=1.0))(jnp.arange(2))
  acc = t.accuracy(params, x, y, batch_size=16)  # 101 = 6 * 16 + 5: the last batch is padded
  pred = np.argmax(np.asarray(x) @ np.asarray(params["W"][0]) + np.asarray(params["b"][0]), 1)
  assert acc.shape == (2,)
  assert acc[0] == pytest.approx(np.mean(pred == np.asarray(y)))


def test_divergence_is_flagged_per_member_and_stops_when_all_diverge():
  x, y = _problem()
  t = _trainer("sgd")
  res = t.fit(jax.random.key(0), x, y, learning_rates=[0.05, 1e3], regs=[1.0, 1.0], batch_size=16,
              num_steps=60)
  assert res.diverged_at[0] == -1 and 0 <= res.diverged_at[1] < 60
  assert np.all(np.isfinite(np.asarray(res.params["W"][1])))  # frozen before the NaN
  with pytest.raises(DivergenceError, match=r"at step \d+ .*smaller --learning_rate"):
    _trainer("sgd").fit(jax.random.key(0), x, y, learning_rates=[1e3], regs=[1.0], batch_size=16,
                        num_steps=60)


def test_lbfgs_full_batch_reaches_the_optimum():
  x, y = _problem()
  res = _trainer("lbfgs").fit(jax.random.key(0), x, y, learning_rates=[1.0], regs=[0.1],
                              batch_size=len(y), num_steps=40)
  p = train.member(res.params, 0)
  g = jax.grad(lambda p: train.objective(p, x, y, 0.1, apply_fn=linear.scores,
                                         loss_fn=losses.softmax_cross_entropy)[0])(p)
  assert float(jnp.linalg.norm(g["W"])) < 1e-3
  assert res.losses[-1, 0] < res.losses[0, 0]


def test_bad_arguments():
  x, y = _problem()
  with pytest.raises(ValueError, match="unknown optimizer"):
    _trainer("rmsprop")
  with pytest.raises(ValueError, match="batch_size must be in"):
    _trainer().fit(jax.random.key(0), x, y, learning_rates=[0.1], regs=[0.0], batch_size=1000,
                   num_steps=1)
  with pytest.raises(ValueError, match="equal length"):
    _trainer().fit(jax.random.key(0), x, y, learning_rates=[0.1, 0.2], regs=[0.0], batch_size=10,
                   num_steps=1)
