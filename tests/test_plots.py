import io
import os
import stat
import subprocess
import sys

import matplotlib.collections
import matplotlib.figure
import numpy as np
import pytest
from PIL import Image

from jaxlin import plots
from jaxlin.errors import InputError

NAMES = ("cat", "dog", "frog")
_RNG = np.random.default_rng(0)
CALLS = {
    "cross_validation": lambda ax: plots.cross_validation(
        [1, 3, 5], {"L1": _RNG.random((3, 3)), "L2": _RNG.random((3, 3))}, ax=ax),
    "neighbors": lambda ax: plots.neighbors(
        _RNG.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8), [0, 1],
        _RNG.integers(0, 256, (2, 3, 4, 4, 3), dtype=np.uint8), np.array([[0, 1, 2], [1, 1, 0]]),
        NAMES, ax=ax),
    "confusion": lambda ax: plots.confusion(np.array([[3, 1, 0], [0, 2, 1], [1, 0, 4]]), NAMES,
                                            title="test", ax=ax),
    "templates": lambda ax: plots.templates(_RNG.normal(size=(4 * 4 * 3, 3)), (4, 4, 3), NAMES,
                                            ax=ax),
    "curves": lambda ax: plots.curves({"a": ([1, 2, 3], [3.0, 2.0, 1.0]), "b": ([1, 2], [1, 2])},
                                      logy=True, smooth=2, highlight="a", ax=ax),
    "grid": lambda ax: plots.grid(np.array([[0.1, np.nan], [0.3, 0.4]]), [1e-3, 1e-2], [0.0, 1.0],
                                  a_label="lr", b_label="reg", ax=ax),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_each_plot_returns_a_figure_or_draws_into_the_given_ax(name):
  fig = CALLS[name](None)
  assert isinstance(fig, matplotlib.figure.Figure) and fig.axes
  host = matplotlib.figure.Figure()
  left, right = host.subplots(1, 2)
  assert CALLS[name](right) is host
  assert not left.has_data() and not left.child_axes  # only the given Axes was drawn in
  assert right.has_data() or right.child_axes
  host.savefig(io.BytesIO(), format="png")  # renders headless, without pyplot


def test_save_writes_a_png_with_the_users_umask_and_keeps_the_figure(tmp_path):
  fig = CALLS["curves"](None)
  old = os.umask(0o022)
  try:
    path = plots.save(fig, str(tmp_path / "sub" / "loss.png"))
  finally:
    os.umask(old)
  assert path == str(tmp_path / "sub" / "loss.png")
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size[0] > 100
  assert plots.save(fig, str(tmp_path / "again.png"))  # still usable after saving
  assert sorted(os.listdir(tmp_path / "sub")) == ["loss.png"]  # no temporary left behind


