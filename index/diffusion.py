"""Diffusion on a k-nearest-neighbour graph of database vectors (re-ranking on the data manifold).

The database vectors (global descriptors, or regions: any unit vectors) are the
nodes of a sparse symmetric affinity graph ``A`` (their k nearest neighbours, searched
exactly for small collections and with an HNSW index for large ones), normalised to
``S = D^-1/2 A D^-1/2``. A query enters through its nearest database vectors as
a seed ``y``, and the ranking scores ``f`` solve ``(I - alpha S) f = y`` by
conjugate gradient (Iscen et al., "Efficient diffusion on region manifolds",
CVPR 2017); the constant factor ``1 - alpha`` of the closed form is left out, as
it does not change the ranking. Optionally the solve is restricted to a
shortlist of nodes (truncation). The offline variant (Yang et al., "Efficient
image retrieval via decoupling diffusion into online and offline processing",
AAAI 2019) solves once per database node with a unit seed, keeps the ``top``
entries of each solution, and answers a query with a sparse combination of them.

Arrays in, arrays out: graphs and offline rows are ``scipy.sparse.csr_array``
and save as plain arrays (:func:`csr_to_arrays`, :meth:`DiffusionGraph.to_arrays`).
"""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from scipy import sparse

from index.kernels import top_indices

SEARCH_CHUNK = 4096  # database vectors searched at once when building the graph
OFFLINE_BATCH = 64  # unit seeds solved together by offline_rows (measured fastest for the sparse product)
#: knn_graph(method="auto") searches exactly below this many vectors, by HNSW from there. Exact / HNSW took
#: 0.6 / 0.8 s at 10^4 and 58 / 26 s at 10^5 512-d vectors (2 cores): about even here, and exact is exact.
EXACT_BELOW = 50_000
HNSW_M = 32  # links per HNSW node (at 10^5 clustered 512-d vectors, 16 kept 94% of the mutual edges, 32 99%)
HNSW_EF_CONSTRUCTION = 40  # faiss's default (80 did not find more neighbours at 10^6)
HNSW_EF_SEARCH = 64  # candidates per search (faiss uses at least k)


