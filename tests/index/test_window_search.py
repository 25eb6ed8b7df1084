import numpy as np

from index.inverted_file import InvertedFile
from index.window_search import best_window, candidate_windows


def grid(words: np.ndarray, stride: int = 16):
    rows, cols = np.mgrid[0:words.shape[0], 0:words.shape[1]]
    keypoints = np.stack([(cols.ravel() + 0.5) * stride, (rows.ravel() + 0.5) * stride,
                          np.full(words.size, stride), np.zeros(words.size)], axis=1)
    return keypoints, words.ravel()


def test_object_in_a_corner_is_found_by_a_window():
    """The object fills 16 of 144 cells: the inverted file's whole-image cosine is
    16 * 0.25 / 12 = 1/3, the best window (the 4x4 one on the object) scores 1."""
    words = np.arange(100, 100 + 12 * 12).reshape(12, 12)  # clutter: words the query does not have
    words[:4, :4] = np.arange(16).reshape(4, 4)            # the object: the query's 16 words
    keypoints, flat = grid(words)
    inverted = InvertedFile(300)
    inverted.add([flat, np.array([299])])  # a second image, so that every word's idf is log 2
    whole = float(inverted.scores(np.arange(16))[0])
    query_words, query_values = inverted.query_vector(np.arange(16))
    assert np.isclose(whole, 1 / 3)
    only_whole, _ = best_window(query_words, query_values, inverted.idf, keypoints, flat, steps=1, min_fraction=1.0)
    assert np.isclose(only_whole, whole)  # the whole map as the only window: the same cosine
    best, window = best_window(query_words, query_values, inverted.idf, keypoints, flat)
    assert best > whole and np.isclose(best, 1.0) and window == (0, 0, 4, 4)


def test_exact_window_scores_one():
    words = np.full((9, 9), 200)
    words[3:6, 3:6] = np.arange(9).reshape(3, 3)
    keypoints, flat = grid(words)
    best, window = best_window(np.arange(9), np.full(9, 1 / 3), np.ones(300), keypoints, flat, steps=9)
    assert np.isclose(best, 1.0) and window == (3, 3, 6, 6)


def test_windows_stay_inside_the_map():
    windows = candidate_windows(7, 11)
    assert windows[:, 2].max() <= 7 and windows[:, 3].max() <= 11 and windows.min() >= 0
    assert np.all(windows[:, 2] > windows[:, 0]) and np.all(windows[:, 3] > windows[:, 1])
    assert (0, 0, 7, 11) in set(map(tuple, windows.tolist()))