def test_import_keeps_the_backend_and_pyplot_untouched():
  code = ("import matplotlib, sys; before = matplotlib.get_backend(); import jaxlin.plots; "
          "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend()); "
          "assert 'matplotlib.pyplot' not in sys.modules")
  env = dict(os.environ, MPLBACKEND="svg")
  subprocess.run([sys.executable, "-c", code], check=True, env=env,
                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_names_and_labels_must_fit_the_images():
  with pytest.raises(InputError, match="class_names has 2 names for 3 templates"):
    plots.templates(_RNG.normal(size=(4 * 4 * 3, 3)), (4, 4, 3), NAMES[:2])
  with pytest.raises(InputError, match=r"labels must lie in \[0, 3\)"):
    plots.neighbors(np.zeros((1, 4, 4, 3), np.uint8), [0], np.zeros((1, 2, 4, 4, 3), np.uint8),
                    np.array([[0, 3]]), NAMES)
  with pytest.raises(InputError, match="no images to draw"):
    plots.neighbors(np.zeros((0, 4, 4, 3), np.uint8), [], np.zeros((0, 2, 4, 4, 3), np.uint8),
                    np.zeros((0, 2), int), NAMES)


def test_save_writes_the_format_its_extension_names(tmp_path):
  fig = CALLS["curves"](None)
  assert plots.save(fig, tmp_path / "a.pdf") == str(tmp_path / "a.pdf")
  assert (tmp_path / "a.pdf").read_bytes().startswith(b"%PDF")
  plots.save(fig, tmp_path / "a.svg")
  assert b"<svg" in (tmp_path / "a.svg").read_bytes()[:2000]
  with pytest.raises(InputError, match=r"cannot write a figure as .xyz .*\.png") as e:
    plots.save(fig, tmp_path / "a.xyz")
  assert e.value.argument == "path" and not (tmp_path / "a.xyz").exists()


def _neighbors(**changes):
  args = dict(query_images=np.zeros((2, 4, 4, 3), np.uint8), query_labels=[0, 1],
              neighbor_images=np.zeros((2, 3, 4, 4, 3), np.uint8),
              neighbor_labels=np.array([[0, 1, 2], [1, 1, 0]]), class_names=NAMES)
  args.update(changes)
  return plots.neighbors(**args)


@pytest.mark.parametrize("call, argument, message", [
    (lambda: _neighbors(query_images=np.zeros((2, 48), np.uint8)), "query_images",
     r"\(Q, H, W\) or \(Q, H, W, C\), Q = 2 \(reshape flattened rows"),
    (lambda: _neighbors(query_labels=[0.0, 1.0]), "query_labels", "integer labels"),
    (lambda: _neighbors(query_labels=[0]), "query_labels", r"\(Q,\) = \(2,\)"),
    (lambda: _neighbors(neighbor_labels=np.zeros((2, 3), np.float32)), "neighbor_labels",
     "integer labels"),
    (lambda: _neighbors(neighbor_images=np.zeros((2, 3, 5, 4, 3), np.uint8)), "neighbor_images",
     r"images of shape \(5, 4, 3\), the queries \(4, 4, 3\)"),
    (lambda: _neighbors(neighbor_images=np.zeros((2, 2, 4, 4, 3), np.uint8)), "neighbor_images",
     "2 expected in axis 0|3 expected in axis 1"),
    (lambda: plots.templates(np.zeros((48, 3)), (4, 4, 2), NAMES), "image_shape",
     "whose product is the 48 rows"),
    (lambda: plots.templates(np.zeros(48), (4, 4, 3), NAMES), "w_DxC", r"shape \(D, C\)"),
    (lambda: plots.confusion(np.eye(2, dtype=int), NAMES), "confusion_CxC", r"\(3, 3\)"),
    (lambda: plots.grid(np.zeros((2, 3)), [1, 2], [1, 2], a_label="a", b_label="b"),
     "values_AxB", r"\(2, 2\)"),
    (lambda: plots.curves({"loss": ([1, 2, 3], [1.0, 2.0])}), "series['loss'] y", r"\(3,\)"),
    (lambda: plots.curves({"loss": ([1, 2], [1.0, 2.0])}, smooth=2.5), "smooth", "an integer"),
    (lambda: plots.curves([([1, 2], [1.0, 2.0])]), "series", "must be a dict"),
    (lambda: plots.cross_validation([1, 3], {"l1": np.zeros((5, 3))}), "accuracies['l1']",
     r"\(num_folds, 2\)"),
])
def test_arrays_of_the_wrong_shape_or_dtype_name_themselves(call, argument, message):
  with pytest.raises(InputError, match=message) as e:
    call()
  assert e.value.argument == argument


def test_grid_labels_numbers_and_names():
  fig = plots.grid(np.zeros((2, 3)), ["sgd", "adam"], [0.1, 1e-5, 10], a_label="optimizer",
                   b_label="reg")
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_yticklabels()] == ["sgd", "adam"]
  assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "1e-05", "10"]


def test_labels_shrink_with_a_small_given_axes():
  def label_sizes(fig):
    return {t.get_fontsize() for a in fig.axes for t in a.texts}
  alone = label_sizes(CALLS["neighbors"](None))
  small = matplotlib.figure.Figure(figsize=(4, 4))
  CALLS["neighbors"](small.subplots(3, 3)[0, 0])
  assert alone == {6.0} and max(label_sizes(small)) < 2.0