@dataclass(frozen=True)
class DiffusionGraph:
    """A normalised affinity graph; build it with :func:`knn_graph`, :func:`graph_from_neighbours` or
    :func:`graph_from_affinity`.

    Attributes:
        affinity: (n, n) float32 csr_array, the raw symmetric affinities (non-negative, no diagonal),
            kept so that edges can be added and the graph rebuilt with :func:`graph_from_affinity`.
        transition: (n, n) float32 csr_array ``S = D^-1/2 A D^-1/2`` (D the degrees; isolated nodes
            have empty rows), symmetric with spectral radius <= 1.
        k: neighbours per node the kNN graph was built with (the default for query seeds).
        gamma: exponent applied to similarities to make affinities.
    """

    affinity: sparse.csr_array
    transition: sparse.csr_array
    k: int
    gamma: float

    @property
    def n(self) -> int:
        """Number of nodes."""
        return self.affinity.shape[0]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays: the affinity's CSR arrays (see :func:`csr_to_arrays`), ``k`` 0-d int64, ``gamma`` 0-d float64.

        The transition matrix is not stored; :meth:`from_arrays` recomputes it (bit-identical).
        """
        return {**csr_to_arrays(self.affinity), "k": np.array(self.k, np.int64),
                "gamma": np.array(self.gamma, np.float64)}

    @classmethod
    def from_arrays(cls, arrays: dict) -> DiffusionGraph:
        """Rebuild from :meth:`to_arrays` output (ValueError when inconsistent)."""
        return graph_from_affinity(csr_from_arrays(arrays), int(arrays["k"]), float(arrays["gamma"]))


def csr_to_arrays(matrix: sparse.csr_array) -> dict[str, np.ndarray]:
    """A CSR matrix as plain arrays.

    Args:
        matrix: (r, c) csr_array.

    Returns:
        ``shape`` (2,) int64, ``indptr`` (r + 1,) int64, ``indices`` (nnz,) int32/int64, ``data`` (nnz,)
        of the matrix's dtype.
    """
    return {"shape": np.array(matrix.shape, np.int64), "indptr": matrix.indptr.astype(np.int64),
            "indices": matrix.indices, "data": matrix.data}


def csr_from_arrays(arrays: dict) -> sparse.csr_array:
    """Inverse of :func:`csr_to_arrays` (ValueError when the arrays do not form a CSR matrix)."""
    shape = tuple(int(s) for s in np.asarray(arrays["shape"]).reshape(-1))
    if len(shape) != 2:
        raise ValueError("a CSR matrix needs a 2-d shape")
    matrix = sparse.csr_array((arrays["data"], arrays["indices"], arrays["indptr"]), shape=shape)
    matrix.check_format(full_check=True)
    return matrix


def knn_graph(vectors: np.ndarray, k: int = 50, gamma: float = 3.0, mutual: bool = True,
              method: str = "auto", ef_search: int = HNSW_EF_SEARCH) -> DiffusionGraph:
    """The affinity graph of the vectors' k nearest neighbours by inner product (faiss).

    Each node is linked to its ``k`` nearest other vectors (self excluded, also among duplicates)
    with affinity ``max(similarity, 0) ** gamma``. With ``mutual`` an edge is kept only when each end
    is among the other's neighbours; otherwise an edge in either direction is kept. The vectors are
    searched in chunks of ``SEARCH_CHUNK`` to bound memory.

    The exact search compares every pair (faiss IndexFlatIP, cost ~ n^2 d). The approximate one is
    a hierarchical navigable small-world graph (faiss IndexHNSWFlat by inner product, ``HNSW_M``
    links per node, construction depth ``HNSW_EF_CONSTRUCTION``, search depth ``ef_search``; cost
    ~ n log n d in theory): it may miss neighbours, a node then getting farther ones (or fewer than
    ``k``), and faiss inserts in parallel, so the graph can differ slightly from run to run. Its
    searches often miss the reverse direction of an edge, so mutuality is then decided by
    similarity (``by_similarity`` of :func:`graph_from_neighbours`), not by list membership.
    On synthetic 512-d descriptors (benchmarks/results/diffusion_scale.md), at 10^5 vectors it took
    0.45x the exact search's time and kept 99% of the exact mutual edges (99.8% of their affinity;
    by list membership 98%, and 440 isolated nodes instead of 20); at 10^6 (8 min on 2 cores) it
    kept 86% of the sampled nodes' mutual edges (94% of the affinity) and left 1.4% of the nodes
    isolated (none are, exactly): raise ``ef_search`` there (256 instead of 64 found 84% instead
    of 70% of the k nearest, for 2.7x the search time).

    Args:
        vectors: (n, d) float32, rows L2-normalised.
        k: neighbours per node; at most n - 1 are used.
        gamma: affinity exponent.
        mutual: keep mutual neighbours only (else symmetrise by the maximum).
        method: "exact", "hnsw", or "auto": exact below ``EXACT_BELOW`` vectors, else hnsw.
        ef_search: candidates kept while searching by "hnsw" (faiss keeps at least k + 1; more:
            slower, fewer neighbours missed).

    Returns:
        the normalised graph; its ``k`` is the one used (min(k, n - 1), 0 for n <= 1).
    """
    vectors = np.ascontiguousarray(vectors, np.float32)
    n = len(vectors)
    k = max(0, min(int(k), n - 1))
    if method == "auto":
        method = "exact" if n < EXACT_BELOW else "hnsw"
    if method not in ("exact", "hnsw"):
        raise ValueError(f"unknown neighbour search {method!r} (exact, hnsw or auto)")
    neighbours, similarities = _nearest_others(vectors, k, method, ef_search)
    return graph_from_neighbours(neighbours, similarities, gamma, mutual, by_similarity=method != "exact")


def graph_from_neighbours(neighbours: np.ndarray, similarities: np.ndarray, gamma: float = 3.0,
                          mutual: bool = True, by_similarity: bool = False) -> DiffusionGraph:
    """The graph of given neighbour lists (the second half of :func:`knn_graph`).

    Args:
        neighbours: (n, k) int indices of each node's neighbours, self excluded; -1 for none.
        similarities: (n, k) float32 their similarities.
        gamma, mutual: as for :func:`knn_graph`.
        by_similarity: with ``mutual``, decide mutuality by similarity instead of list membership:
            keep (i, j) when j is in i's list and their similarity is at least that of j's last
            (k-th) neighbour, i.e. when i belongs in j's list even if j's search missed it. For exact
            lists this is the same graph, ties at the k-th place aside; for approximate ones it keeps
            the edges whose reverse direction the search missed (and a few whose threshold is low
            because j's own list missed nearer nodes).

    Returns:
        the normalised graph, its ``k`` the lists' width.
    """
    neighbours = np.asarray(neighbours, np.int64)
    similarities = np.asarray(similarities, np.float32)
    n, k = neighbours.shape
    found = neighbours >= 0  # an approximate search may return fewer than k
    if mutual and by_similarity and k:
        last = np.where(found, similarities, np.inf).min(axis=1)
        found &= similarities >= last[np.where(found, neighbours, 0)]
    directed = sparse.csr_array((np.maximum(similarities[found], 0) ** np.float32(gamma),
                                 (np.repeat(np.arange(n), k).reshape(n, k)[found], neighbours[found])),
                                shape=(n, n))
    if by_similarity:
        return graph_from_affinity(directed.maximum(directed.T), k, gamma)
    affinity = directed.minimum(directed.T) if mutual else directed.maximum(directed.T)
    return graph_from_affinity(affinity, k, gamma)


def neighbour_index(vectors: np.ndarray, method: str = "exact", ef_search: int = HNSW_EF_SEARCH) -> faiss.Index:
    """The faiss inner-product index :func:`knn_graph` searches: ``"exact"`` (flat) or ``"hnsw"``, vectors added."""
    if method == "exact":
        index = faiss.IndexFlatIP(vectors.shape[1])
    elif method != "hnsw":
        raise ValueError(f"unknown neighbour search {method!r} (exact or hnsw)")
    else:
        index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = int(ef_search)
    index.add(vectors)
    return index


def _nearest_others(vectors: np.ndarray, k: int, method: str = "exact",
                    ef_search: int = HNSW_EF_SEARCH) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's k nearest others by inner product: ((n, k) int64 indices, -1 where the search
    found too few; (n, k) float32 similarities)."""
    if k == 0:
        return np.zeros((len(vectors), 0), np.int64), np.zeros((len(vectors), 0), np.float32)
    return search_others(neighbour_index(vectors, method, ef_search), vectors, k)


def search_others(index: faiss.Index, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest others of each of ``vectors``, which are ``index``'s vectors in order.

    Returns:
        ((n, k) int64 indices, -1 where the index found too few; (n, k) float32 similarities).
    """
    n = len(vectors)
    neighbours, similarities = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
    for start in range(0, n, SEARCH_CHUNK):
        block = vectors[start:start + SEARCH_CHUNK]
        found, labels = index.search(block, k + 1)
        own = labels == np.arange(start, start + len(block))[:, None]
        own[~own.any(axis=1), -1] = True  # self lost among tied duplicates: drop the (k+1)-th instead
        neighbours[start:start + len(block)] = labels[~own].reshape(-1, k)
        similarities[start:start + len(block)] = found[~own].reshape(-1, k)
    return neighbours, similarities


def pair_affinity(pairs: np.ndarray, weights: np.ndarray, n: int) -> sparse.csr_array:
    """A symmetric affinity from weighted node pairs (e.g. verified matches turned into affinities).

    Combine it with a graph's raw affinity and rebuild, e.g.
    ``graph_from_affinity(graph.affinity.maximum(extra), graph.k, graph.gamma)`` (or ``+`` to add);
    weights should be on the scale of the kNN affinities, ``max(similarity, 0) ** gamma`` in [0, 1].

    Args:
        pairs: (e, 2) int node pairs, either order; pairs (i, i) are ignored.
        weights: (e,) float32 non-negative affinity of each pair; a pair given twice gets the maximum.
        n: number of nodes.

    Returns:
        (n, n) float32 symmetric csr_array.
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    weights = np.asarray(weights, np.float32).reshape(-1)
    keep = pairs[:, 0] != pairs[:, 1]
    rows = np.r_[pairs[keep, 0], pairs[keep, 1]]
    cols = np.r_[pairs[keep, 1], pairs[keep, 0]]
    values = np.r_[weights[keep], weights[keep]]
    order = np.lexsort((values, cols, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    last = np.r_[(rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1]), True] if len(rows) else np.zeros(0, bool)
    return sparse.csr_array((values[last], (rows[last], cols[last])), shape=(n, n))


def graph_from_affinity(affinity, k: int, gamma: float) -> DiffusionGraph:
    """Normalise a symmetric affinity into a diffusion graph: ``S = D^-1/2 A D^-1/2``.

    Args:
        affinity: (n, n) scipy.sparse matrix or array, symmetric and non-negative; the diagonal and
            explicit zeros are dropped. Stored as float32.
        k: neighbours per query seed to record (see :class:`DiffusionGraph`).
        gamma: affinity exponent to record.

    Returns:
        the graph (ValueError when the affinity is not square, symmetric and non-negative).
    """
    coo = sparse.coo_array(affinity, dtype=np.float32)
    if coo.shape[0] != coo.shape[1]:
        raise ValueError("an affinity matrix must be square")
    keep = (coo.row != coo.col) & (coo.data != 0)
    affinity = sparse.csr_array((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=coo.shape)
    affinity.sum_duplicates()
    if np.any(affinity.data < 0) or (affinity != affinity.T).nnz:
        raise ValueError("an affinity matrix must be symmetric and non-negative")
    degree = np.asarray(affinity.sum(axis=1, dtype=np.float64)).reshape(-1)
    scale = np.divide(1.0, np.sqrt(degree), out=np.zeros_like(degree), where=degree > 0)
    rows = np.repeat(np.arange(affinity.shape[0]), np.diff(affinity.indptr))
    pair_scale = scale[rows] * scale[affinity.indices]  # commutative, so S is exactly symmetric
    transition = sparse.csr_array(((affinity.data * pair_scale).astype(np.float32), affinity.indices.copy(),
                                   affinity.indptr.copy()), shape=affinity.shape)
    return DiffusionGraph(affinity, transition, int(k), float(gamma))


def query_seed(scores: np.ndarray, k: int, gamma: float) -> np.ndarray:
    """The query's seed: its ``k`` most similar database nodes, weighted ``max(similarity, 0) ** gamma``.

    Args:
        scores: (n,) float32 inner products of the query with the database nodes, or (q, n) for a
            query made of q vectors (e.g. regions), whose seeds are summed.
        k: nodes per query vector (e.g. the graph's ``k``); ties go to the lower index.
        gamma: affinity exponent (e.g. the graph's ``gamma``).

    Returns:
        y: (n,) float32, zero outside the seeds.
    """
    scores = np.atleast_2d(np.asarray(scores, np.float32))
    seed = np.zeros(scores.shape[1], np.float64)
    for row in scores:
        top = top_indices(row, k)
        seed[top] += np.maximum(row[top], 0).astype(np.float64) ** gamma
    return seed.astype(np.float32)


def diffuse(graph: DiffusionGraph, y: np.ndarray, alpha: float = 0.99, iterations: int = 20, tol: float = 1e-6,
            shortlist: np.ndarray | None = None) -> np.ndarray:
    """Diffusion scores: ``(I - alpha S) f = y`` by conjugate gradient (float64 arithmetic).

    With a ``shortlist`` (truncation, e.g. the top 1000 nodes by the query's similarity) the system
    is restricted to those nodes: ``S`` is cut to the shortlist's rows and columns, not re-normalised,
    and seeds outside the shortlist are dropped, so the shortlist should hold the query's seeds.

    Args:
        graph: the database graph.
        y: (n,) float32 seed (see :func:`query_seed`).
        alpha: in [0, 1): how far scores spread along the graph.
        iterations: most conjugate-gradient iterations (20 is usually enough to rank).
        tol: stop early when the residual is below ``tol * ||y||``.
        shortlist: (t,) int distinct node indices, or None for the whole graph.

    Returns:
        f: (n,) float32 scores, higher is better. Nodes outside the shortlist get exactly 0, which is
        not comparable with the shortlist's scores: rank the shortlist by ``f`` and the rest by other means.
    """
    y = np.asarray(y, np.float64).reshape(-1)
    nodes = np.arange(graph.n) if shortlist is None else np.asarray(shortlist, np.int64).reshape(-1)
    transition = graph.transition if shortlist is None else graph.transition[np.ix_(nodes, nodes)]
    f = np.zeros(graph.n, np.float32)
    f[nodes] = _conjugate_gradient(transition.astype(np.float64), y[nodes, None], alpha, iterations, tol)[:, 0]
    return f


def offline_rows(graph: DiffusionGraph, alpha: float = 0.99, iterations: int = 20, top: int = 100,
                 tol: float = 1e-6) -> sparse.csr_array:
    """Offline diffusion: for every node j, the ``top`` largest scores of ``(I - alpha S) f = e_j``.

    ``(I - alpha S)^-1`` is symmetric, so row j is both the diffusion from j and how much every node
    contributes to j. The unit seeds are solved ``OFFLINE_BATCH`` at a time by a batched conjugate
    gradient in float32; the cost is about ``n * iterations`` sparse products with ``S``.

    Args:
        graph: the database graph.
        alpha, iterations, tol: as for :func:`diffuse`.
        top: entries kept per row (L); ``graph.n`` keeps every non-zero.

    Returns:
        rows: (n, n) float32 csr_array, at most ``top`` non-zeros per row (see :func:`diffuse_offline`).
    """
    n = graph.n
    top = max(0, min(int(top), n))
    rows, cols, values = [], [], []
    for start in range(0, n if top else 0, OFFLINE_BATCH):
        seeds = np.arange(start, min(start + OFFLINE_BATCH, n))
        unit = np.zeros((n, len(seeds)), np.float32)
        unit[seeds, np.arange(len(seeds))] = 1
        solution = _conjugate_gradient(graph.transition, unit, alpha, iterations, tol)
        best = np.argpartition(-solution, top - 1, axis=0)[:top]
        rows.append(np.repeat(seeds, top))
        cols.append(best.T.ravel())
        values.append(np.take_along_axis(solution, best, axis=0).T.ravel())
    result = sparse.csr_array((np.concatenate(values or [np.zeros(0, np.float32)]),
                               (np.concatenate(rows or [np.zeros(0, np.int64)]),
                                np.concatenate(cols or [np.zeros(0, np.int64)]))), shape=(n, n))
    result.eliminate_zeros()
    return result


def diffuse_offline(rows: sparse.csr_array, y: np.ndarray) -> np.ndarray:
    """Diffusion scores from offline rows: ``f = sum_j y_j rows[j]``.

    Args:
        rows: (n, n) float32 csr_array from :func:`offline_rows`.
        y: (n,) float32 seed (see :func:`query_seed`).

    Returns:
        f: (n,) float32 scores, higher is better (0 for nodes no seed's row keeps).
    """
    y = np.asarray(y, np.float32).reshape(-1)
    seeds = np.flatnonzero(y)
    return np.asarray(rows[seeds].T @ y[seeds], np.float32).reshape(-1)


def pool_to_images(f_nodes: np.ndarray, node_image: np.ndarray, n_images: int, how: str = "sum") -> np.ndarray:
    """Image scores from node scores when the graph's nodes are regions.

    Args:
        f_nodes: (m,) float32 node scores (see :func:`diffuse`).
        node_image: (m,) int image of each node, in [0, n_images).
        n_images: number of images.
        how: "sum" adds an image's node scores; "max" takes the best, floored at 0 (exact diffusion
            scores are non-negative).

    Returns:
        (n_images,) float32 scores; 0 for images without nodes.
    """
    f_nodes = np.asarray(f_nodes, np.float32).reshape(-1)
    node_image = np.asarray(node_image, np.int64).reshape(-1)
    if how == "sum":
        return np.bincount(node_image, weights=f_nodes, minlength=n_images).astype(np.float32)
    if how == "max":
        scores = np.zeros(n_images, np.float32)
        np.maximum.at(scores, node_image, f_nodes)
        return scores
    raise ValueError(f"unknown pooling {how!r} (sum or max)")


def _conjugate_gradient(transition: sparse.csr_array, rhs: np.ndarray, alpha: float, iterations: int,
                        tol: float) -> np.ndarray:
    """Solve ``(I - alpha S) X = B`` column by column, all columns at once, from ``X = 0``.

    Args:
        transition: (m, m) sparse symmetric S with spectral radius <= 1 (so the system is positive
            definite for alpha < 1), of rhs's dtype.
        rhs: (m, b) B.
        alpha: in [0, 1).
        iterations: most iterations.
        tol: a column stops once its residual is below ``tol`` times its right-hand side's norm.

    Returns:
        (m, b) X, rhs's dtype.
    """
    solution = np.zeros_like(rhs)
    residual = rhs.copy()
    direction = residual.copy()
    squared = np.einsum("ij,ij->j", residual, residual)
    stop = squared * tol ** 2
    for _ in range(iterations):
        active = squared > stop
        if not active.any():
            break
        product = direction - alpha * (transition @ direction)
        step = np.divide(squared, np.einsum("ij,ij->j", direction, product), out=np.zeros_like(squared),
                         where=active)
        solution += step * direction
        residual -= step * product
        new_squared = np.einsum("ij,ij->j", residual, residual)
        direction = residual + np.divide(new_squared, squared, out=np.zeros_like(squared), where=active) * direction
        squared = new_squared
    return solution
