"""Multi-host start: jax.distributed.initialize from the launch options."""
from __future__ import annotations

_STARTED = False


def started() -> bool:
  """Whether this process joined a multi-host run."""
  return _STARTED


def start(launch, kind: str, c) -> None:
  """Joins the other processes (``jax.distributed.initialize``)."""
  global _STARTED
  import jax  # pylint: disable=g-import-not-at-top
  try:  # CPU-only processes need a collectives backend to talk to each other
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, KeyError, ValueError):
    pass
  if launch.distributed and not launch.coordinator_address:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=launch.coordinator_address,
                               num_processes=launch.num_processes, process_id=launch.process_id)
  _STARTED = True
