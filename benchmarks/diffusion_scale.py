"""Diffusion at scale: kNN-graph build time and per-query cost at 10^4, 10^5 and 10^6 database vectors.

Measured per collection size n (``--sizes``):

* choice of the approximate neighbour search, at sizes up to ``--compare-max``: exact search,
  HNSW (three settings) and an inverted file (two), each on the whole collection: time, recall of
  the k = 50 neighbours, share of the exact mutual-kNN edges the resulting graph keeps.
* graph build (the steps of :func:`index.diffusion.knn_graph` with ``method="auto"``, timed one by
  one: k = 50 mutual neighbours, gamma 3): the index, the search, the rest (affinity,
  symmetrisation, normalisation); edges per node; isolated nodes; bytes of the graph's CSR arrays
  (affinity + transition). The search is exact (faiss IndexFlatIP) below ``EXACT_BELOW`` vectors
  and HNSW above; an HNSW graph is checked against an exact search on ``--recall-nodes`` sampled
  nodes (recall, exact mutual edges kept), and those nodes are searched again with other efSearch
  values (``--ef-sweep``).
* per query, median over ``--queries`` queries: the kNN search alone (database @ query, best 100,
  as :class:`index.dense_index.DenseIndex` does), and what diffusion adds on top of it: the seed
  (the query's k nearest nodes), ``--iterations`` conjugate-gradient iterations (alpha 0.99), the
  best 100 by diffusion score; without truncation (the whole graph) and truncated to the kNN
  ranking's first T nodes (``--shortlists``); offline diffusion (``offline_rows`` with L = 100 kept
  per row, then ``diffuse_offline``) only up to ``--offline-max`` vectors, its build being about
  n * iterations products with the whole graph (~ n^2). The ratio diffusion / kNN search is the
  median of the per-query ratios, so that load from other processes on the shared machine cancels.
  Queries run on one thread (BLAS limited by threadpoolctl): two BLAS threads on the loaded 2-core
  machine made the 10^4 kNN search 4x slower than one.

Synthetic vectors with the statistics of the real descriptors. The real ones are whitened 512-d GeM
descriptors (efficientnet-lite0, whitening learned on the other dataset). On UKBench-1000 (groups of
4 photos of an object) they have: same-object cosine median 0.73 (10th percentile 0.54); other pairs
mean 0.077, std 0.088, 99.9th percentile 0.51; the 5th/10th/50th nearest other image at 0.39 / 0.33 /
0.22 (median over images); participation ratio of the covariance spectrum 102 of 512 dimensions (65
on Holidays); the mean vector has norm 0.28. The generator (:func:`synthetic_vectors`) draws groups
of 2-10 near-duplicates (an object's photos): each group's centre is ``0.33 * m + sqrt(1 - 0.6^2) *
z + 0.6 * t`` normalised, with ``m`` a fixed mean direction, ``z`` Gaussian with a power-law spectrum
(variance of dimension i ~ i^-0.8), ``t`` a "topic" drawn the same way and shared by 10 groups on
average (similar scenes); each member is its centre plus isotropic Gaussian noise of norm sigma ~
U(0.35, 0.9) per group, normalised. Fitted on 250 groups of 4 against the UKBench numbers, it gives
within-group median 0.73 (10th percentile 0.59), other pairs mean 0.068, std 0.11, 99.9th percentile
0.47, nearest others 0.39 / 0.35 / 0.24 and participation ratio 87. Topics are as many as groups / 10
at every size, so a larger collection holds proportionally more look-alikes, as a real one would.
Queries are database vectors plus noise of norm 0.6 (cosine ~0.86 with their source: a new photo of
a database object).
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import time

import faiss
import numpy as np
from scipy import sparse
from threadpoolctl import threadpool_limits

from benchmarks.common import write_result
from index import diffusion
from index.diffusion import (diffuse, diffuse_offline, graph_from_neighbours, neighbour_index, offline_rows,
                             query_seed, search_others)
from index.kernels import top_indices

TOP = 100  # results returned per query

MEAN_WEIGHT = 0.33  # weight of the common mean direction in a group's centre
SPECTRUM = 0.8  # variance of dimension i ~ i^-SPECTRUM
TOPIC_WEIGHT = 0.6  # share of a group's centre that comes from its topic
GROUPS_PER_TOPIC = 10
GROUP_SIZES = (2, 10)  # near-duplicates per group, uniform
NOISE = (0.35, 0.9)  # per-group noise norm, uniform
QUERY_NOISE = 0.6


def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic_vectors(n: int, d: int, seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """(n, d) float32 unit vectors in groups of near-duplicates (see the module docstring).

    Generated ``chunk`` vectors at a time in float32 (10^6 x 512 is 2 GB, no float64 copy).
    """
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, d + 1, dtype=np.float64) ** -SPECTRUM)
    scale = np.sqrt(scale / scale.sum()).astype(np.float32)
    mean = np.zeros(d, np.float32)
    mean[0] = MEAN_WEIGHT
    n_topics = max(1, int(round(n / np.mean(GROUP_SIZES) / GROUPS_PER_TOPIC)))
    topics = rng.standard_normal((n_topics, d), np.float32) * scale
    out = np.empty((n, d), np.float32)
    filled = 0
    while filled < n:
        sizes = rng.integers(GROUP_SIZES[0], GROUP_SIZES[1] + 1, chunk // int(np.mean(GROUP_SIZES)) + 1)
        sizes = sizes[:np.searchsorted(np.cumsum(sizes), n - filled) + 1]
        count = min(int(sizes.sum()), n - filled)
        centres = rng.standard_normal((len(sizes), d), np.float32) * scale * np.float32(np.sqrt(1 - TOPIC_WEIGHT ** 2))
        centres += TOPIC_WEIGHT * topics[rng.integers(0, n_topics, len(sizes))] + mean
        _normalise(centres)
        noise = rng.uniform(*NOISE, len(sizes)).astype(np.float32) / np.float32(np.sqrt(d))
        members = np.repeat(centres, sizes, axis=0)[:count]
        members += rng.standard_normal((count, d), np.float32) * np.repeat(noise, sizes)[:count, None]
        out[filled:filled + count] = _normalise(members)
        filled += count
    return out


def perturbed_queries(database: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    """(count, d) float32 unit queries: random database vectors plus noise of norm ``QUERY_NOISE``."""
    rng = np.random.default_rng(seed)
    d = database.shape[1]
    picked = database[rng.choice(len(database), count, replace=False)]
    return _normalise(picked + rng.standard_normal(picked.shape, np.float32) * np.float32(QUERY_NOISE / np.sqrt(d)))


def hnsw_index(vectors: np.ndarray, links: int, ef_search: int) -> faiss.Index:
    """faiss IndexHNSWFlat by inner product (construction depth HNSW_EF_CONSTRUCTION), vectors added."""
    index = faiss.IndexHNSWFlat(vectors.shape[1], links, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = diffusion.HNSW_EF_CONSTRUCTION
    index.hnsw.efSearch = ef_search
    index.add(vectors)
    return index


def ivf_index(vectors: np.ndarray, nprobe: int, lists_per_root: float = 4.0, train_per_list: int = 64) -> faiss.Index:
    """faiss IndexIVFFlat by inner product: round(4 sqrt(n)) lists, k-means on 64 sampled vectors per list."""
    n, d = vectors.shape
    lists = max(1, min(int(round(lists_per_root * np.sqrt(n))), n // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = train_per_list
    index.train(vectors[np.sort(np.random.default_rng(0).choice(n, min(n, train_per_list * lists), replace=False))])
    index.add(vectors)
    index.nprobe = nprobe
    return index


#: Neighbour searches compared at sizes up to --compare-max: label -> index builder. The first is the reference.
CANDIDATES = {
    "exact (IndexFlatIP)": lambda v: neighbour_index(v, "exact"),
    f"HNSW M {diffusion.HNSW_M}, efSearch {diffusion.HNSW_EF_SEARCH} (knn_graph's)": lambda v: neighbour_index(v, "hnsw"),
    "HNSW M 32, efSearch 128": lambda v: hnsw_index(v, 32, 128),
    "HNSW M 16, efSearch 128": lambda v: hnsw_index(v, 16, 128),
    "IVF 4 sqrt(n) lists, nprobe 16": lambda v: ivf_index(v, 16),
    "IVF 4 sqrt(n) lists, nprobe 32": lambda v: ivf_index(v, 32),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="database sizes (vectors)")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension")
    parser.add_argument("--k", type=int, default=50, help="graph neighbours per node (and query seeds)")
    parser.add_argument("--queries", type=int, default=30, help="queries timed per size (after 2 untimed)")
    parser.add_argument("--shortlists", default="1000,5000", help="truncation sizes T")
    parser.add_argument("--iterations", type=int, default=20, help="conjugate-gradient iterations")
    parser.add_argument("--alpha", type=float, default=0.99, help="diffusion alpha")
    parser.add_argument("--offline-max", type=int, default=10_000, help="largest size with offline diffusion")
    parser.add_argument("--compare-max", type=int, default=100_000,
                        help="largest size at which every neighbour search in CANDIDATES is timed")
    parser.add_argument("--recall-nodes", type=int, default=200,
                        help="nodes whose approximate neighbours and mutual edges are checked against an exact search")
    parser.add_argument("--ef-sweep", default="64,128,256",
                        help="HNSW efSearch values whose recall is measured on the sampled nodes")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--name", default="diffusion_scale", help="result file name under benchmarks/results")
    return parser.parse_args()


def load() -> str:
    """``uptime``'s load averages (1, 5, 15 min)."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def load_1min() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def directed_pattern(neighbours: np.ndarray) -> sparse.csr_array:
    """(n, n) boolean pattern of the directed neighbour lists (-1 entries dropped)."""
    n, k = neighbours.shape
    found = neighbours >= 0
    return sparse.csr_array((np.ones(int(found.sum()), bool), (np.repeat(np.arange(n), k).reshape(n, k)[found],
                                                                 neighbours[found])), shape=(n, n))


