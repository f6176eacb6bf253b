"""jaxlin: the data-driven approach to image classification as pure JAX functions.

Modules: data (datasets), distances, knn, selection, metrics, linear, losses,
train, checkpoint, plots. Import what you need, e.g.
``from jaxlin import knn, distances``.
"""
__version__ = "0.1.0"
