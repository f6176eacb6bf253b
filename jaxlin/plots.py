"""matplotlib figures for notebooks and for files.

Every function takes the data, draws into ``ax`` when one is given (a grid of
images fills that Axes' area with small panels), else into a new
``matplotlib.figure.Figure``, and returns the Figure. Nothing here touches
pyplot's global state or switches the backend: a notebook shows the returned
Figure, and ``save(fig, path)`` writes it as a PNG atomically (headless, no
display needed).
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib.figure
import matplotlib.ticker
import numpy as np

from jaxlin import files

__all__ = ["save", "cross_validation", "neighbors", "confusion", "templates", "curves", "grid"]


def save(fig: matplotlib.figure.Figure, path: str, *, dpi: int = 110) -> str:
  """Write ``fig`` as a PNG at ``path`` (folders made; atomic; the user's umask) -> path.

  The figure stays open and usable (e.g. shown again in a notebook).
  """
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return files.atomic_write(
      path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))


def _figure_and_ax(ax, figsize):
  if ax is not None:
    return ax.figure, ax
  fig = matplotlib.figure.Figure(figsize=figsize)
  return fig, fig.add_subplot()


def _panels(ax, rows: int, cols: int, figsize):
  """(figure, (rows, cols) array of Axes): a new figure's subplots, or insets filling ``ax``."""
  if ax is None:
    fig = matplotlib.figure.Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)
  ax.set_axis_off()
  gap = 0.04
  w, h = 1.0 / cols, 1.0 / rows
  axes = np.empty((rows, cols), dtype=object)
  for r in range(rows):
    for c in range(cols):
      axes[r, c] = ax.inset_axes([c * w + gap * w / 2, 1 - (r + 1) * h + gap * h / 2,
                                  w * (1 - gap), h * (1 - gap) - 0.15 * h])
  return ax.figure, axes


def _title(fig, ax, text: str, fontsize: float):
  if ax is None:
    fig.suptitle(text, fontsize=fontsize)
  else:
    ax.set_title(text, fontsize=fontsize, pad=12)


def _as_image(x_HxWxC):
  """uint8 pixels -> [0, 1]; any other array (a template) min-max scaled to [0, 1]."""
  if np.asarray(x_HxWxC).dtype == np.uint8:
    return np.asarray(x_HxWxC) / 255.0
  x = np.asarray(x_HxWxC, np.float64)
  lo, hi = x.min(), x.max()
  return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def cross_validation(ks: Sequence[int], accuracies: Mapping[str, np.ndarray], *,
                     ax=None) -> matplotlib.figure.Figure:
  """Accuracy vs k: each fold a dot, the mean a line with std error bars, one curve per metric.

  accuracies: metric name -> (num_folds, len(ks)).
  """
  fig, ax = _figure_and_ax(ax, (7, 4.5))
  ks = np.asarray(ks)
  for i, (name, acc) in enumerate(accuracies.items()):
    acc = np.asarray(acc)
    color = f"C{i}"
    for fold in acc:
      ax.scatter(ks, fold, s=12, color=color, alpha=0.5)
    ax.errorbar(ks, acc.mean(0), yerr=acc.std(0), color=color, capsize=3, marker="o",
                label=f"{name} (mean ± std over {acc.shape[0]} folds)")
  ax.set_xscale("log" if ks.max() / max(ks.min(), 1) > 20 else "linear")
  ax.set_xticks(ks)
  ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.set_xlabel("k")
  ax.set_ylabel("cross-validation accuracy")
  ax.set_title("k-nearest neighbours: choosing k by cross-validation")
  ax.grid(alpha=0.3)
  ax.legend()
  return fig


def neighbors(query_images, query_labels, neighbor_images, neighbor_labels,
              class_names: Sequence[str], *, ax=None) -> matplotlib.figure.Figure:
  """Each row: a query image (Q, H, W, C), then its K nearest training images (Q, K, H, W, C),
  titled with their labels (green = same class as the query, red = other)."""
  q, k = np.asarray(neighbor_labels).shape
  outer = ax
  fig, axes = _panels(ax, q, k + 1, (1.1 * (k + 1), 1.2 * q))
  for r in range(q):
    a = axes[r, 0]
    a.imshow(_as_image(query_images[r]))
    a.set_title(f"query: {class_names[query_labels[r]]}", fontsize=7)
    for c in range(k):
      a = axes[r, c + 1]
      a.imshow(_as_image(neighbor_images[r][c]))
      same = neighbor_labels[r][c] == query_labels[r]
      for s in a.spines.values():
        s.set_color("green" if same else "red")
        s.set_linewidth(2)
      a.set_title(class_names[neighbor_labels[r][c]], fontsize=6,
                  color="green" if same else "red")
  for a in axes.ravel():
    a.set_xticks([])
    a.set_yticks([])
  _title(fig, outer, "test images (left) and their nearest training images", 9)
  return fig


