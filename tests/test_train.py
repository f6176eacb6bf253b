import functools
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlin import linear, losses, mlp, sharding, train
from jaxlin.errors import DivergenceError, InputError


@functools.lru_cache(maxsize=None)
def _problem(n=120, d=6, c=3, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(c, d)) * 3
  y = rng.integers(0, c, n)
  x = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y)


LINEAR = train.Model(init=lambda k: linear.init_params(k, 6, 3), apply=linear.scores)


def _new_trainer(opt="sgd", loss="softmax", schedule=None):
  return train.Trainer(LINEAR, losses.LOSSES[loss], optimizer=opt, schedule=schedule)


_trainer = functools.lru_cache(maxsize=None)(_new_trainer)  # shared: compiled programs reused


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_grid_member_equals_a_single_run(opt):
  x, y = _problem()
  lrs, regs = [0.01, 0.05, 0.01, 0.05], [0.0, 0.0, 0.1, 0.1]
  grid = _trainer(opt, schedule="cosine").fit(jax.random.key(1), x, y, learning_rates=lrs,
                                              regs=regs, batch_size=16, num_steps=20)
  single = _new_trainer(opt, schedule="cosine")
  compiles = []
  for g in (1, 2):  # one trainer, one compiled program for both single runs
    res = single.fit(jax.random.key(1), x, y, learning_rates=[lrs[g]], regs=[regs[g]],
                     batch_size=16, num_steps=20)
    np.testing.assert_allclose(train.member(grid.params, g)["W"], res.params["W"][0], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(grid.losses[:, g], res.losses[:, 0], rtol=1e-5)
    compiles.append(res.compile_count)
  assert compiles == [1, 0]  # each fit's own compilations: the second reuses the first's


def test_a_single_rate_or_reg_serves_every_member():
  x, y = _problem()
  t = _trainer()
  run = lambda lrs, regs: t.fit(jax.random.key(0), x, y, learning_rates=lrs, regs=regs,
                                batch_size=10, num_steps=3)
  np.testing.assert_array_equal(run([0.1, 0.2], (0.0,)).losses, run([0.1, 0.2], [0.0, 0.0]).losses)
  res = run(0.1, [0.0, 0.01, 0.1])  # a number for every member
  np.testing.assert_array_equal(res.losses, run([0.1, 0.1, 0.1], [0.0, 0.01, 0.1]).losses)
  assert res.losses.shape == (3, 3)


def test_training_learns_and_compiles_once():
  x, y = _problem()
  t = _new_trainer("momentum")
  res = t.fit(jax.random.key(0), x, y, learning_rates=[0.05], regs=[1e-3], batch_size=16,
              num_steps=47, log_every=10, eval_sets={"train": (x, y)})
  assert res.steps == 47 and res.losses.shape == (47, 1)
  assert [h["step"] for h in res.history] == [10, 20, 30, 40, 47]
  assert res.compile_count == 1  # the padded last chunk reuses the same program
  assert res.losses[-5:].mean() < 0.5 * res.losses[:5].mean()
  assert res.history[-1]["train_accuracy"][0] > 0.9
  fit = lambda seed: t.fit(jax.random.key(seed), x, y, learning_rates=[0.05], regs=[0.0],
                           batch_size=16, num_steps=10, log_every=10).losses
  np.testing.assert_array_equal(fit(3), fit(3))
  assert not np.array_equal(fit(3), fit(4))
  assert t.trace_count == 1


def test_accuracy_counts_every_example_once():
  x, y = _problem(n=101)
  params = jax.vmap(lambda _: linear.init_params(jax.random.key(5), 6, 3, scale=1.0))(jnp.arange(2))
  acc = _trainer().accuracy(params, x, y, batch_size=16)  # 101 = 6 * 16 + 5: last batch padded
  pred = np.argmax(np.asarray(x) @ np.asarray(params["W"][0]) + np.asarray(params["b"][0]), 1)
  assert acc.shape == (2,)
  assert acc[0] == pytest.approx(np.mean(pred == np.asarray(y)))


def test_divergence_is_flagged_per_member_and_stops_when_all_diverge():
  x, y = _problem()
  t = _trainer("sgd")
  res = t.fit(jax.random.key(0), x, y, learning_rates=[0.05, 1e3], regs=[1.0, 1.0], batch_size=16,
              num_steps=30)
  assert res.diverged_at[0] == -1 and 1 <= res.diverged_at[1] <= 30
  assert np.all(np.isfinite(np.asarray(res.params["W"][1])))  # frozen before the NaN
  with pytest.raises(DivergenceError, match=r"at step \d+ .*smaller learning_rates") as e:
    t.fit(jax.random.key(0), x, y, learning_rates=[1e3, 1e3], regs=[1.0, 1.0], batch_size=16,
          num_steps=30)
  assert e.value.argument == "learning_rates" and "--" not in str(e.value)
  assert e.value.message.endswith("try smaller learning_rates")
  assert e.value.advice == "try smaller learning_rates"  # apart, for a command line's own
  assert e.value.message == f"{e.value.what}; {e.value.advice}" and ";" not in e.value.what
  assert str(e.value) == e.value.message + "; " + e.value.library_hint
  assert "apply_if_finite" in e.value.library_hint and "first step" not in str(e.value)
  assert 1 <= e.value.step <= 30 and f"at step {e.value.step} " in e.value.message
  # Members that diverged at different steps: "at step N for every setting" overstated it.
  with pytest.raises(DivergenceError, match=r"inf or NaN for every setting, the first at step "
                     r"(\d+) and the last at step (?!\1)\d+ \(largest learning rate 1e\+06\)"):
    t.fit(jax.random.key(0), x, y, learning_rates=[30.0, 1e6], regs=[1.0, 1.0], batch_size=16,
          num_steps=30)
  wrapped = InputError(ValueError("bad x"), argument="x")  # any object, as Exception takes
  assert str(wrapped) == wrapped.message == "bad x" and wrapped.library_hint is None


def test_a_step_that_makes_parameters_non_finite_is_not_taken():
  """The loss before the step was finite; the step made W inf: the member stops with its
  last finite parameters, and its accuracies are theirs."""
  x, y = _problem()
  res = _trainer("sgd", "svm").fit(jax.random.key(0), x * 10, y, learning_rates=[1e-3, 1e38],
                                   regs=[0.0, 1.0], batch_size=20, num_steps=6,
                                   eval_sets={"val": (x, y)})
  assert res.diverged_at.tolist() == [-1, 1]  # at its first step (counted from 1)
  start = LINEAR.init(jax.random.split(jax.random.key(0))[0])
  np.testing.assert_array_equal(train.member(res.params, 1)["W"], start["W"])  # never moved
  final = _trainer("sgd", "svm").accuracy(res.params, x, y)
  assert res.history[-1]["val_accuracy"][1] == final[1]
  with pytest.raises(DivergenceError, match="the loss or the parameters became inf or NaN at "
                     "step 1"):  # its loss was finite: the parameters are named too
    _trainer("sgd", "svm").fit(jax.random.key(0), x * 10, y, learning_rates=[1e38], regs=[1.0],
                               batch_size=20, num_steps=2)


def test_full_batch_leaves_the_padding_rows_out():
  x, y = _problem()
  padded_x = jnp.concatenate([x, jnp.full((8, 6), 100.0)])
  padded_y = jnp.concatenate([y, jnp.zeros(8, y.dtype)])
  # (lbfgs takes the same full-batch path; sgd compiles in a fraction of its time)
  t = train.Trainer(LINEAR, losses.softmax_cross_entropy, optimizer="sgd", full_batch=True)
  plain = t.fit(jax.random.key(0), x, y, learning_rates=[0.1], regs=[0.1], num_steps=2)
  padded = t.fit(jax.random.key(0), padded_x, padded_y, learning_rates=[0.1], regs=[0.1],
                 num_steps=2, num_examples=len(x))
  np.testing.assert_array_equal(padded.losses, plain.losses)


def test_padding_rows_are_not_checked():
  """Rows past num_examples are padding: a NaN row or the label -1 there is no error (both
  were refused, naming x or y), in the training data and in an eval set."""
  x, y = _problem()
  padded_x = jnp.concatenate([x, jnp.full((4, 6), jnp.nan)])
  padded_y = jnp.concatenate([y, jnp.full(4, -1, y.dtype)])
  t = train.Trainer(LINEAR, losses.softmax_cross_entropy, optimizer="sgd")
  kw = dict(learning_rates=[0.1], regs=[0.1], batch_size=20, num_steps=2)
  plain = t.fit(jax.random.key(0), x, y, eval_sets={"val": (x, y)}, **kw)
  padded = t.fit(jax.random.key(0), padded_x, padded_y, num_examples=len(x),
                 eval_sets={"val": (padded_x, padded_y, len(x))}, **kw)
  np.testing.assert_array_equal(padded.losses, plain.losses)
  assert padded.history[-1]["val_accuracy"] == plain.history[-1]["val_accuracy"]
  with pytest.raises(InputError, match="x holds NaN or inf"):  # a real row: refused
    t.fit(jax.random.key(0), padded_x, padded_y, num_examples=len(x) + 1, **kw)


def test_lbfgs_full_batch_reaches_the_optimum():
  x, y = _problem()
  res = _new_trainer("lbfgs").fit(jax.random.key(0), x, y, regs=[0.1], num_steps=40)
  p = train.member(res.params, 0)
  g = jax.grad(lambda p: train.objective(p, x, y, 0.1, apply_fn=linear.scores,
                                         loss_fn=losses.softmax_cross_entropy)[0])(p)
  assert float(jnp.linalg.norm(g["W"])) < 1e-3
  assert res.losses[-1, 0] < res.losses[0, 0]
  assert res.compile_count == 1  # the line search's state keeps its types across chunks
  with pytest.raises(InputError, match="regs only") as e:  # lbfgs has no learning rate
    _trainer("lbfgs").fit(jax.random.key(0), x, y, learning_rates=[1.0, 2.0], regs=[0.1, 0.1],
                          num_steps=2)
  assert e.value.argument == "learning_rates"


def _constant_gradient_run(schedule, num_steps, lr=0.5):
  """sgd on loss -s_0 with s = b: each step adds lr * multiplier(t) to b_0."""
  model = train.Model(init=lambda k: {"b": jnp.zeros(2)},
                      apply=lambda p, x: jnp.broadcast_to(p["b"], (x.shape[0], 2)))
  t = train.Trainer(model, lambda s, y: -s[:, 0], optimizer="sgd", schedule=schedule)
  x, y = jnp.zeros((4, 1)), jnp.zeros(4, jnp.int32)
  res = t.fit(jax.random.key(0), x, y, learning_rates=[lr], batch_size=4, num_steps=num_steps)
  return float(res.params["b"][0, 0]) / lr


def test_named_schedules_follow_fits_step_count():
  # cosine over 8 steps: (1 + cos(pi t / 8)) / 2, not 0 after the first step.
  cosine = sum(0.5 * (1 + np.cos(np.pi * t / 8)) for t in range(8))
  assert _constant_gradient_run("cosine", 8) == pytest.approx(cosine, rel=1e-5)
  # step over 8 steps: 1 for steps 0-3, 0.1 for 4-5, 0.01 for 6-7 (never 0.1 from step 0).
  assert _constant_gradient_run("step", 8) == pytest.approx(4 + 0.2 + 0.02, rel=1e-5)
  assert _constant_gradient_run("step", 1) == pytest.approx(1.0)
  m = train.make_schedule("step", 8)
  assert [round(float(m(jnp.int32(t))), 4) for t in range(8)] == [1, 1, 1, 1, .1, .1, .01, .01]
  # any optax schedule: step -> multiplier (with learning rate 1, the learning rate itself)
  linear_decay = optax.linear_schedule(1.0, 0.0, 4)
  assert _constant_gradient_run(linear_decay, 4) == pytest.approx(1 + .75 + .5 + .25, rel=1e-5)


def _mlp2_init(key, d=6, h=16, c=3):
  """Two hidden layers as a list of layer dicts: a plain params pytree."""
  sizes = [d, h, h, c]
  keys = jax.random.split(key, 3)
  return {"layers": [{"w": jax.random.normal(k, (a, b)) * (2.0 / a) ** 0.5, "b": jnp.zeros(b)}
                     for k, a, b in zip(keys, sizes[:-1], sizes[1:])]}


def _mlp2_apply(params, x):
  *hidden, last = params["layers"]
  for layer in hidden:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ last["w"] + last["b"]


def test_own_model_optax_chain_and_schedule_through_the_public_api():
  x, y = _problem()
  steps = 30
  t = train.Trainer(
      train.Model(_mlp2_init, _mlp2_apply), losses.softmax_cross_entropy,
      optimizer=lambda lr: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr)),
      schedule=optax.cosine_decay_schedule(1.0, steps))
  res = t.fit(jax.random.key(0), x, y, learning_rates=[1e-2, 3e-2, 1e-2, 3e-2],
              regs=[0.0, 0.0, 0.5, 0.5], batch_size=16, num_steps=steps, log_every=10,
              eval_sets={"train": (x, y)})
  assert res.compile_count == 1
  assert res.history[-1]["train_accuracy"].min() > 0.9
  w0 = train.member(res.params, 0)["layers"][0]["w"]
  w2 = train.member(res.params, 2)["layers"][0]["w"]
  assert float(jnp.sum(w2 ** 2)) < float(jnp.sum(w0 ** 2))  # reg shrinks the weights