def test_everything_the_library_returns_or_a_user_holds_is_drawn():
  acc = np.array([0.5, 0.6, 0.4])  # cross_validate_knn's accuracies of one int k: (folds,)
  plots.cross_validation(3, {"l1": acc})
  plots.cross_validation([1.0, 3.0], {"l1": np.zeros((3, 2))})  # float ks
  plots.confusion(np.eye(3) * 2.5, NAMES)  # averaged counts
  plots.curves({"gap": ([1, 2, 3], [1.0, None, 2.0]), "bools": ([1, 2], [True, False])})
  plots.neighbors(np.zeros((1, 4, 4), bool), [0], np.zeros((1, 2, 4, 4), bool), [[0, 1]], NAMES)
  plots.neighbors(np.zeros((1, 4, 4, 3), np.float32), np.array([0], np.uint8),
                  np.ones((1, 2, 4, 4, 3), np.float32), [[0, 1]], NAMES)  # floats in [0, 1]
  plots.templates(np.zeros((48, 3)), np.array([4, 4, 3]), NAMES)
  plots.templates(np.zeros((16, 3)), (4, 4), NAMES)  # grayscale
  with pytest.raises(InputError, match=r"image_shape 16 must be \(H, W\) or \(H, W, C\)"):
    plots.templates(np.zeros((48, 3)), 16, NAMES)


def test_save_takes_matplotlibs_savefig_dpi_else_110(tmp_path):
  fig = CALLS["curves"](None)
  sizes = {}
  for name, rc in (("default", "figure"), ("rc", 55)):
    with matplotlib.rc_context({"savefig.dpi": rc}):
      with Image.open(plots.save(fig, str(tmp_path / f"{name}.png"))) as im:
        sizes[name] = im.size[0]
  with Image.open(plots.save(fig, str(tmp_path / "given.png"), dpi=55)) as im:
    assert im.size[0] == sizes["rc"]
  assert sizes["default"] == pytest.approx(sizes["rc"] * 110 / 55, rel=0.05)


KS = [1, 3, 5, 8, 10, 12, 15, 20, 50, 100]


def test_cross_validation_of_a_validation_split_says_so_and_rings_the_chosen_k():
  acc = np.array([[0.28, 0.265, 0.28, 0.296, 0.292, 0.286, 0.291, 0.287, 0.274, 0.263]])
  ax = plots.cross_validation(KS, {"l1": acc, "l2": acc - 0.02}, chosen=("l1", 8)).axes[0]
  assert ax.get_title() == "k-nearest neighbours: choosing k on a validation split"
  assert ax.get_ylabel() == "validation accuracy"
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [
      "l1", "l2", "chosen: l1, k=8 (0.296)"]
  assert list(ax.get_xticks()) == KS  # a tick at every k; 12 unlabelled: it would touch 10
  assert [t.get_text() for t in ax.get_xticklabels()] == [
      "1", "3", "5", "8", "10", "", "15", "20", "50", "100"]
  ring, = [c for c in ax.collections if c.get_sizes().tolist() == [260]]
  assert ring.get_offsets().tolist() == [[8.0, 0.296]]


def test_cross_validation_over_folds_keeps_its_words():
  ax = plots.cross_validation([1, 3], {"l2": np.array([[0.5, 0.6], [0.7, 0.6]])},
                              chosen=("l2", 3)).axes[0]
  assert ax.get_title() == "k-nearest neighbours: choosing k by cross-validation"
  assert ax.get_ylabel() == "cross-validation accuracy"
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [
      "l2 (mean ± std over 2 folds)", "chosen: l2, k=3 (0.600)"]
  assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "3"]


def test_neighbors_name_the_prediction_and_take_a_title():
  fig = _neighbors(predicted_labels=[2, 1], title="l1, k=3")
  assert fig.texts[0].get_text() == "l1, k=3"  # the title
  texts = [t.get_text() for t in fig.axes[0].texts]
  assert texts[0] == "query: cat\npredicted: frog" and texts[4] == "query: dog\npredicted: dog"
  # wrong in red, right in green (a row of wrong predictions had read as a broken figure)
  colours = [t.get_color() for t in fig.axes[0].texts]
  assert (colours[0], colours[4]) == ("red", "green")
  assert _neighbors().axes[0].texts[0].get_color() == "black"  # no prediction given


