"""matplotlib figures for notebooks and for files.

Every function takes the data, draws into ``ax`` when one is given (a grid of
images becomes one framed, labelled image in that Axes), else into a new
``matplotlib.figure.Figure``, and returns the Figure. Nothing here touches
pyplot's global state or switches the backend: a notebook shows the returned
Figure, and ``save(fig, path)`` writes it atomically in the format its
extension names (.png, .pdf, .svg, ...; headless, no display needed).
Arrays of the wrong shape or dtype raise one InputError naming the argument.
"""
from __future__ import annotations

import errno
import os
from typing import Iterable, Mapping, Sequence

import matplotlib.colors
import matplotlib.font_manager
import matplotlib.patches
import matplotlib.figure
import matplotlib.ticker
import numpy as np

from jaxlin import _checks, files
from jaxlin.errors import InputError

__all__ = ["save", "cross_validation", "neighbors", "confusion", "templates", "curves", "grid"]


def save(fig: matplotlib.figure.Figure, path: str, *, dpi: float | None = None) -> str:
  """Write ``fig`` at ``path`` (folders made; atomic; the user's umask) -> path, in the
  format its extension names (.png, .pdf, .svg, .jpg, ...; no extension: PNG).

  dpi: default matplotlib's ``savefig.dpi`` where your matplotlibrc (or rcParams) sets a
  number, else 110; "figure": the figure's own. At most 5e8 pixels in all.

  The figure stays open and usable (e.g. shown again in a notebook). ``~`` in the path is
  the user's home.
  """
  try:
    path = os.path.expanduser(os.fsdecode(path))
  except TypeError:
    raise InputError(f"path must be a file path (str or os.PathLike), got "
                     f"{type(path).__name__}", argument="path") from None
  if not path:
    raise InputError("path is empty: name the file to write, e.g. 'figure.png'",
                     argument="path")
  ext = os.path.splitext(path)[1][1:].lower() or "png"
  supported = fig.canvas.get_supported_filetypes()
  if ext not in supported:
    raise InputError(f"cannot write a figure as .{ext} ({path}); use one of "
                     f"{', '.join('.' + e for e in sorted(supported))}", argument="path")
  given = dpi is not None
  if not given:
    rc = matplotlib.rcParams["savefig.dpi"]
    dpi = 110 if rc == "figure" else rc
  elif isinstance(dpi, str) and dpi == "figure":  # matplotlib's: the figure's own
    dpi = fig.dpi
  width, height = fig.get_size_inches()
  if (isinstance(dpi, bool) or not isinstance(dpi, (int, float, np.integer, np.floating))
      or not dpi >= 1 or width * height * dpi * dpi > _MAX_PIXELS):
    what = "dpi" if given else "matplotlib's savefig.dpi (rcParams)"
    raise InputError(f"{what} must be a number >= 1 (dots per inch; 100-300 are usual) that "
                     f"keeps this {width:g} x {height:g} inch figure under {_MAX_PIXELS:.0e} "
                     f"pixels, got {dpi!r}", argument="dpi")
  folder = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:  # e.g. a file where a folder of the path should be
    why = ("a file of that name is in the way" if e.errno in (errno.EEXIST, errno.ENOTDIR)
           else e.strerror)
    raise type(e)(e.errno, f"cannot make the folder {folder} for the figure: {why}",
                  path) from None
  return files.atomic_write(
      path, lambda f: fig.savefig(f, format=ext, dpi=dpi, bbox_inches="tight"))


_MAX_PIXELS = 5e8  # 2 GB of RGBA: a 7 x 4.5 inch figure up to 3,980 dpi


def _array(x, name: str, shape: str, ndims, *, kind: str = "numbers", sizes=None):
  """``x`` as a numpy array of one of the dimensions ``ndims``, or InputError naming
  ``name`` with the expected ``shape`` (e.g. "(Q, H, W, C)"); ``kind``: "numbers" (bools
  too), "floats" (None becomes NaN: a gap in a curve) or "labels" (integers); ``sizes``:
  {axis: size} the array must have."""
  try:
    a = np.asarray(x, np.float64) if kind == "floats" else np.asarray(x)
  except (TypeError, ValueError):  # ragged nested lists, strings
    a = np.asarray(x, dtype=object)
  if kind == "labels":
    ok = np.issubdtype(a.dtype, np.integer) or (a.size == 0 and a.dtype != object)
  else:
    ok = np.issubdtype(a.dtype, np.number) or a.dtype == bool
  if not ok or a.ndim not in ndims:
    what = {"labels": "integer labels"}.get(kind, "numbers")
    raise InputError(f"{name} must be an array of {what} of shape {shape}, got shape "
                     f"{a.shape} and dtype {a.dtype}", argument=name)
  for axis, size in (sizes or {}).items():
    if a.shape[axis] != size:
      raise InputError(f"{name} must have shape {shape}, got {a.shape}: {size} expected in "
                       f"axis {axis}", argument=name)
  return a