def test_train_step_in_your_own_loop_equals_the_trainer():
  x, y = _problem()
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))
  model = train.Model(_mlp2_init, _mlp2_apply)
  t = train.Trainer(model, losses.softmax_cross_entropy, optimizer=tx, full_batch=True)
  res = t.fit(jax.random.key(0), x, y, regs=[0.1], num_steps=5)
  step = jax.jit(train.make_train_step(losses.softmax_cross_entropy, _mlp2_apply, tx, reg=0.1))
  params = model.init(jax.random.split(jax.random.key(0))[0])  # fit's init key
  opt_state = tx.init(params)
  for i in range(5):
    params, opt_state, metrics = step(params, opt_state, (x, y))
    np.testing.assert_allclose(metrics["loss"], res.losses[i, 0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b[0], rtol=1e-4, atol=1e-6),
               params, res.params)


def _custom_value_tx():
  """A transformation whose update names ``value`` and takes no other extra argument."""
  def update(updates, state, params=None, value=None):
    del params
    return jax.tree.map(lambda g: -0.1 * g / (1.0 + value), updates), state
  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


@pytest.mark.parametrize("make_tx, takes_value", [
    # sgd far too fast: the objective stops falling and the plateau halves the rate
    (lambda: optax.chain(optax.sgd(20.0), optax.contrib.reduce_on_plateau(patience=1,
                                                                           factor=0.5)), True),
    (lambda: optax.polyak_sgd(max_learning_rate=0.5), True), (_custom_value_tx, True),
    (lambda: optax.contrib.sam(optax.sgd(0.1), optax.sgd(0.1)), False)],
    ids=["reduce_on_plateau", "polyak_sgd", "custom", "sam"])
def test_transformations_that_take_the_loss_value_get_it(make_tx, takes_value):
  """Transformations with extra arguments get the objective (penalty included) as
  ``value`` where they take it: the step equals a hand-written optax loop passing it
  (without it, update raised a TypeError); those that take no value (sam) get none."""
  x, y = _problem()
  tx, reg = make_tx(), 0.1
  params = linear.init_params(jax.random.key(0), 6, 3)
  step = jax.jit(train.make_train_step(losses.softmax_cross_entropy, linear.scores, tx,
                                       reg=reg))
  mine, theirs = (params, tx.init(params)), (params, tx.init(params))

  def f(p):
    return (jnp.mean(losses.softmax_cross_entropy(linear.scores(p, x), y))
            + reg * losses.l2_penalty(p))
  for _ in range(8):
    p, state, metrics = step(*mine, (x, y))
    value, grad = jax.value_and_grad(f)(theirs[0])
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-5)
    extra = {"value": value} if takes_value else {}
    updates, st = tx.update(grad, theirs[1], theirs[0], **extra)
    mine, theirs = (p, state), (optax.apply_updates(theirs[0], updates), st)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               mine[0], theirs[0])
  scale = optax.tree.get(mine[1], "scale", None)
  if make_tx is not _custom_value_tx and takes_value and scale is not None:
    assert float(scale) < 1.0  # the plateau was reached: the objective reached it