def test_grid_greys_nan_cells_picks_readable_text_and_frames_the_chosen_cell():
  fig = plots.grid(np.array([[0.1, 0.9], [np.nan, 0.5]]), [1e-3, 1e5], [0.1, 1000],
                   a_label="learning rate", b_label="reg", value_label="validation accuracy",
                   nan_text="diverged", chosen=(0, 1))
  ax, bar = fig.axes
  assert [(t.get_text(), t.get_color()) for t in ax.texts] == [
      ("0.100", "white"), ("0.900\nchosen", "black"), ("diverged", "black"), ("0.500", "white")]
  assert ax.images[0].get_cmap().get_bad().tolist() == [0.8, 0.8, 0.8, 1.0]  # NaN: grey
  frame, = ax.patches
  assert (frame.get_xy(), frame.get_width(), frame.get_edgecolor()) == (
      (0.5, -0.5), 1, (1.0, 0.0, 0.0, 1.0))
  assert bar.get_ylabel() == "validation accuracy"
  one = plots.grid(np.array([[np.nan, 0.5]]), [1e5], [0.1, 1], a_label="lr", b_label="reg",
                   nan_text="diverged")  # one finite value: the norm maps NaN to 0 (purple)
  assert one.axes[0].texts[0].get_color() == "black"  # on the grey, not white


def test_curves_leave_outliers_out_of_the_range_and_label_a_log_axis():
  fig = plots.curves({"ok": ([1, 2, 3], [0.62, 0.7, 0.9]), "best": ([1, 2, 3], [0.65, 0.7, 0.8]),
                      "diverged": ([1, 2], [1.0, 1e30])}, ylabel="loss", logy=True,
                     highlight="best", outliers=["diverged"])
  ax = fig.axes[0]
  lo, hi = ax.get_ylim()
  assert 0.6 < lo < 0.62 and 0.9 < hi < 0.92  # the others' range, not up to 1e30
  formatter = ax.yaxis.get_major_formatter()
  assert [formatter(v) for v in ax.get_yticks() if lo <= v <= hi] == ["0.7", "0.8", "0.9"]
  assert ax.get_ylabel() == "loss (log scale)"
  assert all(t == int(t) for t in ax.get_xticks())  # whole steps, not 2.5
  assert [line.get_zorder() for line in ax.lines] == [2, 3, 2]  # the highlighted on top
  assert ax.lines[2].get_linestyle() == "--"
  legend = ax.get_legend()
  assert [t.get_text() for t in legend.get_texts()] == ["ok", "best", "diverged (off the scale)"]
  fig.savefig(io.BytesIO(), format="png")
  assert legend.get_window_extent().x0 > ax.get_window_extent().x1  # right of the curves


