"""Spatially verified image pairs of a collection, kept in step with its slots.

A fusion index verifies each image it adds against the collection (its SIFT part's
homography re-ranking) and keeps the pairs with enough inliers; they become edges of
the CNN part's diffusion graph ("verified edges"). Removing images drops their pairs
and renumbers the rest, as the index renumbers its slots.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from index.diffusion import pair_affinity

STATE_VERSION = 1


def strongest_pairs(first, second, inliers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unordered pairs from directed verifications (a -> b and b -> a are one pair), each pair
    keeping its verification with the most inliers; self pairs are dropped.

    Args:
        first, second: (e,) int image slots of each verification.
        inliers: (e,) int inliers of each.

    Returns:
        pairs (m, 2) int64 with i < j, sorted by (i, j); inliers (m,) int32; source (m,) int64, the
        input row each pair's count comes from (to carry other per-verification values along).
    """
    first, second = np.asarray(first, np.int64).reshape(-1), np.asarray(second, np.int64).reshape(-1)
    inliers = np.asarray(inliers, np.int64).reshape(-1)
    rows = np.flatnonzero(first != second)
    low, high = np.minimum(first[rows], second[rows]), np.maximum(first[rows], second[rows])
    order = np.lexsort((-inliers[rows], high, low))  # by pair, most inliers first
    low, high, rows = low[order], high[order], rows[order]
    keep = np.r_[True, (low[1:] != low[:-1]) | (high[1:] != high[:-1])] if len(rows) else np.zeros(0, bool)
    return np.stack([low[keep], high[keep]], axis=1), inliers[rows[keep]].astype(np.int32), rows[keep]


@dataclass
class VerifiedPairs:
    """Unordered image pairs with their inlier counts.

    Attributes:
        pairs: (e, 2) int64 slot pairs, i < j, each pair once, sorted.
        inliers: (e,) int32 inliers of each pair (the larger of the two directions verified).
    """

    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    inliers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    def __len__(self) -> int:
        return len(self.pairs)

    def add(self, pairs: np.ndarray, inliers: np.ndarray) -> None:
        """Add pairs in either order (self pairs are ignored); a pair seen again keeps its largest count.

        Args:
            pairs: (e, 2) int slot pairs.
            inliers: (e,) int inlier counts.
        """
        pairs = np.concatenate([self.pairs, np.asarray(pairs, np.int64).reshape(-1, 2)])
        self.pairs, self.inliers, _ = strongest_pairs(pairs[:, 0], pairs[:, 1], np.r_[self.inliers, inliers])

    def remove_slots(self, slots, n: int) -> None:
        """Drop the pairs of removed slots and renumber the others as the index does (order kept).

        Args:
            slots: removed slots.
            n: slots in the collection before the removal.
        """
        removed = np.zeros(n, bool)
        removed[np.asarray(list(slots), np.int64)] = True
        keep = ~removed[self.pairs].any(axis=1)
        shift = np.cumsum(removed)
        self.pairs = self.pairs[keep] - shift[self.pairs[keep]]
        self.inliers = self.inliers[keep]

    def selected(self, min_inliers: int) -> np.ndarray:
        """(e', 2) int64 pairs with at least ``min_inliers`` inliers."""
        return self.pairs[self.inliers >= min_inliers]

    def affinity(self, n: int, min_inliers: int, weight: float = 1.0) -> sparse.csr_array:
        """(n, n) float32 symmetric affinity with ``weight`` on each pair of at least ``min_inliers``
        inliers (kNN affinities are similarity^gamma <= 1, so 1 is as strong as a duplicate)."""
        chosen = self.selected(min_inliers)
        return pair_affinity(chosen, np.full(len(chosen), weight, np.float32), n)

    def state_dict(self) -> tuple[dict, dict]:
        """(metadata, arrays) for persistence."""
        return {"kind": "verified-pairs", "version": STATE_VERSION}, {"pairs": self.pairs, "inliers": self.inliers}

    @classmethod
    def from_state_dict(cls, meta: dict, arrays: dict) -> "VerifiedPairs":
        """Rebuild from ``state_dict()`` output (ValueError when inconsistent)."""
        if meta.get("kind") != "verified-pairs" or meta.get("version") != STATE_VERSION:
            raise ValueError(f"not version-{STATE_VERSION} verified pairs")
        pairs = np.asarray(arrays["pairs"], np.int64)
        inliers = np.asarray(arrays["inliers"], np.int32)
        if pairs.ndim != 2 or pairs.shape[1] != 2 or inliers.shape != (len(pairs),) or \
                (len(pairs) and (pairs.min() < 0 or np.any(pairs[:, 0] >= pairs[:, 1]))):
            raise ValueError("verified pairs are inconsistent")
        return cls(pairs, inliers)
