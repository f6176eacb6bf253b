r"""Exact kNN search: jaxlin vs the course's numpy code, scikit-learn and faiss.

  python -m benchmarks.knn_speed --dataset=folder:/data/cifar10-jpeg --out=runs/bench_knn

For each metric, every method searches the same queries (Q test images drawn
at random, seeded; all of them when Q is at least the split's size) in the
same database (all training images) for the k nearest neighbours. Each method
runs in its own child process, so its peak resident memory is its own;
jaxlin runs first and its answer and time are the reference the others are
compared with (fraction of identical neighbour indices, and of identical
distances; how many times jaxlin is faster).
jaxlin's time is that of a second call on the same arrays (its programs are
compiled); the first call (compile + search) is reported beside it. Every
method's library is imported before its timer starts. The others' times are of
their one call, building their index included (faiss's ``add``, scikit-learn's
``fit``). ``how``: the way jaxlin's default method ("auto") searched, brute or
pruned (chosen per CPU, so it differs between CPU classes).
For L2 every method is also checked against an exact reference on a random
sample of queries (float64 products of the integer pixels, exact below
2**53; stable sort: ties by lower index). Prints and saves a table of times,
ratios and peak memory.
"""
from __future__ import annotations

import json
import os
import sys
import time

from absl import flags
import numpy as np

from benchmarks import common

_K = flags.DEFINE_integer("k", 100, "neighbours per query")
_L2_QUERIES = flags.DEFINE_integer("l2_queries", 10000, "queries for the L2 problem")
_L1_QUERIES = flags.DEFINE_integer("l1_queries", 10000, "queries for the L1 problem")
_METHODS = flags.DEFINE_list("methods", ["jaxlin", "faiss", "sklearn", "numpy"],
                             "methods to run (numpy: L2 only)")
_METRICS = flags.DEFINE_list("metrics", ["l2", "l1"], "metrics to run")
# Child-process mode (internal).
_EXACT_SAMPLE = flags.DEFINE_integer(
    "exact_sample", 300, "L2: queries checked against an exact float64 reference (0: none)")
_CHILD = flags.DEFINE_string("child", None, "internal: run one method and print JSON")
_METRIC = flags.DEFINE_string("metric", "l2", "internal")
_QUERIES = flags.DEFINE_integer("queries", 0, "internal")


def _exact_l2_neighbours(q, db, k):
  """(Q, k) exact L2 neighbours of integer rows, ties by lower index."""
  x = db.astype(np.float64)
  t = q.astype(np.float64)
  d2 = np.sum(t ** 2, axis=1)[:, None] + np.sum(x ** 2, axis=1)[None] - 2 * t @ x.T
  return np.argsort(d2, axis=1, kind="stable")[:, :k]


def _import(method) -> None:
  """The method's library, imported before any timer (an import is no part of a search)."""
  module = {"jaxlin": "jaxlin.knn", "faiss": "faiss", "sklearn": "sklearn.neighbors"}.get(method)
  if module:
    __import__(module)


def _search(method, metric, q, db, k):
  """(dists, idx, how) of the k nearest, by one method. Distances: L2 (not squared) and L1.
  how: the way jaxlin's "auto" searched (brute or pruned), else the method."""
  if method == "jaxlin":
    from jaxlin import knn  # pylint: disable=import-outside-toplevel
    d, i, stats = knn.search(q, db, k, metric=metric, return_stats=True)
    return np.asarray(d), np.asarray(i), stats["method"]
  if method == "faiss":
    import faiss  # pylint: disable=import-outside-toplevel
    index = (faiss.IndexFlatL2(db.shape[1]) if metric == "l2"
             else faiss.IndexFlat(db.shape[1], faiss.METRIC_L1))
    index.add(db.astype(np.float32))  # pylint: disable=no-value-for-parameter
    d, i = index.search(q.astype(np.float32), k)  # pylint: disable=no-value-for-parameter
    return (np.sqrt(np.maximum(d, 0)) if metric == "l2" else d), i, method
  if method == "sklearn":
    from sklearn.neighbors import KNeighborsClassifier  # pylint: disable=import-outside-toplevel
    clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute",
                               metric="euclidean" if metric == "l2" else "manhattan")
    clf.fit(db.astype(np.float32), np.zeros(len(db)))
    d, i = clf.kneighbors(q.astype(np.float32), k)
    return d, i, method
  if method == "numpy":  # the course's "no loops" code, in chunks of 1000 queries to fit memory
    if metric != "l2":
      raise ValueError("the numpy baseline is the course's L2 code")
    x, xs = db.astype(np.float32), np.sum(db.astype(np.float32) ** 2, axis=1)
    out_d, out_i = [], []
    for s in range(0, len(q), 1000):
      t = q[s:s + 1000].astype(np.float32)
      dists = np.sqrt(np.maximum(np.sum(t ** 2, axis=1)[:, None] + xs[None] - 2 * t @ x.T, 0))
      idx = np.argsort(dists, axis=1)[:, :k]
      out_i.append(idx)
      out_d.append(np.take_along_axis(dists, idx, 1))
    return np.concatenate(out_d), np.concatenate(out_i), method
  raise ValueError(f"unknown method {method}")


