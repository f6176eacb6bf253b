"""The host helpers on one process: what a process adds of a split read in parts, and what
the processes of a multi-host run compare before they start."""
import shutil

import numpy as np

from experiments import hosts
from experiments import knn as knn_exp
from experiments import multihost
from jaxlin import data
from tests.conftest import make_image_folder


def test_rows_at_gives_the_rows_this_process_holds_and_zeros_for_the_others():
  """Process 0 of two holds rows [0, 3) of 6; rows 3 and 5 are the other process's (added by
  the sum over processes, which on one process is the identity)."""
  images = np.arange(1, 4, dtype=np.uint8).reshape(3, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
  part = data.Split(images, np.zeros(3, np.int32), start=0, total=6)
  whole = data.Split(images, np.zeros(3, np.int32))
  h = hosts.Hosts("none")
  h._ds = data.Dataset(train=whole, val=whole, test=part, class_names=("a",))  # pylint: disable=protected-access
  h.parts = {"test": (0, 3)}
  out = h.rows_at(part, [2, 3, 0, 5])
  assert out.dtype == np.uint8 and out.shape == (4, 2, 2, 3)
  np.testing.assert_array_equal(out[:, 0, 0, 0], [3, 0, 1, 0])
  np.testing.assert_array_equal(h.rows_at(whole, [2, 0])[:, 0, 0, 0], [3, 1])  # read whole


def test_processes_compare_every_key_but_the_cache_folder():
  assert multihost.differences({"a": 1}, {"a": 1, "b": 2}) == ["b"]
  assert multihost.differences({"a": 1, "b": 2}, {"a": 1}) == ["b"]
  assert multihost.differences({"a": 1, "b": [1]}, {"a": 2, "b": [1]}) == ["a"]
  c = knn_exp.Config(dataset="folder:/nowhere", cache_dir="/fast/disk", k=(1, 3))
  mine = multihost.fingerprint("knn", c)
  assert mine["experiment"] == "knn" and mine["k"] == "[1, 3]"  # lists compared as JSON
  assert multihost.differences(mine, multihost.fingerprint("knn", c.replace(cache_dir=""))) == []
  assert multihost.differences(mine, multihost.fingerprint("knn", c.replace(seed=1))) == ["seed"]
  assert multihost.differences(mine, multihost.fingerprint("linear", c)) == ["experiment"]


def test_processes_compare_the_data_their_dataset_path_holds(tmp_path):
  """The same flags on two hosts whose folders differ (one image replaced) trained on a mix
  of both without a word; copies that differ only in times and inodes agree."""
  make_image_folder(str(tmp_path / "a"), per_class_train=3, per_class_test=1)
  shutil.copytree(tmp_path / "a", tmp_path / "copy")  # new inodes and times
  make_image_folder(str(tmp_path / "b"), per_class_train=3, per_class_test=1, seed=1)
  # Each host's --dataset=folder:images, as if each process ran in its own folder.
  prints = {}
  for name in ("a", "copy", "b"):
    c = knn_exp.Config(dataset=f"folder:{tmp_path / name}", num_val=1, num_train=0, num_test=0)
    prints[name] = multihost.fingerprint("knn", c)
    prints[name]["dataset"] = "folder:images"
  assert "unreadable" not in prints["a"]["data_plan"]
  assert multihost.differences(prints["a"], prints["copy"]) == []
  assert multihost.differences(prints["a"], prints["b"]) == ["data_files"]
  line = multihost._verdict(prints["a"], {"data_files": [(1, prints["b"]["data_files"])]})  # pylint: disable=protected-access
  assert line.startswith("the processes read different data at --dataset=folder:images "
                         f"(data_files: process 0 has {prints['a']['data_files']}, process 1 "
                         f"has {prints['b']['data_files']}: the files' names, classes, sizes "
                         "or contents differ); give every host the same copy"), line
  # A file more or fewer changes the data plan too: still the data's line, not the flags'.
  both = {"data_files": [(1, "x")], "data_plan": [(1, "y")]}
  assert multihost._verdict(prints["a"], both).startswith("the processes read different data")  # pylint: disable=protected-access
  assert multihost._verdict(prints["a"], dict(both, seed=[(1, 1)])).startswith(  # pylint: disable=protected-access
      "the processes were started with different settings")
  assert multihost._verdict(prints["a"], {}) == "ok"  # pylint: disable=protected-access


def test_processes_reading_parts_agree_on_the_classes_before_one_class_is_refused(monkeypatch):
  """A dataset whose labels have no names numbers the classes a process reads: a part that
  holds only label 0 saw one class, and that process alone refused the run."""
  split = data.Split(np.zeros((2, 2, 2, 3), np.uint8), np.zeros(2, np.int32))
  one = data.Dataset(train=split, val=split, test=split, class_names=("0",))
  monkeypatch.setattr(data, "load", lambda *a, **k: one)
  c = knn_exp.Config(dataset="unnamed", k=(1,))
  h = hosts.Hosts("none")
  try:
    h.load(c, {})
    raise AssertionError("one class was taken")
  except hosts.DataError as e:
    assert "unnamed has 1 class (0): classification needs at least 2" in str(e)
  monkeypatch.setattr(hosts.Hosts, "spread", property(lambda self: True))
  monkeypatch.setattr(hosts.sharding, "process_sum", lambda a: a + np.array([0, 3])[:len(a)])
  h.count, h.index = 2, 0  # the other process read labels 0-2
  assert h.load(c, {}).class_names == ("0", "1", "2")


def test_stats_of_searches_in_parts_add_every_count_l1_rows_too(monkeypatch):
  """Two processes that each searched their own queries: every count adds up (L1's row
  counts were this process's own)."""
  monkeypatch.setattr(hosts.sharding, "process_sum", lambda a: a * 2)  # the other: the same
  h = hosts.Hosts("none")
  h.count = 2
  mine = {"method": "pruned", "queries": 5, "first_round": 3, "second_round": 1,
          "brute_force": 1, "fine_rows": 40, "exact_rows": 7, "candidates": [32, 0]}
  assert h._summed(mine, "l1") == {  # pylint: disable=protected-access
      "method": "pruned", "queries": 10, "first_round": 6, "second_round": 2, "brute_force": 2,
      "fine_rows": 80, "exact_rows": 14, "candidates": [32, 0], "processes": 2}
  l2 = {k: v for k, v in mine.items() if k not in ("fine_rows", "exact_rows")}
  assert h._summed(l2, "l2")["queries"] == 10  # pylint: disable=protected-access
  assert h._summed({"method": "brute"}, "l2") == {  # pylint: disable=protected-access
      "method": "brute", "processes": 2}


def test_hosts_may_hold_their_copies_of_the_data_at_their_own_paths(tmp_path):
  """--dataset=folder:PATH and --data_dir were compared as strings: the same copy at another
  path on another host was refused. The files' digest (data_files) decides."""
  make_image_folder(str(tmp_path / "a"), per_class_train=3, per_class_test=1)
  shutil.copytree(tmp_path / "a", tmp_path / "elsewhere")
  prints = [multihost.fingerprint("knn", knn_exp.Config(
      dataset=f"folder:{tmp_path / name}", data_dir=str(tmp_path / f"tfds-{name}"), num_val=1,
      num_train=0, num_test=0)) for name in ("a", "elsewhere")]
  assert multihost.differences(*prints) == []
  line = multihost._verdict(prints[0], {"data_files": [(1, "x")]})  # pylint: disable=protected-access
  assert line.startswith("the processes read different data at --dataset's folders "), line
  line = multihost._verdict(prints[0], {"local_devices": [(1, 1)]})  # pylint: disable=protected-access
  assert line == ("the processes have different numbers of devices (devices per process: "
                  "process 0 has None, process 1 has 1); give every process the same number "
                  "(the same XLA_FLAGS, CUDA_VISIBLE_DEVICES or TPU slice)"), line


def test_process_0_refuses_a_coordinator_port_in_use(monkeypatch):
  """gRPC failed to bind it and process 0 crashed with a fault trace (exit 139)."""
  import socket  # pylint: disable=import-outside-toplevel
  said = []

  def die(message, code):
    said.append((message, code))
    raise SystemExit(code)
  monkeypatch.setattr(multihost, "_die", die)
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
      multihost._check_port_free(f"127.0.0.1:{port}")  # pylint: disable=protected-access
    except SystemExit:
      pass
  assert said == [(f"port {port} of --coordinator_address=127.0.0.1:{port} is in use on this "
                   "host (another program, another run's coordinator, or a second process "
                   "given --process_id=0): choose a free port for every process, and one "
                   "--process_id=0", 2)]
  multihost._check_port_free(f"127.0.0.1:{port}")  # pylint: disable=protected-access  # free now
