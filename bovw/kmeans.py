"""Flat k-means (faiss), the building block of the vocabulary tree.

faiss was chosen by measurement over scikit-learn and FLANN: see
``benchmarks/RESULTS.md`` (vocabulary libraries).
"""
from __future__ import annotations

import contextlib

import faiss
import numpy as np


@contextlib.contextmanager
def faiss_threads(count: int):
    """Run faiss with ``count`` OpenMP threads in the calling thread, then restore its setting.

    The vocabulary tree parallelises over tree nodes with Python threads, each
    running a one-thread faiss k-means: nested OpenMP teams oversubscribe the cores.
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 20,
           max_points_per_centroid: int = 256) -> np.ndarray:
    """Lloyd's k-means with k-means++-free random initialisation (faiss).

    With fewer points than ``k``, every point becomes a centroid and the rest
    repeat the first point (their cells stay empty: ties go to the lowest index).

    Args:
        x: (n, d) float32 training vectors, n >= 1.
        k: number of centroids.
        seed: random seed (initialisation and sub-sampling).
        niter: Lloyd iterations.
        max_points_per_centroid: faiss sub-samples to k * this many points.

    Returns:
        (k, d) float32 centroids.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) == 0:
        raise ValueError("k-means needs at least one training vector")
    if len(x) <= k:
        pad = np.repeat(x[:1], k - len(x), axis=0)
        return np.concatenate([x, pad]).astype(np.float32)
    params = faiss.ClusteringParameters()
    params.niter = niter
    params.seed = seed
    params.min_points_per_centroid = 1
    params.max_points_per_centroid = max_points_per_centroid
    params.verbose = False
    clustering = faiss.Clustering(x.shape[1], k, params)
    index = faiss.IndexFlatL2(x.shape[1])
    clustering.train(x, index)
    return faiss.vector_to_array(clustering.centroids).reshape(k, x.shape[1]).astype(np.float32)


def nearest(x: np.ndarray, centroids: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest centroids of each row of ``x`` (faiss flat L2 search).

    Args:
        x: (n, d) float32.
        centroids: (m, d) float32.
        k: neighbours per vector (k <= m).

    Returns:
        (distances (n, k) float32 squared L2, indices (n, k) int64), nearest first.
    """
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(np.ascontiguousarray(x, dtype=np.float32), k)