def child(method, metric, queries, k, out):
  paths = common.array_paths(out)
  test_x = np.load(paths["test_x"])
  db, q = np.load(paths["train_x"]), test_x[common.query_rows(queries, len(test_x))]
  first = None
  _import(method)
  if method == "jaxlin":  # the same call twice: the first compiles, the second is timed
    t0 = time.perf_counter()
    _search(method, metric, q, db, k)
    first = time.perf_counter() - t0
  t0 = time.perf_counter()
  d, i, how = _search(method, metric, q, db, k)
  seconds = time.perf_counter() - t0
  np.save(os.path.join(out, f"idx_{method}_{metric}.npy"), i)
  np.save(os.path.join(out, f"dist_{method}_{metric}.npy"), d)
  print(json.dumps({"seconds": seconds, "first_call_seconds": first, "how": how,
                    "peak_rss_mb": common.peak_rss_mb()}))


def main(argv):
  del argv
  if _CHILD.value:
    child(_CHILD.value, _METRIC.value, _QUERIES.value, _K.value, common.out_dir("knn_speed"))
    return
  methods = common.check_methods(_METHODS.value, ("jaxlin", "faiss", "sklearn", "numpy"))
  common.usage(methods[0] == "jaxlin", "--methods must start with jaxlin: its answer and time "
               f"are the reference of the others (got {','.join(methods)})")
  metrics = common.check_methods(_METRICS.value, ("l2", "l1"), "metrics")
  common.usage(_K.value >= 1, f"--k must be >= 1, got {_K.value}")
  common.usage(min(_L2_QUERIES.value, _L1_QUERIES.value) >= 1,
               "--l2_queries and --l1_queries must be >= 1")
  common.usage(_EXACT_SAMPLE.value >= 0, f"--exact_sample must be >= 0, got {_EXACT_SAMPLE.value}")
  for module, name in (("faiss", "faiss-cpu"), ("sklearn", "scikit-learn")):
    if module in methods:
      common.need(module, name, f" (or leave {module} out of --methods)")
  out, arrays = common.prepare("knn_speed")
  n_db, n_test = len(arrays["train_y"]), len(arrays["test_y"])
  common.check_k(_K.value, n_db)
  rows = []
  for metric in metrics:
    queries = min(_L2_QUERIES.value if metric == "l2" else _L1_QUERIES.value, n_test)
    ref_i = ref_d = ref_t = None
    metric_rows = []
    for method in methods:
      if method == "numpy" and metric != "l2":
        continue
      print(f"{metric}: {method}, {queries} queries x {n_db} ...", file=sys.stderr, flush=True)
      r = common.run_child("benchmarks.knn_speed", [
          f"--child={method}", f"--metric={metric}", f"--queries={queries}", f"--k={_K.value}",
          f"--out={out}"] + common.data_flags())
      i = np.load(os.path.join(out, f"idx_{method}_{metric}.npy"))
      d = np.load(os.path.join(out, f"dist_{method}_{metric}.npy"))
      if ref_i is None:
        ref_i, ref_d, ref_t = i, d, r["seconds"]
      row = {"metric": metric, "method": method, "how": r["how"], "queries": queries,
             "database": n_db,
             "k": _K.value, "seconds": r["seconds"],
             "first_call_seconds": ("" if r["first_call_seconds"] is None
                                    else r["first_call_seconds"]),
             "s_per_1000_queries": r["seconds"] / queries * 1000,
             "jaxlin_x_faster": r["seconds"] / ref_t, "peak_rss_mb": r["peak_rss_mb"],
             "same_idx_as_jaxlin": float(np.mean(i == ref_i)),
             "same_dist_as_jaxlin": float(np.mean(np.isclose(d, ref_d, rtol=1e-5, atol=1e-3))),
             "exact_on_sample": ""}
      metric_rows.append(row)
      print(json.dumps(row), file=sys.stderr, flush=True)
    # After the children (a child's peak memory must not include this reference).
    if metric == "l2" and _EXACT_SAMPLE.value and metric_rows:
      sample = np.sort(np.random.default_rng(0).permutation(queries)[:_EXACT_SAMPLE.value])
      searched = arrays["test_x"][common.query_rows(queries, n_test)]
      exact = _exact_l2_neighbours(searched[sample], arrays["train_x"], _K.value)
      for row in metric_rows:
        i = np.load(os.path.join(out, f"idx_{row['method']}_{metric}.npy"))
        row["exact_on_sample"] = float(np.mean(i[sample] == exact))
    rows += metric_rows
  common.report(out, "knn_speed", rows, [
      "metric", "method", "how", "queries", "k", "seconds", "first_call_seconds",
      "s_per_1000_queries",
      "jaxlin_x_faster",
      "peak_rss_mb", "same_idx_as_jaxlin", "same_dist_as_jaxlin", "exact_on_sample"],
                exact_sample=_EXACT_SAMPLE.value)
  # jaxlin's L2 on pixels is exact integer work (at most 16,512 features; wider rows take
  # float32, whose near-ties may swap): the others may differ in ties and rounding, it may not.
  from jaxlin import distances  # pylint: disable=import-outside-toplevel
  train_x = arrays["train_x"].reshape(len(arrays["train_x"]), -1)
  kernel = distances.kernel_for("l2", train_x.dtype, train_x.dtype, train_x.shape[1]).dtype
  common.fail_on([f"jaxlin's {r['metric']} neighbours match the exact ones for "
                  f"{r['exact_on_sample']!r} of the sample" for r in rows
                  if r["method"] == "jaxlin" and kernel == "int32"
                  and r["exact_on_sample"] not in ("", 1.0)])


if __name__ == "__main__":
  common.run(main)
