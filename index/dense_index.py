"""Dense index of global descriptors, searched by inner product (exact, numpy).

Optionally each image also carries a variable number of region vectors (e.g.
R-MAC regions) for re-ranking: ``regions[region_offsets[i]:region_offsets[i+1]]``.

Adding is amortised linear: new vectors wait in a pending list and are joined
once, by ``consolidate()`` or the first read (the owning index consolidates under
its write lock, so concurrent readers never find pending work).
"""
from __future__ import annotations

import numpy as np

STATE_VERSION = 1


class DenseIndex:
    """(n, d) float32 unit vectors by slot, plus optional per-image region vectors."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self._n = 0
        self._vectors = np.zeros((0, self.dim), np.float32)
        self._region_offsets = np.zeros(1, np.int64)
        self._regions = np.zeros((0, self.dim), np.float32)
        self._pending: list[tuple] = []

    def __len__(self) -> int:
        return self._n

    @property
    def pending(self) -> bool:
        """Whether vectors were added since the arrays were last joined."""
        return bool(self._pending)

    @property
    def vectors(self) -> np.ndarray:
        """(n, d) float32 unit vectors."""
        self.consolidate()
        return self._vectors

    @property
    def region_offsets(self) -> np.ndarray:
        """(n + 1,) int64 offsets of each image's regions."""
        self.consolidate()
        return self._region_offsets

    @property
    def regions(self) -> np.ndarray:
        """(r, d) float32 region vectors of all images."""
        self.consolidate()
        return self._regions

    def add(self, vectors: np.ndarray, regions: list[np.ndarray] | None = None) -> None:
        """Append (m, d) vectors and, optionally, each one's (r_i, d) region vectors."""
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        regions = regions if regions is not None else [np.zeros((0, self.dim), np.float32)] * len(vectors)
        if len(regions) != len(vectors):
            raise ValueError("one region array per vector is needed")
        counts = np.array([len(r) for r in regions], np.int64)
        self._pending.append((vectors, counts, np.concatenate(
            [np.asarray(r, np.float32).reshape(-1, self.dim) for r in regions] or [self._regions[:0]])))
        self._n += len(vectors)

    def consolidate(self) -> None:
        """Join the pending vectors to the arrays (one concatenation for any number of adds)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        counts = np.concatenate([p[1] for p in pending])
        self._vectors = np.concatenate([self._vectors] + [p[0] for p in pending])
        self._region_offsets = np.r_[self._region_offsets, self._region_offsets[-1] + np.cumsum(counts)]
        self._regions = np.concatenate([self._regions] + [p[2] for p in pending])

    @classmethod
    def concatenate(cls, indexes: list["DenseIndex"]) -> "DenseIndex":
        """One dense index holding the vectors and regions of ``indexes`` in order (ValueError if their
        dimensions differ)."""
        if len({index.dim for index in indexes}) != 1:
            raise ValueError("only dense indexes of one dimension can be concatenated")
        merged = cls(indexes[0].dim)
        for index in indexes:
            if len(index):
                merged._pending.append((index.vectors, np.diff(index.region_offsets), index.regions))
                merged._n += len(index)
        merged.consolidate()
        return merged

    def remove(self, slots) -> None:
        """Remove images by slot; the others keep their order."""
        self.consolidate()
        removed = np.zeros(len(self), bool)
        removed[np.asarray(slots, np.int64)] = True
        per_region = np.repeat(removed, np.diff(self._region_offsets))
        self._vectors = self._vectors[~removed]
        self._regions = self._regions[~per_region]
        self._region_offsets = np.r_[0, np.cumsum(np.diff(self._region_offsets)[~removed])].astype(np.int64)
        self._n = len(self._vectors)

    def vectors_of(self, slots: np.ndarray) -> np.ndarray:
        """(len(slots), d) float32 vectors of the images ``slots``."""
        return self.vectors[np.asarray(slots, np.int64)]

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
        """(metadata, arrays) for persistence."""
        return ({"kind": "dense-index", "version": STATE_VERSION, "dim": self.dim, "n_images": len(self)},
                {"vectors": self.vectors, "region_offsets": self.region_offsets, "regions": self.regions})

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict) -> "DenseIndex":
        """Rebuild from ``state_dict()`` output (ValueError when inconsistent)."""
        if meta.get("kind") != "dense-index" or meta.get("version") != STATE_VERSION:
            raise ValueError(f"not a version-{STATE_VERSION} dense index")
        index = cls(int(meta["dim"]))
        vectors, offsets, regions = arrays["vectors"], arrays["region_offsets"], arrays["regions"]
        n = int(meta["n_images"])
        if vectors.shape != (n, index.dim) or offsets.shape != (n + 1,) or offsets[0] != 0 \
                or offsets[-1] != len(regions) or np.any(np.diff(offsets) < 0) or regions.shape[1:] != (index.dim,):
            raise ValueError("dense index arrays are inconsistent")
        index._vectors, index._region_offsets, index._regions = vectors, offsets, regions
        index._n = n
        return index
