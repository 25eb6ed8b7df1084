"""Global descriptors pooled from a conv feature map (pure numpy).

Every function takes one activation map ``x`` of shape (C, H, W), non-negative
(after ReLU6), and returns a (C,) float32 vector (not normalised unless stated).
"""
from __future__ import annotations

import numpy as np


def spoc(x: np.ndarray) -> np.ndarray:
    """Sum pooling (SPoC, Babenko & Lempitsky 2015; without the centre prior)."""
    return x.reshape(x.shape[0], -1).sum(axis=1).astype(np.float32)


def mac(x: np.ndarray) -> np.ndarray:
    """Maximum activation of convolutions (Tolias et al. 2016)."""
    return x.reshape(x.shape[0], -1).max(axis=1).astype(np.float32)


def gem(x: np.ndarray, p: float = 3.0, eps: float = 1e-6) -> np.ndarray:
    """Generalized mean ``(mean x^p)^(1/p)`` (Radenovic et al. 2018): p=1 is average
    pooling (SPoC up to a constant), p -> inf approaches MAC."""
    flat = np.maximum(x.reshape(x.shape[0], -1).astype(np.float64), eps)
    return (np.mean(flat ** p, axis=1) ** (1.0 / p)).astype(np.float32)


def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> np.ndarray:
    """R-MAC regions (Tolias et al. 2016), laid out as in cirtorch's ``rmac``.

    The whole map, then at level l = 1..L squares of side ``floor(2 w / (l + 1))``
    (w the short side), l per short side and l + extra along the long side, the
    extra count chosen so that neighbours overlap by about ``overlap``.

    Returns:
        (r, 4) int64 regions (y0, x0, y1, x1), end-exclusive, in map cells.
    """
    w = min(height, width)
    steps = np.arange(2, 8)
    b = (max(height, width) - w) / (steps - 1)
    idx = int(np.argmin(np.abs(((w ** 2 - w * b) / w ** 2) - overlap)))
    extra_w = idx + 1 if height < width else 0
    extra_h = idx + 1 if height > width else 0
    regions = [(0, 0, height, width)]
    for level in range(1, levels + 1):
        side = int(np.floor(2 * w / (level + 1)))
        if side == 0:
            continue
        half = np.floor(side / 2 - 1)

        def starts(n: int, extent: int) -> np.ndarray:
            step = 0 if n == 1 else (extent - side) / (n - 1)
            return (np.floor(half + np.arange(n) * step) - half).astype(int)

        for y0 in starts(level + extra_h, height):
            for x0 in starts(level + extra_w, width):
                regions.append((y0, x0, y0 + side, x0 + side))
    return np.asarray(regions, dtype=np.int64)


def region_mac(x: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """(r, C) float32 MAC of each region (y0, x0, y1, x1) of the map."""
    return np.stack([x[:, y0:y1, x0:x1].reshape(x.shape[0], -1).max(axis=1)
                     for y0, x0, y1, x1 in regions]).astype(np.float32)


def crow(x: np.ndarray, a: float = 2.0, b: float = 2.0, eps: float = 1e-8) -> np.ndarray:
    """Cross-dimensional weighting (CroW, Kalantidis et al. 2016).

    Spatial weights: the channel-summed map, normalised by its ``a``-norm, to the
    power ``1/b``; channel weights: ``log(sum q / (q_k + eps))`` with q_k the share
    of non-zero positions in channel k. Returns the weighted sum pooling.
    """
    spatial = x.sum(axis=0)
    norm = np.power(np.sum(spatial ** a), 1.0 / a)
    spatial = np.power(spatial / max(norm, eps), 1.0 / b) if norm > 0 else np.zeros_like(spatial)
    weighted = (x * spatial[None]).reshape(x.shape[0], -1).sum(axis=1)
    nonzero = (x.reshape(x.shape[0], -1) > 0).mean(axis=1)
    channel = np.log(np.maximum(nonzero.sum(), eps) / (nonzero + eps))
    return (weighted * channel).astype(np.float32)


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Unit L2 norm along ``axis`` (zero vectors stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)
