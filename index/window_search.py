"""BLCF local search (Mohedano et al. 2016): localise the query's words in a
database image's word-assignment map and score the best window.

Features must lie on a regular grid (conv-map positions): keypoint (x, y) at
``((col + 0.5) * stride, (row + 0.5) * stride)``. Per database image, integral
images of each of its words give every window's bag of words in O(1); the
window score is the cosine of L2-normalised tf-idf vectors, as for whole images.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from index.image_store import ImageStore


def candidate_windows(height: int, width: int, steps: int = 5, min_fraction: float = 1 / 3) -> np.ndarray:
    """Windows (y0, x0, y1, x1), end-exclusive, of ``steps`` heights x ``steps`` widths
    (from ``min_fraction`` of the map to all of it) at a stride of a third of their size."""
    windows = []
    for h in np.unique(np.linspace(max(1, round(height * min_fraction)), height, steps).round().astype(int)):
        for w in np.unique(np.linspace(max(1, round(width * min_fraction)), width, steps).round().astype(int)):
            for y0 in range(0, height - h + 1, max(1, h // 3)):
                for x0 in range(0, width - w + 1, max(1, w // 3)):
                    windows.append((y0, x0, y0 + h, x0 + w))
    return np.asarray(windows, dtype=np.int64).reshape(-1, 4)


def best_window(query_words: np.ndarray, query_values: np.ndarray, idf: np.ndarray,
                keypoints: np.ndarray, words: np.ndarray, steps: int = 5,
                min_fraction: float = 1 / 3) -> tuple[float, tuple[int, int, int, int] | None]:
    """The window of one image most similar to the query, and its cosine similarity.

    Args:
        query_words: (u,) unique word ids of the query's tf-idf vector.
        query_values: (u,) its L2-normalised values.
        idf: (n_words,) idf of the collection.
        keypoints: (n, 4) grid keypoints of the image (x, y, stride, 0).
        words: (n,) word of each position.
        steps: window sizes per axis.
        min_fraction: smallest window side, as a fraction of the map's side.

    Returns:
        (best window score, its (y0, x0, y1, x1) end-exclusive in map cells), (0, None) when the
        image has no features.
    """
    if len(words) == 0:
        return 0.0, None
    stride = float(keypoints[0, 2])
    cols = np.floor(keypoints[:, 0] / stride).astype(np.int64)
    rows = np.floor(keypoints[:, 1] / stride).astype(np.int64)
    height, width = int(rows.max()) + 1, int(cols.max()) + 1
    unique, inverse = np.unique(words, return_inverse=True)
    counts = np.zeros((len(unique), height + 1, width + 1), np.float64)
    np.add.at(counts, (inverse, rows + 1, cols + 1), 1.0)
    integral = counts.cumsum(axis=1).cumsum(axis=2)
    windows = candidate_windows(height, width, steps, min_fraction)
    y0, x0, y1, x1 = windows.T
    in_window = integral[:, y1, x1] - integral[:, y0, x1] - integral[:, y1, x0] + integral[:, y0, x0]
    weighted = in_window * idf[unique][:, None]
    norms = np.linalg.norm(weighted, axis=0)
    query = np.zeros(len(unique))
    common, q_index, u_index = np.intersect1d(query_words, unique, return_indices=True)
    query[u_index] = query_values[q_index]
    dots = query @ weighted
    scores = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    best = int(scores.argmax())
    return float(scores[best]), tuple(int(v) for v in windows[best])


def window_rerank(ranking: list, query_vector: tuple[np.ndarray, np.ndarray], idf: np.ndarray,
                  images: ImageStore, top: int) -> list:
    """BLCF local search: the top ``top`` entries re-scored by their best window, re-sorted.

    Args:
        ranking: ``index.reranking.RankedImage`` list, best first.
        query_vector: (words (u,), values (u,)) L2-normalised tf-idf vector of the query.
        idf: (n_words,) idf of the collection.
        images: keypoints (grid positions) and words of the database images.
        top: entries re-scored.

    Returns:
        the re-scored head, by decreasing score (ties keep their order), then the rest unchanged.
    """
    def window_score(slot: int) -> float:
        return best_window(*query_vector, idf, *images.features(slot))[0]
    head = [dataclasses.replace(e, score=max(e.score, window_score(e.slot))) for e in ranking[:top]]
    head.sort(key=lambda e: -e.score)
    return head + ranking[top:]
