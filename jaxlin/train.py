"""Training: a pure step from a loss, a model and any optax optimizer; a host loop; evaluation.

The building block is ``make_train_step(loss_fn, apply_fn, tx)``: a pure,
jit-able ``train_step(params, opt_state, (x, y)) -> (params, opt_state,
metrics)`` for any params pytree and any ``optax.GradientTransformation``
(line-search methods such as ``optax.lbfgs`` included). Use it in your own loop,
or let ``Trainer`` run it.

``Trainer`` trains a *grid* of settings at once: parameters and optimizer
states carry a leading grid axis G, each member has its own learning rate and
regularisation strength, and one compiled program (``jax.vmap`` over the grid,
``lax.scan`` over the steps of a chunk) advances them all on the same
minibatches. A single run is a grid of one.

Objective of each member: mean_i loss(apply(params, x_i), y_i) + reg * penalty(params),
penalty = ``losses.l2_penalty`` (every weight matrix, no biases) unless given.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import warnings
from typing import Any, Callable, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlin import _checks, losses, sharding
from jaxlin.errors import DivergenceError, InputError

__all__ = ["OPTIMIZERS", "SCHEDULES", "Model", "FitResult", "Trainer", "make_train_step",
           "make_optimizer", "make_schedule", "objective", "member", "grid"]

OPTIMIZERS = ("sgd", "momentum", "adam", "lbfgs")
SCHEDULES = ("constant", "cosine", "step")

Optimizer = Union[str, optax.GradientTransformation, Callable[[Any], optax.GradientTransformation]]
Schedule = Union[str, Callable[[Any], Any], None]


@dataclasses.dataclass(frozen=True)
class Model:
  """How to make and apply parameters: init(key) -> params; apply(params, x_BxD) -> scores_BxC.

  params may be any pytree (dicts, lists, tuples of arrays).
  """
  init: Callable[[Any], Any]
  apply: Callable[[Any, Any], Any]


def _constant(t):
  return jnp.ones_like(t, jnp.float32)


def make_schedule(name: str, num_steps: int) -> Callable[[Any], Any]:
  """Multiplier of the base learning rate at step t (0-based) of a run of ``num_steps`` steps.

  * constant: 1.
  * cosine: (1 + cos(pi * min(t, T) / T)) / 2 with T = num_steps
    (``optax.cosine_decay_schedule(1, T)``): 1 at t = 0, 0 at the end.
  * step: 1, then x0.1 from step floor(T / 2) and x0.1 again from floor(3 T / 4)
    (never before step 1).
  """
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise InputError(f"num_steps must be a positive integer, got {num_steps!r}",
                     argument="num_steps")
  if name == "constant":
    return _constant
  if name == "cosine":
    return optax.cosine_decay_schedule(1.0, int(num_steps))
  if name == "step":
    first = max(int(num_steps * 0.5), 1)
    second = max(int(num_steps * 0.75), 1)
    cuts = {first: 0.1, second: 0.1} if first != second else {first: 0.01}
    return optax.piecewise_constant_schedule(1.0, cuts)
  raise InputError(f"unknown schedule {name!r}; choose from {SCHEDULES} or pass a callable "
                   "step -> multiplier", argument="schedule")


def make_optimizer(name: str, learning_rate) -> optax.GradientTransformation:
  """sgd, momentum (Nesterov, 0.9), adam, or lbfgs (line search; no learning rate).

  learning_rate: a number or an optax schedule (step -> learning rate).
  """
  if name not in OPTIMIZERS:
    raise InputError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}, or pass an "
                     "optax.GradientTransformation or a function learning_rate -> one",
                     argument="optimizer")
  if name != "lbfgs" and not callable(learning_rate) and not _checks.is_traced(learning_rate):
    try:
      ok = (_checks.is_real_number(learning_rate) and math.isfinite(float(learning_rate))
            and float(learning_rate) > 0)
    except (TypeError, ValueError):
      ok = False
    if not ok:
      raise InputError(f"learning_rate must be a finite number > 0 or an optax schedule, got "
                       f"{learning_rate!r}", argument="learning_rate")
  if name == "sgd":
    return optax.sgd(learning_rate)
  if name == "momentum":
    return optax.sgd(learning_rate, momentum=0.9, nesterov=True)
  if name == "adam":
    return optax.adam(learning_rate)
  return optax.lbfgs()


def objective(params, x, y, reg, *, apply_fn, loss_fn, penalty=None):
  """(mean data loss + reg * penalty(params), mean data loss); penalty defaults to l2_penalty.

  loss_fn must give one loss per example, shape (B,) for B rows of x (InputError
  otherwise: a (B, C) or summed loss would scale the data term, and so reg's weight,
  by C or B without a word)."""
  per_example = loss_fn(apply_fn(params, x), y)
  leaves = jax.tree.leaves(x)  # x may be a pytree of arrays (several inputs)
  batch = jnp.shape(leaves[0])[0] if leaves and jnp.ndim(leaves[0]) else None
  if batch is not None and jnp.shape(per_example) != (batch,):
    raise InputError(f"loss_fn must return one loss per example, shape ({batch},), got shape "
                     f"{jnp.shape(per_example)}; reduce over classes inside it (e.g. "
                     "optax.sigmoid_binary_cross_entropy(...).sum(-1)) and leave the mean over "
                     "examples to training", argument="loss_fn")
  data = jnp.mean(per_example)
  penalty_fn = losses.l2_penalty if penalty is None else penalty
  value = penalty_fn(params)
  if jnp.shape(value) != ():
    raise InputError(f"penalty must return one number (a scalar), got shape {jnp.shape(value)}; "
                     "sum it over the params, e.g. lambda p: jnp.sum(p['W'] ** 2)",
                     argument="penalty")
  return data + reg * value, data


def _is_line_search_state(node) -> bool:
  """optax's line-search states (zoom, backtracking): named tuples of the step's
  learning_rate, the objective's value and gradient, and info. Found by their fields, not
  by a key named "value" anywhere in the state (params' own "value" entries are in it too,
  e.g. adam's moments of {"policy": ..., "value": ...})."""
  return {"learning_rate", "value", "grad", "info"} <= set(getattr(node, "_fields", ()))


def _line_search_state(opt_state, name: str = "tx"):
  """The optimizer's line-search state (optax.lbfgs and other line searches), or None:
  with one, the optimizer needs ``value``, ``grad`` and ``value_fn`` in update and the same
  (full) batch at every step. InputError naming ``name`` for more than one: each would
  search along its own direction with one objective, which optax does not support."""
  found = [node for node in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_line_search_state)
           if _is_line_search_state(node)]
  if len(found) > 1:
    raise InputError(f"{name} holds {len(found)} line searches (e.g. optax.lbfgs in several "
                     "groups of optax.multi_transform); use one over all the parameters, or "
                     "another optimizer for the other groups", argument=name)
  return found[0] if found else None


_PARTIAL_LINE_SEARCH = (
    "tx's line search sees only some of the parameters (e.g. optax.lbfgs in one group of "
    "optax.multi_transform, or inside optax.masked); it evaluates the objective at its own "
    "parameters, so give it all of them")


def _masked_line_search(opt_state) -> bool:
  """Whether a line search sits inside ``optax.masked``'s state (its own, or that of a group
  of ``optax.multi_transform``): there it may see only some of the parameters."""
  is_masked = lambda node: isinstance(node, optax.MaskedState)
  return any(is_masked(node) and _line_search_state(node.inner_state) is not None
             for node in jax.tree_util.tree_leaves(opt_state, is_leaf=is_masked))