@pytest.mark.parametrize("call, argument, message", [
    (lambda: plots.cross_validation([1, 3], {"l1": np.zeros((2, 2))}, chosen=("l2", 3)),
     "chosen", r"a \(metric, k\) pair of those drawn \(metrics l1; k 1, 3\), got \('l2', 3\)"),
    (lambda: plots.cross_validation([1, 3], {"l1": np.zeros((2, 2))}, chosen=("l1", 4)),
     "chosen", r"got \('l1', 4\)"),
    (lambda: plots.cross_validation([1, 3], {"l1": np.zeros((2, 2))}, chosen="l1"),
     "chosen", "got 'l1'"),
    (lambda: _neighbors(predicted_labels=[0]), "predicted_labels", r"\(Q,\) = \(2,\)"),
    (lambda: _neighbors(predicted_labels=[0, 3]), "predicted_labels",
     r"predicted_labels must lie in \[0, 3\)"),
    (lambda: _neighbors(neighbor_labels=np.array([[0, 1, 2], [1, 1, 5]])), "neighbor_labels",
     r"neighbor_labels must lie in \[0, 3\) to name a class of class_names, found 5"),
    (lambda: plots.grid(np.zeros((2, 2)), [1, 2], [1, 2], a_label="a", b_label="b",
                        chosen=(2, 0)), "chosen", r"indices of a cell of the 2 x 2 grid"),
    (lambda: plots.grid(np.zeros((2, 2)), [1, 2], [1, 2], a_label="a", b_label="b",
                        chosen=(0.0, 1)), "chosen", r"got \(0.0, 1\)"),
    (lambda: plots.grid(np.zeros((2, 2)), [1, 2], [1, 2], a_label="a", b_label="b",
                        nan_text=None), "nan_text", "must be a string"),
    (lambda: plots.curves({"a": ([1], [1.0])}, legend="top"), "legend",
     "'right', 'best' or 'none', got 'top'"),
    (lambda: plots.curves({"a": ([1], [1.0])}, outliers=["b"]), "outliers",
     r"must name series, got 'b' \(series: 'a'\)"),
    # Each of these was a traceback (AttributeError, ValueError, TypeError), a silent
    # thin curve for a misspelt highlight, a wrong title (accuracy -1200.0%, nan%) or a
    # point that vanished under its legend.
    (lambda: plots.cross_validation([1, 3], [[0.1, 0.2]]), "accuracies",
     r"accuracies must be a dict \{metric name: \(num_folds, K\) array\}, got list"),
    (lambda: plots.cross_validation([0, 1, 50], {"l1": np.ones((2, 3))}), "ks",
     r"ks must be numbers >= 1 \(the k of k-nearest neighbours\), got \[0, 1, 50\]"),
    (lambda: plots.cross_validation([1, 5], {"l1": np.array([[0.1, np.nan]])}),
     "accuracies['l1']", "holds 1 NaN or infinite values: a mean over folds"),
    (lambda: plots.curves({"a": [1, 2, 3]}), "series",
     r"series\['a'\] must be an \(x, y\) pair of equal-length arrays, got list of length 3"),
    (lambda: plots.curves({"a": ([1], [1.0])}, highlight="b"), "highlight",
     r"highlight must name a series, got 'b' \(series: 'a'\)"),
    (lambda: plots.grid(np.ones((1, 1)), 1, [1], a_label="a", b_label="b"), "a_values",
     "a_values must be a list of the grid's values"),
    (lambda: plots.confusion(-np.eye(2), NAMES[:2]), "confusion_CxC",
     r"negative counts \(down to -1\)"),
    (lambda: plots.confusion(np.array([[np.nan, 1], [0, 1]]), NAMES[:2]), "confusion_CxC",
     "holds 1 NaN or infinite values: there is no colour for them"),
    (lambda: plots.confusion(np.zeros((0, 0)), []), "class_names", "no class to draw"),
    (lambda: _neighbors(query_images=np.full((2, 4, 4, 3), np.nan)), "query_images",
     "holds 96 NaN or infinite values"),
    (lambda: plots.templates(np.full((12, 1), np.inf), (2, 2, 3), ["a"]), "w_DxC",
     "holds 12 NaN or infinite values"),
    # Nothing to draw, or a k twice: empty or broken axes, or a ZeroDivisionError.
    (lambda: plots.cross_validation([1, 1, 3], {"l1": [[0.1, 0.9, 0.5]]}), "ks",
     r"ks holds a k twice \(\[1, 1, 3\]\)"),
    (lambda: plots.templates(np.zeros((12, 0)), (2, 2, 3), []), "w_DxC", "no columns"),
    (lambda: plots.curves({}), "series", "series is empty"),
    (lambda: plots.grid(np.zeros((0, 0)), [], [], a_label="a", b_label="b"), "values_AxB",
     "values_AxB is empty"),
])
def test_bad_new_arguments_name_themselves(call, argument, message):
  with pytest.raises(InputError, match=message) as e:
    call()
  assert e.value.argument == argument


def test_figures_draw_the_values_they_are_given():
  # Each assertion pins a drawn value: the colour of the confusion matrix (row-normalised),
  # its title's accuracy, the pixels of an image grid, the fold mean drawn and ringed.
  ax = plots.confusion(np.array([[3, 1], [0, 4]]), NAMES[:2], title="t").axes[0]
  np.testing.assert_allclose(ax.images[0].get_array(), [[0.75, 0.25], [0.0, 1.0]])
  assert ax.get_title() == "t accuracy 87.5%"
  query = np.zeros((1, 2, 2, 3), np.uint8)
  query[0, 0, 0] = (255, 128, 0)
  mosaic = plots.neighbors(query, [0], np.full((1, 1, 2, 2, 3), 51, np.uint8), [[1]],
                           NAMES).axes[0].images[0].get_array()
  assert np.isclose(mosaic, [1.0, 128 / 255, 0.0]).all(-1).sum() == 1  # the one coloured pixel
  assert np.isclose(mosaic, 0.2).all(-1).sum() == 4  # the neighbour's 4 pixels at 51 / 255
  acc = np.array([[0.5, 0.9], [0.7, 0.6], [0.6, 0.3]])
  ax = plots.cross_validation([1, 3], {"l2": acc}, chosen=("l2", 1)).axes[0]
  mean_line = ax.containers[0].lines[0]
  np.testing.assert_allclose(mean_line.get_ydata(), [0.6, 0.6])
  ring, = [c for c in ax.collections if isinstance(c, matplotlib.collections.PathCollection)
           and c.get_sizes().tolist() == [260]]
  np.testing.assert_allclose(ring.get_offsets(), [[1.0, 0.6]])