def test_fixed_transformation_grids_over_reg_only():
  x, y = _problem()
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(optax.cosine_decay_schedule(0.1, 20)))
  t = train.Trainer(LINEAR, losses.softmax_cross_entropy, optimizer=tx)
  res = t.fit(jax.random.key(0), x, y, regs=[0.0, 1.0], batch_size=16, num_steps=20)
  assert not np.allclose(res.params["W"][0], res.params["W"][1])
  with pytest.raises(InputError, match="regs only") as e:
    t.fit(jax.random.key(0), x, y, learning_rates=[0.1, 0.2], regs=[0.0, 0.0], batch_size=16,
          num_steps=2)
  assert e.value.argument == "learning_rates"
  with pytest.raises(InputError, match="no learning rate to schedule"):
    train.Trainer(LINEAR, losses.softmax_cross_entropy, optimizer=tx, schedule="cosine")


def test_reg_penalises_weights_of_any_pytree():
  x, y = _problem()
  init = lambda k: {"Dense_0": {"kernel": linear.init_params(k, 6, 3, scale=0.5)["W"],
                                "bias": jnp.zeros(3)}}
  apply = lambda p, x: x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  t = train.Trainer(train.Model(init, apply), losses.softmax_cross_entropy, optimizer="sgd")
  res = t.fit(jax.random.key(0), x, y, learning_rates=[0.05, 0.05], regs=[0.0, 1e-2],
              batch_size=16, num_steps=10)
  k = res.params["Dense_0"]["kernel"]
  assert not np.array_equal(k[0], k[1])
  # Only 1-D leaves: nothing to penalise, so reg > 0 is an error, not a silent no-op.
  biases = train.Model(lambda k: {"b": jnp.zeros(3)},
                       lambda p, x: jnp.broadcast_to(p["b"], (x.shape[0], 3)))
  with pytest.raises(InputError, match="no weight") as e:
    train.Trainer(biases, losses.softmax_cross_entropy, optimizer="sgd").fit(
        jax.random.key(0), x, y, learning_rates=[0.1], regs=[0.1], batch_size=16, num_steps=1)
  assert e.value.argument == "regs"
  step = train.make_train_step(losses.softmax_cross_entropy, biases.apply, optax.sgd(0.1),
                               reg=0.1)
  with pytest.raises(InputError, match="no weight"):
    step({"b": jnp.zeros(3)}, optax.sgd(0.1).init({"b": jnp.zeros(3)}), (x, y))
  penalty = lambda p: jnp.sum(p["b"] ** 2)  # the caller's own penalty
  ok = train.make_train_step(losses.softmax_cross_entropy, biases.apply, optax.sgd(0.1), reg=0.1,
                             penalty=penalty)
  ok({"b": jnp.ones(3)}, optax.sgd(0.1).init({"b": jnp.ones(3)}), (x, y))


def test_bad_arguments():
  x, y = _problem()
  with pytest.raises(InputError, match="unknown optimizer"):
    _new_trainer("rmsprop")
  with pytest.raises(InputError, match="unknown schedule"):
    _new_trainer("sgd", schedule="linear")
  t = _trainer()
  fit = functools.partial(t.fit, jax.random.key(0), learning_rates=[0.1], regs=[0.0],
                          batch_size=10, num_steps=1)
  with pytest.raises(InputError, match="batch_size must be in"):
    t.fit(jax.random.key(0), x, y, learning_rates=[0.1], regs=[0.0], batch_size=1000,
          num_steps=1)
  with pytest.raises(InputError, match="equal length"):
    t.fit(jax.random.key(0), x, y, learning_rates=[0.1, 0.2], regs=[0.0, 0.1, 0.2],
          batch_size=10, num_steps=1)
  with pytest.raises(InputError, match="NaN or inf") as e:
    fit(x.at[3, 2].set(jnp.nan), y)
  assert e.value.argument == "x"
  with pytest.raises(InputError, match="empty"):
    fit(x[:0], y[:0])
  with pytest.raises(InputError, match=r"labels must lie in \[0, 3\)"):
    fit(x, y.at[0].set(3))
  with pytest.raises(InputError, match="num_steps"):
    t.fit(jax.random.key(0), x, y, learning_rates=[0.1], batch_size=10, num_steps=0)


def _fit_call(**changes):
  x, y = _problem()
  args = dict(key=jax.random.key(0), x=np.asarray(x), y=np.asarray(y), learning_rates=[0.1],
              regs=[0.0], batch_size=10, num_steps=1)
  args.update(changes)
  return lambda: _trainer().fit(**args)


def _eval(value):
  return _fit_call(eval_sets=value)


_X, _Y = (np.asarray(a) for a in _problem())
_GRID2 = {"W": np.zeros((2, 6, 3), np.float32), "b": np.zeros((2, 3), np.float32)}
_GRID2_ONE = {"W": np.zeros((6, 3), np.float32), "b": np.zeros(3, np.float32)}
_TWO_SEARCHES = optax.multi_transform({"w": optax.lbfgs(), "b": optax.lbfgs()},
                                      {"W": "w", "b": "b"})
_ONE_OF_TWO = optax.multi_transform({"w": optax.lbfgs(), "b": optax.sgd(0.1)},
                                    {"W": "w", "b": "b"})
# A backtracking line search that stores no gradient (optax's default), over the weights only.
_BACKTRACKING = optax.chain(optax.sgd(1.0), optax.scale_by_backtracking_linesearch(
    max_backtracking_steps=5))
_MASKED_SEARCH = optax.masked(_BACKTRACKING, {"W": True, "b": False})


