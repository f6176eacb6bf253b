"""Device mesh and host plumbing for many devices and many hosts.

One code path for CPU, GPU and TPU; a mesh of one device is the single-device
case. This module only lays arrays out and moves them between hosts; of
jaxlin it imports only the argument checks and error types. The computations
take the mesh as an argument: kNN search through ``jaxlin.knn.search(...,
mesh=mesh, layout=...)`` (queries or database rows split across devices,
results identical to one device).

Training is data-parallel through ``train.Trainer(..., mesh=mesh)``: each
minibatch is split along the batch axis and the parameters are replicated;
jit's partitioner adds the gradient all-reduce. Across hosts (after
``jax.distributed.initialize()``) the same code runs on the global mesh.

Across hosts each process reads only its own rows of a split:
``process_rows`` says which (the rows its devices hold when the split is laid
along the mesh), ``rows_to_global`` assembles the global array from every
process's rows, ``process_sum`` and ``gather_rows`` bring small results
(statistics, predictions) to every process.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from jaxlin import _checks
from jaxlin.errors import InputError

__all__ = ["AXIS", "default_platform", "gather_rows", "make_mesh", "padded_rows", "process_rows",
           "process_stack", "process_sum", "rows_to_global", "to_host"]

AXIS = "data"


def default_platform() -> str:
  """The platform ("cpu", "gpu", "tpu") of the device that host data goes to: that of
  ``jax.default_device`` where one is set (a device or a platform's name), else JAX's
  default backend's. (``jax.default_backend()`` ignores ``jax.default_device``: under
  ``with jax.default_device(cpu)`` on a GPU machine the work runs on the CPU.)"""
  device = jax.config.jax_default_device
  if isinstance(device, str):
    return jax.devices(device)[0].platform
  return device.platform if device is not None else jax.default_backend()


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named "data" over the given devices (default: all, every process)."""
  devices = list(np.asarray(jax.devices() if devices is None else devices, dtype=object).ravel())
  if not devices or not all(isinstance(d, jax.Device) for d in devices):
    raise InputError(f"devices must be a non-empty list of jax devices (jax.devices()), got "
                     f"{devices!r}", argument="devices")
  if len(set(devices)) != len(devices):
    raise InputError("devices lists a device more than once: each holds one block of rows",
                     argument="devices")
  return Mesh(np.asarray(devices, dtype=object), (AXIS,))


def _checked(n, mesh) -> int:
  """n as a non-negative int, after checking that ``mesh`` is a 1-D mesh."""
  _checks.mesh_axis(mesh)
  n = _checks.concrete_int(n, "n")
  if n < 0:
    raise InputError(f"n must be a number of rows (>= 0), got {n}", argument="n")
  return n


def padded_rows(n: int, mesh: Mesh) -> int:
  """n rounded up to a multiple of the mesh size: the rows of an n-row array laid along it."""
  n = _checked(n, mesh)
  return -(-n // mesh.devices.size) * mesh.devices.size


def process_rows(n: int, mesh: Mesh) -> tuple[int, int]:
  """Rows [lo, hi) of an n-row split that this process holds when it is laid along ``mesh``.

  The split is padded to ``padded_rows(n, mesh)`` rows and cut into equal
  blocks, one per device in mesh order; a process holds its devices' blocks,
  clipped to the n real rows (the last processes may hold fewer, or none). A mesh without
  any of this process's devices raises InputError.
  """
  n = _checked(n, mesh)
  n_pad = padded_rows(n, mesh)
  spans = sorted(_span(index[0], n_pad) for index in jax.sharding.NamedSharding(
      mesh, P(mesh.axis_names[0])).addressable_devices_indices_map((n_pad,)).values())
  if not spans:
    raise InputError(f"mesh has none of this process's devices (process "
                     f"{jax.process_index()}): lay rows along a mesh that holds some of them",
                     argument="mesh")
  if any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
    raise InputError("this process's devices are not adjacent in the mesh; build it with "
                     "make_mesh() (devices in process order)", argument="mesh")
  return min(spans[0][0], n), min(spans[-1][1], n)


def _span(s: slice, size: int) -> tuple[int, int]:
  return (s.start or 0, size if s.stop is None else s.stop)


def rows_to_global(local, n: int, mesh: Mesh) -> jax.Array:
  """The (padded_rows(n, mesh), ...) global array laid along ``mesh``, from this process's rows.

  ``local`` holds rows ``process_rows(n, mesh)`` of the split; padding rows are
  zeros. Every process calls this with its own rows.
  """
  local = _checks.host_array(local, "local")  # 64-bit values JAX would wrap: refused
  lo, hi = process_rows(n, mesh)
  if local.ndim == 0 or len(local) != hi - lo:
    raise InputError(f"this process holds rows [{lo}, {hi}) of the {n}, but local has shape "
                     f"{local.shape}", argument="local")
  n_pad = padded_rows(n, mesh)

  def block(index):
    a, b = _span(index[0], n_pad)
    out = np.zeros((b - a,) + local.shape[1:], local.dtype)
    real = local[a - lo:max(min(b, n), a) - lo]
    out[:len(real)] = real
    return out

  return jax.make_array_from_callback((n_pad,) + local.shape[1:],
                                      jax.sharding.NamedSharding(mesh, P(mesh.axis_names[0])),
                                      block)


def process_stack(x) -> np.ndarray:
  """(processes, ...) array of every process's ``x`` (the same shape on each), on every
  process, in process order (``x[None]`` in a single process)."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x[None]
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x))


def process_sum(x) -> np.ndarray:
  """Elementwise sum of ``x`` over all processes (``x`` itself in a single process)."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x
  return process_stack(x).sum(0)


def gather_rows(local, lo: int, n: int) -> np.ndarray:
  """The whole n-row array on every process, from each process's rows [lo, lo + len(local))."""
  local = np.asarray(local)
  if jax.process_count() == 1:
    if (lo, len(local)) != (0, n):
      raise InputError(f"one process must hold all {n} rows, got [{lo}, {lo + len(local)})",
                       argument="local")
    return local
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  spans = np.asarray(multihost_utils.process_allgather(np.array([lo, len(local)], np.int64)))
  width = int(spans[:, 1].max())
  block = np.zeros((width,) + local.shape[1:], local.dtype)
  block[:len(local)] = local
  blocks = np.asarray(multihost_utils.process_allgather(block))
  out = np.zeros((n,) + local.shape[1:], local.dtype)
  for (start, count), rows in zip(spans, blocks):
    out[start:start + count] = rows[:count]
  if spans[:, 1].sum() != n:
    raise InputError(f"the processes hold {spans[:, 1].sum()} rows between them, not {n}",
                     argument="n")
  return out


def to_host(x) -> np.ndarray:
  """The whole value of a (possibly multi-process) array as numpy, on every process."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.sharding.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
