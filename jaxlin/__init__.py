"""jaxlin: the data-driven approach to image classification as pure JAX functions.

Modules (each imported on first use, so ``import jaxlin; jaxlin.knn.search``
works and TensorFlow is imported only when ``jaxlin.data`` is touched):

* bounds: exact kNN that computes fewer distances (lower bounds and a certificate).
* checkpoint: save / load a trained model with its preprocessing and class names.
* data: CIFAR-10 through tfds and local image folders as uint8 arrays (imports TensorFlow).
* distances: pairwise L1, squared L2 and cosine distances.
* errors: InputError, DataError, DivergenceError, ... (each may name its argument).
* features: HOG and hue-histogram features of uint8 images.
* files: atomic file writes with the user's umask, strict JSON.
* knn: exact k-nearest-neighbour search (one device or a mesh) and majority vote.
* linear: the linear classifier x @ W + b.
* losses: multiclass SVM and softmax cross-entropy per example; L2 penalty of any pytree.
* metrics: accuracy, confusion matrix, per-class accuracy.
* mlp: the two-layer network relu(x W1 + b1) W2 + b2.
* native: an exact int8 matrix product for x86-64 CPUs with AVX-512 VNNI (built at first use).
* plots: matplotlib figures (ax=None, return the Figure) and save(fig, path).
* selection: k-fold splits and cross-validation of kNN (the train/val split is in data).
* sharding: device mesh and host helpers for multi-device and multi-host runs.
* topk: exact, stable k-smallest selection.
* train: a pure train_step for any optax optimizer; the Trainer for (lr, reg) grids.

Import what you need, e.g. ``from jaxlin import knn, features``.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_MODULES = ("bounds", "checkpoint", "data", "distances", "errors", "features", "files", "knn",
            "linear", "losses", "metrics", "mlp", "native", "plots", "selection", "sharding",
            "topk", "train")
__all__ = list(_MODULES)


def __getattr__(name: str):
  if name in _MODULES:
    module = importlib.import_module(f"{__name__}.{name}")
    globals()[name] = module
    return module
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_MODULES))