@pytest.mark.parametrize("call, argument, message", [
    # Each of these trained (or measured) without complaint before, on wrong data.
    (_fit_call(y=np.concatenate([[2 ** 32], _Y[1:]]).astype(np.int64)), "y",
     r"beyond int32 \(4294967296\)"),
    (_fit_call(num_examples=500), "num_examples", "500 is more than the 120 rows"),
    (_eval({"val": (_X, _Y, 500)}), "eval_sets", r"num_examples must be in \[1, 120\]"),
    (_eval({"val": (_X, _Y[:1])}), "eval_sets", r"shapes \(120, 6\) and \(1,\)"),
    (_eval({"val": (_X, _Y + 10)}), "eval_sets", r"labels must lie in \[0, 3\)"),
    (_eval({"val": (_X * np.nan, _Y)}), "eval_sets", "NaN or inf"),
    (_eval({"val": (_X[:, :5], _Y)}), "eval_sets", r"rows of shape \(5,\), the training x"),
    (_eval([(_X, _Y)]), "eval_sets", "must be a dict"),
    (_fit_call(key=0), "key", "jax random key"),
    (_fit_call(batch_size=8.0), "batch_size", "an integer >= 1"),
    (_fit_call(log_every=-1), "log_every", "an integer >= 0"),
    (lambda: train.Trainer(LINEAR, "svm", optimizer="sgd"), "loss_fn", "must be a function"),
    (lambda: train.Trainer(linear, losses.multiclass_svm, optimizer="sgd"), "model",
     "must be a train.Model"),
    (lambda: train.make_optimizer("sgd", -0.1), "learning_rate", "finite number > 0"),
    (lambda: train.make_optimizer("adam", "0.1"), "learning_rate", "finite number > 0"),
    (lambda: train.make_train_step(losses.multiclass_svm, linear.scores, "sgd"), "tx",
     "optax.GradientTransformation"),
    (lambda: train.make_train_step(losses.multiclass_svm, linear.scores, optax.sgd(0.1),
                                   reg=float("inf")), "reg", "finite number >= 0"),
    (lambda: train.make_train_step(losses.multiclass_svm, linear.scores, optax.sgd(0.1))(
        {"W": np.zeros((6, 3), np.int32), "b": np.zeros(3, np.float32)}, (), (_X, _Y)),
     "params", r"params\['W'\] has dtype int32: training needs float"),  # was JAX's grad error
    (lambda: train.make_train_step(losses.multiclass_svm, linear.scores, optax.sgd(0.1))(
        linear.init_params(jax.random.key(0), 6, 3), (), (_X[:0], _Y[:0])),
     "batch", "batch holds no examples"),  # was loss NaN and unchanged params, silently
    (lambda: jax.jit(train.make_train_step(
        losses.softmax_cross_entropy, lambda p, xs: linear.scores(p, xs[0]) + xs[1][:, :3],
        optax.sgd(0.1)))(linear.init_params(jax.random.key(0), 6, 3), (),
                         ((_X[:0], _X[:0, :4]), _Y[:0])),
     "batch", "batch holds no examples"),  # x a pytree, under jit
    (lambda: train.member({"W": np.zeros((2, 6, 3)), "b": np.zeros((2, 3))}, 5), "i",
     "outside the grid of 2 members"),
    (lambda: linear.scores({"W": np.zeros((6, 3)), "b": np.zeros(1)}, _X), "params",
     r"params\['b'\] must have shape \(3,\), got \(1,\)"),
    (lambda: linear.scores({"W": np.zeros((6, 3))}, _X), "params", "params has no 'b'"),
    (lambda: linear.init_params(jax.random.key(0), 0, 3), "num_features", "positive int"),
    (_fit_call(regs=["a"]), "regs", "sequence of real numbers"),
    (_fit_call(regs=[True]), "regs", "real numbers"),  # was trained with reg 1.0
    (_fit_call(learning_rates=["0.1"]), "learning_rates", "real numbers"),  # was parsed
    (_fit_call(regs=[0.0, True]), "regs", "not bools"),
    # Trainer.accuracy divided by a num_examples beyond x's rows (0.35 for 0.7).
    (lambda: _trainer().accuracy(_GRID2, _X, _Y, num_examples=500), "num_examples",
     "500 is more than the 120 rows"),
    (lambda: _trainer().accuracy(_GRID2, _X, _Y, num_examples=True), "num_examples", "bool"),
    (lambda: _trainer().accuracy(_GRID2, _X, _Y, batch_size=0), "batch_size", "positive"),
    (lambda: _trainer().accuracy(_GRID2, _X, _Y[:5]), "x", r"\(120, 6\) and \(5,\)"),
    # Trainer.accuracy checked nothing else: 0.0 for labels out of range, class 0 counted
    # right for NaN rows, JAX's vmap error for one member's params.
    (lambda: _trainer().accuracy(_GRID2, _X, _Y + 10), "y", r"lie in \[0, 3\)"),
    (lambda: _trainer().accuracy(_GRID2, np.full_like(_X, np.nan), _Y), "x", "NaN or inf"),
    (lambda: _trainer().accuracy(train.member(_GRID2, 0), _X, _Y), "params",
     r"one member's params: pass jax.tree.map\(lambda a: a\[None\], p\)"),
    (lambda: _trainer().accuracy(_GRID2, _X, _Y.astype(np.float32)), "y", "integer labels"),
    (_fit_call(callback=3), "callback", "must be callable"),  # was a TypeError after a chunk
    (_fit_call(callback=lambda: None), "callback", "cannot take 1 positional argument "),
    (lambda: train.Trainer(train.Model(lambda k: {"W": jnp.full((6, 3), jnp.nan),
                                                  "b": jnp.zeros(3)}, linear.scores),
                           losses.softmax_cross_entropy, optimizer="sgd").fit(
        jax.random.key(0), _X, _Y, learning_rates=[0.1], batch_size=10, num_steps=1),
     "model", r"model.init\(key\) returned NaN or inf in params\['W'\]"),
    (lambda: linear.init_params(jax.random.key(0), 6, 3, scale=float("nan")), "scale",
     "finite"),  # was NaN params, then "try smaller learning_rates"
    (lambda: linear.init_params(jax.random.key(0), 6, 3, scale="a"), "scale", "real number"),
    (lambda: mlp.init_params(jax.random.key(0), 6, 4, 3, scale=float("inf")), "scale",
     "finite"),
    (lambda: linear.scores({"W": np.ones((6, 3), np.uint8), "b": np.zeros(3, np.uint8)},
                           _X.astype(np.uint8)), "params", "dtype uint8"),  # wrapped at 256
    (lambda: train.make_train_step(losses.multiclass_svm, linear.scores, optax.sgd(0.1))(
        {"W": np.zeros((6, 3), np.complex64), "b": np.zeros(3, np.float32)}, (), (_X, _Y)),
     "params", r"params\['W'\] has dtype complex64"),  # was JAX's grad TypeError
    # Values that float32, where they are used, makes inf or 0: refused, not trained.
    (_fit_call(regs=[1e39]), "regs", "finite and >= 0 in float32"),
    (_fit_call(learning_rates=[1e-50]), "learning_rates", "finite and > 0 in float32"),
    (_fit_call(x=_X[:, :5]), "x", r"x has shape \(120, 5\); expected \(N, 6\)"),  # the user's
    (lambda: linear.init_params(0, 6, 3), "key", "jax random key"),
    (_fit_call(num_steps=True), "num_steps", r"integer in \[1, 2147483647\].*, got True"),
    (_fit_call(num_steps=2 ** 31), "num_steps", r"integer in \[1, 2147483647\]"),  # int32
    (lambda: linear.scores(linear.init_params(jax.random.key(0), 3, 2), np.array([["a"] * 3])),
     "x_NxD", "integers or real floats, got dtype <U1"),  # was JAX's TypeError
    (lambda: linear.scores(linear.init_params(jax.random.key(0), 3, 2),
                           np.ones((1, 3), np.complex64)), "x_NxD", "got dtype complex64"),
    (lambda: train.Trainer(LINEAR, losses.multiclass_svm, optimizer=lambda lr: "sgd").fit(
        jax.random.key(0), _X, _Y, learning_rates=[0.1], batch_size=10, num_steps=1),
     "optimizer", "must return an optax.GradientTransformation"),
    # A student's mistakes (each message was about something else, or JAX's own).
    (lambda: linear.scores({"W": np.zeros((3, 6), np.float32), "b": np.zeros(3, np.float32)},
                           _X), "params", r"params\['W'\] has shape \(3, 6\).* must be \(6, 3\)"),
    (lambda: linear.scores({"W": np.zeros((6, 3), np.float32), "b": np.zeros(6, np.float32)},
                           _X), "params", r"params\['b'\] must have shape \(3,\), got \(6,\)"),
    (lambda: mlp.hidden({"W1": np.zeros((4, 6), np.float32), "b1": np.zeros(4, np.float32),
                         "W2": np.zeros((4, 3), np.float32), "b2": np.zeros(3, np.float32)}, _X),
     "params", r"params\['W1'\] has shape \(4, 6\).* must be \(6, 4\)"),
    (lambda: linear.scores(linear.init_params(jax.random.key(0), 6, 2), _X.reshape(-1, 2, 3)),
     "x_NxD", r"flatten images first"),
    (lambda: linear.init_params(jax.random.split(jax.random.key(0)), 6, 3), "key",
     r"one random key, got a batch of keys of shape \(2,\)"),
    (lambda: mlp.init_params(jax.random.split(jax.random.PRNGKey(0)), 6, 4, 3), "key",
     r"one random key, got a batch of keys of shape \(2,\)"),
    (_fit_call(key=jax.random.split(jax.random.key(0))), "key", "one random key"),
    (lambda: linear.init_params(jax.random.key(0), 6, 3, scale=-1.0), "scale", "must be >= 0"),
    (_fit_call(learning_rates=None), "learning_rates", "no schedule: every member would train"),
    (lambda: train.Trainer(LINEAR, losses.multiclass_svm, optimizer="lbfgs").fit(
        jax.random.key(0), _X, _Y, batch_size=10, num_steps=1), "batch_size", "has no effect"),
    # A mesh of two axes was JAX's error at the first step.
    (lambda: train.Trainer(LINEAR, losses.multiclass_svm, optimizer="sgd", mesh=jax.sharding.Mesh(
        np.array(jax.devices()[:1]).reshape(1, 1), ("a", "b"))), "mesh", "1-D jax.sharding.Mesh"),
    (lambda: train.Trainer(LINEAR, losses.multiclass_svm, optimizer="sgd", mesh="data"), "mesh",
     "1-D jax.sharding.Mesh"),
    # float64 rows far from 0 against their spread, which float32 would round to a few values
    # (1e8 + N(0, 1): training saw constant rows, scores came out 0).
    (lambda: linear.scores(linear.init_params(jax.random.key(0), 6, 3), np.float64(_X) + 1e8),
     "x_NxD",
     "feature 0 lies near 1e\\+08 but spans only .*: JAX's float32"),
    (_fit_call(x=np.float64(_X) + 1e8), "x", r"\(6 such feature\(s\)\)"),
    (lambda: _trainer().fit(jax.random.key(0), _X, _Y, learning_rates=[0.1], batch_size=10,
                            num_steps=1, eval_sets={"val": (np.float64(_X) + 1e8, _Y)}),
     "eval_sets", r"eval_sets\['val'\] x's feature 0"),
    (lambda: _trainer().accuracy(_GRID2, np.float64(_X) - 1e9, _Y), "x", "near 1e\\+09"),
    # Two line searches (lbfgs per group): JAX's pytree error, or optax's KeyError.
    (lambda: train.Trainer(LINEAR, losses.multiclass_svm, optimizer=_TWO_SEARCHES).fit(
        jax.random.key(0), _X, _Y, num_steps=1), "optimizer", "holds 2 line searches"),
    (lambda: train.make_train_step(losses.multiclass_svm, linear.scores, _TWO_SEARCHES)(
        _GRID2_ONE, _TWO_SEARCHES.init(_GRID2_ONE), (_X, _Y)), "tx", "holds 2 line searches"),
    # A line search over some of the parameters: JAX's cond error.
    (lambda: train.Trainer(LINEAR, losses.multiclass_svm, optimizer=_ONE_OF_TWO).fit(
        jax.random.key(0), _X, _Y, num_steps=1), "optimizer", "sees only some of the param"),
    # The same without a stored gradient (optax.masked, or a group of multi_transform): JAX's
    # pytree structure error.
    (lambda: train.make_train_step(losses.multiclass_svm, linear.scores, _MASKED_SEARCH)(
        _GRID2_ONE, _MASKED_SEARCH.init(_GRID2_ONE), (_X, _Y)), "tx", "sees only some of the par"),
    (lambda: train.Trainer(LINEAR, losses.multiclass_svm, optimizer=optax.multi_transform(
        {"w": _BACKTRACKING, "b": optax.sgd(0.1)}, {"W": "w", "b": "b"})).fit(
            jax.random.key(0), _X, _Y, num_steps=1), "optimizer", "sees only some of the param"),
    # A batch that is not (x, y): the keys of a dict were taken for x and y.
    (lambda: train.make_train_step(losses.multiclass_svm, linear.scores, optax.sgd(0.1))(
        linear.init_params(jax.random.key(0), 6, 3), (), {"image": _X, "label": _Y}), "batch",
     r"a pair \(x, y\).*got a dict with keys \['image', 'label'\]"),
    (lambda: train.make_train_step(losses.multiclass_svm, linear.scores, optax.sgd(0.1))(
        linear.init_params(jax.random.key(0), 6, 3), (), (_X, _Y, _Y)), "batch",
     r"a pair \(x, y\).*got tuple of 3"),
])
def test_inputs_that_cannot_be_right_are_refused(call, argument, message):
  with pytest.raises(InputError, match=message) as e:
    call()
  assert e.value.argument == argument


