"""The benchmarks: their bounds never exceed the distance, their flags and caches are checked."""
# pylint: disable=too-many-function-args  # pylint misreads the jitted function's signature
import os
import re

import numpy as np
import pytest

from benchmarks import bound_tightness


@pytest.mark.parametrize("p", [2, 4])
def test_pooled_and_residual_l1_bounds_are_lower_bounds(p):
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.integers(0, 256, (30, 192)),  # noise: loose bounds
                      np.repeat(rng.integers(0, 256, (10, 1)), 192, axis=1),  # constant images
                      np.tile(rng.integers(0, 2, (1, 192)) * 255, (5, 1))]).astype(np.uint8)
  s, r = bound_tightness.block_features(x, p)
  assert s.shape == (45, 192 // (p * p)) and r.shape == s.shape
  pooled, residual = (np.asarray(b) for b in bound_tightness._bounds(
      s, r, s, r, n=p * p))
  exact = np.abs(x[:, None].astype(np.int64) - x[None].astype(np.int64)).sum(-1)
  assert np.all(pooled <= exact) and np.all(residual <= exact + 1e-3)
  assert np.all(residual >= pooled) and np.mean(residual > pooled) > 0.3  # and tighter
  # Literal case: one 2x2 block [0, 10, 0, 10] against [5, 5, 5, 5]: same sum, L1 = 20;
  # pooled says 0, the residual |20 - 0| - (1 - 2 / 4) * 0 = 20 (tight).
  a = np.array([[0, 10, 0, 10]], np.uint8).reshape(1, 2, 2, 1)
  b = np.full((1, 2, 2, 1), 5, np.uint8)
  pair = np.concatenate([a, b]).repeat(3, axis=3).reshape(2, -1)
  s, r = bound_tightness.block_features(pair, 2)
  pooled, residual = (np.asarray(v) for v in bound_tightness._bounds(s[:1], r[:1], s[1:], r[1:],
                                                                     n=4))
  assert pooled[0, 0] == 0 and residual[0, 0] == 60  # 3 channels x 20


def test_l2_bound_with_residual_regions_is_a_lower_bound():
  rng = np.random.default_rng(1)
  x = np.concatenate([rng.integers(0, 256, (20, 192)),  # noise
                      np.repeat(rng.integers(0, 256, (5, 1)), 192, axis=1),  # constant images
                      np.tile([0, 255], (5, 96))]).astype(np.uint8)  # checkerboard-like
  centre = np.round(x.mean(axis=0)).astype(np.int64)
  basis = np.linalg.qr(rng.standard_normal((192, 6)))[0].T  # any orthonormal rows
  exact = ((x[:, None].astype(np.int64) - x[None].astype(np.int64)) ** 2).sum(-1)
  one, many = (bound_tightness.l2_bound(u, u) for u in (
      bound_tightness.l2_band_features(x, centre, basis, r) for r in (1, 4)))
  assert np.all(one <= exact * (1 + 1e-9) + 1e-6) and np.all(many <= exact * (1 + 1e-9) + 1e-6)
  assert np.all(many >= one - 1e-6) and np.mean(many > one + 1e-6) > 0.5  # and tighter
  # Literal case: no components; two 8 x 8 images, one black, one white in its top-left
  # quadrant only. One region: (|r_x| - |r_y|)^2 = |r_y|^2 = 16 * 3 * 255**2, the whole
  # distance, as x = 0; four regions: the same here.
  a = np.zeros((1, 192), np.uint8)
  b = np.zeros((8, 8, 3), np.uint8)
  b[:4, :4] = 255
  pair = np.concatenate([a, b.reshape(1, -1)])
  u = bound_tightness.l2_band_features(pair, np.zeros(192, np.int64), np.zeros((0, 192)), 2)
  assert u.shape == (2, 4) and u[1, 0] == pytest.approx(255 * 48 ** 0.5) and u[1, 1] == 0
  assert bound_tightness.l2_bound(u[:1], u[1:])[0, 0] == pytest.approx(48 * 255 ** 2)


@pytest.fixture(name="parsed_flags")
def _parsed_flags():
  """The benchmarks' flags, read as after a command line without them (then unread again)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  was = flags.FLAGS.is_parsed()
  flags.FLAGS.mark_as_parsed()
  yield flags.FLAGS
  if not was:
    flags.FLAGS.unparse_flags()


@pytest.mark.usefixtures("parsed_flags")
def test_benchmark_cache_is_read_again_when_the_folder_changes(tmp_path):
  from benchmarks import common  # pylint: disable=import-outside-toplevel
  from tests.conftest import make_image_folder  # pylint: disable=import-outside-toplevel
  root = tmp_path / "images"
  make_image_folder(str(root), per_class_train=2, per_class_test=1, classes=("a", "b"))
  dataset = f"folder:{root}"
  paths = common.cached_arrays(dataset, str(tmp_path / "out"))
  assert np.load(paths["train_y"]).shape == (4,) and np.load(paths["test_x"]).shape == (2, 192)
  stamp = common.folder_stamp(dataset)
  assert common.folder_stamp(dataset) == stamp and common.folder_stamp("cifar10") is None
  make_image_folder(str(root), per_class_train=3, per_class_test=1, classes=("a", "b"))
  assert common.folder_stamp(dataset) != stamp
  paths = common.cached_arrays(dataset, str(tmp_path / "out"))
  assert np.load(paths["train_y"]).shape == (6,)  # not the 4 rows cached before
  assert common.num_classes({"train_y": np.array([0, 4]), "test_y": np.array([7])}) == 8
  # A rewrite killed after it began: no fresh stamp, so the next run reads the folder again.
  os.remove(paths["test_y"])
  with open(paths["train_x"], "wb") as f:
    f.write(b"half")
  paths = common.cached_arrays(dataset, str(tmp_path / "out"))
  assert np.load(paths["train_x"]).shape == (6, 192)
  # A folder whose splits are links to folders elsewhere: a change behind the link counts.
  linked = tmp_path / "linked"
  linked.mkdir()
  for split in ("train", "test"):
    os.symlink(root / split, linked / split)
  before = common.folder_stamp(f"folder:{linked}")
  make_image_folder(str(root), per_class_train=4, per_class_test=1, classes=("a", "b"))
  assert common.folder_stamp(f"folder:{linked}") != before


def test_benchmark_queries_and_image_shapes():
  from benchmarks import common  # pylint: disable=import-outside-toplevel
  rows = common.query_rows(5, 20)
  assert len(set(rows)) == 5 and list(rows) == sorted(rows) and rows.max() < 20
  np.testing.assert_array_equal(common.query_rows(5, 20), rows)  # seeded: the same rows
  assert list(common.query_rows(50, 20)) == list(range(20))
  assert common.image_shape(3072) == (32, 32, 3)
  assert common.image_shape(192) == (8, 8, 3) and common.image_shape(100) is None


@pytest.mark.usefixtures("parsed_flags")
def test_benchmark_flag_checks_are_one_usage_error(tmp_path, monkeypatch):
  import sys  # pylint: disable=import-outside-toplevel
  from absl import app  # pylint: disable=import-outside-toplevel
  from benchmarks import common  # pylint: disable=import-outside-toplevel
  assert common.check_methods(["b", "a"], ("a", "b")) == ["b", "a"]
  for bad in (["a", "c"], ["a", "a"], []):
    with pytest.raises(app.UsageError, match="--methods takes a, b .each once."):
      common.check_methods(bad, ("a", "b"))
  with pytest.raises(app.UsageError, match="--repeats must be >= 1, got 0"):
    common.check_repeats(0)
  monkeypatch.setitem(sys.modules, "faiss", None)  # as if it were not installed
  with pytest.raises(app.UsageError, match=r"faiss-cpu is not installed: pip install -e "
                     r"'.\[bench\]' \(or leave"):
    common.need("faiss", "faiss-cpu", " (or leave faiss out of --methods)")
  common.need("numpy", "numpy")
  blocker = tmp_path / "file"
  blocker.write_text("")
  from absl import flags  # pylint: disable=import-outside-toplevel
  from absl.testing import flagsaver  # pylint: disable=import-outside-toplevel
  with flagsaver.flagsaver(out=str(blocker / "out")):
    with pytest.raises(app.UsageError, match="cannot be written"):
      common.out_dir("x")
  with pytest.raises(app.UsageError, match=r"--dataset=folder:/nowhere: dataset folder "
                     "/nowhere does not exist"):
    common.cached_arrays("folder:/nowhere", str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()  # nothing half-written
  assert " CPU cores (" in common.machine()
  for name, value, message in (("bands", ["1", "3"], "--bands takes square numbers"),
                               ("pools", ["3"], "--pools takes block sides 1, 2, 4 or 8"),
                               ("components", ["0"], "--components takes integers >= 1")):
    with flagsaver.flagsaver(**{name: value}):
      with pytest.raises(app.UsageError, match=message):
        bound_tightness._static_flags()  # before any data is read
  assert bound_tightness._static_flags() == ([1, 10, 100], [4, 2], [64, 128, 192], [1, 4, 16, 64])
  flags.FLAGS["bands"].present = 1  # as if given on the command line, with the default metric
  try:
    with pytest.raises(app.UsageError, match="--bands has no effect with --metric=l1"):
      bound_tightness._static_flags()
  finally:
    flags.FLAGS["bands"].present = 0


@pytest.mark.parametrize("args, message", [
    (["benchmarks.knn_speed", "--methods=numpy,jaxlin"], "--methods must start with jaxlin"),
    (["benchmarks.pruned_speed", "--methods=brute,hnsw"],
     "--methods takes pruned, brute, faiss (each once), got brute,hnsw"),
    (["benchmarks.scaling", "--devices=0"], "--devices must be distinct device counts >= 1"),
    (["benchmarks.l2_tiles", "--tiles=512x5120,512x"],
     "--tiles takes distinct QUERIESxROWS pairs of integers >= 1, got 512x5120,512x"),
    (["benchmarks.cv_speed", "--baseline_src=/nowhere"],
     "--baseline_src=/nowhere holds no jaxlin checkout"),
    (["benchmarks.cv_speed", "--rounds=0"], "--rounds must be >= 1, got 0"),
    (["benchmarks.pruned_speed", "--rounds=0", "--methods=brute"], "--rounds must be >= 1, got 0"),
    (["benchmarks.bound_tightness", "--metric=l2", "--bases=pca,svd"],
     "--bases takes pca, dct (each once), got pca,svd"),
    (["benchmarks.l2_thresholds", "--estimates=32,0"], "--estimates takes positive integers"),
    # failed after the data had loaded, with a traceback
    (["benchmarks.l2_thresholds", "--estimates=5,32"], "--estimates must each be >= --k=10"),
    (["benchmarks.l2_thresholds", "--fine=0"], "--k and --fine must be >= 1"),
    (["benchmarks.cv_speed", "--rounds=2"], "--rounds takes turns with the baseline"),  # ignored
    # absl's own parsing: "FATAL Flags parsing error" and a hint, two lines
    (["benchmarks.pruned_speed", "--k=abc"], "--k must be an integer, got 'abc'"),
    (["benchmarks.knn_speed", "--kk=3"], "unknown command line flag 'kk'"),
])
def test_a_benchmark_refuses_bad_flags_before_any_work(tmp_path, args, message, cli):
  proc = cli.run(*args, "--dataset=folder:/nowhere", f"--out={tmp_path / 'out'}")
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
  # one line: absl printed the docstring and every flag above it (about 48 lines)
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr[-2000:]
  assert proc.stderr.startswith("error: ") and not (tmp_path / "out").exists()


def test_report_tables_never_round_a_disagreement_to_one_and_wrong_answers_fail():
  """A fraction of 0.9996 of neighbours in agreement printed as "1" (3 significant
  digits), hiding up to 500 wrong ones of 1,000,000; and benchmarks whose answers must
  be exact reported a mismatch but passed."""
  from benchmarks import common  # pylint: disable=import-outside-toplevel
  table = common.markdown_table(
      [{"a": 0.9996, "b": 0.99967, "c": 1.0, "d": 0.5, "e": 12.34, "f": 1 - 1e-8, "g": 4567.8,
        "h": 254.469, "i": 0.0004}], list("abcdefghi"))
  assert table.splitlines()[-1] == (
      "| 0.9996 | 0.99967 | 1 | 0.5 | 12.3 | 0.99999999 | 4568 | 254 | 0.0004 |")
  common.fail_on([])
  with pytest.raises(AssertionError, match="wrong answers, a bug: pruned .l2. differs"):
    common.fail_on(["pruned (l2) differs from brute force"])


def test_matmul_speed_names_the_library_of_a_compiled_product():
  from benchmarks import matmul_speed  # pylint: disable=import-outside-toplevel
  ynn = ('ROOT %ynn_fusion = s32[512,2048]{1,0} fusion(%a, %b), kind=kCustom, '
         'backend_config={"fusion_config":{"kind":"__ynn_fusion"}}')
  assert matmul_speed.kernel_name(ynn) == "YNNPACK"
  assert matmul_speed.kernel_name("ROOT %dot.0 = s32[512,2048]{1,0} dot(%p0, %p1)") == "XLA"
  assert matmul_speed.kernel_name('custom_call_target="jaxlin_int8_products"') == "jaxlin native"
  assert matmul_speed.kernel_name('custom-call(...), custom_call_target="__onednn$matmul"') == (
      "oneDNN")


@pytest.mark.parametrize("args", [
    ["benchmarks.l2_thresholds", "--queries=20", "--components=8", "--fine=16",
     "--estimates=16", "--repeats=1"],
    ["benchmarks.pruned_parts", "--queries=20", "--repeats=1", "--blocks=256",
     "--samples=1000"],
])
def test_benchmarks_on_the_cascades_internals_run_end_to_end(tmp_path, args, cli):
  # They call jaxlin.bounds' internals (the bound's rows in the index's own dtype): a tiny
  # image folder of 16x16x3 images (768 features) runs them through.
  from tests.conftest import make_image_folder  # pylint: disable=import-outside-toplevel
  make_image_folder(str(tmp_path / "images"), per_class_train=60, per_class_test=43, size=16)
  proc = cli.run(*args, f"--dataset=folder:{tmp_path / 'images'}", f"--out={tmp_path / 'out'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  name = args[0].split(".")[1]
  header = (tmp_path / "out" / f"{name}.md").read_text()
  assert re.search(r"^- int8_product: (native|xla: .+)$", header, re.M), header