def test_channels_first_images_are_refused():
  # (3, 8, 8) for channels-last weights drew the first 3 of 8 "channels" without a word.
  w = np.random.default_rng(0).normal(size=(192, 2))
  with pytest.raises(InputError, match=r"8 channels; images are \(H, W\) or \(H, W, C\) with "
                     r"C = 1, 3 or 4, channels last") as e:
    plots.templates(w, (3, 8, 8), ["a", "b"])
  assert e.value.argument == "image_shape"
  q = np.zeros((1, 3, 8, 8), np.uint8)
  with pytest.raises(InputError, match="8 channels") as e:
    plots.neighbors(q, [0], q[:, None], [[0]], ["a"])
  assert e.value.argument == "query_images"


def test_confusion_normalises_any_row_and_stays_readable_for_many_classes():
  # A matrix normalised over all cells (rows summing to 1/6 and 1/2) was coloured 0.083.
  ax = plots.confusion(np.array([[1 / 12, 1 / 12], [0.0, 0.5]]), NAMES[:2]).axes[0]
  np.testing.assert_allclose(ax.images[0].get_array(), [[0.5, 0.5], [0.0, 1.0]])
  # float16 counts whose row sum overflows float16: titled "accuracy 0.0%", row 0 blank.
  ax = plots.confusion(np.array([[40000, 30000], [0, 10]], np.float16), NAMES[:2]).axes[0]
  np.testing.assert_allclose(ax.images[0].get_array(), [[4 / 7, 3 / 7], [0.0, 1.0]])
  assert ax.get_title() == "accuracy 57.1%"
  # 150 classes drew a 92-inch figure with 22,500 texts (54 s, 3 GB; 1,000 ran out of memory).
  many = np.diag(np.arange(1, 151))
  fig = plots.confusion(many, [f"c{i}" for i in range(150)])
  assert max(fig.get_size_inches()) <= 21
  ax = fig.axes[0]
  assert not ax.texts  # the axes number the classes instead of naming them
  assert not [t for t in ax.get_xticklabels() + ax.get_yticklabels() if "c" in t.get_text()]
  assert ax.get_xlabel() == "predicted (150 classes in order)"
  assert ax.get_title() == "accuracy 100.0%"
  assert plots.confusion(np.zeros((2, 2), int), NAMES[:2], "val").axes[0].get_title() == (
      "val (no examples)")  # not "accuracy nan%"


def test_images_keep_their_pixels_or_share_one_scale():
  # Float pixels in [0, 1], and int64 pixels in [0, 255], were each stretched to their own
  # range: a grey of 0.1-0.2 was drawn from black to white.
  q = np.full((1, 2, 2, 3), 0.1)
  q[0, 0, 0] = 0.2
  n = np.full((1, 1, 2, 2, 3), 0.15)
  mosaic = _neighbors_mosaic(q, n)
  assert np.isclose(mosaic, 0.2).all(-1).sum() == 1 and np.isclose(mosaic, 0.1).all(-1).sum() == 3
  mosaic = _neighbors_mosaic((q * 1000).astype(np.int64) // 4, (n * 1000).astype(np.int64) // 4)
  assert np.isclose(mosaic, 50 / 255).all(-1).sum() == 1  # 0.2 * 1000 // 4 = 50 of 255
  # Centred rows: one scale for the query and its neighbours, from the lowest to the highest.
  mosaic = _neighbors_mosaic(q - 0.15, n - 0.15)
  assert np.isclose(mosaic, 1.0).all(-1).sum() >= 1 and np.isclose(mosaic, 0.0).all(-1).sum() == 3
  assert np.isclose(mosaic, 0.5).all(-1).sum() == 4  # the neighbour, midway
  # Masks: bools (and 0/1 floats) are black and white, not black and 1/255.
  mask = np.zeros((1, 2, 2, 3), bool)
  mask[0, 0, 0] = True
  mosaic = _neighbors_mosaic(mask, mask[:, None])
  assert np.isclose(mosaic, 1.0).all(-1).sum() >= 2 and np.isclose(mosaic, 0.0).all(-1).sum() == 6
  mosaic = _neighbors_mosaic(mask, np.full((1, 1, 2, 2, 3), 128, np.uint8))  # with pixels
  assert np.isclose(mosaic, 128 / 255).all(-1).sum() == 4  # True was 0.005 in a min-max


def _neighbors_mosaic(query, neighbours):
  return plots.neighbors(query, [0], neighbours, [[0]], NAMES).axes[0].images[0].get_array()


def test_iterables_users_pass_are_still_drawn():
  # A zip for an (x, y) pair and a dict's keys for grid labels worked before the checks.
  fig = plots.curves({"a": zip(*[(1, 3.0), (2, 2.0)])})
  np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [3.0, 2.0])
  rates = {1e-3: "slow", 1e-2: "fast"}
  ax = plots.grid(np.ones((2, 1)), rates.keys(), range(1), a_label="lr", b_label="reg").axes[0]
  assert [t.get_text() for t in ax.get_yticklabels()] == ["0.001", "0.01"]