def confusion(confusion_CxC, class_names: Sequence[str], title: str = "", *,
              ax=None) -> matplotlib.figure.Figure:
  """Row-normalised confusion matrix (C, C) with counts in the cells."""
  cm = np.asarray(confusion_CxC)
  norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  c = len(class_names)
  fig, ax = _figure_and_ax(ax, (0.6 * c + 2.5, 0.6 * c + 2))
  im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
  for i in range(c):
    for j in range(c):
      ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
              color="white" if norm[i, j] > 0.5 else "black")
  ax.set_xticks(range(c), class_names, rotation=45, ha="right")
  ax.set_yticks(range(c), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  acc = np.trace(cm) / max(cm.sum(), 1)
  ax.set_title(f"{title} accuracy {acc:.1%}".strip())
  fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
  return fig


def templates(w_DxC, image_shape: Sequence[int], class_names: Sequence[str],
              title: str = "learned templates", *, ax=None) -> matplotlib.figure.Figure:
  """Each class's weight column (D = prod(image_shape)) shown as an image."""
  w = np.asarray(w_DxC)
  c = w.shape[1]
  cols = min(c, 10)
  rows = -(-c // cols)
  outer = ax
  fig, axes = _panels(ax, rows, cols, (1.8 * cols, 2.0 * rows))
  for j, a in enumerate(axes.ravel()):
    a.set_xticks([])
    a.set_yticks([])
    if j < c:
      a.imshow(_as_image(w[:, j].reshape(image_shape)))
      a.set_title(class_names[j], fontsize=8)
    else:
      a.axis("off")
  _title(fig, outer, title, 10)
  return fig


def curves(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
           xlabel: str = "step", ylabel: str = "", title: str = "", logy: bool = False,
           smooth: int = 1, highlight: str | None = None, ax=None) -> matplotlib.figure.Figure:
  """Line plot of named (x, y) series (loss, accuracy, ...).

  smooth > 1 draws the moving average over that many points (noisy minibatch
  losses); ``highlight`` names a series drawn bold, the others thin.
  """
  fig, ax = _figure_and_ax(ax, (7, 4))
  for name, (xs, ys) in series.items():
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    if smooth > 1 and len(ys) >= smooth:
      ys = np.convolve(ys, np.ones(smooth) / smooth, mode="valid")
      xs = xs[smooth - 1:]
    bold = highlight is None or name == highlight
    ax.plot(xs, ys, label=name, marker="." if len(xs) < 60 else None,
            linewidth=2.0 if bold else 0.8, alpha=1.0 if bold else 0.6)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  if logy:
    ax.set_yscale("log")
  ax.grid(alpha=0.3)
  ax.legend()
  return fig


def grid(values_AxB, a_values: Sequence[float], b_values: Sequence[float], *, a_label: str,
         b_label: str, title: str = "", ax=None) -> matplotlib.figure.Figure:
  """Heat map of a metric (A, B) over a 2-D hyperparameter grid, values in the cells."""
  v = np.asarray(values_AxB, np.float64)
  fig, ax = _figure_and_ax(ax, (1.1 * len(b_values) + 2.5, 0.7 * len(a_values) + 2))
  im = ax.imshow(v, cmap="viridis")
  for i in range(v.shape[0]):
    for j in range(v.shape[1]):
      ax.text(j, i, "nan" if np.isnan(v[i, j]) else f"{v[i, j]:.3f}", ha="center",
              va="center", fontsize=7, color="white")
  ax.set_xticks(range(len(b_values)), [f"{b:g}" for b in b_values], rotation=45)
  ax.set_yticks(range(len(a_values)), [f"{a:g}" for a in a_values])
  ax.set_xlabel(b_label)
  ax.set_ylabel(a_label)
  ax.set_title(title)
  fig.colorbar(im, ax=ax, fraction=0.046)
  return fig
