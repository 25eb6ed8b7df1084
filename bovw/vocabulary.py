"""Visual vocabulary: a hierarchical k-means tree (Nister & Stewenius 2006).

A tree of branching factor ``b`` and depth ``L`` has ``b**L`` words (its leaves).
Depth 1 is a flat k-means vocabulary of ``b`` words, searched exactly.
Level ``l`` (0-based) holds ``b**(l+1)`` centres; child ``j`` of node ``i`` at
that level is centre ``i * b + j``. Nodes trained on fewer than ``b`` points
repeat a centre, leaving some words empty; that is harmless.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from bovw.kmeans import faiss_threads, kmeans, nearest

#: Version of the layout returned by ``VocabularyTree.state_dict``.
STATE_VERSION = 2


@dataclass(frozen=True)
class VocabularyConfig:
    """How a vocabulary is trained.

    Attributes:
        branching: children per node (b).
        depth: levels (L); the vocabulary has ``branching ** depth`` words.
        niter: Lloyd iterations per k-means.
        seed: random seed; training is deterministic given the seed and data.
        max_descriptors: training descriptors sampled (without replacement)
            from the input; 0 uses all.
    """

    branching: int = 10
    depth: int = 5
    niter: int = 20
    seed: int = 0
    max_descriptors: int = 0

    @property
    def n_words(self) -> int:
        return self.branching ** self.depth


def split_node(points: np.ndarray, branching: int, seed: int, niter: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means of one tree node (faiss, one thread): its points split into ``branching`` children.

    Args:
        points: (m, d) float32, m >= 1.
        branching: children (b).
        seed: k-means seed.
        niter: Lloyd iterations.

    Returns:
        (centres (b, d) float32, nearest child of each point (m,) int64 in [0, b)).
    """
    with faiss_threads(1):
        centers = kmeans(points, branching, seed=seed, niter=niter)
        return centers, nearest(points, centers)[1][:, 0]


