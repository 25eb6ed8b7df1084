"""Late fusion of two rankings of the same images (a local-feature and a global-descriptor one)."""
from __future__ import annotations

import numpy as np

from index.reranking import RankedImage
from index.search_options import FusionConfig


def fuse_rankings(local: list[RankedImage], dense: list[RankedImage], n_images: int,
                  config: FusionConfig) -> list[RankedImage]:
    """One ranking from two: images with at least ``verified_inliers`` inliers in ``local`` first,
    each group ordered by reciprocal-rank fusion (see ``FusionConfig``).

    Args:
        local: ranking of the local-feature index, best first (verified entries carry inliers).
        dense: ranking of the global index of the same images (same slots), best first.
        n_images: images in the collection.
        config: weights and the verification rule.

    Returns:
        every image of either ranking, best first; score = the fused score; inliers, homography
        and matches from ``local``.
    """
    fused = np.zeros(n_images, np.float64)
    present = np.zeros(n_images, bool)
    for weight, ranking in ((config.local_weight, local), (1.0, dense)):
        slots = np.array([e.slot for e in ranking], np.int64)
        fused[slots] += weight / (np.arange(len(slots)) + config.rank_offset)
        present[slots] = True
    verified = {e.slot: e for e in local if e.verified}
    first = np.zeros(n_images, bool)
    if config.verified_inliers:
        first[[s for s, e in verified.items() if e.inliers >= config.verified_inliers]] = True
    slots = np.flatnonzero(present)
    order = slots[np.lexsort((slots, -fused[slots], ~first[slots]))]
    return [RankedImage(int(s), float(fused[s]), *((verified[s].inliers, verified[s].homography, verified[s].matches)
                                                   if s in verified else ())) for s in order]
