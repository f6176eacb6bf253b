r"""Exact kNN below the brute-force floor: pruned search vs brute force vs faiss.

  python -m benchmarks.pruned_speed --dataset=folder:/data/cifar10-jpeg --out=runs/bench_pruned

L2: the first ``--l2_queries`` test images; L1: ``--l1_queries`` random test
images (seeded); all training images as the database; k nearest. Methods:

* pruned -- ``jaxlin.bounds``: index built once (time reported apart and
  included), then the cascade (L2: certified rounds, the bound on the images'
  DCT, or with ``--l2_basis=pca`` on principal components; L1: thresholds);
* brute -- ``jaxlin.knn.search(method="brute")`` (until 2026-12-04 the default
  method, "auto", which may take the cascade: see WORKSPACE.md);
* faiss -- IndexFlatL2 / IndexFlat(METRIC_L1) on float32 (its build: the
  rows converted to float32 and added).

Columns: ``build_s`` (the pruned index's build, its compilation included;
faiss's ``add``), ``search_s`` (a compiled search; the pruned fallback's
prepared database emptied before it, as at a first search), ``total_s`` =
build + search for every method, ``warmup_s`` (the first, compiling search).
Ratios to faiss: ``faiss_over_search`` (search against search),
``faiss_search_over_total`` (faiss's search alone against build + search:
the strict ratio, and the one WORKSPACE.md's figures before 2026-12-06 give as
"faiss / total"), ``faiss_total_over_total`` (build + search against build +
search).

Each method runs in its own child process (its peak resident memory is its
own). jaxlin's methods run the same call twice: the first compiles its programs
(its time is reported as the warm-up), the second is timed. (Until 2026-12-04 the
warm-up searched the first 1,024 queries only; with query tiles that depend on the
number of queries, as on CPUs with AMX, the timed call then compiled again.) The
pruned answer must equal brute force exactly (indices and float32 distances); faiss is
compared for information. ``--full`` runs all test images for L1 too, ``--k=100`` the
larger k. ``--rounds=3`` runs every method three times, taking turns (a machine that
slows for a while slows every method): times are the rounds' medians, the ratios to
faiss the medians of each round's ratio (each round's ratio to the total in the table).

Measured (2 cores of an AMD EPYC, Zen 4: AVX-512 VNNI, no AMX; one run each;
WORKSPACE.md has the commands): answers equal to brute force (indices and
distances, at k=10 and at k=100 on all 10,000 queries, 2026-12-02). L2, 10,000
queries, k=10 (2026-12-03): pruned 3.2 s index build + 5.8 s search (92 % of the
queries certified in the first round, 7 % in the second, 1 % by brute force),
faiss 19.2 s; brute force 11.6 s on 2026-12-02 (the "brute" child used
``method="auto"`` until 2026-12-04, which may have taken the cascade there). L1,
1,000 random queries (2026-12-02): the certified L1 cascade of that day 0.7 s + 5.2 s,
brute force 3.3 s, faiss 16.2 s; brute force has since become 1.6x faster (its tiles,
2026-12-04). On an Intel Xeon with AMX (2026-12-04): L2 brute force 1.68-2.01 s against
faiss's 9.0-10.4 s (5.1-5.6x), the cascade 5.3-6.1 s with its build (5.0 s since
the bound on the images' DCT, 2026-12-05: a 1.5 s build against 2.4 s); L1 by the
threshold cascade (since 2026-12-04) 0.27 s build + 0.39 s search against 23.0 s for
faiss (34x with the build), brute force 2.39 s. In turns (``--rounds=3``, 2026-12-05):
L2 brute force 5.32x faiss; L1 with the build 29.5-30.7x at the CPU's full speed,
17-19x in its slow minutes. On the AMD EPYC (2026-12-05, night), the L2 bound's product in
bfloat16: the cascade 1.18 s build + 1.93 s search against faiss's 15.7 s, 5.0x (five
rounds, 4.67-5.47x); on 2026-12-06, its CPU programs compiled with XLA's classic emitters,
0.99 s + 1.80 s against 16.0 s, 5.74x (five rounds, 5.40-6.08x).
"""
from __future__ import annotations

import json
import os
import sys
import time

from absl import flags
import numpy as np

from benchmarks import common

