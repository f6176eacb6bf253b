"""Training: a pure step from a loss and an optax optimizer, a host loop, evaluation.

Everything trains a *grid* of settings at once: parameters and optimizer
states carry a leading grid axis G, each member has its own learning rate and
regularisation strength, and one compiled program (``jax.vmap`` over the grid,
``lax.scan`` over the steps of an epoch) advances them all on the same
minibatches. A single run is a grid of one.

Objective of each member: mean(loss(apply(params, x), y)) + reg * l2_penalty(params).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlin import losses
from jaxlin.errors import DivergenceError

OPTIMIZERS = ("sgd", "momentum", "adam", "lbfgs")
SCHEDULES = ("constant", "cosine", "step")


@dataclasses.dataclass(frozen=True)
class Model:
  """How to make and apply parameters: init(key) -> params; apply(params, x) -> scores."""
  init: Callable[[Any], Any]
  apply: Callable[[Any, Any], Any]


def make_schedule(name: str, total_steps: int) -> Callable[[Any], Any]:
  """Multiplier of the base learning rate at step t (1 at t = 0)."""
  if name == "constant":
    return lambda t: jnp.ones_like(t, jnp.float32)
  if name == "cosine":
    return optax.cosine_decay_schedule(1.0, max(total_steps, 1))
  if name == "step":  # x0.1 at 50 % and again at 75 % of training
    return optax.piecewise_constant_schedule(
        1.0, {int(total_steps * 0.5): 0.1, int(total_steps * 0.75): 0.1})
  raise ValueError(f"unknown schedule {name!r}; choose from {SCHEDULES}")


def make_optimizer(name: str, learning_rate) -> optax.GradientTransformation:
  """sgd, momentum (Nesterov, 0.9), adam, or lbfgs (full batch, line search: no learning rate)."""
  if name == "sgd":
    return optax.sgd(learning_rate)
  if name == "momentum":
    return optax.sgd(learning_rate, momentum=0.9, nesterov=True)
  if name == "adam":
    return optax.adam(learning_rate)
  if name == "lbfgs":
    return optax.lbfgs()
  raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")


def objective(params, x, y, reg, *, apply_fn, loss_fn):
  """(mean data loss + reg * l2_penalty, mean data loss)."""
  data = jnp.mean(loss_fn(apply_fn(params, x), y))
  return data + reg * losses.l2_penalty(params), data


class GridState(NamedTuple):
  params: Any       # pytree, leaves (G, ...)
  opt_state: Any    # pytree, leaves (G, ...)
  step: Any         # () int32
  alive: Any        # (G,) bool: False once a member's loss was not finite
  diverged_at: Any  # (G,) int32: step of the first non-finite loss, -1 if none


@dataclasses.dataclass
class FitResult:
  params: Any                 # (G, ...) final parameters of every member
  losses: np.ndarray          # (steps, G) training objective at every step
  history: list               # per logged step: {"step", "epoch", "loss", "train_accuracy", "val_accuracy"} (lists over G)
  diverged_at: np.ndarray     # (G,) -1 where finite throughout
  steps: int
  compile_count: int


class Trainer:
  """Compiles the epoch program once; ``fit`` runs the host loop."""

  def __init__(self, model: Model, loss_fn: Callable, *, optimizer: str, schedule: str = "constant",
               total_steps: int = 1, mesh=None):
    """mesh: a jax.sharding.Mesh with axis "data" for data-parallel training
    (each minibatch split along the batch axis, parameters replicated)."""
    if optimizer not in OPTIMIZERS:
      raise ValueError(f"unknown optimizer {optimizer!r}; choose from {OPTIMIZERS}")
    self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
    self.schedule = make_schedule(schedule, total_steps)
    self.full_batch = optimizer == "lbfgs"
    self.mesh = mesh if mesh is not None and mesh.devices.size > 1 else None
    self.trace_count = 0  # how many times the epoch program was traced (compiled)
    self._run_steps = jax.jit(self._run_steps_impl, donate_argnums=(0,))
    self._accuracy = jax.jit(self._accuracy_impl)

  # ---- pure pieces -------------------------------------------------------
  def _tx(self, lr):
    return make_optimizer(self.optimizer, lambda count: lr * self.schedule(count))

  def init(self, key, learning_rates, regs) -> tuple[GridState, dict]:
    lrs = jnp.asarray(learning_rates, jnp.float32)
    regs = jnp.asarray(regs, jnp.float32)
    if lrs.shape != regs.shape or lrs.ndim != 1:
      raise ValueError(f"learning_rates and regs must be 1-D of equal length, got {lrs.shape}, {regs.shape}")
    g = lrs.shape[0]
    # Every member starts from the same parameters: settings are compared fairly,
    # and member i equals a single run with its (lr, reg).
    params = jax.vmap(lambda _: self.model.init(key))(jnp.arange(g))
    opt_state = jax.vmap(self._tx(1.0).init)(params)
    state = GridState(params, opt_state, jnp.zeros((), jnp.int32), jnp.ones((g,), bool),
                      jnp.full((g,), -1, jnp.int32))
    return state, {"lr": lrs, "reg": regs}

  def _member_step(self, params, opt_state, lr, reg, x, y):
    f = functools.partial(objective, x=x, y=y, reg=reg, apply_fn=self.model.apply,
                          loss_fn=self.loss_fn)
    tx = self._tx(lr)
    if self.full_batch:
      value_fn = lambda p: f(p)[0]
      value, grad = optax.value_and_grad_from_state(value_fn)(params, state=opt_state)
      updates, opt_state = tx.update(grad, opt_state, params, value=value, grad=grad,
                                     value_fn=value_fn)
    else:
      (value, _), grad = jax.value_and_grad(f, has_aux=True)(params)
      updates, opt_state = tx.update(grad, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  def _run_steps_impl(self, state: GridState, hyper, x, y, idx_SxB, valid_S):
    """Runs the S steps of one chunk; steps with valid_S False change nothing.

    (The last chunk is padded to the same length, so one program serves all.)
    """
    self.trace_count += 1  # Python side effect: runs only while tracing

    def one_step(state, inputs):
      idx, valid = inputs
      xb, yb = (x, y) if self.full_batch else (x[idx], y[idx])
      if self.mesh is not None:  # data parallel: the batch split across devices
        batch = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))
        xb = jax.lax.with_sharding_constraint(xb, batch)
        yb = jax.lax.with_sharding_constraint(yb, batch)
      new_p, new_o, value = jax.vmap(self._member_step, in_axes=(0, 0, 0, 0, None, None))(
          state.params, state.opt_state, hyper["lr"], hyper["reg"], xb, yb)
      finite = jnp.isfinite(value) | ~valid
      ok = state.alive & finite & valid
      keep = lambda new, old: jnp.where(ok.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
      params = jax.tree.map(keep, new_p, state.params)
      opt_state = jax.tree.map(keep, new_o, state.opt_state)
      diverged_at = jnp.where(state.alive & ~finite, state.step, state.diverged_at)
      alive = state.alive & finite
      return GridState(params, opt_state, state.step + valid.astype(jnp.int32), alive,
                       diverged_at), value

    return jax.lax.scan(one_step, state, (idx_SxB, valid_S))

  def _accuracy_impl(self, params, x_BxD, y_B, mask_B):
    pred = jax.vmap(lambda p: jnp.argmax(self.model.apply(p, x_BxD), axis=1))(params)
    return jnp.sum((pred == y_B[None]) & mask_B[None], axis=1)

  # ---- host side -------------------------------------------------------------
  def accuracy(self, params, x, y, *, num_examples: int | None = None, batch_size: int = 2048):
    """(G,) accuracy of every member on the first ``num_examples`` rows (all by default).

    Pad-and-mask: each example counts once, whatever the batch and device count.
    """
    n = x.shape[0] if num_examples is None else num_examples
    correct = 0
    for start in range(0, n, batch_size):
      xb, yb = x[start:start + batch_size], y[start:start + batch_size]
      valid = min(xb.shape[0], n - start)
      pad = min(batch_size, n) - xb.shape[0]
      mask = jnp.arange(xb.shape[0] + max(pad, 0)) < valid
      if pad > 0:
        xb = jnp.pad(xb, ((0, pad), (0, 0)))
        yb = jnp.pad(yb, (0, pad))
      correct = correct + self._accuracy(params, xb, yb, mask)
    return np.asarray(correct) / n

  def fit(self, key, x, y, *, learning_rates: Sequence[float], regs: Sequence[float],
          batch_size: int, num_steps: int, log_every: int | None = None,
          eval_sets: dict | None = None, callback: Callable[[dict], None] | None = None,
          num_examples: int | None = None) -> FitResult:
    """Train every (learning rate, reg) pair for ``num_steps`` steps on the same batches.

    Minibatches are drawn without replacement from a fresh permutation each
    epoch (``fold_in(key, epoch)``), on device. Every ``log_every`` steps (one
    epoch by default) the accuracies on ``eval_sets`` ({name: (x, y)} or
    {name: (x, y, num_examples)}) are recorded and ``callback(record)`` is
    called. Raises DivergenceError when every member's loss became non-finite.

    ``x`` may be a global array already laid along the mesh, rows split across
    processes (``sharding.rows_to_global``); its rows past ``num_examples``
    are padding and never drawn. Other inputs are replicated on the mesh.
    """
    eval_sets = {k: (v if len(v) == 3 else (*v, None)) for k, v in (eval_sets or {}).items()}
    if self.mesh is not None:  # on the mesh: one global array even across hosts
      replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
      place = lambda a: a if _on_mesh(a, self.mesh) else jax.device_put(np.asarray(a), replicated)
      x, y = place(x), place(y)
      eval_sets = {k: (place(a), place(b), m) for k, (a, b, m) in eval_sets.items()}
    x, y = jnp.asarray(x), jnp.asarray(y)
    n = x.shape[0] if num_examples is None else num_examples
    if not self.full_batch and not 1 <= batch_size <= n:
      raise ValueError(f"batch_size must be in [1, {n}] (training examples), got {batch_size}")
    steps_per_epoch = 1 if self.full_batch else n // batch_size
    log_every = log_every or (10 if self.full_batch else steps_per_epoch)
    k_init, k_data = jax.random.split(key)
    state, hyper = self.init(k_init, learning_rates, regs)
    all_losses, history = [], []
    done = 0
    while done < num_steps:
      chunk = min(log_every, num_steps - done)
      valid = jnp.arange(log_every) < chunk
      if self.full_batch:
        idx = jnp.zeros((log_every, 1), jnp.int32)  # unused: every step sees all the data
      else:
        # Steps [done, done + log_every) may span epochs: take their rows of the epoch permutations.
        epochs = range(done // steps_per_epoch, (done + log_every - 1) // steps_per_epoch + 1)
        perm = jnp.concatenate([_epoch_batches(k_data, e, n, steps_per_epoch, batch_size)
                                for e in epochs])
        start = done - epochs[0] * steps_per_epoch
        idx = perm[start:start + log_every]
      state, step_losses = self._run_steps(state, hyper, x, y, idx, valid)
      done += chunk
      all_losses.append(np.asarray(step_losses)[:chunk])
      record = {"step": done, "epoch": done / steps_per_epoch,
                "loss": _finite_mean(all_losses[-1])}
      for name, (ex, ey, en) in eval_sets.items():
        record[f"{name}_accuracy"] = self.accuracy(state.params, ex, ey, num_examples=en)
      history.append(record)
      if callback is not None:
        callback(record)
      if not bool(np.asarray(state.alive).any()):
        first = int(np.asarray(state.diverged_at).min())
        raise DivergenceError(
            f"training diverged: the loss became inf or NaN at step {first} for every setting "
            f"(largest learning rate {max(learning_rates):g}); try a smaller --learning_rate")
    return FitResult(params=state.params, losses=np.concatenate(all_losses),
                     history=history, diverged_at=np.asarray(state.diverged_at),
                     steps=done, compile_count=self.trace_count)


def _on_mesh(a, mesh) -> bool:
  """Whether ``a`` is already a global array on ``mesh`` (e.g. rows split across processes)."""
  sharding = getattr(a, "sharding", None)
  return isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh == mesh


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _epoch_batches(key, epoch, n, steps, batch_size):
  """(steps, batch_size) row indices of one epoch: a fresh permutation per epoch."""
  perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
  return perm[:steps * batch_size].reshape(steps, batch_size)


def _finite_mean(losses_SxG):
  """Mean over steps of each member's finite losses (NaN for a member with none)."""
  finite = np.isfinite(losses_SxG)
  total = np.where(finite, losses_SxG, 0.0).sum(0)
  count = finite.sum(0)
  return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def member(params_G, i: int):
  """Parameters of grid member i."""
  return jax.tree.map(lambda v: v[i], params_G)
