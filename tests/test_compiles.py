"""Called outside jit, a public function compiles one program for its arithmetic (its
checks may add one or two), not one per operation: counted lowerings, not timings."""
import jax
import numpy as np
import pytest

from jaxlin import distances, features, linear, losses, metrics, topk, train

_LOWERED = []


def _listener(event, duration, **kwargs):  # pylint: disable=unused-argument
  if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
    _LOWERED.append(kwargs.get("fun_name", "?"))


jax.monitoring.register_event_duration_secs_listener(_listener)


def _programs(call):
  """Names of the programs lowered by call() (a device transfer, "stage", not counted)."""
  _LOWERED.clear()
  call()
  return [n for n in _LOWERED if n != "jit(stage)"]


# Shapes no other test uses: every call below compiles afresh in this process.
_RNG = np.random.default_rng(7)
_S = _RNG.normal(size=(13, 11)).astype(np.float32)
_Y = _RNG.integers(0, 11, 13).astype(np.int32)
_KEY = jax.random.key(0)
CASES = {  # name: (call, most programs); before: 3 (centred_pixels) to 28 (smallest_k)
    "multiclass_svm": (lambda: losses.multiclass_svm(_S, _Y, margin=0.5), 1),
    "softmax_cross_entropy": (lambda: losses.softmax_cross_entropy(_S, _Y), 1),
    "confusion_matrix": (lambda: metrics.confusion_matrix(_Y, _Y[::-1], 11), 2),
    "per_class_accuracy": (lambda: metrics.per_class_accuracy(np.eye(11, dtype=np.int32)), 1),
    "standardise": (lambda: features.standardise(_S, _S[:3]), 4),
    "smallest_k": (lambda: topk.smallest_k(_RNG.normal(size=(3, 1100)).astype(np.float32), 5),
                   2),
    "order_keys": (lambda: topk.order_keys(_RNG.integers(0, 99, (3, 11)).astype(np.int32)), 2),
    "centred_pixels": (lambda: distances.centred_pixels(
        _RNG.integers(0, 256, (3, 11)).astype(np.uint8)), 1),
    "init_params": (lambda: linear.init_params(_KEY, 13, 11), 1),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_eager_call_compiles_one_program_for_its_arithmetic(name):
  call, most = CASES[name]
  programs = _programs(call)
  assert 1 <= len(programs) <= most, programs


def test_a_small_fit_compiles_a_few_programs():
  """The chunk of steps, the epoch permutation, accuracy, and the member's start (eager:
  see Trainer._init): 19 programs, 31 before."""
  x = _RNG.normal(size=(40, 9)).astype(np.float32)
  y = _RNG.integers(0, 3, 40).astype(np.int32)
  model = train.Model(init=lambda k: linear.init_params(k, 9, 3), apply=linear.scores)
  trainer = train.Trainer(model, losses.softmax_cross_entropy, optimizer="sgd")

  def fit():
    res = trainer.fit(jax.random.key(0), x, y, learning_rates=[0.1, 0.01], regs=[0.0, 0.1],
                      batch_size=8, num_steps=10, eval_sets={"val": (x[:10], y[:10])})
    train.member(res.params, -1)

  programs = _programs(fit)
  assert "jit(_run_steps_impl)" in programs and len(programs) <= 24, programs
