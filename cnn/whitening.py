"""Whitening of descriptors (learned on one dataset, applied to another): PCA whitening, or
learned whitening (Lw, Radenović et al. 2016) from matching pairs. Both are a linear map
``x -> l2((x - mean) @ projection)`` and share one class, so whatever applies one applies the other."""
from __future__ import annotations

import numpy as np

from cnn.pooling import l2_normalize

STATE_VERSION = 1
#: How a whitening was learned (``PCAWhitening.method``); saved in the state's meta only when not "pca",
#: so states saved before Lw existed load unchanged, as "pca".
METHODS = ("pca", "learned")


class PCAWhitening:
    """``x -> l2((x - mean) @ projection)``, projection = top eigenvectors / sqrt(eigenvalues).

    Args:
        mean: (d,) float32.
        projection: (d, k) float32.
        method: ``"pca"`` (:meth:`learn`) or ``"learned"`` (:meth:`learn_from_pairs`); applying
            does not depend on it.
    """

    def __init__(self, mean: np.ndarray, projection: np.ndarray, method: str = "pca"):
        if method not in METHODS:
            raise ValueError(f"unknown whitening method {method!r}; known: {', '.join(METHODS)}")
        self.method = method
        self.mean = np.asarray(mean, np.float32)
        self.projection = np.asarray(projection, np.float32)
        if self.mean.ndim != 1 or self.projection.ndim != 2 or self.projection.shape[0] != len(self.mean):
            raise ValueError(f"whitening mean {self.mean.shape} and projection {self.projection.shape} disagree")

    @property
    def input_dim(self) -> int:
        return len(self.mean)

    @property
    def output_dim(self) -> int:
        return self.projection.shape[1]

    @classmethod
    def learn(cls, x: np.ndarray, dim: int | None = None, eps: float = 1e-6) -> "PCAWhitening":
        """Learn from (n, d) L2-normalised training vectors, keeping ``dim`` components
        (default: all, at most n - 1); eigenvalues below ``eps`` times the largest are clamped."""
        x = np.asarray(x, np.float64)
        if len(x) < 2:
            raise ValueError("PCA whitening needs at least 2 training vectors")
        mean = x.mean(axis=0)
        covariance = np.cov(x - mean, rowvar=False)
        values, vectors = np.linalg.eigh(covariance)
        order = np.argsort(values)[::-1]
        keep = min(dim or x.shape[1], x.shape[1], len(x) - 1)
        values, vectors = values[order[:keep]], vectors[:, order[:keep]]
        values = np.maximum(values, eps * values[0])
        return cls(mean.astype(np.float32), (vectors / np.sqrt(values)).astype(np.float32))

    @classmethod
    def learn_from_pairs(cls, x: np.ndarray, pairs: np.ndarray, dim: int | None = None, eps: float = 1e-2,
                         population: np.ndarray | None = None) -> "PCAWhitening":
        """Learned whitening (Lw; Radenović, Tolias, Chum, CVPR 2016; cirtorch ``whitenlearn``).

        Matching vectors should coincide and the rest spread: with ``S`` the covariance of the
        matching-pair differences ``x[i] - x[j]`` and ``P1 = S^-1/2``, the pairs' differences
        get identity covariance; then PCA of ``P1 (v - mean)`` over the population (a rotation,
        no further scaling, as in cirtorch) orders the directions by how much the population
        still varies along them, and the top ``dim`` are kept. Projection: ``P1 @ eigvecs[:, :dim]``.

        cirtorch inverts the Cholesky factor of ``S``; any ``P1`` with ``P1 S P1^T = I`` gives the
        same result up to the signs of the kept directions, and the inverse square root lets
        eigenvalues of ``S`` below ``eps`` times the largest be clamped: with fewer pairs than
        dimensions ``S`` is singular, and unconstrained directions would otherwise be amplified
        without bound.

        Args:
            x: (n, d) L2-normalised vectors the pairs index into.
            pairs: (m, 2) int indices of matching vectors (e.g. ``MinedPairs.pairs``).
            dim: components kept (default: all d).
            eps: eigenvalues of ``S`` are clamped at ``eps`` times the largest (amplification
                at most ``eps ** -0.5`` relative to the most variable difference direction).
            population: (N, d) vectors the mean and the PCA step are taken over (default: ``x``);
                e.g. all R-MAC region vectors while ``x`` holds the per-image vectors.

        Returns:
            a whitening with ``method == "learned"`` (applied like any other).
        """
        x = np.asarray(x, np.float64)
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        if len(pairs) < 1:
            raise ValueError("learned whitening needs at least one matching pair")
        if pairs.min() < 0 or pairs.max() >= len(x):
            raise ValueError(f"pair indices must lie in [0, {len(x)}) (the rows of x)")
        population = x if population is None else np.asarray(population, np.float64)
        if population.ndim != 2 or population.shape[1] != x.shape[1] or len(population) < 2:
            raise ValueError(f"population {population.shape} must hold at least 2 vectors of x's {x.shape[1]} dims")
        differences = x[pairs[:, 0]] - x[pairs[:, 1]]
        values, vectors = np.linalg.eigh(differences.T @ differences / len(differences))
        values = np.maximum(values, eps * max(values[-1], 1e-30))
        inverse_root = (vectors / np.sqrt(values)) @ vectors.T  # S^-1/2, symmetric
        mean = population.mean(axis=0)
        whitened = (population - mean) @ inverse_root
        values, vectors = np.linalg.eigh(whitened.T @ whitened / len(whitened))
        keep = min(dim or x.shape[1], x.shape[1])
        vectors = vectors[:, np.argsort(values)[::-1][:keep]]
        return cls(mean.astype(np.float32), (inverse_root @ vectors).astype(np.float32), method="learned")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(n, d) -> (n, k) float32 whitened and L2-normalised."""
        return l2_normalize((np.asarray(x, np.float32) - self.mean) @ self.projection)

    def state_dict(self) -> tuple[dict, dict]:
        meta = {"kind": "pca-whitening", "version": STATE_VERSION}
        if self.method != "pca":
            meta["method"] = self.method
        return meta, {"mean": self.mean, "projection": self.projection}

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict) -> "PCAWhitening":
        if meta.get("kind") != "pca-whitening" or meta.get("version") != STATE_VERSION:
            raise ValueError(f"not a version-{STATE_VERSION} PCA whitening")
        return cls(arrays["mean"], arrays["projection"], meta.get("method", "pca"))


def mutual_nearest_rows(rows: list[np.ndarray], pairs: np.ndarray) -> np.ndarray:
    """Row pairs for a regional Lw: for each matching image pair, its region vectors that are each
    other's nearest (by inner product).

    Args:
        rows: per image, (r_i, d) L2-normalised region vectors.
        pairs: (m, 2) matching image numbers.

    Returns:
        (p, 2) int64 indices into ``np.concatenate(rows)``.
    """
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    found = [np.zeros((0, 2), np.int64)]
    for i, j in np.asarray(pairs, np.int64).reshape(-1, 2):
        similarity = rows[i] @ rows[j].T
        forward, backward = similarity.argmax(axis=1), similarity.argmax(axis=0)
        mutual = np.flatnonzero(backward[forward] == np.arange(len(forward)))
        found.append(np.stack([offsets[i] + mutual, offsets[j] + forward[mutual]], axis=1))
    return np.concatenate(found)


def regional_learned_whitening(rows: list[np.ndarray], pairs: np.ndarray, eps: float = 1e-2, dim: int | None = None,
                                population: int | None = None, seed: int = 0) -> PCAWhitening:
    """Lw of the regions of images, R-MAC's region vectors or the conv-map positions of local
    features: the pair differences are those of the mutually nearest regions of each matching
    image pair, the PCA step runs over every region, or over ``population`` of them sampled with
    ``seed`` (``PCAWhitening.learn_from_pairs``).

    Args:
        rows: per image, (r_i, d) L2-normalised region vectors.
        pairs: (m, 2) matching image numbers.
        eps: eigenvalue floor, as in ``learn_from_pairs``.
        dim: components kept (default: all d).
        population: regions the PCA step samples (default: all; bounds memory for local features).
    """
    regions = np.concatenate(rows)
    matched = mutual_nearest_rows(rows, pairs)
    sample = regions if population is None or population >= len(regions) else \
        regions[np.random.default_rng(seed).choice(len(regions), population, replace=False)]
    # learn_from_pairs copies its x to float64: give it the matched rows only (two per match), not every region.
    return PCAWhitening.learn_from_pairs(regions[matched.ravel()], np.arange(2 * len(matched)).reshape(-1, 2), dim,
                                         eps, population=sample)
