"""The ranking sequence composed by search options, on small synthetic collections."""
import numpy as np

from index.dense_index import DenseIndex
from index.image_store import ImageStore
from index.inverted_file import InvertedFile
from index.ranking import LocalQuery, rank_global, rank_local
from index.search_options import SearchOptions


def grid_image(words):
    """Features on a 16-px grid (conv positions) with the given (rows, cols) words."""
    rows, cols = np.mgrid[0:words.shape[0], 0:words.shape[1]]
    keypoints = np.c_[(cols.ravel() + 0.5) * 16, (rows.ravel() + 0.5) * 16, np.full(words.size, 16), np.zeros(words.size)]
    return keypoints.astype(np.float32), words.ravel()


def test_window_search_reranks_its_own_shortlist_whatever_top_k(rng):
    """The object in a corner of a cluttered image (slot 0) rises above a weak whole-image match,
    also when fewer results than the window-search shortlist are asked for."""
    clutter = rng.integers(100, 400, (12, 12))
    corner = clutter.copy()
    corner[:3, :3] = np.arange(9).reshape(3, 3)
    weak = rng.integers(100, 400, (4, 4))
    weak[:2] = [[0, 1, 2, 3], [4, 5, 6, 7]]  # most query words, without their layout
    images = [grid_image(corner), grid_image(weak)] + [grid_image(rng.integers(100, 400, (12, 12)))
                                                       for _ in range(30)]
    inverted, store = InvertedFile(400), ImageStore(400)
    inverted.add([w for _, w in images])
    store.add([(192, 192)] * len(images), [k for k, _ in images], [w for _, w in images])
    query = LocalQuery(*grid_image(np.arange(9).reshape(3, 3)))
    plain = rank_local(query, inverted, store, SearchOptions(), top_k=1)
    windowed = rank_local(query, inverted, store, SearchOptions(window_search=10), top_k=1)
    assert plain[0].slot == 1 and windowed[0].slot == 0 and windowed[0].score > plain[0].score


def test_global_ranking_and_region_reranking(rng):
    dense = DenseIndex(4)
    vectors = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]] * 0.9 + 0.1
    regions = [np.eye(4, dtype=np.float32)[[k]] for k in (3, 0, 1, 0)]
    dense.add(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), regions)
    query = np.array([1, 0, 0, 0], np.float32)
    assert [e.slot for e in rank_global(query, query[None], dense, SearchOptions())] == [0, 1, 2, 3]
    reranked = rank_global(query, query[None], dense, SearchOptions(region_rerank=2), top_k=3)
    assert [e.slot for e in reranked] == [1, 0, 2]  # only the top 2 are re-ranked: slot 3 stays last
    assert reranked[0].score == 1.0 and reranked[1].score == 0.0


def test_best_per_image_keeps_each_images_best_view_and_cuts_exactly(rng):
    """Merging the rankings of a query's views: each image once with its best score, and the
    top k of the merge equals the top k of the merged full rankings."""
    from index.ranking import best_per_image, shortlist
    scores = rng.random((3, 50)).astype(np.float32)
    full = best_per_image([shortlist(view, 50) for view in scores])
    assert [e.slot for e in full] == list(np.argsort(-scores.max(axis=0), kind="stable"))
    assert np.allclose([e.score for e in full], np.sort(scores.max(axis=0))[::-1])
    cut = best_per_image([shortlist(view, 7) for view in scores], top_k=7)
    assert [(e.slot, e.score) for e in cut] == [(e.slot, e.score) for e in full[:7]]