def _has_lookahead(opt_state) -> bool:
  is_state = lambda node: isinstance(node, optax.LookaheadState)
  return any(is_state(node) for node in jax.tree_util.tree_leaves(opt_state, is_leaf=is_state))


def _has_line_search(opt_state, name: str = "tx") -> bool:
  return _line_search_state(opt_state, name) is not None


def _value_and_grad_from_state(value_fn, params, state):
  """``optax.value_and_grad_from_state`` for the line-search ``state`` found by its type:
  the value and gradient the line search stored at params, computed afresh where the value
  is not finite (the first step)."""
  return jax.lax.cond(jnp.isfinite(state.value), lambda p: (state.value, state.grad),
                      jax.value_and_grad(value_fn), params)


def make_train_step(loss_fn: Callable, apply_fn: Callable, tx: optax.GradientTransformation, *,
                    reg=0.0, penalty: Callable[[Any], Any] | None = None):
  """A pure step of gradient descent on mean(loss) + reg * penalty.

  Args:
    loss_fn: per-example loss (scores_BxC, labels_B) -> (B,), e.g. losses.softmax_cross_entropy.
    apply_fn: (params, x_BxD) -> scores_BxC for any params pytree.
    tx: any optax.GradientTransformation. One that takes extra arguments
      (``optax.GradientTransformationExtraArgs``: chains, reduce_on_plateau,
      polyak_sgd, lbfgs; or an update with ``**kwargs``: optax.MultiSteps) gets
      those of ``value`` (the objective at params), ``grad`` and ``value_fn`` that
      its update accepts (``value_fn`` as ``obj_fn`` too where it asks for that:
      optax.contrib.sophia); give line searches (optax.lbfgs) the same batch every
      step. For optax.lookahead, params are
      ``optax.LookaheadParams``: apply_fn gets them whole, the gradient (and the
      penalty) is of ``params.fast``.
    reg: regularisation strength (a number or a traced scalar).
    penalty: params -> scalar; default losses.l2_penalty (every leaf with ndim >= 2).

  Returns:
    ``train_step(params, opt_state, batch) -> (params, opt_state, metrics)`` with
    batch = (x_BxD, y_B) and metrics = {"loss": objective, "data_loss": mean loss}
    at the parameters before the step. Pure and jit-able; init the state with
    ``tx.init(params)``.
  """
  penalty_fn = losses.l2_penalty if penalty is None else penalty
  _callable(loss_fn, "loss_fn", "(scores_BxC, labels_B) -> (B,) losses")
  _callable(apply_fn, "apply_fn", "(params, x_BxD) -> scores_BxC")
  _callable(penalty_fn, "penalty", "params -> scalar")
  if not _has_methods(tx, "init", "update"):
    raise InputError(f"tx must be an optax.GradientTransformation (e.g. optax.sgd(1e-3)), got "
                     f"{tx!r}", argument="tx")
  concrete = not isinstance(reg, jax.core.Tracer)
  if concrete:
    try:
      ok = _checks.is_real_number(reg) and 0 <= float(reg) < math.inf
    except (TypeError, ValueError):
      ok = False
    if not ok:
      raise InputError(f"reg must be a finite number >= 0, got {reg!r}", argument="reg")
  check_penalised = concrete and float(reg) > 0 and penalty is None

  def train_step(params, opt_state, batch):
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
      got = (f"a {type(batch).__name__} with keys {sorted(map(str, batch))}"
             if isinstance(batch, dict) else f"{type(batch).__name__}"
             + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
      raise InputError(f"batch must be a pair (x, y) of inputs and labels, got {got}; e.g. "
                       "(batch['image'], batch['label'])", argument="batch")
    x, y = batch
    if any(np.ndim(leaf) >= 1 and np.shape(leaf)[0] == 0  # shapes: known at trace time
           for leaf in jax.tree_util.tree_leaves(x)):
      raise InputError("batch holds no examples (x has 0 rows): its loss is NaN and the step "
                       "would change nothing; skip empty batches", argument="batch")
    _check_float_params(params)  # at trace time, as the next check
    if check_penalised:  # reg > 0 must penalise something
      _check_penalised(params)
    if not isinstance(params, optax.LookaheadParams) and _has_lookahead(opt_state):
      raise InputError("tx holds optax.lookahead, which keeps fast and slow weights: params "
                       "must be optax.LookaheadParams.init_synced(params), and tx.init gets "
                       "those too (a Trainer's model.init returns them)", argument="params")

    def f(p):
      return objective(p, x, y, reg, apply_fn=apply_fn, loss_fn=loss_fn, penalty=penalty_fn)

    if isinstance(params, optax.LookaheadParams):  # optax.lookahead: the fast weights' gradient
      def f_fast(fast):  # apply_fn sees the LookaheadParams; the penalty, the fast weights
        return objective(params._replace(fast=fast), x, y, reg, apply_fn=apply_fn,
                         loss_fn=loss_fn, penalty=lambda p: penalty_fn(p.fast))
      (value, data), grad = jax.value_and_grad(f_fast, has_aux=True)(params.fast)
      updates, opt_state = tx.update(grad, opt_state, params)
    elif (found := _line_search_state(opt_state)) is not None and found.grad is not None:
      if jax.tree.structure(found.grad) != jax.tree.structure(params):
        raise InputError(_PARTIAL_LINE_SEARCH, argument="tx")
      # The gradient at params is stored (not optax.scale_by_backtracking_linesearch's with
      # its default store_grad=False): reused.
      value_fn = lambda p: f(p)[0]
      value, grad = _value_and_grad_from_state(value_fn, params, found)
      data = f(params)[1]  # removed by the compiler where unused
      updates, opt_state = tx.update(grad, opt_state, params, value=value, grad=grad,
                                     value_fn=value_fn)
    else:
      (value, data), grad = jax.value_and_grad(f, has_aux=True)(params)
      try:
        updates, opt_state = _update(tx, grad, opt_state, params, value=value, grad=grad,
                                     value_fn=lambda p: f(p)[0])
      except ValueError as e:  # raised while tracing: optax's own tree error
        # A line search that stores no gradient (optax.scale_by_backtracking_linesearch's
        # default) inside a mask (optax.masked, a group of optax.multi_transform) meets the
        # whole gradient beside its masked updates.
        if found is not None and _masked_line_search(opt_state):
          raise InputError(_PARTIAL_LINE_SEARCH, argument="tx") from e
        raise
    return optax.apply_updates(params, updates), opt_state, {"loss": value, "data_loss": data}

  return train_step


def _grid_numbers(values, name: str) -> np.ndarray:
  """``values`` (a sequence or array of real numbers) as float64, or InputError: bools and
  strings are refused rather than read as 1.0 or parsed."""
  try:
    raw = np.asarray(values)
  except (TypeError, ValueError):  # e.g. a list of bfloat16 jax scalars
    try:
      raw = np.asarray([np.asarray(v) for v in values])
    except (TypeError, ValueError):
      raw = np.asarray([], object)
  if raw.dtype == np.bool_ or not (jnp.issubdtype(raw.dtype, jnp.integer)
                                   or jnp.issubdtype(raw.dtype, jnp.floating)):  # bfloat16 too
    raise InputError(f"{name} must be a 1-D sequence of real numbers, got {values!r}",
                     argument=name)
  if not isinstance(values, (np.ndarray, jax.Array)) and raw.ndim == 1 and any(
      np.ndim(v) == 0 and jnp.result_type(v) == jnp.bool_ for v in values):
    raise InputError(f"{name} must be real numbers, not bools, got {values!r}", argument=name)
  return raw.astype(np.float64)


def _has_methods(obj, *names: str) -> bool:
  """Whether ``obj`` has callable attributes ``names`` (an optax transformation: init and
  update; a Model: init and apply)."""
  return all(callable(getattr(obj, n, None)) for n in names)


def _callable(f, name: str, signature: str) -> None:
  if not callable(f):
    raise InputError(f"{name} must be a function {signature}, got {f!r}", argument=name)


def _update(tx, updates, opt_state, params, **extra):
  """``tx.update``, with the extra arguments (value, grad, value_fn, and value_fn as
  ``obj_fn`` for optax.contrib.sophia) it takes: all of them for an update with ``**kwargs``
  (optax's chains and optax.MultiSteps pass them on), else those it names; none for a plain
  GradientTransformation, or when a transformation inside refuses them (e.g.
  optax.contrib.sam), as optax's own loops would call it."""
  try:
    sig = inspect.signature(tx.update).parameters
  except (TypeError, ValueError):
    sig = {}
  takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values())
  if not isinstance(tx, optax.GradientTransformationExtraArgs) and not takes_all:
    return tx.update(updates, opt_state, params)
  if not takes_all:
    extra = {k: v for k, v in extra.items() if k in sig}
  try:
    return tx.update(updates, opt_state, params, **extra)
  except TypeError as e:  # raised while tracing, before any state changed
    if "unexpected keyword argument" not in str(e):
      raise
    return tx.update(updates, opt_state, params)
  except ValueError as e:  # optax.contrib.sophia names the objective obj_fn (a line search
    if "obj_fn" not in str(e) or "value_fn" not in extra:  # refuses that name: only here)
      raise
    return tx.update(updates, opt_state, params, **extra, obj_fn=extra["value_fn"])


