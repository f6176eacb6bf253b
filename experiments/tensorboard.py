"""TensorBoard event files beside metrics.jsonl: ``tensorboard --logdir runs/`` shows them.

One event-file folder per grid member (``tensorboard/lr=0.001,reg=0.1/``), each with the
scalars loss, train_accuracy, val_accuracy and learning_rate. Written with TensorFlow's own
summary writer (``tf.summary.write`` with the scalars plugin's metadata), which works with
tensorflow-cpu alone: ``tf.summary.scalar`` needs the tensorboard package, which is not a
dependency.
"""
from __future__ import annotations

import os
from typing import Mapping

FOLDER = "tensorboard"
PLUGIN = "scalars"


def member_name(learning_rate: float, reg: float) -> str:
  return f"lr={learning_rate:g},reg={reg:g}"


class ScalarWriter:
  """Scalars of several runs (grid members) under one folder; nothing when ``folder`` is None."""

  def __init__(self, folder: str | None):
    self.folder, self._writers = folder, {}
    if folder is None:
      return
    from jaxlin import data  # TensorFlow, GPU hidden; pylint: disable=import-outside-toplevel
    self._tf = data._tf()  # pylint: disable=protected-access
    from tensorflow.core.framework import summary_pb2  # pylint: disable=import-outside-toplevel
    self._metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=PLUGIN),
        data_class=summary_pb2.DATA_CLASS_SCALAR)

  def write(self, run: str, step: int, values: Mapping[str, float]) -> None:
    if self.folder is None:
      return
    tf = self._tf
    if run not in self._writers:
      self._writers[run] = tf.summary.create_file_writer(os.path.join(self.folder, run))
    with self._writers[run].as_default():
      for tag, value in values.items():
        tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=self._metadata)

  def close(self) -> None:
    for w in self._writers.values():
      w.flush()
      w.close()
    self._writers = {}