def compare_searches(vectors: np.ndarray, args) -> list[dict]:
    """Every search in CANDIDATES on the whole collection, against the first (exact)."""
    rows, reference = [], None
    for label, build in CANDIDATES.items():
        start = time.perf_counter()
        index = build(vectors)
        index_s = time.perf_counter() - start
        neighbours, similarities = search_others(index, vectors, args.k)
        search_s = time.perf_counter() - start - index_s
        del index
        by_lists = graph_from_neighbours(neighbours, similarities).affinity
        if reference is None:
            reference = directed_pattern(neighbours), by_lists
        pattern, exact = reference
        row = {"label": label, "index_s": index_s, "search_s": search_s,
               "recall": pattern.multiply(directed_pattern(neighbours)).nnz / pattern.nnz}
        for key, affinity in (("lists", by_lists),
                              ("similarity", graph_from_neighbours(neighbours, similarities, by_similarity=True).affinity)):
            kept = exact.multiply(affinity > 0)
            row[key] = {"edges": kept.nnz / exact.nnz, "weight": kept.sum() / exact.sum(),
                        "extra": 1 - kept.nnz / affinity.nnz, "isolated": int(np.sum(np.diff(affinity.indptr) == 0))}
        rows.append(row)
        print(f"  {label}: {index_s + search_s:.1f} s, recall@{args.k} {row['recall']:.3f}, mutual edges kept "
              f"{row['lists']['edges']:.3f} by lists, {row['similarity']['edges']:.3f} by similarity", flush=True)
    return rows