_K = flags.DEFINE_integer("k", 10, "neighbours per query")
_L2_QUERIES = flags.DEFINE_integer("l2_queries", 10000, "queries for L2 (first test images)")
_L1_QUERIES = flags.DEFINE_integer("l1_queries", 1000, "random test queries for L1")
_FULL = flags.DEFINE_bool("full", False, "all test images as queries for both metrics")
_METHODS = flags.DEFINE_list("methods", ["pruned", "brute", "faiss"], "methods to run")
_METRICS = flags.DEFINE_list("metrics", ["l2", "l1"], "metrics to run")
_CANDIDATES = flags.DEFINE_integer("candidates", 0, "pruned: first-round candidates (0: default)")
_L2_BASIS = flags.DEFINE_enum("l2_basis", "dct", ["dct", "pca"], "pruned L2: the bound's "
                              "basis: dct (the images' DCT, build_index given image_shape) or "
                              "pca (principal components, as for rows that are not images)")
_ROUNDS = flags.DEFINE_integer(
    "rounds", 1, "rounds in which the methods take turns; times are the rounds' medians, the "
    "ratios to faiss the medians of each round's ratio")
_CHILD = flags.DEFINE_string("child", None, "internal: run one method and print JSON")
_METRIC = flags.DEFINE_string("metric", "l2", "internal")


def _queries(metric, test_x):
  if _FULL.value:
    return np.arange(len(test_x))
  if metric == "l2":
    return np.arange(min(_L2_QUERIES.value, len(test_x)))
  rng = np.random.default_rng(0)
  return np.sort(rng.permutation(len(test_x))[:_L1_QUERIES.value])


def child(method, metric, k, out):
  paths = common.array_paths(out)
  db = np.load(paths["train_x"])
  test_x = np.load(paths["test_x"])
  q = test_x[_queries(metric, test_x)]
  result = {"build_seconds": 0.0, "stats": ""}
  if method == "faiss":
    import faiss  # pylint: disable=import-outside-toplevel
    t0 = time.perf_counter()
    index = (faiss.IndexFlatL2(db.shape[1]) if metric == "l2"
             else faiss.IndexFlat(db.shape[1], faiss.METRIC_L1))
    index.add(db.astype(np.float32))  # pylint: disable=no-value-for-parameter
    result["build_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    d, i = index.search(q.astype(np.float32), k)  # pylint: disable=no-value-for-parameter
    result["seconds"] = time.perf_counter() - t0
    d = np.sqrt(np.maximum(d, 0)) if metric == "l2" else d
  else:
    import jax  # pylint: disable=import-outside-toplevel
    from jaxlin import bounds, knn  # pylint: disable=import-outside-toplevel
    if method == "pruned":
      t0 = time.perf_counter()
      shape = common.image_shape(db.shape[1])
      if metric == "l2" and _L2_BASIS.value == "pca":
        shape = None  # principal components
      index = bounds.build_index(db, metric=metric, image_shape=shape)
      jax.block_until_ready(index.bound_rows)
      result["build_seconds"] = time.perf_counter() - t0
      c = _CANDIDATES.value or None
      fn = lambda x: bounds.search(x, index, k, candidates=c)
    else:
      fn = lambda x: knn.search(x, db, k, metric=metric, method="brute") + ({},)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(q)[:2])  # compiles the programs of the timed call
    result["warmup_seconds"] = time.perf_counter() - t0
    if method == "pruned" and index.cache:
      index.cache.clear()  # the brute-force fallback's database, prepared again as at first use
    t0 = time.perf_counter()
    d, i, stats = fn(q)
    d, i = np.asarray(d), np.asarray(i)
    result["seconds"] = time.perf_counter() - t0
    result["stats"] = json.dumps(stats) if stats else ""
  np.save(os.path.join(out, f"idx_{method}_{metric}.npy"), i)
  np.save(os.path.join(out, f"dist_{method}_{metric}.npy"), d)
  result["peak_rss_mb"] = common.peak_rss_mb()
  print(json.dumps(result))


def _median(values) -> float:
  return float(np.median(values))