def test_numpy_counts_jax_scalar_rates_and_list_data_are_taken():
  x, y = _problem()
  t = _trainer()
  res = t.fit(jax.random.key(0), x, y, learning_rates=[jnp.bfloat16(0.125)],
              regs=[np.float32(0.0)], batch_size=np.int64(16), num_steps=np.int64(5))
  ref = t.fit(jax.random.key(0), x, y, learning_rates=[0.125], regs=[0.0], batch_size=16,
              num_steps=5)
  np.testing.assert_array_equal(res.losses, ref.losses)
  np.testing.assert_array_equal(  # lists, as fit takes them
      t.accuracy(res.params, np.asarray(x).tolist(), np.asarray(y).tolist()),
      t.accuracy(res.params, x, y))


def test_float64_models_train_with_float64_settings():
  with jax.enable_x64(True):
    x, y = (np.asarray(a, np.float64) for a in _problem())
    y = y.astype(np.int64)
    wide = lambda k: jax.tree.map(lambda a: a.astype(jnp.float64), linear.init_params(k, 6, 3))
    t = train.Trainer(train.Model(wide, linear.scores), losses.softmax_cross_entropy,
                      optimizer="sgd")
    res = t.fit(jax.random.key(0), x, y, learning_rates=[0.1], regs=[0.01], batch_size=120,
                num_steps=3)
    p = wide(jax.random.split(jax.random.key(0))[0])  # fit's init key
    objective = lambda p: losses.softmax_cross_entropy(linear.scores(p, x), y).mean() + (
        0.01 * losses.l2_penalty(p))
    for _ in range(3):
      p = jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(objective)(p))
    assert res.params["W"].dtype == jnp.float64
    # 0.1 and 0.01 rounded to float32 gave differences of 3e-10.
    np.testing.assert_allclose(res.params["W"][0], p["W"], rtol=0, atol=1e-15)


def test_raw_keys_of_the_default_generator_are_taken():
  assert linear.init_params(jax.random.PRNGKey(0), 6, 3)["W"].shape == (6, 3)  # threefry (2,)
  previous = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")  # TPU users' choice: raw keys of (4,)
  try:
    key = jax.random.PRNGKey(0)
    assert key.shape == (4,) and linear.init_params(key, 6, 3)["W"].shape == (6, 3)
    x, y = _problem()
    res = _new_trainer().fit(key, x, y, learning_rates=[0.1], regs=[0.0], batch_size=10,
                             num_steps=2)
    assert np.isfinite(res.losses).all()
  finally:
    jax.config.update("jax_default_prng_impl", previous)


def test_member_takes_negative_and_traced_indices_and_scores_take_lists():
  params = {"W": np.arange(36.0).reshape(2, 6, 3), "b": np.zeros((2, 3))}
  np.testing.assert_array_equal(train.member(params, -1)["W"], params["W"][1])
  host = train.member({"w": np.array([0.1, 0.2]), "n": np.array([2**40, 3])}, 0)
  assert isinstance(host["w"], np.float64) and host["w"] == 0.1  # host leaves: not float32
  assert host["n"] == 2**40  # nor int32 (wrapped)
  every = jax.vmap(lambda i: train.member(jax.tree.map(jnp.asarray, params), i))(jnp.arange(2))
  np.testing.assert_array_equal(np.asarray(every["W"]), params["W"])
  np.testing.assert_allclose(np.asarray(linear.scores(train.member(params, 0), _X[:2].tolist())),
                             _X[:2] @ params["W"][0], rtol=1e-6)
  np.testing.assert_array_equal(linear.scores(train.member(params, 0), _X[:2] > 0),  # bools
                                (_X[:2] > 0) @ params["W"][0])


def test_features_of_size_zero_are_refused_naming_the_argument():
  t = _trainer("sgd")
  y = np.arange(20) % 3
  for x in (np.zeros((20, 0), np.float32), jnp.zeros((20, 2, 0))):
    with pytest.raises(InputError) as e:
      t.fit(jax.random.key(0), x, y, learning_rates=[0.1], batch_size=5, num_steps=4)
    assert e.value.argument == "x", e.value
  x, y = _problem()
  with pytest.raises(InputError, match="eval_sets") as e:
    t.fit(jax.random.key(0), x, y, learning_rates=[0.1], batch_size=5, num_steps=4,
          eval_sets={"e": (jnp.zeros((3, 4, 0)), y[:3])})
  assert e.value.argument == "eval_sets"


def test_optimizers_that_keep_the_params_in_their_state_train():
  # optax.contrib's dog keeps the params in its state: the chunk program was handed one
  # buffer twice to donate ("Attempt to donate the same buffer twice").
  x, y = _problem()
  res = train.Trainer(LINEAR, losses.softmax_cross_entropy, optimizer=optax.contrib.dog()).fit(
      jax.random.key(0), x, y, batch_size=10, num_steps=3)
  assert res.losses.shape == (3, 1) and np.isfinite(res.losses).all()


def test_l2_penalty_of_float16_weights_sums_in_float32():
  w = jnp.full((100, 100), 30.0, jnp.float16)  # 9e6: inf in float16
  total = losses.l2_penalty({"W": w})
  assert total.dtype == jnp.float32 and float(total) == 9e6