def _figure_and_ax(ax, figsize):
  if ax is not None:
    return ax.figure, ax
  fig = matplotlib.figure.Figure(figsize=figsize)
  return fig, fig.add_subplot()


def _check_labels(labels, class_names: Sequence[str], name: str) -> None:
  """Labels (the argument ``name``) must index ``class_names``."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
    raise InputError(f"{name} must lie in [0, {len(class_names)}) to name a class of "
                     f"class_names, found {labels.min() if labels.min() < 0 else labels.max()}",
                     argument=name)


def _image_grid(ax, images, labels, colors, *, cell_inches: float, title: str,
                title_size: float, label_size: float):
  """Draw ``images`` (rows, cols) of (H, W, 3) arrays in [0, 1] (None: an empty cell) as ONE
  image, each cell labelled above and framed in its colour (None: no frame), into ``ax`` or
  a new figure -> the figure. One Axes and one image instead of rows x cols Axes: drawn in
  a fraction of the time (a 8 x 11 grid: 0.3 s instead of 2 s)."""
  rows, cols = len(images), max((len(r) for r in images), default=0)
  if not rows or not cols or all(im is None for r in images for im in r):
    raise InputError("there are no images to draw: pass at least one", argument="images")
  h, w = next(im.shape[:2] for r in images for im in r if im is not None)
  frame = max(1, round(h / 16))
  lines = max((text.count("\n") + 1 for row in labels for text in row if text), default=1)
  top, left = round(0.3 * h * lines), round(0.1 * w)  # room for the label above each image
  cell_h, cell_w = h + 2 * frame + top, w + 2 * frame + round(0.2 * w)
  mosaic = np.ones((rows * cell_h, cols * cell_w, 3), np.float32)
  for r, row in enumerate(images):
    for c, im in enumerate(row):
      if im is None:
        continue
      y, x = r * cell_h + top, c * cell_w + left
      if colors[r][c] is not None:
        mosaic[y:y + h + 2 * frame, x:x + w + 2 * frame] = matplotlib.colors.to_rgb(colors[r][c])
      im = im[..., :3] if im.ndim == 3 else im[..., None]  # gray: broadcast to 3 channels
      mosaic[y + frame:y + frame + h, x + frame:x + frame + w] = im
  if ax is None:
    fig = matplotlib.figure.Figure(
        figsize=(cell_inches * cols, cell_inches * cols * mosaic.shape[0] / mosaic.shape[1] + 0.3))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.3 / fig.get_figheight()))
    fig.suptitle(title, fontsize=title_size)
  else:
    fig = ax.figure
    ax.set_title(title, fontsize=title_size, pad=12)
    box = ax.get_position().transformed(fig.transFigure).transformed(
        fig.dpi_scale_trans.inverted())  # the Axes in inches: labels shrink with the cells
    inches_per_cell = min(box.width / cols, box.height * cell_w / (rows * cell_h))
    label_size *= min(1.0, inches_per_cell / cell_inches)
  ax.imshow(mosaic, interpolation="nearest")
  ax.set_axis_off()
  for r, row in enumerate(labels):
    for c, text in enumerate(row):
      if text:
        ax.text(c * cell_w + left + frame + w / 2, r * cell_h + top - 1.5, text, ha="center",
                va="bottom", fontsize=label_size, color=colors[r][c] or "black", clip_on=False)
  return fig


def _check_channels(shape, name: str) -> None:
  """InputError unless images of ``shape`` ((H, W) or (H, W, C)) have 1, 3 or 4 channels,
  last: (3, 32, 32), channels first, drew a wrong picture without a word."""
  if len(shape) == 3 and shape[-1] not in (1, 3, 4):
    raise InputError(f"{name} gives images of shape {tuple(shape)}: {shape[-1]} channels; images "
                     "are (H, W) or (H, W, C) with C = 1, 3 or 4, channels last (channels-first "
                     "arrays: move the axis, e.g. np.moveaxis(x, -3, -1))", argument=name)


def _finite(x: np.ndarray, name: str, why: str = "there is no colour for them") -> None:
  if not np.all(np.isfinite(x)):
    raise InputError(f"{name} holds {np.size(x) - np.count_nonzero(np.isfinite(x))} NaN or "
                     f"infinite values: {why}", argument=name)


def _pixels(arrays: Mapping[str, np.ndarray]) -> list[np.ndarray]:
  """Images (the arrays, by argument name) -> values in [0, 1] for display: integers in
  [0, 255] (uint8 pixels) / 255, floats in [0, 1] as they are, each argument by its rule
  (uint8 queries beside float neighbours both show as pixels); where any argument fits
  neither (e.g. centred rows reshaped), all are min-max scaled together, so that they keep
  their brightness relative to each other. NaN or inf: InputError."""
  for name, a in arrays.items():
    _finite(a, name)
  arrays = {name: a.astype(np.uint8) * 255 if a.dtype == bool else a  # masks: black, white
            for name, a in arrays.items()}
  values = [np.asarray(a, np.float64) for a in arrays.values()]
  def divisor(a, v):  # of pixels, or None
    lo, hi = (v.min(), v.max()) if v.size else (0.0, 0.0)
    if np.issubdtype(a.dtype, np.integer):
      return 255.0 if 0 <= lo and hi <= 255 else None
    return 1.0 if 0 <= lo and hi <= 1 else None
  divisors = [divisor(a, v) for a, v in zip(arrays.values(), values)]
  if all(d is not None for d in divisors):
    return [v / d for d, v in zip(divisors, values)]
  lo = min((v.min() for v in values if v.size), default=0.0)
  hi = max((v.max() for v in values if v.size), default=0.0)
  return [_min_max(v, lo, hi) for v in values]


def _min_max(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """``x`` with [lo, hi] taken to [0, 1] (all 0 where lo == hi); scaled by the largest
  magnitude first, so that hi - lo cannot overflow (values near 1e308)."""
  if not hi > lo:
    return np.zeros_like(x)
  scale = max(abs(lo), abs(hi))
  x, lo, hi = x / scale, lo / scale, hi / scale
  return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def _template(x: np.ndarray) -> np.ndarray:
  """A weight template -> [0, 1], min-max scaled on its own (as the course shows them)."""
  x = np.asarray(x, np.float64)
  return _min_max(x, x.min(), x.max())


def cross_validation(ks: Sequence[int], accuracies: Mapping[str, np.ndarray], *,
                     chosen: tuple[str, float] | None = None,
                     ax=None) -> matplotlib.figure.Figure:
  """Accuracy vs k, one curve per metric: over several folds each fold a dot and the mean a
  line with std error bars; over one (a validation split) its accuracy.

  accuracies: metric name -> (num_folds, len(ks)); num_folds = 1: a validation split.
  chosen: the (metric, k) chosen, ringed and named in the legend.
  """
  ks = _array(np.atleast_1d(ks) if np.ndim(ks) == 0 else ks, "ks", "(K,)", (1,))
  if not isinstance(accuracies, Mapping):
    raise InputError(f"accuracies must be a dict {{metric name: (num_folds, K) array}}, got "
                     f"{type(accuracies).__name__}", argument="accuracies")
  if len(ks) and (not np.all(np.isfinite(ks)) or ks.min() < 1):
    raise InputError(f"ks must be numbers >= 1 (the k of k-nearest neighbours), got "
                     f"{ks.tolist()}", argument="ks")
  if len(np.unique(ks)) < len(ks):
    raise InputError(f"ks holds a k twice ({ks.tolist()}): one column of accuracies per k",
                     argument="ks")
  # One k: cross_validate_knn's (num_folds,) accuracies of an int k are one column.
  accuracies = {name: _array(np.reshape(acc, (-1, 1)) if len(ks) == 1 and np.ndim(acc) == 1
                             else acc, f"accuracies[{name!r}]", f"(num_folds, {len(ks)})",
                             (2,), sizes={1: len(ks)}) for name, acc in accuracies.items()}
  if not len(ks) or not accuracies:
    raise InputError("there is nothing to draw: pass at least one k and one metric",
                     argument="accuracies")
  for name, acc in accuracies.items():
    _finite(acc, f"accuracies[{name!r}]", "a mean over folds with one would vanish from "
            "the figure, under a legend that names it")
  order = np.argsort(ks, kind="stable")  # the line runs along k, whatever order ks came in
  ks, accuracies = ks[order], {name: acc[:, order] for name, acc in accuracies.items()}
  if chosen is not None:
    chosen_at = _chosen_point(chosen, ks, accuracies)
  fig, ax = _figure_and_ax(ax, (7, 4.5))
  handles = []  # the legend's, in this order
  for i, (name, acc) in enumerate(accuracies.items()):
    color = f"C{i}"
    if acc.shape[0] == 1:  # a validation split: one accuracy per k
      handles += ax.plot(ks, acc[0], color=color, marker="o", label=name)
      continue
    for fold in acc:
      ax.scatter(ks, fold, s=12, color=color, alpha=0.5)
    handles.append(ax.errorbar(ks, acc.mean(0), yerr=acc.std(0), color=color, capsize=3,
                               marker="o", label=f"{name} (mean ± std over {acc.shape[0]} folds)"))
  if chosen is not None:
    metric, j = chosen_at
    mean = accuracies[metric][:, j].mean()
    handles.append(ax.scatter([ks[j]], [mean], s=260, facecolors="none", edgecolors="black",
                              linewidths=1.8, zorder=5,
                              label=f"chosen: {metric}, k={_tick(ks[j])} ({mean:.3f})"))
  ax.set_xscale("log" if ks.max() / max(ks.min(), 1) > 20 else "linear")
  ax.set_xticks(ks, _spaced_labels(ax, ks))
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  validation = all(acc.shape[0] == 1 for acc in accuracies.values())
  ax.set_xlabel("k")
  ax.set_ylabel("validation accuracy" if validation else "cross-validation accuracy")
  ax.set_title("k-nearest neighbours: choosing k on a validation split" if validation
               else "k-nearest neighbours: choosing k by cross-validation")
  ax.grid(alpha=0.3)
  ax.legend(handles=handles)
  return fig


def _chosen_point(chosen, ks: np.ndarray, accuracies: Mapping[str, np.ndarray]):
  """``chosen`` (metric, k) -> (metric, index of k in ``ks``), or InputError."""
  try:
    metric, k = chosen
  except (TypeError, ValueError):
    metric = k = None
  at = np.flatnonzero(ks == k) if _checks.is_real_number(k) else []
  if not isinstance(metric, str) or metric not in accuracies or not len(at):
    raise InputError(f"chosen must be a (metric, k) pair of those drawn (metrics "
                     f"{', '.join(accuracies)}; k {', '.join(_tick(v) for v in ks)}), "
                     f"got {chosen!r}", argument="chosen")
  return metric, int(at[0])


def _spaced_labels(ax, values: np.ndarray) -> list[str]:
  """Labels of x ticks at ``values``: each as %g, or '' where it would touch the label
  before it (k = 10 and 12 on a log axis)."""
  fig = ax.figure
  lo, hi = ax.get_xlim()
  scale = np.log10 if ax.get_xscale() == "log" else np.asarray
  width = ax.get_position().width * fig.get_figwidth() * 72  # the axis, in points
  at = (scale(np.asarray(values, np.float64)) - scale(lo)) / (scale(hi) - scale(lo)) * width
  size = matplotlib.font_manager.FontProperties(
      size=matplotlib.rcParams["xtick.labelsize"]).get_size_in_points()
  labels, last = [], None  # last: (position, half width) of the last label kept
  for x, v in zip(at, values):
    text, half = _tick(v), 0.32 * size * len(_tick(v))  # a digit: about 0.64 em
    if last is not None and x - last[0] < last[1] + half + 0.5 * size:
      labels.append("")
    else:
      labels.append(text)
      last = (x, half)
  return labels


def neighbors(query_images, query_labels, neighbor_images, neighbor_labels,
              class_names: Sequence[str], *, predicted_labels=None, title: str | None = None,
              ax=None) -> matplotlib.figure.Figure:
  """Each row: a query image (Q, H, W, C), then its K nearest training images (Q, K, H, W, C),
  titled with their labels (green = same class as the query, red = other).

  Pixels: integers in [0, 255] (uint8) or floats in [0, 1]; other values (centred or
  scaled rows) are min-max scaled over all the images together. NaN or inf: InputError.

  predicted_labels: (Q,) the class predicted for each query, named under its true one
    (green where right, red where wrong).
  title: the figure's title (default: what it shows).
  """
  neighbor_labels = _array(neighbor_labels, "neighbor_labels", "(Q, K)", (2,), kind="labels")
  q, k = neighbor_labels.shape
  query_labels = _array(query_labels, "query_labels", f"(Q,) = ({q},)", (1,), kind="labels",
                        sizes={0: q})
  query_images = _array(query_images, "query_images", f"(Q, H, W) or (Q, H, W, C), Q = {q} "
                        "(reshape flattened rows to images)", (3, 4), sizes={0: q})
  neighbor_images = _array(neighbor_images, "neighbor_images", f"({q}, {k}) + "
                           f"{query_images.shape[1:]} (Q, K and the query images' shape)",
                           (query_images.ndim + 1,), sizes={0: q, 1: k})
  _check_channels(query_images.shape[1:], "query_images")
  if neighbor_images.shape[2:] != query_images.shape[1:]:
    raise InputError(f"neighbor_images has images of shape {neighbor_images.shape[2:]}, the "
                     f"queries {query_images.shape[1:]}: both must be the same",
                     argument="neighbor_images")
  if predicted_labels is not None:
    predicted_labels = _array(predicted_labels, "predicted_labels", f"(Q,) = ({q},)", (1,),
                              kind="labels", sizes={0: q})
    _check_labels(predicted_labels, class_names, "predicted_labels")
  _check_labels(query_labels, class_names, "query_labels")
  _check_labels(neighbor_labels, class_names, "neighbor_labels")
  query_images, neighbor_images = _pixels({"query_images": query_images,
                                           "neighbor_images": neighbor_images})
  images, labels, colors = [], [], []
  for r in range(q):
    same = [neighbor_labels[r][c] == query_labels[r] for c in range(k)]
    images.append([query_images[r]] + [neighbor_images[r][c] for c in range(k)])
    query = f"query: {class_names[query_labels[r]]}"
    if predicted_labels is not None:
      query += f"\npredicted: {class_names[predicted_labels[r]]}"
    labels.append([query]
                  + [class_names[neighbor_labels[r][c]] for c in range(k)])
    right = None if predicted_labels is None else (  # the query's own label: right or wrong
        "green" if predicted_labels[r] == query_labels[r] else "red")
    colors.append([right] + ["green" if ok else "red" for ok in same])
  return _image_grid(ax, images, labels, colors, cell_inches=1.1,
                     title=("test images (left) and their nearest training images"
                            if title is None else title),
                     title_size=9, label_size=6)


_MAX_CELL_TEXT, _MAX_TICK_NAMES = 30, 60  # classes; beyond, the cells or names would not read


def confusion(confusion_CxC, class_names: Sequence[str], title: str = "", *,
              ax=None) -> matplotlib.figure.Figure:
  """Row-normalised confusion matrix (C, C): the colour is the fraction of the true class
  (row), the cells' text the counts (counts, or any non-negative weights: a matrix already
  normalised is normalised by row again).

  Up to 30 classes the cells show their counts, up to 60 the axes name the classes; the
  figure stays at most about 20 inches square however many classes there are.
  """
  c = len(class_names)
  cm = _array(confusion_CxC, "confusion_CxC", f"(C, C) = ({c}, {c}), one row and column per "
              "class name", (2,), sizes={0: c, 1: c})
  if not c:
    raise InputError("class_names is empty: there is no class to draw", argument="class_names")
  cm = cm.astype(np.float64) if cm.dtype == bool else cm
  _finite(cm, "confusion_CxC")
  if cm.min() < 0:
    raise InputError(f"confusion_CxC holds negative counts (down to {cm.min():g})",
                     argument="confusion_CxC")
  wide = cm.astype(np.float64)  # sums: float16 rows of 40,000 + 30,000 overflowed to inf
  if wide.max() > 0:  # and float64 ones near 1e308: fractions and accuracy are scale-free
    wide = wide / wide.max()
  totals = wide.sum(1, keepdims=True)
  norm = np.divide(wide, totals, out=np.zeros(cm.shape), where=totals > 0)
  side = min(0.6 * c, 18.0)
  fig, ax = _figure_and_ax(ax, (side + 2.5, side + 2))
  im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
  if c <= _MAX_CELL_TEXT:
    for i in range(c):
      for j in range(c):
        ax.text(j, i, f"{cm[i, j]:g}", ha="center", va="center", fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black")
  if c <= _MAX_TICK_NAMES:
    ax.set_xticks(range(c), class_names, rotation=45, ha="right")
    ax.set_yticks(range(c), class_names)
  ax.set_xlabel("predicted" if c <= _MAX_TICK_NAMES else f"predicted ({c} classes in order)")
  ax.set_ylabel("true" if c <= _MAX_TICK_NAMES else f"true ({c} classes in order)")
  ax.set_title(f"{title} accuracy {np.trace(wide) / wide.sum():.1%}".strip() if wide.sum() > 0
               else f"{title} (no examples)".strip())
  fig.colorbar(im, ax=ax, fraction=0.046, label="colour: fraction of the true class"
               + ("; cells: counts" if c <= _MAX_CELL_TEXT else ""))
  return fig


def templates(w_DxC, image_shape: Sequence[int], class_names: Sequence[str],
              title: str = "learned templates", *, ax=None) -> matplotlib.figure.Figure:
  """Each class's weight column (D = prod(image_shape)) shown as an image, min-max scaled on
  its own (NaN or inf weights: InputError)."""
  w = _array(w_DxC, "w_DxC", "(D, C)", (2,))
  _finite(w, "w_DxC")
  c = w.shape[1]
  if not c:
    raise InputError("w_DxC has no columns: there is no template to draw", argument="w_DxC")
  dims = np.atleast_1d(np.asarray(image_shape, dtype=object)).ravel()
  if not all(isinstance(n, (int, np.integer)) or (np.ndim(n) == 0 and hasattr(n, "dtype") and
                                                  np.issubdtype(n.dtype, np.integer))
             for n in dims) or min(dims, default=0) < 1 or not 2 <= len(dims) <= 3 or (
                 int(np.prod(dims)) != w.shape[0]):
    raise InputError(f"image_shape {image_shape!r} must be (H, W) or (H, W, C), positive ints "
                     f"whose product is the {w.shape[0]} rows (D) of w_DxC",
                     argument="image_shape")
  image_shape = tuple(int(n) for n in dims)
  _check_channels(image_shape, "image_shape")
  if len(class_names) != c:
    raise InputError(f"class_names has {len(class_names)} names for {c} templates (columns "
                     "of w_DxC): pass one name per column", argument="class_names")
  cols = min(c, 10)
  rows = -(-c // cols)
  cells = [_template(w[:, j].reshape(image_shape)) for j in range(c)] + [None] * (rows * cols - c)
  names = list(class_names) + [""] * (rows * cols - c)
  def grid_of(items):
    return [items[r * cols:(r + 1) * cols] for r in range(rows)]
  return _image_grid(ax, grid_of(cells), grid_of(names), [[None] * cols] * rows,
                     cell_inches=1.6, title=title, title_size=10, label_size=8)


def curves(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
           xlabel: str = "step", ylabel: str = "", title: str = "", logy: bool = False,
           smooth: int = 1, highlight: str | None = None, outliers: Sequence[str] = (),
           legend: str = "right", ax=None) -> matplotlib.figure.Figure:
  """Line plot of named (x, y) series (loss, accuracy, ...).

  Each series is drawn in increasing x; NaN and infinite values are gaps.
  smooth > 1 draws the moving average over that many points (noisy minibatch
  losses; a series with fewer points is drawn as it is, and its legend says so);
  ``highlight`` names a series drawn bold and on top, the others thin.
  logy: a log y axis, "(log scale)" in its label, numbers as %g (0.7, 2, 1e+06). Where a
  series that sets the range holds zeros or negative values (a hinge loss that reaches
  0), the axis is symmetric-log instead: logarithmic beyond the smallest nonzero
  magnitude (at most 12 decades below the largest), linear within it, and its label
  says so.
  outliers: names of series (diverged runs) that do not set the y range: drawn dashed,
  cut off at the range of the others; the legend says "(off the scale)" of one with no
  point inside it.
  legend: "right" (outside the axes, covering no curve), "best" (inside) or "none".
  """
  smooth = _checks.int_at_least(smooth, "smooth", 1)
  if not isinstance(series, Mapping):
    raise InputError(f"series must be a dict {{name: (x, y)}}, got {type(series).__name__}",
                     argument="series")
  if legend not in ("right", "best", "none"):
    raise InputError(f"legend must be 'right', 'best' or 'none', got {legend!r}",
                     argument="legend")
  outliers = [outliers] if isinstance(outliers, str) else list(outliers)
  unknown = [name for name in outliers if name not in series]
  if unknown:
    raise InputError(f"outliers must name series, got {', '.join(map(repr, unknown))} (series: "
                     f"{', '.join(map(repr, series))})", argument="outliers")
  if highlight is not None and highlight not in series:
    raise InputError(f"highlight must name a series, got {highlight!r} (series: "
                     f"{', '.join(map(repr, series))})", argument="highlight")
  data, labels = {}, {}  # labels: the legend's, by series name
  for name, pair in series.items():
    if not isinstance(pair, (str, bytes)) and isinstance(pair, Iterable) and not hasattr(
        pair, "__len__"):
      pair = tuple(pair)  # a zip, a generator
    if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
      raise InputError(f"series[{name!r}] must be an (x, y) pair of equal-length arrays, "
                       f"got {type(pair).__name__}"
                       + (f" of length {len(pair)}" if hasattr(pair, "__len__") else ""),
                       argument="series")
    xs, ys = pair
    xs = _array(xs, f"series[{name!r}] x", "(n,)", (1,), kind="floats")
    ys = _array(ys, f"series[{name!r}] y", f"({len(xs)},), as its x", (1,), kind="floats",
                sizes={0: len(xs)})
    order = np.argsort(xs, kind="stable")  # a line along x, whatever order the points came in
    xs, ys = xs[order], ys[order]
    labels[name] = name
    if smooth > 1 and len(ys) >= smooth:
      ys = np.convolve(ys, np.ones(smooth) / smooth, mode="valid")
      xs = xs[smooth - 1:]
    elif smooth > 1:
      labels[name] += f" (not smoothed: {len(ys)} points)"
    data[name] = xs, ys
  if not data:
    raise InputError("series is empty: there is nothing to draw", argument="series")
  fig, ax = _figure_and_ax(ax, (7, 4))
  finite = [ys[np.isfinite(ys)] for name, (_, ys) in data.items() if name not in outliers]
  linear_below = None  # symlog's linear range, where a series that sets the range has y <= 0
  if logy and any(np.any(ys <= 0) for ys in finite):
    values = np.abs(np.concatenate(finite))
    positive = values[values > 0]
    # linear within the smallest magnitude drawn, at most 12 decades below the largest
    linear_below = (float(max(positive.min(), positive.max() * 1e-12)) if positive.size
                    else 1.0)
    ax.set_yscale("symlog", linthresh=linear_below)
  elif logy:
    ax.set_yscale("log")
  lines = {}
  def draw(name):
    xs, ys = data[name]
    bold = highlight is None or name == highlight
    lines[name], = ax.plot(xs, ys, label=labels[name], marker="." if len(xs) < 60 else None,
                           linewidth=2.0 if bold else 0.8, alpha=1.0 if bold else 0.6,
                           zorder=3 if name == highlight else 2,
                           linestyle="--" if name in outliers else "-")
  for name in data:
    if name not in outliers:
      draw(name)
  shown = [ys[ys > 0] if logy and linear_below is None else ys for ys in finite]
  limits = ax.get_ylim() if any(len(ys) for ys in shown) else None  # the others' range
  for name in outliers:
    draw(name)
  if outliers and limits is not None:
    ax.set_ylim(limits)
    lo, hi = min(limits), max(limits)
    for name in outliers:
      ys = data[name][1]
      if not np.any(np.isfinite(ys) & (ys >= lo) & (ys <= hi)) and "off the scale" not in name:
        labels[name] += " (off the scale)"
  if data and all(np.all(xs == np.round(xs)) for xs, _ in data.values()):
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # steps, epochs
  ax.set_xlabel(xlabel)
  if linear_below is not None:
    ax.set_ylabel(f"{ylabel} (log scale beyond ±{linear_below:.3g}, linear within)".strip())
  else:
    ax.set_ylabel(f"{ylabel} (log scale)".strip() if logy else ylabel)
  ax.set_title(title)
  if logy and linear_below is None:
    _log_ticks(ax.yaxis, *ax.get_ylim())
  ax.grid(alpha=0.3)
  if legend == "right":
    ax.legend([lines[n] for n in data], [labels[n] for n in data], loc="upper left",
              bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small")
  elif legend == "best":
    ax.legend([lines[n] for n in data], [labels[n] for n in data])
  return fig


def _log_ticks(axis, lo: float, hi: float) -> None:
  """Labelled ticks on a log ``axis`` from ``lo`` to ``hi``: 1-9 x 10^n over a decade or
  less, 1, 2, 5 x 10^n over three or less, 10^n beyond; numbers as %g."""
  decades = np.log10(hi / lo) if lo > 0 and hi > lo else np.inf
  subs = (np.arange(1.0, 10.0) if decades <= 1 else (1.0, 2.0, 5.0) if decades <= 3
          else (1.0,))
  axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=subs, numticks=30))
  axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  axis.set_minor_locator(matplotlib.ticker.NullLocator() if len(subs) == 9 else
                         matplotlib.ticker.LogLocator(base=10, subs="auto", numticks=30))
  axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _tick(value) -> str:
  """A grid label: numbers as %g (1e-05, 0.001), anything else (an optimizer's name) as text."""
  if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
    return f"{value:g}"
  return str(value)


def _cell_text(v: float) -> str:
  """A grid cell's number: 3 decimals (0.412) from 0.001 to 10,000, else 3 significant
  digits in scientific form (1.23e+10, 4.5e-05), never a 300-digit string or a "0.000"."""
  if v == 0 or not np.isfinite(v) or 1e-3 <= abs(v) < 1e4:
    return f"{v:.3f}" if np.isfinite(v) else f"{v}"
  return f"{v:.3g}"


def grid(values_AxB, a_values: Sequence[float], b_values: Sequence[float], *, a_label: str,
         b_label: str, title: str = "", value_label: str = "", nan_text: str = "nan",
         chosen: tuple[int, int] | None = None, ax=None) -> matplotlib.figure.Figure:
  """Heat map of a metric (A, B) over a 2-D hyperparameter grid, values in the cells (black or
  white, whichever reads on the cell's colour).

  value_label: what the values are, the colour bar's label (e.g. "validation accuracy").
  nan_text: the text of NaN cells (e.g. "diverged"), drawn grey.
  chosen: (a index, b index) of the cell framed in red and marked "chosen".
  """
  values = {}
  for name, given in (("a_values", a_values), ("b_values", b_values)):
    if isinstance(given, (str, bytes)) or not isinstance(given, Iterable):
      raise InputError(f"{name} must be a list of the grid's values (its labels), got "
                       f"{given!r}", argument=name)
    values[name] = list(given)  # a tuple, range, dict's keys, array
  a_values, b_values = values["a_values"], values["b_values"]
  v = _array(values_AxB, "values_AxB", f"(len(a_values), len(b_values)) = ({len(a_values)}, "
             f"{len(b_values)})", (2,), sizes={0: len(a_values), 1: len(b_values)}).astype(
                 np.float64)
  if not isinstance(nan_text, str):
    raise InputError(f"nan_text must be a string, got {nan_text!r}", argument="nan_text")
  if not v.size:
    raise InputError("values_AxB is empty: there is nothing to draw", argument="values_AxB")
  if chosen is not None:
    try:
      i, j = (int(n) if _checks.is_real_number(n, integer=True) else None for n in chosen)
    except (TypeError, ValueError):
      i = j = None
    if i is None or j is None or not (0 <= i < v.shape[0] and 0 <= j < v.shape[1]):
      raise InputError(f"chosen must be the (row, column) indices of a cell of the "
                       f"{v.shape[0]} x {v.shape[1]} grid, got {chosen!r}", argument="chosen")
    chosen = i, j
  fig, ax = _figure_and_ax(ax, (1.1 * len(b_values) + 2.5, 0.7 * len(a_values) + 2))
  im = ax.imshow(v, cmap=matplotlib.colormaps["viridis"].with_extremes(bad="0.8"))
  im.autoscale_None()
  for i in range(v.shape[0]):
    for j in range(v.shape[1]):
      text = nan_text if np.isnan(v[i, j]) else _cell_text(v[i, j])
      if (i, j) == chosen:
        text += "\nchosen"
      r, g, b, _ = (im.cmap.get_bad() if not np.isfinite(v[i, j])  # NaN and inf: grey
                    else im.cmap(im.norm(v[i, j])))
      ax.text(j, i, text, ha="center", va="center", fontsize=7,
              color="black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "white")
  if chosen is not None:
    ax.add_patch(matplotlib.patches.Rectangle(
        (chosen[1] - 0.5, chosen[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5,
        clip_on=False, zorder=3))
  ax.set_xticks(range(len(b_values)), [_tick(b) for b in b_values], rotation=45)
  ax.set_yticks(range(len(a_values)), [_tick(a) for a in a_values])
  ax.set_xlabel(b_label)
  ax.set_ylabel(a_label)
  ax.set_title(title)
  fig.colorbar(im, ax=ax, fraction=0.046, label=value_label)
  return fig
