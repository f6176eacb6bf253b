"""absl entry points: flags -> config -> jaxlin calls -> files in --workdir."""
from experiments import supervisor as _supervisor

_supervisor.main_if_wanted()  # only for `python -m experiments.X` on several hosts