def test_accuracy_takes_any_grid_the_model_scores():
  # The grid check compared params with model.init's tree: a model whose init takes a raw
  # PRNGKey failed with JAX's key TypeError, and params of another hidden size were refused.
  x, y = _problem()
  raw = train.Model(lambda k: linear.init_params(jax.random.wrap_key_data(k), 6, 3),
                    linear.scores)
  t = train.Trainer(raw, losses.softmax_cross_entropy, optimizer="sgd")
  res = t.fit(jax.random.PRNGKey(0), x, y, learning_rates=[0.1], batch_size=10, num_steps=2)
  np.testing.assert_array_equal(t.accuracy(res.params, x, y),
                                np.mean(np.argmax(x @ res.params["W"][0] + res.params["b"][0],
                                                  1) == y))
  other = {"W": jnp.zeros((2, 6, 3)), "b": jnp.zeros((2, 3)).at[:, 1].set(1.0)}  # class 1
  np.testing.assert_array_equal(t.accuracy(other, x, y), [np.mean(np.asarray(y) == 1)] * 2)


def test_short_fits_share_their_chunk_program():
  # A chunk is at most the power of two at or above num_steps: 3 and 4 steps share one.
  x, y = _problem()
  t = _new_trainer()
  for steps in (3, 4):
    t.fit(jax.random.key(0), x, y, learning_rates=[0.1], regs=[0.0], batch_size=10,
          num_steps=steps)
  assert t.trace_count == 1


def test_member_checks_the_grid_under_jit_too():
  grid = {"W": jnp.zeros((3, 2, 2)), "b": jnp.arange(2.0)}  # b has no member axis
  with pytest.raises(InputError, match=r"leading sizes \[2, 3\]"):
    jax.jit(train.member)(grid, 1)  # was b[1]: one of b's features
  with pytest.raises(InputError, match="i must be an integer"):
    jax.jit(train.member)({"W": jnp.zeros((3, 2))}, 1.0)


def test_init_scales_of_any_real_dtype():
  for scale in (jnp.bfloat16(0.01), np.float16(0.1), 1, np.float32(0.5)):
    assert linear.init_params(jax.random.key(0), 2, 2, scale=scale)["W"].dtype == jnp.float32


def test_accuracy_counts_only_the_first_num_examples_rows():
  # Every member predicts class 0 (bias); rows 3 and 4 (beyond num_examples) are class 0 too.
  params = {"W": np.zeros((1, 6, 3), np.float32), "b": np.array([[1.0, 0.0, 0.0]], np.float32)}
  x, y = _X[:5], np.array([0, 1, 0, 0, 0])
  assert _trainer().accuracy(params, x, y, num_examples=3, batch_size=2).tolist() == [
      pytest.approx(2 / 3)]
  assert _trainer().accuracy(params, x, y).tolist() == [pytest.approx(4 / 5)]


def test_fit_and_accuracy_say_they_run_outside_jit():
  # Both were JAX's ConcretizationTypeError from inside an input check.
  params = {"W": np.zeros((1, 6, 3), np.float32), "b": np.zeros((1, 3), np.float32)}
  y = np.array([0, 1, 0, 0, 0])
  calls = {"Trainer.fit": lambda x: _trainer().fit(jax.random.key(0), x, y, num_steps=1),
           "Trainer.accuracy": lambda x: _trainer().accuracy(params, x, y)}
  for what, call in calls.items():
    with pytest.raises(InputError, match=f"{what} .* runs outside jit") as e:
      jax.jit(call)(_X[:5])
    assert e.value.argument == "x"


def test_logged_loss_is_the_mean_of_each_members_finite_steps():
  # A member that diverged at the second step logs the mean of its finite steps.
  got = train._finite_mean(np.array([[1.0, 1.0, np.nan], [3.0, np.nan, np.inf]]))
  np.testing.assert_array_equal(got, [2.0, 1.0, np.nan])
  # float32 losses near 1e38 summed to inf, the mark of divergence, for a member that had not.
  big = train._finite_mean(np.array([[3e38], [3e38]], np.float32))
  assert big.dtype == np.float32 and big[0] == np.float32(3e38)


def test_schedule_free_members_are_evaluated_at_their_evaluation_point():
  # Schedule-free optimizers take gradients at one point and evaluate at another: fit
  # returned (and scored) the training point, and the state to recover the other was lost.
  x, _ = _problem()
  y = jnp.asarray(np.random.default_rng(4).integers(0, 3, len(x)))  # noise: the points differ
  opt = lambda lr: optax.contrib.schedule_free_adamw(lr, warmup_steps=2)
  fit = train.Trainer(LINEAR, losses.softmax_cross_entropy, optimizer=opt, full_batch=True).fit(
      jax.random.key(3), x, y, learning_rates=[0.05], regs=[0.01], num_steps=6,
      eval_sets={"train": (x, y)})
  tx = opt(0.05)
  step = jax.jit(train.make_train_step(losses.softmax_cross_entropy, linear.scores, tx, reg=0.01))
  params = LINEAR.init(jax.random.split(jax.random.key(3))[0])
  state = tx.init(params)
  for _ in range(6):
    params, state, _ = step(params, state, (x, y))
  evaluated = optax.contrib.schedule_free_eval_params(state, params)
  for k in ("W", "b"):
    np.testing.assert_allclose(fit.params[k][0], evaluated[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fit.train_params[k][0], params[k], rtol=1e-5, atol=1e-6)
  assert not np.allclose(fit.params["W"], fit.train_params["W"])
  score = train.Trainer(LINEAR, losses.softmax_cross_entropy, optimizer="sgd").accuracy
  assert fit.history[-1]["train_accuracy"].tolist() == score(fit.params, x, y).tolist()
  assert score(fit.params, x, y).tolist() != score(fit.train_params, x, y).tolist()
  # Two schedule-free groups: no single evaluation point; the training point, with a warning.
  two = lambda lr: optax.multi_transform({"W": optax.contrib.schedule_free_sgd(lr),
                                          "b": optax.contrib.schedule_free_sgd(lr)},
                                         {"W": "W", "b": "b"})
  with pytest.warns(UserWarning, match="fit scores and returns the training point"):
    fit = train.Trainer(LINEAR, losses.softmax_cross_entropy, optimizer=two).fit(
        jax.random.key(3), x, y, learning_rates=[0.05], regs=[0.0], batch_size=20, num_steps=2)
  assert fit.params is fit.train_params


def test_lookahead_takes_the_gradient_of_the_fast_weights():
  x, y = _problem()
  tx = optax.lookahead(optax.adam(0.05), sync_period=3, slow_step_size=0.5)
  apply = lambda p, xb: linear.scores(p.fast, xb)
  params = optax.LookaheadParams.init_synced(linear.init_params(jax.random.key(0), 6, 3))
  step = jax.jit(train.make_train_step(losses.softmax_cross_entropy, apply, tx, reg=0.1))
  ref_params, state, ref_state = params, tx.init(params), tx.init(params)
  for _ in range(5):
    params, state, metrics = step(params, state, (x, y))
    objective = lambda fast: (jnp.mean(losses.softmax_cross_entropy(linear.scores(fast, x), y))
                              + 0.1 * jnp.sum(fast["W"] ** 2))
    value, grad = jax.value_and_grad(objective)(ref_params.fast)
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-6)
    updates, ref_state = tx.update(grad, ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, updates)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_any_optax_object_and_clear_errors_for_optimizer_functions():
  x, y = _problem()
  fit = lambda opt, lrs=(0.05,), **kw: train.Trainer(LINEAR, losses.softmax_cross_entropy,
                                                     optimizer=opt, **kw).fit(
      jax.random.key(0), x, y, learning_rates=None if lrs is None else list(lrs),
      regs=[0.0] * (1 if lrs is None else len(lrs)), batch_size=20, num_steps=4)
  multi = optax.MultiSteps(optax.sgd(0.05), 2)  # was refused: not a GradientTransformation
  got = train.Trainer(LINEAR, losses.softmax_cross_entropy, optimizer=multi, full_batch=True).fit(
      jax.random.key(0), x, y, learning_rates=None, regs=[0.0], num_steps=4).params
  step = jax.jit(train.make_train_step(losses.softmax_cross_entropy, linear.scores, multi))
  params = LINEAR.init(jax.random.split(jax.random.key(0))[0])
  state = multi.init(params)
  for _ in range(4):  # two updates, each of two averaged gradients
    params, state, _ = step(params, state, (x, y))
  np.testing.assert_allclose(got["W"][0], params["W"], rtol=1e-6, atol=1e-7)

  class ClippedSGD:  # a class with init and update is a factory of the learning rate
    def __init__(self, learning_rate):
      self.tx = optax.chain(optax.clip(1.0), optax.sgd(learning_rate))
      self.init, self.update = self.tx.init, self.tx.update

  assert fit(ClippedSGD, lrs=(0.1, 0.01)).params["W"].shape == (2, 6, 3)
  with pytest.raises(TypeError, match="unexpected keyword argument 'betas'") as e:
    # The user's own mistake keeps its error (a note says how the function was called).
    fit(lambda lr: optax.adam(lr, betas=(0.9, 0.99)))  # pylint: disable=unexpected-keyword-arg
  assert "optimizer(learning_rate) was called with a traced jax scalar" in str(e.value.__notes__)
  with pytest.raises(TypeError, match="unary -") as e:
    fit(lambda lr: optax.chain(optax.scale_by_adam(), optax.scale(-lr)), schedule="cosine")
  assert "called with an optax schedule (step -> learning rate)" in str(e.value.__notes__)
  for opt, kw, message in [
      (lambda: optax.sgd(0.1), {}, r"optimizer\(learning_rate\) .* cannot take one argument"),
      (lambda lr: optax.adam(float(lr)), {}, "a traced jax scalar"),
  ]:
    with pytest.raises(InputError, match=message) as e:
      fit(opt, **kw)
    assert e.value.argument == "optimizer"
  with pytest.warns(UserWarning, match=r"learning rates \[0.001, 0.1\] ended with identical"):
    fit(lambda lr: optax.adam(0.05), lrs=(1e-3, 0.1))
  with warnings.catch_warnings():  # a warm-up from 0: no member moved yet, no warning
    warnings.simplefilter("error")
    train.Trainer(LINEAR, losses.softmax_cross_entropy, optimizer="sgd",
                  schedule=optax.linear_schedule(0.0, 1.0, 100)).fit(
        jax.random.key(0), x, y, learning_rates=[0.1, 0.2], regs=[0.0, 0.0], batch_size=20,
        num_steps=1)


