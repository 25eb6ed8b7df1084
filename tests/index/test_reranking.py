import numpy as np

from index.image_store import ImageStore
from index.inverted_file import InvertedFile
from index.reranking import RankedImage, average_query_expansion, bow_expansion, spatial_rerank
from index.spatial_verification import VerificationConfig


def _store_with_copies(rng):
    """Image 0: unrelated points; image 1: the query's points moved by a similarity; image 2: few shared words."""
    query = np.c_[rng.random((80, 2)) * 300, np.ones((80, 2))].astype(np.float32)
    words = np.arange(80)
    moved = query.copy()
    moved[:, :2] = query[:, :2] * 0.8 + [20, 10]
    store = ImageStore()
    store.add([(300, 300)] * 3,
              [np.c_[rng.random((80, 2)) * 300, np.ones((80, 2))], moved, moved[:5]],
              [words, words, words[:5]])
    return query, words, store


def test_verified_match_moves_above_non_match(rng):
    query, words, store = _store_with_copies(rng)
    initial = [RankedImage(0, 0.9), RankedImage(2, 0.5), RankedImage(1, 0.4)]
    reranked = spatial_rerank(query, words, initial, store, VerificationConfig(top_k=3))
    assert [e.slot for e in reranked] == [1, 0, 2]
    assert reranked[0].inliers == 80 and reranked[0].homography.shape == (3, 3)
    assert not reranked[1].verified and not reranked[2].verified


def test_only_top_k_are_verified_and_rest_keeps_order(rng):
    query, words, store = _store_with_copies(rng)
    initial = [RankedImage(0, 0.9), RankedImage(2, 0.5), RankedImage(1, 0.4)]
    reranked = spatial_rerank(query, words, initial, store, VerificationConfig(top_k=2), n_jobs=2)
    assert [e.slot for e in reranked] == [0, 2, 1]


def test_average_query_expansion_is_the_normalised_mean():
    q = (np.array([0, 1]), np.array([0.6, 0.8]))
    r = (np.array([1, 2]), np.array([0.8, 0.6]))
    words, values = average_query_expansion(q, [r], 3)
    dense = np.zeros(3)
    dense[words] = values
    expected = np.array([0.6, 1.6, 0.6]) / np.linalg.norm([0.6, 1.6, 0.6])
    assert np.allclose(dense, expected)


def test_expansion_keeps_verified_results_on_top():
    """The verified entry stays first; the others follow the expanded query's scores."""
    inverted = InvertedFile(4)
    inverted.add([np.array([0, 1]), np.array([2]), np.array([1, 3]), np.array([1])])
    images = ImageStore()
    images.add([(10, 10)] * 4, [np.zeros((n, 4)) for n in (2, 1, 2, 1)],
               [np.array([0, 1]), np.array([2]), np.array([1, 3]), np.array([1])])
    ranking = [RankedImage(0, 0.2, inliers=40), RankedImage(1, 0.9), RankedImage(2, 0.1), RankedImage(3, 0.0)]
    query = inverted.query_vector(np.array([0]))
    out = bow_expansion(ranking, query, inverted, images)
    assert [e.slot for e in out][0] == 0 and out[0].inliers == 40
    expanded = inverted.vector_scores(*average_query_expansion(query, [inverted.query_vector(np.array([0, 1]))], 4))
    assert [e.slot for e in out[1:]] == sorted([1, 2, 3], key=lambda s: (-expanded[s], s))
    assert [e.slot for e in out[1:]] != [1, 2, 3]  # the expansion changed the order
