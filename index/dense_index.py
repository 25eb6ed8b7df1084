"""Dense index of global descriptors, searched by inner product (exact, numpy).

Optionally each image also carries a variable number of region vectors (e.g.
R-MAC regions) for re-ranking: ``regions[region_offsets[i]:region_offsets[i+1]]``.
"""
from __future__ import annotations

import numpy as np

STATE_VERSION = 1


class DenseIndex:
    """(n, d) float32 unit vectors by slot, plus optional per-image region vectors."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.vectors = np.zeros((0, self.dim), np.float32)
        self.region_offsets = np.zeros(1, np.int64)
        self.regions = np.zeros((0, self.dim), np.float32)

    def __len__(self) -> int:
        return len(self.vectors)

    def add(self, vectors: np.ndarray, regions: list[np.ndarray] | None = None) -> None:
        """Append (m, d) vectors and, optionally, each one's (r_i, d) region vectors."""
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        regions = regions if regions is not None else [np.zeros((0, self.dim), np.float32)] * len(vectors)
        if len(regions) != len(vectors):
            raise ValueError("one region array per vector is needed")
        self.vectors = np.concatenate([self.vectors, vectors])
        counts = np.array([len(r) for r in regions], np.int64)
        self.region_offsets = np.r_[self.region_offsets, self.region_offsets[-1] + np.cumsum(counts)]
        self.regions = np.concatenate([self.regions] + [np.asarray(r, np.float32).reshape(-1, self.dim)
                                                        for r in regions])

    def remove(self, slots) -> None:
        """Remove images by slot; the others keep their order."""
        removed = np.zeros(len(self), bool)
        removed[np.asarray(slots, np.int64)] = True
        per_region = np.repeat(removed, np.diff(self.region_offsets))
        self.vectors = self.vectors[~removed]
        self.regions = self.regions[~per_region]
        self.region_offsets = np.r_[0, np.cumsum(np.diff(self.region_offsets)[~removed])].astype(np.int64)

    def scores(self, query: np.ndarray) -> np.ndarray:
        """(n,) float32 inner products with a (d,) query."""
        return self.vectors @ np.asarray(query, np.float32)

    def region_scores(self, query: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """For each slot, the best inner product of ``query`` (d,) or (q, d) with its regions."""
        query = np.asarray(query, np.float32).reshape(-1, self.dim)
        best = np.full(len(slots), -np.inf, np.float32)
        for i, slot in enumerate(slots):
            regions = self.regions[self.region_offsets[slot]:self.region_offsets[slot + 1]]
            if len(regions):
                best[i] = float((regions @ query.T).max())
        return best

    def state_dict(self) -> tuple[dict, dict]:
        return ({"kind": "dense-index", "version": STATE_VERSION, "dim": self.dim, "n_images": len(self)},
                {"vectors": self.vectors, "region_offsets": self.region_offsets, "regions": self.regions})

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict) -> "DenseIndex":
        if meta.get("kind") != "dense-index" or meta.get("version") != STATE_VERSION:
            raise ValueError(f"not a version-{STATE_VERSION} dense index")
        index = cls(int(meta["dim"]))
        vectors, offsets, regions = arrays["vectors"], arrays["region_offsets"], arrays["regions"]
        n = int(meta["n_images"])
        if vectors.shape != (n, index.dim) or offsets.shape != (n + 1,) or offsets[0] != 0 \
                or offsets[-1] != len(regions) or np.any(np.diff(offsets) < 0) or regions.shape[1:] != (index.dim,):
            raise ValueError("dense index arrays are inconsistent")
        index.vectors, index.region_offsets, index.regions = vectors, offsets, regions
        return index
