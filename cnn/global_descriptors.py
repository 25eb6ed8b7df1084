"""Global descriptors from the final conv map: SPoC, MAC, GeM, R-MAC, CroW.

Post-processing follows the literature: pooled vector -> L2 -> PCA whitening ->
L2; for R-MAC each region vector goes L2 -> whitening -> L2, then the regions
are summed and L2-normalised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cnn import pooling
from cnn.pooling import l2_normalize
from cnn.whitening import PCAWhitening

METHODS = ("spoc", "mac", "gem", "rmac", "crow")


@dataclass(frozen=True)
class GlobalDescriptorConfig:
    """Which pooling, and its parameters.

    Attributes:
        method: one of ``METHODS``.
        gem_p: GeM exponent.
        rmac_levels: R-MAC scales.
        whitening_dim: components kept by PCA whitening (None: all).
    """

    method: str = "gem"
    gem_p: float = 3.0
    rmac_levels: int = 3
    whitening_dim: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown pooling {self.method!r}; known: {', '.join(METHODS)}")


def raw_vectors(feature_maps: Sequence[np.ndarray], config: GlobalDescriptorConfig) -> np.ndarray:
    """L2-normalised pooled vectors before whitening, from the maps of one image at one or more
    scales (cirtorch's multi-scale description: one vector per scale, summed).

    Args:
        feature_maps: (C, H_s, W_s) float32 activations per scale.

    Returns:
        (1, C) for SPoC/MAC/GeM/CroW (the L2-normalised sum of the scales' L2-normalised vectors);
        (r, C) region vectors for R-MAC, the regions of every scale in turn.
    """
    if config.method == "rmac":
        return np.concatenate([l2_normalize(pooling.region_mac(m, pooling.rmac_regions(m.shape[1], m.shape[2],
                                                                                       config.rmac_levels)))
                               for m in feature_maps])
    return sum_of_scales(np.stack([pooled(m, config) for m in feature_maps]))


def sum_of_scales(vectors: np.ndarray) -> np.ndarray:
    """(s, d) one vector per scale -> (1, d): their L2-normalised sum after each is L2-normalised (one
    scale: just normalised)."""
    vectors = l2_normalize(vectors)
    return vectors if len(vectors) == 1 else l2_normalize(vectors.sum(axis=0, keepdims=True))


def rmac_boxes(feature_maps: Sequence[np.ndarray], levels: int) -> np.ndarray:
    """(r, 4) x0, y0, x1, y1 of each R-MAC region of ``raw_vectors`` (same order), as fractions of
    its scale's map."""
    boxes = []
    for feature_map in feature_maps:
        _, height, width = feature_map.shape
        y0, x0, y1, x1 = pooling.rmac_regions(height, width, levels).T
        boxes.append(np.stack([x0 / width, y0 / height, x1 / width, y1 / height], axis=1))
    return np.concatenate(boxes)


def pooled(feature_map: np.ndarray, config: GlobalDescriptorConfig) -> np.ndarray:
    """(C, H, W) activations -> (C,) vector pooled by ``config.method`` (not R-MAC)."""
    if config.method == "gem":
        return pooling.gem(feature_map, config.gem_p)
    return getattr(pooling, config.method)(feature_map)


def embed(raw: np.ndarray, whitening: PCAWhitening | None,
          config: GlobalDescriptorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Whiten raw vectors into the final descriptor.

    Returns:
        (descriptor (k,) unit norm, whitened rows (r, k)); for R-MAC the rows are
        the whitened region vectors, summed into the descriptor.
    """
    rows = whitening.apply(raw) if whitening is not None else l2_normalize(raw)
    descriptor = l2_normalize(rows.sum(axis=0)) if config.method == "rmac" else rows[0]
    return descriptor, rows
