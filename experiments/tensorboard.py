"""TensorBoard event files beside metrics.jsonl: ``tensorboard --logdir runs/`` shows them.

One event-file folder per grid member (``tensorboard/lr=0.001,reg=0.1/``; lbfgs:
``line_search,reg=0.1/``), each with the scalars loss, train_accuracy, val_accuracy and
(but for lbfgs) scheduled_learning_rate, one event per logged step.

The files are written here, in plain Python: ``tf.summary.scalar`` needs the tensorboard
package (not a dependency), and the format is small and stable. An event file is a sequence
of TFRecords (length, masked CRC-32C of the length, an ``Event`` protocol buffer, masked
CRC-32C of it); each Event holds a ``Summary`` of scalar tensors tagged with the scalars
plugin's metadata, as ``tf.summary.scalar`` writes them. A test reads the files back with
TensorFlow's own reader.
"""
from __future__ import annotations

import itertools
import math
import os
import socket
import struct
import time
from typing import Mapping

FOLDER = "tensorboard"
_F32_MAX = 3.4028234663852886e38
_COUNTER = itertools.count()  # file names unique within a process, as TensorFlow's
PLUGIN = "scalars"


def member_name(learning_rate: float | None, reg: float) -> str:
  """The folder of one grid member; learning_rate None: a line search sets the step."""
  rate = "line_search" if learning_rate is None else f"lr={learning_rate:g}"
  return f"{rate},reg={reg:g}"


def _crc32c_table() -> list[int]:
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_CRC_TABLE = _crc32c_table()


def _masked_crc(data: bytes) -> int:
  """TFRecord's checksum: CRC-32C (Castagnoli), rotated right by 15 bits plus a constant."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
    n >>= 7
    if not n:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # a length-delimited field
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _wall_time(seconds: float) -> bytes:  # Event.wall_time, a double (field 1)
  return _varint(1 << 3 | 1) + struct.pack("<d", seconds)


# Summary.Value.metadata: SummaryMetadata{plugin_data{plugin_name}, data_class=SCALAR}.
_METADATA = _field(9, _field(1, _field(1, PLUGIN.encode())) + _varint(4 << 3) + _varint(1))


def _float32(value: float) -> float:
  """Beyond float32's range: +-inf (as TensorFlow stores it), not an OverflowError."""
  return value if math.isnan(value) or abs(value) <= _F32_MAX else math.copysign(math.inf, value)


def _event(step: int, values: Mapping[str, float], wall_time: float) -> bytes:
  summary = b"".join(
      _field(1, _field(1, tag.encode()) + _METADATA
             # tensor: TensorProto{dtype=DT_FLOAT, tensor_shape={} (a scalar), float_val}
             + _field(8, _varint(1 << 3) + _varint(1) + _field(2, b"")
                      + _field(5, struct.pack("<f", _float32(value)))))
      for tag, value in values.items())
  return (_wall_time(wall_time) + _varint(2 << 3)
          + _varint(step & 0xFFFFFFFFFFFFFFFF) + _field(5, summary))


def _record(data: bytes) -> bytes:
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", _masked_crc(length)) + data
          + struct.pack("<I", _masked_crc(data)))


class ScalarWriter:
  """Scalars of several runs (grid members) under one folder; nothing when ``folder`` is None."""

  def __init__(self, folder: str | None):
    self.folder, self._files = folder, {}

  def write(self, run: str, step: int, values: Mapping[str, float]) -> None:
    if self.folder is None:
      return
    if run not in self._files:
      os.makedirs(os.path.join(self.folder, run), exist_ok=True)
      now = time.time()
      name = (f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}."
              f"{next(_COUNTER)}.v2")
      f = self._files[run] = open(os.path.join(self.folder, run, name), "xb")
      f.write(_record(_wall_time(now) + _field(3, b"brain.Event:2")))  # the version event
    f = self._files[run]
    f.write(_record(_event(step, {k: float(v) for k, v in values.items()}, time.time())))
    f.flush()

  def close(self, quiet: bool = False) -> None:
    """Closes every event file, then raises the first error, unless ``quiet``."""
    files, self._files = list(self._files.values()), {}
    errors = []
    for f in files:
      try:
        f.close()
      except OSError as e:  # close the others first
        errors.append(e)
    if errors and not quiet:
      raise errors[0]