def test_a_loss_that_is_not_one_per_example_is_refused():
  # A (B, C) loss or a summed one was accepted: the data term, and so reg's weight, was
  # scaled by C or B without a word.
  x, y = _problem()
  per_class = lambda s, t: optax.sigmoid_binary_cross_entropy(s, jax.nn.one_hot(t, 3))
  summed = lambda s, t: losses.softmax_cross_entropy(s, t).sum()
  params = LINEAR.init(jax.random.key(0))
  for loss_fn, shape in ((per_class, f"({len(x)}, 3)"), (summed, "()")):
    step = train.make_train_step(loss_fn, linear.scores, optax.sgd(0.1))
    with pytest.raises(InputError, match=rf"one loss per example, shape \({len(x)},\), got "
                       rf"shape {re.escape(shape)}") as e:
      step(params, optax.sgd(0.1).init(params), (x, y))
    assert e.value.argument == "loss_fn"
    with pytest.raises(InputError, match="one loss per example"):
      train.Trainer(LINEAR, loss_fn, optimizer="sgd").fit(
          jax.random.key(0), x, y, learning_rates=[0.1], batch_size=10, num_steps=2)
  # Inputs of several arrays (a pytree x): the batch is their rows (the check took the
  # tuple's length for it, and a dict failed).
  two = train.make_train_step(losses.softmax_cross_entropy,
                              lambda p, xs: linear.scores(p, xs[0]) + linear.scores(p, xs[1]),
                              optax.sgd(0.1))
  _, _, m = two(params, optax.sgd(0.1).init(params), ((x, x), y))
  loss, _ = train.objective(params, {"a": x}, y, 0.0, loss_fn=losses.softmax_cross_entropy,
                            apply_fn=lambda p, xs: linear.scores(p, xs["a"]))
  assert np.isfinite(m["loss"]) and np.isfinite(loss)
  fixed = lambda s, t: per_class(s, t).sum(-1)  # what the message says to do
  step = train.make_train_step(fixed, linear.scores, optax.sgd(0.1))
  assert np.isfinite(step(params, optax.sgd(0.1).init(params), (x, y))[2]["loss"])


def test_grid_crosses_rates_and_regs_as_the_command_line_does():
  # fit pairs its lists; the command line crosses --learning_rate and --reg: a researcher
  # who passed the command line's lists to fit trained a third of a 3 x 3 grid.
  assert train.grid([1e-3, 3e-3], [0.0, 1e-4, 1e-2]) == {
      "learning_rates": [1e-3, 1e-3, 1e-3, 3e-3, 3e-3, 3e-3],
      "regs": [0.0, 1e-4, 1e-2, 0.0, 1e-4, 1e-2]}
  with pytest.raises(InputError, match="at least one learning rate and one reg") as e:
    train.grid([1e-3], [])
  assert e.value.argument == "regs"
  assert train.grid(1e-3, [0.0, 1.0]) == {"learning_rates": [1e-3, 1e-3], "regs": [0.0, 1.0]}
  x, y = _problem()
  fit = train.Trainer(LINEAR, losses.softmax_cross_entropy, optimizer="sgd").fit(
      jax.random.key(0), x, y, **train.grid([0.1, 0.01], [0.0, 1.0]), batch_size=10,
      num_steps=2)
  assert fit.params["W"].shape[0] == 4


def test_accuracy_of_a_member_with_nan_scores_is_nan_and_inf_scores_count():
  """argmax takes a NaN for the largest score: a member scoring NaN would get the share of
  class 0 (or of the class with a NaN bias) as its accuracy. A score of -inf rules a class
  out (the losses allow it): that member's accuracy is that of its argmax."""
  x, y = _problem(n=40)
  params = jax.vmap(lambda _: linear.init_params(jax.random.key(5), 6, 3, scale=1.0))(jnp.arange(4))
  params["W"] = params["W"].at[1].set(jnp.nan)
  params["b"] = params["b"].at[2, 1].set(jnp.nan).at[3, 2].set(-jnp.inf)
  acc = _trainer().accuracy(params, x, y, batch_size=16)
  assert np.isfinite(acc[0]) and np.isnan(acc[1]) and np.isnan(acc[2])
  scores = np.asarray(x) @ np.asarray(params["W"][3]) + np.asarray(params["b"][3])
  assert acc[3] == pytest.approx(np.mean(np.argmax(scores, 1) == np.asarray(y)))


def test_backtracking_line_search_without_a_stored_gradient_trains():
  """optax.scale_by_backtracking_linesearch keeps the value but (store_grad=False) not the
  gradient in its state: the step computes both instead of asking the state for them, and
  fit still takes full batches for it by default, as for every line search."""
  x, y = _problem(n=64)
  p = linear.init_params(jax.random.key(0), 6, 3)
  for store in (False, True):
    tx = optax.chain(optax.sgd(1.0), optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=15, store_grad=store))
    step = jax.jit(train.make_train_step(losses.softmax_cross_entropy, linear.scores, tx))
    q, state = p, tx.init(p)
    first = None
    for _ in range(5):
      q, state, m = step(q, state, (x, y))
      first = m["loss"] if first is None else first
    assert np.isfinite(m["loss"]) and m["loss"] < first
    t = train.Trainer(LINEAR, losses.softmax_cross_entropy, optimizer=tx)
    res = t.fit(jax.random.key(0), x, y, regs=[0.0], num_steps=3)  # no batch_size: full
    assert res.losses[-1, 0] < res.losses[0, 0]
  # Inside a mask that keeps every parameter, it sees them all: it trains (a mask that
  # leaves some out is refused, test_inputs_that_cannot_be_right_are_refused).
  tx = optax.masked(_BACKTRACKING, {"W": True, "b": True})
  step = jax.jit(train.make_train_step(losses.softmax_cross_entropy, linear.scores, tx))
  q, state, first = step(p, tx.init(p), (x, y))
  assert step(q, state, (x, y))[2]["loss"] < first["loss"]