def _check_float_params(params):
  """Gradients need float leaves: an integer or bool leaf of ``params`` is an InputError
  naming it (JAX's own error names no leaf)."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):  # complex too: a loss of them has no gradient
      raise InputError(f"params{jax.tree_util.keystr(path)} has dtype {dtype}: training needs "
                       "float parameters (real, not complex); make it float, e.g. "
                       "jnp.asarray(value, jnp.float32)", argument="params")


def _check_penalised(params, what: str = "reg"):
  if not losses.penalised_leaves(params):
    raise InputError(
        f"{what} > 0 but the default L2 penalty finds no weight (leaf with ndim >= 2) in params; "
        f"pass reg=0, or a penalty (e.g. functools.partial(losses.l2_penalty, mask=...))",
        argument=what)


class _GridState(NamedTuple):
  params: Any       # pytree, leaves (G, ...)
  opt_state: Any    # pytree, leaves (G, ...)
  step: Any         # () int32
  alive: Any        # (G,) bool: False once a member's loss was not finite
  diverged_at: Any  # (G,) int32: step (from 1) of the first non-finite loss or params, or -1


MAX_STEPS = 2 ** 31 - 1  # steps of one fit: the step counter is an int32


@dataclasses.dataclass
class FitResult:
  """What ``Trainer.fit`` returns.

  params: (G, ...) final parameters of every member (``member(params, g)`` for one); for
    a schedule-free optimizer (optax.contrib.schedule_free*), its evaluation parameters
    (``optax.contrib.schedule_free_eval_params``), which the accuracies are of too.
  opt_state: (G, ...) the optimizer's final state (for schedule-free, with
    ``train_params``, the point where training would go on).
  losses: (steps, G) training objective at every step.
  history: per logged step {"step", "epoch", "loss", "<name>_accuracy", "diverged_at"}
    (arrays over G; a diverged member's accuracies are those of its last finite
    parameters, and its "diverged_at" so far is >= 1).
  diverged_at: (G,) step (counted from 1, as history's "step") of the first non-finite
    loss (or of a step that would have made the parameters non-finite: they stay as
    before it), -1 where finite throughout.
  """
  params: Any
  losses: np.ndarray
  history: list
  diverged_at: np.ndarray
  steps: int
  compile_count: int
  opt_state: Any = None
  train_params: Any = None  # the training point: ``params`` unless schedule-free


class Trainer:
  """Trains a grid of (learning rate, reg) settings with one compiled program.

  ``optimizer`` is one of
    * a function learning_rate -> optax.GradientTransformation, e.g.
      ``lambda lr: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))``
      (an optimizer's own weight decay, e.g. optax.adamw's, adds to ``regs``);
      the learning rate is each member's (traced, so the grid compiles once), or
      an optax schedule step -> lr when ``schedule`` is given;
    * an optax.GradientTransformation, or any object with its init and update
      (optax.MultiSteps): its learning rate, schedule included, is fixed, and the
      grid is over ``regs`` only;
    * a name, a shortcut for the command line: "sgd", "momentum" (Nesterov 0.9),
      "adam" (functions of the learning rate) or "lbfgs" (optax.lbfgs(): line
      search, full batch, no learning rate).

  ``schedule`` multiplies each member's learning rate at step t: a callable
  (any optax schedule, step -> multiplier; with learning_rates left at 1 it is
  the learning rate itself) or a name ("constant", "cosine", "step", see
  ``make_schedule``) built from the ``num_steps`` given to ``fit``.

  ``penalty``: params -> scalar regulariser (default losses.l2_penalty).
  ``mesh``: a 1-D jax.sharding.Mesh (any axis name) for data-parallel training
  (each minibatch split along the batch axis, parameters replicated).
  ``full_batch``: every step sees all the data; default True for optimizers
  with a line search (optax.lbfgs), which refuse False (their search would reuse the
  last minibatch's objective and gradient).
  ``model.apply`` returns (N, C) class scores (a binary model too: two columns).
  """

  def __init__(self, model: Model, loss_fn: Callable, *, optimizer: Optimizer,
               schedule: Schedule = None, penalty: Callable | None = None, mesh=None,
               full_batch: bool | None = None):
    if not _has_methods(model, "init", "apply"):
      raise InputError(f"model must be a train.Model(init=key -> params, apply=(params, x) -> "
                       f"scores), got {model!r}", argument="model")
    _callable(loss_fn, "loss_fn", "(scores_BxC, labels_B) -> (B,) losses")
    if penalty is not None:
      _callable(penalty, "penalty", "params -> scalar")
    if isinstance(optimizer, str):
      if optimizer not in OPTIMIZERS:
        make_optimizer(optimizer, 1.0)  # raises InputError naming the choices
      self._fixed_tx = optax.lbfgs() if optimizer == "lbfgs" else None
      self._factory = None if optimizer == "lbfgs" else functools.partial(make_optimizer,
                                                                           optimizer)
      self._always_schedule = True  # named: the learning rate is a schedule, as ever
    elif _has_methods(optimizer, "init", "update") and not isinstance(optimizer, type):
      # an object with optax's methods (optax.MultiSteps too); a class is a factory
      self._fixed_tx, self._factory, self._always_schedule = optimizer, None, False
    elif callable(optimizer):
      try:
        inspect.signature(optimizer, follow_wrapped=False).bind(1.0)
      except TypeError as e:
        raise InputError(f"optimizer is called as optimizer(learning_rate) -> an optax "
                         f"transformation, but {optimizer!r} cannot take one argument ({e})",
                         argument="optimizer") from None
      except ValueError:  # no signature to check (some builtins): the call will tell
        pass
      self._fixed_tx, self._factory, self._always_schedule = None, optimizer, False
    else:
      raise InputError(f"optimizer must be a name {OPTIMIZERS}, an optax.GradientTransformation "
                       f"or a function learning_rate -> one, got {type(optimizer).__name__}",
                       argument="optimizer")
    if schedule is not None and not callable(schedule) and schedule not in SCHEDULES:
      make_schedule(schedule, 1)  # raises InputError naming the choices
    if self._fixed_tx is not None and schedule not in (None, "constant"):
      raise InputError("this optimizer has no learning rate to schedule; put the schedule in "
                       "the optax transformation (e.g. optax.adamw(optax.cosine_decay_schedule"
                       "(...)))", argument="schedule")
    self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
    self.schedule, self.penalty = schedule, penalty
    self._full_batch = full_batch
    self._multipliers: dict[int, Callable] = {}
    if mesh is not None:
      _checks.mesh_axis(mesh)
    self.mesh = mesh if mesh is not None and mesh.devices.size > 1 else None
    self.trace_count = 0  # how many times the chunk program was traced (compiled)
    self._run_steps = jax.jit(self._run_steps_impl, donate_argnums=(0,),
                              static_argnames=("multiplier", "full_batch", "num_examples"))
    self._accuracy = jax.jit(self._accuracy_impl)

  @property
  def has_learning_rate(self) -> bool:
    """False for a fixed optax transformation or lbfgs: the grid is over regs only."""
    return self._fixed_tx is None

  def _multiplier(self, num_steps: int) -> Callable:
    """step -> multiplier of the learning rate; one function object per distinct program."""
    if self.schedule is None or self.schedule == "constant":
      return _constant
    if callable(self.schedule):
      return self.schedule
    if num_steps not in self._multipliers:
      self._multipliers[num_steps] = make_schedule(self.schedule, num_steps)
    return self._multipliers[num_steps]

  def _member_tx(self, lr, multiplier):
    if self._fixed_tx is not None:
      return self._fixed_tx
    scheduled = not (multiplier is _constant and not self._always_schedule)
    given = ("an optax schedule (step -> learning rate), as schedule= is given" if scheduled
             else "a traced jax scalar (one per grid member)")
    try:
      tx = self._factory(lambda count: lr * multiplier(count)) if scheduled else self._factory(lr)
    except (jax.errors.JAXTypeError, TypeError) as e:
      if not isinstance(e, (jax.errors.ConcretizationTypeError,
                            jax.errors.TracerIntegerConversionError,
                            jax.errors.TracerArrayConversionError)):
        e.add_note(f"(jaxlin) optimizer(learning_rate) was called with {given}")
        raise
      raise InputError(f"optimizer(learning_rate) needs a concrete learning rate "
                       f"({type(e).__name__}), but it is {given}: pass it only where optax "
                       "takes an array or a schedule (e.g. lambda lr: optax.adamw(lr)), "
                       "not to float(), int() or an if", argument="optimizer") from e
    if not _has_methods(tx, "init", "update"):
      raise InputError(f"optimizer(learning_rate) must return an optax.GradientTransformation, "
                       f"got {tx!r}", argument="optimizer")
    return tx

  def _init(self, key, lrs, *, multiplier):
    # Every member starts from the same parameters: settings are compared fairly,
    # and member i equals a single run with its (lr, reg), up to float rounding (the
    # grid's products may sum in another order: about 1e-7 here).
    # Not under one jit: a model's init compiled into a larger program may round its
    # random draws differently (1e-7) from the user's own model.init(key).
    g = lrs.shape[0]
    params = jax.vmap(lambda _: self.model.init(key))(jnp.arange(g))
    opt_state = jax.vmap(lambda p, lr: self._member_tx(lr, multiplier).init(p))(params, lrs)
    # Weak types as a step leaves them (strong): else the second chunk compiles again.
    # A copy of every leaf: optimizers that keep the params in their state (optax.contrib's
    # dog, prodigy, sam, ...) would otherwise hand the chunk program one buffer twice to donate.
    params, opt_state = _fresh_copy((params, opt_state))
    return _GridState(params, opt_state, jnp.zeros((), jnp.int32), jnp.ones((g,), bool),
                      jnp.full((g,), -1, jnp.int32))

  def _member_step(self, params, opt_state, lr, reg, x, y, multiplier):
    step = make_train_step(self.loss_fn, self.model.apply, self._member_tx(lr, multiplier),
                           reg=reg, penalty=self.penalty)
    try:
      params, opt_state, metrics = step(params, opt_state, (x, y))
    except InputError as e:  # the step's words for what is here the optimizer
      if e.argument != "tx":
        raise
      raise InputError(e.message.replace("tx", "optimizer", 1), argument="optimizer",
                       library_hint=e.library_hint) from None
    return params, opt_state, metrics["loss"]

  def _run_steps_impl(self, state: _GridState, hyper, x, y, idx_SxB, valid_S, *, multiplier,
                      full_batch, num_examples):
    """Runs the S steps of one chunk; steps with valid_S False change nothing.

    (The last chunk is padded to the same length, so one program serves all.) A member
    whose loss, or whose parameters after the step, are not finite keeps its parameters
    from before the step and stops there (``diverged_at``).
    """
    self.trace_count += 1  # Python side effect: runs only while tracing
    if full_batch and num_examples < x.shape[0]:  # rows past num_examples: padding
      x, y = x[:num_examples], y[:num_examples]

    def one_step(state, inputs):
      idx, valid = inputs
      xb, yb = (x, y) if full_batch else (x[idx], y[idx])
      if self.mesh is not None:  # data parallel: the batch split across devices
        batch = jax.sharding.NamedSharding(
            self.mesh, jax.sharding.PartitionSpec(self.mesh.axis_names[0]))
        xb = jax.lax.with_sharding_constraint(xb, batch)
        yb = jax.lax.with_sharding_constraint(yb, batch)
      member_step = functools.partial(self._member_step, multiplier=multiplier)
      new_p, new_o, value = jax.vmap(member_step, in_axes=(0, 0, 0, 0, None, None))(
          state.params, state.opt_state, hyper["lr"], hyper["reg"], xb, yb)
      member_finite = lambda a: jnp.all(jnp.isfinite(a), axis=tuple(range(1, a.ndim)))
      params_finite = functools.reduce(
          jnp.logical_and, [member_finite(a) for a in jax.tree.leaves(new_p)
                            if jnp.issubdtype(a.dtype, jnp.inexact)], jnp.isfinite(value))
      finite = params_finite | ~valid
      ok = state.alive & finite & valid
      keep = lambda new, old: jnp.where(ok.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
      params = jax.tree.map(keep, new_p, state.params)
      opt_state = jax.tree.map(keep, new_o, state.opt_state)
      # Steps count from 1, as history's "step" (step s is the s-th update).
      diverged_at = jnp.where(state.alive & ~finite, state.step + 1, state.diverged_at)
      alive = state.alive & finite
      return _GridState(params, opt_state, state.step + valid.astype(jnp.int32), alive,
                        diverged_at), value

    return jax.lax.scan(one_step, state, (idx_SxB, valid_S))

  def _accuracy_impl(self, params, x_BxD, y_B, mask_B):
    """(G,) correct predictions, (G,) whether a member scored a real row NaN (argmax takes
    a NaN for the largest score: its class would be one no score chose). Infinite scores
    are scores: -inf rules a class out, as the losses allow."""
    scores = jax.vmap(lambda p: self.model.apply(p, x_BxD))(params)
    pred = jnp.argmax(scores, axis=2)
    bad = jnp.any(jnp.isnan(scores) & mask_B[None, :, None], axis=(1, 2))
    return jnp.sum((pred == y_B[None]) & mask_B[None], axis=1), bad

  # ---- host side -------------------------------------------------------------
  def accuracy(self, params, x, y, *, num_examples: int | None = None, batch_size: int = 2048):
    """(G,) accuracy of every member on the first ``num_examples`` rows (all by default).

    Pad-and-mask: each example counts once, whatever the batch and device count. A member
    that scores any of the rows NaN gets NaN (argmax would take the NaN for the largest
    score). params: the grid's params, every leaf with a leading member axis (``fit``'s
    ``params``; one member's params ``p`` as ``jax.tree.map(lambda a: a[None], p)``).
    """
    _checks.outside_jit("Trainer.accuracy (it checks its inputs' values)", "x", x, y)
    if np.ndim(x) < 2 or np.ndim(y) != 1 or np.shape(x)[0] != np.shape(y)[0]:
      raise InputError(f"expected x (N, ...) and y (N,), got {np.shape(x)} and {np.shape(y)}",
                       argument="x")
    if np.shape(x)[0] == 0:
      raise InputError("x is empty: no examples to measure accuracy on", argument="x")
    x, y = _checks.jax_exact(x, "x"), _checks.jax_exact(y, "y")  # lists as arrays
    _checks.keeps_spread(x, "x")
    n = x.shape[0] if num_examples is None else _checks.int_at_least(num_examples,
                                                                     "num_examples", 1)
    if n > x.shape[0]:
      raise InputError(f"num_examples={n} is more than the {x.shape[0]} rows of x",
                       argument="num_examples")
    batch_size = _checks.int_at_least(batch_size, "batch_size", 1)
    c = self._grid_classes(params, x)
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
      raise InputError(f"y must hold integer labels, got {jnp.result_type(y)}", argument="y")
    if jnp.issubdtype(jnp.result_type(x), jnp.floating) and _checks.float_stats(x)[0]:
      raise InputError("x holds NaN or inf values: its scores and accuracy would mean nothing",
                       argument="x")
    if not _on_mesh(y, self.mesh):
      _check_label_range(_checks.value_range(y), c, "labels", "y")
    return self._checked_accuracy(params, x, y, n, batch_size)

  def _grid_classes(self, params, x) -> int:
    """The model's number of scores, once ``params`` is known to score as a grid."""
    one_row = jax.ShapeDtypeStruct((1,) + tuple(np.shape(x)[1:]), jnp.result_type(x))
    try:
      return jax.eval_shape(jax.vmap(self.model.apply, (0, None)), params, one_row).shape[-1]
    except InputError as e:  # the model's own check of its input: x, or params
      if e.argument in ("x", "x_NxD"):
        raise InputError(str(e), argument="x") from None
      why = f" ({e})"
    except (ValueError, TypeError, IndexError):  # e.g. vmap's inconsistent sizes
      why = ""
    hint = ""
    try:  # one member's params, as model.init returns them?
      if len(jax.eval_shape(self.model.apply, params, one_row).shape) == 2:
        hint = "; these look like one member's params: pass jax.tree.map(lambda a: a[None], p)"
    except Exception:  # pylint: disable=broad-except
      pass
    shapes = jax.tree.map(lambda a: tuple(np.shape(a)), params)
    raise InputError(f"params must be the grid's params, each leaf with a leading member axis "
                     f"as fit returns them; got leaves of shapes {shapes}{why}{hint}",
                     argument="params")

  def _checked_accuracy(self, params, x, y, n: int, batch_size: int = 2048) -> np.ndarray:
    correct, bad = 0, False
    for start in range(0, n, batch_size):
      xb, yb = x[start:start + batch_size], y[start:start + batch_size]
      valid = min(xb.shape[0], n - start)
      pad = min(batch_size, n) - xb.shape[0]
      mask = np.arange(xb.shape[0] + max(pad, 0)) < valid
      if pad > 0:
        xb = jnp.pad(xb, ((0, pad),) + ((0, 0),) * (xb.ndim - 1))
        yb = jnp.pad(yb, (0, pad))
      right, wrong_scores = self._accuracy(params, xb, yb, mask)
      correct, bad = correct + right, bad | wrong_scores  # on the device: read once, below
    # A member that scores NaN (NaN params, inf - inf) has no accuracy: NaN, not the share
    # of the class that argmax falls back on.
    return np.where(np.asarray(bad), np.nan, np.asarray(correct) / n)

  def _hyper(self, learning_rates, regs):
    regs = _grid_numbers(regs, "regs")
    regs = regs.reshape(1) if regs.ndim == 0 else regs  # one number: one member's reg
    if regs.ndim != 1 or regs.size == 0:
      raise InputError(f"regs must be a non-empty 1-D sequence, got shape {regs.shape}",
                       argument="regs")
    with np.errstate(over="ignore"):  # values beyond float32 become inf: refused below
      as_used = regs.astype(np.float32)
    if not np.all(np.isfinite(as_used) & (regs >= 0)):
      raise InputError(f"regs must be finite and >= 0 in float32 (at most 3.4e38), got "
                       f"{regs.tolist()}", argument="regs")
    if not self.has_learning_rate:
      if learning_rates is not None:
        raise InputError(
            "this optimizer has a fixed learning rate (an optax transformation, or lbfgs's "
            "line search): the grid is over regs only; pass learning_rates=None",
            argument="learning_rates")
      lrs = np.ones_like(regs)
    elif learning_rates is None:
      if self.schedule is None:  # nothing would set the rate: 1, rarely what was meant
        raise InputError("learning_rates is None and there is no schedule: every member would "
                         "train at learning rate 1; pass learning_rates (e.g. [1e-3], or [1.0] "
                         "for that rate), or a schedule that is the learning rate",
                         argument="learning_rates")
      lrs = np.ones_like(regs)  # the schedule is the learning rate
    else:
      lrs = _grid_numbers(learning_rates, "learning_rates")
      if lrs.ndim == 0:  # one number: the rate of every member
        lrs = lrs.reshape(1)
      if lrs.ndim == 1 and lrs.size >= 1 and (lrs.size == 1 or regs.size == 1):
        g = max(lrs.size, regs.size)  # one rate or one reg serves every member
        lrs, regs = np.broadcast_to(lrs, (g,)).copy(), np.broadcast_to(regs, (g,)).copy()
      if lrs.shape != regs.shape:
        raise InputError(f"learning_rates and regs must be 1-D of equal length (one pair per "
                         f"grid member), or one of them a single value for every member, got "
                         f"{lrs.shape}, {regs.shape}", argument="learning_rates")
      with np.errstate(over="ignore"):
        as_used = lrs.astype(np.float32)
      if not np.all(np.isfinite(as_used) & (as_used > 0)):
        raise InputError(f"learning_rates must be finite and > 0 in float32 (1.4e-45 to "
                         f"3.4e38), got {lrs.tolist()}", argument="learning_rates")
    return {"lr": lrs, "reg": regs}  # float64 numbers, cast to the params' dtype by fit

  def _check_data(self, key, x, y, n, regs):
    """(number of classes, the params' shapes and dtypes), once x and y are checked."""
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
      one_hot = " (for one-hot rows pass their argmax)" if y.ndim == 2 else ""
      raise InputError(f"expected x (N, ...) and y (N,), got {x.shape} and {y.shape}{one_hot}",
                       argument="y" if x.ndim >= 2 and y.ndim != 1 else "x")
    if n < 1 or x.shape[0] < 1:
      raise InputError("x is empty: no training examples", argument="x")
    if not jnp.issubdtype(y.dtype, jnp.integer):
      raise InputError(f"y must hold integer labels, got {y.dtype}", argument="y")
    if jnp.issubdtype(x.dtype, jnp.floating) and _checks.float_stats(_real_rows(x, n))[0]:
      raise InputError("x holds NaN or inf values", argument="x")
    params = jax.eval_shape(self.model.init, key)
    try:
      scores = jax.eval_shape(self.model.apply, params, jax.ShapeDtypeStruct(x.shape, x.dtype))
    except InputError as e:  # the model's own check of its input: here, fit's x
      if e.argument not in ("x", "x_NxD"):
        raise
      raise InputError(str(e), argument="x") from None
    if len(scores.shape) != 2 or scores.shape[0] != x.shape[0]:
      raise InputError(f"model.apply must return class scores (N, C) for x of N rows, got "
                       f"shape {scores.shape} for x of shape {x.shape} (a binary model: "
                       "two columns of scores, e.g. jnp.stack([-s, s], axis=1))",
                       argument="model")
    c = scores.shape[-1]
    _check_label_range(_checks.value_range(_real_rows(y, n)), c, "labels", "y")
    if self.penalty is None and np.any(np.asarray(regs, np.float64) > 0):
      _check_penalised(params, "regs")
    return c, params

  def _checked_eval_sets(self, eval_sets) -> tuple[dict, dict]:
    """({name: (x, y, num_examples or None)}, {name: (lowest, highest) label of a host y}),
    each checked as the training data is."""
    if eval_sets is None:
      return {}, {}
    if not isinstance(eval_sets, dict):
      raise InputError(f"eval_sets must be a dict {{name: (x, y)}} or {{name: (x, y, "
                       f"num_examples)}}, got {type(eval_sets).__name__}", argument="eval_sets")
    out, ranges = {}, {}
    for name, value in eval_sets.items():
      if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
        raise InputError(f"eval_sets[{name!r}] must be (x, y) or (x, y, num_examples)",
                         argument="eval_sets")
      ex, ey, en = (*value, None) if len(value) == 2 else value
      ex = ex if _on_mesh(ex, self.mesh) else _checks.jax_exact(ex, f"eval_sets[{name!r}] x")
      _checks.keeps_spread(ex, f"eval_sets[{name!r}] x", "eval_sets")
      ey = ey if _on_mesh(ey, self.mesh) else _checks.jax_exact(ey, f"eval_sets[{name!r}] y")
      rows = np.shape(ex)[0] if np.ndim(ex) else 0
      if np.ndim(ex) < 2 or np.shape(ey) != (rows,) or rows == 0:
        raise InputError(f"eval_sets[{name!r}] must hold x (N, ...) and y (N,) with N >= 1, got "
                         f"shapes {np.shape(ex)} and {np.shape(ey)}", argument="eval_sets")
      if en is not None:
        en = _checks.concrete_int(en, f"eval_sets[{name!r}] num_examples")
      if en is not None and not 1 <= en <= rows:
        raise InputError(f"eval_sets[{name!r}] num_examples must be in [1, {rows}], got {en!r}",
                         argument="eval_sets")
      if not jnp.issubdtype(jnp.result_type(ey), jnp.integer):
        raise InputError(f"eval_sets[{name!r}] y must hold integer labels, got "
                         f"{jnp.result_type(ey)}", argument="eval_sets")
      if (jnp.issubdtype(jnp.result_type(ex), jnp.floating)
          and _checks.float_stats(_real_rows(ex, en))[0]):
        raise InputError(f"eval_sets[{name!r}] x holds NaN or inf values", argument="eval_sets")
      if not _on_mesh(ey, self.mesh):
        ranges[name] = _checks.value_range(_real_rows(ey, en))
      if (isinstance(ex, np.ndarray) and self.mesh is None
          and sharding.default_platform() != "cpu"):
        # Evaluated at every record: sent to the accelerator once, not batch by batch each
        # time. (With a mesh, fit lays host eval sets along it, as before.)
        ex, ey = jnp.asarray(ex), jnp.asarray(ey)
      out[name] = (ex, ey, en)
    return out, ranges

  def fit(self, key, x, y, *, regs: Sequence[float] = (0.0,),
          learning_rates: Sequence[float] | None = None, batch_size: int | None = None,
          num_steps: int, log_every: int | None = None, eval_sets: dict | None = None,
          callback: Callable[[dict], None] | None = None,
          num_examples: int | None = None) -> FitResult:
    """Train every grid member for ``num_steps`` steps on the same batches.

    Members are the pairs (learning_rates[g], regs[g]); a single learning rate
    or reg (a number, or a sequence of one) serves every member, e.g.
    ``learning_rates=[1e-3, 1e-2]`` with the default ``regs=(0.0,)``. For every
    combination of some rates and some regs, pass ``**train.grid(rates, regs)``.
    learning_rates None gives each the rate 1, the schedule then being the learning
    rate (without a schedule it is an error), and must be None for an optimizer without
    a learning rate to vary. ``batch_size`` must be None for a full-batch optimizer.

    ``key`` is split in two (``jax.random.split(key)``): the first initialises
    the model (``model.init``), the second draws the batches. Minibatches of
    ``batch_size`` rows are drawn without replacement from a fresh permutation
    each epoch (``fold_in`` of the second key and the epoch), on device: an epoch
    is N // batch_size steps, so the N % batch_size rows left at the end of each
    permutation are not seen that epoch (other rows the next); a full-batch
    optimizer sees all rows at every step. Rows past ``num_examples`` (padding)
    are neither drawn nor checked. Every ``log_every`` steps
    (one epoch by default; 10 steps for a full-batch optimizer) the accuracies
    on ``eval_sets`` ({name: (x, y)} or {name: (x, y, num_examples)}) are
    recorded and ``callback(record)`` is called. Raises DivergenceError when
    every member diverged (its loss, or its parameters after a step, became inf
    or NaN).

    ``x`` may be a global array already laid along the mesh, rows split across
    processes (``sharding.rows_to_global``); its rows past ``num_examples``
    are padding and never drawn. Other inputs are replicated on the mesh.
    """
    _checks.outside_jit("Trainer.fit (it drives its own compiled steps)", "x", x, y)
    if not isinstance(x, jax.Array):  # lists and numpy: checked as JAX would hold them
      x = _checks.jax_exact(x, "x")
      _checks.keeps_spread(x, "x")
    if isinstance(num_steps, (bool, np.bool_)) or not isinstance(
        num_steps, (int, np.integer)) or not 1 <= num_steps <= MAX_STEPS:
      raise InputError(f"num_steps must be an integer in [1, {MAX_STEPS}] (steps count in "
                       f"int32), got {num_steps!r}", argument="num_steps")
    num_steps = int(num_steps)  # a numpy integer too
    sizes = {"batch_size": batch_size, "log_every": log_every, "num_examples": num_examples}
    for (name, value), lowest in zip(sizes.items(), (1, 0, 1)):
      if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(
          value, (int, np.integer)) or value < lowest):
        raise InputError(f"{name} must be an integer >= {lowest} or None, got {value!r}",
                         argument=name)
    batch_size, log_every, num_examples = (None if v is None else int(v) for v in sizes.values())
    _checks.callback(callback, "callback(record)", nargs=1)
    k_init, k_data = _split(_checks.random_key(key))  # one key, not a batch of them
    hyper = self._hyper(learning_rates, regs)
    traces_before = self.trace_count  # this fit's compilations, not the Trainer's
    eval_sets, label_ranges = self._checked_eval_sets(eval_sets)
    if self.mesh is not None:  # on the mesh: one global array even across hosts
      replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
      place = lambda a: a if _on_mesh(a, self.mesh) else jax.device_put(np.asarray(a), replicated)
      x, y = place(x), place(y)
      eval_sets = {k: (place(a), place(b), m) for k, (a, b, m) in eval_sets.items()}
    x, y = jnp.asarray(_checks.jax_exact(x, "x")), jnp.asarray(_checks.jax_exact(y, "y"))
    n = x.shape[0] if num_examples is None else num_examples
    if n > x.shape[0]:
      raise InputError(f"num_examples={n} is more than the {x.shape[0]} rows of x",
                       argument="num_examples")
    c, shapes = self._check_data(k_init, x, y, n, regs)  # (padding rows past num_examples)
    # float32 settings, or float64 ones for a model with float64 params (jax_enable_x64).
    wide = any(getattr(leaf, "dtype", None) == jnp.float64 for leaf in jax.tree.leaves(shapes))
    hyper = {k: jnp.asarray(v, jnp.float64 if wide else jnp.float32) for k, v in hyper.items()}
    for name, (ex, _, _) in eval_sets.items():
      if np.shape(ex)[1:] != x.shape[1:]:
        raise InputError(f"eval_sets[{name!r}] x has rows of shape {np.shape(ex)[1:]}, the "
                         f"training x {x.shape[1:]}", argument="eval_sets")
      if name in label_ranges:
        _check_label_range(label_ranges[name], c, f"eval_sets[{name!r}] labels", "eval_sets")
    multiplier = self._multiplier(num_steps)
    state = self._init(k_init, hyper["lr"], multiplier=multiplier)
    # Member 0 at the start, on the host (the state's buffers are donated to the steps):
    # for the check that the learning rate is used, where a reg has several rates.
    at_start = ([np.asarray(a[0]) for a in jax.tree.leaves(state.params)]
             if _rate_groups(hyper, np.full(len(hyper["lr"]), -1)) else None)
    finite = jax.tree_util.tree_flatten_with_path(_finite_leaves(state.params))[0]
    for path, ok in finite:
      if not bool(ok):
        raise InputError(f"model.init(key) returned NaN or inf in params"
                         f"{jax.tree_util.keystr(path)}: training would diverge at its first "
                         "step", argument="model")
    evaluated = _evaluation(state)
    full_batch = self._full_batch
    line_search = _has_line_search(state.opt_state, "optimizer")
    if full_batch is None:
      full_batch = line_search
    elif line_search and not full_batch:
      raise InputError("full_batch=False with a line search (e.g. optax.lbfgs): it reuses the "
                       "objective and gradient of the last step's batch, so on minibatches "
                       "it would search along stale values; use full_batch=True (or None), "
                       "or an optimizer without a line search", argument="full_batch")
    if full_batch and batch_size is not None:
      raise InputError(f"batch_size={batch_size} has no effect: this optimizer trains on every "
                       "row at each step (full batch: a line search such as optax.lbfgs's, or "
                       "full_batch=True); pass batch_size=None", argument="batch_size")
    if not full_batch and (batch_size is None or not 1 <= batch_size <= n):
      raise InputError(f"batch_size must be in [1, {n}] (training examples), got {batch_size}",
                       argument="batch_size")
    steps_per_epoch = 1 if full_batch else n // batch_size
    # A chunk's steps past num_steps are computed, then dropped: a chunk is at most the power
    # of two at or above num_steps (under 2x the work; few programs for many short fits).
    log_every = min(log_every or (10 if full_batch else steps_per_epoch),
                    1 << (num_steps - 1).bit_length())
    all_losses, history = [], []
    done = 0
    while done < num_steps:
      chunk = min(log_every, num_steps - done)
      valid = np.arange(log_every) < chunk  # host arrays: no program per operation
      if full_batch:
        idx = np.zeros((log_every, 1), np.int32)  # unused: every step sees all the data
      else:
        # Steps [done, done + log_every) may span epochs: take their rows of the epoch permutations.
        epochs = range(done // steps_per_epoch, (done + log_every - 1) // steps_per_epoch + 1)
        perm = np.concatenate([_epoch_batches(k_data, e, n, steps_per_epoch, batch_size)
                               for e in epochs])
        start = done - epochs[0] * steps_per_epoch
        idx = perm[start:start + log_every]
      state, step_losses = self._run_steps(state, hyper, x, y, idx, valid,
                                           multiplier=multiplier, full_batch=full_batch,
                                           num_examples=n if full_batch else 0)
      done += chunk
      all_losses.append(np.asarray(step_losses)[:chunk])
      record = {"step": done, "epoch": done / steps_per_epoch,
                "loss": _finite_mean(all_losses[-1]),
                "diverged_at": np.array(state.diverged_at)}
      eval_params = evaluated(state.params, state.opt_state) if eval_sets else None
      for name, (ex, ey, en) in eval_sets.items():
        record[f"{name}_accuracy"] = self._checked_accuracy(
            eval_params, ex, ey, ex.shape[0] if en is None else en)
      history.append(record)
      if callback is not None:
        callback(record)
      if not bool(np.asarray(state.alive).any()):
        first = int(np.asarray(state.diverged_at).min())
        last = int(np.asarray(state.diverged_at).max())
        when = (f"at step {first} for every setting" if first == last else
                f"for every setting, the first at step {first} and the last at step {last}")
        hint = ("" if first > 1 else "at the first step: check the loss at the starting "
                "params too, and the optimizer's constants in the params' dtype, e.g. "
                "adam's eps=1e-8 is 0 in float16; ")
        hint += ("if the data or the model give NaN scores, fix those: a member stops at "
                 "its first non-finite loss, even where the optimizer would skip the step "
                 "(optax.apply_if_finite)")
        if self.has_learning_rate:
          largest = float(np.max(np.asarray(hyper["lr"])))
          raise DivergenceError(
              f"training diverged: the loss or the parameters became inf or NaN {when} "
              f"(largest learning rate {largest:g})",
              advice="try smaller learning_rates", argument="learning_rates",
              library_hint=hint, step=first)
        raise DivergenceError(
            f"training diverged: the loss or the parameters became inf or NaN {when}",
            advice="try a smaller learning rate in the optimizer",
            argument="optimizer", library_hint=hint, step=first)
    _warn_if_learning_rate_unused(at_start, state.params, hyper, np.asarray(state.diverged_at))
    return FitResult(params=evaluated(state.params, state.opt_state),
                     losses=np.concatenate(all_losses), history=history,
                     diverged_at=np.asarray(state.diverged_at), steps=done,
                     compile_count=self.trace_count - traces_before, opt_state=state.opt_state,
                     train_params=state.params)


def _schedule_free_states(opt_state) -> list:
  is_state = lambda s: isinstance(s, optax.contrib.ScheduleFreeState)
  return [s for s in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(s)]


def _evaluation(state: _GridState) -> Callable:
  """(params_G, opt_state_G) -> the grid's parameters to score and return: for a
  schedule-free optimizer (optax.contrib) its evaluation point, not the training point
  where gradients are taken; else the params. Tried once on the starting state: a state
  that does not fit the params whole (several schedule-free groups, masked or wrapped ones)
  keeps the training point, with a warning."""
  states = _schedule_free_states(state.opt_state)
  if not states:
    return lambda params, _: params
  if len(states) == 1:
    try:
      _schedule_free_eval(state.params, states[0])
      return lambda params, opt_state: _schedule_free_eval(
          params, _schedule_free_states(opt_state)[0])
    except (TypeError, ValueError):
      pass
  warnings.warn("the optimizer's schedule-free state does not cover the params as one tree "
                "(several groups, or a masked or wrapped one): fit scores and returns the "
                "training point; apply optax.contrib.schedule_free_eval_params yourself "
                "(fit.opt_state)", UserWarning, stacklevel=3)
  return lambda params, _: params


@jax.jit
def _schedule_free_eval(params_G, state_G):
  return jax.vmap(optax.contrib.schedule_free_eval_params)(state_G, params_G)


def _rate_groups(hyper, diverged_at) -> list:
  """Members (not diverged) that share a reg, for each reg given several learning rates."""
  lrs, regs = np.asarray(hyper["lr"]), np.asarray(hyper["reg"])
  groups = (np.flatnonzero((regs == r) & (diverged_at < 0)) for r in np.unique(regs))
  return [m for m in groups if len(np.unique(lrs[m])) > 1]


def _warn_if_learning_rate_unused(start, params_G, hyper, diverged_at) -> None:
  """A warning when members that differ only in learning rate end bit-identical, none
  diverged and all moved from ``start`` (member 0's first leaves; None: nothing to check):
  the optimizer function (or its schedule) ignores its learning rate argument. (Not moved:
  a zero rate at first, e.g. a warm-up.)"""
  groups = _rate_groups(hyper, diverged_at) if start is not None else []
  if not groups:
    return
  lrs, regs = np.asarray(hyper["lr"]), np.asarray(hyper["reg"])
  leaves = [np.asarray(a) for a in jax.tree.leaves(params_G)]
  for members in groups:
    reg = regs[members[0]]
    moved = any(not np.array_equal(a[members[0]], s) for a, s in zip(leaves, start))
    if moved and all(np.array_equal(a[members[0]], a[i]) for i in members[1:] for a in leaves):
      rates = ", ".join(f"{v:g}" for v in sorted(set(lrs[members].tolist())))
      warnings.warn(f"the members with reg={reg:g} and learning rates [{rates}] ended with "
                    "identical parameters: "
                    "does optimizer(learning_rate) use its argument (e.g. lambda lr: "
                    "optax.adam(lr), not optax.adam(1e-3))?", UserWarning, stacklevel=3)
      return


def _check_label_range(lo_hi: tuple[int, int], c: int, what: str, argument: str) -> None:
  lo, hi = lo_hi
  if lo < 0 or hi >= c:
    raise InputError(f"{what} must lie in [0, {c}) (the model's {c} scores), got values in "
                     f"[{lo}, {hi}]", argument=argument)


def _on_mesh(a, mesh) -> bool:
  """Whether ``a`` is already a global array on ``mesh`` (e.g. rows split across processes)."""
  sharding = getattr(a, "sharding", None)
  return isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh == mesh


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _epoch_batches(key, epoch, n, steps, batch_size):
  """(steps, batch_size) row indices of one epoch: a fresh permutation per epoch."""
  perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
  return perm[:steps * batch_size].reshape(steps, batch_size)


@jax.jit  # one program for the whole tree
def _fresh_copy(tree):
  return jax.tree.map(lambda a: jnp.array(a, a.dtype, copy=True), tree)


@jax.jit
def _finite_leaves(params):
  return jax.tree.map(lambda a: jnp.all(jnp.isfinite(a)), params)


@jax.jit
def _split(key):
  k_init, k_data = jax.random.split(key)
  return k_init, k_data


def _finite_mean(losses_SxG):
  """Mean over steps of each member's finite losses (NaN for a member with none), summed in
  float64: float32 losses near 1e38 summed past float32's range to inf, the mark of a
  diverged member, for one that had not diverged. (The mean of finite values is finite in
  their own dtype.)"""
  losses_SxG = np.asarray(losses_SxG)
  finite = np.isfinite(losses_SxG)
  total = np.where(finite, losses_SxG, 0.0).astype(np.float64).sum(0)
  count = finite.sum(0)
  mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
  return mean.astype(losses_SxG.dtype) if np.issubdtype(losses_SxG.dtype, np.floating) else mean


def _real_rows(a, n: int | None):
  """The first ``n`` rows of ``a`` (all where n is None): the rows past them are padding,
  never checked. Sliced only when there is padding (no copy of the whole)."""
  return a if n is None or n >= np.shape(a)[0] else a[:n]


def grid(learning_rates: Sequence[float], regs: Sequence[float]) -> dict:
  """Every (learning rate, reg) pair, as ``fit``'s keyword arguments: ``fit`` trains the
  members (learning_rates[g], regs[g]) it is given, in pairs; this crosses them, in the
  order of the command line's grid (``--learning_rate=a,b --reg=r,s``: a r, a s, b r, b s).

    fit = trainer.fit(key, x, y, **train.grid([1e-3, 3e-3], [0.0, 1e-4]), ...)
  """
  lrs, rs = (list(np.atleast_1d(np.asarray(v, dtype=object))) for v in (learning_rates, regs))
  if not lrs or not rs:
    raise InputError(f"grid needs at least one learning rate and one reg, got {len(lrs)} and "
                     f"{len(rs)}", argument="learning_rates" if not lrs else "regs")
  return {"learning_rates": [lr for lr in lrs for _ in rs], "regs": [r for _ in lrs for r in rs]}


def member(params_G, i: int):
  """Parameters of grid member i (any pytree with a leading grid axis)."""
  sizes = {np.shape(v)[0] for v in jax.tree.leaves(params_G) if np.ndim(v)}
  if len(sizes) != 1 or any(np.ndim(v) == 0 for v in jax.tree.leaves(params_G)):
    raise InputError(f"params_G must be a pytree of arrays with one leading grid axis, got "
                     f"leading sizes {sorted(sizes)} (a 0-d leaf has none)", argument="params_G")
  if _checks.is_traced(i):  # under jit / vmap: no value to check, but an integer
    if not jnp.issubdtype(jnp.result_type(i), jnp.integer):
      raise InputError(f"i must be an integer, got {jnp.result_type(i)}", argument="i")
    return _take(params_G, i)
  i = _checks.concrete_int(i, "i")
  g = sizes.pop()
  if not -g <= i < g:
    raise InputError(f"i={i} is outside the grid of {g} members", argument="i")
  if all(isinstance(v, jax.Array) for v in jax.tree.leaves(params_G)):
    return _take_jit(params_G, i)  # one program for the whole pytree
  return _take(params_G, i)  # host leaves stay host arrays, as given


def _take(params_G, i):
  return jax.tree.map(lambda v: v[i], params_G)


_take_jit = jax.jit(_take)
