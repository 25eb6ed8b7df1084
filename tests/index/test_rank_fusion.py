import numpy as np

from index.rank_fusion import fuse_rankings
from index.reranking import RankedImage
from index.search_options import FusionConfig


def ranking(slots, inliers=None):
    inliers = inliers or {}
    return [RankedImage(s, 1.0 / (i + 1), inliers.get(s), np.eye(3) if s in inliers else None)
            for i, s in enumerate(slots)]


def test_reciprocal_rank_fusion_orders_by_weighted_reciprocal_ranks():
    config = FusionConfig(local_weight=1.0, rank_offset=1.0, verified_inliers=0)
    # local: 0 1 2 3; dense: 3 2 1 0 -> scores 1/1+1/4 for 0 and 3, 1/2+1/3 for 1 and 2: ties keep the lower slot
    fused = fuse_rankings(ranking([0, 1, 2, 3]), ranking([3, 2, 1, 0]), 4, config)
    assert [e.slot for e in fused] == [0, 3, 1, 2]
    assert np.isclose(fused[0].score, 1.25) and np.isclose(fused[2].score, 1 / 2 + 1 / 3)
    # a lighter local ranking lets the global one decide
    fused = fuse_rankings(ranking([0, 1, 2, 3]), ranking([3, 2, 1, 0]), 4, FusionConfig(local_weight=0.5, rank_offset=1.0, verified_inliers=0))
    assert [e.slot for e in fused] == [3, 0, 2, 1]


def test_verified_images_come_first_and_keep_their_geometry():
    local = ranking([0, 1, 2, 3, 4], inliers={0: 40, 3: 12, 4: 6})
    dense = ranking([2, 1, 4, 3])  # image 0 missing from the global ranking: it only gets local credit
    fused = fuse_rankings(local, dense, 6, FusionConfig(local_weight=0.7, rank_offset=3.0, verified_inliers=10))
    # >= 10 inliers first, by fused score: 3 (0.7/6 + 1/6) before 0 (0.7/3, local credit only)
    assert [e.slot for e in fused][:2] == [3, 0]
    assert {e.slot for e in fused} == {0, 1, 2, 3, 4}  # image 5 is in neither ranking
    assert fused[1].inliers == 40 and fused[1].homography is not None
    by_slot = {e.slot: e for e in fused}
    assert by_slot[4].inliers == 6 and by_slot[1].inliers is None
    assert [e.slot for e in fused][2:] == [2, 1, 4]