def test_cross_validation_draws_ks_in_order_and_save_names_a_blocked_folder(tmp_path):
  ax = plots.cross_validation([10, 1, 5], {"l1": np.array([[0.3, 0.1, 0.2]])}).axes[0]
  np.testing.assert_allclose(ax.lines[0].get_xdata(), [1, 5, 10])  # was a zigzag
  np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.1, 0.2, 0.3])
  (tmp_path / "afile").write_text("")
  with pytest.raises(FileExistsError, match="a file of that name is in the way"):
    plots.save(ax.figure, str(tmp_path / "afile" / "fig.png"))


def test_log_curves_keep_a_loss_that_reaches_zero():
  # A hinge loss that reached exactly 0 dropped off a log axis and vanished for good.
  ax = plots.curves({"svm": ([1, 2, 3, 4], [1.0, 0.1, 0.0, 0.0])}, ylabel="loss",
                    logy=True).axes[0]
  assert ax.get_yscale() == "symlog"
  assert ax.get_ylabel() == "loss (log scale beyond ±0.1, linear within)"
  assert ax.get_ylim()[0] <= 0.0 and list(ax.lines[0].get_ydata()) == [1.0, 0.1, 0.0, 0.0]
  positive = plots.curves({"a": ([1, 2], [1.0, 0.1])}, logy=True).axes[0]
  assert positive.get_yscale() == "log"  # unchanged where every value is positive


def test_curves_draw_along_x_and_say_what_they_could_not_draw():
  ax = plots.curves({"a": ([3, 1, 2], [30.0, 10.0, 20.0])}).axes[0]
  assert list(ax.lines[0].get_xdata()) == [1, 2, 3]  # was a zigzag
  assert list(ax.lines[0].get_ydata()) == [10, 20, 30]
  ax = plots.curves({"ok": ([1, 2, 3], [1.0, 2.0, 3.0]), "in": ([1, 2], [2.5, 1e9]),
                     "far": ([1, 2], [1e8, 1e9])}, outliers=["in", "far"]).axes[0]
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [
      "ok", "in", "far (off the scale)"]  # "far" has no point inside the others' range
  ax = plots.curves({"long": (np.arange(10), np.arange(10.0)), "short": ([1, 2], [1.0, 2.0])},
                    smooth=5).axes[0]
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [
      "long", "short (not smoothed: 2 points)"]


def test_grid_cells_read_at_any_magnitude():
  ax = plots.grid(np.array([[1e10, 4e-5], [0.0, np.inf], [0.41234, np.nan]]), [1, 2, 3], [1, 2],
                  a_label="a", b_label="b", nan_text="diverged").axes[0]
  assert [t.get_text() for t in ax.texts] == ["1e+10", "4e-05", "0.000", "inf", "0.412",
                                              "diverged"]
  assert ax.texts[3].get_color() == "black"  # on the grey of a value with no colour


