"""One source of truth per experiment: a frozen dataclass whose fields are its flags.

Each experiment declares ``Config(BaseConfig)`` with fields made by
``option(default, help)``. The same class gives

* the absl flags of the program (``define_flags``, called only when the
  module runs as a program, so that entry points can import each other -- the
  study imports knn and linear -- without their flags colliding),
* the config a test passes to ``run`` (``Config.make({"k": [1, 3]})``), with
  unknown keys refused,
* config.json (``asdict``).

Why a dataclass and not ml_collections: no new dependency, typed fields,
frozen values, and a validated copy is one ``dataclasses.replace``.

Randomness: every random stream of an experiment is named in ``SEEDS``; a
stream's generator is ``rng(seed, "folds")``. The JAX key for parameter
initialisation and minibatch order is ``jax.random.key(seed)``, split inside
``train.Trainer.fit``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import sys
import types
import typing
from typing import Any, Mapping

import numpy as np

from jaxlin.errors import JaxlinError


class ConfigError(JaxlinError, ValueError):
  """A flag or config value is invalid; the message names it and the fix."""


# Named numpy seed streams, default_rng([seed, stream]). The first two are drawn by
# jaxlin.data.split_rows (which rows make up the train / test subsets).
SEEDS = {
    "train_subset": 1,   # jaxlin.data: which training images
    "test_subset": 2,    # jaxlin.data: which test images
    "folds": 3,          # kNN cross-validation: the order cut into folds
    "shown_images": 4,   # kNN: the test images shown with their neighbours
    "train_sample": 5,   # linear: the training images whose accuracy is logged
    "cv_subset": 6,      # kNN: the training images cross-validation uses (--cv_num_train)
}
# jax.random.key(seed) -> split in Trainer.fit into parameter init and minibatch order.


def rng(seed: int, stream: str) -> np.random.Generator:
  """The numpy generator of a named seed stream."""
  return np.random.default_rng([seed, SEEDS[stream]])


def option(default: Any, help: str) -> Any:  # pylint: disable=redefined-builtin
  """A config field that is also a flag."""
  if isinstance(default, list):
    default = tuple(default)
  return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class BaseConfig:
  """What every experiment's Config can do: be made from a mapping of overrides (unknown
  keys refused), replaced, and written as a dict (config.json). The fields are each
  experiment's own; the data fields are ``common.DataConfig``'s."""

  @classmethod
  def make(cls, config: BaseConfig | Mapping[str, Any] | None = None):
    """The config from an instance or a mapping of overrides (unknown keys refused)."""
    if isinstance(config, cls):
      return config
    if isinstance(config, BaseConfig):
      config = config.asdict()
    config = dict(config or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(config) - set(names))
    if unknown:
      raise ConfigError(f"unknown config keys {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _checked_type(k, v, hints[k]) for k, v in config.items()})

  def replace(self, **changes):
    return dataclasses.replace(self, **{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in changes.items()})

  def asdict(self) -> dict:
    return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)}


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "True or False"}


def _checked_type(name: str, value, hint):
  """``value`` for the field ``name`` (annotation ``hint``), or ConfigError naming it: a
  list field takes any iterable (a list, tuple, range, array; a single value or string
  becomes a 1-tuple; its items are checked by the experiment's validate, as flag strings
  are); a single-valued field takes its type (numpy and jax scalars too, ints also for
  floats, a path for a string, None where the field allows it), never a string for a
  number."""
  kind, is_list = _base_type(hint)
  if value is None and type(None) in typing.get_args(hint):
    return None
  if is_list:
    if (isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, typing.Iterable)
        or (hasattr(value, "ndim") and np.ndim(value) == 0)):
      return (value.item() if hasattr(value, "item") else value,)  # one value
    return tuple(v.item() if np.ndim(v) == 0 and hasattr(v, "item") else v for v in value)
  if hasattr(value, "ndim") and np.ndim(value) == 0 and hasattr(value, "item"):
    value = value.item()  # a numpy or jax scalar
  if kind is str and isinstance(value, os.PathLike):
    value = os.fspath(value)
  ok = {bool: isinstance(value, (bool, np.bool_)),
        int: isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)),
        float: isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, (bool, np.bool_)),
        str: isinstance(value, str)}.get(kind, True)
  if not ok:
    raise ConfigError(f"--{name} must be {_TYPE_NAMES[kind]}, got {value!r} "
                      f"({type(value).__name__})", argument=name)
  if kind is int:
    return int(value)
  if kind is float:
    return float(value)
  return bool(value) if kind is bool else value


def _base_type(hint):
  """(python type, is_list) of a field annotation such as ``int | None`` or ``tuple[int, ...]``."""
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  origin = typing.get_origin(hint)
  if origin in (typing.Union, types.UnionType):
    return _base_type(args[0])
  if origin in (tuple, list):
    return (args[0] if args else str), True
  return hint, False


def define_flags(cls, flag_values=None) -> None:
  """Defines one absl flag per field of ``cls``, with the field's default and help."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  fv = flags.FLAGS if flag_values is None else flag_values
  # Listed by --help as the program's own flags (absl keys the main module by sys.argv[0]).
  module = sys.argv[0] if flag_values is None else None
  hints = typing.get_type_hints(cls)
  for f in dataclasses.fields(cls):
    kind, is_list = _base_type(hints[f.name])
    default, help_text = f.default, f.metadata.get("help", f.name)
    if is_list:
      flags.DEFINE_list(f.name, None if default is None else [str(v) for v in default],
                        help_text, flag_values=fv, module_name=module)
    elif kind is bool:
      flags.DEFINE_bool(f.name, default, help_text, flag_values=fv, module_name=module)
    elif kind is int:
      flags.DEFINE_integer(f.name, default, help_text, flag_values=fv, module_name=module)
    elif kind is float:
      flags.DEFINE_float(f.name, default, help_text, flag_values=fv, module_name=module)
    else:
      flags.DEFINE_string(f.name, default, help_text, flag_values=fv, module_name=module)


