"""matplotlib figures written to PNG files (Agg backend; no display needed).

Every function takes arrays and a path, writes the figure atomically (a
temporary file renamed into place) and returns the path.
"""
from __future__ import annotations

import os
import tempfile
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".png", dir=os.path.dirname(os.path.abspath(path)))
  os.close(fd)
  try:
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
  finally:
    plt.close(fig)
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _as_image(x_HxWxC):
  """uint8 pixels -> [0, 1]; any other array (a template) min-max scaled to [0, 1]."""
  if np.asarray(x_HxWxC).dtype == np.uint8:
    return np.asarray(x_HxWxC) / 255.0
  x = np.asarray(x_HxWxC, np.float64)
  lo, hi = x.min(), x.max()
  return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def cross_validation(path: str, ks: Sequence[int], accuracies: Mapping[str, np.ndarray]) -> str:
  """Accuracy vs k: each fold a dot, the mean a line with std error bars, one curve per metric.

  accuracies: metric name -> (num_folds, len(ks)).
  """
  fig, ax = plt.subplots(figsize=(7, 4.5))
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
  return _save(fig, path)


def neighbors(path: str, query_images, query_labels, neighbor_images, neighbor_labels,
              class_names: Sequence[str]) -> str:
  """Each row: a query image, then its nearest training images (green = same class)."""
  q, k = np.asarray(neighbor_labels).shape
  fig, axes = plt.subplots(q, k + 1, figsize=(1.1 * (k + 1), 1.2 * q), squeeze=False,
                           layout="constrained")
  for r in range(q):
    ax = axes[r, 0]
    ax.imshow(_as_image(query_images[r]))
    ax.set_title(f"query: {class_names[query_labels[r]]}", fontsize=7)
    for c in range(k):
      ax = axes[r, c + 1]
      ax.imshow(_as_image(neighbor_images[r][c]))
      same = neighbor_labels[r][c] == query_labels[r]
      for s in ax.spines.values():
        s.set_color("green" if same else "red")
        s.set_linewidth(2)
      ax.set_title(class_names[neighbor_labels[r][c]], fontsize=6,
                   color="green" if same else "red")
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle("test images (left) and their nearest training images", fontsize=9)
  return _save(fig, path)


def confusion(path: str, confusion_CxC, class_names: Sequence[str], title: str = "") -> str:
  """Row-normalised confusion matrix with counts in the cells."""
  cm = np.asarray(confusion_CxC)
  norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  c = len(class_names)
  fig, ax = plt.subplots(figsize=(0.6 * c + 2.5, 0.6 * c + 2))
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
  return _save(fig, path)


def templates(path: str, w_DxC, image_shape: Sequence[int], class_names: Sequence[str],
              title: str = "learned templates") -> str:
  """Each class's weight column shown as an image (the lecture's visual viewpoint)."""
  w = np.asarray(w_DxC)
  c = w.shape[1]
  cols = min(c, 10)
  rows = -(-c // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 2.0 * rows), squeeze=False)
  for j, ax in enumerate(axes.ravel()):
    ax.set_xticks([])
    ax.set_yticks([])
    if j < c:
      ax.imshow(_as_image(w[:, j].reshape(image_shape)))
      ax.set_title(class_names[j], fontsize=8)
    else:
      ax.axis("off")
  fig.suptitle(title, fontsize=10)
  return _save(fig, path)


def curves(path: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
           xlabel: str = "step", ylabel: str = "", title: str = "", logy: bool = False,
           smooth: int = 1, highlight: str | None = None) -> str:
  """Line plot of named (x, y) series (loss, accuracy, ...).

  smooth > 1 draws the moving average over that many points (noisy minibatch
  losses); ``highlight`` names a series drawn bold, the others thin.
  """
  fig, ax = plt.subplots(figsize=(7, 4))
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
  return _save(fig, path)


def grid(path: str, values_AxB, a_values: Sequence[float], b_values: Sequence[float], *,
         a_label: str, b_label: str, title: str = "") -> str:
  """Heat map of a metric over a 2-D hyperparameter grid, values in the cells."""
  v = np.asarray(values_AxB, np.float64)
  fig, ax = plt.subplots(figsize=(1.1 * len(b_values) + 2.5, 0.7 * len(a_values) + 2))
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
  return _save(fig, path)