def _run_methods(methods, metric, nq, out, n_db) -> dict:
  """One round: each method in its own child process, in order; {method: its result, with
  its answers ("idx", "dist")}."""
  results = {}
  for method in methods:
    print(f"{metric}: {method}, {nq} queries x {n_db} ...", file=sys.stderr, flush=True)
    r = common.run_child("benchmarks.pruned_speed", [
        f"--child={method}", f"--metric={metric}", f"--k={_K.value}", f"--out={out}",
        f"--l2_queries={_L2_QUERIES.value}", f"--l1_queries={_L1_QUERIES.value}",
        f"--full={_FULL.value}", f"--candidates={_CANDIDATES.value}",
        f"--l2_basis={_L2_BASIS.value}"] + common.data_flags())
    r["idx"] = np.load(os.path.join(out, f"idx_{method}_{metric}.npy"))
    r["dist"] = np.load(os.path.join(out, f"dist_{method}_{metric}.npy"))
    results[method] = r
    print({k: v for k, v in r.items() if k not in ("idx", "dist")}, file=sys.stderr, flush=True)
  return results


def main(argv):
  del argv
  if _CHILD.value:
    child(_CHILD.value, _METRIC.value, _K.value, common.out_dir("bench_pruned"))
    return
  methods = common.check_methods(_METHODS.value, ("pruned", "brute", "faiss"))
  metrics = common.check_methods(_METRICS.value, ("l2", "l1"), "metrics")
  common.usage(_K.value >= 1, f"--k must be >= 1, got {_K.value}")
  common.usage(min(_L2_QUERIES.value, _L1_QUERIES.value) >= 1,
               "--l2_queries and --l1_queries must be >= 1")
  common.usage(_ROUNDS.value >= 1, f"--rounds must be >= 1, got {_ROUNDS.value}")
  common.usage(_CANDIDATES.value >= 0, f"--candidates must be >= 0, got {_CANDIDATES.value}")
  if "faiss" in methods:
    common.need("faiss", "faiss-cpu", " (or leave faiss out of --methods)")
  out, arrays = common.prepare("bench_pruned")
  n_db = len(arrays["train_x"])
  common.check_k(_K.value, n_db)
  rows = []
  for metric in metrics:
    nq = len(_queries(metric, arrays["test_x"]))
    rounds = [_run_methods(methods, metric, nq, out, n_db) for _ in range(_ROUNDS.value)]
    ref = [results.get("brute") for results in rounds]
    for method in methods:
      runs = [results[method] for results in rounds]
      totals = [r["seconds"] + r["build_seconds"] for r in runs]
      row = {"metric": metric, "method": method, "queries": nq, "k": _K.value,
             "build_s": _median([r["build_seconds"] for r in runs]),
             "search_s": _median([r["seconds"] for r in runs]),
             "total_s": _median(totals),
             "warmup_s": _median([r["warmup_seconds"] for r in runs]) if method != "faiss" else "",
             "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
             "stats": runs[-1].get("stats", "")}
      if "faiss" in methods:  # each round's ratio, then their median
        faiss = [res["faiss"] for res in rounds]
        over_search = [f["seconds"] / r["seconds"] for f, r in zip(faiss, runs)]
        # faiss's search alone against this method's build + search: the strict ratio
        over_total = [f["seconds"] / t for f, t in zip(faiss, totals)]
        both = [(f["seconds"] + f["build_seconds"]) / t for f, t in zip(faiss, totals)]
        row.update({"faiss_over_search": _median(over_search),
                    "faiss_search_over_total": _median(over_total),
                    "faiss_search_over_total_each_round": ", ".join(f"{x:.2f}"
                                                                    for x in over_total),
                    "faiss_total_over_total": _median(both)})
      if ref[0] is not None:  # every round's answers
        row["same_idx_as_brute"] = all(np.array_equal(r["idx"], b["idx"])
                                       for r, b in zip(runs, ref))
        row["same_dist_as_brute"] = all(np.array_equal(r["dist"], b["dist"])
                                        for r, b in zip(runs, ref))
        row["idx_agreement"] = min(float(np.mean(r["idx"] == b["idx"])) for r, b in zip(runs, ref))
      rows.append(row)
  common.report(out, "pruned_speed", rows, l2_basis=_L2_BASIS.value, columns=[
      "metric", "method", "queries", "k", "build_s", "search_s", "total_s", "warmup_s",
      "faiss_over_search", "faiss_search_over_total", "faiss_search_over_total_each_round",
      "faiss_total_over_total", "peak_rss_mb", "same_idx_as_brute", "same_dist_as_brute",
      "idx_agreement", "stats"])
  common.fail_on([f"pruned ({r['metric']}) differs from brute force (indices the same for "
                  f"{r['idx_agreement']!r})" for r in rows if r["method"] == "pruned" and (
                      r.get("same_idx_as_brute") is False or r.get("same_dist_as_brute") is False)])


if __name__ == "__main__":
  common.run(main)