def test_huge_values_keep_their_picture_and_accuracy():
  w = np.array([[1.5e308, -1.5e308], [-1.5e308, 0.0], [0.0, 1.5e308], [1e308, 1e308]])
  cells = plots.templates(w, (2, 2), ["a", "b"]).axes[0].images[0].get_array()
  assert np.all(np.isfinite(cells))
  ax = plots.confusion(np.array([[1e308, 1e308], [1.0, 1.0]]), NAMES[:2]).axes[0]
  assert ax.get_title() == "accuracy 50.0%"


def test_neighbors_show_mixed_pixel_dtypes_as_pixels():
  # uint8 queries beside float neighbours in [0, 1] were min-max scaled together: the
  # neighbours came out black.
  mosaic = _neighbors_mosaic(np.full((1, 2, 2, 3), 128, np.uint8), np.full((1, 1, 2, 2, 3), 0.25))
  assert np.isclose(mosaic, 128 / 255).all(-1).sum() == 4
  assert np.isclose(mosaic, 0.25).all(-1).sum() == 4


def test_save_expands_home_and_checks_dpi_before_making_folders(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  fig = CALLS["confusion"](None)
  assert plots.save(fig, "~/fig.png") == str(tmp_path / "home" / "fig.png")
  assert (tmp_path / "home" / "fig.png").exists() and not (tmp_path / "~").exists()
  plots.save(fig, os.fsencode(tmp_path / "bytes.png"))
  assert (tmp_path / "bytes.png").exists()
  for dpi in (0, -5, float("nan"), "high", 1e5, True):
    with pytest.raises(InputError, match=r"dpi must be a number >= 1 \(dots per inch") as e:
      plots.save(fig, str(tmp_path / "a" / "b" / "fig.png"), dpi=dpi)
    assert e.value.argument == "dpi"
  assert not (tmp_path / "a").exists()  # no empty folders left
  with pytest.raises(InputError, match="path is empty") as e:
    plots.save(fig, "")
  assert e.value.argument == "path"


def test_chosen_takes_jax_scalars():
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  ax = plots.cross_validation([1, 3], {"l1": [[0.1, 0.2]]}, chosen=("l1", jnp.array(3))).axes[0]
  assert "chosen: l1, k=3" in [t.get_text() for t in ax.get_legend().get_texts()][-1]
  ax = plots.grid(np.ones((2, 2)), [1, 2], [1, 2], a_label="a", b_label="b",
                  chosen=(jnp.int32(1), 1)).axes[0]
  assert ax.texts[3].get_text() == "1.000\nchosen"


def test_curves_edges_of_the_symlog_axis_and_of_outliers():
  # Others with no finite point: the outlier sets the range (it was cut to +-0.055).
  ax = plots.curves({"a": ([0, 1], [np.nan, np.nan]), "b": ([0, 1], [1e6, 2e6])},
                    outliers=["b"]).axes[0]
  assert ax.get_ylim()[0] < 1e6 < 2e6 < ax.get_ylim()[1]
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
  ax = plots.curves({"a": ([0, 1, 2], [-1.0, -2.0, -3.0])}, logy=True, ylabel="loss").axes[0]
  assert ax.get_ylabel() == "loss (log scale beyond ±1, linear within)"
  ax = plots.curves({"a": ([0, 1, 2], [1.0, 1e-300, 0.0])}, logy=True).axes[0]
  assert ax.get_ylabel() == "(log scale beyond ±1e-12, linear within)"  # 12 decades at most
  assert ax.get_ylim()[1] >= 1.0


def test_save_takes_matplotlibs_figure_dpi_and_names_an_rc_dpi(tmp_path, monkeypatch):
  fig = matplotlib.figure.Figure(figsize=(1, 1), dpi=37)
  fig.add_subplot().plot([0, 1])
  with Image.open(plots.save(fig, str(tmp_path / "f.png"), dpi="figure")) as im:
    assert abs(im.size[0] - 37) <= 8  # the figure's own dpi ("tight" trims a little)
  monkeypatch.setitem(matplotlib.rcParams, "savefig.dpi", 3000)
  with Image.open(plots.save(fig, str(tmp_path / "g.png"))) as im:
    assert im.size[0] > 2000  # a high rc dpi that fits is used
  monkeypatch.setitem(matplotlib.rcParams, "savefig.dpi", 50000)
  with pytest.raises(InputError, match=r"matplotlib's savefig.dpi \(rcParams\) must be"):
    plots.save(fig, str(tmp_path / "h.png"))