class VocabularyTree:
    """Hierarchical k-means vocabulary; quantizes descriptors to word ids.

    Args:
        centers: per level l, a (b**(l+1), d) float32 array of centres.
    """

    def __init__(self, centers: list[np.ndarray]):
        if not centers:
            raise ValueError("a vocabulary needs at least one level")
        self._set_layout(np.concatenate([np.asarray(c, dtype=np.float32) for c in centers]), len(centers[0]),
                         len(centers))
        for level, level_centers in enumerate(centers):
            expected = (self.branching ** (level + 1), self.dim)
            if level_centers.shape != expected:
                raise ValueError(f"level {level} centres have shape {level_centers.shape}, "
                                 f"expected {expected}")
        self._sq_norms = np.einsum("ij,ij->i", self._all_centers, self._all_centers)

    def _set_layout(self, all_centers: np.ndarray, branching: int, depth: int) -> None:
        """All levels in one (sum_l b^(l+1), d) array (the descent kernel's layout); ``centers`` are
        views of it, so a memory-mapped vocabulary is never copied."""
        self.branching, self.depth, self.dim = int(branching), int(depth), all_centers.shape[1]
        sizes = [self.branching ** (level + 1) for level in range(self.depth)]
        if len(all_centers) != sum(sizes):
            raise ValueError(f"{len(all_centers)} centres cannot make a {self.branching}^{self.depth} tree")
        self._all_centers = all_centers
        self._level_starts = np.cumsum([0] + sizes[:-1]).astype(np.int64)
        self.centers = [all_centers[start:start + size] for start, size in zip(self._level_starts, sizes)]

    @property
    def n_words(self) -> int:
        return self.branching ** self.depth

    @classmethod
    def train(cls, descriptors: np.ndarray, config: VocabularyConfig = VocabularyConfig(),
              verbose: bool | None = True, n_jobs: int = -1) -> "VocabularyTree":
        """Train level by level: each node's points are split by k-means into b children.

        The nodes of a level are independent ``split_node`` calls run by joblib: in threads by
        default, each running faiss single-threaded (per-node problems are small, and faiss's own
        OpenMP threads on a busy 2-core machine cost up to 20x, benchmarks/RESULTS.md); on a Dask
        cluster's workers inside ``joblib.parallel_config(backend="dask")`` (``cbir.distributed``).
        Each node's seed depends on the seed, level and node only, so the result depends on
        neither ``n_jobs`` nor where the nodes ran.

        Args:
            descriptors: (n, d) float32 training descriptors.
            config: tree shape and training settings.
            verbose: progress bar over the nodes of each level (None: only on a terminal).
            n_jobs: joblib workers (-1: every core, or every thread of the cluster).
        """
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if len(descriptors) == 0:
            raise ValueError("no training descriptors")
        rng = np.random.default_rng(config.seed)
        if 0 < config.max_descriptors < len(descriptors):
            keep = np.sort(rng.choice(len(descriptors), config.max_descriptors, replace=False))
            descriptors = descriptors[keep]
        b = config.branching
        node_of_point = np.zeros(len(descriptors), dtype=np.int64)
        centers = []
        for level in range(config.depth):
            n_nodes = b ** level
            order = np.argsort(node_of_point, kind="stable")
            bounds = np.searchsorted(node_of_point[order], np.arange(n_nodes + 1))
            parents = centers[-1] if centers else descriptors.mean(axis=0, keepdims=True)
            level_centers = np.repeat(parents, b, axis=0)  # a node without points repeats its parent
            child_of_point = np.zeros(len(descriptors), dtype=np.int64)
            nodes = [node for node in range(n_nodes) if bounds[node] < bounds[node + 1]]
            splits = Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")(
                delayed(split_node)(descriptors[order[bounds[node]:bounds[node + 1]]], b,
                                    (config.seed * 1_000_003 + level * 7919 + node) % (2 ** 31), config.niter)
                for node in nodes)
            for node, (node_centers, nearest_child) in tqdm(
                    zip(nodes, splits), total=len(nodes), leave=False, mininterval=1.0,
                    disable=None if verbose is None else not verbose, desc=f"vocabulary level {level + 1}/{config.depth}"):
                level_centers[node * b:(node + 1) * b] = node_centers
                child_of_point[order[bounds[node]:bounds[node + 1]]] = node * b + nearest_child
            centers.append(level_centers.astype(np.float32))
            node_of_point = child_of_point
        return cls(centers)

    def quantize(self, descriptors: np.ndarray, k: int = 1, beam: int = 0, n_jobs: int = 1) -> np.ndarray:
        """Assign each descriptor to its ``k`` nearest words by descending the tree.

        At each level the ``max(k, beam)`` best nodes are kept (beam search);
        ``k=1, beam=0`` is the classic greedy descent. A depth-1 vocabulary is
        searched exactly.

        Args:
            descriptors: (n, d) float32.
            k: words per descriptor (multiple assignment when > 1).
            beam: nodes kept per level; wider beams agree more often with
                exact nearest-word assignment, at a proportional cost.
            n_jobs: threads, each descending a share of the descriptors.

        Returns:
            (n, k) int64 word ids, nearest first (or (n,) when k == 1).
        """
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if descriptors.ndim != 2 or descriptors.shape[1] != self.dim:
            raise ValueError(f"descriptors of shape {descriptors.shape} do not fit a "
                             f"{self.dim}-d vocabulary")
        if not 1 <= k <= self.n_words:
            raise ValueError(f"k={k} must be between 1 and {self.n_words}")
        def descend(part: np.ndarray) -> np.ndarray:
            return _descend(part, self._all_centers, self._level_starts, self._sq_norms, self.branching,
                            self.depth, max(k, beam))[:, :k]

        parts = np.array_split(descriptors, max(1, min(n_jobs, len(descriptors) // 1000)))
        if len(parts) == 1:  # the usual query: no thread pool to start
            words = descend(descriptors)
        else:
            with ThreadPoolExecutor(len(parts)) as pool:  # the kernel releases the GIL
                words = np.concatenate(list(pool.map(descend, parts)))
        return words[:, 0] if k == 1 else words

    def state_dict(self) -> tuple[dict, dict]:
        """(metadata, arrays) describing the tree; see ``from_state_dict``."""
        meta = {"kind": "vocabulary-tree", "version": STATE_VERSION,
                "branching": self.branching, "depth": self.depth, "dim": self.dim}
        return meta, {"centers": self._all_centers, "squared_norms": self._sq_norms}

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict) -> "VocabularyTree":
        """Rebuild a tree from ``state_dict()`` output (version 1: one array per level, or 2: all
        levels in one array with their squared norms, used as given, e.g. memory-mapped),
        checking its consistency."""
        if meta.get("kind") != "vocabulary-tree":
            raise ValueError(f"not a vocabulary tree (kind={meta.get('kind')!r})")
        if meta.get("version") not in (1, STATE_VERSION):
            raise ValueError(f"vocabulary version {meta.get('version')} is not supported "
                             f"(this engine reads versions 1 and {STATE_VERSION})")
        try:
            if meta["version"] == 1:
                tree = cls([arrays[f"centers_{level}"] for level in range(int(meta["depth"]))])
            else:
                tree = cls.__new__(cls)
                tree._set_layout(arrays["centers"], meta["branching"], meta["depth"])
                tree._sq_norms = arrays["squared_norms"]
                if tree._all_centers.dtype != np.float32 or tree._sq_norms.dtype != np.float32 \
                        or tree._sq_norms.shape != (len(tree._all_centers),):
                    raise ValueError("vocabulary centres and norms do not match")
        except KeyError as exc:
            raise ValueError(f"vocabulary is missing array {exc}") from exc
        if tree.branching != meta["branching"] or tree.dim != meta["dim"]:
            raise ValueError("vocabulary metadata does not match its arrays")
        return tree


@numba.njit(cache=True, nogil=True, fastmath=True)
def _descend(x, centers, level_starts, sq_norms, b, depth, width):
    """Beam descent of every descriptor: the ``width`` best nodes of each level are expanded.

    Args:
        x: (n, d) float32 descriptors.
        centers: (sum_l b**(l+1), d) float32 centres of all levels, level by level.
        level_starts: (depth,) int64 first row of each level in ``centers``.
        sq_norms: (rows,) float32 squared norms of ``centers``.
        b, depth, width: branching, levels, nodes kept per level.

    Returns:
        (n, width) int64 leaf ids, nearest first (ties in candidate order).
    """
    n, d = x.shape
    out = np.empty((n, width), np.int64)
    nodes = np.zeros(width, np.int64)
    best = np.empty(width, np.int64)
    best_sq = np.empty(width, np.float32)
    for r in range(n):
        n_nodes = 1
        nodes[0] = 0
        for level in range(depth):
            kept = 0
            for a in range(n_nodes):
                for j in range(b):
                    child = nodes[a] * b + j if level > 0 else j
                    row = level_starts[level] + child
                    dot = np.float32(0.0)
                    for t in range(d):
                        dot += x[r, t] * centers[row, t]
                    value = sq_norms[row] - np.float32(2.0) * dot
                    if kept == width and value >= best_sq[width - 1]:
                        continue
                    # Insert after equal values (stable); a full list drops its worst.
                    p = kept if kept < width else width - 1
                    while p > 0 and best_sq[p - 1] > value:
                        if p < width:
                            best_sq[p] = best_sq[p - 1]
                            best[p] = best[p - 1]
                        p -= 1
                    best_sq[p] = value
                    best[p] = child
                    if kept < width:
                        kept += 1
            n_nodes = kept
            nodes[:kept] = best[:kept]
        for a in range(width):
            out[r, a] = nodes[min(a, n_nodes - 1)]
    return out
