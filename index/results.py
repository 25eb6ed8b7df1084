"""What a search returns, whatever index produced it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SearchResult:
    """One ranked database image.

    Attributes:
        name: the image's name in the index.
        score: similarity of the (possibly expanded) query to the image.
        slot: the image's slot in the index.
        inliers: spatially verified inliers, None when the image was not verified.
        homography: (3, 3) map from query pixels to the image's pixels (verified images).
        matches: (m, 2) inlier (query feature, image feature) indices (verified images).
    """

    name: str
    score: float
    slot: int
    inliers: int | None = None
    homography: np.ndarray | None = None
    matches: np.ndarray | None = None