def test_a_penalty_that_is_not_a_scalar_is_named():
  x, y = _problem(n=8)
  p = linear.init_params(jax.random.key(0), 6, 3)
  bad = lambda q: q["W"] ** 2
  with pytest.raises(InputError, match="penalty must return one number") as e:
    train.objective(p, x, y, 0.1, apply_fn=linear.scores,
                    loss_fn=losses.softmax_cross_entropy, penalty=bad)
  assert e.value.argument == "penalty"
  step = train.make_train_step(losses.softmax_cross_entropy, linear.scores, optax.sgd(0.1),
                               reg=0.1, penalty=bad)
  with pytest.raises(InputError, match="penalty must return one number"):
    jax.jit(step)(p, optax.sgd(0.1).init(p), (x, y))


def test_fit_names_y_for_one_hot_labels_and_its_key_split_is_as_documented():
  x, y = _problem(n=32)
  with pytest.raises(InputError, match="argmax") as e:
    _trainer().fit(jax.random.key(0), x, jax.nn.one_hot(y, 3), learning_rates=[0.1], regs=[0.0],
                   num_steps=2)
  assert e.value.argument == "y"
  # fit's starting params are model.init(split(key)[0]) (the docstring): with a learning
  # rate of ~0, one step leaves them (almost) there.
  key = jax.random.key(7)
  res = _trainer().fit(key, x, y, learning_rates=[1e-30], regs=[0.0], num_steps=1,
                       batch_size=32)
  init = LINEAR.init(jax.random.split(key)[0])
  np.testing.assert_allclose(np.asarray(res.params["W"][0]), np.asarray(init["W"]), atol=1e-6)


def test_a_train_step_takes_x_as_a_pytree_under_jit():
  # Two inputs of different widths, as a tuple: the empty-batch check reads each leaf.
  p = linear.init_params(jax.random.key(0), 6, 3)
  apply = lambda params, xs: linear.scores(params, xs[0]) + xs[1][:, :3]
  tx = optax.sgd(0.1)
  step = jax.jit(train.make_train_step(losses.softmax_cross_entropy, apply, tx))
  new, _, out = step(p, tx.init(p), ((_X, _X[:, :4]), _Y))
  assert np.isfinite(float(out["loss"])) and not np.allclose(new["W"], p["W"])


def test_params_with_an_entry_named_value_train_as_any_other():
  """A params entry named "value" (a value head, attention's query/key/value) was taken for
  a line search's stored objective: adam's step failed, momentum trained on full batches."""
  x, y = _problem()
  named = lambda p: {"value": p["W"], "b": p["b"]}  # the same model, its W renamed
  apply = lambda p, xb: xb @ p["value"] + p["b"]
  p0 = linear.init_params(jax.random.key(0), 6, 3)
  for tx in (optax.adam(0.1), optax.lbfgs()):
    step = jax.jit(train.make_train_step(losses.softmax_cross_entropy, apply, tx))
    ref = jax.jit(train.make_train_step(losses.softmax_cross_entropy, linear.scores, tx))
    p, s, q, t = named(p0), tx.init(named(p0)), p0, tx.init(p0)
    for _ in range(3):
      p, s, _ = step(p, s, (x, y))
      q, t, _ = ref(q, t, (x, y))
    np.testing.assert_allclose(p["value"], q["W"], rtol=1e-6, atol=1e-7)
  model = train.Model(init=lambda k: named(linear.init_params(k, 6, 3)), apply=apply)
  fit = train.Trainer(model, losses.softmax_cross_entropy, optimizer="momentum").fit(
      jax.random.key(0), x, y, learning_rates=[0.1], batch_size=20, num_steps=3)
  assert fit.history[-1]["epoch"] == 0.5  # 3 minibatches of 20 of 120 rows, not full batches


def test_float64_rows_that_float32_holds_well_enough_are_taken():
  """The spread check refuses only what float32 would move by over 1/1024 of a column's
  range: whole numbers it holds exactly, float64 rounding noise and a day of timestamps
  in seconds pass; a list of rows far from 0 is checked as an array is."""
  p = linear.init_params(jax.random.key(0), 3, 2)
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(5), size=4)
  ok = np.stack([100000.0 + np.arange(4), probs.sum(axis=1), 1.7e9 + np.linspace(0, 86400, 4)], 1)
  assert linear.scores(p, ok).shape == (4, 2)
  far = (1e8 + rng.normal(size=(40, 6))).tolist()
  with pytest.raises(InputError, match="x's feature 0 lies near 1e\\+08") as e:
    _trainer().fit(jax.random.key(0), far, _Y[:40], learning_rates=[0.1], batch_size=10,
                   num_steps=1)
  assert e.value.argument == "x"


def test_eval_sets_go_to_an_accelerator_once(monkeypatch):
  """A host eval set was sliced on the host and sent batch by batch at every record (a
  train-accuracy set of CIFAR-10's size: 600 MB over PCIe each time); off the CPU it is
  sent once, and the accuracies are the same."""
  x, y = (np.asarray(a) for a in _problem(n=64))
  trainer = train.Trainer(LINEAR, losses.softmax_cross_entropy, optimizer="sgd")
  fit = lambda: trainer.fit(jax.random.key(0), x, y, learning_rates=[0.1], batch_size=16,
                            num_steps=4, log_every=2, eval_sets={"val": (x, y)})
  want = [r["val_accuracy"] for r in fit().history]
  checked = trainer._checked_eval_sets  # pylint: disable=protected-access
  assert all(isinstance(a, np.ndarray) for a in checked({"val": (x, y)})[0]["val"][:2])
  monkeypatch.setattr(sharding, "default_platform", lambda: "gpu")  # as on a GPU machine
  assert all(isinstance(a, jax.Array) for a in checked({"val": (x, y)})[0]["val"][:2])
  np.testing.assert_array_equal([r["val_accuracy"] for r in fit().history], want)


@pytest.mark.parametrize("tx", [
    optax.MultiSteps(optax.polyak_sgd(max_learning_rate=1.0), 2),  # passes **extra_args on
    optax.contrib.sophia(0.05),  # names the objective obj_fn
])
def test_transformations_that_need_the_objective_get_it(tx):
  x, y = _problem()
  params = linear.init_params(jax.random.key(0), 6, 3)
  step = jax.jit(train.make_train_step(losses.softmax_cross_entropy, linear.scores, tx))
  state, first = tx.init(params), None
  for _ in range(8):
    params, state, m = step(params, state, (x, y))
    first = m["loss"] if first is None else first
  assert np.isfinite(m["loss"]) and m["loss"] < first


def test_models_and_optimizers_the_trainer_cannot_train_right_are_refused():
  x, y = _problem()
  flat = train.Model(lambda k: {"w": jnp.zeros(6), "b": jnp.zeros(())},
                     lambda p, x: x @ p["w"] + p["b"])  # (N,) scores: N read as the classes
  with pytest.raises(InputError, match=r"model.apply must return class scores \(N, C\) for x "
                     r"of N rows, got shape \(120,\)") as e:
    train.Trainer(flat, losses.softmax_cross_entropy, optimizer="sgd").fit(
        jax.random.key(0), x, y, learning_rates=[0.1], batch_size=16, num_steps=2)
  assert e.value.argument == "model"
  lookahead = lambda lr: optax.lookahead(optax.adam(lr), 5, 0.5)  # with plain dict params
  with pytest.raises(InputError, match=r"optax.LookaheadParams.init_synced\(params\)") as e:
    train.Trainer(LINEAR, losses.softmax_cross_entropy, optimizer=lookahead).fit(
        jax.random.key(0), x, y, learning_rates=[0.1], batch_size=16, num_steps=2)
  assert e.value.argument == "params"
  with pytest.raises(InputError, match="full_batch=False with a line search") as e:
    train.Trainer(LINEAR, losses.softmax_cross_entropy, optimizer="lbfgs",
                  full_batch=False).fit(jax.random.key(0), x, y, batch_size=16, num_steps=2)
  assert e.value.argument == "full_batch"


def test_ragged_rows_are_named_by_the_models():
  for scores, params in ((linear.scores, linear.init_params(jax.random.key(0), 6, 3)),
                         (mlp.scores, mlp.init_params(jax.random.key(0), 6, 4, 3))):
    with pytest.raises(InputError, match="x_NxD must be a rectangular numeric array") as e:
      scores(params, [[1, 2, 3, 4, 5, 6], [1]])
    assert e.value.argument == "x_NxD"
