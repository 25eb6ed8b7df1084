"""PCA whitening of descriptors (learned on one dataset, applied to another)."""
from __future__ import annotations

import numpy as np

from cnn.pooling import l2_normalize

STATE_VERSION = 1


class PCAWhitening:
    """``x -> l2((x - mean) @ projection)``, projection = top eigenvectors / sqrt(eigenvalues).

    Args:
        mean: (d,) float32.
        projection: (d, k) float32.
    """

    def __init__(self, mean: np.ndarray, projection: np.ndarray):
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

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(n, d) -> (n, k) float32 whitened and L2-normalised."""
        return l2_normalize((np.asarray(x, np.float32) - self.mean) @ self.projection)

    def state_dict(self) -> tuple[dict, dict]:
        return ({"kind": "pca-whitening", "version": STATE_VERSION},
                {"mean": self.mean, "projection": self.projection})

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict) -> "PCAWhitening":
        if meta.get("kind") != "pca-whitening" or meta.get("version") != STATE_VERSION:
            raise ValueError(f"not a version-{STATE_VERSION} PCA whitening")
        return cls(arrays["mean"], arrays["projection"])