def exact_others(index: faiss.Index, vectors: np.ndarray, nodes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest others of the given nodes in ``index`` (exact for a flat one): ((m, k) indices, similarities)."""
    labels, found = np.zeros((len(nodes), k), np.int64), np.zeros((len(nodes), k), np.float32)
    for start in range(0, len(nodes), 1024):
        block = nodes[start:start + 1024]
        similarity, label = index.search(vectors[block], k + 1)
        for row, node in enumerate(block):
            keep = label[row] != node
            labels[start + row], found[start + row] = label[row][keep][:k], similarity[row][keep][:k]
    return labels, found


def sampled_check(vectors: np.ndarray, neighbours: np.ndarray, graph, hnsw: faiss.Index, args) -> dict:
    """An approximate graph against an exact search, on ``--recall-nodes`` sampled nodes.

    recall: share of the sampled nodes' exact k nearest found; weight: the same weighted by affinity
    (similarity^gamma); edges / edge_weight: share of the sampled nodes' exact mutual edges (exact
    neighbours whose own exact k nearest hold the node: a second exact search) that the graph has;
    exact_degree / degree: mean mutual edges per sampled node, exact and in the graph; exact_isolated /
    isolated: sampled nodes without any; extra: share of the sampled nodes' graph edges that are not
    exact mutual edges; sweep: for each ``--ef-sweep`` efSearch, (efSearch, ms per search of one node,
    recall, weight) of the sampled nodes searched again in ``hnsw``.
    """
    nodes = np.sort(np.random.default_rng(args.seed + 2).choice(len(vectors), min(args.recall_nodes, len(vectors)),
                                                                  replace=False))
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    exact, similarity = exact_others(index, vectors, nodes, args.k)
    second = np.unique(exact)
    second_lists = exact_others(index, vectors, second, args.k)[0]
    del index
    affinity = np.maximum(similarity, 0).astype(np.float64) ** graph.gamma
    hit = np.array([np.isin(exact[row], neighbours[node]) for row, node in enumerate(nodes)])
    reciprocal = np.array([[node in second_lists[np.searchsorted(second, j)] for j in exact[row]]
                           for row, node in enumerate(nodes)]) & (affinity > 0)
    kept = np.array([np.isin(exact[row], graph.affinity.indices[graph.affinity.indptr[node]:
                                                                 graph.affinity.indptr[node + 1]])
                     for row, node in enumerate(nodes)]) & reciprocal
    degree = np.diff(graph.affinity.indptr)[nodes]
    sweep = []
    for ef in (int(e) for e in args.ef_sweep.split(",") if e):
        hnsw.hnsw.efSearch = ef
        start = time.perf_counter()
        lists = exact_others(hnsw, vectors, nodes, args.k)[0]
        ms = (time.perf_counter() - start) / len(nodes) * 1e3
        found = np.array([np.isin(exact[row], lists[row]) for row in range(len(nodes))])
        sweep.append((ef, ms, found.mean(), affinity[found].sum() / affinity.sum()))
    hnsw.hnsw.efSearch = diffusion.HNSW_EF_SEARCH
    return {"sweep": sweep, "recall": hit.mean(), "weight": affinity[hit].sum() / affinity.sum(),
            "edges": kept.sum() / reciprocal.sum(), "edge_weight": affinity[kept].sum() / affinity[reciprocal].sum(),
            "exact_degree": reciprocal.sum(axis=1).mean(), "degree": degree.mean(),
            "exact_isolated": np.mean(reciprocal.sum(axis=1) == 0), "isolated": np.mean(degree == 0),
            "extra": 1 - kept.sum() / degree.sum()}


def csr_bytes(matrix: sparse.csr_array) -> int:
    return matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes


def time_queries(vectors: np.ndarray, graph, rows, args) -> dict:
    """Per query ms (and top-100 overlap with untruncated diffusion) of each variant; 2 untimed queries first."""
    shortlists = [int(t) for t in args.shortlists.split(",") if int(t) < len(vectors)]
    out = {"knn": [], "full": []}
    for t in shortlists:
        out[f"T{t}"], out[f"T{t} overlap"] = [], []
    if rows is not None:
        out["offline"], out["offline overlap"] = [], []
    for number, query in enumerate(perturbed_queries(vectors, args.queries + 2, args.seed + 1)):
        times = {}
        start = time.perf_counter()
        scores = vectors @ query
        top_indices(scores, TOP)
        times["knn"] = time.perf_counter() - start
        start = time.perf_counter()
        f = diffuse(graph, query_seed(scores, graph.k, graph.gamma), args.alpha, args.iterations)
        full = top_indices(f, TOP)
        times["full"] = time.perf_counter() - start
        overlap = {}
        for t in shortlists:
            start = time.perf_counter()
            shortlist = top_indices(scores, t)
            f = diffuse(graph, query_seed(scores, graph.k, graph.gamma), args.alpha, args.iterations,
                        shortlist=shortlist)
            best = shortlist[top_indices(f[shortlist], TOP)]
            times[f"T{t}"] = time.perf_counter() - start
            overlap[f"T{t} overlap"] = len(np.intersect1d(best, full)) / TOP
        if rows is not None:
            start = time.perf_counter()
            best = top_indices(diffuse_offline(rows, query_seed(scores, graph.k, graph.gamma)), TOP)
            times["offline"] = time.perf_counter() - start
            overlap["offline overlap"] = len(np.intersect1d(best, full)) / TOP
        if number >= 2:
            for key, value in times.items():
                out[key].append(value * 1e3)
            for key, value in overlap.items():
                out[key].append(value)
    return {key: np.asarray(value) for key, value in out.items()}


def measure(size: int, args) -> dict:
    """Generate, build the graph, time the queries at one size."""
    row = {"n": size}
    start = time.perf_counter()
    vectors = synthetic_vectors(size, args.dim, args.seed)
    row["generate_s"] = time.perf_counter() - start
    if size <= args.compare_max:
        print(f"{size}: comparing neighbour searches", flush=True)
        row["compare"] = compare_searches(vectors, args)
    row["method"] = "exact" if size < diffusion.EXACT_BELOW else "hnsw"  # as knn_graph(method="auto")
    row["load_before"] = load_1min()
    start = time.perf_counter()
    index = neighbour_index(vectors, row["method"])
    row["index_s"] = time.perf_counter() - start
    neighbours, similarities = search_others(index, vectors, args.k)
    row["search_s"] = time.perf_counter() - start - row["index_s"]
    middle = time.perf_counter()
    graph = graph_from_neighbours(neighbours, similarities, by_similarity=row["method"] != "exact")  # as knn_graph
    row["graph_s"] = time.perf_counter() - middle
    row["build_s"] = time.perf_counter() - start
    row["load_after"] = load_1min()
    print(f"{size}: graph ({row['method']}) in {row['build_s']:.1f} s", flush=True)
    if row["method"] != "exact":
        row["check"] = sampled_check(vectors, neighbours, graph, index, args)
    del neighbours, similarities, index
    row["edges_per_node"] = graph.affinity.nnz / size
    row["isolated"] = float(np.mean(np.diff(graph.affinity.indptr) == 0))
    row["graph_bytes"] = csr_bytes(graph.affinity) + csr_bytes(graph.transition)
    rows = None
    if size <= args.offline_max:
        start = time.perf_counter()
        rows = offline_rows(graph, args.alpha, args.iterations, top=TOP)
        row["offline_s"] = time.perf_counter() - start
        row["offline_bytes"] = csr_bytes(rows)
    with threadpool_limits(1):  # one thread per query, as a server answering several at once; also steadier
        row["times"] = time_queries(vectors, graph, rows, args)  # than 2 BLAS threads on a shared machine
    row["peak_rss_gb"] = peak_rss_gb()
    return row


def exponent(rows: list[dict], value) -> str:
    """Growth exponents between consecutive sizes: log(ratio of values) / log(ratio of sizes)."""
    parts = []
    for a, b in zip(rows, rows[1:]):
        x, y = value(a), value(b)
        if x and y:
            parts.append(f"{np.log(y / x) / np.log(b['n'] / a['n']):.2f} ({a['n']:,} -> {b['n']:,})")
    return ", ".join(parts) or "n/a"


def report(rows: list[dict], args, load_start: str, load_end: str, total_s: float) -> str:
    med = np.median
    lines = [f"Load average (1 / 5 / 15 min) at the start {load_start}, at the end {load_end}. The 2 cores are "
             f"shared: other benchmarks ran on this machine during the session, so times can be pessimistic, and "
             f"the ratios to the kNN search (medians of per-query ratios) are the steadier numbers. The graph build "
             f"uses both cores itself (faiss, BLAS: a 1-min load of ~2 is this run alone); queries run on one "
             f"thread (threadpoolctl), as a server answering several at once. Whole run {total_s / 60:.0f} min.", "",
             f"Synthetic {args.dim}-d unit vectors (groups of {GROUP_SIZES[0]}-{GROUP_SIZES[1]} near-duplicates "
             f"with the real GeM descriptors' statistics, see the script's docstring), k = {args.k} mutual "
             f"neighbours, gamma 3, alpha {args.alpha}, {args.iterations} conjugate-gradient iterations (tol 1e-6), "
             f"{args.queries} queries (database vectors plus noise), best {TOP} returned.", ""]
    compared = [r for r in rows if "compare" in r]
    if compared:
        lines += ["## Choosing the approximate neighbour search", "",
                  f"Every search on the whole collection, then the mutual graph built from its lists. recall@{args.k}: "
                  f"share of the exact directed neighbour lists found. Mutual edges kept: share of the exact "
                  f"graph's mutual-kNN edges that the graph has, and share of their affinity (similarity^3); "
                  f"extra: share of the graph's edges that are not exact mutual edges; isolated: nodes without "
                  f"edges. By lists: (i, j) kept when each is in the other's list (knn_graph's rule for the exact "
                  f"search); by similarity: when j is in i's list and their similarity reaches j's k-th "
                  f"neighbour's, which keeps the edges whose reverse search missed (knn_graph's rule for HNSW).", "",
                  "| n | search | index build s | search s | total s | x exact | recall@k | kept, by lists | "
                  "their affinity | isolated | kept, by similarity | their affinity | extra | isolated |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in compared:
            exact = r["compare"][0]["index_s"] + r["compare"][0]["search_s"]
            for c in r["compare"]:
                total = c["index_s"] + c["search_s"]
                a, b = c["lists"], c["similarity"]
                lines.append(f"| {r['n']:,} | {c['label']} | {c['index_s']:.1f} | {c['search_s']:.1f} | {total:.1f} | "
                             f"{total / exact:.2f} | {c['recall']:.3f} | {a['edges']:.3f} | {a['weight']:.3f} | "
                             f"{a['isolated']} | {b['edges']:.3f} | {b['weight']:.3f} | {b['extra']:.3f} | "
                             f"{b['isolated']} |")
        lines.append("")
    lines += ["## Graph build", "",
              f"knn_graph(method=\"auto\"): exact below {diffusion.EXACT_BELOW:,} vectors, HNSW (M {diffusion.HNSW_M}, "
              f"efConstruction {diffusion.HNSW_EF_CONSTRUCTION}, efSearch {diffusion.HNSW_EF_SEARCH}) from there. "
              f"Build = index (flat: add; HNSW: insert every vector) + search (each vector's {args.k} nearest "
              f"others) + graph (affinity, mutual symmetrisation, normalisation; scipy). Edges/node: mutual edges "
              f"per node. Graph bytes: the CSR arrays of the affinity and the transition matrix.",
              "", "| n | search | index s | search s | graph s | build s | edges/node | isolated nodes | graph MB | "
              "bytes/node | 1-min load before / after | peak RSS GB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['method']} | {r['index_s']:.1f} | {r['search_s']:.1f} | {r['graph_s']:.1f} | "
                     f"{r['build_s']:.1f} | {r['edges_per_node']:.1f} | {r['isolated']:.4f} | "
                     f"{r['graph_bytes'] / 1e6:.1f} | {r['graph_bytes'] / r['n']:.0f} | "
                     f"{r['load_before']} / {r['load_after']} | {r['peak_rss_gb']:.1f} |")
    checked = [r for r in rows if "check" in r]
    if checked:
        lines += ["", f"Approximate graphs against an exact search on {args.recall_nodes} sampled nodes (and, for their "
                      f"mutual edges, an exact search of each of their exact neighbours):", "",
                  f"| n | recall@{args.k} | affinity found | exact mutual edges kept | their affinity | extra | "
                  f"mutual edges per node, exact / graph | isolated, exact / graph |", "|---|---|---|---|---|---|---|---|"]
        for r in checked:
            c = r["check"]
            lines.append(f"| {r['n']:,} | {c['recall']:.3f} | {c['weight']:.3f} | {c['edges']:.3f} | "
                         f"{c['edge_weight']:.3f} | {c['extra']:.3f} | {c['exact_degree']:.1f} / {c['degree']:.1f} | "
                         f"{c['exact_isolated']:.3f} / {c['isolated']:.3f} |")
        lines += ["", f"The sampled nodes searched again with other efSearch values (same HNSW index; the whole "
                      f"search would take about n x the time per node, with both cores):", "",
                  f"| n | efSearch | ms per node | x n = s | recall@{args.k} | affinity found |", "|---|---|---|---|---|---|"]
        for r in checked:
            for ef, ms, recall, weight in r["check"]["sweep"]:
                lines.append(f"| {r['n']:,} | {ef} | {ms:.2f} | {ms * r['n'] / 1e3:.0f} | {recall:.3f} | {weight:.3f} |")
    lines += ["", "## Per query", "",
              f"ms per query, median and 90th percentile over {args.queries} queries. kNN search: database @ query "
              f"+ best {TOP}. The diffusion rows are what diffusion adds after the kNN scores: seed ({args.k} "
              f"nearest nodes), conjugate gradient, best {TOP}; truncated to T: the solve on the kNN ranking's "
              f"first T nodes only. Overlap: share of the untruncated diffusion's best {TOP} that the variant "
              f"also returns."]
    for r in rows:
        t = r["times"]
        lines += ["", f"### n = {r['n']:,}" + (f" (offline rows: {r['offline_s']:.1f} s to build, "
                                                 f"{r['offline_bytes'] / 1e6:.1f} MB)" if "offline_s" in r else ""),
                  "", "| variant | ms median | ms p90 | x kNN search (median) | top-100 overlap with untruncated |",
                  "|---|---|---|---|---|",
                  f"| kNN search | {med(t['knn']):.1f} | {np.percentile(t['knn'], 90):.1f} | 1 | |"]
        variants = [("full", "diffusion, whole graph")] + [
            (key, f"diffusion truncated to T = {key[1:]}") for key in t if key.startswith("T") and "overlap" not in key]
        if "offline" in t:
            variants.append(("offline", f"offline diffusion (rows kept L = {TOP})"))
        for key, label in variants:
            overlap = f"{med(t[key + ' overlap']):.2f}" if key + " overlap" in t else "1"
            lines.append(f"| {label} | {med(t[key]):.1f} | {np.percentile(t[key], 90):.1f} | "
                         f"{med(t[key] / t['knn']):.2f} | {overlap} |")
    first = [r for r in rows if r["n"] == 10_000]
    if first:
        t = first[0]["times"]
        verdict = ", ".join(f"{label} {med(t[key]):.1f} ms" for key, label in
                            [("full", "whole graph")] + [(key, f"T = {key[1:]}") for key in t
                                                         if key.startswith("T") and "overlap" not in key]
                            + ([("offline", "offline")] if "offline" in t else []))
        lines += ["", f"Floor (global diffusion adds at most 20 ms per query at 10^4 images): {verdict} "
                      f"(medians, one thread)."]
    if len(rows) > 1:
        shortest = min(int(s) for s in args.shortlists.split(","))
        lines += ["", "## How each grows", "",
                  "Measured growth exponents e (time ~ n^e) between consecutive sizes:", "",
                  f"* graph build: {exponent(rows, lambda r: r['build_s'])}; of which the neighbour search "
                  f"(index + search): {exponent(rows, lambda r: r['index_s'] + r['search_s'])}, the rest: "
                  f"{exponent(rows, lambda r: r['graph_s'])}",
                  f"* graph bytes: {exponent(rows, lambda r: r['graph_bytes'])}",
                  f"* kNN search per query: {exponent(rows, lambda r: med(r['times']['knn']))}",
                  f"* diffusion on the whole graph per query: {exponent(rows, lambda r: med(r['times']['full']))}",
                  f"* diffusion truncated to T = {shortest}: "
                  f"{exponent(rows, lambda r: med(r['times'].get(f'T{shortest}', [np.nan])))}", ""]
        last = rows[-1]
        truncated = " / ".join(f"{med(r['times'][f'T{shortest}']):.1f}" for r in rows if f"T{shortest}" in r["times"])
        lines.append(
            f"The exact neighbour search compares every pair (~n^2 d) and is used only below "
            f"{diffusion.EXACT_BELOW:,} vectors; HNSW inserts and searches each vector through a graph (~n log n d "
            f"in theory)" + (f" and grew as n^{np.log(last['build_s'] / rows[-2]['build_s']) / np.log(last['n'] / rows[-2]['n']):.2f} "
                             f"from {rows[-2]['n']:,} to {last['n']:,}" if rows[-2]["method"] == last["method"] == "hnsw" else "")
            + f" ({last['build_s'] / 60:.1f} min at {last['n']:,} on 2 cores). The rest of the build (scipy) and "
            f"the graph's bytes grow with the edges, ~n (mutual edges per node: "
            f"{rows[0]['edges_per_node']:.1f} at {rows[0]['n']:,}, {last['edges_per_node']:.1f} at {last['n']:,}). "
            f"Per query, the kNN search scans the database and diffusion on the whole graph does "
            f"{args.iterations} sparse products with it: both ~n, diffusion {med(last['times']['full'] / last['times']['knn']):.1f}x "
            f"the kNN search at {last['n']:,}. Truncated to T = {shortest} the solve no longer depends on n; what "
            f"remains of n in it (top-T selection over n scores, the n-long seed and score vectors, scipy's column "
            f"indexing) is small: it took {truncated} ms at the sizes above, "
            f"{med(last['times'][f'T{shortest}'] / last['times']['knn']):.2f}x the kNN search at {last['n']:,}: with "
            f"truncation a query costs the kNN search plus {med(last['times'][f'T{shortest}']):.1f} ms there.")
        if "check" in last:
            c, sweep = last["check"], last["check"]["sweep"]
            lines.append("")
            lines.append(
                f"The approximate graph at {last['n']:,} (efSearch {diffusion.HNSW_EF_SEARCH}, against an exact "
                f"search of {args.recall_nodes} sampled nodes): HNSW found "
                f"{c['recall']:.2f} of the sampled nodes' exact {args.k} nearest ({c['weight']:.2f} of their "
                f"affinity); the graph kept {c['edges']:.2f} of their exact mutual edges ({c['edge_weight']:.2f} of "
                f"the affinity), {last['isolated']:.1%} of its nodes have no edge. efSearch {sweep[-1][0]} would find "
                f"{sweep[-1][2]:.2f} ({sweep[-1][3]:.2f} of the affinity) for {sweep[-1][1] / sweep[0][1]:.1f}x the "
                f"search time (knn_graph's ef_search argument).")
        offline = [r for r in rows if "offline_s" in r]
        if offline:
            r = offline[-1]
            lines.append("")
            lines.append(
                f"Offline diffusion was built only up to {r['n']:,} ({r['offline_s']:.0f} s): it solves one system per "
                f"database node over the whole graph, ~n^2, so about {r['offline_s'] * 100 / 60:.0f} min at 10x the "
                f"size and {r['offline_s'] * 1e4 / 3600:.0f} h at 100x, for rows of n x {TOP} entries; its queries "
                f"({med(r['times']['offline']):.1f} ms at {r['n']:,}) are the cheapest.")
    return "\n".join(lines)


def main():
    args = parse_args()
    load_start, started = f"{load()} (`uptime`: {uptime()})", time.perf_counter()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        rows.append(measure(size, args))
        t = rows[-1]["times"]
        print(f"{size}: kNN {np.median(t['knn']):.1f} ms, diffusion {np.median(t['full']):.1f} ms, "
              + ", ".join(f"{key} {np.median(v):.1f} ms" for key, v in t.items() if key.startswith("T")
                          and "overlap" not in key), flush=True)
    text = report(rows, args, load_start, f"{load()} (`uptime`: {uptime()})", time.perf_counter() - started)
    print(f"written to {write_result(args.name, text)}")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