def from_flags(cls, flag_values=None) -> dict:
  """The overrides given on the command line for the fields of ``cls``."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  fv = flags.FLAGS if flag_values is None else flag_values
  return {f.name: fv[f.name].value for f in dataclasses.fields(cls) if fv[f.name].present}


# ---- flag parsing ---------------------------------------------------------------------------
def parse_flags(argv):
  """absl's flag parsing for ``app.run(main, flags_parser=parse_flags)``: a value absl
  cannot parse (e.g. ``--num_train=abc``) or an unknown flag is one line and exit code 2,
  like every other bad flag value, instead of absl's FATAL line and help hint."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {_absl_message(str(e).removeprefix('ERROR:: '), flags.FLAGS)}",
          file=sys.stderr)
    sys.exit(2)


_KIND_OF_PARSER = {"IntegerParser": "an integer", "FloatParser": "a number",
                   "BooleanParser": "true or false"}


def _absl_message(message: str, flag_values) -> str:
  """absl's parse error in the programs' words: ``--num_train must be an integer, got 'abc'``,
  not ``flag --num_train=abc: invalid literal for int() with base 10: 'abc'``."""
  match = re.match(r"flag --(\w+)=(.*?): ", message)
  if match and match.group(1) in flag_values:
    kind = _KIND_OF_PARSER.get(type(flag_values[match.group(1)].parser).__name__)
    if kind:
      return f"--{match.group(1)} must be {kind}, got {match.group(2)!r}"
  return message[:1].lower() + message[1:]  # "Unknown command line flag", as the others


class _NoMissingLibtpu(logging.Filter):
  """Drops JAX's INFO note that libtpu is not installed (``Unable to initialize backend
  'tpu': ... libtpu.so: cannot open shared object file``), printed on every machine without
  a TPU above a run's own lines and before a one-line error. Every other record passes: a
  libtpu that is installed but fails, JAX's warnings (a GPU it cannot use), and whatever
  level the user sets (JAX_LOGGING_LEVEL, JAX_DEBUG_LOG_MODULES, --verbosity)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno != logging.INFO:
      return True
    message = record.getMessage()
    return not ("'tpu'" in message and "libtpu" in message
                and "cannot open shared object file" in message)


def quiet_backend_search() -> None:
  """Hides JAX's note on a TPU library that is not installed (see ``_NoMissingLibtpu``)."""
  logger = logging.getLogger("jax._src.xla_bridge")
  if not any(isinstance(f, _NoMissingLibtpu) for f in logger.filters):
    logger.addFilter(_NoMissingLibtpu())


# ---- value checks shared by the experiments' validate() --------------------------------------
def _shown(values) -> str:
  return ",".join(map(str, values)) if isinstance(values, (list, tuple)) else str(values)


def ints(values, name: str) -> tuple[int, ...]:
  """The integers of a list flag; 2.5, True or "x" is an error, not 2, 1 or a crash."""
  try:
    out = []
    for v in values:
      if isinstance(v, (bool, np.bool_)):
        raise ValueError
      i = int(v)
      if (not isinstance(v, (str, bytes)) and i != v) or abs(i) >= 2 ** 63:  # 2.5 is not 2
        raise ValueError
      out.append(i)
    return tuple(out)
  except (TypeError, ValueError, OverflowError):
    raise ConfigError(f"--{name} must be a comma-separated list of integers, got "
                      f"{_shown(values)!r}", argument=name) from None


def floats(values, name: str) -> tuple[float, ...]:
  """The numbers of a list flag; True or "x" is an error."""
  try:
    values = list(values)  # once: a generator is read here, not emptied by the check
    if any(isinstance(v, (bool, np.bool_)) for v in values):
      raise ValueError
    return tuple(float(v) for v in values)
  except (TypeError, ValueError):
    raise ConfigError(f"--{name} must be a comma-separated list of numbers, got "
                      f"{_shown(values)!r}", argument=name) from None


EXIT_USAGE = 2  # a bad flag, argument or dataset


def usage_error(message: str) -> None:
  """One line on stderr and exit code 2: the programs' answer to arguments they cannot
  use, before any work (absl's own would print the whole help and exit with 1)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(EXIT_USAGE)


def require(ok: bool, name: str, message: str) -> None:
  """Raises ConfigError(message) naming the flag ``name`` unless ``ok``."""
  if not ok:
    raise ConfigError(message, argument=name)


def finite(value, name: str) -> None:
  require(value is None or math.isfinite(value), name,
          f"--{name} must be a finite number, got {value}")
