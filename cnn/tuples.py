"""Training tuples (query, positive, N negatives) from verified pairs, re-mined every epoch.

Images are numbered 0..n-1. ``pairs`` (m, 2) are verified positive pairs;
``components`` (n,) the connected component of each image in the verification graph
(cirtorch's "3D model" clusters): images of another component are negatives. With
``hard=True`` the negatives of a query are the images nearest to it in the current
descriptor space, at most one per component (cirtorch's rule: N different objects
rather than N views of one); otherwise random images of distinct other components.
Pure numpy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Tuples:
    """T training tuples, as image numbers.

    Attributes:
        queries: (T,) int64.
        positives: (T,) int64, verified with their query.
        negatives: (T, N) int64, each in another component than its query, all in distinct components.
    """

    queries: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, rows: np.ndarray) -> "Tuples":
        return Tuples(self.queries[rows], self.positives[rows], self.negatives[rows])


def directed_pairs(pairs: np.ndarray) -> np.ndarray:
    """(m, 2) undirected pairs -> (2m, 2) (query, positive) rows, both directions."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    return np.concatenate([pairs, pairs[:, ::-1]])


def hardest_positives(descriptors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """One (query, positive) row per image with a verified partner: the partner farthest from
    it in descriptor space (a "hard positive").

    Args:
        descriptors: (n, k) unit rows.
        pairs: (m, 2) verified pairs.
    """
    rows = directed_pairs(pairs)
    similarity = np.einsum("ij,ij->i", descriptors[rows[:, 0]], descriptors[rows[:, 1]])
    order = np.lexsort((similarity, rows[:, 0]))  # by query, then most dissimilar first
    rows, queries = rows[order], rows[order, 0]
    first = np.r_[True, queries[1:] != queries[:-1]]
    return rows[first]


def negatives_for(descriptors: np.ndarray, queries: np.ndarray, components: np.ndarray, count: int,
                  hard: bool = True, rng: np.random.Generator | None = None, chunk: int = 512) -> np.ndarray:
    """(len(queries), count) negatives: images of other components than the query's, one per component.

    Args:
        descriptors: (n, k) unit rows (used when ``hard``).
        queries: (T,) image numbers.
        components: (n,) component of every image.
        count: N negatives per query (ValueError when fewer other components exist).
        hard: nearest first (True) or at random (False, needs ``rng``).
    """
    components = np.asarray(components, np.int64)
    n_components = len(np.unique(components))
    if n_components - 1 < count:
        raise ValueError(f"{count} negatives per query need {count + 1} components; there are {n_components}")
    queries = np.asarray(queries, np.int64)
    out = np.empty((len(queries), count), np.int64)
    for start in range(0, len(queries), chunk):
        block = queries[start:start + chunk]
        if hard:
            scores = descriptors[block] @ descriptors.T
        else:
            scores = rng.random((len(block), len(components)))
        scores[components[None, :] == components[block][:, None]] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")
        for row, ranked in enumerate(order):
            # first (best) image of each component, the best `count` of those
            _, first = np.unique(components[ranked], return_index=True)
            out[start + row] = ranked[np.sort(first)[:count]]
    return out


def epoch_tuples(descriptors: np.ndarray, pairs: np.ndarray, components: np.ndarray, negatives: int,
                 rng: np.random.Generator, hard_negatives: bool = True, hard_positives: bool = False,
                 max_tuples: int | None = None) -> Tuples:
    """The tuples of one epoch, shuffled.

    Args:
        descriptors: (n, k) descriptors of all images by the current network.
        pairs: (m, 2) verified pairs.
        components: (n,) component per image.
        negatives: N per tuple.
        rng: shuffling (and random negatives).
        hard_negatives: nearest negatives (else random ones).
        hard_positives: one tuple per query image, with its farthest verified partner
            (else one tuple per pair and direction).
        max_tuples: keep a random subset of at most this many.
    """
    rows = hardest_positives(descriptors, pairs) if hard_positives else directed_pairs(pairs)
    rows = rows[rng.permutation(len(rows))]
    if max_tuples is not None:
        rows = rows[:max_tuples]
    negs = negatives_for(descriptors, rows[:, 0], components, negatives, hard_negatives, rng)
    return Tuples(rows[:, 0].copy(), rows[:, 1].copy(), negs)
